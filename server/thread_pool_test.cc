// ThreadPool: runs every queued closure, in FIFO order per worker, and survives a closure that
// throws (the exception is logged and the worker goes on) instead of terminating the process.
#include "server/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <new>
#include <stdexcept>

#include "absl/synchronization/notification.h"

namespace convnext::server {
namespace {

TEST(ThreadPoolTest, RunsEverythingQueuedBeforeItIsDestroyed) {
  std::atomic<int> ran{0};
  {
    ThreadPool pool(2);
    for (int i = 0; i < 1000; ++i) pool.Schedule([&ran] { ++ran; });
  }
  EXPECT_EQ(ran, 1000);
}

TEST(ThreadPoolTest, AThrowingClosureDoesNotKillTheWorkerOrTheProcess) {
  ThreadPool pool(1);
  pool.Schedule([] { throw std::runtime_error("boom"); });
  pool.Schedule([] { throw std::bad_alloc(); });
  pool.Schedule([] { throw 42; });
  absl::Notification after;
  pool.Schedule([&after] { after.Notify(); });
  EXPECT_TRUE(after.WaitForNotificationWithTimeout(absl::Seconds(30)));
}

}  // namespace
}  // namespace convnext::server
