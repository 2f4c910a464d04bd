#include "model/convnext_config.h"

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace convnext {
namespace {

struct NamedVariant {
  const char* name;
  std::vector<int64_t> depths;
  std::vector<int64_t> dims;
  bool grn = false;
};

const std::vector<NamedVariant>& NamedVariants() {
  static const auto* variants = new std::vector<NamedVariant>{
      {"convnext_tiny", {3, 3, 9, 3}, {96, 192, 384, 768}},
      {"convnext_small", {3, 3, 27, 3}, {96, 192, 384, 768}},
      {"convnext_base", {3, 3, 27, 3}, {128, 256, 512, 1024}},
      {"convnext_large", {3, 3, 27, 3}, {192, 384, 768, 1536}},
      {"convnext_xlarge", {3, 3, 27, 3}, {256, 512, 1024, 2048}},
      // timm's small V1 variants.
      {"convnext_atto", {2, 2, 6, 2}, {40, 80, 160, 320}},
      {"convnext_femto", {2, 2, 6, 2}, {48, 96, 192, 384}},
      {"convnext_pico", {2, 2, 6, 2}, {64, 128, 256, 512}},
      {"convnext_nano", {2, 2, 8, 2}, {80, 160, 320, 640}},
      // ConvNeXt V2.
      {"convnextv2_atto", {2, 2, 6, 2}, {40, 80, 160, 320}, true},
      {"convnextv2_femto", {2, 2, 6, 2}, {48, 96, 192, 384}, true},
      {"convnextv2_pico", {2, 2, 6, 2}, {64, 128, 256, 512}, true},
      {"convnextv2_nano", {2, 2, 8, 2}, {80, 160, 320, 640}, true},
      {"convnextv2_tiny", {3, 3, 9, 3}, {96, 192, 384, 768}, true},
      {"convnextv2_base", {3, 3, 27, 3}, {128, 256, 512, 1024}, true},
      {"convnextv2_large", {3, 3, 27, 3}, {192, 384, 768, 1536}, true},
      {"convnextv2_huge", {3, 3, 27, 3}, {352, 704, 1408, 2816}, true},
  };
  return *variants;
}

// Shape of `key`, or nullptr.
const std::vector<int64_t>* Find(const std::map<std::string, std::vector<int64_t>>& shapes,
                                 const std::string& key) {
  auto it = shapes.find(key);
  return it == shapes.end() ? nullptr : &it->second;
}

absl::Status BadShape(const std::string& key, const std::vector<int64_t>& shape,
                      absl::string_view expected) {
  return absl::InvalidArgumentError(
      absl::StrCat("tensor ", key, " has shape ", ShapeToString(shape), ", expected ", expected));
}

}  // namespace

std::string ShapeToString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<ConvNeXtConfig> ConfigForVariant(const std::string& name) {
  for (const NamedVariant& v : NamedVariants()) {
    if (name == v.name) {
      ConvNeXtConfig config;
      config.variant = v.name;
      config.depths = v.depths;
      config.dims = v.dims;
      config.grn = v.grn;
      return config;
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown ConvNeXt variant '", name, "'; known: ", absl::StrJoin(VariantNames(), ", ")));
}

std::vector<std::string> VariantNames() {
  std::vector<std::string> names;
  for (const NamedVariant& v : NamedVariants()) names.push_back(v.name);
  return names;
}

std::string VariantNameFor(const ConvNeXtConfig& config) {
  for (const NamedVariant& v : NamedVariants()) {
    if (config.depths == v.depths && config.dims == v.dims && config.grn == v.grn) return v.name;
  }
  return "custom";
}

absl::Status ValidateArchitecture(const ConvNeXtConfig& config) {
  if (config.depths.size() != kNumStages) {
    return absl::InvalidArgumentError(
        absl::StrCat("depths must have ", kNumStages, " entries, got ", config.depths.size()));
  }
  if (config.dims.size() != kNumStages) {
    return absl::InvalidArgumentError(
        absl::StrCat("dims must have ", kNumStages, " entries, got ", config.dims.size()));
  }
  for (int i = 0; i < kNumStages; ++i) {
    if (config.depths[i] < 1 || config.depths[i] > 1000) {
      return absl::InvalidArgumentError(
          absl::StrCat("depths[", i, "] = ", config.depths[i], " is not in [1, 1000]"));
    }
    if (config.dims[i] < 1 || config.dims[i] > 65536) {
      return absl::InvalidArgumentError(
          absl::StrCat("dims[", i, "] = ", config.dims[i], " is not in [1, 65536]"));
    }
  }
  if (config.in_channels < 1 || config.in_channels > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("in_channels = ", config.in_channels, " is not in [1, 64]"));
  }
  if (config.num_classes < 0 || config.num_classes > 1000000) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_classes = ", config.num_classes, " is not in [0, 1000000]"));
  }
  if (config.stage_norms && config.num_classes != 0) {
    return absl::InvalidArgumentError(
        "a detection backbone (stage_norms) has no classification head: num_classes must be 0");
  }
  if (!(config.layer_norm_eps > 0) || !(config.head_norm_eps > 0)) {
    return absl::InvalidArgumentError("LayerNorm epsilons must be positive");
  }
  return absl::OkStatus();
}

ParameterShapes ExpectedParameters(const ConvNeXtConfig& config) {
  ParameterShapes params;
  auto add = [&params](std::string name, std::vector<int64_t> shape) {
    params.emplace_back(std::move(name), std::move(shape));
  };
  const std::vector<int64_t>& d = config.dims;
  add("downsample_layers.0.0.weight", {d[0], config.in_channels, 4, 4});
  add("downsample_layers.0.0.bias", {d[0]});
  add("downsample_layers.0.1.weight", {d[0]});
  add("downsample_layers.0.1.bias", {d[0]});
  for (int i = 0; i < kNumStages; ++i) {
    if (i > 0) {
      const std::string p = absl::StrCat("downsample_layers.", i, ".");
      add(p + "0.weight", {d[i - 1]});
      add(p + "0.bias", {d[i - 1]});
      add(p + "1.weight", {d[i], d[i - 1], 2, 2});
      add(p + "1.bias", {d[i]});
    }
    const int64_t c = d[i];
    for (int64_t j = 0; j < config.depths[i]; ++j) {
      const std::string p = absl::StrCat("stages.", i, ".", j, ".");
      add(p + "dwconv.weight", {c, 1, 7, 7});
      add(p + "dwconv.bias", {c});
      add(p + "norm.weight", {c});
      add(p + "norm.bias", {c});
      add(p + "pwconv1.weight", {4 * c, c});
      add(p + "pwconv1.bias", {4 * c});
      if (config.grn) {
        add(p + "grn.gamma", {4 * c});
        add(p + "grn.beta", {4 * c});
      }
      add(p + "pwconv2.weight", {c, 4 * c});
      add(p + "pwconv2.bias", {c});
      if (!config.grn) add(p + "gamma", {c});
    }
  }
  if (config.stage_norms) {
    for (int i = 0; i < kNumStages; ++i) {
      add(absl::StrCat("norm", i, ".weight"), {d[i]});
      add(absl::StrCat("norm", i, ".bias"), {d[i]});
    }
    return params;
  }
  add("norm.weight", {d[kNumStages - 1]});
  add("norm.bias", {d[kNumStages - 1]});
  if (config.num_classes > 0) {
    add("head.weight", {config.num_classes, d[kNumStages - 1]});
    add("head.bias", {config.num_classes});
  }
  return params;
}

int64_t ParameterCount(const ConvNeXtConfig& config) {
  int64_t total = 0;
  for (const auto& [name, shape] : ExpectedParameters(config)) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    total += n;
  }
  return total;
}

