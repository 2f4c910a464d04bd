// ConvNeXt: the inference forward pass of a ConvNeXt written directly against ATen, numerically
// the same model as the FAIR, timm, torchvision and Hugging Face implementations (exact erf GELU,
// LayerNorm eps from the config, drop path a no-op at inference).
//
// A ConvNeXt owns its weights, already on the configured device and dtype. It is immutable after
// Create(), so Forward() may be called from several threads at once.
//
//   ASSIGN_OR_RETURN(auto model, ConvNeXt::Create(config, std::move(weights), options));
//   ASSIGN_OR_RETURN(ForwardOutputs out, model->Forward(images, {.embedding = true}));
//
// Device: the device comes from ModelOptions and nothing here is CUDA-specific. The model tests
// pass on the CPU and, in the device check (scripts/gpu_check.sh), on an NVIDIA H200 (2026-12-04).
#ifndef CONVNEXT_MODEL_CONVNEXT_H_
#define CONVNEXT_MODEL_CONVNEXT_H_

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/state_dict.h"
#include "model/convnext_config.h"
#include "model/device.h"
#include "model/onednn_stage.h"

namespace convnext {

struct ModelOptions {
  // Where the weights live and the forward pass runs. "cpu", "cuda", "cuda:1", ...
  c10::Device device = c10::Device(c10::DeviceType::CPU);
  // Compute dtype. Weights of any floating dtype are converted to it at load.
  c10::ScalarType dtype = c10::ScalarType::Float;
  // On the CPU in float32, run the blocks with fused oneDNN kernels, and the stem and
  // downsampling convolutions with weights packed once (model/onednn_stage.h), faster than the
  // ATen operators (figures: README, Performance). Off: the ATen path, the same on every device.
  bool cpu_fast_path = true;
  // What the fast path's blocks compute in: float32, or bfloat16 on a CPU with native bfloat16
  // (model/onednn_stage.h: activations and matrix-product weights in bfloat16, accumulation,
  // LayerNorm statistics and the residual stream in float32; the downsampling layers too, as a
  // matrix product of their gathered patches; the stem, final norm and head stay float32, and so
  // do every output). bfloat16 needs the fast path (CPU,
  // float32 dtype): Create fails with INVALID_ARGUMENT otherwise, and with FAILED_PRECONDITION on
  // a CPU without native bfloat16.
  BlockPrecision cpu_precision = BlockPrecision::kFloat32;
  // The fast path's blocks run LayerNorm to residual as one kernel of ours where the CPU allows
  // (AVX-512 in float32, AMX in bfloat16); false: with oneDNN's matrix products instead, as
  // before those kernels (what bench/model_throughput --own_kernels=false measures against).
  bool cpu_own_kernels = true;
  // The ATen path keeps its activations and convolution weights channels-last (NHWC in memory,
  // NCHW in shape): what cuDNN's fast kernels want, and the LayerNorms and pointwise layers then
  // read NHWC without a permute copy. Same results within 1e-4
  // (AtenPathTest.ChannelsLastMatchesContiguousLayout). Always on for a CUDA device (set here, it
  // is how the CPU tests run that layout); the fast path ignores it.
  bool channels_last = false;
  // A float32 model on a CUDA device computes its convolutions and matrix products with
  // TensorFloat-32 (model/device.h, Float32Mode: process-wide, so Create fails with
  // FAILED_PRECONDITION while a float32 CUDA model without it is alive, and the other way round).
  // Anywhere else Create fails with INVALID_ARGUMENT.
  bool allow_tf32 = false;
  // What messages call this model when they name it to another (a Float32Mode conflict). Default:
  // its variant.
  std::string owner;
  // CUDA graphs: batches of 1..cuda_graph_max_batch images of the warm-up's size (WarmUp's
  // `size`: the CLASSIFICATION resize's fixed input) that ask for the pooled features only (what
  // RunBatch asks for top-k classes and embeddings) replay a graph captured by WarmUp
  // (CaptureGraphs) instead of launching each kernel: cuda_graph_copies graphs of each size, so
  // that as many threads (a model's instances) replay one size at once. Anything else (stage
  // maps, padded batches, other sizes, every copy in use) runs eagerly. 0: no graphs. Create
  // fails with INVALID_ARGUMENT for a positive value off a CUDA device.
  int64_t cuda_graph_max_batch = 0;
  int64_t cuda_graph_copies = 1;
};

// Whether a model with these options runs its blocks on the CPU fast path: a build that has it
// (kHaveOneDnnFastPath), cpu_fast_path set, the CPU, float32. It covers V1 and V2 blocks.
bool FastPathApplies(const ModelOptions& options);

// A LibTorch device from its name ("cpu", "cuda", "cuda:1"); INVALID_ARGUMENT for anything else.
absl::StatusOr<c10::Device> ParseDevice(const std::string& name);

// Where one image of a padded batch lies: rows [0, height) and columns [0, width) of its input.
struct ImageExtent {
  int64_t height = 0;
  int64_t width = 0;
};

// What a classifier computes after its trunk (the stem and the four stages): the final LayerNorm
// over the pooled features (the embedding), then the linear classifier (the logits). Heads
// trained on one frozen trunk (linear probes, fine-tuned classifiers) share the trunk's forward
// pass: model/batch.h, ImageRequest::head; model/load_model.h, LoadHead.
struct ConvNeXtHead {
  at::Tensor norm_weight, norm_bias;  // [dims[3]].
  double norm_eps = 1e-6;
  at::Tensor fc_weight, fc_bias;  // [num_classes, dims[3]], [num_classes]; undefined for 0 classes.
  int64_t num_classes = 0;

