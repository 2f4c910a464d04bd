// Checkpoint layouts: the key naming schemes that ConvNeXt weights are published in, and their
// renaming into the canonical (official FAIR) names of convnext_config.h.
//
// Supported so far: the canonical FAIR layout itself and torchvision's (`features.*`,
// `classifier.*`, layer_scale [C,1,1]). Other ecosystems (timm, Hugging Face, detection backbones)
// plug in here.
#ifndef CONVNEXT_MODEL_CHECKPOINT_LAYOUT_H_
#define CONVNEXT_MODEL_CHECKPOINT_LAYOUT_H_

#include <string>

#include "absl/status/statusor.h"
#include "model/state_dict.h"

namespace convnext {

struct CanonicalWeights {
  StateDict weights;   // Canonical names.
  std::string layout;  // "fair" or "torchvision".
  // The name a canonical tensor has in the checkpoint (for error messages).
  SourceNameFn source_name;
};

// Detects the layout of `raw` from its key names and renames it. Keys that the layout does not
// know are kept as they are, so that the model's strict check reports them by name.
// INVALID_ARGUMENT if no known layout matches.
absl::StatusOr<CanonicalWeights> ToCanonical(StateDict raw);

}  // namespace convnext

#endif  // CONVNEXT_MODEL_CHECKPOINT_LAYOUT_H_
