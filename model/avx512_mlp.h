// The float32 blocks' pointwise part as one AVX-512 kernel of our own: the LayerNorm, fc1, its
// bias and the exact (erf) GELU, fc2, its bias and the residual, a group of rows at a time, the
// normalised rows and the GELU's output (4x the channels) kept in per-thread buffers that stay in
// the core's L2.
//
// Why: with oneDNN 2.6 a block's MLP is a LayerNorm and two matrix products; fc1's GELU post-op
// (gelu_erf) costs about 0.8 ns an element, and the GELU's output, 4x the block's input, goes to
// memory and back between the two products. Here the GELU is applied to each 6 x 64 tile of fc1's
// result while it is still in registers, and fc2 reads the GELU's output from L2. The products
// are register tiles of 6 rows x 64 outputs (24 accumulators) over weights packed once in panels
// of 64 outputs; each panel is read once per group of rows (as many as keep the GELU's output in
// 3/4 of L2), so the weights come from L3 or memory once per group, not once per row tile, and
// each chunk of them is prefetched into L2 while the one before it is in use.
//
// Numerics: float32 throughout, as oneDNN's and ATen's; another summation order (k in order,
// one accumulator per output) and the GELU of model/gelu_avx512.h (absolute error below 1.5e-7 of
// x's scale) move results by about 1e-6 relative. Avx512MlpTest holds it to ATen's LayerNorm,
// linear and gelu; the fast path's parity tests (<= 1e-4 of torchvision) run through it.
//
// Needs AVX-512F. Channels a multiple of 16.
#ifndef CONVNEXT_MODEL_AVX512_MLP_H_
#define CONVNEXT_MODEL_AVX512_MLP_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "absl/status/statusor.h"

namespace convnext {

// Whether the kernel runs here: the CPU has AVX-512F.
bool Avx512MlpAvailable();

// One block's LayerNorm and MLP weights, float32, fc1's and fc2's packed in the kernel's panels
// once.
class Avx512MlpWeights {
 public:
  // norm_weight, norm_bias [C]; fc1_weight [4C, C], fc1_bias [4C], fc2_weight [C, 4C], fc2_bias
  // [C] (the reference layouts, out x in). INVALID_ARGUMENT unless C is a positive multiple of 16
  // and the shapes agree.
  static absl::StatusOr<Avx512MlpWeights> Pack(const at::Tensor& norm_weight,
                                               const at::Tensor& norm_bias, double eps,
                                               const at::Tensor& fc1_weight,
                                               const at::Tensor& fc1_bias,
                                               const at::Tensor& fc2_weight,
                                               const at::Tensor& fc2_bias);

  int64_t channels() const { return channels_; }

  // x[r] += fc2(gelu(fc1(LayerNorm(y[r])))) for each of `rows` rows: y (the depthwise
  // convolution's output) and x are float32 rows [rows, C]. Each thread normalises the rows it
  // multiplies. Parallel over groups of rows with ATen's intra-op threads. Only where
  // Avx512MlpAvailable().
  void Run(const float* y, int64_t rows, float* x) const;

 private:
  int64_t channels_ = 0;
  float eps_ = 0;
  at::Tensor norm_weight_, norm_bias_;
  // Panels of 64 outputs (the last one 16, 32 or 48 where the outputs are not a multiple of 64),
  // one after the other: the panel of outputs [n0, n0 + w) is [in][w], at n0 * in.
  at::Tensor fc1_, fc2_;
  at::Tensor fc1_bias_, fc2_bias_;
};

}  // namespace convnext

#endif  // CONVNEXT_MODEL_AVX512_MLP_H_
