// ConfigWatch: applies edits of convnext-server's config file to the served models while it runs
// (--watch_config). A thread reads the file every `interval`; an edit is taken once the file has
// stayed the same for one more interval (an editor or a ConfigMap update writing it in steps is
// not read half-way); it is parsed, normalised and validated whole before anything changes, and a
// bad edit is logged (config_rejected) and ignored, the models serving on as before.
//
// A valid edit is applied through the ModelRepository, with no call lost: versions that are new
// or whose model config changed are loaded (each swapped in when ready), then versions no longer
// in the file are unloaded (after the loads, so that a version replaced by another keeps serving
// until its successor is ready), and default_model / default_version are set. Server-wide fields
// (threads, limits) need a restart: a change to them is logged and ignored.
#ifndef CONVNEXT_SERVER_CONFIG_WATCH_H_
#define CONVNEXT_SERVER_CONFIG_WATCH_H_

#include <string>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/config.pb.h"
#include "server/model_repository.h"

namespace convnext::server {

struct ConfigWatchOptions {
  std::string path;
  absl::Duration interval = absl::Seconds(2);
  ServerConfig applied;      // The config serving now (normalised).
  int64_t memory_bytes = 0;  // For NormalizeConfig (0: twice applied.max_memory_bytes).
};

class ConfigWatch {
 public:
  // Starts watching. `models` outlives the watch.
  ConfigWatch(ModelRepository* models, ConfigWatchOptions options);
  // Stops the thread (an edit being applied finishes its loads in the repository).
  ~ConfigWatch();
  ConfigWatch(const ConfigWatch&) = delete;
  ConfigWatch& operator=(const ConfigWatch&) = delete;

 private:
  void Run();
  void Poll();
  void Apply(const ServerConfig& config);

  ModelRepository* const models_;
  ConfigWatchOptions options_;
  std::string seen_text_;     // The text last acted on (applied or rejected).
  std::string pending_text_;  // A changed text waiting to stay the same for one interval.
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace convnext::server

#endif  // CONVNEXT_SERVER_CONFIG_WATCH_H_
