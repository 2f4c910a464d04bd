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
// ConvNeXt V2 blocks have Global Response Normalization between fc1 and fc2: a reduction over
// the whole image, so not a post-op: its per-image, per-channel norms (float32) and the scale
// and shift they give are applied to h in place with ATen between the two matrix products
// (ApplyGrn, model/grn.h): a pass for the norms and one for the scale and shift (plus a float32
// copy of h for the norms when h is bfloat16 or a padded batch's mask applies).
//
// The depthwise weights are reordered once, at load, into the blocked layout oneDNN's kernel
// wants; the pointwise layers' weights are used in place (repacking them measured no faster). The
// primitives depend on the activation shape (N, H, W): each is created on the first batch of a
// shape and cached (a bounded cache; creating one costs about a millisecond). Numerics: the same
// operations in float32, with oneDNN's erf; results agree with the ATen path to about 1e-6 (the
// parity tests hold both paths to 1e-4 against torchvision).
//
// bfloat16 (BlockPrecision::kBFloat16, on CPUs with native bfloat16: AVX512-BF16 or AMX-BF16):
// the residual stream x stays float32, and so do the depthwise convolution and the LayerNorm
// (oneDNN 2.6's float32 depthwise kernel measured faster than its bfloat16 one on an AMX Xeon:
// 0.15 against 0.23 ms on [1, 56, 56, 96]; the model 5-10% faster); the normalised rows are rounded
// to bfloat16 once, and both matrix products read and write bfloat16 activations with bfloat16
// weights (converted once, at load), accumulating in float32 (fc2 adds its float32 result into x):
//
//   depthwise conv 7x7 + bias                 x -> y       (float32)
//   LayerNorm over channels, in place         y -> y       (float32)
//   y (f32) -> y16                            (reorder)
//   fc1 + bias + GELU                         y16 -> h16
//   fc2 + bias + x                            h16 -> x (f32, in place)
//
// The matrix products' weights are packed once into the layout oneDNN's bfloat16 kernels want.
// Agreement with float32 is measured, not bit-exact (README, Numerics).
//
// On CPUs with AVX-512 (and where oneDNN uses it) the LayerNorm is not oneDNN's primitive but our
// own kernel (model/layer_norm_rows.h), which in bfloat16 also writes the rounded rows y16 in the
// same pass (no reorder): oneDNN 2.6's LayerNorm and reorder cost about 1 ns an element on stage
// 3's small row counts at batch 1. A/B on an AMX Xeon (model_throughput --bf16, the two builds
// alternating): bfloat16 about 10% faster at batch 1 and 3-16% at batch 8; float32 unchanged.
//
// On CPUs with AMX, bfloat16 V1 blocks whose channels are a multiple of 32 (all of ConvNeXt's
// variants; not the digits model's first stage of 16) run the LayerNorm, fc1, GELU, fc2 and the
// residual as one kernel of our own (model/amx_mlp.h), 32 rows at a time, the normalised rows and
// the GELU's output never leaving the cache: convnext_tiny 1.3-1.4x faster than with oneDNN's
// LayerNorm and two products (README, Performance).
//
// CPU only (float32 input tensors); ConvNeXt uses the ATen path on other devices and dtypes.
// Thread safety: Run() may be called from several threads at once.
#ifndef CONVNEXT_MODEL_ONEDNN_STAGE_H_
#define CONVNEXT_MODEL_ONEDNN_STAGE_H_

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
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
  // ConvNeXt V2 only (GRN between GELU and fc2; no layer scale, so fc2 is as loaded): [4C] each.
  at::Tensor grn_gamma, grn_beta;
};

// Whether this build has the fast path (CMake CONVNEXT_ONEDNN; off in the LibTorch 2.x builds).
// Without it, the functions below say so and OneDnnStage::Create fails.
inline constexpr bool kHaveOneDnnFastPath = CONVNEXT_HAVE_ONEDNN;

// What a block computes in (see the file comment).
enum class BlockPrecision { kFloat32, kBFloat16 };

// "float32" / "bfloat16".
inline const char* BlockPrecisionName(BlockPrecision precision) {
  return precision == BlockPrecision::kBFloat16 ? "bfloat16" : "float32";
}

// The instruction set oneDNN's kernels use on this CPU ("avx2", "avx512_core_bf16",
// "avx512_core_amx", ...): the CPU's, lowered by the ONEDNN_MAX_CPU_ISA environment variable.
std::string OneDnnIsaName();

// Whether oneDNN computes bfloat16 natively here (AVX512-BF16 or AMX-BF16, as OneDnnIsaName()).
// Without it, bfloat16 blocks are refused (emulated bfloat16 would be slower than float32).
bool CpuHasNativeBf16();

