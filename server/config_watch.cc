#include "server/config_watch.h"

#include <google/protobuf/util/message_differencer.h>

#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/log.h"
#include "server/server_config.h"

namespace convnext::server {
namespace {

bool ReadText(const std::string& path, std::string* text) {
  std::ifstream in(path);
  if (!in) return false;
  text->assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return true;
}

// The server-wide part of a config: everything but the models and their defaults.
ServerConfig ServerWide(const ServerConfig& config) {
  ServerConfig c = config;
  c.clear_model();
  c.clear_default_model();
  c.clear_default_version();
  return c;
}

}  // namespace

ConfigWatch::ConfigWatch(ModelRepository* models, ConfigWatchOptions options)
    : models_(models), options_(std::move(options)) {
  ReadText(options_.path, &seen_text_);  // The file as it was read at start-up.
  thread_ = std::thread([this] { Run(); });
}

ConfigWatch::~ConfigWatch() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void ConfigWatch::Run() {
  Log("info", "config_watch",
      {{"path", options_.path},
       {"interval_s", absl::StrCat(absl::ToDoubleSeconds(options_.interval))}});
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      if (mu_.AwaitWithTimeout(absl::Condition(&stop_), options_.interval)) return;
    }
    Poll();
  }
}

void ConfigWatch::Poll() {
  std::string text;
  if (!ReadText(options_.path, &text) || text == seen_text_) {
    pending_text_.clear();
    return;
  }
  if (text != pending_text_) {  // Changed since the last look: wait until it stays the same.
    pending_text_ = text;
    return;
  }
  seen_text_ = text;
  pending_text_.clear();
  absl::StatusOr<ServerConfig> config = ParseConfigText(text, options_.path);
  absl::Status valid = config.status();
  if (config.ok()) {
    const int64_t memory = options_.memory_bytes > 0
                               ? options_.memory_bytes
                               : static_cast<int64_t>(2 * options_.applied.max_memory_bytes());
    NormalizeConfig(&*config, static_cast<int>(options_.applied.intra_op_threads()), memory);
    valid = ValidateServerConfig(*config);
  }
  if (!valid.ok()) {
    Log("error", "config_rejected",
        {{"path", options_.path},
         {"message", std::string(valid.message())},
         {"action", "ignored; the models serve on as before"}});
    return;
  }
  Apply(*config);
}

void ConfigWatch::Apply(const ServerConfig& config) {
  if (!google::protobuf::util::MessageDifferencer::Equals(ServerWide(config),
                                                          ServerWide(options_.applied))) {
    Log("warning", "config_needs_restart",
        {{"path", options_.path},
         {"message", "server-wide fields changed; they take effect at the next start"}});
  }
  const auto current = models_->Configs();
  std::set<std::pair<std::string, std::string>> wanted;
  int loads = 0;
  for (const ModelConfig& m : config.model()) {
    const std::pair<std::string, std::string> key{m.name(), m.version()};
    wanted.insert(key);
    auto it = current.find(key);
    if (it != current.end() && google::protobuf::util::MessageDifferencer::Equals(it->second, m)) {
      continue;
    }
    ++loads;
    models_->Load(m, false, [](const absl::StatusOr<ModelRepository::LoadResult>&) {});
  }
  std::vector<std::pair<std::string, std::string>> gone;
  for (const auto& [key, m] : current) {
    if (wanted.count(key) == 0) gone.push_back(key);
  }
  Log("info", "config_applying",
      {{"path", options_.path},
       {"loads", absl::StrCat(loads)},
       {"unloads", absl::StrCat(gone.size())}});
  // After the loads: a version replaced by another serves until its successor is ready.
  models_->AfterLoads([models = models_, gone, config] {
    for (const auto& [name, version] : gone) {
      if (absl::StatusOr<std::vector<std::string>> s = models->Unload(name, version); !s.ok()) {
        Log("warning", "config_unload_failed",
            {{"model", name},
             {"version", version},
             {"message", std::string(s.status().message())}});
      }
    }
    std::set<std::string> names;
    for (const ModelConfig& m : config.model()) names.insert(m.name());
    for (const std::string& name : names) {
      std::string selector;  // Not listed: the latest.
      for (const DefaultVersion& d : config.default_version()) {
        if (d.model() == name) selector = d.version();
      }
      if (absl::StatusOr<std::string> s = models->SetDefaultVersion(name, selector); !s.ok()) {
        Log("warning", "config_default_version_failed",
            {{"model", name}, {"message", std::string(s.status().message())}});
      }
    }
    if (absl::Status s = models->SetDefaultModel(config.default_model()); !s.ok()) {
      Log("warning", "config_default_model_failed", {{"message", std::string(s.message())}});
    }
    Log("info", "config_applied", {});
  });
  options_.applied = config;
}

}  // namespace convnext::server
