#include "client/npy_writer.h"

#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/npy_format.h"

namespace convnext::client {
namespace {

// The dtype's .npy 'descr' and element size.
absl::Status Descr(v1::DataType dtype, std::string* descr, size_t* item_bytes) {
  switch (dtype) {
    case v1::DATA_TYPE_UNSPECIFIED:
    case v1::FP32:
      *descr = "<f4";
      *item_bytes = 4;
      return absl::OkStatus();
    case v1::FP16:
      *descr = "<f2";
      *item_bytes = 2;
      return absl::OkStatus();
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("tensor dtype ", static_cast<int>(dtype), " has no .npy type"));
  }
}

}  // namespace

absl::StatusOr<std::string> NpyHeader(const v1::Tensor& tensor) {
  std::string descr;
  size_t item_bytes = 0;
  if (absl::Status s = Descr(tensor.dtype(), &descr, &item_bytes); !s.ok()) return s;
  const std::vector<int64_t> shape(tensor.shape().begin(), tensor.shape().end());
  uint64_t elements = 1;
  for (int64_t d : shape) elements *= d < 0 ? 0 : static_cast<uint64_t>(d);
  absl::StatusOr<std::string> header = convnext::NpyHeader(descr, shape);
  if (!header.ok()) return header.status();
  if (tensor.data().size() != elements * item_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor of shape [", absl::StrJoin(tensor.shape(), ", "), "] and dtype ", descr, " needs ",
        elements * item_bytes, " bytes, has ", tensor.data().size()));
  }
  return header;
}

absl::Status WriteNpy(const std::string& path, const v1::Tensor& tensor) {
  absl::StatusOr<std::string> header = NpyHeader(tensor);
  if (!header.ok()) return header.status();
  return WriteNpyFile(path, *header, tensor.data());
}

}  // namespace convnext::client
