// ModelRepository: every served model version, and the one place where they change at run time.
//
// A model name serves one or more versions (ModelConfig.version; labels such as "stable" select
// a version too); an empty version selects the model's default version: the one set by
// SetDefaultVersion (ServerConfig.default_version at start-up), else the latest ready one (the
// greatest version, compared as numbers when both are).
//
// Zero-loss changes. A request holds its version's ModelHost through a shared_ptr from Find()
// until its handler has admitted it, and the host keeps admitting for as long as anyone holds it.
// A load (or reload) builds the new host on the loader thread (loading, warm-up and golden
// self-test) while the old one serves; the switch is one pointer swap under the lock. The
// repository then drops its reference to the old host; when the last handler that found it has
// admitted its request, the host's deleter hands it to the reaper thread, which stops its
// admission, waits until every image it admitted is answered (state DRAINING meanwhile), and
// frees it. No call is refused or lost because of a change: a call finds either the old version
// (which answers it) or the new one. A failed load changes nothing that serves.
//
// Heads (ModelConfig.head) are served under their own names as views of their trunk's host
// (ModelHost::head): a head's versions are its trunk model's versions that declare it, selected
// as the trunk's are (its default version is the trunk model's, or the latest serving version
// that declares it when that one does not); it loads, reloads, drains and unloads with them.
// Head names are checked when a load is asked for and again when it runs.
// Find() hands out a head's view through a shared_ptr that shares its trunk host's ownership. A
// head's name is unique among every model and head.
//
// Thread-safe. Loads run one at a time, in the order they were asked for.
#ifndef CONVNEXT_SERVER_MODEL_REPOSITORY_H_
#define CONVNEXT_SERVER_MODEL_REPOSITORY_H_

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "convnext/v1/image_model.pb.h"
#include "server/config.pb.h"
#include "server/model_host.h"
#include "server/thread_pool.h"

namespace convnext::server {

// Orders version names: as numbers when both are decimal digits, else as text.
bool VersionLess(const std::string& a, const std::string& b);

struct ModelRepositoryOptions {
  // What every model host gets beside its own config (ModelHostOptions; `config` is ignored).
  ModelHostOptions host;
  // The memory the process may use (the cgroup's limit, else the machine's), for the check that a
  // load fits beside the versions already serving; 0: no check.
  int64_t memory_limit_bytes = 0;
};

class ModelRepository {
 public:
  explicit ModelRepository(ModelRepositoryOptions options);
  // Shutdown().
  ~ModelRepository();
  ModelRepository(const ModelRepository&) = delete;
  ModelRepository& operator=(const ModelRepository&) = delete;

  // Start-up: loads every model version of `config` (normalised, valid) on this thread, in
  // order; the first failure is returned (nothing of this config serves then). Sets the default
  // model and default versions.
  absl::Status LoadInitial(const ServerConfig& config);

  // The serving host of `name` (empty: the default model; "name:version" is accepted when
  // `version` is empty) at `version` (a version or a label; empty: the default version).
  // NOT_FOUND when there is no such model, version or label; UNAVAILABLE when the version is
  // loading or failed.
  absl::StatusOr<std::shared_ptr<ModelHost>> Find(absl::string_view name,
                                                  absl::string_view version) const;

  struct LoadResult {
    v1::ModelInfo info;     // The version serving now.
    double seconds = 0;     // Loading, warm-up, golden self-test.
    bool replaced = false;  // A host of the same name and version was swapped out.
  };
  using LoadDone = std::function<void(absl::StatusOr<LoadResult>)>;
  // Loads (or reloads) `config`'s version on the loader thread; `done` is called there with the
  // outcome. `config` must be normalised and valid. With `make_default`, the version becomes its
  // name's default version when ready.
  void Load(const ModelConfig& config, bool make_default, LoadDone done);
  // Stops serving `version` of `name` (every version when empty): the versions unloaded. Their
  // admitted calls finish (DRAINING) before they are freed.
  absl::StatusOr<std::vector<std::string>> Unload(const std::string& name,
                                                  const std::string& version);
  // The version or label an empty version of `name` selects; empty: the latest. Returns the
  // version it selects now.
  absl::StatusOr<std::string> SetDefaultVersion(const std::string& name,
                                                const std::string& selector);
  // Makes `name` the model an empty model name selects.
  absl::Status SetDefaultModel(const std::string& name);
  // Runs `fn` on the loader thread after every load asked for so far.
  void AfterLoads(std::function<void()> fn);

