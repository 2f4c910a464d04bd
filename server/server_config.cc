#include "server/server_config.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <system_error>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "checkpoint/state_dict.h"
#include "image/preprocess_config.h"
#include "server/batch_queue.h"

namespace convnext::server {
namespace {

constexpr int kMaxDevices = 16;  // ModelConfig.devices.

// Collects text-format parse errors with their line and column.
class ErrorCollector : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, int column, const std::string& message) override {
    if (first_.empty())
      first_ = absl::StrCat("line ", line + 1, ", column ", column + 1, ": ", message);
  }
  const std::string& first() const { return first_; }

 private:
  std::string first_;
};

bool ValidName(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return false;
    }
  }
  return true;
}

absl::Status Bad(const server::ModelConfig& model, absl::string_view field,
                 absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("model '", model.name(), "': ", field, " ", what));
}

}  // namespace

absl::StatusOr<server::ServerConfig> ReadConfigFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("config file '", path, "' cannot be read"));
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return ParseConfigText(text, path);
}

absl::StatusOr<server::ServerConfig> ParseConfigText(const std::string& text,
                                                     const std::string& path) {
  server::ServerConfig config;
  google::protobuf::TextFormat::Parser parser;
  ErrorCollector errors;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &config)) {
    return absl::InvalidArgumentError(absl::StrCat("config file '", path, "': ", errors.first()));
  }
  // Relative paths in a config file are relative to the file's directory.
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "" : path.substr(0, slash + 1);
  for (server::ModelConfig& m : *config.mutable_model()) {
    if (!m.checkpoint().empty() && m.checkpoint()[0] != '/') m.set_checkpoint(dir + m.checkpoint());
    if (!m.labels_file().empty() && m.labels_file()[0] != '/') {
      m.set_labels_file(dir + m.labels_file());
    }
    for (server::HeadConfig& h : *m.mutable_head()) {
      if (!h.checkpoint().empty() && h.checkpoint()[0] != '/')
        h.set_checkpoint(dir + h.checkpoint());
      if (!h.labels_file().empty() && h.labels_file()[0] != '/') {
        h.set_labels_file(dir + h.labels_file());
      }
    }
    for (server::GoldenCase& g : *m.mutable_golden()) {
      if (!g.image().empty() && g.image()[0] != '/') g.set_image(dir + g.image());
      if (!g.expected().empty() && g.expected()[0] != '/') g.set_expected(dir + g.expected());
    }
  }
  return config;
}

absl::StatusOr<server::ModelConfig> ParseModelConfigText(const std::string& text,
                                                         const server::ServerConfig& server,
                                                         int64_t memory_bytes) {
  server::ModelConfig config;
  google::protobuf::TextFormat::Parser parser;
  ErrorCollector errors;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &config)) {
    return absl::InvalidArgumentError(absl::StrCat("config: ", errors.first()));
  }
  if (memory_bytes <= 0) memory_bytes = static_cast<int64_t>(2 * server.max_memory_bytes());
  NormalizeModelConfig(&config, server, memory_bytes);
  RETURN_IF_ERROR(ValidateModelConfig(config));
  return config;
}

absl::StatusOr<server::ModelConfig> ParseModelFlag(const std::string& flag) {
  const size_t eq = flag.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == flag.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--model '", flag, "' is not of the form NAME=CHECKPOINT"));
  }
  server::ModelConfig model;
  model.set_name(flag.substr(0, eq));
  std::string checkpoint = flag.substr(eq + 1);
  std::error_code error;
  if (std::filesystem::is_directory(checkpoint, error)) {
    // A folder (KServe mounts a model's storage at /mnt/models): its one checkpoint file.
    std::vector<std::string> found;
    for (const auto& entry : std::filesystem::directory_iterator(checkpoint, error)) {
      const std::string ext = entry.path().extension().string();
      if (entry.is_regular_file(error) &&
          (ext == ".safetensors" || ext == ".pth" || ext == ".pt" || ext == ".bin")) {
        found.push_back(entry.path().string());
      }
    }
    if (found.size() != 1) {
      std::sort(found.begin(), found.end());
      return absl::InvalidArgumentError(
          absl::StrCat("--model '", flag, "': the folder holds ", found.size(),
                       " checkpoint files (.safetensors, .pth, .pt, .bin), expected exactly one",
                       found.empty() ? "" : absl::StrCat(": ", absl::StrJoin(found, ", "))));
    }
    checkpoint = found[0];
  }
  model.set_checkpoint(checkpoint);
  return model;
}

