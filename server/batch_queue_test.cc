// Deterministic tests of the batching rules: time is passed in, nothing sleeps.
#include "server/batch_queue.h"

#include <gtest/gtest.h>

namespace convnext::server {
namespace {

using Queue = BatchQueue<int>;

const absl::Time kT0 = absl::FromUnixSeconds(1000);

BatchQueueOptions Options(size_t batch, absl::Duration delay, size_t queue) {
  BatchQueueOptions o;
  o.max_batch_size = batch;
  o.max_queue_delay = delay;
  o.max_queue_size = queue;
  return o;
}

bool Push(Queue& q, int v, absl::Time t, std::string key = "k",
          absl::Time deadline = absl::InfiniteFuture()) {
  Queue::Item item{v, std::move(key), t, deadline};
  return q.Push(item);
}

std::vector<int> Payloads(const std::vector<Queue::Item>& batch) {
  std::vector<int> out;
  for (const auto& i : batch) out.push_back(i.payload);
  return out;
}

TEST(BatchQueueTest, FullBatchClosesAtOnce) {
  Queue q(Options(3, absl::Milliseconds(10), 100));
  std::vector<Queue::Dropped> dropped;
  ASSERT_TRUE(Push(q, 1, kT0));
  ASSERT_TRUE(Push(q, 2, kT0));
  EXPECT_FALSE(q.PopReady(kT0, false, nullptr, &dropped).has_value());
  ASSERT_TRUE(Push(q, 3, kT0));
  ASSERT_TRUE(Push(q, 4, kT0));
  auto batch = q.PopReady(kT0, false, nullptr, &dropped);
  ASSERT_TRUE(batch.has_value());
  EXPECT_EQ(Payloads(*batch), (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(q.size(), 1u);
  EXPECT_TRUE(dropped.empty());
}

TEST(BatchQueueTest, PartialBatchClosesWhenTheOldestHasWaitedTheDelay) {
  Queue q(Options(8, absl::Milliseconds(10), 100));
  std::vector<Queue::Dropped> dropped;
  Push(q, 1, kT0);
  Push(q, 2, kT0 + absl::Milliseconds(4));
  EXPECT_EQ(q.NextEventTime(), kT0 + absl::Milliseconds(10));
  EXPECT_FALSE(q.PopReady(kT0 + absl::Milliseconds(9), false, nullptr, &dropped).has_value());
  auto batch = q.PopReady(kT0 + absl::Milliseconds(10), false, nullptr, &dropped);
  ASSERT_TRUE(batch.has_value());
  EXPECT_EQ(Payloads(*batch), (std::vector<int>{1, 2}));
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.NextEventTime(), absl::InfiniteFuture());
}

TEST(BatchQueueTest, ExpiredItemsAreDroppedNeverBatched) {
  Queue q(Options(2, absl::Milliseconds(10), 100));
  std::vector<Queue::Dropped> dropped;
  Push(q, 1, kT0, "k", kT0 + absl::Milliseconds(3));
  Push(q, 2, kT0 + absl::Milliseconds(1));
  EXPECT_EQ(q.NextEventTime(), kT0 + absl::Milliseconds(3));
  EXPECT_FALSE(q.PopReady(kT0 + absl::Milliseconds(3), false, nullptr, &dropped).has_value());
  ASSERT_EQ(dropped.size(), 1u);
  EXPECT_EQ(dropped[0].payload, 1);
  EXPECT_EQ(dropped[0].reason, DropReason::kDeadlineExceeded);
  Push(q, 3, kT0 + absl::Milliseconds(4));
  auto batch = q.PopReady(kT0 + absl::Milliseconds(4), false, nullptr, &dropped);
  ASSERT_TRUE(batch.has_value());
  EXPECT_EQ(Payloads(*batch), (std::vector<int>{2, 3}));
}

TEST(BatchQueueTest, CancelledItemsAreDroppedBeforeCompute) {
  Queue q(Options(2, absl::Milliseconds(10), 100));
  std::vector<Queue::Dropped> dropped;
  Push(q, 1, kT0);
  Push(q, 2, kT0);
  Push(q, 3, kT0);
  auto batch = q.PopReady(
      kT0, false, [](const int& v) { return v == 2; }, &dropped);
  ASSERT_TRUE(batch.has_value());
  EXPECT_EQ(Payloads(*batch), (std::vector<int>{1, 3}));
  ASSERT_EQ(dropped.size(), 1u);
  EXPECT_EQ(dropped[0].payload, 2);
  EXPECT_EQ(dropped[0].reason, DropReason::kCancelled);
}

TEST(BatchQueueTest, FullQueueRefusesAndKeepsTheItem) {
  Queue q(Options(2, absl::Milliseconds(10), 3));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Push(q, i, kT0));
  Queue::Item item{42, "k", kT0, absl::InfiniteFuture()};
  EXPECT_FALSE(q.Push(item));
  EXPECT_EQ(item.payload, 42);
  EXPECT_EQ(q.size(), 3u);
}

TEST(BatchQueueTest, KeysNeverMixAndAFullKeyGoesFirst) {
  Queue q(Options(2, absl::Milliseconds(10), 100));
  std::vector<Queue::Dropped> dropped;
  Push(q, 1, kT0, "224x224");
  Push(q, 2, kT0, "320x256");
  Push(q, 3, kT0, "320x256");
  auto batch = q.PopReady(kT0, false, nullptr, &dropped);
  ASSERT_TRUE(batch.has_value());
  EXPECT_EQ(Payloads(*batch), (std::vector<int>{2, 3}));
  // The lone 224x224 item leaves alone when it times out.
  batch = q.PopReady(kT0 + absl::Milliseconds(10), false, nullptr, &dropped);
  ASSERT_TRUE(batch.has_value());
  EXPECT_EQ(Payloads(*batch), (std::vector<int>{1}));
}

// A key's own lower limit (variable-size batching's pixel budget): its batch is full at that
// many items, and a timed-out batch takes no more; other keys keep max_batch_size.
TEST(BatchQueueTest, AKeysOwnLimitClosesItsBatchesSooner) {
  Queue q(Options(4, absl::Milliseconds(10), 100));
  std::vector<Queue::Dropped> dropped;
  auto push = [&](int v, const std::string& key, size_t max_batch) {
    Queue::Item item{v, key, kT0, absl::InfiniteFuture(), max_batch};
    return q.Push(item);
  };
  ASSERT_TRUE(push(1, "big", 2));
  ASSERT_TRUE(push(2, "small", 0));
  ASSERT_TRUE(push(3, "small", 0));
  ASSERT_TRUE(push(4, "small", 0));
  EXPECT_FALSE(q.PopReady(kT0, false, nullptr, &dropped).has_value());
  ASSERT_TRUE(push(5, "big", 2));
  auto batch = q.PopReady(kT0, false, nullptr, &dropped);
  ASSERT_TRUE(batch.has_value());
  EXPECT_EQ(Payloads(*batch), (std::vector<int>{1, 5}));
  ASSERT_TRUE(push(6, "big", 2));
  ASSERT_TRUE(push(7, "big", 2));
  ASSERT_TRUE(push(8, "big", 2));
  batch = q.PopReady(kT0, false, nullptr, &dropped);
  ASSERT_TRUE(batch.has_value());
  EXPECT_EQ(Payloads(*batch), (std::vector<int>{6, 7}));
  // Timed out: the oldest ("small") takes up to 4, then the last "big" leaves alone.
  batch = q.PopReady(kT0 + absl::Milliseconds(10), false, nullptr, &dropped);
  ASSERT_TRUE(batch.has_value());
  EXPECT_EQ(Payloads(*batch), (std::vector<int>{2, 3, 4}));
  batch = q.PopReady(kT0 + absl::Milliseconds(10), false, nullptr, &dropped);
  ASSERT_TRUE(batch.has_value());
  EXPECT_EQ(Payloads(*batch), (std::vector<int>{8}));
  EXPECT_TRUE(q.empty());
  // Should items of one key carry different limits, none joins a batch larger than its own.
  ASSERT_TRUE(push(9, "mixed", 4));
  ASSERT_TRUE(push(10, "mixed", 4));
  ASSERT_TRUE(push(11, "mixed", 1));
  ASSERT_TRUE(push(12, "mixed", 3));
  batch = q.PopReady(kT0 + absl::Milliseconds(10), false, nullptr, &dropped);
  ASSERT_TRUE(batch.has_value());
  EXPECT_EQ(Payloads(*batch), (std::vector<int>{9, 10, 12}));
  batch = q.PopReady(kT0 + absl::Milliseconds(10), false, nullptr, &dropped);
  ASSERT_TRUE(batch.has_value());
  EXPECT_EQ(Payloads(*batch), (std::vector<int>{11}));
}

TEST(BatchQueueTest, FlushEmptiesTheQueueInBatchesForShutdown) {
  Queue q(Options(2, absl::Hours(1), 100));
  std::vector<Queue::Dropped> dropped;
  for (int i = 1; i <= 5; ++i) Push(q, i, kT0);
  std::vector<std::vector<int>> batches;
  while (auto batch = q.PopReady(kT0, /*flush=*/true, nullptr, &dropped)) {
    batches.push_back(Payloads(*batch));
  }
  EXPECT_EQ(batches, (std::vector<std::vector<int>>{{1, 2}, {3, 4}, {5}}));
  EXPECT_TRUE(dropped.empty());
}

}  // namespace
}  // namespace convnext::server
