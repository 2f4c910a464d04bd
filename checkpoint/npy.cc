#include "checkpoint/npy.h"

#include <ATen/ATen.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "base/npy_format.h"
#include "base/status_macros.h"

namespace convnext {
namespace {

struct Descr {
  const char* text;
  c10::ScalarType type;
};
constexpr Descr kDescrs[] = {
    {"<f4", c10::ScalarType::Float}, {"<f8", c10::ScalarType::Double},
    {"<f2", c10::ScalarType::Half},  {"<i8", c10::ScalarType::Long},
    {"<i4", c10::ScalarType::Int},   {"|u1", c10::ScalarType::Byte},
};

absl::Status Bad(const std::string& path, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("'", path, "' is not a valid .npy file: ", what));
}

// The value text after `'key':` in a header dict, up to the next top-level comma or brace.
absl::string_view DictValue(absl::string_view header, absl::string_view key) {
  const std::string needle = absl::StrCat("'", key, "':");
  size_t pos = header.find(needle);
  if (pos == absl::string_view::npos) return {};
  absl::string_view rest = absl::StripLeadingAsciiWhitespace(header.substr(pos + needle.size()));
  size_t end = 0;
  int depth = 0;
  for (; end < rest.size(); ++end) {
    const char c = rest[end];
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if (depth == 0 && (c == ',' || c == '}')) break;
    if (depth < 0) break;
  }
  return absl::StripAsciiWhitespace(rest.substr(0, end));
}

}  // namespace

absl::StatusOr<std::vector<float>> ReadNpyAsFloats(const std::string& path) {
  ASSIGN_OR_RETURN(at::Tensor t, ReadNpy(path));
  const at::Tensor flat = t.to(at::kFloat).contiguous().reshape({-1});
  return std::vector<float>(flat.data_ptr<float>(), flat.data_ptr<float>() + flat.numel());
}

absl::StatusOr<at::Tensor> ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open '", path, "'"));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.size() < 10 ||
      bytes.compare(0, kNpyMagic.size(), kNpyMagic.data(), kNpyMagic.size()) != 0) {
    return Bad(path, "missing the \\x93NUMPY magic");
  }
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len = 0, header_start = 0;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) return Bad(path, "truncated header");
    uint32_t len;
    std::memcpy(&len, bytes.data() + 8, 4);
    header_len = len;
    header_start = 12;
  } else {
    return Bad(path, absl::StrCat("unsupported format version ", major));
  }
  if (header_start + header_len > bytes.size()) return Bad(path, "truncated header");
  const absl::string_view header(bytes.data() + header_start, header_len);

  absl::string_view descr =
      absl::StripPrefix(absl::StripSuffix(DictValue(header, "descr"), "'"), "'");
  const Descr* found = nullptr;
  for (const Descr& d : kDescrs) {
    if (descr == d.text) found = &d;
  }
  if (found == nullptr) return Bad(path, absl::StrCat("unsupported dtype '", descr, "'"));
  if (DictValue(header, "fortran_order") != "False") return Bad(path, "Fortran order");
  absl::string_view shape_text = DictValue(header, "shape");
  if (!absl::ConsumePrefix(&shape_text, "(") || !absl::ConsumeSuffix(&shape_text, ")")) {
    return Bad(path, "no shape tuple");
  }
  std::vector<int64_t> shape;
  int64_t numel = 1;
  for (absl::string_view part : absl::StrSplit(shape_text, ',', absl::SkipWhitespace())) {
    int64_t d = 0;
    if (!absl::SimpleAtoi(part, &d) || d < 0 || (d > 0 && numel > (int64_t{1} << 40) / d)) {
      return Bad(path, absl::StrCat("bad shape entry '", part, "'"));
    }
    shape.push_back(d);
    numel *= d;
  }
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(found->type));
  const size_t data_start = header_start + header_len;
  const size_t nbytes = static_cast<size_t>(numel) * t.element_size();
  if (bytes.size() - data_start < nbytes) {
    return Bad(path, absl::StrCat("truncated data: ", bytes.size() - data_start, " of ", nbytes,
                                  " bytes"));
  }
  if (nbytes > 0) std::memcpy(t.data_ptr(), bytes.data() + data_start, nbytes);
  return t;
}

absl::Status WriteNpy(const std::string& path, const at::Tensor& tensor) {
  const Descr* found = nullptr;
  for (const Descr& d : kDescrs) {
    if (tensor.scalar_type() == d.type) found = &d;
  }
  if (found == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot write dtype ", c10::toString(tensor.scalar_type()), " as .npy"));
  }
  const at::Tensor t = tensor.cpu().contiguous();
  ASSIGN_OR_RETURN(const std::string header, NpyHeader(found->text, t.sizes().vec()));
  return WriteNpyFile(
      path, header,
      absl::string_view(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size()));
}

}  // namespace convnext
