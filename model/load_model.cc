#include "model/load_model.h"

#include <ATen/ATen.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <vector>

#include "absl/hash/hash.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "checkpoint/checkpoint_file.h"
#include "checkpoint/checkpoint_layout.h"
#include "model/convnext_config.h"

namespace convnext {
namespace {

// Reads layer_norm_eps and id2label from the config.json beside a Hugging Face checkpoint.
absl::Status ApplyHuggingFaceConfig(const std::string& checkpoint_path, ConvNeXtConfig* config,
                                    std::vector<std::string>* labels) {
  config->head_norm_eps = 1e-12;  // transformers' ConvNextConfig default.
  const size_t slash = checkpoint_path.find_last_of('/');
  const std::string path =
      (slash == std::string::npos ? std::string() : checkpoint_path.substr(0, slash + 1)) +
      "config.json";
  std::ifstream in(path);
  if (!in) return absl::OkStatus();  // No config.json: transformers' defaults.
  const nlohmann::json json = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!json.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' is not a JSON object"));
  }
  if (auto eps = json.find("layer_norm_eps"); eps != json.end()) {
    if (!eps->is_number() || !(eps->get<double>() > 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", path, "': layer_norm_eps must be a positive number"));
    }
    config->head_norm_eps = eps->get<double>();
  }
  if (auto id2label = json.find("id2label"); id2label != json.end() && id2label->is_object()) {
    std::vector<std::string> names(config->num_classes);
    for (auto it = id2label->begin(); it != id2label->end(); ++it) {
      int64_t index = -1;
      if (!absl::SimpleAtoi(it.key(), &index) || index < 0 || index >= config->num_classes ||
          !it.value().is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "'", path, "': id2label entry '", it.key(), "' is not a class index of the model (",
            config->num_classes, " classes) with a string label"));
      }
      names[index] = it.value().get<std::string>();
    }
    *labels = std::move(names);
  }
  return absl::OkStatus();
}

std::map<std::string, std::vector<int64_t>> Shapes(const StateDict& weights) {
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& [name, tensor] : weights) shapes.emplace(name, tensor.sizes().vec());
  return shapes;
}

// A checkpoint read and renamed into canonical names, with its architecture.
struct Canonical {
  StateDict weights;
  ConvNeXtConfig config;
  SourceNameFn source_name;
  std::string format, layout;
  std::vector<std::string> labels;
  int dropped_non_backbone = 0;
};

absl::StatusOr<Canonical> ReadCanonical(const LoadOptions& options) {
  Canonical c;
  ASSIGN_OR_RETURN(StateDict raw,
                   ReadCheckpointFile(options.path, &c.format, options.max_checkpoint_bytes));
  absl::StatusOr<CanonicalWeights> canonical = ToCanonical(std::move(raw));
  if (!canonical.ok()) return AnnotateCheckpointError(options.path, canonical.status());
  c.layout = canonical->layout;
  c.dropped_non_backbone = canonical->dropped_non_backbone;
  c.source_name = canonical->source_name;
  c.weights = std::move(canonical->weights);
  StateDict& weights = c.weights;

  ConvNeXtConfig& config = c.config;
  if (options.variant.empty()) {
    absl::StatusOr<ConvNeXtConfig> inferred = InferConfig(Shapes(weights));
    if (!inferred.ok()) return AnnotateCheckpointError(options.path, inferred.status());
    config = *std::move(inferred);
  } else {
    absl::StatusOr<ConvNeXtConfig> named = ConfigForVariant(options.variant);
    if (!named.ok()) return named.status();
    config = *std::move(named);
    auto head = weights.find("head.weight");
    config.num_classes = head == weights.end() || head->second.dim() < 1 ? 0 : head->second.size(0);
    config.stage_norms = weights.count("norm0.weight") > 0;
  }
  // The architecture is checked before anything is sized from it (a head shape of 2^40 classes
  // must not size the label list).
  if (absl::Status s = ValidateArchitecture(config); !s.ok()) {
    return AnnotateCheckpointError(options.path, s);
  }
  if (c.layout == "huggingface") {
    absl::Status status = ApplyHuggingFaceConfig(options.path, &config, &c.labels);
    if (!status.ok()) return AnnotateCheckpointError(options.path, status);
  }
  return c;
}

bool IsHeadTensor(const std::string& name) {
  return name == "norm.weight" || name == "norm.bias" || name == "head.weight" ||
         name == "head.bias";
}

TrunkFingerprint Fingerprint(const StateDict& weights) {
  TrunkFingerprint out;
  for (const auto& [name, tensor] : weights) {
    if (IsHeadTensor(name)) continue;
    const at::Tensor t = tensor.to(at::kCPU, at::kFloat).contiguous();
    const absl::string_view bytes(static_cast<const char*>(t.data_ptr()),
                                  static_cast<size_t>(t.numel()) * sizeof(float));
    out[name] = absl::HashOf(t.sizes().vec(), bytes);
  }
  return out;
}

