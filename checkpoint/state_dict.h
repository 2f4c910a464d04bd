// StateDict: named tensors as read from a checkpoint, before or after renaming into the canonical
// names of convnext_config.h. An ordered map, so that error messages and iteration are stable.
#ifndef CONVNEXT_CHECKPOINT_STATE_DICT_H_
#define CONVNEXT_CHECKPOINT_STATE_DICT_H_

#include <ATen/core/Tensor.h>

#include <functional>
#include <map>
#include <string>

namespace convnext {

using StateDict = std::map<std::string, at::Tensor>;

// Maps a canonical parameter name to the name the same tensor has in the user's checkpoint, so
// that error messages speak the user's language. Empty means "the canonical name".
using SourceNameFn = std::function<std::string(const std::string& canonical)>;

}  // namespace convnext

#endif  // CONVNEXT_CHECKPOINT_STATE_DICT_H_
