// Image preprocessing: decoding untrusted image bytes, and ConvNeXt's evaluation transform,
// producing float32 [1, 3, H, W] tensors in RGB order that match the reference pipeline (PIL
// image, torchvision 0.14 transforms) to the last bit on PNGs and to JPEG-decoder differences on
// JPEGs:
//
//   size < 384:  Resize(int(size / crop_pct)) of the shorter side, CenterCrop(size)
//   size >= 384: Resize((size, size)), a squash without crop
//   then ToTensor (x / 255) and Normalize ((x - mean) / std), per RGB channel.
//
// Resizing reimplements PIL's Image.resize (libImaging/Resample.c; OpenCV has no equivalent):
// separable convolution, horizontal pass then vertical pass, each skipped when that dimension is
// unchanged, with the filter support widened by the downscale factor (the antialiasing that
// OpenCV's INTER_CUBIC lacks), bicubic a = -0.5, and PIL's 22-bit fixed-point coefficients
// rounded to an 8-bit intermediate (both passes on AVX-512 where the CPU has it, to the same
// bytes). Nearest reproduces PIL's affine nearest-neighbour scaling.
// Only the pixels the center crop keeps are computed, which gives the same values as resizing
// everything and cropping.
//
// Decoding uses OpenCV (cv::imdecode: libjpeg-turbo, libpng, libwebp, libtiff, ...), except for
// the common JPEG (no EXIF orientation to apply, not CMYK), which image/jpeg_decoder.h decodes with
// the same libjpeg-turbo to the same pixels at twice the speed; and then:
//  - applies the EXIF orientation (PIL, and hence the bare torchvision pipeline, does not);
//  - makes grayscale RGB by replicating it, and drops alpha without compositing, as PIL's
//    convert("RGB") does;
//  - keeps the high byte of 16-bit samples. For 16-bit RGB(A) PNGs that is what PIL does; for
//    16-bit grayscale PNGs PIL's convert("RGB") clips values above 255 to white, which we
//    deliberately do not reproduce.
//
// Untrusted input: before decoding, the dimensions are read from the header (image/image_header.h)
// so that an image over max_pixels (a decompression bomb) is refused without being decoded, and
// only the formats whose header we read (kAcceptedFormats) reach the decoder; the decoded size is
// checked again. OpenCV's own limit (2^30 pixels unless OPENCV_IO_MAX_IMAGE_PIXELS says less when
// the process starts; convnext-server sets it to its max_image_pixels) bounds the decode itself.
// Every failure caused by the input is INVALID_ARGUMENT with a message for the client.
//
// All functions are thread-safe and keep no state.
#ifndef CONVNEXT_IMAGE_PREPROCESS_H_
#define CONVNEXT_IMAGE_PREPROCESS_H_

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "image/image_header.h"
#include "image/preprocess_config.h"

namespace convnext {

// An 8-bit RGB image: `height` rows of `width` pixels, each 3 bytes R, G, B, no row padding.
struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> pixels;  // width * height * 3 bytes.
};

// The encoded formats accepted: those whose header image_header.h reads, so that every image's
// size is checked before it is decoded, and that the decoder reads.
inline constexpr char kAcceptedFormats[] = "JPEG, PNG, WebP, BMP, TIFF, PNM";
bool IsAcceptedFormat(ImageFormat format);

// Decodes an encoded image (one of kAcceptedFormats; anything else is INVALID_ARGUMENT) into
// RGB, as described above. Uses only config.max_encoded_bytes and config.max_pixels (but checks
// the whole config). INVALID_ARGUMENT for empty input, too many bytes, not an image, truncated or
// corrupt data, or more than max_pixels pixels.
absl::StatusOr<RgbImage> DecodeImage(absl::string_view encoded, const PreprocessConfig& config);

// The evaluation transform of a decoded image: a [1, 3, size, size] float32 tensor.
absl::StatusOr<at::Tensor> TransformImage(const RgbImage& image, const PreprocessConfig& config);

// DecodeImage then TransformImage.
absl::StatusOr<at::Tensor> DecodeAndTransform(absl::string_view encoded,
                                              const PreprocessConfig& config);

// The evaluation transform of raw 8-bit pixels: `height` rows of `width` pixels of `channels`
// bytes each (1: gray; 3: RGB, or BGR if `bgr`; 4: RGBA, or BGRA if `bgr`, alpha ignored), no
// row padding. `num_bytes` must be exactly width * height * channels. INVALID_ARGUMENT for bad
// sizes or more than max_pixels pixels.
absl::StatusOr<at::Tensor> TransformPixels(const uint8_t* data, size_t num_bytes, int width,
                                           int height, int channels, bool bgr,
                                           const PreprocessConfig& config);