void NormalizeModelConfig(server::ModelConfig* m, const server::ServerConfig& server,
                          int64_t memory_bytes) {
  const PreprocessConfig preprocess;
  const BatchQueueOptions batching;
  if (m->version().empty()) m->set_version(kDefaultVersion);
  for (server::GoldenCase& g : *m->mutable_golden()) {
    if (g.output().empty()) g.set_output("probabilities");
    if (g.tolerance() == 0) g.set_tolerance(1e-4f);
  }
  // `device` and `devices` name the same thing: both are filled (a mismatch is left for
  // ValidateModelConfig to name).
  if (m->devices_size() == 0) m->add_devices(m->device().empty() ? "cpu" : m->device());
  if (m->device().empty()) m->set_device(m->devices(0));
  if (m->max_checkpoint_bytes() == 0) {
    m->set_max_checkpoint_bytes(std::min<uint64_t>(
        kDefaultMaxCheckpointBytes, static_cast<uint64_t>(std::max<int64_t>(memory_bytes, 2) / 2)));
  }
  server::PreprocessingConfig* p = m->mutable_preprocessing();
  if (p->size() == 0) p->set_size(preprocess.size);
  if (p->crop_pct() == 0) p->set_crop_pct(static_cast<float>(DefaultCropPct(p->size())));
  if (p->interpolation().empty()) {
    p->set_interpolation(std::string(InterpolationName(preprocess.interpolation)));
  }
  if (p->mean_size() == 0) {
    for (float v : preprocess.mean) p->add_mean(v);
  }
  if (p->std_size() == 0) {
    for (float v : preprocess.std) p->add_std(v);
  }
  server::BatchingConfig* b = m->mutable_batching();
  if (b->max_batch_size() == 0) b->set_max_batch_size(batching.max_batch_size);
  if (b->max_queue_delay_us() == 0) {
    b->set_max_queue_delay_us(absl::ToInt64Microseconds(batching.max_queue_delay));
  }
  if (b->max_queue_size() == 0) {
    b->set_max_queue_size(std::max<uint32_t>(batching.max_queue_size, b->max_batch_size()));
  }
  if (b->instances() == 0) b->set_instances(1);
  if (b->max_memory_bytes() == 0) b->set_max_memory_bytes(server.max_memory_bytes());
}

void NormalizeConfig(server::ServerConfig* config, int cores, int64_t memory_bytes) {
  // Every default below is read from where the layer that uses it defines it.
  const PreprocessConfig preprocess;
  cores = std::max(cores, 1);
  if (config->intra_op_threads() == 0) config->set_intra_op_threads(cores);
  if (config->preprocess_threads() == 0) config->set_preprocess_threads(cores);
  if (config->max_message_bytes() == 0) config->set_max_message_bytes(kDefaultMaxMessageBytes);
  if (config->max_image_pixels() == 0) config->set_max_image_pixels(preprocess.max_pixels);
  if (config->transport_memory_bytes() == 0) {
    config->set_transport_memory_bytes(
        std::max<uint64_t>(static_cast<uint64_t>(std::max<int64_t>(memory_bytes, 8) / 8),
                           uint64_t{4} * config->max_message_bytes()));
  }
  if (config->max_concurrent_streams() == 0) {
    config->set_max_concurrent_streams(kDefaultMaxConcurrentStreams);
  }
  if (config->max_memory_bytes() == 0) {
    config->set_max_memory_bytes(static_cast<uint64_t>(std::max<int64_t>(memory_bytes, 2) / 2));
  }
  if (config->default_model().empty() && config->model_size() > 0) {
    config->set_default_model(config->model(0).name());
  }
  for (server::ModelConfig& m : *config->mutable_model()) {
    NormalizeModelConfig(&m, *config, memory_bytes);
  }
}