int64_t ForwardFlops(const ConvNeXtConfig& config, int64_t height, int64_t width) {
  int64_t h = height / 4, w = width / 4;  // After the 4x4 stem.
  int64_t macs = h * w * config.dims[0] * config.in_channels * 16;
  for (int i = 0; i < kNumStages; ++i) {
    const int64_t c = config.dims[i];
    if (i > 0) {
      h /= 2;
      w /= 2;
      macs += h * w * c * config.dims[i - 1] * 4;  // 2x2 stride-2 downsampling.
    }
    // Per block: depthwise 7x7, then C -> 4C -> C.
    macs += config.depths[i] * h * w * (c * 49 + 2 * c * 4 * c);
  }
  macs += config.dims[kNumStages - 1] * config.num_classes;
  return 2 * macs;
}

absl::StatusOr<ConvNeXtConfig> InferConfig(
    const std::map<std::string, std::vector<int64_t>>& shapes) {
  ConvNeXtConfig config;
  config.depths.assign(kNumStages, 0);
  config.dims.assign(kNumStages, 0);

  const std::string stem = "downsample_layers.0.0.weight";
  const std::vector<int64_t>* s = Find(shapes, stem);
  if (s == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("missing tensor ", stem, " (the stem convolution)"));
  }
  if (s->size() != 4) return BadShape(stem, *s, "[dims[0], in_channels, 4, 4]");
  config.dims[0] = (*s)[0];
  config.in_channels = (*s)[1];
  for (int i = 1; i < kNumStages; ++i) {
    const std::string key = absl::StrCat("downsample_layers.", i, ".1.weight");
    s = Find(shapes, key);
    if (s == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("missing tensor ", key, " (downsampling convolution of stage ", i, ")"));
    }
    if (s->size() != 4) return BadShape(key, *s, "[dims[i], dims[i-1], 2, 2]");
    config.dims[i] = (*s)[0];
  }

  // Depth of stage i: one more than the largest block index j in "stages.i.j.*".
  for (const auto& [key, shape] : shapes) {
    std::vector<absl::string_view> parts = absl::StrSplit(key, '.');
    int stage = 0;
    int64_t block = 0;
    if (parts.size() < 3 || parts[0] != "stages" || !absl::SimpleAtoi(parts[1], &stage) ||
        !absl::SimpleAtoi(parts[2], &block) || stage < 0 || stage >= kNumStages || block < 0 ||
        block >= 1000) {
      continue;  // Not a block parameter; the loader reports unexpected keys.
    }
    config.depths[stage] = std::max(config.depths[stage], block + 1);
  }
  for (int i = 0; i < kNumStages; ++i) {
    if (config.depths[i] == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("no blocks found for stage ", i, " (no tensor named stages.", i, ".0.*)"));
    }
  }

  config.num_classes = 0;
  config.stage_norms = Find(shapes, "norm0.weight") != nullptr;
  config.grn = Find(shapes, "stages.0.0.grn.gamma") != nullptr;
  if ((s = Find(shapes, "head.weight")) != nullptr) {
    if (s->size() != 2) return BadShape("head.weight", *s, "[num_classes, dims[3]]");
    config.num_classes = (*s)[0];
  }
  config.variant = VariantNameFor(config);
  return config;
}

}  // namespace convnext
