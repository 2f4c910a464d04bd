#include "image/tensor_image.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace convnext {
namespace {

constexpr uint64_t kMaxPixels = 1 << 20;

std::string Bytes(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
}

TEST(TensorImageTest, FiniteValuesComeBackAsTheyWere) {
  at::manual_seed(3);
  at::Tensor t = at::randn({3, 40, 36}) * 100;
  // Values at the edges of the finite range are finite too.
  t[0][0][0] = std::numeric_limits<float>::max();
  t[1][2][3] = -std::numeric_limits<float>::max();
  t[2][5][7] = std::numeric_limits<float>::denorm_min();
  t[2][5][8] = -0.0f;
  absl::StatusOr<at::Tensor> got =
      TensorImage(Bytes(t), {3, 40, 36}, TensorImageDType::kFloat32, kMaxPixels);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->sizes(), (std::vector<int64_t>{1, 3, 40, 36}));
  EXPECT_TRUE(at::equal(*got, t.unsqueeze(0)));
}

TEST(TensorImageTest, OneNanOrInfinityAnywhereIsRefused) {
  const float bad[] = {
      std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN(),
      std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()};
  const int64_t numel = 3 * 33 * 35;
  for (const float value : bad) {
    for (const int64_t at : {int64_t{0}, numel / 2 + 1, numel - 1}) {
      SCOPED_TRACE("value " + std::to_string(value) + " at " + std::to_string(at));
      at::Tensor t = at::rand({3, 33, 35});
      t.view(-1)[at] = value;
      absl::StatusOr<at::Tensor> got =
          TensorImage(Bytes(t), {1, 3, 33, 35}, TensorImageDType::kFloat32, kMaxPixels);
      ASSERT_FALSE(got.ok());
      EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_NE(got.status().message().find("NaN or infinite"), std::string::npos) << got.status();
    }
  }
}

TEST(TensorImageTest, HalfPrecisionInfinityIsRefusedAndItsLargestValueKept) {
  at::Tensor t = at::rand({3, 32, 32}).to(at::kHalf);
  t[1][4][4] = 65504.0;  // float16's largest finite value.
  absl::StatusOr<at::Tensor> got =
      TensorImage(Bytes(t), {3, 32, 32}, TensorImageDType::kFloat16, kMaxPixels);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->scalar_type(), at::kFloat);
  EXPECT_EQ(got->index({0, 1, 4, 4}).item<float>(), 65504.0f);
  t[2][31][31] = std::numeric_limits<float>::infinity();
  got = TensorImage(Bytes(t), {3, 32, 32}, TensorImageDType::kFloat16, kMaxPixels);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace convnext
