#include "server/tensor_proto.h"

#include <ATen/ATen.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace convnext::serving {

void ToProto(const at::Tensor& t, v1::DataType dtype, v1::Tensor* out) {
  const bool half = dtype == v1::FP16;
  const at::Tensor c = t.to(at::kCPU, half ? at::kHalf : at::kFloat).contiguous();
  out->clear_shape();
  for (int64_t s : c.sizes()) out->add_shape(s);
  out->set_dtype(half ? v1::FP16 : v1::FP32);
  out->set_data(c.data_ptr(), c.numel() * c.element_size());
}

absl::StatusOr<at::Tensor> ImageTensorFromProto(const v1::Tensor& proto, uint64_t max_pixels) {
  const std::vector<int64_t> shape(proto.shape().begin(), proto.shape().end());
  const bool ok_rank =
      (shape.size() == 3 && shape[0] == 3) || (shape.size() == 4 && shape[0] == 1 && shape[1] == 3);
  if (!ok_rank) {
    return absl::InvalidArgumentError(absl::StrCat("tensor input has shape [",
                                                   absl::StrJoin(shape, ", "),
                                                   "], expected [3, H, W] or [1, 3, H, W]"));
  }
  const int64_t h = shape[shape.size() - 2], w = shape[shape.size() - 1];
  if (h < 32 || w < 32 || h > (1 << 20) || w > (1 << 20) ||
      static_cast<uint64_t>(h) * static_cast<uint64_t>(w) > max_pixels) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor input is ", h, "x", w, ": sides must be at least 32 and H*W at most ", max_pixels));
  }
  const bool half = proto.dtype() == v1::FP16;
  if (proto.dtype() != v1::FP32 && proto.dtype() != v1::FP16 &&
      proto.dtype() != v1::DATA_TYPE_UNSPECIFIED) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor input has unknown dtype ", static_cast<int>(proto.dtype())));
  }
  const size_t expected = static_cast<size_t>(3 * h * w) * (half ? 2 : 4);
  if (proto.data().size() != expected) {
    return absl::InvalidArgumentError(absl::StrCat("tensor input has ", proto.data().size(),
                                                   " bytes of data, its shape needs ", expected));
  }
  at::Tensor t = at::empty({3, h, w}, half ? at::kHalf : at::kFloat);
  std::memcpy(t.data_ptr(), proto.data().data(), expected);
  t = t.to(at::kFloat);
  if (!at::isfinite(t).all().item<bool>()) {
    return absl::InvalidArgumentError("tensor input contains NaN or infinite values");
  }
  return t;
}

}  // namespace convnext::serving
