// Loading a ConvNeXt from a checkpoint file: read the container (checkpoint/checkpoint_file.h),
// detect the key layout (checkpoint/checkpoint_layout.h), infer or check the architecture, build
// the model. The one entry point the server and tools use.
// A Hugging Face
// checkpoint's config.json beside the weights, when present, supplies the final LayerNorm's
// epsilon (layer_norm_eps, default 1e-12) and the class labels (id2label). Every failure is a
// Status whose message starts with "checkpoint '<path>': " and says what is wrong (missing file,
// directory, empty file, unknown format, truncated file, missing/unexpected tensor, wrong shape),
// so that a user can act on it.
#ifndef CONVNEXT_MODEL_LOAD_MODEL_H_
#define CONVNEXT_MODEL_LOAD_MODEL_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/state_dict.h"
#include "model/convnext.h"

namespace convnext {

struct LoadOptions {
  // Path of the checkpoint file.
  std::string path;
  // A named variant ("convnext_tiny", ...) that the checkpoint must match; empty infers depths,
  // dims and num_classes from the tensor shapes. num_classes always comes from the checkpoint.
  std::string variant;
  ModelOptions model;
  // The most bytes the checkpoint's tensors may hold (checkpoint/state_dict.h), checked before
  // any tensor is read.
  uint64_t max_checkpoint_bytes = kDefaultMaxCheckpointBytes;
  // Fill LoadedModel::trunk (for LoadHead), at the cost of one pass over the weights.
  bool fingerprint_trunk = false;
};

// What identifies a trunk's weights: each trunk tensor's canonical name (everything but the final
// norm and the classifier) with a 64-bit hash of its shape and float32 values.
using TrunkFingerprint = std::map<std::string, uint64_t>;

struct LoadedModel {
  std::unique_ptr<ConvNeXt> model;
  std::string format;  // "safetensors" or "torch.save zip".
  std::string layout;  // "fair", "timm", "torchvision" or "huggingface".
  // Class names by index, from a Hugging Face config.json's id2label; empty when the checkpoint
  // carries none.
  std::vector<std::string> labels;
  // Tensors outside `backbone.` that were dropped from a detector checkpoint.
  int dropped_non_backbone = 0;
  // With LoadOptions::fingerprint_trunk.
  TrunkFingerprint trunk;
};

absl::StatusOr<LoadedModel> LoadModel(const LoadOptions& options);

struct LoadedHead {
  ConvNeXtHead head;
  std::string format;
  std::string layout;
  std::vector<std::string> labels;  // As LoadedModel::labels.
};

// Loads only the head (final LayerNorm and classifier, model/convnext.h) of a checkpoint whose
// trunk is `trunk`'s: a classifier trained on the same frozen trunk, saved whole in any supported
// format and layout. Its trunk must equal `fingerprint` (`trunk`'s LoadedModel::trunk) tensor for
// tensor: FAILED_PRECONDITION naming the first tensor that differs, is missing or is extra.
// INVALID_ARGUMENT for a detection backbone (no final norm). The head is converted to `trunk`'s
// device and dtype; options.model and options.variant are not used.
absl::StatusOr<LoadedHead> LoadHead(const LoadOptions& options, const ConvNeXt& trunk,
                                    const TrunkFingerprint& fingerprint);

}  // namespace convnext

#endif  // CONVNEXT_MODEL_LOAD_MODEL_H_
