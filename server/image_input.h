// Turning an API Image (encoded bytes, raw pixels or a preprocessed tensor) into the model's input
// tensor [3, H, W], with the model's preprocessing and the request's resize policy. Runs on the
// preprocessing pool.
#ifndef CONVNEXT_SERVER_IMAGE_INPUT_H_
#define CONVNEXT_SERVER_IMAGE_INPUT_H_

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "convnext/v1/image_model.pb.h"
#include "image/preprocess.h"
#include "server/config.pb.h"

namespace convnext::server {

// The model-level preprocessing of a (normalised) server config, with the server's pixel limit.
absl::StatusOr<PreprocessConfig> ToPreprocessConfig(const server::PreprocessingConfig& config,
                                                    uint64_t max_image_pixels);

// What preparing `image` will cost and the model input size it gives, before anything is decoded:
// from the encoded header, the raw image's size or the tensor's shape (image/preprocess.h,
// PlanInput). An encoded image in a format that is not accepted costs nothing: decoding refuses it.
// INVALID_ARGUMENT for a malformed header, a missing source or an image over the pixel limit.
absl::StatusOr<InputPlan> PlanImage(const v1::Image& image, const PreprocessConfig& config,
                                    v1::ResizePolicy resize);

// A model input and where it came from.
struct PreparedImage {
  // [1, 3, H, W]: for encoded and raw images with the CLASSIFICATION resize, uint8 pixels (a
  // quarter of float32's bytes to queue and to copy to a GPU), which the model normalises where
  // it runs (model/batch.h, PixelNormalization, with the preprocessing's mean and std: exactly
  // what normalising here would give); else float32, normalised.
  at::Tensor input;
  int64_t width = 0, height = 0;  // The source image as decoded (a tensor: its columns, rows).
  InputTransform transform;       // Source pixel coordinates to input pixel coordinates.
};

// INVALID_ARGUMENT for anything that is not a valid image of acceptable size.
absl::StatusOr<PreparedImage> PrepareImage(const v1::Image& image, const PreprocessConfig& config,
                                           v1::ResizePolicy resize);

}  // namespace convnext::server

#endif  // CONVNEXT_SERVER_IMAGE_INPUT_H_
