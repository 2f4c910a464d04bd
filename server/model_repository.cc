#include "server/model_repository.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "model/process_tuning.h"
#include "server/log.h"
#include "server/metrics.h"

namespace convnext::server {
namespace {

bool AllDigits(const std::string& s) {
  return !s.empty() &&
         std::all_of(s.begin(), s.end(), [](char c) { return absl::ascii_isdigit(c); });
}

// A name safe to put in a message (hostile names may hold control characters).
std::string Quoted(absl::string_view s) {
  return absl::StrCat("'", absl::CHexEscape(s.substr(0, 128)), "'");
}

// Resident memory of this process, in bytes (0 if unknown).
int64_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  long size = 0, resident = 0;
  statm >> size >> resident;
  return static_cast<int64_t>(resident) * ::sysconf(_SC_PAGESIZE);
}

// "name:version" in the name when no version is given separately.
std::pair<std::string, std::string> SplitSelector(absl::string_view name,
                                                  absl::string_view version) {
  std::string model_name(name), selector(version);
  if (selector.empty()) {
    if (const size_t colon = model_name.find(':'); colon != std::string::npos) {
      selector = model_name.substr(colon + 1);
      model_name.resize(colon);
    }
  }
  return {model_name, selector};
}

}  // namespace

bool VersionLess(const std::string& a, const std::string& b) {
  if (AllDigits(a) && AllDigits(b)) {
    const size_t za = a.find_first_not_of('0'), zb = b.find_first_not_of('0');
    const std::string na = za == std::string::npos ? "" : a.substr(za);
    const std::string nb = zb == std::string::npos ? "" : b.substr(zb);
    if (na.size() != nb.size()) return na.size() < nb.size();
    if (na != nb) return na < nb;
  }
  return a < b;
}

namespace {

// Sets the ready gauge of `host` and of its heads' views.
void SetReadyWithHeads(const ModelHost& host, bool ready, double load_seconds) {
  SetModelReady(host.metrics(), ready, load_seconds);
  for (const ModelHost* head : host.heads()) SetModelReady(head->metrics(), ready, load_seconds);
}

bool Declares(const ModelConfig& config, absl::string_view head) {
  return std::any_of(config.head().begin(), config.head().end(),
                     [&](const HeadConfig& h) { return h.name() == head; });
}

}  // namespace

struct ModelRepository::Reaper {
  // Held exclusively while a host is freed, shared while draining hosts are read.
  absl::Mutex free_mu;  // Taken before mu.
  absl::Mutex mu;
  std::set<ModelHost*> draining ABSL_GUARDED_BY(mu);
  bool stopped ABSL_GUARDED_BY(mu) = false;
  std::unique_ptr<ThreadPool> pool = std::make_unique<ThreadPool>(1);

  // Nobody can find `host` any more, and every handler that found it has admitted its call:
  // what it admitted finishes, then it is freed, on the reaper's thread (the last reference may
  // be dropped on one of the host's own executor threads, which its destructor joins).
  static void Retire(const std::shared_ptr<Reaper>& self, ModelHost* host) {
    {
      absl::MutexLock lock(&self->mu);
      if (!self->stopped) {
        self->draining.insert(host);
        host->StopAdmitting();
        self->pool->Schedule([self, host] {
          host->WaitUntilIdle(absl::InfiniteFuture());
          Log("info", "model_version_freed",
              {{"model", host->name()}, {"version", host->version()}});
          absl::MutexLock free_lock(&self->free_mu);
          {
            absl::MutexLock lock(&self->mu);
            self->draining.erase(host);
          }
          delete host;          // Stops its executors.
          ReleaseFreeMemory();  // Its weights and buffers, back to the OS.
        });
        return;
      }
    }
    delete host;  // After Shutdown: the host's own Shutdown computes what it still holds.
  }

  // The retired hosts not yet freed; the caller holds free_mu (shared) while it uses them.
  std::vector<ModelHost*> Draining() {
    absl::MutexLock lock(&mu);
    return std::vector<ModelHost*>(draining.begin(), draining.end());
  }

