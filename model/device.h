// What a model on a CUDA device needs beyond what ATen does by itself, kept in one place so that
// the CUDA headers stay behind CONVNEXT_WITH_CUDA (set when the LibTorch built against has CUDA;
// README, GPU). Everything here is a no-op for the CPU and in builds without CUDA.
//
// Not yet run on a GPU by the developers (no GPU on their machines): scripts/gpu_check.sh runs
// the model tests that use it on the GPU machine.
#ifndef CONVNEXT_MODEL_DEVICE_H_
#define CONVNEXT_MODEL_DEVICE_H_

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"

namespace convnext {

// Whether this build has CUDA (CONVNEXT_WITH_CUDA).
bool BuildHasCuda();

// OK for the CPU and for a CUDA device this process can use; else FAILED_PRECONDITION saying
// why: a build without CUDA, no CUDA device visible, or an index beyond the devices there are.
absl::Status CheckDevice(const c10::Device& device);

// Process-wide settings for models on CUDA, applied when the first one is created: cuDNN's
// benchmark mode on (each convolution shape gets the fastest algorithm, found on its first run:
// WarmUp runs every batch size before a model serves), TensorFloat-32 off for cuDNN and cuBLAS
// (float32 means float32: TF32 rounds the products' inputs to 10 bits). Thread-safe.
void ConfigureCudaOnce();

// Makes the calling thread's current CUDA stream on `device` one of its own, taken from
// LibTorch's stream pool on the thread's first call for that device, so that threads computing
// batches at once (a model's instances) do not serialise on the default stream. Thread-safe.
void UseOwnStream(const c10::Device& device);

// The batch of `inputs` ([1, C, H, W] tensors of one shape, on the CPU) stacked along the batch
// dimension on `device`: for CUDA, staged in page-locked host memory (LibTorch's caching host
// allocator reuses its blocks from batch to batch) and copied asynchronously on the thread's
// stream; for the CPU, the stacked tensor itself.
at::Tensor StackOnDevice(const std::vector<at::Tensor>& inputs, const c10::Device& device);

// `t`, already padded or stacked on the CPU, on `device`, as StackOnDevice copies it.
at::Tensor CopyToDevice(const at::Tensor& t, const c10::Device& device);

// The device's own time for work the calling thread queues on its own stream (UseOwnStream)
// between construction and ElapsedMicros(), measured with CUDA events (the GPU's time, without the
// host's). Not measured for the CPU. Use on one thread.
class DeviceTimer {
 public:
  explicit DeviceTimer(const c10::Device& device);
  ~DeviceTimer();
  DeviceTimer(const DeviceTimer&) = delete;
  DeviceTimer& operator=(const DeviceTimer&) = delete;

  // Microseconds on the device, waiting for the stream to get there; -1 where not measured (the
  // CPU, a build without CUDA, a CUDA error).
  int64_t ElapsedMicros();

 private:
  struct Events;
  std::unique_ptr<Events> events_;
};

// Bytes the caching allocator holds on a CUDA device: in tensors, and reserved from the driver
// (what nvidia-smi shows of this process, less the CUDA context).
struct DeviceMemory {
  int64_t allocated = 0;
  int64_t reserved = 0;
};
// For a CUDA device this build can use; nullopt otherwise.
std::optional<DeviceMemory> MemoryOf(const c10::Device& device);

}  // namespace convnext

#endif  // CONVNEXT_MODEL_DEVICE_H_
