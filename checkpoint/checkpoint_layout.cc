#include "checkpoint/checkpoint_layout.h"

#include <ATen/ATen.h>

#include <optional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace convnext {
namespace {

using Parts = std::vector<std::string>;

// A block sub-module name in one ecosystem and its canonical name.
using PartNames = std::vector<std::pair<std::string, std::string>>;

struct Layout {
  const char* name;
  // True if `key` is characteristic of this layout.
  bool (*matches)(const std::string& key);
  std::optional<std::string> (*to_canonical)(const std::string& key);
  std::string (*from_canonical)(const std::string& key);
};

bool Int(const std::string& s, int* v) { return absl::SimpleAtoi(s, v) && *v >= 0; }

// Joins p[from..] with dots.
std::string Tail(const Parts& p, size_t from) {
  return absl::StrJoin(p.begin() + std::min(from, p.size()), p.end(), ".");
}

std::optional<std::string> Rename(const PartNames& names, const std::string& part,
                                  bool to_canonical) {
  for (const auto& [theirs, ours] : names) {
    if (part == (to_canonical ? theirs : ours)) return to_canonical ? ours : theirs;
  }
  return std::nullopt;
}

// ---- torchvision ----------------------------------------------------------------------------
// features.0 = stem (conv, LN); features.{2i} = downsampling (LN, conv) for i >= 1;
// features.{2i+1}.j = block j of stage i, whose `block` Sequential is
// (0 dwconv, 1 permute, 2 LN, 3 fc1, 4 GELU, 5 fc2, 6 permute); classifier = (LN, flatten, fc).
const PartNames& TorchvisionBlock() {
  static const auto* names = new PartNames{
      {"block.0", "dwconv"}, {"block.2", "norm"}, {"block.3", "pwconv1"}, {"block.5", "pwconv2"}};
  return *names;
}

std::optional<std::string> TorchvisionToCanonical(const std::string& key) {
  Parts p = absl::StrSplit(key, '.');
  int f = 0;
  if (p.size() >= 3 && p[0] == "features" && Int(p[1], &f) && f <= 7) {
    if (f % 2 == 0) {
      if (p.size() != 4 || (p[2] != "0" && p[2] != "1")) return std::nullopt;
      return absl::StrCat("downsample_layers.", f / 2, ".", p[2], ".", p[3]);
    }
    const std::string block = absl::StrCat("stages.", f / 2, ".", p[2], ".");
    if (p.size() == 4 && p[3] == "layer_scale") return block + "gamma";
    if (p.size() == 6) {
      if (auto part = Rename(TorchvisionBlock(), p[3] + "." + p[4], true)) {
        return absl::StrCat(block, *part, ".", p[5]);
      }
    }
    return std::nullopt;
  }
  if (p.size() == 3 && p[0] == "classifier") {
    if (p[1] == "0") return "norm." + p[2];
    if (p[1] == "2") return "head." + p[2];
  }
  return std::nullopt;
}

std::string CanonicalToTorchvision(const std::string& key) {
  Parts p = absl::StrSplit(key, '.');
  int i = 0;
  if (p.size() == 4 && p[0] == "downsample_layers" && Int(p[1], &i)) {
    return absl::StrCat("features.", 2 * i, ".", p[2], ".", p[3]);
  }
  if (p.size() >= 4 && p[0] == "stages" && Int(p[1], &i)) {
    const std::string block = absl::StrCat("features.", 2 * i + 1, ".", p[2], ".");
    if (p.size() == 4 && p[3] == "gamma") return block + "layer_scale";
    if (auto part = Rename(TorchvisionBlock(), p[3], false); part && p.size() == 5) {
      return absl::StrCat(block, *part, ".", p[4]);
    }
  }
  if (p.size() == 2 && p[0] == "norm") return "classifier.0." + p[1];
  if (p.size() == 2 && p[0] == "head") return "classifier.2." + p[1];
  return key;
}

// ---- timm -----------------------------------------------------------------------------------
const PartNames& TimmBlock() {
  static const auto* names = new PartNames{{"conv_dw", "dwconv"},
                                           {"norm", "norm"},
                                           {"mlp.fc1", "pwconv1"},
                                           {"mlp.fc2", "pwconv2"},
                                           {"gamma", "gamma"}};
  return *names;
}

std::optional<std::string> TimmToCanonical(const std::string& key) {
  Parts p = absl::StrSplit(key, '.');
  int i = 0, j = 0;
  if (p.size() == 3 && p[0] == "stem") return absl::StrCat("downsample_layers.0.", Tail(p, 1));
  if (p.size() == 5 && p[0] == "stages" && Int(p[1], &i) && p[2] == "downsample") {
    return absl::StrCat("downsample_layers.", i, ".", Tail(p, 3));
  }
  if (p.size() >= 5 && p[0] == "stages" && Int(p[1], &i) && p[2] == "blocks" && Int(p[3], &j)) {
    const std::string block = absl::StrCat("stages.", i, ".", j, ".");
    if (p.size() == 5 && p[4] == "gamma") return block + "gamma";
    // ConvNeXt V2's GlobalResponseNorm: mlp.grn.{weight,bias} -> grn.{gamma,beta}.
    if (p.size() == 7 && p[4] == "mlp" && p[5] == "grn") {
      if (p[6] == "weight") return block + "grn.gamma";
      if (p[6] == "bias") return block + "grn.beta";
      return std::nullopt;
    }
    const std::string part = p.size() == 7 ? p[4] + "." + p[5] : p[4];
    if (auto ours = Rename(TimmBlock(), part, true)) {
      return absl::StrCat(block, *ours, ".", p.back());
    }
    return std::nullopt;
  }
  if (p.size() == 3 && p[0] == "head" && p[1] == "norm") return "norm." + p[2];
  if (p.size() == 3 && p[0] == "head" && p[1] == "fc") return "head." + p[2];
  return std::nullopt;
}

std::string CanonicalToTimm(const std::string& key) {
  Parts p = absl::StrSplit(key, '.');
  int i = 0;
  if (p.size() == 4 && p[0] == "downsample_layers" && Int(p[1], &i)) {
    return i == 0 ? absl::StrCat("stem.", Tail(p, 2))
                  : absl::StrCat("stages.", i, ".downsample.", Tail(p, 2));
  }
  if (p.size() >= 4 && p[0] == "stages") {
    const std::string block = absl::StrCat("stages.", p[1], ".blocks.", p[2], ".");
    if (p.size() == 5 && p[3] == "grn") {
      return absl::StrCat(block, "mlp.grn.", p[4] == "gamma" ? "weight" : "bias");
    }
    if (auto theirs = Rename(TimmBlock(), p[3], false)) {
      return p.size() == 5 ? absl::StrCat(block, *theirs, ".", p[4]) : block + *theirs;
    }
  }
  if (p.size() == 2 && p[0] == "norm") return "head.norm." + p[1];
  if (p.size() == 2 && p[0] == "head") return "head.fc." + p[1];
  return key;
}

// ---- Hugging Face transformers --------------------------------------------------------------
const PartNames& HfBlock() {
  static const auto* names = new PartNames{{"dwconv", "dwconv"},
                                           {"layernorm", "norm"},
                                           {"pwconv1", "pwconv1"},
                                           {"pwconv2", "pwconv2"},
                                           {"layer_scale_parameter", "gamma"}};
  return *names;
}

// ConvNextV2Model's keys are ConvNextModel's under "convnextv2." with a block's
// grn.{weight,bias} ([1, 1, 1, 4C]) in place of layer_scale_parameter.
std::optional<std::string> HfToCanonical(const std::string& full_key) {
  absl::string_view key = full_key;
  if (!absl::ConsumePrefix(&key, "convnext.")) absl::ConsumePrefix(&key, "convnextv2.");
  Parts p = absl::StrSplit(key, '.');
  if (p.size() == 7 && p[0] == "encoder" && p[3] == "layers" && p[5] == "grn") {
    int i = 0, j = 0;
    if (!Int(p[2], &i) || !Int(p[4], &j)) return std::nullopt;
    if (p[6] == "weight") return absl::StrCat("stages.", i, ".", j, ".grn.gamma");
    if (p[6] == "bias") return absl::StrCat("stages.", i, ".", j, ".grn.beta");
    return std::nullopt;
  }
  int i = 0, j = 0;
  if (p.size() == 3 && p[0] == "embeddings") {
    if (p[1] == "patch_embeddings") return "downsample_layers.0.0." + p[2];
    if (p[1] == "layernorm") return "downsample_layers.0.1." + p[2];
  }
  if (p.size() >= 5 && p[0] == "encoder" && p[1] == "stages" && Int(p[2], &i)) {
    if (p.size() == 6 && p[3] == "downsampling_layer") {
      return absl::StrCat("downsample_layers.", i, ".", p[4], ".", p[5]);
    }
    if (p[3] == "layers" && Int(p[4], &j) && p.size() >= 6) {
      if (auto ours = Rename(HfBlock(), p[5], true)) {
        const std::string block = absl::StrCat("stages.", i, ".", j, ".", *ours);
        return p.size() == 7 ? block + "." + p[6] : block;
      }
    }
    return std::nullopt;
  }
  if (p.size() == 2 && p[0] == "layernorm") return "norm." + p[1];
  if (p.size() == 2 && p[0] == "classifier") return "head." + p[1];
  return std::nullopt;
}

std::string CanonicalToHfIn(const std::string& key, const std::string& model) {
  Parts p = absl::StrSplit(key, '.');
  int i = 0;
  if (p.size() == 5 && p[0] == "stages" && p[3] == "grn") {
    return absl::StrCat(model, "encoder.stages.", p[1], ".layers.", p[2], ".grn.",
                        p[4] == "gamma" ? "weight" : "bias");
  }
  if (p.size() == 4 && p[0] == "downsample_layers" && Int(p[1], &i)) {
    if (i == 0) {
      return absl::StrCat(model, "embeddings.", p[2] == "0" ? "patch_embeddings." : "layernorm.",
                          p[3]);
    }
    return absl::StrCat(model, "encoder.stages.", i, ".downsampling_layer.", Tail(p, 2));
  }
  if (p.size() >= 4 && p[0] == "stages") {
    if (auto theirs = Rename(HfBlock(), p[3], false)) {
      return absl::StrCat(model, "encoder.stages.", p[1], ".layers.", p[2], ".", *theirs,
                          p.size() == 5 ? "." + p[4] : "");
    }
  }
  if (p.size() == 2 && p[0] == "norm") return model + "layernorm." + p[1];
  if (p.size() == 2 && p[0] == "head") return "classifier." + p[1];
  return key;
}

std::string CanonicalToHf(const std::string& key) { return CanonicalToHfIn(key, "convnext."); }
std::string CanonicalToHfV2(const std::string& key) { return CanonicalToHfIn(key, "convnextv2."); }

// ---- detection ------------------------------------------------------------------------------
bool IsTorchvision(const std::string& k) { return absl::StartsWith(k, "features."); }
bool IsTimm(const std::string& k) {
  return absl::StartsWith(k, "stem.") || absl::StrContains(k, ".blocks.");
}
bool IsHf(const std::string& k) {
  return absl::StartsWith(k, "convnext.") || absl::StartsWith(k, "embeddings.patch_embeddings") ||
         absl::StartsWith(k, "encoder.stages.");
}
bool IsHfV2(const std::string& k) { return absl::StartsWith(k, "convnextv2."); }
bool IsFair(const std::string& k) {
  return absl::StartsWith(k, "downsample_layers.") || absl::StartsWith(k, "stages.");
}
std::optional<std::string> Identity(const std::string& k) { return k; }
std::string SameName(const std::string& k) { return k; }

// Checked in order: timm's keys also start with "stages.", so timm comes before fair.
constexpr Layout kLayouts[] = {
    {"torchvision", IsTorchvision, TorchvisionToCanonical, CanonicalToTorchvision},
    {"huggingface", IsHfV2, HfToCanonical, CanonicalToHfV2},
    {"huggingface", IsHf, HfToCanonical, CanonicalToHf},
    {"timm", IsTimm, TimmToCanonical, CanonicalToTimm},
    {"fair", IsFair, Identity, SameName},
};

// Removes a prefix that every key has (DataParallel's `module.`), or keeps only a detector's
// `backbone.` tensors.
std::string StripWrappers(StateDict& raw, int* dropped) {
  std::string prefix;
  for (const char* candidate : {"module.", "backbone."}) {
    bool any = false;
    for (const auto& [key, tensor] : raw) any = any || absl::StartsWith(key, candidate);
    if (!any) continue;
    StateDict kept;
    for (auto& [key, tensor] : raw) {
      if (absl::StartsWith(key, candidate)) {
        kept.emplace(key.substr(std::string(candidate).size()), std::move(tensor));
      } else {
        ++*dropped;
      }
    }
    raw = std::move(kept);
    prefix += candidate;
  }
  return prefix;
}

}  // namespace