  // Frees every host retired so far, then joins; later ones are freed where they are released.
  void Stop() {
    {
      absl::MutexLock lock(&mu);
      stopped = true;
    }
    pool.reset();
  }
};

ModelRepository::ModelRepository(ModelRepositoryOptions options)
    : options_(std::move(options)),
      reaper_(std::make_shared<Reaper>()),
      loader_(std::make_unique<ThreadPool>(1)) {}

ModelRepository::~ModelRepository() { Shutdown(); }

std::shared_ptr<ModelHost> ModelRepository::Own(std::unique_ptr<ModelHost> host) {
  return std::shared_ptr<ModelHost>(
      host.release(), [reaper = reaper_](ModelHost* h) { Reaper::Retire(reaper, h); });
}

absl::Status ModelRepository::LoadInitial(const ServerConfig& config) {
  for (const ModelConfig& m : config.model()) {
    const absl::Time start = absl::Now();
    ModelHostOptions host_options = options_.host;
    host_options.config = m;
    absl::StatusOr<std::unique_ptr<ModelHost>> host = ModelHost::Create(host_options);
    if (!host.ok()) return host.status();
    const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
    const ModelHost& h = **host;
    Log("info", "model_loaded",
        {{"model", m.name()},
         {"version", m.version()},
         {"variant", h.architecture().variant},
         {"classes", absl::StrCat(h.architecture().num_classes)},
         {"cpu_fast_path", h.Info().cpu_fast_path() ? "true" : "false"},
         {"compute_dtype", h.Info().compute_dtype()},
         {"checkpoint", m.checkpoint()},
         {"golden_cases", absl::StrCat(m.golden_size())},
         {"seconds", absl::StrFormat("%.2f", seconds)}});
    SetReadyWithHeads(h, true, seconds);
    absl::MutexLock lock(&mu_);
    Entry& e = models_[m.name()].versions[m.version()];
    e.config = m;
    e.host = Own(*std::move(host));
  }
  absl::MutexLock lock(&mu_);
  default_model_ = config.default_model();
  for (const DefaultVersion& d : config.default_version()) {
    models_[d.model()].default_selector = d.version();
  }
  return absl::OkStatus();
}

void ModelRepository::ForgetStaleDefault(const std::string& name, Model& model) const {
  if (model.default_selector.empty() || Select(model, "") != nullptr) return;
  // The pinned default version (or label) is gone: the latest serves by default again.
  Log("warning", "default_version_gone", {{"model", name}, {"version", model.default_selector}});
  model.default_selector.clear();
}

const ModelRepository::Entry* ModelRepository::Select(const Model& model,
                                                      absl::string_view version) const {
  const std::string selector = version.empty() ? model.default_selector : std::string(version);
  if (selector.empty()) {  // The latest version that serves.
    for (auto it = model.versions.rbegin(); it != model.versions.rend(); ++it) {
      if (it->second.host != nullptr) return &it->second;
    }
    return model.versions.empty() ? nullptr : &model.versions.rbegin()->second;
  }
  if (auto it = model.versions.find(selector); it != model.versions.end()) return &it->second;
  for (const auto& [v, entry] : model.versions) {
    const auto& labels = entry.config.version_labels();
    if (std::find(labels.begin(), labels.end(), selector) != labels.end()) return &entry;
  }
  return nullptr;
}

