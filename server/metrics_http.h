// MetricsHttpServer: a minimal HTTP/1.1 responder for Prometheus scrapes. GET /metrics answers
// 200 with the text that `render` returns (Prometheus text format 0.0.4); any other path 404.
// Connections are served concurrently, each on its own thread (at most kMaxConnections at once;
// more are closed at once), and each has an absolute deadline (kConnectionDeadline) for reading
// the request and writing the answer, so that a client trickling bytes cannot hold the endpoint
// (and blind Prometheus and the autoscalers fed by it). The gRPC request path never touches these
// threads.
//
// Hand-written because prometheus-cpp's Exposer (civetweb) cannot start in a process linked with
// Debian's libtorch_cpu (see metrics.h), and the HTTP libraries Debian has (cpp-httplib,
// libmicrohttpd) time out only on inactivity between reads, not on a connection's whole life.
#ifndef CONVNEXT_SERVER_METRICS_HTTP_H_
#define CONVNEXT_SERVER_METRICS_HTTP_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace convnext::server {

class MetricsHttpServer {
 public:
  using RenderFn = std::function<std::string()>;

  // Listens on `bind_address` ("host:port"; port 0 picks a free one).
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(const std::string& bind_address,
                                                                  RenderFn render);
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  int port() const { return port_; }

  // Connections served at once; the next one is closed without an answer.
  static constexpr int kMaxConnections = 32;
  // The whole life of a connection: reading the request and writing the answer.
  static constexpr absl::Duration kConnectionDeadline = absl::Seconds(5);

 private:
  MetricsHttpServer(int fd, int port, RenderFn render);
  void Serve();
  void Answer(int client, absl::Time deadline) const;

  const int fd_;
  const int port_;
  const RenderFn render_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;  // Accepts.

  absl::Mutex mu_;
  int connections_ ABSL_GUARDED_BY(mu_) = 0;  // Being answered, each on a detached thread.
};

}  // namespace convnext::server

#endif  // CONVNEXT_SERVER_METRICS_HTTP_H_
