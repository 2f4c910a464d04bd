#include "model/avx512_mlp.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace convnext {
namespace {

constexpr double kEps = 1e-6;

// The block's steps in ATen, in float64: LayerNorm, fc1, exact GELU, fc2, residual.
at::Tensor Reference(const at::Tensor& y, const at::Tensor& x, const at::Tensor& gamma,
                     const at::Tensor& beta, const at::Tensor& w1, const at::Tensor& b1,
                     const at::Tensor& w2, const at::Tensor& b2) {
  auto d = [](const at::Tensor& t) { return t.to(at::kDouble); };
  const at::Tensor normed = at::layer_norm(d(y), {y.size(1)}, d(gamma), d(beta), kEps);
  const at::Tensor h = at::gelu(at::linear(normed, d(w1), d(b1)));
  return d(x) + at::linear(h, d(w2), d(b2));
}

TEST(Avx512MlpTest, MatchesAtenLayerNormLinearAndGelu) {
  if (!Avx512MlpAvailable()) {
    GTEST_SKIP() << "this CPU has no AVX-512F: float32 blocks use oneDNN's matrix products here";
  }
  at::manual_seed(7);
  struct Case {
    int64_t c;
    std::vector<int64_t> rows;
  };
  // Channels whose 4C (fc1's outputs) and C (fc2's) end in panels of 16, 32, 48 and 64 outputs;
  // row counts around the 6-row tiles and the threads' split, and (C 128: groups of at most 256
  // rows, their number a multiple of the threads, their sizes a tile apart at most) several
  // groups a thread; inputs taken in 128 at a time: C 48's fc2 in two chunks (the last short),
  // C 272's fc1 in three (the first, a middle one and the last, of 16).
  for (const Case& test : {Case{16, {1, 5, 6, 7, 13}}, Case{48, {1, 6, 100}},
                           Case{96, {1, 11, 49, 257}}, Case{128, {3, 1000}}, Case{272, {7, 40}}}) {
    const int64_t c = test.c;
    for (const int64_t rows : test.rows) {
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
      absl::StatusOr<Avx512MlpWeights> mlp =
          Avx512MlpWeights::Pack(gamma, beta, kEps, w1, b1, w2, b2);
      ASSERT_TRUE(mlp.ok()) << mlp.status();
      EXPECT_EQ(mlp->channels(), c);
      at::Tensor got = x.clone();
      mlp->Run(y.data_ptr<float>(), rows, got.data_ptr<float>());
      const at::Tensor ref = Reference(y, x, gamma, beta, w1, b1, w2, b2);
      // Against the MLP's contribution: float32 rounding (gamma up to 12 makes fc1's sums large)
      // moved ours by up to 2.3e-5 of it and ATen's own float32 steps by up to 6.6e-5 (C 128,
      // 1000 rows); a wrong weight, bias, row or panel moves it by far more than 1e-4.
      const double scale = (ref - x.to(at::kDouble)).abs().max().item<double>();
      const double error = (got.to(at::kDouble) - ref).abs().max().item<double>();
      EXPECT_LE(error, 1e-4 * scale) << "largest contribution " << scale;
    }
  }
}

TEST(Avx512MlpTest, RefusesChannelsThatAreNotMultiplesOf16) {
  const at::Tensor w1 = at::zeros({160, 40}), w2 = at::zeros({40, 160});
  absl::StatusOr<Avx512MlpWeights> mlp = Avx512MlpWeights::Pack(
      at::ones({40}), at::zeros({40}), kEps, w1, at::zeros({160}), w2, at::zeros({40}));
  EXPECT_EQ(mlp.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(mlp.status().message()).find("multiple of 16"), std::string::npos);
  // Mismatched shapes too (fc2, then the LayerNorm's weight).
  EXPECT_FALSE(Avx512MlpWeights::Pack(at::ones({16}), at::zeros({16}), kEps, at::zeros({64, 16}),
                                      at::zeros({64}), at::zeros({16, 32}), at::zeros({16}))
                   .ok());
  EXPECT_FALSE(Avx512MlpWeights::Pack(at::ones({32}), at::zeros({16}), kEps, at::zeros({64, 16}),
                                      at::zeros({64}), at::zeros({16, 64}), at::zeros({16}))
                   .ok());
}

}  // namespace
}  // namespace convnext