absl::StatusOr<std::shared_ptr<ModelHost>> ModelRepository::Find(absl::string_view name,
                                                                 absl::string_view version) const {
  auto [model_name, selector] = SplitSelector(name, version);
  absl::ReaderMutexLock lock(&mu_);
  if (model_name.empty()) model_name = default_model_;
  auto it = models_.find(model_name);
  const std::pair<const std::string, Model>* model =
      it != models_.end() ? &*it : TrunkOf(model_name);
  if (model == nullptr || model->second.versions.empty()) {
    return absl::NotFoundError(absl::StrCat("no model named ", Quoted(model_name),
                                            "; ListModels shows the models served"));
  }
  const bool is_head = model->first != model_name;
  const Entry* entry = model->first == model_name ? Select(model->second, selector)
                                                  : SelectHead(model->second, selector, model_name);
  if (entry == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("model ", Quoted(model_name), " has no version or version label ",
                     Quoted(selector.empty() ? model->second.default_selector : selector)));
  }
  if (is_head && !Declares(entry->config, model_name)) {
    return absl::NotFoundError(absl::StrCat("head ", Quoted(model_name), " is not served by model ",
                                            Quoted(model->first), " version ",
                                            entry->config.version()));
  }
  if (entry->host == nullptr) {
    return absl::UnavailableError(absl::StrCat(
        "model ", Quoted(model_name), " version ", entry->config.version(), " is not serving: ",
        entry->loading ? "it is loading" : absl::StrCat("its load failed: ", entry->error)));
  }
  if (!is_head) return entry->host;
  ModelHost* view = entry->host->head(model_name);
  if (view == nullptr) {  // Declared by a reload that is not serving yet.
    return absl::UnavailableError(absl::StrCat("head ", Quoted(model_name), " of model ",
                                               Quoted(model->first), " version ",
                                               entry->config.version(), " is not serving yet"));
  }
  // Shares the trunk's ownership: the trunk lives (and drains) while anyone holds its head.
  return std::shared_ptr<ModelHost>(entry->host, view);
}

const std::pair<const std::string, ModelRepository::Model>* ModelRepository::TrunkOf(
    absl::string_view name) const {
  // A model serving the head first: a version that failed to load or is loading with it must
  // not take a head's name from the model that serves it.
  const std::pair<const std::string, Model>* declared = nullptr;
  for (const auto& model : models_) {
    for (const auto& [v, entry] : model.second.versions) {
      if (!Declares(entry.config, name)) continue;
      if (entry.host != nullptr) return &model;
      if (declared == nullptr) declared = &model;
    }
  }
  return declared;
}

const ModelRepository::Entry* ModelRepository::SelectHead(const Model& model,
                                                          absl::string_view version,
                                                          absl::string_view head) const {
  const Entry* entry = Select(model, version);
  if (!version.empty() || (entry != nullptr && Declares(entry->config, head))) return entry;
  // The model's default version does not declare the head: the latest serving one that does.
  for (auto it = model.versions.rbegin(); it != model.versions.rend(); ++it) {
    if (it->second.host != nullptr && Declares(it->second.config, head)) return &it->second;
  }
  return entry;
}

absl::Status ModelRepository::CheckNames(const ModelConfig& config) const {
  if (const auto* trunk = TrunkOf(config.name()); trunk != nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model ", Quoted(config.name()), ": the name is a head of model ", Quoted(trunk->first)));
  }
  for (const HeadConfig& h : config.head()) {
    if (models_.count(h.name()) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("model ", Quoted(config.name()), ": head ",
                                                     Quoted(h.name()), " is the name of a model"));
    }
    const auto* trunk = TrunkOf(h.name());
    if (trunk != nullptr && trunk->first != config.name()) {
      return absl::InvalidArgumentError(absl::StrCat("model ", Quoted(config.name()), ": head ",
                                                     Quoted(h.name()), " is a head of model ",
                                                     Quoted(trunk->first)));
    }
  }
  return absl::OkStatus();
}

