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

using ::testing::AllOf;
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

// Float32Mode: the modes exclude each other, the refusal names the holder, the switches follow
// the TF32 holders, and a mode is free again once its last holder is gone.
TEST(DeviceTest, Tf32AndStrictFloat32ExcludeEachOtherProcessWide) {
  absl::StatusOr<std::unique_ptr<Float32ModeHold>> strict =
      HoldFloat32Mode(Float32Mode::kStrict, "model 'a' version 1");
  ASSERT_TRUE(strict.ok()) << strict.status();
  EXPECT_FALSE(at::globalContext().allowTF32CuDNN());
  EXPECT_FALSE(at::globalContext().allowTF32CuBLAS());
  absl::StatusOr<std::unique_ptr<Float32ModeHold>> refused =
      HoldFloat32Mode(Float32Mode::kTf32, "model 'b' version 1");
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.status().message()),
              AllOf(HasSubstr("float32 on CUDA with TensorFloat-32 (TF32) cannot load while "
                              "model 'a' version 1 computes float32 on CUDA without it"),
                    HasSubstr("process-wide")));
  strict->reset();

  absl::StatusOr<std::unique_ptr<Float32ModeHold>> tf32 =
      HoldFloat32Mode(Float32Mode::kTf32, "model 'b' version 1");
  ASSERT_TRUE(tf32.ok()) << tf32.status();
  absl::StatusOr<std::unique_ptr<Float32ModeHold>> tf32_too =
      HoldFloat32Mode(Float32Mode::kTf32, "model 'b' version 2");
  ASSERT_TRUE(tf32_too.ok()) << tf32_too.status();
  EXPECT_TRUE(at::globalContext().allowTF32CuDNN());
  EXPECT_TRUE(at::globalContext().allowTF32CuBLAS());
  const absl::Status no_strict =
      HoldFloat32Mode(Float32Mode::kStrict, "model 'c' version 1").status();
  EXPECT_EQ(no_strict.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(no_strict.message()), HasSubstr("while model 'b' version "));
  tf32->reset();
  EXPECT_TRUE(at::globalContext().allowTF32CuDNN()) << "one TF32 holder is left";
  tf32_too->reset();
  EXPECT_FALSE(at::globalContext().allowTF32CuDNN());
  EXPECT_FALSE(at::globalContext().allowTF32CuBLAS());
  EXPECT_TRUE(HoldFloat32Mode(Float32Mode::kStrict, "model 'c' version 1").ok());
}

// TF32 is for float32 CUDA models; elsewhere it is a clear error, never silently ignored.
TEST(DeviceTest, Tf32IsRefusedOutsideFloat32OnCuda) {
  ModelOptions options;
  options.allow_tf32 = true;
  const absl::Status cpu = TinyModel(options).status();
  EXPECT_EQ(cpu.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(cpu.message()),
              HasSubstr("TensorFloat-32 applies to float32 models on a CUDA device only"));
  const std::string name = testing::TestDevice();
  if (name.rfind("cuda", 0) != 0 || !at::hasCUDA()) {
    GTEST_SKIP() << "the CUDA half needs a CUDA device (CONVNEXT_TEST_DEVICE=" << name
                 << "): runs in scripts/gpu_check.sh on the GPU machine";
  }
  options.device = c10::Device(name);
  options.dtype = at::kHalf;
  EXPECT_EQ(TinyModel(options).status().code(), absl::StatusCode::kInvalidArgument);
  // A float32 TF32 model and a strict one cannot be alive together.
  options.dtype = at::kFloat;
  options.owner = "the TF32 one";
  absl::StatusOr<std::unique_ptr<ConvNeXt>> tf32 = TinyModel(options);
  ASSERT_TRUE(tf32.ok()) << tf32.status();
  EXPECT_EQ((*tf32)->compute_dtype_name(), "tf32");
  options.allow_tf32 = false;
  const absl::Status strict = TinyModel(options).status();
  EXPECT_EQ(strict.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(strict.message()),
              HasSubstr("while the TF32 one computes float32 on CUDA with it"));
  tf32->reset();
  EXPECT_TRUE(TinyModel(options).ok());
}

// CUDA graphs are for CUDA devices: asked for elsewhere, a clear error; not asked for, nothing.
TEST(DeviceTest, CudaGraphsAreRefusedOffCuda) {
  ModelOptions options;
  options.cuda_graph_max_batch = 4;
  const absl::Status cpu = TinyModel(options).status();
  EXPECT_EQ(cpu.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(cpu.message()), HasSubstr("CUDA graphs need a CUDA device, not cpu"));
  const absl::Status capture = CapturedGraph::Capture(c10::Device("cpu"), [] {}).status();
  EXPECT_EQ(capture.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(capture.message()), HasSubstr("CUDA graphs need a CUDA device"));
  options.cuda_graph_max_batch = 0;
  absl::StatusOr<std::unique_ptr<ConvNeXt>> model = TinyModel(options);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_TRUE((*model)->CaptureGraphs(8, 64).ok());
  EXPECT_EQ((*model)->captured_graphs(), 0);
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
