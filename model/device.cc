#include "model/device.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <torch/version.h>

#include <atomic>
#include <exception>
#include <mutex>
#include <set>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

#if CONVNEXT_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace convnext {

bool BuildHasCuda() { return CONVNEXT_WITH_CUDA != 0; }

absl::Status CheckDevice(const c10::Device& device) {
  if (device.is_cpu()) return absl::OkStatus();
  if (!device.is_cuda()) {
    return absl::FailedPreconditionError(
        absl::StrCat("device '", device.str(), "': only cpu and cuda devices are supported"));
  }
  if (!BuildHasCuda()) {
    return absl::FailedPreconditionError(
        absl::StrCat("device '", device.str(), "': this build has no CUDA (built against LibTorch ",
                     TORCH_VERSION, " without CUDA; README, GPU: the CUDA build)"));
  }
#if CONVNEXT_WITH_CUDA
  const int count = at::hasCUDA() ? static_cast<int>(c10::cuda::device_count()) : 0;
  if (count == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("device '", device.str(),
                     "': no CUDA device is visible to this process (driver, "
                     "CUDA_VISIBLE_DEVICES, the container's GPU access)"));
  }
  if (device.has_index() && device.index() >= count) {
    return absl::FailedPreconditionError(absl::StrCat("device '", device.str(), "': only ", count,
                                                      " CUDA device", count == 1 ? " is" : "s are",
                                                      " visible"));
  }
#endif
  return absl::OkStatus();
}

void ConfigureCudaOnce() {
  static std::once_flag once;
  std::call_once(once, [] { at::globalContext().setBenchmarkCuDNN(true); });
}

namespace {

// Who holds which Float32Mode: holder names, a multiset per mode (two versions of a model may
// share a name).
struct Float32Holders {
  std::mutex mu;
  std::multiset<std::string> strict;
  std::multiset<std::string> tf32;
};

Float32Holders& Holders() {
  static Float32Holders* holders = new Float32Holders;
  return *holders;
}

// LibTorch's switches as the holders say. Called with the holders' mutex held.
void ApplyTf32(bool on) {
  at::globalContext().setAllowTF32CuDNN(on);
  at::globalContext().setAllowTF32CuBLAS(on);
}

}  // namespace

Float32ModeHold::Float32ModeHold(Float32Mode mode, std::string holder)
    : mode_(mode), holder_(std::move(holder)) {}

Float32ModeHold::~Float32ModeHold() {
  Float32Holders& h = Holders();
  std::lock_guard<std::mutex> lock(h.mu);
  std::multiset<std::string>& mine = mode_ == Float32Mode::kTf32 ? h.tf32 : h.strict;
  mine.erase(mine.find(holder_));
  ApplyTf32(!h.tf32.empty());
}

absl::StatusOr<std::unique_ptr<Float32ModeHold>> HoldFloat32Mode(Float32Mode mode,
                                                                 const std::string& holder) {
  Float32Holders& h = Holders();
  std::lock_guard<std::mutex> lock(h.mu);
  const bool tf32 = mode == Float32Mode::kTf32;
  const std::multiset<std::string>& other = tf32 ? h.strict : h.tf32;
  if (!other.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "float32 on CUDA ", tf32 ? "with TensorFloat-32 (TF32)" : "without TensorFloat-32",
        " cannot load while ", *other.begin(), " computes float32 on CUDA ",
        tf32 ? "without it" : "with it",
        ": LibTorch's TF32 switch is process-wide, so one process serves its float32 CUDA models "
        "in one mode (give them the same compute_dtype, or serve them from two servers)"));
  }
  (tf32 ? h.tf32 : h.strict).insert(holder);
  ApplyTf32(!h.tf32.empty());
  return std::unique_ptr<Float32ModeHold>(new Float32ModeHold(mode, holder));
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
  return CopyToDevice(staged, device);
}

#if CONVNEXT_WITH_CUDA
struct DeviceTimer::Events {
  // The device's current stream, not the thread's current device's: with several devices
  // (ModelConfig.devices) one thread computes on each in turn.
  c10::DeviceIndex device = 0;
  at::cuda::CUDAEvent start{cudaEventDefault};
  at::cuda::CUDAEvent end{cudaEventDefault};
};
#else
struct DeviceTimer::Events {};
#endif

DeviceTimer::DeviceTimer(const c10::Device& device) {
#if CONVNEXT_WITH_CUDA
  if (!device.is_cuda()) return;
  UseOwnStream(device);
  try {
    events_ = std::make_unique<Events>();
    events_->device = device.has_index() ? device.index() : c10::cuda::current_device();
    events_->start.record(c10::cuda::getCurrentCUDAStream(events_->device));
  } catch (const std::exception&) {
    events_.reset();
  }
#else
  (void)device;
#endif
}