absl::Status ModelRepository::CheckMemoryFor(const ModelConfig& config) const {
  if (options_.memory_limit_bytes <= 0) return absl::OkStatus();
  struct stat st;
  if (::stat(config.checkpoint().c_str(), &st) != 0) return absl::OkStatus();  // Load says why.
  // The weights as loaded, and about as much again while the file is read and converted; then
  // each head's checkpoint is read whole (one at a time) and its trunk fingerprinted.
  int64_t largest_head = 0;
  for (const HeadConfig& h : config.head()) {
    struct stat hs;
    if (::stat(h.checkpoint().c_str(), &hs) == 0)
      largest_head = std::max<int64_t>(largest_head, hs.st_size);
  }
  const int64_t need = int64_t{2} * st.st_size + int64_t{2} * largest_head;
  const int64_t resident = ResidentBytes();
  if (resident + need > options_.memory_limit_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("loading needs about ", need >> 20, " MiB beside the ", resident >> 20,
                     " MiB in use, more than the memory limit (", options_.memory_limit_bytes >> 20,
                     " MiB); unload a version first"));
  }
  return absl::OkStatus();
}

void ModelRepository::Load(const ModelConfig& config, bool make_default, LoadDone done) {
  bool stopping;
  absl::Status names;
  {
    absl::MutexLock lock(&mu_);
    stopping = stopping_;
    // Refused at once when the names clash with what is configured or asked for now, so that a
    // refused load never shows (or shadows a head) while it waits; RunLoad checks again.
    names = CheckNames(config);
    if (!stopping && names.ok()) {
      Entry& e = models_[config.name()].versions[config.version()];
      if (e.host == nullptr) e.config = config;  // A new version shows as LOADING at once.
      e.loading = true;
    }
  }
  if (stopping) {
    done(absl::UnavailableError("the server is shutting down"));
    return;
  }
  if (!names.ok()) {
    done(names);
    return;
  }
  // The load itself on a thread of its own, whose intra-op threads (loading, warm-up) end with
  // it, not on the loader's, which lives as long as the server (see RunOnThreadOfItsOwn).
  loader_->Schedule([this, config, make_default, done = std::move(done)] {
    RunOnThreadOfItsOwn([&] { RunLoad(config, make_default, done); });
  });
}

void ModelRepository::RunLoad(const ModelConfig& config, bool make_default, const LoadDone& done) {
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<ModelHost>> host = absl::UnavailableError("shutting down");
  bool stopping;
  // Names are checked again here, on the loader thread, where loads install one at a time: two
  // loads that passed Load()'s check together (a reload that adds a head, a new model of that
  // name) cannot both install.
  absl::Status names;
  {
    absl::MutexLock lock(&mu_);
    stopping = stopping_;
    names = CheckNames(config);
  }
  if (!stopping && !names.ok()) {
    host = names;
  } else if (!stopping) {
    if (absl::Status fits = CheckMemoryFor(config); !fits.ok()) {
      host = absl::Status(fits.code(), absl::StrCat("model '", config.name(), "' version ",
                                                    config.version(), ": ", fits.message()));
    } else {
      ModelHostOptions host_options = options_.host;
      host_options.config = config;
      host = ModelHost::Create(host_options);
    }
  }
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  std::shared_ptr<ModelHost> old;  // Released after the lock: its deleter retires it.
  absl::StatusOr<LoadResult> result = absl::UnknownError("not loaded");
  std::shared_ptr<ModelHost> loaded;  // The new host, for its ready gauges after the lock.
  {
    absl::MutexLock lock(&mu_);
    Model& model = models_[config.name()];
    Entry& e = model.versions[config.version()];
    e.loading = false;
    if (host.ok() && stopping_) host = absl::UnavailableError("the server is shutting down");
    if (host.ok()) {
      LoadResult r;
      r.seconds = seconds;
      r.replaced = e.host != nullptr;
      old = std::move(e.host);
      e.host = Own(*std::move(host));
      loaded = e.host;
      e.config = config;
      e.error.clear();
      if (make_default) model.default_selector = config.version();
      ForgetStaleDefault(config.name(), model);  // The reload may have dropped a label.
      r.info = InfoOf(config.name(), config.version(), model, e);
      result = std::move(r);
    } else if (!names.ok() && e.host == nullptr &&
               e.config.SerializeAsString() == config.SerializeAsString()) {
      // Refused for its name, and no other load of this version is waiting (Load() keeps the
      // last config asked for): no entry is left to shadow the head or model that has it.
      result = names;
      model.versions.erase(config.version());
      if (model.versions.empty()) models_.erase(config.name());
    } else {
      e.error = std::string(host.status().message());
      result = host.status();
      if (e.host == nullptr) e.config = config;
    }
  }
  const bool ok = result.ok();
  if (ok) {
    SetReadyWithHeads(*loaded, true, seconds);
    // A head the reload dropped (same name and version: the same gauge) serves no more.
    if (old != nullptr) {
      for (const ModelHost* head : old->heads()) {
        if (loaded->head(head->name()) == nullptr) SetModelReady(head->metrics(), false, -1);
      }
    }
  }
  loaded.reset();
  RecordModelLoad(config.name(), ok);
  Log(ok ? "info" : "error", ok ? "model_loaded" : "model_load_failed",
      {{"model", config.name()},
       {"version", config.version()},
       {"checkpoint", config.checkpoint()},
       {"replaced", ok && result->replaced ? "true" : "false"},
       {"compute_dtype", ok ? result->info.compute_dtype() : ""},
       {"seconds", absl::StrFormat("%.2f", seconds)},
       {"message", ok ? "" : std::string(result.status().message())}});
  old.reset();
  done(std::move(result));
}

