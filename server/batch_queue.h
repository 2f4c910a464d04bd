// BatchQueue: the deterministic core of the dynamic batcher. It holds queued work items in FIFO
// order and decides, given the current time, which items form the next batch and which must be
// dropped. It owns no threads and reads no clock (time is passed in), so every rule below is
// tested without sleeps (batch_queue_test.cc); Batcher (batcher.h) drives it from executor threads.
//
// Rules:
//  - Items carry a batching key; a batch holds items of one key only (the server uses the input
//    shape, so Embed requests at their own image size batch only with equal shapes).
//  - A batch closes when max_batch_size items of one key are queued, or when the oldest item has
//    waited max_queue_delay (it then takes up to max_batch_size items of the oldest item's key,
//    oldest first), or when the caller flushes (shutdown). An item may lower its key's limit
//    (Item::max_batch: the server's variable-size batching fits a pixel budget with it).
//  - An item whose deadline has passed, or that its owner reports cancelled, is removed and
//    returned as dropped before batches form: it is never computed.
//  - Push fails when max_queue_size items are queued: the caller answers at once (load shedding)
//    and memory stays bounded.
//
// Not thread-safe: the owner serialises access (Batcher holds a mutex).
#ifndef CONVNEXT_SERVER_BATCH_QUEUE_H_
#define CONVNEXT_SERVER_BATCH_QUEUE_H_

#include <algorithm>
#include <cstddef>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"

namespace convnext::server {

// The defaults are the served models' defaults too (config.proto; NormalizeConfig reads them).
// Chosen from the measured CPU table in the README (Performance): convnext_tiny's throughput is
// flat from batch 1 to 32 while a batch's time grows with its size, so a small batch and a short
// wait; raise both for a GPU.
struct BatchQueueOptions {
  // Items per batch at most. The model computes a batch in one forward pass.
  size_t max_batch_size = 4;
  // How long the oldest item may wait for others to join its batch. Larger values form fuller
  // batches under light load at the cost of latency.
  absl::Duration max_queue_delay = absl::Microseconds(2000);
  // Items queued at most; Push fails beyond it. For a served model: images admitted and not yet
  // answered (at least max_batch_size).
  size_t max_queue_size = 64;
};

enum class DropReason { kDeadlineExceeded, kCancelled };

template <typename T>
class BatchQueue {
 public:
  struct Item {
    T payload;
    std::string key;
    absl::Time enqueued;
    absl::Time deadline = absl::InfiniteFuture();
    // Items per batch at most for this item's key, if lower than max_batch_size (0: no lower
    // limit). Items of one key carry one value.
    size_t max_batch = 0;
  };
  struct Dropped {
    T payload;
    DropReason reason;
  };
  // Reports whether an item's owner no longer wants it.
  using CancelledFn = std::function<bool(const T&)>;

  explicit BatchQueue(const BatchQueueOptions& options) : options_(options) {}

  // Queues `item` unless the queue is full; on failure `item` is left untouched.
  bool Push(Item& item) {
    if (items_.size() >= options_.max_queue_size) return false;
    ++key_counts_[item.key];
    items_.push_back(std::move(item));
    return true;
  }

  // Moves expired and cancelled items to `dropped`, then returns the next batch if one is ready
  // at `now` (or any non-empty batch if `flush`), else nullopt.
  std::optional<std::vector<Item>> PopReady(absl::Time now, bool flush,
                                            const CancelledFn& cancelled,
                                            std::vector<Dropped>* dropped) {
    for (auto it = items_.begin(); it != items_.end();) {
      const bool expired = it->deadline <= now;
      if (expired || (cancelled && cancelled(it->payload))) {
        dropped->push_back({std::move(it->payload),
                            expired ? DropReason::kDeadlineExceeded : DropReason::kCancelled});
        Forget(it->key);
        it = items_.erase(it);
      } else {
        ++it;
      }
    }
    if (items_.empty()) return std::nullopt;
    const Item& oldest = items_.front();
    if (flush || now - oldest.enqueued >= options_.max_queue_delay) {
      return Take(oldest.key, LimitOf(oldest));
    }
    for (const Item& item : items_) {  // A full batch of any key, oldest key first.
      if (key_counts_[item.key] >= LimitOf(item)) return Take(item.key, LimitOf(item));
    }
    return std::nullopt;
  }

  // The next time at which PopReady may have something to do without new input: the oldest
  // item's batch timeout or the earliest deadline. InfiniteFuture when empty.
  absl::Time NextEventTime() const {
    if (items_.empty()) return absl::InfiniteFuture();
    absl::Time t = items_.front().enqueued + options_.max_queue_delay;
    for (const Item& item : items_) t = std::min(t, item.deadline);
    return t;
  }

  size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }

 private:
  size_t LimitOf(const Item& item) const {
    return item.max_batch > 0 ? std::min(item.max_batch, options_.max_batch_size)
                              : options_.max_batch_size;
  }

  void Forget(const std::string& key) {
    auto it = key_counts_.find(key);
    if (--it->second == 0) key_counts_.erase(it);
  }

  // Up to `limit` items of `key`, oldest first; none joins a batch larger than its own limit.
  std::vector<Item> Take(std::string key, size_t limit) {
    std::vector<Item> batch;
    for (auto it = items_.begin(); it != items_.end() && batch.size() < limit;) {
      if (it->key == key && batch.size() < LimitOf(*it)) {
        limit = std::min(limit, LimitOf(*it));
        batch.push_back(std::move(*it));
        Forget(key);
        it = items_.erase(it);
      } else {
        ++it;
      }
    }
    return batch;
  }

  const BatchQueueOptions options_;
  std::deque<Item> items_;
  std::map<std::string, size_t> key_counts_;
};

}  // namespace convnext::server

#endif  // CONVNEXT_SERVER_BATCH_QUEUE_H_
