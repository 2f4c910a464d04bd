// The preprocessing pipeline against torchvision's transform on PIL images, through the model:
// the tensors must match (reference tensors from tests/python/preprocess_reference.py) and a
// random-weight convnext_tiny must rank the same top-5 classes for both. It spans image/ and
// model/, so it lives here rather than beside either.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/match.h"
#include "image/preprocess.h"
#include "model/convnext.h"
#include "model/load_model.h"
#include "model/process_tuning.h"
#include "testing/reference.h"

namespace convnext {
namespace {

using testing::ReadReference;
using testing::TestdataPath;

std::string Photo(const std::string& name) {
  return testing::ReadTestFile(TestdataPath("preprocess/" + name));
}

// ---- Parity with torchvision ----

struct ParityCase {
  std::string name;  // Reference tensor preprocess/<name>.npy.
  std::string image;
  int size;
  double crop_pct;
  Interpolation interpolation;
};

class PreprocessParityTest : public ::testing::TestWithParam<ParityCase> {
 protected:
  static void SetUpTestSuite() {
    LoadOptions options;
    options.path = TestdataPath("tiny.safetensors");
    options.variant = "convnext_tiny";
    SetIntraOpThreads(2);
    absl::StatusOr<LoadedModel> loaded = LoadModel(options);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    model_ = loaded->model.release();
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }

  static at::Tensor Top5(const at::Tensor& input) {
    if (model_ == nullptr) {
      ADD_FAILURE() << "no model";
      return at::zeros({1});
    }
    absl::StatusOr<ForwardOutputs> out = model_->Forward(input, OutputRequest());
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? std::get<1>(at::topk(out->logits, 5, 1)) : at::Tensor();
  }

  static ConvNeXt* model_;  // Random-weight convnext_tiny, shared by the cases.
};

ConvNeXt* PreprocessParityTest::model_ = nullptr;

void PrintTo(const ParityCase& c, std::ostream* os) { *os << c.name; }

// Measured: mean-abs and max-abs 0 for every case, PNG and JPEG alike (the resampler and the
// normalisation are bit-exact, and OpenCV and PIL decode JPEG with the same system libjpeg-turbo).
// Lossless inputs must stay bit-exact. For JPEG the bound leaves room for another decoder build
// (IDCT and chroma upsampling variants move pixels by one 8-bit step, 1 / (255 * std) ~ 0.017 in
// normalised units): 2e-3 allows ~11% of the values one step off, and is 8x below the smallest
// error of a resize without PIL's antialiasing (mean-abs 0.017 to 0.10 on these photos).
constexpr double kJpegMeanAbsBound = 2e-3;

TEST_P(PreprocessParityTest, MatchesTorchvisionTransformOfPilImage) {
  const ParityCase& c = GetParam();
  PreprocessConfig config;
  config.size = c.size;
  config.crop_pct = c.crop_pct;
  config.interpolation = c.interpolation;
  absl::StatusOr<at::Tensor> got = DecodeAndTransform(Photo(c.image), config);
  ASSERT_TRUE(got.ok()) << got.status();
  const at::Tensor expected = ReadReference("preprocess/" + c.name + ".npy");
  ASSERT_EQ(got->sizes(), expected.sizes());
  EXPECT_EQ(got->sizes(), (std::vector<int64_t>{1, 3, c.size, c.size}));
  const at::Tensor diff = (*got - expected).abs();
  const double mean_abs = diff.mean().item<double>(), max_abs = diff.max().item<double>();
  std::printf("%-20s mean-abs %.3g  max-abs %.3g  (%.2f%% of values differ)\n", c.name.c_str(),
              mean_abs, max_abs, 100.0 * (diff > 0).to(at::kFloat).mean().item<double>());
  if (absl::EndsWith(c.image, ".png")) {
    EXPECT_EQ(max_abs, 0.0) << "lossless input must match bit for bit";
  } else {
    EXPECT_LT(mean_abs, kJpegMeanAbsBound);
  }
  EXPECT_TRUE(at::equal(Top5(*got), Top5(expected))) << "top-5 classes differ";
}

INSTANTIATE_TEST_SUITE_P(
    Photos, PreprocessParityTest,
    ::testing::Values(
        ParityCase{"chelsea_224", "chelsea.png", 224, 0.875, Interpolation::kBicubic},
        ParityCase{"coffee_224", "coffee.png", 224, 0.875, Interpolation::kBicubic},
        ParityCase{"astronaut_224", "astronaut.png", 224, 0.875, Interpolation::kBicubic},
        ParityCase{"china_224", "china.jpg", 224, 0.875, Interpolation::kBicubic},
        ParityCase{"flower_224", "flower.jpg", 224, 0.875, Interpolation::kBicubic},
        ParityCase{"chelsea_384", "chelsea.png", 384, 0.875, Interpolation::kBicubic},
        ParityCase{"coffee_400", "coffee.png", 400, 0.875, Interpolation::kBicubic},
        ParityCase{"china_bilinear_224", "china.jpg", 224, 0.875, Interpolation::kBilinear},
        ParityCase{"flower_nearest_224", "flower.jpg", 224, 0.875, Interpolation::kNearest},
        ParityCase{"astronaut_288", "astronaut.png", 288, 0.95, Interpolation::kBicubic},
        ParityCase{"gray_224", "gray.png", 224, 0.875, Interpolation::kBicubic},
        ParityCase{"rgba_224", "rgba.png", 224, 0.875, Interpolation::kBicubic},
        ParityCase{"rgb16_224", "rgb16.png", 224, 0.875, Interpolation::kBicubic},
        ParityCase{"gray16_224", "gray16.png", 224, 0.875, Interpolation::kBicubic}),
    [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace convnext