absl::StatusOr<std::vector<std::string>> ModelRepository::Unload(const std::string& name,
                                                                 const std::string& version) {
  std::vector<std::shared_ptr<ModelHost>> released;  // Retired after the lock.
  std::vector<std::string> unloaded;
  {
    absl::MutexLock lock(&mu_);
    auto it = models_.find(name);
    if (it == models_.end()) {
      if (const auto* trunk = TrunkOf(name); trunk != nullptr) {
        return absl::FailedPreconditionError(
            absl::StrCat(Quoted(name), " is a head of model ", Quoted(trunk->first),
                         ": it unloads with it (or reload ", Quoted(trunk->first), " without it)"));
      }
      return absl::NotFoundError(absl::StrCat("no model named ", Quoted(name)));
    }
    Model& model = it->second;
    if (!version.empty() && model.versions.count(version) == 0) {
      return absl::NotFoundError(
          absl::StrCat("model ", Quoted(name), " has no version ", Quoted(version)));
    }
    for (auto v = model.versions.begin(); v != model.versions.end();) {
      if (!version.empty() && v->first != version) {
        ++v;
        continue;
      }
      if (v->second.loading) {
        return absl::FailedPreconditionError(
            absl::StrCat("model ", Quoted(name), " version ", v->first,
                         " is loading; unload it when it is done"));
      }
      unloaded.push_back(v->first);
      if (v->second.host != nullptr) {
        SetReadyWithHeads(*v->second.host, false, -1);
        released.push_back(std::move(v->second.host));
      }
      v = model.versions.erase(v);
    }
    if (model.versions.empty()) {
      models_.erase(it);
    } else {
      ForgetStaleDefault(name, model);
    }
  }
  for (const std::string& v : unloaded) {
    Log("info", "model_unloaded", {{"model", name}, {"version", v}});
  }
  return unloaded;
}

absl::StatusOr<std::string> ModelRepository::SetDefaultVersion(const std::string& name,
                                                               const std::string& selector) {
  absl::MutexLock lock(&mu_);
  auto it = models_.find(name);
  if (it == models_.end()) {
    if (const auto* trunk = TrunkOf(name); trunk != nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat(Quoted(name), " is a head of model ", Quoted(trunk->first),
                       ": it serves that model's default version; set the default version there"));
    }
    return absl::NotFoundError(absl::StrCat("no model named ", Quoted(name)));
  }
  if (!selector.empty() && Select(it->second, selector) == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("model ", Quoted(name), " has no version or label ", Quoted(selector)));
  }
  it->second.default_selector = selector;
  const Entry* now = Select(it->second, "");
  return now != nullptr ? now->config.version() : std::string();
}

