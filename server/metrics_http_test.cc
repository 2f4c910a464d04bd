// The metrics endpoint: answers scrapes while a client trickles bytes (the slow client is cut off
// by its connection deadline, not after each byte), and 404s other paths.
#include "server/metrics_http.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "absl/time/clock.h"

namespace convnext::server {
namespace {

int Connect(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  ::inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  timeval timeout{30, 0};  // Only a guard against a hung test.
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  return fd;
}

std::string Get(int port, const std::string& path) {
  const int fd = Connect(port);
  const std::string request = "GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n";
  ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string reply;
  char buf[4096];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof(buf), 0)) > 0;) reply.append(buf, n);
  ::close(fd);
  return reply;
}

TEST(MetricsHttpTest, AnswersScrapesWhileAClientTricklesBytes) {
  auto server =
      MetricsHttpServer::Start("127.0.0.1:0", [] { return std::string("convnext_up 1\n"); });
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  // A client that sends a byte every 500 ms and never finishes its request.
  const int slow = Connect(port);
  const absl::Time opened = absl::Now();
  ::send(slow, "G", 1, MSG_NOSIGNAL);
  for (int i = 0; i < 3; ++i) {
    const std::string reply = Get(port, "/metrics");
    EXPECT_EQ(reply.rfind("HTTP/1.1 200 OK", 0), 0u) << reply;
    EXPECT_NE(reply.find("convnext_up 1"), std::string::npos) << reply;
    absl::SleepFor(absl::Milliseconds(500));
    ::send(slow, "E", 1, MSG_NOSIGNAL);
  }
  EXPECT_EQ(Get(port, "/other").rfind("HTTP/1.1 404", 0), 0u);
  // Trickling more bytes does not keep the connection: the server closes it unanswered at its
  // deadline (recv sees the end of the stream, not data).
  char buf[64];
  ssize_t n;
  while (true) {
    ::send(slow, "T", 1, MSG_NOSIGNAL);
    timeval short_wait{0, 500'000};
    ::setsockopt(slow, SOL_SOCKET, SO_RCVTIMEO, &short_wait, sizeof(short_wait));
    n = ::recv(slow, buf, sizeof(buf), 0);
    if (n >= 0 || absl::Now() - opened > absl::Seconds(60)) break;
  }
  EXPECT_LE(n, 0) << "the slow client got an answer";
  ::close(slow);
}

}  // namespace
}  // namespace convnext::server
