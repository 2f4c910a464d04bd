// Image preprocessing with OpenCV: decoding and the ImageNet evaluation transform that ConvNeXt's
// reference evaluation uses (resize the shorter side, center crop, scale to [0, 1], normalise
// with the ImageNet mean and std), producing a float32 NCHW tensor in RGB order.
//
// Known difference, tracked by the serving issue: the reference resizes with PIL's bicubic, which
// antialiases when shrinking; OpenCV's INTER_CUBIC used here does not, so large photos give
// slightly different tensors than torchvision's transform.
#ifndef CONVNEXT_MODEL_PREPROCESS_H_
#define CONVNEXT_MODEL_PREPROCESS_H_

#include <ATen/core/Tensor.h>

#include <array>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace convnext {

struct EvalTransform {
  // The shorter side is resized to this many pixels (bicubic), the longer one in proportion
  // (int(resize * long / short), as torchvision computes it).
  int resize_shorter = 256;
  // Then a centered crop_size x crop_size square is cut out.
  int crop_size = 224;
  // Per-channel (R, G, B) normalisation of [0, 1] pixel values.
  std::array<float, 3> mean = {0.485f, 0.456f, 0.406f};
  std::array<float, 3> std = {0.229f, 0.224f, 0.225f};
};

// Decodes an encoded image (JPEG, PNG, BMP, WebP, ...; EXIF orientation applied; gray and alpha
// become RGB) and transforms it into a [1, 3, crop_size, crop_size] float32 tensor.
// INVALID_ARGUMENT if the bytes are not an image OpenCV can decode.
absl::StatusOr<at::Tensor> DecodeAndTransform(absl::string_view encoded,
                                              const EvalTransform& transform);

// Reads the file at `path` and calls DecodeAndTransform.
absl::StatusOr<at::Tensor> LoadImageTensor(const std::string& path, const EvalTransform& transform);

}  // namespace convnext

#endif  // CONVNEXT_MODEL_PREPROCESS_H_
