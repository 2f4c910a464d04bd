// The safetensors header: an 8-byte little-endian length, then a JSON object mapping tensor
// names to {dtype, shape, data_offsets} (and an optional "__metadata__" string map). Parsing and
// validation only, with no LibTorch dependency, so that it can be fuzzed on its own.
// Hand-written: Debian ships no C++ safetensors library.
#ifndef CONVNEXT_CHECKPOINT_SAFETENSORS_HEADER_H_
#define CONVNEXT_CHECKPOINT_SAFETENSORS_HEADER_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace convnext {

struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // As written in the file: "F32", "F16", "BF16", "I64", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // Byte offsets into the data section (after the header).
  uint64_t end = 0;
};

struct SafetensorsHeader {
  std::vector<SafetensorsEntry> entries;        // Sorted by name.
  std::map<std::string, std::string> metadata;  // The optional "__metadata__" string map.
  uint64_t data_offset = 0;                     // Where the data section starts in the file.
};

// Parses and validates the header of a file whose first bytes are `prefix` and whose total size
// is `file_size`. `prefix` must hold at least the 8-byte length and the header itself.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::string_view prefix,
                                                         uint64_t file_size);

// True if `prefix` (the file's first bytes) looks like a safetensors file: a plausible header
// length followed by '{'.
bool LooksLikeSafetensors(absl::string_view prefix);

// Bytes per element of a safetensors dtype name ("F32" -> 4), or 0 if unknown.
uint64_t SafetensorsDtypeSize(absl::string_view dtype);

}  // namespace convnext

#endif  // CONVNEXT_CHECKPOINT_SAFETENSORS_HEADER_H_