absl::StatusOr<CanonicalWeights> ToCanonical(StateDict raw) {
  CanonicalWeights out;
  const std::string prefix = StripWrappers(raw, &out.dropped_non_backbone);
  for (const Layout& layout : kLayouts) {
    bool matches = false;
    for (const auto& [key, tensor] : raw) matches = matches || layout.matches(key);
    if (!matches) continue;
    out.layout = layout.name;
    auto from_canonical = layout.from_canonical;
    out.source_name = [prefix, from_canonical](const std::string& canonical) {
      return prefix + from_canonical(canonical);
    };
    for (auto& [key, tensor] : raw) {
      std::optional<std::string> name = layout.to_canonical(key);
      if (name.has_value()) {
        // layer_scale [C,1,1] -> gamma [C]; 1x1-conv pointwise weights [O,I,1,1] -> [O,I];
        // FAIR's and Hugging Face's GRN parameters [1,1,1,4C] -> [4C].
        const bool gamma = absl::EndsWith(*name, ".gamma") && tensor.dim() == 3;
        const bool pointwise = absl::StrContains(*name, ".pwconv") && tensor.dim() == 4;
        const bool grn = absl::StrContains(*name, ".grn.") && tensor.dim() == 4;
        if ((gamma && tensor.size(1) == 1 && tensor.size(2) == 1) ||
            (pointwise && tensor.size(2) == 1 && tensor.size(3) == 1)) {
          const std::vector<int64_t> shape =
              gamma ? std::vector<int64_t>{tensor.size(0)}
                    : std::vector<int64_t>{tensor.size(0), tensor.size(1)};
          tensor = tensor.reshape(shape);
        } else if (grn && tensor.size(0) == 1 && tensor.size(1) == 1 && tensor.size(2) == 1) {
          tensor = tensor.reshape({tensor.size(3)});
        }
      }
      out.weights.emplace(name.value_or(key), std::move(tensor));
    }
    return out;
  }
  std::vector<std::string> some;
  for (const auto& [key, tensor] : raw) {
    if (some.size() == 3) break;
    some.push_back(key);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "no ConvNeXt layout recognised (expected official FAIR (V1 or V2), timm, torchvision or "
      "Hugging Face (ConvNext or ConvNextV2) key names); ",
      raw.empty() ? "the checkpoint holds no tensors"
                  : absl::StrCat("first keys: ", absl::StrJoin(some, ", "))));
}

}  // namespace convnext
