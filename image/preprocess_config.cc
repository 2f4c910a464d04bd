#include "image/preprocess_config.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace convnext {
namespace {

absl::Status Bad(absl::string_view field, absl::string_view requirement, double got) {
  return absl::InvalidArgumentError(
      absl::StrCat("PreprocessConfig.", field, " ", requirement, ", got ", got));
}

}  // namespace

double DefaultCropPct(int size) { return size >= kSquashFromSize ? 1.0 : kDefaultCropPct; }

int64_t ResizedShorterSide(const PreprocessConfig& config) {
  if (config.size >= kSquashFromSize) return config.size;
  return static_cast<int64_t>(config.size / config.crop_pct);
}

absl::string_view InterpolationName(Interpolation interpolation) {
  switch (interpolation) {
    case Interpolation::kBicubic:
      return "bicubic";
    case Interpolation::kBilinear:
      return "bilinear";
    case Interpolation::kNearest:
      return "nearest";
  }
  return "invalid";
}

absl::StatusOr<Interpolation> InterpolationFromName(absl::string_view name) {
  for (Interpolation i :
       {Interpolation::kBicubic, Interpolation::kBilinear, Interpolation::kNearest}) {
    if (name == InterpolationName(i)) return i;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("'", name, "' is not bicubic, bilinear or nearest"));
}

absl::Status ValidatePreprocessConfig(const PreprocessConfig& c) {
  if (c.size < kMinSize || c.size > kMaxSize) {
    return Bad("size", absl::StrCat("must be in [", kMinSize, ", ", kMaxSize, "]"), c.size);
  }
  if (!(c.crop_pct > 0.0 && c.crop_pct <= 1.0)) {
    return Bad("crop_pct", "must be in (0, 1]", c.crop_pct);
  }
  if (c.interpolation != Interpolation::kBicubic && c.interpolation != Interpolation::kBilinear &&
      c.interpolation != Interpolation::kNearest) {
    return Bad("interpolation", "must be bicubic, bilinear or nearest",
               static_cast<int>(c.interpolation));
  }
  for (int i = 0; i < 3; ++i) {
    if (!std::isfinite(c.mean[i]))
      return Bad(absl::StrCat("mean[", i, "]"), "must be finite", c.mean[i]);
    if (!(c.std[i] > 0.0f && std::isfinite(c.std[i]))) {
      return Bad(absl::StrCat("std[", i, "]"), "must be positive and finite", c.std[i]);
    }
  }
  if (c.max_pixels < 1 || c.max_pixels > kMaxPixelsCeiling) {
    return Bad("max_pixels", "must be in [1, 2^30]", c.max_pixels);
  }
  if (c.max_encoded_bytes < 1 || c.max_encoded_bytes > std::numeric_limits<int32_t>::max()) {
    return Bad("max_encoded_bytes", "must be in [1, 2^31 - 1]", c.max_encoded_bytes);
  }
  // In double: a tiny crop_pct would overflow an integer. This bounds the shorter-side target
  // to 2^15, which keeps the transform's integer arithmetic far from overflow.
  const double side = c.size >= kSquashFromSize ? c.size : std::floor(c.size / c.crop_pct);
  if (side * side > static_cast<double>(c.max_pixels)) {
    return absl::InvalidArgumentError(
        absl::StrCat("PreprocessConfig.max_pixels (", c.max_pixels,
                     ") is below the resized size of even a ", "square image (", side, "x", side,
                     ", from size ", c.size, " and crop_pct ", c.crop_pct, ")"));
  }
  return absl::OkStatus();
}

}  // namespace convnext
