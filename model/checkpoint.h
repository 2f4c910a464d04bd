// Loading a ConvNeXt from a checkpoint file: read the container, detect the key layout, infer or
// check the architecture, build the model. The one entry point the server and tools use.
//
// Containers read so far: safetensors. Every failure is a Status whose message starts with
// "checkpoint '<path>': " and says what is wrong (missing file, directory, empty file, unknown
// format, truncated file, missing/unexpected tensor, wrong shape), so that a user can act on it.
#ifndef CONVNEXT_MODEL_CHECKPOINT_H_
#define CONVNEXT_MODEL_CHECKPOINT_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "model/convnext.h"
#include "model/state_dict.h"

namespace convnext {

struct LoadOptions {
  // Path of the checkpoint file.
  std::string path;
  // A named variant ("convnext_tiny", ...) that the checkpoint must match; empty infers depths,
  // dims and num_classes from the tensor shapes. num_classes always comes from the checkpoint.
  std::string variant;
  ModelOptions model;
};

struct LoadedModel {
  std::unique_ptr<ConvNeXt> model;
  std::string format;  // "safetensors".
  std::string layout;  // "torchvision", "fair", ...
};

// Reads every tensor of a checkpoint file under its own names. `format` (optional) receives the
// container format.
absl::StatusOr<StateDict> ReadCheckpointFile(const std::string& path, std::string* format);

absl::StatusOr<LoadedModel> LoadModel(const LoadOptions& options);

}  // namespace convnext

#endif  // CONVNEXT_MODEL_CHECKPOINT_H_
