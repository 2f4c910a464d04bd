// ThreadSanitizer builds only (cmake -DCONVNEXT_TSAN=ON links this file into every executable).
//
// Debian's Abseil is built without ThreadSanitizer, so its Mutex, CondVar and Notification
// synchronise through atomics and futexes that TSan never sees: every access that absl::Mutex
// guards would be reported as a race. This file interposes the public lock, wait and notify
// entry points of the shared libabsl_synchronization (an executable's definitions win over a
// shared library's, for calls from our code and from gRPC, which locks absl::Mutex too), tells
// TSan what each one does through its mutex annotation interface (the same calls Abseil makes
// when it is itself built with TSan), and forwards to the real function found with
// dlsym(RTLD_NEXT). TSan then checks our locking like any pthread mutex: races, lock-order
// inversions, unlocking a mutex that is not held.
//
// Not covered: absl::SpinLock, BlockingCounter and Barrier (we do not use them), and calls that
// Abseil makes to itself without going through the dynamic linker (those are internal to it).

#if !defined(__SANITIZE_THREAD__)
#error "absl_sync_annotations.cc belongs in ThreadSanitizer builds only"
#endif

#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/base/options.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace {

// The Itanium-mangled name of a member of namespace absl, given the rest of it after the
// namespace: "5Mutex4LockEv" -> "_ZN4absl7debian35Mutex4LockEv" with Debian's inline namespace.
std::string AbslSymbol(const char* rest, bool const_member = false) {
  std::string name = const_member ? "_ZNK4absl" : "_ZN4absl";
#if ABSL_OPTION_USE_INLINE_NAMESPACE
#define CONVNEXT_STRINGIFY_INNER(x) #x
#define CONVNEXT_STRINGIFY(x) CONVNEXT_STRINGIFY_INNER(x)
  const char* inline_namespace = CONVNEXT_STRINGIFY(ABSL_OPTION_INLINE_NAMESPACE_NAME);
  name += std::to_string(std::strlen(inline_namespace)) + inline_namespace;
#endif
  return name + rest;
}

// The real function behind an interposed one, or abort: a TSan run that silently lost its
// annotations would report nothing useful.
template <typename Fn>
Fn Real(const char* rest, bool const_member = false) {
  const std::string symbol = AbslSymbol(rest, const_member);
  void* address = dlsym(RTLD_NEXT, symbol.c_str());
  if (address == nullptr) {
    std::fprintf(stderr, "absl_sync_annotations: %s not found: %s\n", symbol.c_str(), dlerror());
    std::abort();
  }
  return reinterpret_cast<Fn>(address);
}

using MutexFn = void (*)(absl::Mutex*);
using TryFn = bool (*)(absl::Mutex*);
using CondFn = void (*)(absl::Mutex*, const absl::Condition&);
using CondTimeoutFn = bool (*)(absl::Mutex*, const absl::Condition&, absl::Duration);
using CondDeadlineFn = bool (*)(absl::Mutex*, const absl::Condition&, absl::Time);
using WaitFn = void (*)(absl::CondVar*, absl::Mutex*);
using WaitTimeoutFn = bool (*)(absl::CondVar*, absl::Mutex*, absl::Duration);
using WaitDeadlineFn = bool (*)(absl::CondVar*, absl::Mutex*, absl::Time);

// Abseil calls some of its own interposed entry points through the dynamic linker too
// (Notification locks and unlocks its internal mutex with LockWhen and Unlock): only the
// outermost call on a thread is annotated, or TSan would see one lock twice.
thread_local int nesting = 0;

// Runs `call` annotated with `before` and `after` when it is the outermost interposed call.
template <typename Before, typename Call, typename After>
auto Annotated(Before before, Call call, After after) {
  if (nesting > 0) return call();
  ++nesting;
  before();
  auto result = call();
  after();
  --nesting;
  return result;
}

constexpr unsigned kWriter = 0;
constexpr unsigned kReader = __tsan_mutex_read_lock;
constexpr unsigned kTry = __tsan_mutex_try_lock;
constexpr unsigned kTryFailed = __tsan_mutex_try_lock | __tsan_mutex_try_lock_failed;

// Lock operations (Lock, LockWhen...): TSan ignores memory accesses between the pre and post
// annotations, which is where Abseil evaluates a LockWhen condition (our code, reading guarded
// state, with the mutex in effect held).
template <typename Call>
auto Locking(absl::Mutex* mu, unsigned flags, Call call) {
  return Annotated([&] { __tsan_mutex_pre_lock(mu, flags); }, call,
                   [&] { __tsan_mutex_post_lock(mu, flags, 0); });
}

// TryLock: held afterwards only when it returns true.
template <typename Call>
bool TryLocking(absl::Mutex* mu, unsigned flags, Call call) {
  bool locked = false;
  Annotated([&] { __tsan_mutex_pre_lock(mu, flags | kTry); }, [&] { return locked = call(); },
            [&] { __tsan_mutex_post_lock(mu, flags | (locked ? kTry : kTryFailed), 0); });
  return locked;
}

