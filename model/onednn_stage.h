// OneDnnStage: the CPU fast path for the blocks of one ConvNeXt stage.
//
// The ATen path runs a block as nine operators with two permute copies, and materialises the
// GELU's input and output (the largest activations: 4x the stage's channels) separately. Here a
// block is four oneDNN primitives on channels-last (NHWC) activations, with the elementwise work
// fused into the matrix products:
//
//   depthwise conv 7x7 + bias                 x -> y       (convolution, nhwc)
//   LayerNorm over channels, in place         y -> y       (layer normalization)
//   fc1 + bias + exact (erf) GELU             y -> h       (matmul, eltwise post-op)
//   fc2 + bias (layer scale folded) + x       h -> x       (matmul, sum post-op: the residual
//                                                           is accumulated into x in place)
//
// The depthwise weights are reordered once, at load, into the blocked layout oneDNN's kernel
// wants; the pointwise layers' weights are used in place (repacking them measured no faster). The
// primitives depend on the activation shape (N, H, W): each is created on the first batch of a
// shape and cached (a bounded cache; creating one costs about a millisecond). Numerics: the same
// operations in float32, with oneDNN's erf; results agree with the ATen path to about 1e-6 (the
// parity tests hold both paths to 1e-4 against torchvision).
//
// CPU and float32 only; ConvNeXt uses the ATen path on other devices and dtypes.
// Thread safety: Run() may be called from several threads at once.
#ifndef CONVNEXT_MODEL_ONEDNN_STAGE_H_
#define CONVNEXT_MODEL_ONEDNN_STAGE_H_

#include <ATen/core/Tensor.h>

#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace convnext {

// One block's weights, float32 contiguous CPU tensors in the reference layouts.
struct BlockWeights {
  at::Tensor dw_weight, dw_bias;      // [C,1,7,7], [C]
  at::Tensor norm_weight, norm_bias;  // [C]
  at::Tensor fc1_weight, fc1_bias;    // [4C,C], [4C]
  // fc2 with the layer scale folded in: gamma * (W2 h + b2) = (gamma W2) h + gamma b2.
  at::Tensor fc2_weight, fc2_bias;  // [C,4C], [C]
};

class OneDnnStage {
 public:
  // Prepares the stage's blocks. Keeps the pointwise weights (float32, contiguous) without a
  // copy; repacks the small depthwise ones. INTERNAL if oneDNN has no kernel for them.
  static absl::StatusOr<std::unique_ptr<OneDnnStage>> Create(std::vector<BlockWeights> blocks,
                                                             double layer_norm_eps);
  ~OneDnnStage();

  OneDnnStage(const OneDnnStage&) = delete;
  OneDnnStage& operator=(const OneDnnStage&) = delete;

  // Runs every block of the stage on x, a contiguous float32 CPU tensor [N, H, W, C], which is
  // updated in place (each block adds its residual to it). INTERNAL if oneDNN fails.
  absl::Status Run(at::Tensor& x) const;

  // Creates (and caches) the primitives for activations [n, h, w, C] without running them, so
  // that the first batch of that shape does not pay for it. INTERNAL if oneDNN fails.
  absl::Status Prepare(int64_t n, int64_t h, int64_t w) const;

 private:
  struct Impl;
  explicit OneDnnStage(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace convnext

#endif  // CONVNEXT_MODEL_ONEDNN_STAGE_H_
