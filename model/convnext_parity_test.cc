// Parity with torchvision: random-weight models of every variant, generated at test time by
// tests/python/convnext_reference.py, must give the same logits, embeddings and stage outputs.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "checkpoint/safetensors.h"
#include "model/convnext.h"
#include "model/load_model.h"
#include "model/process_tuning.h"
#include "testing/reference.h"

namespace convnext {
namespace {

using ::testing::HasSubstr;
using testing::MaxAbsDiff;
using testing::ReadReference;
using testing::TestdataPath;

constexpr double kTolerance = 1e-4;

nlohmann::json Manifest() {
  std::ifstream in(TestdataPath("manifest.json"));
  return nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
}

// On a GPU, float32 means float32: TensorFloat-32 (on by default for cuDNN's convolutions) would
// round the matrix products' inputs to 10 bits and miss the 1e-4 tolerance.
void DisableTf32() {
  at::globalContext().setAllowTF32CuBLAS(false);
  at::globalContext().setAllowTF32CuDNN(false);
}

// Models load on the test device (testing::TestDevice(): CONVNEXT_TEST_DEVICE, default cpu).
std::unique_ptr<ConvNeXt> Load(const std::string& path, const std::string& variant = "",
                               c10::ScalarType dtype = at::kFloat, bool tf32 = false) {
  LoadOptions options;
  options.path = path;
  options.variant = variant;
  options.model.dtype = dtype;
  options.model.allow_tf32 = tf32;
  absl::StatusOr<c10::Device> device = ParseDevice(testing::TestDevice());
  EXPECT_TRUE(device.ok()) << device.status();
  if (device.ok()) options.model.device = *device;
  DisableTf32();
  SetIntraOpThreads(2);
  absl::StatusOr<LoadedModel> loaded = LoadModel(options);
  EXPECT_TRUE(loaded.ok()) << loaded.status();
  return loaded.ok() ? std::move(loaded->model) : nullptr;
}

at::Tensor Logits(const ConvNeXt& model, const at::Tensor& input) {
  absl::StatusOr<ForwardOutputs> out = model.Forward(input, OutputRequest());
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? out->logits : at::zeros({1});
}

struct VariantCase {
  std::string name;     // Case name in the reference data.
  std::string variant;  // Expected inferred variant.
};

class VariantParityTest : public ::testing::TestWithParam<VariantCase> {};

TEST_P(VariantParityTest, LogitsAndParameterCountMatchTorchvision) {
  const VariantCase& c = GetParam();
  const nlohmann::json manifest = Manifest();
  ASSERT_FALSE(manifest.is_discarded());
  std::unique_ptr<ConvNeXt> model = Load(TestdataPath(c.name + ".safetensors"));
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(model->config().variant, c.variant);
  EXPECT_EQ(model->parameter_count(), manifest["cases"][c.name]["params"].get<int64_t>());
  const at::Tensor expected = ReadReference(c.name + ".logits.npy");
  const at::Tensor got = Logits(*model, ReadReference(c.name + ".input.npy"));
  EXPECT_LE(MaxAbsDiff(got, expected), kTolerance) << c.name;
}

INSTANTIATE_TEST_SUITE_P(
    AllVariants, VariantParityTest,
    ::testing::Values(VariantCase{"tiny", "convnext_tiny"}, VariantCase{"small", "convnext_small"},
                      VariantCase{"base", "convnext_base"}, VariantCase{"large", "convnext_large"},
                      VariantCase{"xlarge", "convnext_xlarge"}, VariantCase{"custom", "custom"}),
    [](const auto& info) { return info.param.name; });

class FeatureParityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(FeatureParityTest, EmbeddingAndStagesMatchOnNonSquareInput) {
  const std::string name = GetParam();
  std::unique_ptr<ConvNeXt> model = Load(TestdataPath(name + ".safetensors"));
  ASSERT_NE(model, nullptr);
  OutputRequest request;
  request.logits = false;
  request.embedding = true;
  request.stages = true;
  absl::StatusOr<ForwardOutputs> out =
      model->Forward(ReadReference(name + ".features_input.npy"), request);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_FALSE(out->logits.defined());
  EXPECT_LE(MaxAbsDiff(out->embedding, ReadReference(name + ".embedding.npy")), kTolerance);
  ASSERT_EQ(out->stages.size(), 4u);
  for (int i = 0; i < 4; ++i) {
    const at::Tensor expected = ReadReference(absl::StrCat(name, ".stage", i + 1, ".npy"));
    EXPECT_LE(MaxAbsDiff(out->stages[i], expected), kTolerance) << "stage " << i + 1;
    EXPECT_TRUE(out->stages[i].is_contiguous());
  }
}

INSTANTIATE_TEST_SUITE_P(FeatureCases, FeatureParityTest, ::testing::Values("tiny", "custom"));

TEST(ConvNeXtTest, NamedVariantIsCheckedNotInferred) {
  std::unique_ptr<ConvNeXt> model = Load(TestdataPath("tiny.safetensors"), "convnext_tiny");
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(model->parameter_count(), 28589128);
}

TEST(ConvNeXtTest, EachImageOfABatchEqualsItselfAlone) {
  std::unique_ptr<ConvNeXt> model = Load(TestdataPath("custom.safetensors"));
  ASSERT_NE(model, nullptr);
  const at::Tensor input = ReadReference("custom.input.npy");
  const at::Tensor batch = Logits(*model, input);
  for (int64_t i = 0; i < input.size(0); ++i) {
    EXPECT_LE(MaxAbsDiff(Logits(*model, input.slice(0, i, i + 1)), batch.slice(0, i, i + 1)), 1e-5);
  }
}

TEST(ConvNeXtTest, EveryBlockMattersToTheOutput) {
  // Guards the parity tests against blind spots: changing the layer scale of the very last block
  // must move the logits far beyond the tolerance.
  absl::StatusOr<StateDict> sd = ReadSafetensors(TestdataPath("custom.safetensors"));
  ASSERT_TRUE(sd.ok());
  sd->at("features.7.1.layer_scale").mul_(2.0);
  const std::string path = ::testing::TempDir() + "/parity_modified.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, *sd).ok());
  std::unique_ptr<ConvNeXt> model = Load(path);
  ASSERT_NE(model, nullptr);
  const at::Tensor got = Logits(*model, ReadReference("custom.input.npy"));
  EXPECT_GT(MaxAbsDiff(got, ReadReference("custom.logits.npy")), 100 * kTolerance);
}

TEST(ConvNeXtTest, DoublePrecisionAlsoMatches) {
  std::unique_ptr<ConvNeXt> model = Load(TestdataPath("custom.safetensors"), "", at::kDouble);
  ASSERT_NE(model, nullptr);
  const at::Tensor got = Logits(*model, ReadReference("custom.input.npy"));
  EXPECT_EQ(got.scalar_type(), at::kDouble);
  EXPECT_LE(MaxAbsDiff(got, ReadReference("custom.logits.npy")), kTolerance);
}

TEST(ConvNeXtTest, HeadlessBackboneGivesFeaturesButNoLogits) {
  absl::StatusOr<StateDict> sd = ReadSafetensors(TestdataPath("custom.safetensors"));
  ASSERT_TRUE(sd.ok());
  sd->erase("classifier.2.weight");
  sd->erase("classifier.2.bias");
  const std::string path = ::testing::TempDir() + "/parity_headless.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, *sd).ok());
  std::unique_ptr<ConvNeXt> model = Load(path);
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(model->config().num_classes, 0);
  const at::Tensor input = ReadReference("custom.features_input.npy");
  absl::StatusOr<ForwardOutputs> logits = model->Forward(input, OutputRequest());
  EXPECT_EQ(logits.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(logits.status().message()), HasSubstr("no classification head"));
  OutputRequest request;
  request.logits = false;
  request.embedding = true;
  absl::StatusOr<ForwardOutputs> out = model->Forward(input, request);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_LE(MaxAbsDiff(out->embedding, ReadReference("custom.embedding.npy")), kTolerance);
}

TEST(ConvNeXtTest, BadInputsAreInvalidArgument) {
  std::unique_ptr<ConvNeXt> model = Load(TestdataPath("custom.safetensors"));
  ASSERT_NE(model, nullptr);
  const std::pair<at::Tensor, const char*> cases[] = {
      {at::zeros({3, 64, 64}), "4-d tensor"},
      {at::zeros({1, 4, 64, 64}), "expected [N >= 1, 3, H >= 32, W >= 32]"},
      {at::zeros({1, 3, 31, 64}), "H >= 32"},
      {at::zeros({0, 3, 64, 64}), "N >= 1"},
      {at::zeros({1, 3, 64, 64}, at::kLong), "expected a floating dtype"},
      {at::Tensor(), "undefined"},
  };
  for (const auto& [input, message] : cases) {
    absl::StatusOr<ForwardOutputs> out = model->Forward(input, OutputRequest());
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument) << message;
    EXPECT_THAT(std::string(out.status().message()), HasSubstr(message));
  }
}

// The reduced precisions a GPU computes in (float16, bfloat16, float32 with TensorFloat-32):
// measured against torchvision's float32 logits (row cosine, top-1 agreement; printed for the
// device check's log) and bounded loosely (a wrong kernel or cast is far off). Needs a CUDA device:
// skipped, with a message, everywhere else; scripts/gpu_check.sh runs it on the GPU machine with
// CONVNEXT_TEST_DEVICE=cuda.
TEST(CudaTest, HalfBfloat16AndTf32AgreeWithFloat32) {
  if (!at::hasCUDA() || testing::TestDevice().rfind("cuda", 0) != 0) {
    GTEST_SKIP() << "needs a CUDA device (this LibTorch " << (at::hasCUDA() ? "sees" : "sees no")
                 << " GPU; CONVNEXT_TEST_DEVICE=" << testing::TestDevice()
                 << "): runs in scripts/gpu_check.sh on the GPU machine";
  }
  const at::Tensor input = ReadReference("tiny.input.npy");
  const at::Tensor expected = ReadReference("tiny.logits.npy").to(at::kDouble);
  for (const auto& [dtype, tf32] : std::vector<std::pair<c10::ScalarType, bool>>{
           {at::kHalf, false}, {at::kBFloat16, false}, {at::kFloat, true}}) {
    std::unique_ptr<ConvNeXt> model = Load(TestdataPath("tiny.safetensors"), "", dtype, tf32);
    ASSERT_NE(model, nullptr);
    const at::Tensor got = Logits(*model, input).to(at::kDouble).cpu();
    ASSERT_EQ(got.sizes(), expected.sizes());
    const at::Tensor cosine = (got * expected).sum(1) / (got.norm(2, {1}) * expected.norm(2, {1}));
    const double lowest = cosine.min().item<double>();
    const int64_t agree = got.argmax(1).eq(expected.argmax(1)).sum().item<int64_t>();
    std::printf("tiny on %s in %s: lowest cosine of logits %.6f, top-1 %lld/%lld\n",
                testing::TestDevice().c_str(), model->compute_dtype_name().c_str(), lowest,
                static_cast<long long>(agree), static_cast<long long>(got.size(0)));
    EXPECT_GT(lowest, 0.99) << model->compute_dtype_name();
  }
}

}  // namespace
}  // namespace convnext
