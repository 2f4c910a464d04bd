// Which devices a model may be created on, and what it says when it may not.
#include "model/device.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "model/convnext.h"
#include "model/convnext_config.h"
#include "testing/testdata.h"

namespace convnext {
namespace {

using ::testing::HasSubstr;

// A two-class model of 8 channels with random weights.
absl::StatusOr<std::unique_ptr<ConvNeXt>> TinyModel(const ModelOptions& options) {
  ConvNeXtConfig config;
  config.depths = {1, 1, 1, 1};
  config.dims = {8, 8, 8, 8};
  config.num_classes = 2;
  StateDict weights;
  for (const auto& [name, shape] : ExpectedParameters(config)) weights[name] = at::randn(shape);
  return ConvNeXt::Create(config, std::move(weights), options);
}

TEST(DeviceTest, CudaIsRefusedWithTheReasonWhereItCannotRun) {
  EXPECT_TRUE(CheckDevice(c10::Device("cpu")).ok());
  const absl::Status cuda = CheckDevice(c10::Device("cuda"));
  const absl::Status far = CheckDevice(c10::Device("cuda:63"));
  EXPECT_EQ(far.code(), absl::StatusCode::kFailedPrecondition);
  if (!BuildHasCuda()) {
    EXPECT_EQ(cuda.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(cuda.message()), HasSubstr("this build has no CUDA"));
  } else if (!at::hasCUDA()) {
    EXPECT_EQ(cuda.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(cuda.message()), HasSubstr("no CUDA device is visible"));
  } else {
    EXPECT_TRUE(cuda.ok()) << cuda;
    EXPECT_THAT(std::string(far.message()), HasSubstr("visible"));
  }
  // Creating a model on such a device fails with the same status, before any weight moves.
  ModelOptions options;
  options.device = c10::Device("cuda:63");
  EXPECT_EQ(TinyModel(options).status(), far);
}

TEST(DeviceTest, ComputeDtypeNames) {
  ModelOptions options;
  options.cpu_fast_path = false;
  for (const auto& [dtype, name] : std::vector<std::pair<c10::ScalarType, std::string>>{
           {at::kFloat, "float32"}, {at::kDouble, "float64"}, {at::kBFloat16, "bfloat16"}}) {
    options.dtype = dtype;
    absl::StatusOr<std::unique_ptr<ConvNeXt>> model = TinyModel(options);
    ASSERT_TRUE(model.ok()) << model.status();
    EXPECT_EQ((*model)->compute_dtype_name(), name);
  }
}

// On the CPU nothing is measured; on a CUDA device (the device check) a batch's GPU time and the
// allocator's bytes are.
TEST(DeviceTest, TimerAndMemoryMeasureCudaOnly) {
  DeviceTimer cpu_timer(c10::Device("cpu"));
  EXPECT_EQ(cpu_timer.ElapsedMicros(), -1);
  EXPECT_FALSE(MemoryOf(c10::Device("cpu")).has_value());
  const std::string name = testing::TestDevice();
  if (name.rfind("cuda", 0) != 0 || !at::hasCUDA()) {
    EXPECT_FALSE(MemoryOf(c10::Device("cuda")).has_value());
    GTEST_SKIP() << "the CUDA half needs a CUDA device (CONVNEXT_TEST_DEVICE=" << name
                 << "): runs in scripts/gpu_check.sh on the GPU machine";
  }
  const c10::Device device(name);
  DeviceTimer timer(device);
  const at::Tensor a = at::randn({2048, 2048}, at::TensorOptions().device(device));
  const at::Tensor b = at::matmul(a, a);
  const int64_t us = timer.ElapsedMicros();
  EXPECT_GT(us, 0);
  std::optional<DeviceMemory> memory = MemoryOf(device);
  ASSERT_TRUE(memory.has_value());
  EXPECT_GE(memory->allocated, 2 * 2048 * 2048 * 4);
  EXPECT_GE(memory->reserved, memory->allocated);
  std::printf("2048^2 matmul on %s: %lld us on the device; allocator %lld / %lld bytes\n",
              name.c_str(), static_cast<long long>(us), static_cast<long long>(memory->allocated),
              static_cast<long long>(memory->reserved));
}

}  // namespace
}  // namespace convnext
