#include "server/thread_pool.h"

#include <exception>
#include <utility>

#include "server/log.h"

namespace convnext::server {

ThreadPool::ThreadPool(int num_threads) {
  for (int i = 0; i < std::max(num_threads, 1); ++i) threads_.emplace_back([this] { Work(); });
}

ThreadPool::~ThreadPool() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : threads_) t.join();
}

void ThreadPool::Schedule(std::function<void()> fn) {
  absl::MutexLock lock(&mu_);
  queue_.push_back(std::move(fn));
}

void ThreadPool::Work() {
  while (true) {
    std::function<void()> fn;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &ThreadPool::HasWorkOrStopping));
      if (queue_.empty()) return;  // Stopping and drained.
      fn = std::move(queue_.front());
      queue_.pop_front();
    }
    // Tasks end their own calls with a status (ModelHost::Preprocess); this is the last line of
    // defence, so that an exception that escapes one anyway cannot reach std::thread and
    // terminate the server.
    try {
      fn();
    } catch (const std::exception& e) {
      Log("error", "task_exception", {{"what", e.what()}});
    } catch (...) {
      Log("error", "task_exception", {{"what", "unknown exception"}});
    }
  }
}

}  // namespace convnext::server
