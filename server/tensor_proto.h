// Conversions between v1::Tensor (the API's little-endian row-major tensors) and the model and
// image layers' types. Copies bytes; no tensor math.
#ifndef CONVNEXT_SERVER_TENSOR_PROTO_H_
#define CONVNEXT_SERVER_TENSOR_PROTO_H_

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "convnext/v1/image_model.pb.h"
#include "model/batch.h"

namespace convnext::server {

// Moves a model output into the API's tensor message.
void ToProto(OutputTensor&& t, v1::Tensor* out);

// The model output dtype for an API dtype (FP16 -> float16, anything else -> float32).
OutputDType ToOutputDType(v1::DataType dtype);

// Reads an input image tensor (image/tensor_image.h): INVALID_ARGUMENT for a bad shape, dtype,
// size or value.
absl::StatusOr<at::Tensor> ImageTensorFromProto(const v1::Tensor& proto, uint64_t max_pixels);

}  // namespace convnext::server

#endif  // CONVNEXT_SERVER_TENSOR_PROTO_H_