  // The embedding of pooled features [N, dims[3]] (OutputRequest::pooled). Throws what LibTorch
  // throws.
  at::Tensor Embed(const at::Tensor& pooled) const;
  // The logits [N, num_classes] of embeddings [N, dims[3]]. Throws what LibTorch throws.
  at::Tensor Classify(const at::Tensor& embedding) const;
};

// Which outputs Forward() computes. Logits need a head (num_classes > 0).
struct OutputRequest {
  bool logits = true;
  // The pooled features after the final LayerNorm, before the head: [N, dims[3]]. Not available
  // from detection backbones (stage_norms).
  bool embedding = false;
  // The four stage outputs, [N, dims[i], H_i, W_i] with strides 4, 8, 16, 32 (for detection
  // backbones, after their per-stage LayerNorm).
  bool stages = false;
  // The last stage's output averaged over space, before the final LayerNorm: [N, dims[3]], what a
  // ConvNeXtHead takes (classifiers only, as `embedding`).
  bool pooled = false;
  // Compute the stages up to this one only (1..kNumStages); below kNumStages the pass stops
  // there, which needs neither logits nor embedding, and `stages` then holds that many outputs.
  int last_stage = kNumStages;
  // Images of different sizes in one batch (variable-size batching): image i's own input lies in
  // extents[i] of the batch, whose sides are multiples of 32 (the rest of the batch is padding).
  // Each image is then computed as it would be alone at its own size: beyond it, every
  // depthwise convolution sees zeros, as its own zero padding gives; GRN's norms and the pooled
  // features cover the image only; its stage-i outputs are zero beyond its own
  // (height / stride_i) x (width / stride_i) corner, which is what the caller keeps. Strided
  // convolutions read whole patches of the image only, since its sides divide by every stride.
  // Empty: every image fills the batch.
  std::vector<ImageExtent> extents;
};

struct ForwardOutputs {
  at::Tensor logits;               // [N, num_classes], if requested.
  at::Tensor embedding;            // [N, dims[3]], if requested.
  at::Tensor pooled;               // [N, dims[3]], if requested.
  std::vector<at::Tensor> stages;  // last_stage tensors, if requested; else empty.
  // Set when a CUDA graph computed `pooled` (ModelOptions::cuda_graph_max_batch): `pooled` is
  // then the graph's own output, valid while these outputs live (their destruction hands the
  // graph back, after the work queued on the thread's stream until then): copy what must outlive
  // them, and let them go before the model.
  std::shared_ptr<void> graph_lease;
};

class ConvNeXt {
 public:
  // Builds a model from weights in canonical names (convnext_config.h). Every parameter must be
  // present with exactly the expected shape and no other tensor may be present: a mismatch is
  // INVALID_ARGUMENT naming the tensor, the expected and the found shape. Weights are converted to
  // options.dtype and moved to options.device. `source_name`, if given, names tensors in
  // messages as the checkpoint does.
  static absl::StatusOr<std::unique_ptr<ConvNeXt>> Create(const ConvNeXtConfig& config,
                                                          StateDict weights,
                                                          const ModelOptions& options,
                                                          const SourceNameFn& source_name = {});

  ConvNeXt(const ConvNeXt&) = delete;
  ConvNeXt& operator=(const ConvNeXt&) = delete;
  ~ConvNeXt();

  // Runs the model on a batch of preprocessed images [N, in_channels, H, W] (any floating dtype,
  // any device: converted as needed). H and W must be at least 32. Sides that are not multiples of
  // 32 work as in the reference implementations: each strided convolution floors, so trailing rows
  // and columns that do not fill a whole 4x4 (stem) or 2x2 (downsampling) patch are ignored and
  // stage i has floor(floor(H/4)/2^i) rows. Errors: INVALID_ARGUMENT for a bad input,
  // FAILED_PRECONDITION for logits from a headless model, INTERNAL if LibTorch fails.
  absl::StatusOr<ForwardOutputs> Forward(const at::Tensor& images,
                                         const OutputRequest& request) const;