// Whether oneDNN uses AMX (tile matrix units) here: the CPUs where bfloat16 blocks are expected to
// beat float32, so the ones where compute_dtype AUTO picks bfloat16. Measured on a 2-core Xeon
// with AVX512-BF16 and no AMX (bench/model_throughput, README): oneDNN 2.6's bfloat16 matrix
// product ran at about half its float32 rate there, and the model at 0.6-0.7x.
bool CpuHasAmx();

class OneDnnStage {
 public:
  // Prepares the stage's blocks. In float32, keeps the pointwise weights (contiguous) without a
  // copy and repacks the small depthwise ones; in bfloat16, converts and packs them all.
  // FAILED_PRECONDITION for bfloat16 on a CPU without native bfloat16 (CpuHasNativeBf16());
  // INTERNAL if oneDNN has no kernel for them. `own_kernels`: where the CPU allows, each block's
  // LayerNorm to residual runs as one kernel of ours (model/avx512_mlp.h in float32,
  // model/amx_mlp.h in bfloat16 on AMX); false: oneDNN's matrix products (the A/B baseline).
  static absl::StatusOr<std::unique_ptr<OneDnnStage>> Create(
      std::vector<BlockWeights> blocks, double layer_norm_eps,
      BlockPrecision precision = BlockPrecision::kFloat32, bool own_kernels = true);
  ~OneDnnStage();

  OneDnnStage(const OneDnnStage&) = delete;
  OneDnnStage& operator=(const OneDnnStage&) = delete;

  // Runs every block of the stage on x, a contiguous float32 CPU tensor [N, H, W, C], which is
  // updated in place (each block adds its residual to it). With a `mask` (float32 [N, H, W, 1]
  // or a view broadcasting as one: 1 inside each image of a padded batch, 0 beyond), x is
  // multiplied by it after every block, so that the next block's depthwise convolution sees
  // zeros beyond each image as its own zero padding would give. INTERNAL if oneDNN fails.
  absl::Status Run(at::Tensor& x, const at::Tensor& mask = at::Tensor()) const;

  // Creates (and caches) the primitives for activations [n, h, w, C] without running them, so
  // that the first batch of that shape does not pay for it. INTERNAL if oneDNN fails.
  absl::Status Prepare(int64_t n, int64_t h, int64_t w) const;

  BlockPrecision precision() const;

 private:
  struct Impl;
  explicit OneDnnStage(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The fast path's patchify convolutions: ConvNeXt's stem (kernel 4x4, stride 4, on the NCHW
// image) and downsampling layers (2x2, stride 2, on the NHWC activations between stages); kernel
// equal to stride, no padding, sizes floored as ATen's convolution floors them. The weights are
// packed once into oneDNN's layout (ATen's convolution reorders them on every call) and the output
// is written as the contiguous NHWC float32 tensor the stages run on (no permute copy). The
// primitives are created per input shape and cached, as OneDnnStage's.
//
// In bfloat16 (the downsampling layers of bfloat16 models) it is not a convolution but a matrix
// product: the input's patches are gathered as rows (kh, kw, ci) and rounded to bfloat16 in one
// copy, then multiplied by the weights (converted and packed once) with float32 accumulation, the
// bias and a float32 output. Not oneDNN's bfloat16 convolution: oneDNN 2.6's AMX one (brgconv) read
// out of bounds while it was created for small outputs (AddressSanitizer caught a SEGV in
// dnnl_primitive_create for the digits model's last downsampling, [7, 64, 2, 2] -> 1x1); its
// matrix products are the ones the blocks already use. Thread safety: Run() may be called from
// several threads at once.
class OneDnnPatchConv {
 public:
  // weight [O, I, k, k] and bias [O], float32 CPU tensors (copied). FAILED_PRECONDITION for
  // bfloat16 on a CPU without native bfloat16; INTERNAL if oneDNN has no kernel for them.
  static absl::StatusOr<std::unique_ptr<OneDnnPatchConv>> Create(
      const at::Tensor& weight, const at::Tensor& bias,
      BlockPrecision precision = BlockPrecision::kFloat32);
  ~OneDnnPatchConv();

  OneDnnPatchConv(const OneDnnPatchConv&) = delete;
  OneDnnPatchConv& operator=(const OneDnnPatchConv&) = delete;

  // x: a contiguous float32 CPU tensor, NHWC [N, H, W, I] if `nhwc`, else NCHW [N, I, H, W].
  // Returns a contiguous float32 tensor [N, H / k, W / k, O]. INVALID_ARGUMENT if H or W is below
  // k; INTERNAL if oneDNN fails.
  absl::StatusOr<at::Tensor> Run(const at::Tensor& x, bool nhwc) const;

  // Creates (and caches) the primitive for an input of [n, I, h, w] (either layout).
  absl::Status Prepare(int64_t n, int64_t h, int64_t w) const;

 private:
  struct Impl;
  explicit OneDnnPatchConv(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace convnext

#endif  // CONVNEXT_MODEL_ONEDNN_STAGE_H_
