// An image that arrives already preprocessed, as a tensor's raw bytes (the API's tensor input):
// checked and turned into the model's input tensor. No decoding and no resizing happens here; the
// caller sends what the model's own preprocessing would have produced.
#ifndef CONVNEXT_IMAGE_TENSOR_IMAGE_H_
#define CONVNEXT_IMAGE_TENSOR_IMAGE_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace convnext {

// Element type of the bytes.
enum class TensorImageDType { kFloat32, kFloat16 };

// Reads `data` as a little-endian row-major tensor of `shape` [3, H, W] or [1, 3, H, W]: exactly
// the bytes the shape needs, finite values, sides of at least 32 and H * W at most `max_pixels`.
// Returns a float32 [1, 3, H, W] tensor, as the other image functions do. INVALID_ARGUMENT
// otherwise, saying which rule was broken.
absl::StatusOr<at::Tensor> TensorImage(absl::string_view data, const std::vector<int64_t>& shape,
                                       TensorImageDType dtype, uint64_t max_pixels);

}  // namespace convnext

#endif  // CONVNEXT_IMAGE_TENSOR_IMAGE_H_
