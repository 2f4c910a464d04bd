// ThreadSanitizer builds only: shows that the TSan build can fail and that it does not cry wolf.
//
//   tsan_canary race          two threads write one int with no synchronisation: TSan must report
//                             a data race (ctest expects the report).
//   tsan_canary <guarded>     the same writes ordered by one of the Abseil primitives our code
//                             uses (mutex, await, condvar, notification, has_been_notified,
//                             try_lock, reader_lock): TSan must stay silent, which it does only
//                             through tests/tsan/absl_sync_annotations.cc (Debian's Abseil is not
//                             instrumented).
//
// Each mode prints "ok" when it ran to the end; TSan's verdict is on stderr and in the exit status.

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

int GuardedByReaderLock() {
  absl::Mutex mu;
  int observed = 0;
  std::thread other([&] {
    absl::MutexLock lock(&mu);
    Write();
  });
  Pause();
  {
    absl::ReaderMutexLock lock(&mu);
    observed = shared_value;
  }
  other.join();
  return observed >= 0 ? 0 : 1;
}

int GuardedByTryLock() {
  absl::Mutex mu;
  std::thread other([&] {
    absl::MutexLock lock(&mu);
    Write();
  });
  Pause();
  while (!mu.TryLock()) std::this_thread::yield();
  Write();
  mu.Unlock();
  other.join();
  return 0;
}

int GuardedByAwait() {
  absl::Mutex mu;
  bool ready = false;
  std::thread other([&] {
    Pause();
    absl::MutexLock lock(&mu);
    Write();
    ready = true;
  });
  {
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(&ready));
  }
  Write();  // Ordered after the other thread's write by the await, not by a lock held here.
  other.join();
  return 0;
}

int GuardedByCondVar() {
  absl::Mutex mu;
  absl::CondVar cv;
  bool ready = false;
  std::thread other([&] {
    Pause();
    Write();
    absl::MutexLock lock(&mu);
    ready = true;
    cv.Signal();
  });
  {
    absl::MutexLock lock(&mu);
    while (!ready) cv.Wait(&mu);
  }
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
    const int status = mode.run();
    std::printf("ok\n");
    return status;
  }
  std::fprintf(stderr, "tsan_canary: unknown mode %s\n", argv[1]);
  return 2;
}
