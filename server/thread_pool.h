// ThreadPool: a fixed set of worker threads running queued closures in FIFO order. Used for image
// decoding and preprocessing, so that this work never runs on a gRPC thread or on a model's
// compute thread. The destructor runs every queued closure, then joins. A closure should not throw;
// one that does is logged (event=task_exception) and the worker goes on.
#ifndef CONVNEXT_SERVER_THREAD_POOL_H_
#define CONVNEXT_SERVER_THREAD_POOL_H_

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace convnext::server {

class ThreadPool {
 public:
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // Queues `fn` to run on a worker thread. Never blocks.
  void Schedule(std::function<void()> fn);

 private:
  void Work();
  bool HasWorkOrStopping() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !queue_.empty() || stopping_;
  }

  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace convnext::server

#endif  // CONVNEXT_SERVER_THREAD_POOL_H_
