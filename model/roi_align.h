// Region pooling on a feature map: RoIAlign (He et al., Mask R-CNN), with the semantics of
// torchvision.ops.roi_align (and Detectron2's ROIAlign with aligned = true), so that a region
// embedding from the server equals what a detection pipeline computes from the same feature map.
//
// Each box is divided into output_size x output_size bins; each bin's value is the mean of a
// grid of bilinear samples of the feature map (sampling_ratio x sampling_ratio samples, or
// ceil(bin side) per side when sampling_ratio is 0, torchvision's adaptive -1). A sample more than
// one feature pixel outside the map counts as 0; boxes are at least one feature pixel wide unless
// `aligned`.
//
// The average over a bin's sample grid is separable (a sample's bilinear weight is a row weight
// times a column weight), so each bin costs one weighted sum over the feature pixels it touches
// per channel, however many samples it has: a box costs about channels x its area in feature
// pixels, never more than a few passes over the map.
//
// Thread-safe, no state.
#ifndef CONVNEXT_MODEL_ROI_ALIGN_H_
#define CONVNEXT_MODEL_ROI_ALIGN_H_

#include <ATen/core/Tensor.h>

#include <vector>

#include "absl/status/statusor.h"

namespace convnext {

// A box in the model input's pixel coordinates: (0, 0) is the top-left corner of the top-left
// pixel, x grows to the right, y down; x1 <= x2, y1 <= y2.
struct RegionBox {
  float x1 = 0, y1 = 0, x2 = 0, y2 = 0;
  // Optional: a mask over the box (an instance mask, as Mask R-CNN's 28 x 28 per box), row-major
  // [mask_size, mask_size] weights in [0, 1], top row first, not all zero. With a mask, the box
  // is divided into mask_size x mask_size bins (RoIAlign's, the options' sampling) and its
  // feature is the mean of the bins weighted by the mask: sum(w * bin) / sum(w), one value per
  // channel (options.output_size must be 1).
  int mask_size = 0;
  std::vector<float> mask;
};

// The most bins a side a mask may have. A masked box costs about size^2 x channels x 4 per stage
// whatever its area (each bin reads at least 2 x 2 feature pixels), so this bounds a request's
// work: 256 boxes of 32 x 32 masks are about the work of the stage maps they are pooled from at
// a few hundred pixels a side.
inline constexpr int kMaxRegionMaskSize = 32;

struct RoiAlignOptions {
  int output_size = 1;     // Bins per side, >= 1.
  int sampling_ratio = 0;  // Samples per bin side; 0: adaptive, ceil(bin side in feature pixels).
  bool aligned = false;    // Shift box coordinates by -0.5 feature pixel (pixel centres).
};

// The largest output_size and sampling_ratio accepted.
inline constexpr int kMaxRoiOutputSize = 64;
inline constexpr int kMaxRoiSamplingRatio = 64;

// INVALID_ARGUMENT (saying why) for options out of range.
absl::Status CheckRoiOptions(const RoiAlignOptions& options);

// INVALID_ARGUMENT (saying why, without naming the box) for a box RoiAlign refuses: non-finite
// coordinates, x1 > x2 or y1 > y2, so large at this stride that its samples are too many, or a
// malformed mask (size out of 1..kMaxRegionMaskSize, not size^2 weights, a weight outside
// [0, 1], all zero, or with an output_size other than 1).
// A server checks its boxes with it before batching, so that one bad box fails no other request.
absl::Status CheckRegionBox(const RegionBox& box, double stride, const RoiAlignOptions& options);

// Pools `boxes` from `features` ([C, H, W], any floating dtype and device; computed in float32 on
// the CPU), whose pixels are `stride` input pixels apart (spatial scale 1 / stride). Returns a
// float32 CPU tensor [R, C, output_size, output_size]. INVALID_ARGUMENT for a malformed map or
// options, or a box that CheckRegionBox refuses.
absl::StatusOr<at::Tensor> RoiAlign(const at::Tensor& features, const std::vector<RegionBox>& boxes,
                                    double stride, const RoiAlignOptions& options);

}  // namespace convnext

#endif  // CONVNEXT_MODEL_ROI_ALIGN_H_
