#include "model/amx_mlp.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

namespace convnext {
namespace {

constexpr double kEps = 1e-6;

// The same steps in ATen: the LayerNorm in float32 rounded to bfloat16, the rows and weights
// widened to float32 (products of bfloat16 values are exact in float32), float32 accumulation,
// exact GELU, the GELU's output rounded to bfloat16, fc2 and the residual in float32.
at::Tensor Reference(const at::Tensor& y, const at::Tensor& x, const at::Tensor& gamma,
                     const at::Tensor& beta, const at::Tensor& w1, const at::Tensor& b1,
                     const at::Tensor& w2, const at::Tensor& b2) {
  const at::Tensor normed =
      at::layer_norm(y, {y.size(1)}, gamma, beta, kEps).to(at::kBFloat16).to(at::kFloat);
  const at::Tensor h = at::linear(normed, w1.to(at::kBFloat16).to(at::kFloat), b1);
  const at::Tensor g = at::gelu(h).to(at::kBFloat16).to(at::kFloat);
  return x + at::linear(g, w2.to(at::kBFloat16).to(at::kFloat), b2);
}

TEST(AmxMlpTest, MatchesAtenOnTheSameSteps) {
  if (!AmxMlpAvailable()) {
    GTEST_SKIP() << "this CPU has no AMX-BF16 (or Linux refused the tile state): bfloat16 blocks "
                    "use oneDNN's matrix products here";
  }
  at::manual_seed(5);
  for (const int64_t c : {32, 64, 96, 128}) {
    // Row counts around the 32-row blocks (the last one zero-padded) and the threads' split.
    for (const int64_t rows : {1, 16, 31, 32, 33, 100, 257}) {
      SCOPED_TRACE("C " + std::to_string(c) + ", rows " + std::to_string(rows));
      const at::Tensor w1 = at::randn({4 * c, c}) / std::sqrt(static_cast<double>(c));
      const at::Tensor b1 = at::randn({4 * c});
      const at::Tensor w2 = at::randn({c, 4 * c}) / std::sqrt(4.0 * static_cast<double>(c));
      const at::Tensor b2 = at::randn({c});
      // Rows of several scales and offsets (the LayerNorm removes them); gamma up to 12 so that
      // fc1's outputs reach |x| > 8.5, where the GELU is clamped.
      const at::Tensor y = at::randn({rows, c}) * at::rand({rows, 1}) * 5 + at::randn({rows, 1});
      const at::Tensor gamma = at::rand({c}) * 12, beta = at::randn({c});
      const at::Tensor x = at::randn({rows, c});
      absl::StatusOr<AmxMlpWeights> mlp = AmxMlpWeights::Pack(gamma, beta, kEps, w1, b1, w2, b2);
      ASSERT_TRUE(mlp.ok()) << mlp.status();
      EXPECT_EQ(mlp->channels(), c);
      at::Tensor got = x.clone();
      mlp->Run(y.data_ptr<float>(), rows, got.data_ptr<float>());
      const at::Tensor ref = Reference(y, x, gamma, beta, w1, b1, w2, b2);
      // The MLP's contribution, against which the error is measured: a few of the GELU's
      // outputs rounded to bfloat16 the other way after another summation order moved the
      // results by up to 2.5e-4 of it (measured on an AMX Xeon); a wrong weight, bias, row or
      // GELU moves them by far more than 2e-3.
      const double scale = (ref - x).abs().max().item<double>();
      const double error = (got - ref).abs().max().item<double>();
      EXPECT_LE(error, 2e-3 * scale) << "largest contribution " << scale;
    }
  }
}

TEST(AmxMlpTest, RefusesChannelsThatAreNotMultiplesOf32) {
  const at::Tensor w1 = at::zeros({192, 48}), w2 = at::zeros({48, 192});
  absl::StatusOr<AmxMlpWeights> mlp = AmxMlpWeights::Pack(at::ones({48}), at::zeros({48}), kEps, w1,
                                                          at::zeros({192}), w2, at::zeros({48}));
  EXPECT_EQ(mlp.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(mlp.status().message()).find("multiple of 32"), std::string::npos);
  // Mismatched shapes too (fc2, then the LayerNorm's weight).
  EXPECT_FALSE(AmxMlpWeights::Pack(at::ones({32}), at::zeros({32}), kEps, at::zeros({128, 32}),
                                   at::zeros({128}), at::zeros({32, 64}), at::zeros({32}))
                   .ok());
  EXPECT_FALSE(AmxMlpWeights::Pack(at::ones({64}), at::zeros({32}), kEps, at::zeros({128, 32}),
                                   at::zeros({128}), at::zeros({32, 128}), at::zeros({32}))
                   .ok());
}

}  // namespace
}  // namespace convnext