absl::Status ModelRepository::SetDefaultModel(const std::string& name) {
  absl::MutexLock lock(&mu_);
  if (models_.count(name) == 0 && TrunkOf(name) == nullptr)
    return absl::NotFoundError(absl::StrCat("no model named ", Quoted(name)));
  default_model_ = name;
  return absl::OkStatus();
}

void ModelRepository::AfterLoads(std::function<void()> fn) { loader_->Schedule(std::move(fn)); }

v1::ModelInfo ModelRepository::InfoOf(const std::string& name, const std::string& version,
                                      const Model& model, const Entry& entry) const {
  v1::ModelInfo info;
  if (entry.host != nullptr) {
    info = entry.host->Info();
  } else {
    info.set_name(name);
    info.set_version(version);
    info.set_checkpoint_path(entry.config.checkpoint());
    for (const std::string& l : entry.config.version_labels()) info.add_version_labels(l);
  }
  info.set_state(entry.host != nullptr ? v1::READY : entry.loading ? v1::LOADING : v1::FAILED);
  if (entry.loading && entry.host != nullptr) {
    info.set_state_reason("serving; a reload is in progress");
  } else if (!entry.error.empty()) {
    info.set_state_reason(entry.host != nullptr
                              ? absl::StrCat("serving; the last reload failed: ", entry.error)
                              : entry.error);
  }
  info.set_ready(entry.host != nullptr && entry.host->ready());
  info.set_default_version(Select(model, "") == &entry);
  return info;
}

v1::ModelInfo ModelRepository::HeadInfoOf(const std::string& head, const std::string& trunk,
                                          const Model& model, const Entry& entry) const {
  const v1::ModelInfo of_trunk = InfoOf(trunk, entry.config.version(), model, entry);
  const ModelHost* view = entry.host != nullptr ? entry.host->head(head) : nullptr;
  v1::ModelInfo info;
  if (view != nullptr) {
    info = view->Info();
  } else {  // Loading, failed, or declared by a reload in progress.
    info.set_name(head);
    info.set_version(entry.config.version());
    info.set_trunk_model(trunk);
    for (const HeadConfig& h : entry.config.head()) {
      if (h.name() == head) info.set_checkpoint_path(h.checkpoint());
    }
  }
  info.set_state(view != nullptr ? of_trunk.state() : entry.loading ? v1::LOADING : v1::FAILED);
  info.set_state_reason(of_trunk.state_reason());
  info.set_ready(view != nullptr && view->ready());
  info.set_default_version(SelectHead(model, "", head) == &entry);
  return info;
}

std::vector<v1::ModelInfo> ModelRepository::List() const {
  std::vector<v1::ModelInfo> out;
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [name, model] : models_) {
      for (const auto& [v, entry] : model.versions) {
        out.push_back(InfoOf(name, v, model, entry));
        for (const HeadConfig& h : entry.config.head()) {
          out.push_back(HeadInfoOf(h.name(), name, model, entry));
        }
      }
    }
  }
  absl::ReaderMutexLock free_lock(&reaper_->free_mu);
  for (ModelHost* host : reaper_->Draining()) {
    v1::ModelInfo info = host->Info();
    info.set_state(v1::DRAINING);
    info.set_ready(false);
    info.set_state_reason(absl::StrCat("finishing ", host->pending_images(), " admitted images"));
    out.push_back(std::move(info));
  }
  return out;
}

