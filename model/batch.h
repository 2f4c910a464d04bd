// The model layer's batch API: everything a server asks of a model for one batch of preprocessed
// images, with every tensor operation done here (stacking, the forward pass, softmax and top-k,
// L2 normalisation, casts, copies off the device). What comes back is plain C++ data that a
// protocol layer copies into its messages without touching a tensor.
//
//   std::vector<ImageRequest> what(n);            // per image: classify top-k and/or features
//   ASSIGN_OR_RETURN(std::vector<ImageOutputs> out, RunBatch(model, inputs, what));
//
// On a CUDA device (model/device.h) the batch is staged in page-locked memory and copied
// asynchronously on the calling thread's own stream, softmax and top-k run on the device, and
// outputs are converted to their dtype there, so that only what is returned leaves it, in one
// copy for the whole batch.
//
// One forward pass serves the whole batch: it computes the union of what the images ask for
// (pooled features if any asks for classes or the embedding, stage maps if any does); each head
// asked for (ImageRequest::head) then runs once on its images' pooled features, and softmax +
// top-k once per head with the largest k asked of it; each image then reads its own part.
//
// Thread-safe (ConvNeXt::Forward is). Errors: INVALID_ARGUMENT for inputs that cannot form a batch
// (channels differ, or sizes differ and some side is not a multiple of 32) or requests the model
// cannot serve, INTERNAL if LibTorch fails.
#ifndef CONVNEXT_MODEL_BATCH_H_
#define CONVNEXT_MODEL_BATCH_H_

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/convnext.h"
#include "model/roi_align.h"

