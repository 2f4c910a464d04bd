// Reader for the safetensors format (https://github.com/huggingface/safetensors): an 8-byte
// little-endian header length, a JSON header mapping tensor names to {dtype, shape, data_offsets},
// then the raw little-endian tensor bytes. Hand-written: Debian ships no C++ safetensors library.
//
// The file is memory-mapped and each tensor is copied out once, so peak memory is about the
// size of the weights plus one tensor (pages already copied are released as we go).
// Every header field is validated before any data is touched; a malformed or truncated file is
// INVALID_ARGUMENT with a message naming the problem, never a crash.
#ifndef CONVNEXT_MODEL_SAFETENSORS_H_
#define CONVNEXT_MODEL_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/state_dict.h"

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

// Reads every tensor of the file at `path` into memory owned by the returned tensors (CPU, in the
// file's dtype).
absl::StatusOr<StateDict> ReadSafetensors(const std::string& path);

// Writes `tensors` (any CPU tensors of a supported dtype) to `path`; used by tests and tools.
absl::Status WriteSafetensors(const std::string& path, const StateDict& tensors);

}  // namespace convnext

#endif  // CONVNEXT_MODEL_SAFETENSORS_H_
