#include "server/memory_budget.h"

namespace convnext::server {

bool MemoryBudget::TryReserve(int64_t bytes) {
  absl::MutexLock lock(&mu_);
  if (in_use_ + bytes > limit_bytes_) return false;
  // Lock order: child before parent, always, so two budgets never wait on each other.
  if (parent_ != nullptr && !parent_->TryReserve(bytes)) return false;
  in_use_ += bytes;
  return true;
}

void MemoryBudget::Release(int64_t bytes) {
  {
    absl::MutexLock lock(&mu_);
    in_use_ -= bytes;
  }
  if (parent_ != nullptr) parent_->Release(bytes);
}

int64_t MemoryBudget::in_use_bytes() const {
  absl::MutexLock lock(&mu_);
  return in_use_;
}

}  // namespace convnext::server
