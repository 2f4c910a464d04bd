// Process-wide settings for a process that runs ConvNeXt inference (server, tools, benchmarks).
#ifndef CONVNEXT_MODEL_PROCESS_TUNING_H_
#define CONVNEXT_MODEL_PROCESS_TUNING_H_

#include <functional>

namespace convnext {

// Keeps freed activation buffers in the process instead of returning them to the OS.
//
// ConvNeXt's activations are tens of MB each (convnext_tiny, batch 8: 38 MB after the first
// pointwise layer). glibc serves allocations that large with a fresh mmap and unmaps them on free,
// so every forward pass page-faults its activations in again; measured here, that made GELU 3x
// slower and the whole model about 12% slower. This disables glibc's mmap path and automatic
// trimming so that the heap keeps the (steady) working set of the forward pass. Call once, early
// in main(), before threads start. The cost: freed memory is not returned to the OS, so resident
// memory stays at the peak working set.
//
// Also makes OpenBLAS single-threaded (unless OPENBLAS_NUM_THREADS is set): its own thread pool
// only competed with LibTorch's and oneDNN's OpenMP threads (see runtime.cc for the figures).
void ConfigureProcessForInference();

// Returns the heap's free memory to the OS now (glibc's malloc_trim), which the settings above
// otherwise keep: after a model's weights and buffers are freed (an unloaded or replaced model
// version), so that resident memory falls back instead of staying at the peak of two versions.
// The next forward passes fault their working set in again once.
void ReleaseFreeMemory();

// Threads LibTorch (and oneDNN under it) uses inside one operator. A process-wide setting of
// LibTorch's (at::set_num_threads), so it is set here, once per process, and not per model.
// threads <= 0 keeps the current value.
void SetIntraOpThreads(int threads);
int IntraOpThreads();

// Runs `fn` on a thread of its own and returns when it has finished. libgomp (the OpenMP of
// LibTorch and oneDNN) keeps the intra-op threads a thread has started for as long as that thread
// lives, and once the process holds more of them than there are cores, every OpenMP thread goes
// to sleep in the kernel between parallel regions instead of spinning for a moment (libgomp's
// throttled spin count), so that each of the hundreds of regions of a forward pass pays a futex
// wake-up. A model loaded and warmed up on the server's main thread left that thread's intra-op
// threads idle beside the executors' for good: measured with bench/model_throughput on a 2-core
// AMX Xeon, batch 1 ran 20-21 img/s (float32) and 60-64 (bfloat16) so, 22.3 and 74-76 without.
// Work that uses intra-op threads once (loading and warming up a model) runs here, so that its
// threads end with it and the executors' are the only ones left.
void RunOnThreadOfItsOwn(const std::function<void()>& fn);

// Makes LibTorch and oneDNN single-threaded on the calling thread, for the rest of its life
// (OpenMP's thread count is the calling thread's): for long-lived threads that are not executors
// (the preprocessing pool), so that an operator of theirs on a large tensor starts no intra-op
// threads of its own (see above). Other threads keep IntraOpThreads().
void UseOneIntraOpThreadOnThisThread();

}  // namespace convnext

#endif  // CONVNEXT_MODEL_PROCESS_TUNING_H_
