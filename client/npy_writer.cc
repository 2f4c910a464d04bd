#include "client/npy_writer.h"

#include <cstdint>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace convnext::client {
namespace {

constexpr char kMagic[] = "\x93NUMPY\x01\x00";  // Magic and version 1.0.
constexpr size_t kPrefixBytes = 10;             // Magic, version and HEADER_LEN.
constexpr size_t kAlignment = 64;               // Data starts at a multiple of this.

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
  uint64_t elements = 1;
  for (int64_t d : tensor.shape()) {
    if (d < 0) return absl::InvalidArgumentError(absl::StrCat("tensor has dimension ", d));
    elements *= static_cast<uint64_t>(d);
  }
  if (tensor.data().size() != elements * item_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor of shape [", absl::StrJoin(tensor.shape(), ", "), "] and dtype ", descr, " needs ",
        elements * item_bytes, " bytes, has ", tensor.data().size()));
  }
  std::string dims = absl::StrJoin(tensor.shape(), ", ");
  if (tensor.shape_size() == 1) dims += ",";
  std::string dict =
      absl::StrCat("{'descr': '", descr, "', 'fortran_order': False, 'shape': (", dims, "), }");
  const size_t unpadded = kPrefixBytes + dict.size() + 1;  // + '\n'.
  dict.append((kAlignment - unpadded % kAlignment) % kAlignment, ' ');
  dict += '\n';
  if (dict.size() > UINT16_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor has too many dimensions for .npy 1.0: ", tensor.shape_size()));
  }
  std::string header(kMagic, sizeof(kMagic) - 1);
  header.push_back(static_cast<char>(dict.size() & 0xff));
  header.push_back(static_cast<char>(dict.size() >> 8));
  return header + dict;
}

absl::Status WriteNpy(const std::string& path, const v1::Tensor& tensor) {
  absl::StatusOr<std::string> header = NpyHeader(tensor);
  if (!header.ok()) return header.status();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << *header << tensor.data();
  out.close();
  if (!out) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot be written"));
  return absl::OkStatus();
}

}  // namespace convnext::client
