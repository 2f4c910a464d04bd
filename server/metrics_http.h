// MetricsHttpServer: a minimal HTTP/1.1 responder for Prometheus scrapes. GET /metrics answers
// 200 with the text that `render` returns (Prometheus text format 0.0.4); any other path 404.
// One connection at a time on one thread: scrapes are rare (seconds apart) and small, and the
// request path of the gRPC service never touches this thread.
//
// Hand-written because prometheus-cpp's Exposer (civetweb) cannot start in a process linked with
// Debian's libtorch_cpu (see metrics.h).
#ifndef CONVNEXT_SERVER_METRICS_HTTP_H_
#define CONVNEXT_SERVER_METRICS_HTTP_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

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

 private:
  MetricsHttpServer(int fd, int port, RenderFn render);
  void Serve();
  void Answer(int client) const;

  const int fd_;
  const int port_;
  const RenderFn render_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace convnext::server

#endif  // CONVNEXT_SERVER_METRICS_HTTP_H_
