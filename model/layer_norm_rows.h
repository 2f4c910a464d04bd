// The CPU fast path's block LayerNorm as an AVX-512 kernel of our own, writing float32 or, for
// bfloat16 blocks, the rounded bfloat16 rows the matrix products read, in the same pass.
//
// Why: at batch 1 oneDNN 2.6's LayerNorm (simple_layer_normalization) and the float32 -> bfloat16
// reorder after it took about 13% of convnext_tiny's bfloat16 pass on an AMX Xeon (ONEDNN_VERBOSE:
// 0.07 ms each for stage 3's 196 x 384 rows, about 1 ns an element), mostly fixed cost per call.
// One pass of our own does both.
//
// Numerics: per row, the mean, then the mean of squared deviations (two passes over the row,
// which is in L1), float32 throughout, as oneDNN and ATen compute them; the bfloat16 output is
// rounded to nearest even, as oneDNN's reorder rounds. LayerNormRowsTest holds both outputs to
// ATen's layer_norm.
//
// Needs AVX-512F (and AVX512-BF16 with BW and VL for the bfloat16 output): LayerNormRowsAvailable()
// says whether this CPU has them; where it does not, the fast path keeps oneDNN's primitives.
#ifndef CONVNEXT_MODEL_LAYER_NORM_ROWS_H_
#define CONVNEXT_MODEL_LAYER_NORM_ROWS_H_

#include <cstdint>

namespace convnext {

// Whether the kernels run here: float32 output (AVX-512F), or bfloat16 output too.
bool LayerNormRowsAvailable(bool bf16_output);

// dst[r] = (src[r] - mean) / sqrt(var + eps) * gamma + beta for each of `rows` rows of `c`
// floats; dst may equal src. Parallel over rows with ATen's intra-op threads.
void LayerNormRows(const float* src, float* dst, int64_t rows, int64_t c, const float* gamma,
                   const float* beta, float eps);

// The same, rounded to bfloat16 (dst holds bfloat16 bit patterns).
void LayerNormRowsToBf16(const float* src, uint16_t* dst, int64_t rows, int64_t c,
                         const float* gamma, const float* beta, float eps);

// The same two on the calling thread only: for a kernel that normalises the rows it is about to
// use inside its own parallel region (model/amx_mlp.h, model/avx512_mlp.h).
void LayerNormRowsOnThisThread(const float* src, float* dst, int64_t rows, int64_t c,
                               const float* gamma, const float* beta, float eps);
void LayerNormRowsToBf16OnThisThread(const float* src, uint16_t* dst, int64_t rows, int64_t c,
                                     const float* gamma, const float* beta, float eps);

}  // namespace convnext

#endif  // CONVNEXT_MODEL_LAYER_NORM_ROWS_H_
