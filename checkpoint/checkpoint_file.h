// Reading a checkpoint file into named tensors, whatever its container: safetensors
// (.safetensors) or PyTorch's torch.save zip format (.pth, .pt, .bin), recognised by content, not
// by file name. The tensors keep the checkpoint's own names; mapping them to the model's canonical
// names is checkpoint_layout.h's job, and building a model from them is model/load_model.h's.
//
// Every failure is a Status whose message starts with "checkpoint '<path>': " and says what is
// wrong (missing file, directory, empty file, unknown or legacy format, truncated file), so that a
// user can act on it.
#ifndef CONVNEXT_CHECKPOINT_CHECKPOINT_FILE_H_
#define CONVNEXT_CHECKPOINT_CHECKPOINT_FILE_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/state_dict.h"

namespace convnext {

// Reads every tensor of a checkpoint file under its own names. `format` (optional) receives the
// container format: "safetensors" or "torch.save zip". RESOURCE_EXHAUSTED, before any tensor is
// copied, if the tensors would hold more than `max_tensor_bytes`.
absl::StatusOr<StateDict> ReadCheckpointFile(
    const std::string& path, std::string* format,
    uint64_t max_tensor_bytes = kDefaultMaxCheckpointBytes);

// Prefixes `status`'s message with "checkpoint '<path>': ", keeping its code.
absl::Status AnnotateCheckpointError(const std::string& path, const absl::Status& status);

}  // namespace convnext

#endif  // CONVNEXT_CHECKPOINT_CHECKPOINT_FILE_H_
