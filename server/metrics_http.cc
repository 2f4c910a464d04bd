#include "server/metrics_http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace convnext::server {
namespace {

// Waits until `fd` is ready for `events` or `deadline` passes; false on timeout or error.
bool WaitFor(int fd, short events, absl::Time deadline) {
  while (true) {
    const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (ms <= 0) return false;
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(ms, 1000)));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return false;
  }
}

void WriteAll(int fd, const std::string& data, absl::Time deadline) {
  size_t done = 0;
  while (done < data.size() && WaitFor(fd, POLLOUT, deadline)) {
    const ssize_t n =
        ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& bind_address, RenderFn render) {
  const size_t colon = bind_address.rfind(':');
  int port = -1;
  if (colon == std::string::npos || !absl::SimpleAtoi(bind_address.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address '", bind_address, "' is not HOST:PORT"));
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  const std::string host = bind_address.substr(0, colon);
  if (::inet_pton(AF_INET, host.empty() ? "0.0.0.0" : host.c_str(), &addr.sin_addr) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics host '", host, "' is not an IPv4 address"));
  }
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(fd, 16) != 0) {
    const std::string error = std::strerror(errno);
    if (fd >= 0) ::close(fd);
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", bind_address, ": ", error));
  }
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  return std::unique_ptr<MetricsHttpServer>(
      new MetricsHttpServer(fd, ntohs(addr.sin_port), std::move(render)));
}

MetricsHttpServer::MetricsHttpServer(int fd, int port, RenderFn render)
    : fd_(fd), port_(port), render_(std::move(render)) {
  thread_ = std::thread([this] { Serve(); });
}

MetricsHttpServer::~MetricsHttpServer() {
  stopping_ = true;
  ::shutdown(fd_, SHUT_RDWR);
  thread_.join();
  ::close(fd_);
  // Connections still being answered end by their deadline.
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](int* connections) { return *connections == 0; }, &connections_));
}

void MetricsHttpServer::Serve() {
  while (!stopping_) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, 500) <= 0) continue;
    const int client = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) continue;
    const absl::Time deadline = absl::Now() + kConnectionDeadline;
    {
      absl::MutexLock lock(&mu_);
      if (connections_ >= kMaxConnections) {
        ::close(client);
        continue;
      }
      ++connections_;
    }
    std::thread([this, client, deadline] {
      Answer(client, deadline);
      ::close(client);
      absl::MutexLock lock(&mu_);
      --connections_;
    }).detach();
  }
}

void MetricsHttpServer::Answer(int client, absl::Time deadline) const {
  std::string request;
  char buf[2048];
  while (request.size() < 16384 && request.find("\r\n\r\n") == std::string::npos) {
    if (!WaitFor(client, POLLIN, deadline)) return;  // Too slow: closed unanswered.
    const ssize_t n = ::recv(client, buf, sizeof(buf), MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n <= 0) break;
    request.append(buf, static_cast<size_t>(n));
  }
  const bool metrics = absl::StartsWith(request, "GET /metrics ") ||
                       absl::StartsWith(request, "GET /metrics?") ||
                       absl::StartsWith(request, "GET / ");
  const std::string body = metrics ? render_() : "not found: try /metrics\n";
  WriteAll(client,
           absl::StrCat("HTTP/1.1 ", metrics ? "200 OK" : "404 Not Found",
                        "\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8"
                        "\r\nContent-Length: ",
                        body.size(), "\r\nConnection: close\r\n\r\n", body),
           deadline);
}

}  // namespace convnext::server
