// ConvNeXtConfig describes the architecture of one ConvNeXt ("A ConvNet for the 2020s", Liu et al.
// 2022): four stages of blocks with the given depths and channel widths, an optional linear head.
// It is a plain value with no LibTorch dependency, so that configuration, parameter counting and
// shape inference are cheap to compile, test and use from tools.
//
// Parameter names used throughout model/ are the official FAIR ones ("canonical" names):
//   downsample_layers.0.{0,1}   stem 4x4/4 conv, channels-first LayerNorm
//   downsample_layers.i.{0,1}   (i = 1..3) channels-first LayerNorm, 2x2/2 conv
//   stages.i.j.{dwconv,norm,pwconv1,pwconv2}.{weight,bias}, stages.i.j.gamma
//   stages.i.j.grn.{gamma,beta}  ConvNeXt V2 blocks only (grn), [4C] each, in place of gamma
//   norm.{weight,bias}          LayerNorm on the pooled features
//   head.{weight,bias}          classifier (absent when num_classes == 0)
//   norm0..norm3.{weight,bias}  detection backbones only (stage_norms): channels-first LayerNorms
//                               on the four stage outputs, in place of `norm` and `head`
// Checkpoints in other layouts are renamed into these by checkpoint_layout.h.
#ifndef CONVNEXT_MODEL_CONVNEXT_CONFIG_H_
#define CONVNEXT_MODEL_CONVNEXT_CONFIG_H_

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace convnext {

inline constexpr int kNumStages = 4;

struct ConvNeXtConfig {
  // "convnext_tiny", ..., "convnext_xlarge" when depths and dims match a named variant, else
  // "custom". Informational: the architecture is fully given by the fields below.
  std::string variant = "custom";
  // Blocks per stage, one entry per stage (kNumStages entries), each >= 1.
  std::vector<int64_t> depths;
  // Channels per stage (kNumStages entries), each >= 1.
  std::vector<int64_t> dims;
  // Channels of the input image: 3 for RGB.
  int64_t in_channels = 3;
  // Classes of the linear head; 0 means a headless backbone (embedding and stage outputs only).
  int64_t num_classes = 1000;
  // Epsilon of every LayerNorm in the stem, blocks and downsampling layers (1e-6 in all public
  // implementations).
  double layer_norm_eps = 1e-6;
  // Epsilon of the LayerNorm applied to the pooled features. 1e-6 everywhere except Hugging Face
  // checkpoints, whose config.json may say otherwise (its default is 1e-12).
  double head_norm_eps = 1e-6;
  // Detection/segmentation backbone form (FAIR's mmdet/mmseg ConvNeXt): each stage output passes
  // through its own LayerNorm (norm0..norm3) and there is no pooled-feature norm and no head, so
  // such a model gives stage outputs only. Requires num_classes == 0.
  bool stage_norms = false;
  // ConvNeXt V2 blocks ("ConvNeXt V2", Woo et al. 2023): Global Response Normalization of the
  // hidden layer after the GELU, x + gamma * (x * N(x)) + beta with N(x) = ||x||_HW /
  // (mean over channels of ||x||_HW + 1e-6), and no layer scale.
  bool grn = false;
};

// The named variants, with a 1000-class head: the paper's convnext_tiny, _small, _base, _large,
// _xlarge; timm's smaller V1 convnext_atto, _femto, _pico, _nano; and ConvNeXt V2's
// convnextv2_atto, _femto, _pico, _nano, _tiny, _base, _large, _huge.
absl::StatusOr<ConvNeXtConfig> ConfigForVariant(const std::string& name);

// Names accepted by ConfigForVariant, in size order.
std::vector<std::string> VariantNames();

// The named variant whose depths and dims equal `config`'s, or "custom".
std::string VariantNameFor(const ConvNeXtConfig& config);

// OK if the config describes a buildable model; otherwise INVALID_ARGUMENT naming the field.
absl::Status ValidateArchitecture(const ConvNeXtConfig& config);

// Canonical parameter names with their shapes, in the order the forward pass uses them.
using ParameterShapes = std::vector<std::pair<std::string, std::vector<int64_t>>>;
ParameterShapes ExpectedParameters(const ConvNeXtConfig& config);

// Total number of scalar parameters (28,589,128 for convnext_tiny with 1000 classes).
int64_t ParameterCount(const ConvNeXtConfig& config);

// Floating-point operations of one image's forward pass at height x width: 2 per multiply-add of
// every convolution and linear layer (LayerNorm, GELU and additions are not counted, as in the
// paper's GFLOPs). convnext_tiny at 224x224: 8.9e9.
int64_t ForwardFlops(const ConvNeXtConfig& config, int64_t height, int64_t width);

// Infers depths, dims, in_channels, num_classes and stage_norms from the shapes of a state dict in
// canonical names. Fails with INVALID_ARGUMENT naming the key when the shapes do not describe a
// ConvNeXt. Does not check every tensor: the loader compares all shapes against
// ExpectedParameters().
absl::StatusOr<ConvNeXtConfig> InferConfig(
    const std::map<std::string, std::vector<int64_t>>& shapes);

// "[96, 3, 4, 4]".
std::string ShapeToString(const std::vector<int64_t>& shape);

}  // namespace convnext

#endif  // CONVNEXT_MODEL_CONVNEXT_CONFIG_H_