absl::Status ValidateModelConfig(const server::ModelConfig& m) {
  if (!ValidName(m.name())) {
    return absl::InvalidArgumentError(absl::StrCat("model name '", absl::CEscape(m.name()),
                                                   "' must be 1-64 characters of [A-Za-z0-9._-]"));
  }
  if (!ValidName(m.version())) {
    return Bad(m, "version",
               absl::StrCat("'", absl::CEscape(m.version()),
                            "' must be 1-64 characters of [A-Za-z0-9._-]"));
  }
  for (const std::string& label : m.version_labels()) {
    if (!ValidName(label)) {
      return Bad(
          m, "version_labels",
          absl::StrCat("'", absl::CEscape(label), "' must be 1-64 characters of [A-Za-z0-9._-]"));
    }
  }
  if (m.checkpoint().empty()) return Bad(m, "checkpoint", "is required");
  const server::PreprocessingConfig& p = m.preprocessing();
  if (p.size() < kMinSize || p.size() > kMaxSize) {
    return Bad(m, "preprocessing.size",
               absl::StrCat("must be in [", kMinSize, ", ", kMaxSize, "]"));
  }
  if (!(p.crop_pct() > 0.0f && p.crop_pct() <= 1.0f)) {
    return Bad(m, "preprocessing.crop_pct", "must be in (0, 1]");
  }
  if (absl::StatusOr<Interpolation> i = InterpolationFromName(p.interpolation()); !i.ok()) {
    return Bad(m, "preprocessing.interpolation", i.status().message());
  }
  if (p.mean_size() != 3 || p.std_size() != 3) {
    return Bad(m, "preprocessing.mean/std", "must have 3 values each");
  }
  for (float s : p.std()) {
    if (!(s > 0)) return Bad(m, "preprocessing.std", "values must be positive");
  }
  const server::BatchingConfig& b = m.batching();
  if (b.max_batch_size() > 1024) return Bad(m, "batching.max_batch_size", "must be <= 1024");
  if (b.max_queue_delay_us() > 10'000'000) {
    return Bad(m, "batching.max_queue_delay_us", "must be <= 10 s");
  }
  if (b.max_queue_size() < b.max_batch_size()) {
    return Bad(m, "batching.max_queue_size", "must be at least max_batch_size");
  }
  if (b.instances() > 64) return Bad(m, "batching.instances", "must be <= 64");
  if (m.devices_size() > kMaxDevices) {
    return Bad(m, "devices",
               absl::StrCat("lists ", m.devices_size(), " devices, at most ", kMaxDevices,
                            " (one replica each)"));
  }
  if (m.devices_size() == 0 || m.device() != m.devices(0)) {
    return Bad(m, "device",
               absl::StrCat("'", absl::CEscape(m.device()), "' is not the first of devices ['",
                            absl::StrJoin(m.devices(), "', '"), "']; set one or the other"));
  }
  const bool cuda = m.device().rfind("cuda", 0) == 0;
  for (const std::string& d : m.devices()) {
    if ((d.rfind("cuda", 0) == 0) != cuda) {
      return Bad(m, "devices",
                 absl::StrCat("mixes '", absl::CEscape(m.devices(0)), "' and '", absl::CEscape(d),
                              "': a model's replicas are all on the CPU or all on CUDA devices"));
    }
  }
  if (m.compute_dtype() == server::BF16 && !cuda &&
      (m.disable_cpu_fast_path() || m.device() != "cpu")) {
    return Bad(m, "compute_dtype",
               "BF16 runs on the CPU fast path only (device \"cpu\", disable_cpu_fast_path "
               "unset) or on a CUDA device; AUTO falls back to FP32 instead");
  }
  if (m.compute_dtype() == server::FP16 && !cuda) {
    return Bad(m, "compute_dtype",
               "FP16 runs on a CUDA device only (device \"cuda\" or \"cuda:N\")");
  }
  if (m.cuda_graph_max_batch() > 0 && !cuda) {
    return Bad(m, "cuda_graph_max_batch",
               "CUDA graphs run on a CUDA device only (device \"cuda\" or \"cuda:N\")");
  }
  if (m.cuda_graph_max_batch() > 64) return Bad(m, "cuda_graph_max_batch", "must be <= 64");
  if (m.compute_dtype() == server::TF32 && !cuda) {
    return Bad(m, "compute_dtype",
               "TF32 (TensorFloat-32) runs on a CUDA device only (device \"cuda\" or \"cuda:N\")");
  }
  for (const server::GoldenCase& g : m.golden()) {
    if (g.image().empty() || g.expected().empty()) {
      return Bad(m, "golden", "needs both image and expected");
    }
    if (g.output() != "probabilities" && g.output() != "embedding") {
      return Bad(m, "golden.output",
                 absl::StrCat("'", absl::CEscape(g.output()),
                              "' must be \"probabilities\" or \"embedding\""));
    }
    if (!(g.tolerance() > 0)) return Bad(m, "golden.tolerance", "must be positive");
  }
  std::set<std::string> heads;
  for (const server::HeadConfig& h : m.head()) {
    if (!ValidName(h.name())) {
      return Bad(m, "head.name",
                 absl::StrCat("'", absl::CEscape(h.name()),
                              "' must be 1-64 characters of [A-Za-z0-9._-]"));
    }
    if (h.name() == m.name() || !heads.insert(h.name()).second) {
      return Bad(m, "head.name",
                 absl::StrCat("'", h.name(), "' is used twice (heads are served as models)"));
    }
    if (h.checkpoint().empty()) return Bad(m, "head.checkpoint", "is required");
  }
  return absl::OkStatus();
}

