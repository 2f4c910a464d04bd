#include "server/oip_http.h"

#include <arpa/inet.h>
#include <gnutls/gnutls.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdlib>
#include <optional>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "server/oip_rest.h"

namespace convnext::server {

// One HTTP request's state across libmicrohttpd's calls of the access handler.
struct HttpRequest {
  std::string body;
  size_t reserved = 0;  // Bytes of the server's max_buffered_bytes that `body` holds.
  bool too_large = false;
  bool overloaded = false;  // The body did not fit max_buffered_bytes: dropped, answered 503.
  bool answered = false;    // An answer was queued before the body was read (403, 413).
};

struct HttpAnswer {
  int status = 200;
  std::string body;
  std::optional<size_t> header_length;  // Inference-Header-Content-Length.
};

namespace {

HttpAnswer Error(const absl::Status& status) {
  return {HttpStatusOf(status.code()), ErrorJson(status.message()), std::nullopt};
}

template <typename T, typename Fn>
HttpAnswer JsonOf(const absl::StatusOr<T>& result, Fn to_json) {
  if (!result.ok()) return Error(result.status());
  return {200, to_json(*result), std::nullopt};
}

MHD_Result Send(MHD_Connection* connection, const HttpAnswer& answer) {
  MHD_Response* response = MHD_create_response_from_buffer(
      answer.body.size(), const_cast<char*>(answer.body.data()), MHD_RESPMEM_MUST_COPY);
  if (response == nullptr) return MHD_NO;
  MHD_add_response_header(
      response, "Content-Type",
      answer.header_length.has_value() ? "application/octet-stream" : "application/json");
  if (answer.header_length.has_value()) {
    MHD_add_response_header(response, "Inference-Header-Content-Length",
                            absl::StrCat(*answer.header_length).c_str());
  }
  const MHD_Result result =
      MHD_queue_response(connection, static_cast<unsigned>(answer.status), response);
  MHD_destroy_response(response);
  return result;
}

}  // namespace

// Routes one complete request (friend of OipHttpServer).
struct OipHttpHandler {
  static HttpAnswer Route(const OipModels& models, MHD_Connection* connection,
                          const std::string& method, const std::string& url,
                          const std::string& body) {
    std::vector<std::string> parts = absl::StrSplit(url, '/', absl::SkipEmpty());
    auto not_found = [&url]() {
      return Error(absl::NotFoundError(absl::StrCat("no such endpoint: ", url.substr(0, 200))));
    };
    if (parts.empty() || parts[0] != "v2") return not_found();
    const bool get = method == "GET";
    auto only = [&](bool allowed) -> std::optional<HttpAnswer> {
      if (allowed) return std::nullopt;
      return HttpAnswer{405, ErrorJson(absl::StrCat(method, " is not allowed on ", url)),
                        std::nullopt};
    };
    if (parts.size() == 1) {
      if (auto bad = only(get)) return *bad;
      return {200, ServerMetadataJson(models.ServerMetadata()), std::nullopt};
    }
    if (parts[1] == "health" && parts.size() == 3) {
      if (auto bad = only(get)) return *bad;
      if (parts[2] == "live") return {200, "", std::nullopt};
      if (parts[2] == "ready") {
        return models.Ready() ? HttpAnswer{200, "", std::nullopt}
                              : HttpAnswer{503, ErrorJson("not ready"), std::nullopt};
      }
      return not_found();
    }
    if (parts[1] != "models") return not_found();
    if (parts.size() == 3 && parts[2] == "stats") {
      if (auto bad = only(get)) return *bad;
      return JsonOf(models.Statistics("", ""), ModelStatisticsJson);
    }
    if (parts.size() < 3) return not_found();
    const std::string& model = parts[2];
    std::string version;
    size_t next = 3;
    if (parts.size() >= 5 && parts[3] == "versions") {
      version = parts[4];
      next = 5;
    }
    if (parts.size() == next) {
      if (auto bad = only(get)) return *bad;
      return JsonOf(models.ModelMetadata(model, version), ModelMetadataJson);
    }
    if (parts.size() != next + 1) return not_found();
    const std::string& action = parts[next];
    if (action == "ready") {
      if (auto bad = only(get)) return *bad;
      absl::StatusOr<std::shared_ptr<ModelHost>> host = models.Find(model, version);
      if (!host.ok()) return Error(host.status());
      return (*host)->ready() ? HttpAnswer{200, "", std::nullopt}
                              : HttpAnswer{503, ErrorJson("not ready"), std::nullopt};
    }
    if (action == "config") {
      if (auto bad = only(get)) return *bad;
      return JsonOf(models.ModelConfig(model, version), ModelConfigJson);
    }
    if (action == "stats") {
      if (auto bad = only(get)) return *bad;
      return JsonOf(models.Statistics(model, version), ModelStatisticsJson);
    }
    if (action != "infer") return not_found();
    if (auto bad = only(method == "POST")) return *bad;
    std::optional<size_t> header_length;
    if (const char* h = MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
                                                    "Inference-Header-Content-Length")) {
      size_t n = 0;
      if (!absl::SimpleAtoi(h, &n)) {
        return Error(absl::InvalidArgumentError("Inference-Header-Content-Length is not a count"));
      }
      header_length = n;
    }
    absl::StatusOr<RestInferRequest> request = ParseRestInfer(body, header_length, model, version);
    if (!request.ok()) return Error(request.status());
    inference::ModelInferResponse response;
    absl::Status status;
    absl::Notification done;
    // The connection's own thread waits for the answer; the model's threads never wait for it.
    models.Infer(request->request, absl::InfiniteFuture(), nullptr, &response,
                 [&status, &done](const absl::Status& s) {
                   status = s;
                   done.Notify();
                 });
    done.WaitForNotification();
    if (!status.ok()) return Error(status);
    RestBody out = FormatRestInfer(*request, response);
    return {200, std::move(out.body), out.header_length};
  }

