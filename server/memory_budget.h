// MemoryBudget: bytes that admitted work may hold at once. Admission reserves a request's
// estimated cost before any of it is spent and the cost is released as each image ends, so the
// sum of what is in flight never exceeds the limit. Budgets nest: a model's budget has the
// process-wide one as its parent, and a reservation must fit both.
//
// TryReserve never blocks: it answers "fits now" or "not now"; CanEverFit says whether waiting
// could help at all (a request larger than the limit never fits).
//
// Thread-safe.
#ifndef CONVNEXT_SERVER_MEMORY_BUDGET_H_
#define CONVNEXT_SERVER_MEMORY_BUDGET_H_

#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace convnext::server {

class MemoryBudget {
 public:
  // `parent` (may be null) is not owned and outlives this budget.
  MemoryBudget(int64_t limit_bytes, MemoryBudget* parent = nullptr)
      : limit_bytes_(limit_bytes), parent_(parent) {}
  MemoryBudget(const MemoryBudget&) = delete;
  MemoryBudget& operator=(const MemoryBudget&) = delete;

  // True if `bytes` fit within this budget's limit and every parent's when nothing else is held.
  bool CanEverFit(int64_t bytes) const {
    return bytes <= limit_bytes_ && (parent_ == nullptr || parent_->CanEverFit(bytes));
  }
  // Reserves `bytes` here and in every parent if they fit now; otherwise reserves nothing.
  bool TryReserve(int64_t bytes);
  // Returns a reservation made by TryReserve.
  void Release(int64_t bytes);

  int64_t limit_bytes() const { return limit_bytes_; }
  int64_t in_use_bytes() const;

 private:
  const int64_t limit_bytes_;
  MemoryBudget* const parent_;
  mutable absl::Mutex mu_;
  int64_t in_use_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace convnext::server

#endif  // CONVNEXT_SERVER_MEMORY_BUDGET_H_
