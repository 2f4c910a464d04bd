// Conversions between v1::Tensor (the API's little-endian row-major tensors) and at::Tensor.
#ifndef CONVNEXT_SERVER_TENSOR_PROTO_H_
#define CONVNEXT_SERVER_TENSOR_PROTO_H_

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "convnext/v1/image_model.pb.h"

namespace convnext::serving {

// Writes `t` (any floating dtype and device) as `dtype` (FP32 or FP16).
void ToProto(const at::Tensor& t, v1::DataType dtype, v1::Tensor* out);

// Reads an input image tensor: shape [3, H, W] or [1, 3, H, W], FP32 or FP16, with exactly the
// bytes the shape needs, finite values, sides of at least 32 and at most `max_pixels` pixels.
// Returns a float32 [3, H, W] tensor. INVALID_ARGUMENT otherwise.
absl::StatusOr<at::Tensor> ImageTensorFromProto(const v1::Tensor& proto, uint64_t max_pixels);

}  // namespace convnext::serving

#endif  // CONVNEXT_SERVER_TENSOR_PROTO_H_
