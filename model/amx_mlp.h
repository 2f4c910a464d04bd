// The bfloat16 blocks' pointwise part as one kernel of our own on AMX tiles: the LayerNorm, fc1,
// its bias and the exact (erf) GELU, fc2, its bias and the residual, 32 rows at a time, the
// normalised rows and the GELU's output (4x the channels) kept in per-thread buffers that never
// leave the cache.
//
// Why: with oneDNN 2.6 a block's MLP is two matrix products, and fc1's GELU post-op (gelu_erf)
// costs about as much as the product itself (prototype on an AMX Xeon, [25088, 96] x [96, 384],
// 2 threads: 1.8 ms without it, 3.5 ms with it), and the GELU's output, 8x the size of the
// block's input in bfloat16, goes to memory and back between the two products. Here the GELU of
// one 32 x 32 block runs on the vector units while the tiles compute the next, and fc2 reads the
// GELU's output from the cache. convnext_tiny in bfloat16 (bench/model_throughput, AMX Xeon, 2
// threads, alternating runs, batch 1 / 8): 50-54 / 87-94 img/s with oneDNN, 72-76 / 117-121 with
// this kernel; base, large and xlarge (fc2 weights up to 32 MB) no slower than with oneDNN
// (measured before the LayerNorm and the row groups moved into the kernel).
//
// Numerics: the LayerNorm as model/layer_norm_rows.h computes it (float32, rounded to bfloat16),
// the products in bfloat16 with float32 accumulation, as oneDNN's; bias and GELU in
// float32 (erfc after Abramowitz & Stegun 7.1.26, absolute error below 1.5e-7, with our own exp),
// the GELU's output rounded to bfloat16 (nearest even) for fc2, fc2's result added to the float32
// residual. AmxMlpTest holds it to an ATen computation of the same steps.
//
// Needs AMX-BF16 and AVX512-BF16, and Linux's permission for the tile state (asked for once, by
// AmxMlpAvailable()). Channels a multiple of 32.
#ifndef CONVNEXT_MODEL_AMX_MLP_H_
#define CONVNEXT_MODEL_AMX_MLP_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "absl/status/statusor.h"

namespace convnext {

// Whether the kernel runs here: the CPU has AMX-BF16, AMX-TILE and AVX512-BF16, and Linux let this
// process use the tile registers (arch_prctl ARCH_REQ_XCOMP_PERM, asked once).
bool AmxMlpAvailable();

// One block's LayerNorm and MLP weights; fc1's and fc2's converted to bfloat16 and packed in the
// tiles' layout once.
class AmxMlpWeights {
 public:
  // norm_weight, norm_bias [C]; fc1_weight [4C, C], fc1_bias [4C], fc2_weight [C, 4C], fc2_bias
  // [C]: float32 (the reference layouts, out x in). INVALID_ARGUMENT unless C is a positive
  // multiple of 32 and the shapes agree.
  static absl::StatusOr<AmxMlpWeights> Pack(const at::Tensor& norm_weight,
                                            const at::Tensor& norm_bias, double eps,
                                            const at::Tensor& fc1_weight,
                                            const at::Tensor& fc1_bias,
                                            const at::Tensor& fc2_weight,
                                            const at::Tensor& fc2_bias);

  int64_t channels() const { return channels_; }

  // x[r] += fc2(gelu(fc1(bfloat16(LayerNorm(y[r]))))) for each of `rows` rows: y (the depthwise
  // convolution's output) and x are float32 rows [rows, C]. Each thread normalises the rows it
  // multiplies (model/layer_norm_rows.h, on its own 32-row blocks): no separate pass, no bfloat16
  // copy of y in memory. Parallel over 32-row blocks with ATen's intra-op threads. Only where
  // AmxMlpAvailable().
  void Run(const float* y, int64_t rows, float* x) const;

 private:
  int64_t channels_ = 0;
  float eps_ = 0;
  at::Tensor norm_weight_, norm_bias_;  // float32.
  // bfloat16, tiles of 16 (k pairs) x 16 (outputs) x 2: [out / 16][in / 32][16][16][2].
  at::Tensor fc1_, fc2_;
  at::Tensor fc1_bias_, fc2_bias_;  // float32.
};

}  // namespace convnext

#endif  // CONVNEXT_MODEL_AMX_MLP_H_