  // Prepares, without computing anything, what the first forward pass of a batch of this shape
  // would otherwise create on the fly (the fast path's kernels for its activation shapes), so
  // that no request pays for it. A no-op on the ATen path. INTERNAL if that fails.
  absl::Status Prepare(int64_t batch, int64_t height, int64_t width) const;

  // Captures the CUDA graphs ModelOptions::cuda_graph_max_batch asks for: batch sizes 1 to the
  // lesser of `max_batch` and it, size x size inputs, cuda_graph_copies of each. WarmUp calls it,
  // after running every size eagerly. OK, doing nothing, when no graphs are asked for or they are
  // captured already; INTERNAL if a capture fails. Not to be called from two threads at once
  // (Forward may run meanwhile).
  absl::Status CaptureGraphs(int64_t max_batch, int64_t size) const;
  // How many CUDA graphs are captured, and how many forward passes replayed one so far.
  int64_t captured_graphs() const;
  int64_t graph_replays() const;

  // Whether the blocks run on the CPU fast path (ModelOptions::cpu_fast_path, CPU, float32).
  bool uses_fast_path() const { return stages_[0].fast != nullptr; }
  // What the blocks compute in: ModelOptions::cpu_precision on the fast path, else float32 (the
  // ATen path computes in ModelOptions::dtype).
  BlockPrecision block_precision() const {
    return uses_fast_path() ? stages_[0].fast->precision() : BlockPrecision::kFloat32;
  }
  // What the blocks compute in, by name: the fast path's precision, else the dtype the ATen path
  // runs in ("float32", "bfloat16", "float16", "float64"; "tf32" for float32 with TensorFloat-32).
  std::string compute_dtype_name() const;

  const ConvNeXtConfig& config() const { return config_; }
  // The final LayerNorm and classifier (no tensors for detection backbones).
  const ConvNeXtHead& head() const { return head_; }
  const ModelOptions& options() const { return options_; }
  // Scalar parameters, counted as the reference implementations count them.
  int64_t parameter_count() const { return ParameterCount(config_); }

 private:
  using Block = BlockWeights;
  struct Stage {
    // Downsampling before the stage: LayerNorm (channels first) then conv. For stage 0 this is
    // the stem: conv 4x4/4 then LayerNorm.
    at::Tensor ds_norm_weight, ds_norm_bias;
    // The ATen path's convolution; undefined when `fast_ds` runs it.
    at::Tensor ds_conv_weight, ds_conv_bias;
    // The ATen path's blocks; empty when `fast` runs them.
    std::vector<Block> blocks;
    // The fast path: the blocks, and the stem (float32) or downsampling layer (as the blocks).
    std::unique_ptr<OneDnnStage> fast;
    std::unique_ptr<OneDnnPatchConv> fast_ds;
    // Detection backbones only: LayerNorm on the stage's output.
    at::Tensor out_norm_weight, out_norm_bias;
  };

  ConvNeXt(ConvNeXtConfig config, ModelOptions options);
  // `mask`, if defined, is the NHWC mask of a padded batch (OutputRequest::extents), [N, H, W, 1].
  at::Tensor RunBlock(const Block& block, const at::Tensor& x, const at::Tensor& mask) const;
  // The forward pass through the stages, on NCHW tensors (ATen path) or on contiguous NHWC
  // tensors (fast path); appends each stage's output, NCHW, to `stages` if it is not null.
  // Returns the last stage's output pooled over space: [N, dims[3]].
  // Both stop after `last_stage` (1-based); they return the last stage's output pooled over
  // space.
  // With `extents` (OutputRequest::extents), every stage's activations are masked to the
  // images' own extents and the pooling averages over them only.
  at::Tensor RunStagesAten(at::Tensor x, int last_stage, std::vector<at::Tensor>* stages,
                           const std::vector<ImageExtent>& extents) const;
  absl::StatusOr<at::Tensor> RunStagesFast(at::Tensor x, int last_stage,
                                           std::vector<at::Tensor>* stages,
                                           const std::vector<ImageExtent>& extents) const;
  at::Tensor LayerNormChannelsFirst(const at::Tensor& x, const at::Tensor& weight,
                                    const at::Tensor& bias) const;

  const ConvNeXtConfig config_;
  const ModelOptions options_;
  std::vector<Stage> stages_;
  ConvNeXtHead head_;
  // A float32 model on CUDA: its Float32Mode, held while it lives.
  std::unique_ptr<Float32ModeHold> float32_mode_;
  // The CUDA graphs (ModelOptions::cuda_graph_max_batch), by batch size; never null.
  struct GraphPool;
  std::unique_ptr<GraphPool> graphs_;
};

}  // namespace convnext

#endif  // CONVNEXT_MODEL_CONVNEXT_H_