  static MHD_Result Access(void* cls, MHD_Connection* connection, const char* url,
                           const char* method, const char*, const char* upload_data,
                           size_t* upload_data_size, void** state) {
    auto* server = static_cast<OipHttpServer*>(cls);
    if (*state == nullptr) {
      auto* request = new HttpRequest();
      *state = request;
      if (!server->options_.tls_client_ca_pem.empty() && !ClientVerified(connection)) {
        request->answered = true;
        return Send(connection, {403,
                                 ErrorJson("a client certificate signed by the server's client CA "
                                           "(--tls_client_ca) is required"),
                                 std::nullopt});
      }
      // A declared body over the limit is refused before any of it is read.
      if (const char* length =
              MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "Content-Length")) {
        uint64_t n = 0;
        if (absl::SimpleAtoi(length, &n) && n > server->options_.max_body_bytes) {
          request->too_large = true;
        }
      }
      if (request->too_large) {
        request->answered = true;
        return Send(connection, TooLarge(server->options_.max_body_bytes));
      }
      return MHD_YES;
    }
    auto* request = static_cast<HttpRequest*>(*state);
    if (*upload_data_size > 0) {
      if (!request->too_large && !request->overloaded && !request->answered) {
        if (request->body.size() + *upload_data_size > server->options_.max_body_bytes) {
          request->too_large = true;
        } else if (!server->ReserveBody(*upload_data_size)) {
          request->overloaded = true;
        } else {
          request->reserved += *upload_data_size;
          request->body.append(upload_data, *upload_data_size);
        }
        if (request->too_large || request->overloaded) Drop(server, request);
      }
      *upload_data_size = 0;
      return MHD_YES;
    }
    if (request->answered) return MHD_YES;
    if (request->too_large) return Send(connection, TooLarge(server->options_.max_body_bytes));
    if (request->overloaded) {
      return Send(connection,
                  {503,
                   ErrorJson(absl::StrCat("the server holds as many request bytes as it may (",
                                          server->options_.max_buffered_bytes,
                                          " bytes, transport_memory_bytes); retry")),
                   std::nullopt});
    }
    server->SetBusy(connection, true);
    const MHD_Result sent =
        Send(connection, Route(*server->models_, connection, method, url, request->body));
    server->SetBusy(connection, false);
    return sent;
  }

  static void Notify(void* cls, MHD_Connection* connection, void**,
                     MHD_ConnectionNotificationCode code) {
    auto* server = static_cast<OipHttpServer*>(cls);
    absl::MutexLock lock(&server->mu_);
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
      const MHD_ConnectionInfo* info =
          MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
      server->connections_[connection] = {info != nullptr ? info->connect_fd : -1, absl::Now(),
                                          false};
    } else {
      server->connections_.erase(connection);
    }
  }

  // Whether the TLS client presented a certificate that verifies against the trusted client CA
  // (libmicrohttpd only asks for one; checking it is ours).
  static bool ClientVerified(MHD_Connection* connection) {
    const MHD_ConnectionInfo* info =
        MHD_get_connection_info(connection, MHD_CONNECTION_INFO_GNUTLS_SESSION);
    if (info == nullptr || info->tls_session == nullptr) return false;
    auto session = static_cast<gnutls_session_t>(info->tls_session);
    unsigned int count = 0;
    if (gnutls_certificate_get_peers(session, &count) == nullptr || count == 0) return false;
    unsigned int status = 0;
    return gnutls_certificate_verify_peers2(session, &status) == GNUTLS_E_SUCCESS && status == 0;
  }

  // Frees a request's body and its reservation.
  static void Drop(OipHttpServer* server, HttpRequest* request) {
    request->body.clear();
    request->body.shrink_to_fit();
    server->ReleaseBody(request->reserved);
    request->reserved = 0;
  }

  static void Completed(void* cls, MHD_Connection*, void** state, MHD_RequestTerminationCode) {
    auto* request = static_cast<HttpRequest*>(*state);
    if (request == nullptr) return;
    Drop(static_cast<OipHttpServer*>(cls), request);
    delete request;
    *state = nullptr;
  }

  static HttpAnswer TooLarge(size_t limit) {
    return {413,
            ErrorJson(absl::StrCat("the request body is larger than ", limit,
                                   " bytes (max_message_bytes)")),
            std::nullopt};
  }
};

