#include "model/load_model.h"

#include <ATen/ATen.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
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

absl::StatusOr<LoadedModel> Load(const LoadOptions& options) {
  LoadedModel loaded;
  ASSIGN_OR_RETURN(StateDict raw,
                   ReadCheckpointFile(options.path, &loaded.format, options.max_checkpoint_bytes));
  absl::StatusOr<CanonicalWeights> canonical = ToCanonical(std::move(raw));
  if (!canonical.ok()) return AnnotateCheckpointError(options.path, canonical.status());
  loaded.layout = canonical->layout;
  loaded.dropped_non_backbone = canonical->dropped_non_backbone;
  StateDict& weights = canonical->weights;

  ConvNeXtConfig config;
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
  if (loaded.layout == "huggingface") {
    absl::Status status = ApplyHuggingFaceConfig(options.path, &config, &loaded.labels);
    if (!status.ok()) return AnnotateCheckpointError(options.path, status);
  }
  absl::StatusOr<std::unique_ptr<ConvNeXt>> model =
      ConvNeXt::Create(config, std::move(weights), options.model, canonical->source_name);
  if (!model.ok()) return AnnotateCheckpointError(options.path, model.status());
  loaded.model = *std::move(model);
  return loaded;
}

}  // namespace

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
