// Reader for the safetensors format (https://github.com/huggingface/safetensors): an 8-byte
// little-endian header length, a JSON header mapping tensor names to {dtype, shape, data_offsets},
// then the raw little-endian tensor bytes. Hand-written: Debian ships no C++ safetensors library.
//
// The file is memory-mapped and each tensor is copied out once, so peak memory is about the
// size of the weights plus one tensor (pages already copied are released as we go).
// Every header field is validated before any data is touched; a malformed or truncated file is
// INVALID_ARGUMENT with a message naming the problem, never a crash.
#ifndef CONVNEXT_CHECKPOINT_SAFETENSORS_H_
#define CONVNEXT_CHECKPOINT_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "checkpoint/safetensors_header.h"
#include "checkpoint/state_dict.h"

namespace convnext {

// Reads every tensor of the file at `path` into memory owned by the returned tensors (CPU, in the
// file's dtype). RESOURCE_EXHAUSTED, before anything is copied, if the tensors hold more than
// `max_tensor_bytes` in all.
absl::StatusOr<StateDict> ReadSafetensors(const std::string& path,
                                          uint64_t max_tensor_bytes = kDefaultMaxCheckpointBytes);

// Writes `tensors` (any CPU tensors of a supported dtype) to `path`; used by tests and tools.
absl::Status WriteSafetensors(const std::string& path, const StateDict& tensors);

}  // namespace convnext

#endif  // CONVNEXT_CHECKPOINT_SAFETENSORS_H_
