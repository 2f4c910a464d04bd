#include "server/tensor_proto.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "image/tensor_image.h"

namespace convnext::server {

void ToProto(OutputTensor&& t, v1::Tensor* out) {
  out->clear_shape();
  for (int64_t s : t.shape) out->add_shape(s);
  out->set_dtype(t.dtype == OutputDType::kFloat16 ? v1::FP16 : v1::FP32);
  out->set_data(std::move(t.bytes));
}

OutputDType ToOutputDType(v1::DataType dtype) {
  return dtype == v1::FP16 ? OutputDType::kFloat16 : OutputDType::kFloat32;
}

absl::StatusOr<at::Tensor> ImageTensorFromProto(const v1::Tensor& proto, uint64_t max_pixels) {
  if (proto.dtype() != v1::FP32 && proto.dtype() != v1::FP16 &&
      proto.dtype() != v1::DATA_TYPE_UNSPECIFIED) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor input has unknown dtype ", static_cast<int>(proto.dtype())));
  }
  const std::vector<int64_t> shape(proto.shape().begin(), proto.shape().end());
  return TensorImage(
      proto.data(), shape,
      proto.dtype() == v1::FP16 ? TensorImageDType::kFloat16 : TensorImageDType::kFloat32,
      max_pixels);
}

}  // namespace convnext::server
