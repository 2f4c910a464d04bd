#include "base/npy_format.h"

#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace convnext {
namespace {

constexpr size_t kPrefixBytes = 10;  // Magic, version and HEADER_LEN.
constexpr size_t kAlignment = 64;    // Data starts at a multiple of this.

}  // namespace

absl::StatusOr<std::string> NpyHeader(absl::string_view descr, const std::vector<int64_t>& shape) {
  for (int64_t d : shape) {
    if (d < 0) return absl::InvalidArgumentError(absl::StrCat("array has dimension ", d));
  }
  std::string dims = absl::StrJoin(shape, ", ");
  if (shape.size() == 1) dims += ",";
  std::string dict =
      absl::StrCat("{'descr': '", descr, "', 'fortran_order': False, 'shape': (", dims, "), }");
  const size_t unpadded = kPrefixBytes + dict.size() + 1;  // + '\n'.
  dict.append((kAlignment - unpadded % kAlignment) % kAlignment, ' ');
  dict += '\n';
  if (dict.size() > UINT16_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("array has too many dimensions for .npy 1.0: ", shape.size()));
  }
  std::string header(kNpyMagic);
  header.push_back(1);  // Version 1.0.
  header.push_back(0);
  header.push_back(static_cast<char>(dict.size() & 0xff));
  header.push_back(static_cast<char>(dict.size() >> 8));
  return header + dict;
}

absl::Status WriteNpyFile(const std::string& path, absl::string_view header,
                          absl::string_view data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  out.close();
  if (!out) return absl::PermissionDeniedError(absl::StrCat("'", path, "' cannot be written"));
  return absl::OkStatus();
}

}  // namespace convnext