// Unlock: Abseil may evaluate other waiters' conditions inside it, again ignored by TSan.
template <typename Call>
void Unlocking(absl::Mutex* mu, unsigned flags, Call call) {
  Annotated([&] { __tsan_mutex_pre_unlock(mu, flags); }, [&] { return call(), 0; },
            [&] { __tsan_mutex_post_unlock(mu, flags); });
}

// Whether `mu`, held by the caller, is held in writer mode: Abseil's Mutex is one state word
// whose kMuWriter bit (0x08, absl/synchronization/mutex.cc) is set while a writer holds it.
unsigned HeldMode(const absl::Mutex* mu) {
  static_assert(sizeof(absl::Mutex) == sizeof(std::atomic<intptr_t>),
                "absl::Mutex is no longer a single state word");
  constexpr intptr_t kMuWriter = 0x08;
  const auto* word = reinterpret_cast<const std::atomic<intptr_t>*>(mu);
  return (word->load(std::memory_order_relaxed) & kMuWriter) != 0 ? kWriter : kReader;
}

// A wait that releases the held mutex inside the library and holds it again on return, in the
// same mode (Mutex::Await, CondVar::Wait): to TSan, an unlock and then a lock. The wait itself
// sits inside the unlock annotation, where accesses are ignored, because Abseil evaluates the
// await condition with the mutex in effect held, in this thread or in another one's Unlock.
template <typename Call>
auto ReleasedDuring(absl::Mutex* mu, Call call) {
  unsigned mode = kWriter;
  return Annotated(
      [&] {
        mode = HeldMode(mu);
        __tsan_mutex_pre_unlock(mu, mode);
      },
      call,
      [&] {
        __tsan_mutex_post_unlock(mu, mode);
        __tsan_mutex_pre_lock(mu, mode);
        __tsan_mutex_post_lock(mu, mode, 0);
      });
}

// Where Notification keeps its flag: HasBeenNotified() is inline (instrumented, in our code) and
// loads it with acquire order, so Notify() releases that address too.
const void* NotifiedFlag(const absl::Notification* n) {
  static_assert(sizeof(absl::Notification) == 2 * sizeof(absl::Mutex),
                "absl::Notification is no longer {Mutex mutex_; atomic<bool> notified_yet_;}");
  return reinterpret_cast<const char*>(n) + sizeof(absl::Mutex);
}

// Whether `code` lies in the executable (our instrumented code, which links this file) rather
// than in a shared library.
bool InThisExecutable(const void* code) {
  static const void* const executable_base = [] {
    Dl_info self;
    return dladdr(reinterpret_cast<const void*>(&AbslSymbol), &self) != 0 ? self.dli_fbase
                                                                          : nullptr;
  }();
  Dl_info info;
  return dladdr(code, &info) != 0 && info.dli_fbase == executable_base;
}

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() {
  static const auto real = Real<MutexFn>("5Mutex4LockEv");
  Locking(this, kWriter, [&] { return real(this), 0; });
}

void Mutex::ReaderLock() {
  static const auto real = Real<MutexFn>("5Mutex10ReaderLockEv");
  Locking(this, kReader, [&] { return real(this), 0; });
}

bool Mutex::TryLock() {
  static const auto real = Real<TryFn>("5Mutex7TryLockEv");
  return TryLocking(this, kWriter, [&] { return real(this); });
}

bool Mutex::ReaderTryLock() {
  static const auto real = Real<TryFn>("5Mutex13ReaderTryLockEv");
  return TryLocking(this, kReader, [&] { return real(this); });
}

void Mutex::Unlock() {
  static const auto real = Real<MutexFn>("5Mutex6UnlockEv");
  Unlocking(this, kWriter, [&] { real(this); });
}

void Mutex::ReaderUnlock() {
  static const auto real = Real<MutexFn>("5Mutex12ReaderUnlockEv");
  Unlocking(this, kReader, [&] { real(this); });
}

void Mutex::LockWhen(const Condition& cond) {
  static const auto real = Real<CondFn>("5Mutex8LockWhenERKNS0_9ConditionE");
  Locking(this, kWriter, [&] { return real(this, cond), 0; });
}

void Mutex::ReaderLockWhen(const Condition& cond) {
  static const auto real = Real<CondFn>("5Mutex14ReaderLockWhenERKNS0_9ConditionE");
  Locking(this, kReader, [&] { return real(this, cond), 0; });
}

