// ThreadSanitizer builds only (cmake -DCONVNEXT_TSAN=ON links this file into every executable).
//
// gRPC hands a call's completion tag from the thread that starts the batch (ours, e.g. in
// ServerUnaryReactor::Finish) to the thread that takes the completion off the queue (gRPC's
// callback thread, or ours in a blocking call) through its core completion queue, which is not
// instrumented: TSan would see the tag, filled in by gRPC's inline header code in our binary on
// one thread and read on the other, as a race. This file interposes the two ends, both exported
// by libgrpc and called through the dynamic linker: grpc_call_start_batch releases the tag's
// address and grpc_completion_queue_next / _pluck acquire it when they return a completion.
// Executables that do not use gRPC never call these.

#if !defined(__SANITIZE_THREAD__)
#error "grpc_annotations.cc belongs in ThreadSanitizer builds only"
#endif

#include <dlfcn.h>
#include <grpc/grpc.h>
#include <sanitizer/tsan_interface.h>

#include <cstdio>
#include <cstdlib>

namespace {

template <typename Fn>
Fn Real(const char* symbol) {
  void* address = dlsym(RTLD_NEXT, symbol);
  if (address == nullptr) {
    std::fprintf(stderr, "grpc_annotations: %s not found: %s\n", symbol, dlerror());
    std::abort();
  }
  return reinterpret_cast<Fn>(address);
}

grpc_event Acquired(grpc_event event) {
  if (event.type == GRPC_OP_COMPLETE && event.tag != nullptr) __tsan_acquire(event.tag);
  return event;
}

}  // namespace

extern "C" {

grpc_call_error grpc_call_start_batch(grpc_call* call, const grpc_op* ops, size_t nops, void* tag,
                                      void* reserved) {
  using Fn = grpc_call_error (*)(grpc_call*, const grpc_op*, size_t, void*, void*);
  static const Fn real = Real<Fn>("grpc_call_start_batch");
  if (tag != nullptr) __tsan_release(tag);
  return real(call, ops, nops, tag, reserved);
}

grpc_event grpc_completion_queue_next(grpc_completion_queue* cq, gpr_timespec deadline,
                                      void* reserved) {
  using Fn = grpc_event (*)(grpc_completion_queue*, gpr_timespec, void*);
  static const Fn real = Real<Fn>("grpc_completion_queue_next");
  return Acquired(real(cq, deadline, reserved));
}

grpc_event grpc_completion_queue_pluck(grpc_completion_queue* cq, void* tag, gpr_timespec deadline,
                                       void* reserved) {
  using Fn = grpc_event (*)(grpc_completion_queue*, void*, gpr_timespec, void*);
  static const Fn real = Real<Fn>("grpc_completion_queue_pluck");
  return Acquired(real(cq, tag, deadline, reserved));
}

}  // extern "C"
