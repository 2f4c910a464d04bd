// StateDict: named tensors as read from a checkpoint, before or after renaming into the canonical
// names of convnext_config.h. An ordered map, so that error messages and iteration are stable.
#ifndef CONVNEXT_CHECKPOINT_STATE_DICT_H_
#define CONVNEXT_CHECKPOINT_STATE_DICT_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "absl/status/status.h"

namespace convnext {

using StateDict = std::map<std::string, at::Tensor>;

// What the tensors read from one checkpoint may hold in all, by default: four times
// ConvNeXt-XL's float32 weights. Each reader checks it from the file's headers before any tensor
// is copied.
inline constexpr uint64_t kDefaultMaxCheckpointBytes = uint64_t{6} << 30;

// RESOURCE_EXHAUSTED naming both figures if `bytes` > `max_bytes` (defined in checkpoint_file.cc).
absl::Status CheckTensorBytes(uint64_t bytes, uint64_t max_bytes);

// Maps a canonical parameter name to the name the same tensor has in the user's checkpoint, so
// that error messages speak the user's language. Empty means "the canonical name".
using SourceNameFn = std::function<std::string(const std::string& canonical)>;

}  // namespace convnext

#endif  // CONVNEXT_CHECKPOINT_STATE_DICT_H_