DeviceTimer::~DeviceTimer() = default;

int64_t DeviceTimer::ElapsedMicros() {
#if CONVNEXT_WITH_CUDA
  if (events_ == nullptr) return -1;
  try {
    events_->end.record(c10::cuda::getCurrentCUDAStream(events_->device));
    events_->end.synchronize();
    return static_cast<int64_t>(1000.0 * events_->start.elapsed_time(events_->end));
  } catch (const std::exception&) {
    return -1;
  }
#else
  return -1;
#endif
}

namespace {
std::atomic<bool> cpu_graphs_for_testing{false};

// SetCpuGraphsForTesting's stand-in for a graph: the work, run again.
absl::StatusOr<std::function<void()>> CpuStandIn(const c10::Device& device,
                                                 const std::function<void()>& work) {
  if (!device.is_cpu() || !cpu_graphs_for_testing.load()) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA graphs need a CUDA device, not '", device.str(), "'"));
  }
  try {
    work();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("capturing a CUDA graph failed: ", e.what()));
  }
  return work;
}
}  // namespace

void SetCpuGraphsForTesting(bool on) { cpu_graphs_for_testing.store(on); }
bool CpuGraphsForTesting() { return cpu_graphs_for_testing.load(); }

struct CapturedGraph::Impl {
  std::function<void()> cpu_work;  // SetCpuGraphsForTesting's stand-in; else empty.
#if CONVNEXT_WITH_CUDA
  c10::DeviceIndex device = 0;
  // Made for a CUDA capture only (its constructor initialises CUDA).
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  at::cuda::CUDAEvent released;  // Recorded by Release; never recorded: nothing to wait for.
#endif
};

absl::StatusOr<std::unique_ptr<CapturedGraph>> CapturedGraph::Capture(
    const c10::Device& device, const std::function<void()>& work) {
  auto impl = std::make_unique<Impl>();
  if (!device.is_cuda()) {
    ASSIGN_OR_RETURN(impl->cpu_work, CpuStandIn(device, work));
    return std::unique_ptr<CapturedGraph>(new CapturedGraph(std::move(impl)));
  }
  RETURN_IF_ERROR(CheckDevice(device));  // Always an error in a build without CUDA.
#if CONVNEXT_WITH_CUDA
  try {
    const c10::DeviceIndex index =
        device.has_index() ? device.index() : c10::cuda::current_device();
    impl->device = index;
    const c10::cuda::CUDAGuard device_guard(index);
    const c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool(false, index);
    at::cuda::CUDAEvent ready;
    ready.record(c10::cuda::getCurrentCUDAStream(index));
    ready.block(stream);
    const c10::cuda::CUDAStreamGuard stream_guard(stream);
    work();
    stream.synchronize();
    impl->graph = std::make_unique<at::cuda::CUDAGraph>();
    impl->graph->capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
    try {
      work();
    } catch (...) {
      try {
        impl->graph->capture_end();
      } catch (...) {
      }
      throw;
    }
    impl->graph->capture_end();
    stream.synchronize();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("capturing a CUDA graph failed: ", e.what()));
  }
#endif
  return std::unique_ptr<CapturedGraph>(new CapturedGraph(std::move(impl)));
}

void CapturedGraph::Acquire() {
#if CONVNEXT_WITH_CUDA
  if (!impl_->cpu_work) impl_->released.block(c10::cuda::getCurrentCUDAStream(impl_->device));
#endif
}

void CapturedGraph::Replay() {
  if (impl_->cpu_work) return impl_->cpu_work();
#if CONVNEXT_WITH_CUDA
  const c10::cuda::CUDAGuard device_guard(impl_->device);
  impl_->graph->replay();
#endif
}

void CapturedGraph::Release() {
#if CONVNEXT_WITH_CUDA
  if (!impl_->cpu_work) impl_->released.record(c10::cuda::getCurrentCUDAStream(impl_->device));
#endif
}

CapturedGraph::CapturedGraph(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CapturedGraph::~CapturedGraph() = default;

std::optional<DeviceMemory> MemoryOf(const c10::Device& device) {
#if CONVNEXT_WITH_CUDA
  if (!device.is_cuda() || !CheckDevice(device).ok()) return std::nullopt;
  const c10::DeviceIndex index = device.has_index() ? device.index() : c10::cuda::current_device();
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(index);
  constexpr size_t kAll = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
  return DeviceMemory{stats.allocated_bytes[kAll].current, stats.reserved_bytes[kAll].current};
#else
  (void)device;
  return std::nullopt;
#endif
}

}  // namespace convnext