  // Every version known: serving, loading, failed and draining, by name then version.
  std::vector<v1::ModelInfo> List() const;
  // One version's description, whatever its state (GetModel): NOT_FOUND if unknown.
  absl::StatusOr<v1::ModelInfo> Describe(absl::string_view name, absl::string_view version) const;
  // The model an empty name selects.
  std::string default_model() const;
  // Every (name, version) configured now, with its config (the config watch diffs against it).
  std::map<std::pair<std::string, std::string>, ModelConfig> Configs() const;
  // Every model has a version serving (one loading or failed beside it does not count), and the
  // server is not shutting down.
  bool AllReady() const;

  // The graceful shutdown's steps (Server::Drain): stop admitting everywhere and refuse loads;
  // wait for admitted work; then stop the loader, the hosts and the reaper.
  void StopAdmitting();
  bool WaitUntilIdle(absl::Time deadline) const;
  int64_t pending_images() const;
  void Shutdown();

 private:
  // One (name, version).
  struct Entry {
    ModelConfig config;               // The last config asked for.
    std::shared_ptr<ModelHost> host;  // Serving; null while first loading or after a failure.
    bool loading = false;             // A load of it is queued or running.
    std::string error;                // Why the last load failed, if it did.
  };
  struct VersionOrder {
    bool operator()(const std::string& a, const std::string& b) const { return VersionLess(a, b); }
  };
  struct Model {
    std::map<std::string, Entry, VersionOrder> versions;  // Oldest first.
    std::string default_selector;                         // A version or label; empty: the latest.
  };

  // Wraps a new host in the shared_ptr whose deleter retires it (Reaper::Retire).
  std::shared_ptr<ModelHost> Own(std::unique_ptr<ModelHost> host);
  // Loader thread: one load.
  void RunLoad(const ModelConfig& config, bool make_default, const LoadDone& done);
  // The entry `version` selects in `model` (empty: the default); null if none.
  const Entry* Select(const Model& model, absl::string_view version) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Clears a default selector that no longer selects anything (its version unloaded, its label
  // dropped by a reload), so that the latest version serves by default again.
  void ForgetStaleDefault(const std::string& name, Model& model) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  v1::ModelInfo InfoOf(const std::string& name, const std::string& version, const Model& model,
                       const Entry& entry) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // The trunk model serving head `name` (the first model any of whose versions declares it), or
  // null.
  const std::pair<const std::string, Model>* TrunkOf(absl::string_view name) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // The entry serving head `head` of `model` at `version` (a version or label): as Select, except
  // that an empty version whose default does not declare the head selects the latest serving
  // version that does.
  const Entry* SelectHead(const Model& model, absl::string_view version,
                          absl::string_view head) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // INVALID_ARGUMENT if `config`'s name or heads' names clash with another model's or head's.
  absl::Status CheckNames(const ModelConfig& config) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // The description of head `head` of `entry` (of model `trunk`), in the entry's state.
  v1::ModelInfo HeadInfoOf(const std::string& head, const std::string& trunk, const Model& model,
                           const Entry& entry) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Why a load would not fit in memory now, or OK.
  absl::Status CheckMemoryFor(const ModelConfig& config) const;

  const ModelRepositoryOptions options_;

  mutable absl::Mutex mu_;
  std::map<std::string, Model> models_ ABSL_GUARDED_BY(mu_);
  std::string default_model_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  // Frees retired hosts once they have answered what they admitted. Shared with every host's
  // deleter, so that a host released after the repository is gone is still freed safely.
  struct Reaper;
  std::shared_ptr<Reaper> reaper_;
  std::unique_ptr<ThreadPool> loader_;  // One thread: loads, in order.
};

}  // namespace convnext::server

#endif  // CONVNEXT_SERVER_MODEL_REPOSITORY_H_
