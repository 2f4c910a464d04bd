// Server: the whole serving process in one object. Create() assembles it bottom up: process
// tuning (intra-op threads), the metrics endpoint, the preprocessing pool, one ModelHost per
// configured model (loaded and warmed up), the gRPC services (ImageModelService, the Open
// Inference Protocol's GRPCInferenceService, health, reflection) and the gRPC server; when it
// returns OK, health says SERVING. Drain() is the one shutdown, in this order:
//
//   1. the config watch stops; health NOT_SERVING; every model stops admitting (new calls:
//      UNAVAILABLE "shutting down") and loads are refused;
//   2. wait until every admitted image is answered, or the deadline;
//   3. gRPC Shutdown(deadline): no new calls, running ones finish, whatever is left at the deadline
//      is cancelled; the HTTP endpoint stops (its connections' answers were admitted in step 2);
//   4. the preprocessing pool finishes its queue (images still being prepared reach the batchers);
//   5. every model host computes what it still holds and stops its executors (the repository's
//      Shutdown: its loader, its hosts, its reaper);
//   6. gRPC Wait, metrics endpoint stopped.
//
// convnext-server's main, the serving benchmark and the end-to-end tests all use this object, so
// that they exercise the same wiring and the same shutdown.
//
// Thread-safe: Drain() may be called from any thread, once (the destructor drains with an
// immediate deadline if it was not called).
#ifndef CONVNEXT_SERVER_SERVER_H_
#define CONVNEXT_SERVER_SERVER_H_

#include <grpcpp/grpcpp.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "model/batch.h"
#include "server/config.pb.h"
#include "server/config_watch.h"
#include "server/memory_budget.h"
#include "server/metrics.h"
#include "server/model_control.h"
#include "server/model_host.h"
#include "server/model_repository.h"
#include "server/oip_http.h"
#include "server/oip_service.h"
#include "server/service.h"
#include "server/thread_pool.h"

namespace convnext::server {

struct ServerOptions {
  // gRPC listening address; port 0 picks a free port (see Server::port()).
  std::string host = "0.0.0.0";
  int port = 50051;
  // Prometheus /metrics endpoint; port 0 picks a free port; -1 disables metrics (then every
  // Record function is a no-op).
  std::string metrics_host = "0.0.0.0";
  int metrics_port = 9090;
  // The Open Inference Protocol over HTTP/REST (oip_http.h): an IPv4 address and a port; port 0
  // picks a free port; -1 (the default here; convnext-server's --http_port is 8000) disables it.
  std::string http_host = "0.0.0.0";
  int http_port = -1;
  // Time a client has to send a whole HTTP request (OipHttpOptions::read_deadline).
  absl::Duration http_read_deadline = absl::Seconds(30);
  // HTTPS for it when both are set, mutual TLS with the client CA (PEM text; convnext-server uses
  // --tls_cert, --tls_key and --tls_client_ca).
  std::string http_tls_cert_pem;
  std::string http_tls_key_pem;
  std::string http_tls_client_ca_pem;
  // What build_info reports (the binary's version and the LibTorch it was built against).
  std::string version = "unknown";
  std::string libtorch_version = "unknown";
  // Transport security; null means plaintext (grpc::InsecureServerCredentials()).
  std::shared_ptr<grpc::ServerCredentials> credentials;
  // Connection management (gRPC channel arguments). The server pings an idle connection every
  // keepalive_time_ms and drops it if no answer comes within keepalive_timeout_ms (dead clients
  // and half-open connections do not hold streams for ever); a client may ping no more often than
  // min_client_ping_interval_ms (more is a ping flood: the connection is closed after two
  // strikes). A connection idle for max_connection_idle_ms is closed; one older than
  // max_connection_age_ms is asked to reconnect (GOAWAY), with max_connection_age_grace_ms for its
  // calls to finish, so that clients spread over new replicas behind a load balancer.
  int keepalive_time_ms = 60'000;
  int keepalive_timeout_ms = 20'000;
  int min_client_ping_interval_ms = 10'000;
  int max_connection_idle_ms = 30 * 60'000;
  int max_connection_age_ms = 60 * 60'000;
  int max_connection_age_grace_ms = 60'000;
  // Log one line per call (ServiceOptions::access_log).
  bool access_log = false;
  // Fault injection for tests, given to every model host (ModelHostOptions). Unset in production.
  BeforeForwardFn before_forward_for_testing;
  // The memory the process may use (server/machine.h), for defaults of models loaded at run time
  // and the check that a load fits; 0: no check.
  int64_t memory_limit_bytes = 0;
  // The ModelControl service (model_control.h): off unless enabled; with
  // `control_require_identity` (mutual TLS), only clients whose certificate names one of
  // `control_clients` may use it.
  bool enable_model_control = false;
  bool control_require_identity = false;
  std::vector<std::string> control_clients;
  // Watch this config file and apply valid edits to the models (config_watch.h); empty: off.
  std::string watch_config_path;
  absl::Duration watch_interval = absl::Seconds(2);
};

class Server {
 public:
  // `config` must be normalised and valid (NormalizeConfig, ValidateServerConfig). Errors name
  // the model or the address at fault; nothing is left running on error.
  static absl::StatusOr<std::unique_ptr<Server>> Create(const ServerConfig& config,
                                                        const ServerOptions& options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // The gRPC port and the metrics port (-1 when metrics are off).
  int port() const { return port_; }
  int metrics_port() const;
  // The HTTP/REST port; -1 when disabled.
  int http_port() const { return http_ != nullptr ? http_->port() : -1; }
  // The serving host of a model's default version, or null.
  std::shared_ptr<ModelHost> model(const std::string& name) const;
  // Every version served, and the one place that changes them.
  ModelRepository* repository() const { return repository_.get(); }

  // The graceful shutdown described above; admitted work gets until `deadline`. Returns the
  // number of images still unanswered when the wait of step 2 ended (0 after a clean drain).
  // Idempotent: later calls return 0 at once.
  int64_t Drain(absl::Time deadline);

 private:
  Server() = default;

  int port_ = 0;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<ThreadPool> preprocess_pool_;
  std::unique_ptr<MemoryBudget> memory_;  // max_memory_bytes; the hosts' budgets nest in it.
  std::unique_ptr<ModelRepository> repository_;
  std::unique_ptr<ImageModelServiceImpl> service_;
  std::unique_ptr<ModelControlServiceImpl> control_;
  std::unique_ptr<OipModels> oip_models_;        // The Open Inference Protocol's view.
  std::unique_ptr<OipServiceImpl> oip_service_;  // Its gRPC front end, same port.
  std::unique_ptr<OipHttpServer> http_;          // Its HTTP front end; null when disabled.
  std::unique_ptr<grpc::Server> grpc_server_;
  std::unique_ptr<ConfigWatch> watch_;  // Null unless watching.

  absl::Mutex drain_mu_;
  bool drained_ ABSL_GUARDED_BY(drain_mu_) = false;
};

}  // namespace convnext::server

#endif  // CONVNEXT_SERVER_SERVER_H_
