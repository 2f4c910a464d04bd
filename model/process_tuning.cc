#include "model/process_tuning.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <malloc.h>

#include <cstdlib>
#include <thread>

namespace convnext {

void ReleaseFreeMemory() { malloc_trim(0); }

void ConfigureProcessForInference() {
  // Measured with bench/model_throughput (convnext_tiny, 2 threads): batch 8 went from 6.8 img/s
  // (glibc defaults) and 7.1 (mmap threshold at its 32 MB maximum, which is still below the
  // largest activations) to 8.0 img/s with mmap disabled.
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);

  // OpenBLAS (LibTorch's BLAS on Debian) keeps a thread pool of its own beside LibTorch's OpenMP
  // threads, and its threads spin after each call: the one small BLAS call per batch (the head)
  // left them competing with oneDNN's threads for the cores. Single-threaded OpenBLAS, measured
  // with bench/model_throughput --aten=false (convnext_tiny, 2 threads, fast path): batch 8 from
  // about 18 to 21 img/s. The parallelism comes from LibTorch's intra-op threads. An explicit
  // OPENBLAS_NUM_THREADS is left as it is. The symbol is looked up at run time so that any BLAS
  // works.
  if (std::getenv("OPENBLAS_NUM_THREADS") == nullptr) {
    using SetThreads = void (*)(int);
    if (auto set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) {
      set(1);
    }
  }
}

void SetIntraOpThreads(int threads) {
  if (threads > 0) at::set_num_threads(threads);
}

int IntraOpThreads() { return at::get_num_threads(); }

void RunOnThreadOfItsOwn(const std::function<void()>& fn) { std::thread(fn).join(); }

void UseOneIntraOpThreadOnThisThread() {
  thread_local bool done = false;
  if (done) return;
  done = true;
  // LibTorch sets each thread's OpenMP thread count to its own setting on the thread's first
  // parallel operator (at::internal::lazy_init_num_threads): that happens first, then the count
  // is lowered. omp_set_num_threads (libgomp, loaded with LibTorch) is looked up at run time, as
  // OpenBLAS's setting is above: this file is compiled without OpenMP.
  (void)at::get_num_threads();
  using SetThreads = void (*)(int);
  if (auto set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "omp_set_num_threads"))) {
    set(1);
  }
}

}  // namespace convnext