absl::Status ValidateServerConfig(const server::ServerConfig& config) {
  if (config.model_size() == 0) {
    return absl::InvalidArgumentError(
        "no model to serve: pass --model NAME=CHECKPOINT or a --config file with a model");
  }
  std::set<std::string> names;
  // Per model name: its versions and its labels, which must not collide.
  std::map<std::string, std::set<std::string>> versions, labels;
  for (const server::ModelConfig& m : config.model()) {
    RETURN_IF_ERROR(ValidateModelConfig(m));
    names.insert(m.name());
    if (!versions[m.name()].insert(m.version()).second) {
      return Bad(m, "version", absl::StrCat("'", m.version(), "' is used twice"));
    }
    for (const std::string& label : m.version_labels()) {
      if (!labels[m.name()].insert(label).second) {
        return Bad(m, "version_labels", absl::StrCat("'", label, "' is used twice"));
      }
    }
  }
  // Heads are served as models: their names belong to one model each and to no model.
  std::map<std::string, std::string> head_of;
  for (const server::ModelConfig& m : config.model()) {
    for (const server::HeadConfig& h : m.head()) {
      if (names.count(h.name()) != 0) {
        return Bad(m, "head.name", absl::StrCat("'", h.name(), "' is also the name of a model"));
      }
      auto [it, added] = head_of.emplace(h.name(), m.name());
      if (!added && it->second != m.name()) {
        return Bad(m, "head.name",
                   absl::StrCat("'", h.name(), "' is also a head of model '", it->second, "'"));
      }
    }
  }
  for (const auto& [name, names_of_labels] : labels) {
    for (const std::string& label : names_of_labels) {
      if (versions[name].count(label) != 0) {
        return absl::InvalidArgumentError(absl::StrCat("model '", name, "': version label '", label,
                                                       "' is also the name of a version"));
      }
    }
  }
  std::set<std::string> defaulted;
  for (const server::DefaultVersion& d : config.default_version()) {
    const std::string& name = d.model();
    const std::string& selector = d.version();
    if (!defaulted.insert(name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("default_version names model '", name, "' twice"));
    }
    if (head_of.count(name) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("default_version names head '", name,
                       "', which serves the default version of model '", head_of[name], "'"));
    }
    if (names.count(name) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("default_version names model '", name, "', which is not configured"));
    }
    if (versions[name].count(selector) == 0 && labels[name].count(selector) == 0) {
      return absl::InvalidArgumentError(absl::StrCat("default_version of model '", name, "': '",
                                                     selector,
                                                     "' is neither a version nor a label"));
    }
  }
  if (names.count(config.default_model()) == 0 && head_of.count(config.default_model()) == 0) {
    return absl::InvalidArgumentError(absl::StrCat("default_model '", config.default_model(),
                                                   "' is not one of the models (",
                                                   absl::StrJoin(names, ", "), ")"));
  }
  if (config.max_image_pixels() > static_cast<uint64_t>(kMaxPixelsCeiling)) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_image_pixels must be <= ", kMaxPixelsCeiling, " (OpenCV's limit)"));
  }
  if (config.intra_op_threads() > 256) {
    return absl::InvalidArgumentError("intra_op_threads must be <= 256");
  }
  if (config.preprocess_threads() > 256) {
    return absl::InvalidArgumentError("preprocess_threads must be <= 256");
  }
  if (config.max_message_bytes() > static_cast<uint32_t>(INT32_MAX)) {
    return absl::InvalidArgumentError("max_message_bytes must be < 2 GiB");
  }
  if (config.transport_memory_bytes() < config.max_message_bytes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("transport_memory_bytes (", config.transport_memory_bytes(),
                     ") must be at least max_message_bytes (", config.max_message_bytes(), ")"));
  }
  return absl::OkStatus();
}

}  // namespace convnext::server
