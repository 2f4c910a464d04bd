#include "server/tensor_proto.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "image/tensor_image.h"

namespace convnext::server {

void ToProto(OutputTensor&& t, v1::Tensor* out) {
  out->clear_shape();
  for (int64_t s : t.shape) out->add_shape(s);
  switch (t.dtype) {
    case OutputDType::kFloat32:
      out->set_dtype(v1::FP32);
      break;
    case OutputDType::kFloat16:
      out->set_dtype(v1::FP16);
      break;
    case OutputDType::kBFloat16:
      out->set_dtype(v1::BF16);
      break;
    case OutputDType::kInt8:
      out->set_dtype(v1::INT8);
      out->mutable_scales()->Assign(t.scales.begin(), t.scales.end());
      out->set_scale_axis(t.scale_axis);
      break;
  }
  out->set_data(std::move(t.bytes));
}

OutputDType ToOutputDType(v1::DataType dtype) {
  switch (dtype) {
    case v1::FP16:
      return OutputDType::kFloat16;
    case v1::BF16:
      return OutputDType::kBFloat16;
    case v1::INT8:
      return OutputDType::kInt8;
    default:
      return OutputDType::kFloat32;
  }
}

absl::StatusOr<at::Tensor> ImageTensorFromProto(const v1::Tensor& proto, uint64_t max_pixels) {
  if (proto.dtype() != v1::FP32 && proto.dtype() != v1::FP16 &&
      proto.dtype() != v1::DATA_TYPE_UNSPECIFIED) {
    const std::string name =
        v1::DataType_IsValid(proto.dtype()) ? v1::DataType_Name(proto.dtype()) : "unknown";
    return absl::InvalidArgumentError(absl::StrCat("tensor input has dtype ",
                                                   static_cast<int>(proto.dtype()), " (", name,
                                                   "): image tensors must be FP32 or FP16"));
  }
  const std::vector<int64_t> shape(proto.shape().begin(), proto.shape().end());
  return TensorImage(
      proto.data(), shape,
      proto.dtype() == v1::FP16 ? TensorImageDType::kFloat16 : TensorImageDType::kFloat32,
      max_pixels);
}

}  // namespace convnext::server
