// The configuration of ConvNeXt's evaluation transform (image/preprocess.h) and the limits on the
// images it accepts: one definition of every default and range, read by the server's config
// normaliser and validator too. No LibTorch or OpenCV here, so that configuration code can use it
// alone.
#ifndef CONVNEXT_IMAGE_PREPROCESS_CONFIG_H_
#define CONVNEXT_IMAGE_PREPROCESS_CONFIG_H_

#include <array>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace convnext {

// OpenCV's own decoding limit, in pixels: the largest max_pixels can be.
inline constexpr int64_t kMaxPixelsCeiling = int64_t{1} << 30;
// ConvNeXt's (and ImageNet's customary) crop fraction below 384: 224 / 256.
inline constexpr double kDefaultCropPct = 0.875;
// From this input side on, the transform squashes the whole image to size x size (no crop), as
// ConvNeXt's 384 fine-tunes were evaluated; below it, shorter-side resize then center crop.
inline constexpr int kSquashFromSize = 384;
// The range of the model input side, in pixels.
inline constexpr int kMinSize = 32;
inline constexpr int kMaxSize = 4096;

// Resampling filters, with PIL's semantics (PIL.Image.Resampling.BICUBIC etc.).
enum class Interpolation { kBicubic, kBilinear, kNearest };

// "bicubic", "bilinear", "nearest".
absl::string_view InterpolationName(Interpolation interpolation);
// The inverse of InterpolationName; INVALID_ARGUMENT for any other name.
absl::StatusOr<Interpolation> InterpolationFromName(absl::string_view name);

struct PreprocessConfig {
  // Side of the square model input, in pixels: 224 for ImageNet-1k ConvNeXts, 384 for the
  // fine-tuned high-resolution ones. In [kMinSize, kMaxSize].
  int size = 224;
  // For size < 384, the fraction of the resized shorter side the center crop keeps: the shorter
  // side is resized to int(size / crop_pct) pixels. 0.875 = 224 / 256 is ConvNeXt's (and
  // ImageNet's customary) value. In (0, 1]. Ignored for size >= 384, which squashes.
  double crop_pct = kDefaultCropPct;
  Interpolation interpolation = Interpolation::kBicubic;
  // Per-channel (R, G, B) normalisation of pixel values scaled to [0, 1]: (x - mean) / std.
  // Defaults: the ImageNet statistics every ConvNeXt checkpoint was trained with.
  std::array<float, 3> mean = {0.485f, 0.456f, 0.406f};
  std::array<float, 3> std = {0.229f, 0.224f, 0.225f};

  // Largest image accepted, width * height in pixels, both as decoded and (for size < 384) after
  // the shorter-side resize, which for a very elongated image is far larger. 40 megapixels
  // (120 MB decoded) is above what cameras deliver and bounds a request's memory. In [1, 2^30].
  int64_t max_pixels = 40'000'000;
  // Largest encoded image accepted, in bytes. 32 MiB is far above a 40-megapixel JPEG and caps
  // the work a single (possibly hostile) input can cause. In [1, 2^31 - 1].
  int64_t max_encoded_bytes = int64_t{32} << 20;
};

// The crop_pct a model of input side `size` uses when none is configured: kDefaultCropPct below
// 384 (resize 256 for 224), 1.0 from 384 on (where the transform squashes and ignores it).
double DefaultCropPct(int size);

// The side the shorter image side is resized to before the center crop: int(size / crop_pct)
// below kSquashFromSize; from it on the image is squashed to size x size, and this is `size`.
int64_t ResizedShorterSide(const PreprocessConfig& config);

// OK, or INVALID_ARGUMENT naming the first bad field and its allowed range.
absl::Status ValidatePreprocessConfig(const PreprocessConfig& config);

}  // namespace convnext

#endif  // CONVNEXT_IMAGE_PREPROCESS_CONFIG_H_