absl::StatusOr<std::unique_ptr<OipHttpServer>> OipHttpServer::Start(const OipModels* models,
                                                                    const OipHttpOptions& options) {
  std::unique_ptr<OipHttpServer> server(new OipHttpServer(models, options));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(options.port));
  if (inet_pton(AF_INET, options.host.c_str(), &address.sin_addr) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("HTTP host '", options.host, "' is not an IPv4 address"));
  }
  const bool tls = !options.tls_cert_pem.empty() && !options.tls_key_pem.empty();
  const bool mutual = tls && !options.tls_client_ca_pem.empty();
  if (!tls && !options.tls_client_ca_pem.empty()) {
    return absl::InvalidArgumentError("a client CA needs the server's certificate and key");
  }
  if (tls && !MHD_is_feature_supported(MHD_FEATURE_TLS)) {
    return absl::FailedPreconditionError("this libmicrohttpd has no TLS support");
  }
  const OipHttpOptions& kept = server->options_;  // Outlives the daemon.
  unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD;
  if (tls) flags |= MHD_USE_TLS;
  server->daemon_ = MHD_start_daemon(
      flags, static_cast<uint16_t>(options.port), nullptr, nullptr, &OipHttpHandler::Access,
      server.get(), MHD_OPTION_SOCK_ADDR, &address, MHD_OPTION_CONNECTION_LIMIT,
      static_cast<unsigned>(options.max_connections), MHD_OPTION_CONNECTION_TIMEOUT,
      static_cast<unsigned>(absl::ToInt64Seconds(options.idle_timeout)),
      MHD_OPTION_NOTIFY_COMPLETED, &OipHttpHandler::Completed, server.get(),
      MHD_OPTION_NOTIFY_CONNECTION, &OipHttpHandler::Notify, server.get(),
      // With TLS off the rest is never read; without a client CA, the trust option is not.
      tls ? MHD_OPTION_HTTPS_MEM_KEY : MHD_OPTION_END, kept.tls_key_pem.c_str(),
      MHD_OPTION_HTTPS_MEM_CERT, kept.tls_cert_pem.c_str(),
      mutual ? MHD_OPTION_HTTPS_MEM_TRUST : MHD_OPTION_END, kept.tls_client_ca_pem.c_str(),
      MHD_OPTION_END);
  if (server->daemon_ == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve HTTP on ", options.host, ":", options.port));
  }
  const MHD_DaemonInfo* info = MHD_get_daemon_info(server->daemon_, MHD_DAEMON_INFO_BIND_PORT);
  server->port_ = info != nullptr ? info->port : options.port;
  OipHttpServer* raw = server.get();
  server->watchdog_ = std::thread([raw] { raw->Watch(); });
  return server;
}

void OipHttpServer::SetBusy(MHD_Connection* connection, bool busy) {
  absl::MutexLock lock(&mu_);
  auto it = connections_.find(connection);
  if (it == connections_.end()) return;
  it->second.busy = busy;
  if (!busy) it->second.read_since = absl::Now();
}

bool OipHttpServer::ReserveBody(size_t bytes) {
  absl::MutexLock lock(&mu_);
  if (buffered_bytes_ + bytes > options_.max_buffered_bytes) return false;
  buffered_bytes_ += bytes;
  return true;
}

void OipHttpServer::ReleaseBody(size_t bytes) {
  absl::MutexLock lock(&mu_);
  buffered_bytes_ -= bytes;
}

void OipHttpServer::Watch() {
  while (!stop_.WaitForNotificationWithTimeout(absl::Milliseconds(250))) {
    const absl::Time now = absl::Now();
    absl::MutexLock lock(&mu_);
    for (auto& [connection, t] : connections_) {
      if (!t.busy && t.fd >= 0 && now - t.read_since > options_.read_deadline) {
        // Its thread sees the end of the stream and closes it; the entry goes when it does.
        ::shutdown(t.fd, SHUT_RDWR);
        t.fd = -1;
      }
    }
  }
}

OipHttpServer::~OipHttpServer() {
  stop_.Notify();
  if (watchdog_.joinable()) watchdog_.join();
  if (daemon_ != nullptr) MHD_stop_daemon(daemon_);
}

}  // namespace convnext::server
