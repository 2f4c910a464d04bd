// ThreadSanitizer builds only: shows that the TSan build can fail and that it does not cry wolf.
//
//   tsan_canary race          two threads write one int with no synchronisation: TSan must report
//                             a data race (ctest expects the report).
//   tsan_canary <guarded>     the same writes ordered by one of the Abseil primitives our code
//                             uses (mutex, reader_lock, try_lock, await, await_with_deadline,
//                             condvar, notification, has_been_notified): TSan must stay silent,
//                             which it does only through tests/tsan/absl_sync_annotations.cc
//                             (Debian's Abseil is not instrumented).
//
// A guarded mode exits 0 when it ran to the end and TSan found nothing (a report makes TSan exit
// with 66).

#include <atomic>
#include <cstdio>
#include <cstring>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace {

// Written by both threads; volatile so that the compiler keeps every access.
volatile int shared_value = 0;

void Write() { shared_value = shared_value + 1; }

// Sleeping before the second write makes the unsynchronised case deterministic for TSan's
// happens-before check without relying on the two writes overlapping in time.
void Pause() { absl::SleepFor(absl::Milliseconds(20)); }

int Race() {
  std::thread other([] { Write(); });
  Pause();
  Write();
  other.join();
  return 0;
}

int GuardedByMutex() {
  absl::Mutex mu;
  std::thread other([&] {
    absl::MutexLock lock(&mu);
    Write();
  });
  Pause();
  {
    absl::MutexLock lock(&mu);
    Write();
  }
  other.join();
  return 0;
}

// Writer -> reader -> writer: a write under the writer lock, a read under a reader lock, and a
// write after ReaderUnlock, each ordered by the mutex whichever thread gets it first.
int GuardedByReaderLock() {
  absl::Mutex mu;
  int observed = -1;
  std::thread first_writer([&] {
    absl::MutexLock lock(&mu);
    Write();
  });
  std::thread second_writer([&] {
    Pause();
    Pause();
    absl::MutexLock lock(&mu);
    Write();
  });
  Pause();
  {
    absl::ReaderMutexLock lock(&mu);
    observed = shared_value;
  }
  first_writer.join();
  second_writer.join();
  return observed >= 0 ? 0 : 1;
}

// The other thread's TryLock fails while this one holds the mutex (the failure annotation), then
// succeeds once it is released.
int GuardedByTryLock() {
  absl::Mutex mu;
  std::atomic<int> failures{0};
  mu.Lock();
  std::thread other([&] {
    while (!mu.TryLock()) {
      failures.fetch_add(1, std::memory_order_relaxed);
      std::this_thread::yield();
    }
    Write();
    mu.Unlock();
  });
  while (failures.load(std::memory_order_relaxed) == 0) std::this_thread::yield();
  Write();
  mu.Unlock();
  other.join();
  return 0;
}

// This thread holds the mutex before the other starts, so the await (or condition-variable wait)
// certainly blocks and releases it; the other thread can only set `ready` once it has.
bool IsReady(bool* ready) { return *ready; }

int GuardedByAwait() {
  absl::Mutex mu;
  bool ready = false;
  mu.Lock();
  std::thread other([&] {
    Pause();
    absl::MutexLock lock(&mu);
    Write();
    ready = true;
  });
  mu.Await(absl::Condition(&IsReady, &ready));  // A function-and-argument condition, as ours.
  mu.Unlock();
  Write();  // Ordered after the other thread's write by the await, not by a lock held here.
  other.join();
  return 0;
}

int GuardedByAwaitWithDeadline() {
  absl::Mutex mu;
  bool ready = false;
  mu.Lock();
  std::thread other([&] {
    Pause();
    absl::MutexLock lock(&mu);
    Write();
    ready = true;
  });
  while (!mu.AwaitWithDeadline(absl::Condition(&IsReady, &ready),
                               absl::Now() + absl::Milliseconds(5))) {
  }
  mu.Unlock();
  Write();
  other.join();
  return 0;
}

int GuardedByCondVar() {
  absl::Mutex mu;
  absl::CondVar cv;
  bool ready = false;
  mu.Lock();
  std::thread other([&] {
    Pause();
    Write();
    absl::MutexLock lock(&mu);
    ready = true;
    cv.Signal();
  });
  while (!ready) cv.Wait(&mu);
  mu.Unlock();
  Write();
  other.join();
  return 0;
}

int GuardedByNotification() {
  absl::Notification done;
  std::thread other([&] {
    Write();
    done.Notify();
  });
  done.WaitForNotification();
  Write();
  other.join();
  return 0;
}

int GuardedByHasBeenNotified() {
  absl::Notification done;
  std::thread other([&] {
    Write();
    done.Notify();
  });
  while (!done.HasBeenNotified()) std::this_thread::yield();
  Write();
  other.join();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  struct Mode {
    const char* name;
    int (*run)();
  };
  static constexpr Mode kModes[] = {
      {"race", Race},
      {"mutex", GuardedByMutex},
      {"reader_lock", GuardedByReaderLock},
      {"try_lock", GuardedByTryLock},
      {"await", GuardedByAwait},
      {"await_with_deadline", GuardedByAwaitWithDeadline},
      {"condvar", GuardedByCondVar},
      {"notification", GuardedByNotification},
      {"has_been_notified", GuardedByHasBeenNotified},
  };
  if (argc != 2) {
    std::fprintf(stderr, "usage: tsan_canary MODE\n");
    return 2;
  }
  for (const Mode& mode : kModes) {
    if (std::strcmp(argv[1], mode.name) != 0) continue;
    return mode.run();
  }
  std::fprintf(stderr, "tsan_canary: unknown mode %s\n", argv[1]);
  return 2;
}
