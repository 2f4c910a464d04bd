// Batcher: a dynamic batcher that groups work items scheduled from many threads into batches and
// hands each batch to a processing function on one of its executor threads (the model's
// "instances"). The batching rules are BatchQueue's (batch_queue.h).
//
// Schedule() never blocks on computation: it takes the item only if the queue has room (else
// UNAVAILABLE at once; the caller keeps the item) and returns. Items dropped by the queue (deadline
// passed, owner cancelled) go to the drop function instead of being computed. Shutdown() stops
// accepting, computes everything already queued, and joins the executors: nothing admitted is
// lost.
//
// Thread safety: all public methods may be called from any thread. The processing and drop
// functions run on executor threads, never with the batcher's lock held.
#ifndef CONVNEXT_SERVER_BATCHER_H_
#define CONVNEXT_SERVER_BATCHER_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/batch_queue.h"

namespace convnext::server {

struct BatcherOptions {
  BatchQueueOptions queue;
  // Executor threads, each computing one batch at a time.
  int num_executors = 1;
};

template <typename T>
class Batcher {
 public:
  using Item = typename BatchQueue<T>::Item;
  using ProcessFn = std::function<void(std::vector<Item> batch)>;
  using DropFn = std::function<void(T payload, DropReason reason)>;
  using CancelledFn = typename BatchQueue<T>::CancelledFn;

  static absl::StatusOr<std::unique_ptr<Batcher>> Create(const BatcherOptions& options,
                                                         ProcessFn process, DropFn drop,
                                                         CancelledFn cancelled) {
    if (options.queue.max_batch_size < 1) {
      return absl::InvalidArgumentError("max_batch_size must be at least 1");
    }
    if (options.queue.max_queue_size < options.queue.max_batch_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("max_queue_size (", options.queue.max_queue_size,
                       ") must be at least max_batch_size (", options.queue.max_batch_size, ")"));
    }
    if (options.queue.max_queue_delay < absl::ZeroDuration()) {
      return absl::InvalidArgumentError("max_queue_delay must not be negative");
    }
    if (options.num_executors < 1 || options.num_executors > 64) {
      return absl::InvalidArgumentError("instances must be in [1, 64]");
    }
    std::unique_ptr<Batcher> b(
        new Batcher(options, std::move(process), std::move(drop), std::move(cancelled)));
    for (int i = 0; i < options.num_executors; ++i) {
      b->executors_.emplace_back([raw = b.get()] { raw->RunExecutor(); });
    }
    return b;
  }

  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;
  ~Batcher() { Shutdown(); }

  // Queues `payload` (moved from only on OK). UNAVAILABLE if the queue is full or the batcher is
  // shutting down: both are retryable, possibly on another replica. `max_batch`: the key's own
  // lower batch limit, if any (BatchQueue::Item::max_batch).
  absl::Status Schedule(T& payload, std::string key, absl::Time deadline, size_t max_batch = 0) {
    Item item{std::move(payload), std::move(key), absl::Now(), deadline, max_batch};
    {
      absl::MutexLock lock(&mu_);
      if (!shutting_down_ && queue_.Push(item)) {
        ++generation_;
        return absl::OkStatus();
      }
      payload = std::move(item.payload);
      if (shutting_down_) return absl::UnavailableError("the server is shutting down");
    }
    return absl::UnavailableError(absl::StrCat("queue full (", options_.queue.max_queue_size,
                                               " items waiting); retry later or elsewhere"));
  }

  // Stops accepting, computes everything queued, joins the executors. Idempotent.
  void Shutdown() {
    absl::MutexLock join_lock(&join_mu_);  // Serialises concurrent Shutdown calls.
    {
      absl::MutexLock lock(&mu_);
      shutting_down_ = true;
      ++generation_;
    }
    for (std::thread& t : executors_) {
      if (t.joinable()) t.join();
    }
  }

  size_t queue_size() const {
    absl::MutexLock lock(&mu_);
    return queue_.size();
  }

 private:
  Batcher(const BatcherOptions& options, ProcessFn process, DropFn drop, CancelledFn cancelled)
      : options_(options),
        process_(std::move(process)),
        drop_(std::move(drop)),
        cancelled_(std::move(cancelled)),
        queue_(options.queue) {}

  struct Waiter {
    Batcher* self;
    uint64_t seen;
  };
  static bool HasNews(Waiter* w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(w->self->mu_) {
    return w->self->generation_ != w->seen;
  }

  void RunExecutor() {
    mu_.Lock();
    while (true) {
      std::vector<typename BatchQueue<T>::Dropped> dropped;
      std::optional<std::vector<Item>> batch =
          queue_.PopReady(absl::Now(), shutting_down_, cancelled_, &dropped);
      if (!dropped.empty() || batch.has_value()) {
        mu_.Unlock();
        for (auto& d : dropped) drop_(std::move(d.payload), d.reason);
        if (batch.has_value()) process_(std::move(*batch));
        mu_.Lock();
        continue;
      }
      if (shutting_down_ && queue_.empty()) break;
      Waiter waiter{this, generation_};
      mu_.AwaitWithDeadline(absl::Condition(&HasNews, &waiter), queue_.NextEventTime());
    }
    mu_.Unlock();
  }

  const BatcherOptions options_;
  const ProcessFn process_;
  const DropFn drop_;
  const CancelledFn cancelled_;
  absl::Mutex join_mu_;
  std::vector<std::thread> executors_;  // Started in Create, joined in Shutdown under join_mu_.

  mutable absl::Mutex mu_;
  BatchQueue<T> queue_ ABSL_GUARDED_BY(mu_);
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;  // Bumped on every push and on shutdown.
};

}  // namespace convnext::server

#endif  // CONVNEXT_SERVER_BATCHER_H_