absl::StatusOr<LoadedModel> Load(const LoadOptions& options) {
  ASSIGN_OR_RETURN(Canonical c, ReadCanonical(options));
  LoadedModel loaded;
  loaded.format = c.format;
  loaded.layout = c.layout;
  loaded.labels = std::move(c.labels);
  loaded.dropped_non_backbone = c.dropped_non_backbone;
  if (options.fingerprint_trunk) loaded.trunk = Fingerprint(c.weights);
  absl::StatusOr<std::unique_ptr<ConvNeXt>> model =
      ConvNeXt::Create(c.config, std::move(c.weights), options.model, c.source_name);
  if (!model.ok()) return AnnotateCheckpointError(options.path, model.status());
  loaded.model = *std::move(model);
  return loaded;
}

absl::StatusOr<LoadedHead> LoadHeadOf(const LoadOptions& options, const ConvNeXt& trunk,
                                      const TrunkFingerprint& fingerprint) {
  ASSIGN_OR_RETURN(Canonical c, ReadCanonical(options));
  auto fail = [&](const std::string& why) {
    return AnnotateCheckpointError(options.path, absl::FailedPreconditionError(why));
  };
  if (c.config.stage_norms || trunk.config().stage_norms) {
    return AnnotateCheckpointError(
        options.path, absl::InvalidArgumentError("a detection backbone has no head to share"));
  }
  const TrunkFingerprint mine = Fingerprint(c.weights);
  for (const auto& [name, hash] : fingerprint) {
    auto it = mine.find(name);
    if (it == mine.end()) return fail(absl::StrCat("its trunk lacks tensor ", name));
    if (it->second != hash) {
      return fail(absl::StrCat("its trunk differs from the model's at tensor ", name,
                               " (a head must be trained on the same frozen trunk)"));
    }
  }
  for (const auto& [name, hash] : mine) {
    if (fingerprint.count(name) == 0) {
      return fail(absl::StrCat("its trunk has tensor ", name, ", which the model's has not"));
    }
  }
  const int64_t dims = trunk.config().dims[kNumStages - 1];
  const ModelOptions& to = trunk.options();
  LoadedHead loaded;
  loaded.format = c.format;
  loaded.layout = c.layout;
  loaded.labels = std::move(c.labels);
  ConvNeXtHead& head = loaded.head;
  head.norm_eps = c.config.head_norm_eps;
  head.num_classes = c.config.num_classes;
  auto take = [&](const std::string& name,
                  std::vector<int64_t> shape) -> absl::StatusOr<at::Tensor> {
    auto it = c.weights.find(name);
    if (it == c.weights.end()) return fail(absl::StrCat("it has no tensor ", name));
    if (it->second.sizes().vec() != shape || !c10::isFloatingType(it->second.scalar_type())) {
      return AnnotateCheckpointError(
          options.path, absl::InvalidArgumentError(absl::StrCat(
                            "tensor ", name, " is not a floating-point tensor of shape [",
                            absl::StrJoin(shape, ", "), "]")));
    }
    return it->second.to(to.device, to.dtype).contiguous();
  };
  ASSIGN_OR_RETURN(head.norm_weight, take("norm.weight", {dims}));
  ASSIGN_OR_RETURN(head.norm_bias, take("norm.bias", {dims}));
  if (head.num_classes > 0) {
    ASSIGN_OR_RETURN(head.fc_weight, take("head.weight", {head.num_classes, dims}));
    ASSIGN_OR_RETURN(head.fc_bias, take("head.bias", {head.num_classes}));
  }
  return loaded;
}

}  // namespace

absl::StatusOr<LoadedHead> LoadHead(const LoadOptions& options, const ConvNeXt& trunk,
                                    const TrunkFingerprint& fingerprint) {
  try {
    return LoadHeadOf(options, trunk, fingerprint);
  } catch (const std::bad_alloc&) {
    return AnnotateCheckpointError(
        options.path, absl::ResourceExhaustedError("out of memory while loading the head"));
  } catch (const std::exception& e) {
    return AnnotateCheckpointError(
        options.path, absl::InternalError(absl::StrCat("loading the head: ", e.what())));
  }
}

absl::StatusOr<LoadedModel> LoadModel(const LoadOptions& options) {
  // Whatever a hostile or broken checkpoint makes the loader allocate, running out of memory is a
  // one-line error, never an abort.
  try {
    return Load(options);
  } catch (const std::bad_alloc&) {
    return AnnotateCheckpointError(
        options.path, absl::ResourceExhaustedError("out of memory while loading the model"));
  }
}

}  // namespace convnext
