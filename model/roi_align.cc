#include "model/roi_align.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"

namespace convnext {
namespace {

// Samples per side of a box at most (grid x bins): bounds the work of a huge box with adaptive
// sampling, which the server's boxes (inside the image) never come near.
constexpr int64_t kMaxSamplesPerSide = int64_t{1} << 16;

// The summed bilinear weights that one bin's samples along one axis give the map's rows (or
// columns) lo..hi, as torchvision's bilinear_interpolate computes them: a sample more than one
// pixel outside the map weighs nothing, one within a pixel of an edge is clamped to it.
struct AxisWeights {
  std::vector<float> w;  // One per row (column) of the map.
  int lo = 0, hi = -1;   // The rows (columns) with weight; empty if hi < lo.

  void Compute(float start, float bin_size, int bin, int grid, int size) {
    std::fill(w.begin(), w.end(), 0.0f);
    lo = size;
    hi = -1;
    for (int i = 0; i < grid; ++i) {
      // The same expression, in the same order and precision, as torchvision's kernel.
      float p = start + static_cast<float>(bin) * bin_size +
                static_cast<float>(i + .5f) * bin_size / static_cast<float>(grid);
      if (p < -1.0f || p > static_cast<float>(size)) continue;
      if (p <= 0) p = 0;
      int low = static_cast<int>(p);
      int high;
      if (low >= size - 1) {
        high = low = size - 1;
        p = static_cast<float>(low);
      } else {
        high = low + 1;
      }
      const float l = p - static_cast<float>(low);
      w[low] += 1.0f - l;
      w[high] += l;
      lo = std::min(lo, low);
      hi = std::max(hi, high);
    }
  }
};

// A box's bins and sample grid in feature pixels, as torchvision computes them.
struct BoxGrid {
  float start_x, start_y, bin_w, bin_h;
  double grid_w, grid_h;  // Samples per bin side (exact: a huge box is refused, not wrapped).
};

BoxGrid Grid(const RegionBox& b, double stride, const RoiAlignOptions& options) {
  const auto scale = static_cast<float>(1.0 / stride);
  const float offset = options.aligned ? 0.5f : 0.0f;
  const auto k = static_cast<float>(options.output_size);
  BoxGrid g;
  g.start_x = b.x1 * scale - offset;
  g.start_y = b.y1 * scale - offset;
  float roi_w = (b.x2 * scale - offset) - g.start_x, roi_h = (b.y2 * scale - offset) - g.start_y;
  if (!options.aligned) {
    roi_w = std::max(roi_w, 1.0f);
    roi_h = std::max(roi_h, 1.0f);
  }
  g.bin_w = roi_w / k;
  g.bin_h = roi_h / k;
  const bool fixed = options.sampling_ratio > 0;
  g.grid_w = fixed ? options.sampling_ratio : std::ceil(static_cast<double>(roi_w / k));
  g.grid_h = fixed ? options.sampling_ratio : std::ceil(static_cast<double>(roi_h / k));
  return g;
}

// The options a box is sampled with: its mask's bins, or the options' own.
RoiAlignOptions BinsOf(const RegionBox& b, const RoiAlignOptions& options) {
  RoiAlignOptions bins = options;
  if (!b.mask.empty()) bins.output_size = b.mask_size;
  return bins;
}

}  // namespace

absl::Status CheckRoiOptions(const RoiAlignOptions& options) {
  if (options.output_size < 1 || options.output_size > kMaxRoiOutputSize) {
    return absl::InvalidArgumentError(absl::StrCat("output_size must be in 1..", kMaxRoiOutputSize,
                                                   ", got ", options.output_size));
  }
  if (options.sampling_ratio < 0 || options.sampling_ratio > kMaxRoiSamplingRatio) {
    return absl::InvalidArgumentError(absl::StrCat("sampling_ratio must be in 0..",
                                                   kMaxRoiSamplingRatio, " (0: adaptive), got ",
                                                   options.sampling_ratio));
  }
  return absl::OkStatus();
}

absl::Status CheckRegionBox(const RegionBox& b, double stride, const RoiAlignOptions& options) {
  if (!std::isfinite(b.x1) || !std::isfinite(b.y1) || !std::isfinite(b.x2) ||
      !std::isfinite(b.y2) || b.x1 > b.x2 || b.y1 > b.y2) {
    return absl::InvalidArgumentError(
        absl::StrCat("(", b.x1, ", ", b.y1, ", ", b.x2, ", ", b.y2,
                     ") must have finite coordinates with x1 <= x2 and y1 <= y2"));
  }
  if (!(stride > 0) || !std::isfinite(stride)) {
    return absl::InvalidArgumentError(absl::StrCat("stride must be > 0, got ", stride));
  }
  if (!b.mask.empty() || b.mask_size != 0) {
    if (b.mask_size < 1 || b.mask_size > kMaxRegionMaskSize ||
        b.mask.size() != static_cast<size_t>(b.mask_size) * b.mask_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("its mask must be size x size weights with size in 1..", kMaxRegionMaskSize,
                       ", got ", b.mask.size(), " weights for size ", b.mask_size));
    }
    double sum = 0;
    for (float w : b.mask) {
      if (!(w >= 0.0f && w <= 1.0f)) {
        return absl::InvalidArgumentError(
            absl::StrCat("its mask has weight ", w, "; weights must be in [0, 1]"));
      }
      sum += w;
    }
    if (sum == 0) return absl::InvalidArgumentError("its mask is all zero");
    if (options.output_size != 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "a masked region pools to one vector: output_size must be 1, got ", options.output_size));
    }
  }
  const RoiAlignOptions bins = BinsOf(b, options);
  const BoxGrid g = Grid(b, stride, bins);
  const double k = bins.output_size;
  if (!(g.grid_w * k <= kMaxSamplesPerSide) || !(g.grid_h * k <= kMaxSamplesPerSide)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "(", b.x1, ", ", b.y1, ", ", b.x2, ", ", b.y2, ") is too large to sample at stride ",
        stride, " (at most ", kMaxSamplesPerSide, " samples a side)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> RoiAlign(const at::Tensor& features, const std::vector<RegionBox>& boxes,
                                    double stride, const RoiAlignOptions& options) {
  if (features.dim() != 3 || !at::isFloatingType(features.scalar_type()) || features.size(1) < 1 ||
      features.size(2) < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("region pooling needs a floating [C, H, W] feature map, got [",
                     absl::StrJoin(features.sizes(), ", "), "]"));
  }
  RETURN_IF_ERROR(CheckRoiOptions(options));
  const int k = options.output_size;
  const at::Tensor map = features.to(at::kCPU, at::kFloat).contiguous();
  const int64_t channels = map.size(0);
  const int height = static_cast<int>(map.size(1)), width = static_cast<int>(map.size(2));
  const int64_t plane = int64_t{height} * width;
  const float* f = map.data_ptr<float>();
  at::Tensor out = at::zeros({static_cast<int64_t>(boxes.size()), channels, k, k}, at::kFloat);
  float* o = out.data_ptr<float>();
  AxisWeights rows, cols;
  rows.w.resize(height);
  cols.w.resize(width);
  for (size_t r = 0; r < boxes.size(); ++r) {
    const RegionBox& b = boxes[r];
    if (absl::Status s = CheckRegionBox(b, stride, options); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("box ", r, ": ", s.message()));
    }
    // A masked box: mask_size x mask_size bins, then their mask-weighted mean.
    const RoiAlignOptions bins = BinsOf(b, options);
    const int kb = bins.output_size;
    const bool masked = !b.mask.empty();
    double mask_sum = 0;
    for (float w : b.mask) mask_sum += w;
    const BoxGrid g = Grid(b, stride, bins);
    const int grid_h = static_cast<int>(g.grid_h), grid_w = static_cast<int>(g.grid_w);
    const float start_x = g.start_x, start_y = g.start_y, bin_w = g.bin_w, bin_h = g.bin_h;
    const auto count = static_cast<float>(std::max<int64_t>(int64_t{grid_h} * grid_w, 1));
    float* box_out = o + static_cast<int64_t>(r) * channels * k * k;
    std::vector<double> weighted(masked ? channels : 0, 0.0);
    for (int ph = 0; ph < kb; ++ph) {
      rows.Compute(start_y, bin_h, ph, grid_h, height);
      if (rows.hi < rows.lo) continue;
      for (int pw = 0; pw < kb; ++pw) {
        const float bin_weight = masked ? b.mask[static_cast<size_t>(ph) * kb + pw] : 1.0f;
        if (bin_weight == 0) continue;
        cols.Compute(start_x, bin_w, pw, grid_w, width);
        if (cols.hi < cols.lo) continue;
        for (int64_t c = 0; c < channels; ++c) {
          const float* fc = f + c * plane;
          float sum = 0;
          for (int y = rows.lo; y <= rows.hi; ++y) {
            const float wy = rows.w[y];
            if (wy == 0) continue;
            const float* line = fc + int64_t{y} * width;
            float s = 0;
            for (int x = cols.lo; x <= cols.hi; ++x) s += cols.w[x] * line[x];
            sum += wy * s;
          }
          if (masked) {
            weighted[c] += static_cast<double>(bin_weight) * (sum / count);
          } else {
            box_out[(c * k + ph) * k + pw] = sum / count;
          }
        }
      }
    }
    for (int64_t c = 0; c < static_cast<int64_t>(weighted.size()); ++c) {
      box_out[c] = static_cast<float>(weighted[c] / mask_sum);  // k == 1: one value a channel.
    }
  }
  return out;
}

}  // namespace convnext
