// Process-wide settings for a process that runs ConvNeXt inference (server, tools, benchmarks).
#ifndef CONVNEXT_MODEL_PROCESS_TUNING_H_
#define CONVNEXT_MODEL_PROCESS_TUNING_H_

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

}  // namespace convnext

#endif  // CONVNEXT_MODEL_PROCESS_TUNING_H_