bool Mutex::LockWhenWithTimeout(const Condition& cond, Duration timeout) {
  static const auto real =
      Real<CondTimeoutFn>("5Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  return Locking(this, kWriter, [&] { return real(this, cond, timeout); });
}

bool Mutex::LockWhenWithDeadline(const Condition& cond, Time deadline) {
  static const auto real =
      Real<CondDeadlineFn>("5Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  return Locking(this, kWriter, [&] { return real(this, cond, deadline); });
}

bool Mutex::ReaderLockWhenWithTimeout(const Condition& cond, Duration timeout) {
  static const auto real =
      Real<CondTimeoutFn>("5Mutex25ReaderLockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  return Locking(this, kReader, [&] { return real(this, cond, timeout); });
}

bool Mutex::ReaderLockWhenWithDeadline(const Condition& cond, Time deadline) {
  static const auto real =
      Real<CondDeadlineFn>("5Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  return Locking(this, kReader, [&] { return real(this, cond, deadline); });
}

void Mutex::Await(const Condition& cond) {
  static const auto real = Real<CondFn>("5Mutex5AwaitERKNS0_9ConditionE");
  ReleasedDuring(this, [&] { return real(this, cond), 0; });
}

bool Mutex::AwaitWithTimeout(const Condition& cond, Duration timeout) {
  static const auto real =
      Real<CondTimeoutFn>("5Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  return ReleasedDuring(this, [&] { return real(this, cond, timeout); });
}

bool Mutex::AwaitWithDeadline(const Condition& cond, Time deadline) {
  static const auto real =
      Real<CondDeadlineFn>("5Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  return ReleasedDuring(this, [&] { return real(this, cond, deadline); });
}

// Destruction is annotated only when our (instrumented) code destroys the mutex: gRPC orders
// the destruction of its own objects after their last use with reference counts TSan cannot see,
// so annotating its destructions would report that last use as racing with them.
Mutex::~Mutex() {
  static const auto real = Real<MutexFn>("5MutexD2Ev");
  const bool ours = InThisExecutable(__builtin_return_address(0));
  Annotated(
      [&] {
        if (ours) __tsan_mutex_destroy(this, 0);
      },
      [&] { return real(this), 0; }, [] {});
}

void CondVar::Wait(Mutex* mu) {
  static const auto real = Real<WaitFn>("7CondVar4WaitEPNS0_5MutexE");
  ReleasedDuring(mu, [&] { return real(this, mu), 0; });
}

bool CondVar::WaitWithTimeout(Mutex* mu, Duration timeout) {
  static const auto real =
      Real<WaitTimeoutFn>("7CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  return ReleasedDuring(mu, [&] { return real(this, mu, timeout); });
}

bool CondVar::WaitWithDeadline(Mutex* mu, Time deadline) {
  static const auto real =
      Real<WaitDeadlineFn>("7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  return ReleasedDuring(mu, [&] { return real(this, mu, deadline); });
}

// A notification orders everything before Notify() before everything after a wait that saw it.
void Notification::Notify() {
  static const auto real = Real<void (*)(Notification*)>("12Notification6NotifyEv");
  Annotated(
      [&] {
        __tsan_release(this);
        __tsan_release(const_cast<void*>(NotifiedFlag(this)));
      },
      [&] { return real(this), 0; }, [] {});
}

// Its internal mutex is destroyed inside the library, unannotated: forget both addresses here,
// or a later mutex or notification at the same stack address would inherit their clocks.
Notification::~Notification() {
  static const auto real = Real<void (*)(Notification*)>("12NotificationD2Ev");
  const bool ours = InThisExecutable(__builtin_return_address(0));
  Annotated(
      [&] {
        if (!ours) return;
        __tsan_mutex_destroy(this, 0);
        __tsan_mutex_destroy(const_cast<void*>(NotifiedFlag(this)), 0);
      },
      [&] { return real(this), 0; }, [] {});
}

void Notification::WaitForNotification() const {
  static const auto real =
      Real<void (*)(const Notification*)>("12Notification19WaitForNotificationEv", true);
  Annotated([] {}, [&] { return real(this), 0; },
            [&] { __tsan_acquire(const_cast<Notification*>(this)); });
}

bool Notification::WaitForNotificationWithTimeout(Duration timeout) const {
  static const auto real = Real<bool (*)(const Notification*, Duration)>(
      "12Notification30WaitForNotificationWithTimeoutENS0_8DurationE", true);
  bool notified = false;
  Annotated([] {}, [&] { return notified = real(this, timeout); },
            [&] {
              if (notified) __tsan_acquire(const_cast<Notification*>(this));
            });
  return notified;
}

bool Notification::WaitForNotificationWithDeadline(Time deadline) const {
  static const auto real = Real<bool (*)(const Notification*, Time)>(
      "12Notification31WaitForNotificationWithDeadlineENS0_4TimeE", true);
  bool notified = false;
  Annotated([] {}, [&] { return notified = real(this, deadline); },
            [&] {
              if (notified) __tsan_acquire(const_cast<Notification*>(this));
            });
  return notified;
}

ABSL_NAMESPACE_END
}  // namespace absl
