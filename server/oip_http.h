// OipHttpServer: the Open Inference Protocol over HTTP/REST (KServe v2 `inference_rest.md`, with
// Triton's binary tensor, model configuration and statistics extensions), on its own port, over
// GNU libmicrohttpd (Debian's libmicrohttpd-dev). A front end of OipModels, like the gRPC
// service: the same models, admission, budgets, batcher and metrics.
//
//   GET  /v2                                            server metadata
//   GET  /v2/health/live | /v2/health/ready             200, or 503 when not ready
//   GET  /v2/models/{m}[/versions/{v}]                  model metadata
//   GET  /v2/models/{m}[/versions/{v}]/ready            200, or 503
//   GET  /v2/models/{m}[/versions/{v}]/config           Triton's model configuration
//   GET  /v2/models[/{m}[/versions/{v}]]/stats          Triton's statistics
//   POST /v2/models/{m}[/versions/{v}]/infer            inference (JSON or binary extension)
//
// Errors are {"error": "..."} with the status of HttpStatusOf (oip_rest.h). Limits: a body over
// `max_body_bytes` is refused with 413 before it is read, and the bodies held at once are bounded
// by `max_buffered_bytes` (503 past it); at most `max_connections` connections
// at once, each on its own thread (an inference blocks its connection's thread, never a model's);
// a connection idle for `idle_timeout` is closed, and one that has not sent a whole request within
// `read_deadline` (from its start, or from its previous answer) is closed by a watchdog, so that
// clients trickling bytes cannot hold the connections. TLS and mutual TLS as the gRPC port has
// them.
#ifndef CONVNEXT_SERVER_OIP_HTTP_H_
#define CONVNEXT_SERVER_OIP_HTTP_H_

#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "server/oip_models.h"

struct MHD_Daemon;
struct MHD_Connection;

namespace convnext::server {

struct OipHttpOptions {
  std::string host = "0.0.0.0";  // An IPv4 address.
  int port = 8000;               // 0 picks a free port.
  size_t max_body_bytes = 64 << 20;
  // Request bodies held at once over all connections (ServerConfig.transport_memory_bytes, as
  // gRPC's resource quota bounds the gRPC port): a body that would pass it is dropped as it
  // arrives and answered 503 (retry).
  size_t max_buffered_bytes = 256 << 20;
  int max_connections = 64;
  absl::Duration idle_timeout = absl::Seconds(30);
  absl::Duration read_deadline = absl::Seconds(30);
  // HTTPS when both are set (PEM text, the gRPC port's certificate and key).
  std::string tls_cert_pem;
  std::string tls_key_pem;
  // With HTTPS: mutual TLS. Every request must come over a connection whose client presented a
  // certificate that verifies against this CA (PEM); others get 403 before anything is read.
  std::string tls_client_ca_pem;
};

class OipHttpServer {
 public:
  // Starts serving `models` (which outlives the server). UNAVAILABLE if the address cannot be
  // bound.
  static absl::StatusOr<std::unique_ptr<OipHttpServer>> Start(const OipModels* models,
                                                              const OipHttpOptions& options);
  // Stops accepting and waits for the connections' threads.
  ~OipHttpServer();
  OipHttpServer(const OipHttpServer&) = delete;
  OipHttpServer& operator=(const OipHttpServer&) = delete;

  int port() const { return port_; }

 private:
  OipHttpServer(const OipModels* models, const OipHttpOptions& options)
      : models_(models), options_(options) {}

  // A connection as the read-deadline watchdog sees it.
  struct Tracked {
    int fd = -1;            // -1 once the watchdog has shut it down.
    absl::Time read_since;  // When it started, or sent its previous answer.
    bool busy = false;      // A whole request was read and is being answered.
  };
  void Watch();
  void SetBusy(MHD_Connection* connection, bool busy);
  // Reserves `bytes` of max_buffered_bytes if they fit now.
  bool ReserveBody(size_t bytes);
  void ReleaseBody(size_t bytes);

  const OipModels* const models_;
  const OipHttpOptions options_;  // The daemon reads its PEM strings for as long as it runs.
  MHD_Daemon* daemon_ = nullptr;
  int port_ = 0;
  absl::Mutex mu_;
  std::map<MHD_Connection*, Tracked> connections_ ABSL_GUARDED_BY(mu_);
  size_t buffered_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // Held request bodies (max_buffered_bytes).
  absl::Notification stop_;
  std::thread watchdog_;

  friend struct OipHttpHandler;
};

}  // namespace convnext::server

#endif  // CONVNEXT_SERVER_OIP_HTTP_H_
