// Batcher with real executor threads. These tests assert outcomes (every item is processed or
// dropped exactly once, batches form, shutdown drains), never timings.
#include "server/batcher.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <thread>

#include "absl/synchronization/notification.h"

namespace convnext::server {
namespace {

struct Recorder {
  absl::Mutex mu;
  std::vector<std::vector<int>> batches ABSL_GUARDED_BY(mu);
  std::vector<std::pair<int, DropReason>> dropped ABSL_GUARDED_BY(mu);
  absl::Notification* gate = nullptr;  // If set, the first batch waits for it.
};

std::unique_ptr<Batcher<int>> MakeBatcher(Recorder* rec, BatcherOptions options,
                                          Batcher<int>::CancelledFn cancelled = nullptr) {
  auto b = Batcher<int>::Create(
      options,
      [rec](std::vector<Batcher<int>::Item> batch) {
        if (rec->gate != nullptr) rec->gate->WaitForNotification();
        std::vector<int> v;
        for (auto& i : batch) v.push_back(i.payload);
        absl::MutexLock lock(&rec->mu);
        rec->batches.push_back(v);
      },
      [rec](int payload, DropReason reason) {
        absl::MutexLock lock(&rec->mu);
        rec->dropped.emplace_back(payload, reason);
      },
      std::move(cancelled));
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? *std::move(b) : nullptr;
}

TEST(BatcherTest, ValidatesOptions) {
  BatcherOptions o;
  o.queue.max_batch_size = 0;
  EXPECT_FALSE(Batcher<int>::Create(o, nullptr, nullptr, nullptr).ok());
  o.queue.max_batch_size = 8;
  o.queue.max_queue_size = 4;
  EXPECT_FALSE(Batcher<int>::Create(o, nullptr, nullptr, nullptr).ok());
}

TEST(BatcherTest, ShutdownComputesEverythingAdmittedAndThenRefuses) {
  Recorder rec;
  BatcherOptions o;
  o.queue.max_batch_size = 4;
  o.queue.max_queue_delay = absl::Hours(1);  // Only full batches or the shutdown flush close.
  auto b = MakeBatcher(&rec, o);
  for (int i = 0; i < 10; ++i) {
    int v = i;
    ASSERT_TRUE(b->Schedule(v, "k", absl::InfiniteFuture()).ok());
  }
  b->Shutdown();
  int v = 99;
  absl::Status refused = b->Schedule(v, "k", absl::InfiniteFuture());
  EXPECT_EQ(refused.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(v, 99);  // Not taken.
  absl::MutexLock lock(&rec.mu);
  std::vector<int> all;
  for (const auto& batch : rec.batches) {
    EXPECT_LE(batch.size(), 4u);
    all.insert(all.end(), batch.begin(), batch.end());
  }
  std::sort(all.begin(), all.end());
  EXPECT_EQ(all, (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
  EXPECT_TRUE(rec.dropped.empty());
}

TEST(BatcherTest, FullQueueIsUnavailableWhileTheExecutorIsBusy) {
  Recorder rec;
  absl::Notification gate;
  rec.gate = &gate;
  BatcherOptions o;
  o.queue.max_batch_size = 1;
  o.queue.max_queue_size = 2;
  o.queue.max_queue_delay = absl::ZeroDuration();
  auto b = MakeBatcher(&rec, o);
  int admitted = 0, refused = 0;
  for (int i = 0; i < 10; ++i) {
    int v = i;
    absl::Status s = b->Schedule(v, "k", absl::InfiniteFuture());
    if (s.ok()) {
      ++admitted;
    } else {
      EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
      ++refused;
    }
  }
  // The executor holds at most one item (blocked on the gate) and the queue two.
  EXPECT_LE(admitted, 3);
  EXPECT_GE(refused, 7);
  gate.Notify();
  b->Shutdown();
  absl::MutexLock lock(&rec.mu);
  EXPECT_EQ(static_cast<int>(rec.batches.size()), admitted);
}

TEST(BatcherTest, DeadlinePassedAndCancelledItemsAreNeverComputed) {
  Recorder rec;
  BatcherOptions o;
  o.queue.max_batch_size = 8;
  o.queue.max_queue_delay = absl::Hours(1);
  auto b = MakeBatcher(&rec, o, [](const int& v) { return v == 2; });
  int v1 = 1, v2 = 2, v3 = 3;
  ASSERT_TRUE(b->Schedule(v1, "k", absl::InfinitePast()).ok());  // Already expired.
  ASSERT_TRUE(b->Schedule(v2, "k", absl::InfiniteFuture()).ok());
  ASSERT_TRUE(b->Schedule(v3, "k", absl::InfiniteFuture()).ok());
  b->Shutdown();
  absl::MutexLock lock(&rec.mu);
  ASSERT_EQ(rec.batches.size(), 1u);
  EXPECT_EQ(rec.batches[0], (std::vector<int>{3}));
  ASSERT_EQ(rec.dropped.size(), 2u);
  std::sort(rec.dropped.begin(), rec.dropped.end());
  EXPECT_EQ(rec.dropped[0], std::make_pair(1, DropReason::kDeadlineExceeded));
  EXPECT_EQ(rec.dropped[1], std::make_pair(2, DropReason::kCancelled));
}

TEST(BatcherTest, ConcurrentProducersFormBatchesLargerThanOne) {
  Recorder rec;
  absl::Notification gate;
  rec.gate = &gate;  // Holds the first batch so that the others queue up behind it.
  BatcherOptions o;
  o.queue.max_batch_size = 8;
  o.queue.max_queue_delay = absl::Milliseconds(1);
  auto b = MakeBatcher(&rec, o);
  std::vector<std::thread> producers;
  std::atomic<int> next{0};
  for (int t = 0; t < 4; ++t) {
    producers.emplace_back([&] {
      for (int i = 0; i < 16; ++i) {
        int v = next++;
        EXPECT_TRUE(b->Schedule(v, "k", absl::InfiniteFuture()).ok());
      }
    });
  }
  for (auto& t : producers) t.join();
  gate.Notify();
  b->Shutdown();
  absl::MutexLock lock(&rec.mu);
  size_t total = 0, largest = 0;
  for (const auto& batch : rec.batches) {
    total += batch.size();
    largest = std::max(largest, batch.size());
  }
  EXPECT_EQ(total, 64u);
  EXPECT_GT(largest, 1u);
}

}  // namespace
}  // namespace convnext::server
