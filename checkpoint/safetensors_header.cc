#include "checkpoint/safetensors_header.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace convnext {
namespace {

// Headers larger than this are rejected before allocation (the reference implementation's limit).
constexpr uint64_t kMaxHeaderBytes = 100 << 20;

uint64_t ReadLe64(const char* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

absl::Status Bad(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("malformed safetensors header: ", what));
}

absl::StatusOr<SafetensorsEntry> ParseEntry(const std::string& name, const nlohmann::json& info,
                                            uint64_t data_size) {
  if (!info.is_object()) return Bad(absl::StrCat("entry '", name, "' is not an object"));
  SafetensorsEntry entry;
  entry.name = name;
  auto dtype = info.find("dtype");
  if (dtype == info.end() || !dtype->is_string()) {
    return Bad(absl::StrCat("entry '", name, "' has no string 'dtype'"));
  }
  entry.dtype = dtype->get<std::string>();
  const uint64_t dtype_size = SafetensorsDtypeSize(entry.dtype);
  if (dtype_size == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", name, " has unsupported safetensors dtype '", entry.dtype, "'"));
  }
  auto shape = info.find("shape");
  if (shape == info.end() || !shape->is_array() || shape->size() > 16) {
    return Bad(absl::StrCat("entry '", name, "' has no 'shape' array of at most 16 dims"));
  }
  uint64_t bytes = dtype_size;
  for (const nlohmann::json& dim : *shape) {
    if (!dim.is_number_unsigned()) {
      return Bad(absl::StrCat("entry '", name, "' has a shape entry that is not a whole number"));
    }
    const uint64_t d = dim.get<uint64_t>();
    if (d > 0 && bytes > std::numeric_limits<uint64_t>::max() / d) {
      return Bad(absl::StrCat("entry '", name, "' has an impossibly large shape"));
    }
    bytes *= d;
    entry.shape.push_back(static_cast<int64_t>(d));
  }
  auto offsets = info.find("data_offsets");
  if (offsets == info.end() || !offsets->is_array() || offsets->size() != 2 ||
      !(*offsets)[0].is_number_unsigned() || !(*offsets)[1].is_number_unsigned()) {
    return Bad(absl::StrCat("entry '", name, "' has no 'data_offsets' [begin, end]"));
  }
  entry.begin = (*offsets)[0].get<uint64_t>();
  entry.end = (*offsets)[1].get<uint64_t>();
  if (entry.begin > entry.end || entry.end - entry.begin != bytes) {
    return Bad(absl::StrCat("entry '", name, "' has data_offsets [", entry.begin, ", ", entry.end,
                            "] that do not match its shape and dtype (", bytes, " bytes)"));
  }
  if (entry.end > data_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("file is truncated: tensor ", name, " ends at byte ", entry.end,
                     " of the data section, which has only ", data_size, " bytes"));
  }
  return entry;
}

}  // namespace

uint64_t SafetensorsDtypeSize(absl::string_view dtype) {
  static const std::pair<const char*, uint64_t> kSizes[] = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8},
      {"I32", 4}, {"I16", 2}, {"I8", 1},  {"U8", 1},   {"BOOL", 1},
  };
  for (const auto& [name, size] : kSizes) {
    if (dtype == name) return size;
  }
  return 0;
}

bool LooksLikeSafetensors(absl::string_view prefix) {
  if (prefix.size() < 9) return false;
  const uint64_t n = ReadLe64(prefix.data());
  return n >= 2 && n <= kMaxHeaderBytes && prefix[8] == '{';
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::string_view prefix,
                                                         uint64_t file_size) {
  if (file_size < 8 || prefix.size() < 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("file is truncated: ", file_size, " bytes, shorter than the 8-byte header"));
  }
  const uint64_t header_len = ReadLe64(prefix.data());
  if (header_len > kMaxHeaderBytes) {
    return Bad(absl::StrCat("header length ", header_len, " exceeds ", kMaxHeaderBytes));
  }
  if (header_len > file_size - 8 || header_len > prefix.size() - 8) {
    return absl::InvalidArgumentError(absl::StrCat("file is truncated: the header claims ",
                                                   header_len, " bytes but the file has ",
                                                   file_size, " bytes in all"));
  }
  nlohmann::json header = nlohmann::json::parse(prefix.substr(8, header_len), nullptr,
                                                /*allow_exceptions=*/false);
  if (header.is_discarded()) return Bad("the header is not valid JSON");
  if (!header.is_object()) return Bad("the header is not a JSON object");

  SafetensorsHeader result;
  result.data_offset = 8 + header_len;
  const uint64_t data_size = file_size - result.data_offset;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it.value().is_object()) return Bad("__metadata__ is not an object");
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        if (!m.value().is_string()) return Bad("__metadata__ values must be strings");
        result.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    ASSIGN_OR_RETURN(SafetensorsEntry entry, ParseEntry(it.key(), it.value(), data_size));
    result.entries.push_back(std::move(entry));
  }
  // Every tensor owns its bytes: overlapping ranges would let a small file stand for much more
  // tensor data than it holds.
  std::vector<const SafetensorsEntry*> by_offset;
  for (const SafetensorsEntry& e : result.entries) {
    if (e.end > e.begin) by_offset.push_back(&e);
  }
  std::sort(
      by_offset.begin(), by_offset.end(),
      [](const SafetensorsEntry* a, const SafetensorsEntry* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    if (by_offset[i]->begin < by_offset[i - 1]->end) {
      return Bad(absl::StrCat("tensors ", by_offset[i - 1]->name, " and ", by_offset[i]->name,
                              " overlap (data_offsets [", by_offset[i - 1]->begin, ", ",
                              by_offset[i - 1]->end, ") and [", by_offset[i]->begin, ", ",
                              by_offset[i]->end, "))"));
    }
  }
  return result;
}

}  // namespace convnext
