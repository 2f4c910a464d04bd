// Global Response Normalization (ConvNeXt V2, Woo et al. 2023), the one implementation both the
// ATen path (ConvNeXt::RunBlock) and the CPU fast path (OneDnnStage) apply to a block's hidden
// layer after the GELU.
#ifndef CONVNEXT_MODEL_GRN_H_
#define CONVNEXT_MODEL_GRN_H_

#include <ATen/core/Tensor.h>

namespace convnext {

// GRN of `rows`, in place: N images' L positions of C channels, [N, L, C] (any layout). Each
// channel's L2 norm over an image's positions (over those where `mask` is 1, if it is defined:
// [N, ..., 1] with L positions per image, a padded batch's mask), divided by the mean of the
// channels' norms plus 1e-6, gives N(x); then x <- x * (1 + gamma * N(x)) + beta, which is FAIR's
// and timm's gamma * (x * N(x)) + beta + x. The norms are computed in float32 (float64 for
// float64 rows); the update is one pass over `rows`. `gamma` and `beta` are [C].
void ApplyGrn(const at::Tensor& rows, const at::Tensor& mask, const at::Tensor& gamma,
              const at::Tensor& beta);

}  // namespace convnext

#endif  // CONVNEXT_MODEL_GRN_H_