absl::StatusOr<v1::ModelInfo> ModelRepository::Describe(absl::string_view name,
                                                        absl::string_view version) const {
  auto [model_name, selector] = SplitSelector(name, version);
  absl::ReaderMutexLock lock(&mu_);
  if (model_name.empty()) model_name = default_model_;
  auto it = models_.find(model_name);
  const std::pair<const std::string, Model>* model =
      it != models_.end() ? &*it : TrunkOf(model_name);
  if (model == nullptr) {
    return absl::NotFoundError(absl::StrCat("no model named ", Quoted(model_name),
                                            "; ListModels shows the models served"));
  }
  const Entry* entry = model->first == model_name ? Select(model->second, selector)
                                                  : SelectHead(model->second, selector, model_name);
  if (entry == nullptr) {
    return absl::NotFoundError(absl::StrCat("model ", Quoted(model_name),
                                            " has no version or version label ", Quoted(selector)));
  }
  if (model->first == model_name) {
    return InfoOf(model_name, entry->config.version(), model->second, *entry);
  }
  if (!Declares(entry->config, model_name)) {
    return absl::NotFoundError(absl::StrCat("head ", Quoted(model_name), " is not served by model ",
                                            Quoted(model->first), " version ",
                                            entry->config.version()));
  }
  return HeadInfoOf(model_name, model->first, model->second, *entry);
}

std::string ModelRepository::default_model() const {
  absl::ReaderMutexLock lock(&mu_);
  return default_model_;
}

std::map<std::pair<std::string, std::string>, ModelConfig> ModelRepository::Configs() const {
  absl::ReaderMutexLock lock(&mu_);
  std::map<std::pair<std::string, std::string>, ModelConfig> out;
  for (const auto& [name, model] : models_) {
    for (const auto& [v, entry] : model.versions) out[{name, v}] = entry.config;
  }
  return out;
}

bool ModelRepository::AllReady() const {
  absl::ReaderMutexLock lock(&mu_);
  if (stopping_) return false;
  for (const auto& [name, model] : models_) {
    // A version loading or failed beside a serving one does not make the server unready.
    const bool serving = std::any_of(
        model.versions.begin(), model.versions.end(),
        [](const auto& v) { return v.second.host != nullptr && v.second.host->ready(); });
    if (!serving) return false;
  }
  return true;
}

void ModelRepository::StopAdmitting() {
  absl::MutexLock lock(&mu_);
  stopping_ = true;
  for (auto& [name, model] : models_) {
    for (auto& [v, entry] : model.versions) {
      if (entry.host == nullptr) continue;
      entry.host->StopAdmitting();
      SetReadyWithHeads(*entry.host, false, -1);
    }
  }
}

bool ModelRepository::WaitUntilIdle(absl::Time deadline) const {
  std::vector<std::shared_ptr<ModelHost>> hosts;
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [name, model] : models_) {
      for (const auto& [v, entry] : model.versions) {
        if (entry.host != nullptr) hosts.push_back(entry.host);
      }
    }
  }
  bool idle = true;
  for (const auto& host : hosts) idle = host->WaitUntilIdle(deadline) && idle;
  // Retired hosts still finishing their calls (the reaper frees none of them while free_mu is
  // held).
  absl::ReaderMutexLock free_lock(&reaper_->free_mu);
  for (ModelHost* host : reaper_->Draining()) idle = host->WaitUntilIdle(deadline) && idle;
  return idle;
}

int64_t ModelRepository::pending_images() const {
  int64_t n = 0;
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [name, model] : models_) {
      for (const auto& [v, entry] : model.versions) {
        if (entry.host != nullptr) n += entry.host->pending_images();
      }
    }
  }
  absl::ReaderMutexLock free_lock(&reaper_->free_mu);
  for (ModelHost* host : reaper_->Draining()) n += host->pending_images();
  return n;
}

void ModelRepository::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  loader_.reset();  // Runs what is queued (refused: stopping) and joins.
  std::vector<std::shared_ptr<ModelHost>> hosts;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [name, model] : models_) {
      for (auto& [v, entry] : model.versions) {
        if (entry.host != nullptr) hosts.push_back(std::move(entry.host));
      }
    }
  }
  for (auto& host : hosts) host->Shutdown();  // Computes what it holds; stops its executors.
  hosts.clear();                              // Retired: the reaper frees them.
  reaper_->Stop();
}

}  // namespace convnext::server
