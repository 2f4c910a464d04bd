#include "model/device.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>

#include <mutex>
#include <set>

#if CONVNEXT_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace convnext {

bool BuildHasCuda() { return CONVNEXT_WITH_CUDA != 0; }

void ConfigureCudaOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    at::globalContext().setBenchmarkCuDNN(true);
    at::globalContext().setAllowTF32CuDNN(false);
    at::globalContext().setAllowTF32CuBLAS(false);
  });
}

void UseOwnStream(const c10::Device& device) {
#if CONVNEXT_WITH_CUDA
  if (!device.is_cuda()) return;
  const c10::DeviceIndex index = device.has_index() ? device.index() : c10::cuda::current_device();
  thread_local std::set<c10::DeviceIndex> has_own;
  if (!has_own.insert(index).second) return;
  c10::cuda::setCurrentCUDAStream(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, index));
#else
  (void)device;
#endif
}

at::Tensor CopyToDevice(const at::Tensor& t, const c10::Device& device) {
  if (!device.is_cuda()) return t.to(device);
  at::Tensor staged = t.is_pinned() ? t : t.pin_memory();
  return staged.to(device, /*non_blocking=*/true);
}

at::Tensor StackOnDevice(const std::vector<at::Tensor>& inputs, const c10::Device& device) {
  if (!device.is_cuda()) return at::cat(inputs, /*dim=*/0).to(device);
  std::vector<int64_t> shape = inputs[0].sizes().vec();
  shape[0] = 0;
  for (const at::Tensor& t : inputs) shape[0] += t.size(0);
  at::Tensor staged = at::empty(shape, inputs[0].options().pinned_memory(true));
  at::cat_out(staged, inputs, /*dim=*/0);
  return staged.to(device, /*non_blocking=*/true);
}

}  // namespace convnext
