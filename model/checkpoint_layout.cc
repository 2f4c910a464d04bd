#include "model/checkpoint_layout.h"

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

namespace convnext {
namespace {

// torchvision: features.0 = stem (conv, LN); features.{2i} = downsampling (LN, conv) for i >= 1;
// features.{2i+1}.j = block j of stage i, whose `block` Sequential is
// (0 dwconv, 1 permute, 2 LN, 3 fc1, 4 GELU, 5 fc2, 6 permute); classifier = (LN, flatten, fc).
std::optional<std::string> TorchvisionToCanonical(const std::string& key) {
  std::vector<std::string> p = absl::StrSplit(key, '.');
  int f = 0;
  if (p.size() >= 3 && p[0] == "features" && absl::SimpleAtoi(p[1], &f) && f >= 0 && f <= 7) {
    if (f % 2 == 0) {  // Stem or downsampling: features.{2i}.{0,1}.{weight,bias}.
      if (p.size() != 4 || (p[2] != "0" && p[2] != "1")) return std::nullopt;
      return absl::StrCat("downsample_layers.", f / 2, ".", p[2], ".", p[3]);
    }
    const std::string block = absl::StrCat("stages.", f / 2, ".", p[2], ".");
    if (p.size() == 4 && p[3] == "layer_scale") return block + "gamma";
    if (p.size() == 6 && p[3] == "block") {
      static const std::pair<const char*, const char*> kParts[] = {
          {"0", "dwconv"}, {"2", "norm"}, {"3", "pwconv1"}, {"5", "pwconv2"}};
      for (const auto& [index, name] : kParts) {
        if (p[4] == index) return absl::StrCat(block, name, ".", p[5]);
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

// The inverse of TorchvisionToCanonical, for naming tensors in messages.
std::string CanonicalToTorchvision(const std::string& key) {
  std::vector<std::string> p = absl::StrSplit(key, '.');
  int i = 0;
  if (p.size() == 4 && p[0] == "downsample_layers" && absl::SimpleAtoi(p[1], &i)) {
    return absl::StrCat("features.", 2 * i, ".", p[2], ".", p[3]);
  }
  if (p.size() >= 4 && p[0] == "stages" && absl::SimpleAtoi(p[1], &i)) {
    const std::string block = absl::StrCat("features.", 2 * i + 1, ".", p[2], ".");
    if (p.size() == 4 && p[3] == "gamma") return block + "layer_scale";
    static const std::pair<const char*, const char*> kParts[] = {
        {"dwconv", "0"}, {"norm", "2"}, {"pwconv1", "3"}, {"pwconv2", "5"}};
    for (const auto& [name, index] : kParts) {
      if (p.size() == 5 && p[3] == name) return absl::StrCat(block, "block.", index, ".", p[4]);
    }
  }
  if (p.size() == 2 && p[0] == "norm") return "classifier.0." + p[1];
  if (p.size() == 2 && p[0] == "head") return "classifier.2." + p[1];
  return key;
}

bool HasKeyWithPrefix(const StateDict& raw, const std::string& prefix) {
  for (const auto& [key, tensor] : raw) {
    if (absl::StartsWith(key, prefix)) return true;
  }
  return false;
}

}  // namespace

absl::StatusOr<CanonicalWeights> ToCanonical(StateDict raw) {
  CanonicalWeights out;
  if (HasKeyWithPrefix(raw, "features.")) {
    out.layout = "torchvision";
    out.source_name = CanonicalToTorchvision;
    for (auto& [key, tensor] : raw) {
      std::optional<std::string> name = TorchvisionToCanonical(key);
      if (name.has_value() && absl::EndsWith(*name, ".gamma") && tensor.dim() == 3 &&
          tensor.size(1) == 1 && tensor.size(2) == 1) {
        tensor = tensor.reshape({tensor.size(0)});  // layer_scale [C,1,1] -> gamma [C].
      }
      out.weights.emplace(name.value_or(key), std::move(tensor));
    }
    return out;
  }
  if (HasKeyWithPrefix(raw, "downsample_layers.") || HasKeyWithPrefix(raw, "stages.")) {
    out.layout = "fair";
    out.weights = std::move(raw);
    return out;
  }
  std::vector<std::string> some;
  for (const auto& [key, tensor] : raw) {
    if (some.size() == 3) break;
    some.push_back(key);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("no ConvNeXt layout recognised (expected torchvision 'features.*' or official "
                   "'downsample_layers.*'/'stages.*' keys); ",
                   raw.empty() ? "the checkpoint holds no tensors"
                               : absl::StrCat("first keys: ", absl::StrJoin(some, ", "))));
}

}  // namespace convnext
