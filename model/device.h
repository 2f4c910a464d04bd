// What a model on a CUDA device needs beyond what ATen does by itself, kept in one place so that
// the CUDA headers stay behind CONVNEXT_WITH_CUDA (set when the LibTorch built against has CUDA;
// README, GPU). Everything here is a no-op for the CPU and in builds without CUDA.
//
// Run on a GPU once so far: scripts/gpu_check.sh on an NVIDIA H200 (2026-12-04), where the model
// tests that use it passed (timer and memory, TF32 modes, CUDA graphs against eager).
#ifndef CONVNEXT_MODEL_DEVICE_H_
#define CONVNEXT_MODEL_DEVICE_H_

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace convnext {

// Whether this build has CUDA (CONVNEXT_WITH_CUDA).
bool BuildHasCuda();

// OK for the CPU and for a CUDA device this process can use; else FAILED_PRECONDITION saying
// why: a build without CUDA, no CUDA device visible, or an index beyond the devices there are.
absl::Status CheckDevice(const c10::Device& device);

// Process-wide settings for models on CUDA, applied when the first one is created: cuDNN's
// benchmark mode on (each convolution shape gets the fastest algorithm, found on its first run:
// WarmUp runs every batch size before a model serves). TensorFloat-32 is Float32Mode's.
// Thread-safe.
void ConfigureCudaOnce();

// How a float32 model on CUDA computes its convolutions and matrix products: in float32 (kStrict:
// float32 means float32), or with TensorFloat-32 (kTf32: the products' inputs rounded to 10
// mantissa bits, float32 accumulation; faster on tensor cores, an opt-in with its own measured
// agreement, README, Numerics).
//
// LibTorch's TF32 switches (cuDNN's and cuBLAS's) are process-wide, read by every kernel launch,
// so the two modes cannot run side by side in one process. Each float32 CUDA model holds its mode
// for its lifetime (ConvNeXt::Create takes it): the switches are on exactly while some model holds
// kTf32, and a model asking for the other mode than the ones loaded is refused. Half-precision
// models hold nothing (TF32 does not apply to them).
enum class Float32Mode { kStrict, kTf32 };

class Float32ModeHold {
 public:
  ~Float32ModeHold();
  Float32ModeHold(const Float32ModeHold&) = delete;
  Float32ModeHold& operator=(const Float32ModeHold&) = delete;

 private:
  friend absl::StatusOr<std::unique_ptr<Float32ModeHold>> HoldFloat32Mode(Float32Mode,
                                                                          const std::string&);
  Float32ModeHold(Float32Mode mode, std::string holder);
  Float32Mode mode_;
  std::string holder_;
};

// Holds `mode` for `holder` (what other holders' messages call it: a model's name) until the
// result is destroyed, setting LibTorch's TF32 switches to match. FAILED_PRECONDITION, naming a
// holder of the other mode, if that mode is held. Thread-safe.
absl::StatusOr<std::unique_ptr<Float32ModeHold>> HoldFloat32Mode(Float32Mode mode,
                                                                 const std::string& holder);

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

// Work captured once as a CUDA graph and replayed with one launch (ModelOptions::
// cuda_graph_max_batch). The tensors the work makes while it is captured live in the graph's own
// memory pool and keep their addresses: every replay rewrites them, so their readers must be done
// before the next replay (Acquire / Release).
class CapturedGraph {
 public:
  // Runs `work` once eagerly on a stream of its own on `device` (after the work the calling
  // thread's stream was given), which initialises what it sets up lazily, then captures it there
  // in thread-local capture mode (other threads' CUDA calls go on meanwhile). `work` must stay on
  // the device (no copy to or from the host, no synchronisation). FAILED_PRECONDITION without
  // CUDA, INTERNAL if the capture fails.
  static absl::StatusOr<std::unique_ptr<CapturedGraph>> Capture(const c10::Device& device,
                                                                const std::function<void()>& work);
  ~CapturedGraph();
  CapturedGraph(const CapturedGraph&) = delete;
  CapturedGraph& operator=(const CapturedGraph&) = delete;

  // Makes the calling thread's current stream wait until the previous replay's readers are done
  // (the point Release marked), before it rewrites the graph's input.
  void Acquire();
  // Replays the graph on the calling thread's current stream.
  void Replay();
  // Marks the point on the calling thread's current stream after which the outputs have no more
  // readers.
  void Release();

 private:
  struct Impl;
  explicit CapturedGraph(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Tests: on the CPU, CapturedGraph::Capture keeps the work (after running it once) and Replay
// runs it again, and models on the CPU accept cuda_graph_max_batch, so that what captures and
// lends out graphs runs where there is no GPU. Process-wide; off by default.
void SetCpuGraphsForTesting(bool on);
bool CpuGraphsForTesting();

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