namespace convnext {

// Element type of an output tensor's bytes. kInt8 is symmetric quantisation with a float32 scale
// per channel (OutputTensor::scales): value = q * scale, q in -127..127, scale = the channel's
// largest magnitude / 127, so a value is off by at most half its channel's scale.
enum class OutputDType { kFloat32, kFloat16, kBFloat16, kInt8 };

// Pooling of returned stage maps to a grid x grid map, bins as ATen's adaptive pooling makes
// them (bin i spans floor(i * H / grid) .. ceil((i + 1) * H / grid)): the mean, the maximum, or
// generalised mean (GeM: (mean of max(x, 1e-6)^p)^(1/p)).
struct StagePooling {
  enum class Kind { kNone, kAverage, kMax, kGeM };
  Kind kind = Kind::kNone;
  int grid = 1;       // 1..kMaxPoolingGrid.
  float gem_p = 3.0;  // GeM's exponent, > 0 (computed in float64).
};
inline constexpr int kMaxPoolingGrid = 64;

// What to compute for one image.
struct ImageRequest {
  // The head its classes and embedding come from: null for the model's own, else another head
  // of the same trunk (LoadHead), with the model's device and dtype. Images of different heads
  // share one forward pass through the trunk; each head then runs on its own images' pooled
  // features.
  const ConvNeXtHead* head = nullptr;
  // > 0: the top_k classes by softmax probability (needs a head; at most num_classes).
  int top_k = 0;
  // The pooled embedding [dims[3]] (not from detection backbones), L2-normalised if `normalize`.
  bool embedding = false;
  bool normalize = false;
  // Stage feature maps to return, 1-based, in this order, pooled as `stage_pooling` says.
  std::vector<int> stages;
  StagePooling stage_pooling;
  // Region features (model/roi_align.h): `boxes` in this image's model-input pixels, pooled
  // from each of `region_stages` (1-based, in this order). None if `boxes` is empty.
  std::vector<RegionBox> boxes;
  std::vector<int> region_stages;
  RoiAlignOptions region_pooling;
  // Element type of the embedding, stage maps and region features.
  OutputDType dtype = OutputDType::kFloat32;
};

// The deepest stage (1..4) an image's request needs computed: 4 for the top-k classes or the
// embedding, else the deepest stage map (or stage pooled for regions) it asks for. Images needing
// fewer stages batch apart (model_host's batch key), so that their forward pass stops early
// (OutputRequest::last_stage).
int DeepestStage(const ImageRequest& request);

// Input pixels between two pixels of stage `stage`'s map (1..4): 4, 8, 16, 32.
double StageStride(int stage);

// A tensor as row-major little-endian bytes of `dtype`.
struct OutputTensor {
  std::vector<int64_t> shape;
  OutputDType dtype = OutputDType::kFloat32;
  std::string bytes;
  // kInt8 only: the scales along `scale_axis` (shape[scale_axis] of them: the channel axis of a
  // stage map or of region features), or one for the whole tensor (scale_axis -1: the embedding).
  std::vector<float> scales;
  int scale_axis = -1;
};

// What one image's request produced.
struct ImageOutputs {
  // The top_k classes, best first, and their softmax probabilities.
  std::vector<int64_t> class_indices;
  std::vector<float> class_scores;
  OutputTensor embedding;            // Empty shape unless asked.
  std::vector<OutputTensor> stages;  // One per ImageRequest::stages entry.
  // One per ImageRequest::region_stages entry (if there are boxes): [R, C_i] for an output_size
  // of 1, else [R, C_i, output_size, output_size].
  std::vector<OutputTensor> regions;
};

// How uint8 inputs (an image's resized pixels: image/preprocess.h, TransformImageToUint8) become
// the model's float32 input: (x / 255 - mean[c]) / std[c], computed in float32 in that order
// (torchvision's ToTensor then Normalize), so exactly what image/ computes on the CPU.
struct PixelNormalization {
  std::array<float, 3> mean = {0, 0, 0};
  std::array<float, 3> std = {1, 1, 1};
};

// uint8 [N, 3, H, W] pixels, anywhere, as float32 on the same device, normalised as above. Each
// step an elementwise float32 operation between tensors (on CUDA, ATen divides by a CPU scalar
// through its reciprocal, which can differ in the last bit: 255 is a tensor on the device).
at::Tensor NormalizePixels(const at::Tensor& pixels, const PixelNormalization& normalization);

// Called with the stacked batch [N, C, H, W] just before the forward pass, as part of it (tests
// inject model faults with it: an exception it throws fails the batch as a failing model would).
using BeforeForwardFn = std::function<void(const at::Tensor& batch)>;

// Runs one batch: `inputs` are [1, C, H, W] tensors (as image/ makes them), `requests` one per
// input. Inputs of one shape are stacked. Inputs of different heights or widths (variable-size
// batching) must all have sides that are multiples of 32 (as KEEP_SIZE makes them): they are
// padded with zeros to the largest height and width among them and run as one batch with their
// extents (OutputRequest::extents), so that each gets what it would get alone: its stage maps
// cropped to its own size, and pooled features, logits and regions of its own extent.
//
// Inputs may also be uint8 pixels [1, 3, H, W] (TransformImageToUint8), normalised as `pixels`
// says (required then): where the model runs when the whole batch is pixels of one shape (a
// quarter of float32's bytes staged and copied to a GPU), else each on the CPU first.
absl::StatusOr<std::vector<ImageOutputs>> RunBatch(const ConvNeXt& model,
                                                   const std::vector<at::Tensor>& inputs,
                                                   const std::vector<ImageRequest>& requests,
                                                   const BeforeForwardFn& before_forward = {},
                                                   const PixelNormalization* pixels = nullptr);

// Memory estimates, for admission before any work is done (server/model_host.cc). Estimates on
// the safe side, in bytes, per image of a batch: a batch of n images of one shape needs n times
// as much, so budgeting each admitted image bounds every batch formed from them.
//
// The forward pass at an input of height x width: the input, stage 1's activations (the
// residual stream, the depthwise output and the 4x-wide hidden layer: 7 x dims[0] channels at a
// quarter of the resolution, 15 x with V2's GRN and its float32 copies of the hidden layer;
// every later stage needs less), and the stage maps kept for output.
int64_t EstimateForwardBytes(const ConvNeXtConfig& config, int64_t height, int64_t width);
// The answer `request` produces at an input of height x width: its tensors' bytes, twice (the
// result, then its serialised message).
int64_t EstimateOutputBytes(const ConvNeXtConfig& config, const ImageRequest& request,
                            int64_t height, int64_t width);

// A key that is equal for two inputs exactly when they can share a batch (their shapes agree).
std::string BatchShapeKey(const at::Tensor& input);

// Runs batches of zeros of every size in 1..max_batch_size at size x size (on the CPU the first
// and the last computed, the others' kernels prepared without running them; on CUDA every one
// computed, for cuDNN's benchmark mode), so that no request pays for first-use work. Logits for a
// classifier, stage maps for a backbone. Then captures the model's CUDA graphs, if it asks for
// them (ModelOptions::cuda_graph_max_batch; ConvNeXt::CaptureGraphs).
absl::Status WarmUp(const ConvNeXt& model, int64_t max_batch_size, int64_t size);

// Outputs leave a CUDA model in one copy per batch: every output's bytes concatenated on the
// device, then copied (one synchronisation instead of one per tensor). Tests turn that way on for
// CPU models too, to check it against the direct one where no GPU is. Process-wide.
void SetOneOutputCopyForTesting(bool on);

}  // namespace convnext

#endif  // CONVNEXT_MODEL_BATCH_H_