// The evaluation transform up to, not including, ToTensor and Normalize: the resized and cropped
// pixels as a uint8 [1, 3, size, size] tensor (R, G, B planes), a quarter of float32's bytes to
// hold and to copy to a GPU. (x / 255 - mean[c]) / std[c] in float32, in that order, then gives
// exactly what TransformImage / TransformPixels give (model/batch.h: PixelNormalization, which a
// model applies where it runs). Errors as theirs.
absl::StatusOr<at::Tensor> TransformImageToUint8(const RgbImage& image,
                                                 const PreprocessConfig& config);
absl::StatusOr<at::Tensor> TransformPixelsToUint8(const uint8_t* data, size_t num_bytes, int width,
                                                  int height, int channels, bool bgr,
                                                  const PreprocessConfig& config);

// "Keep size" variants, for feature extraction at the image's own resolution (the Embed API's
// KEEP_SIZE policy). No resize and no crop: the image is normalised at its native size into a
// [1, 3, H32, W32] float32 tensor, H32 = 32 * ceil(height / 32), W32 = 32 * ceil(width / 32).
// Pixel (y, x) of the image is at [0, :, y, x]; rows >= height and columns >= width (bottom and
// right padding) are exactly 0.0, i.e. the mean colour after normalisation, as detection
// pipelines pad with size_divisor = 32. Each ConvNeXt stage i (1..4) then has exactly
// H32 / 2^(i+1) rows and W32 / 2^(i+1) columns. Limited to max_pixels image pixels.
absl::StatusOr<at::Tensor> TransformImageKeepSize(const RgbImage& image,
                                                  const PreprocessConfig& config);
absl::StatusOr<at::Tensor> TransformPixelsKeepSize(const uint8_t* data, size_t num_bytes, int width,
                                                   int height, int channels, bool bgr,
                                                   const PreprocessConfig& config);

// What preparing an image costs, known before any pixel is decoded (from the header's dimensions),
// so that a server can refuse or defer an image it cannot afford. An estimate, on the safe side.
struct InputPlan {
  int64_t height = 0;  // The model input's rows and columns (size x size, or the padded
  int64_t width = 0;   // KEEP_SIZE dimensions).
  int64_t bytes = 0;   // Peak bytes while preparing it: decoded pixels, resampling buffers, tensor.
};

// The plan for a source image of `width` x `height` pixels with the CLASSIFICATION transform or,
// if `keep_size`, the KEEP_SIZE one. INVALID_ARGUMENT (as decoding would say) for an image over
// config.max_pixels.
absl::StatusOr<InputPlan> PlanInput(int64_t width, int64_t height, const PreprocessConfig& config,
                                    bool keep_size);

// Where the preprocessing puts a point of the source image in the model input: source (x, y), in
// pixel-edge coordinates ((0, 0) the top-left corner of the top-left pixel), lands at
// (x * scale_x - offset_x, y * scale_y - offset_y). PIL's resize maps pixel edges by the size
// ratio exactly; the center crop subtracts its offset; KEEP_SIZE maps every point to itself.
struct InputTransform {
  double scale_x = 1, scale_y = 1;
  double offset_x = 0, offset_y = 0;
};

// The transform for a decoded (upright) image of `width` x `height` pixels with the
// CLASSIFICATION transform or, if `keep_size`, the KEEP_SIZE one. INVALID_ARGUMENT as the
// transform itself would say.
absl::StatusOr<InputTransform> TransformOf(int64_t width, int64_t height,
                                           const PreprocessConfig& config, bool keep_size);

// Reads the file at `path` (NOT_FOUND if it cannot be opened; at most max_encoded_bytes) and calls
// DecodeAndTransform. Errors name the path.
absl::StatusOr<at::Tensor> LoadImageTensor(const std::string& path, const PreprocessConfig& config);

namespace internal {

// Whether resampling may use the vector (AVX-512) passes where the CPU has them; true by default.
// Tests turn them off to hold the vector passes to the scalar ones, bit for bit.
void SetVectorResamplingForTesting(bool enabled);

}  // namespace internal

}  // namespace convnext

#endif  // CONVNEXT_IMAGE_PREPROCESS_H_
