// Checkpoint layouts: the key naming schemes that ConvNeXt weights are published in, and their
// renaming into the canonical (official FAIR) names of convnext_config.h.
//
//   fair         downsample_layers.i.j, stages.i.j.{dwconv,norm,pwconv1,pwconv2,gamma}, norm, head
//                (also FAIR's detection backbones, with norm0..norm3 and no norm/head)
//   timm         stem.{0,1}, stages.i.downsample.{0,1}, stages.i.blocks.j.{conv_dw,norm,mlp.fc1,
//                mlp.fc2,gamma}, head.norm, head.fc; 1x1-conv fc weights [4C,C,1,1] accepted
//   torchvision  features.*, layer_scale [C,1,1], classifier.{0,2}
//   huggingface  [convnext.]embeddings.*, [convnext.]encoder.stages.i.{downsampling_layer,
//                layers.j.*}, [convnext.]layernorm, classifier
//
// Wrapper prefixes are removed first: `module.` (DataParallel) and `backbone.` (mmdet/mmseg
// detector checkpoints, whose neck and heads are then dropped).
#ifndef CONVNEXT_CHECKPOINT_CHECKPOINT_LAYOUT_H_
#define CONVNEXT_CHECKPOINT_CHECKPOINT_LAYOUT_H_

#include <string>

#include "absl/status/statusor.h"
#include "checkpoint/state_dict.h"

namespace convnext {

struct CanonicalWeights {
  StateDict weights;   // Canonical names.
  std::string layout;  // "fair", "timm", "torchvision" or "huggingface".
  // The name a canonical tensor has in the checkpoint (for error messages).
  SourceNameFn source_name;
  // Tensors dropped with a `backbone.` prefix removal (a detector's neck and heads).
  int dropped_non_backbone = 0;
};

// Detects the layout of `raw` from its key names and renames it. Keys that the layout does not
// know are kept as they are, so that the model's strict check reports them by name.
// INVALID_ARGUMENT if no known layout matches.
absl::StatusOr<CanonicalWeights> ToCanonical(StateDict raw);

}  // namespace convnext

#endif  // CONVNEXT_CHECKPOINT_CHECKPOINT_LAYOUT_H_
