#include "server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "model/process_tuning.h"
#include "server/log.h"

namespace convnext::server {

absl::StatusOr<std::unique_ptr<Server>> Server::Create(const ServerConfig& config,
                                                       const ServerOptions& options) {
  std::unique_ptr<Server> server(new Server());
  SetIntraOpThreads(static_cast<int>(config.intra_op_threads()));
  if (options.metrics_port >= 0) {
    absl::StatusOr<std::unique_ptr<Metrics>> metrics =
        Metrics::Start(absl::StrCat(options.metrics_host, ":", options.metrics_port),
                       {options.version, options.libtorch_version, config.model(0).device()});
    if (!metrics.ok()) return metrics.status();
    server->metrics_ = *std::move(metrics);
  }
  server->preprocess_pool_ =
      std::make_unique<ThreadPool>(static_cast<int>(config.preprocess_threads()));
  server->memory_ = std::make_unique<MemoryBudget>(static_cast<int64_t>(config.max_memory_bytes()));
  ModelRepositoryOptions repository;
  repository.host.max_image_pixels = config.max_image_pixels();
  repository.host.max_response_bytes = config.max_message_bytes();
  repository.host.process_memory = server->memory_.get();
  repository.host.preprocess_pool = server->preprocess_pool_.get();
  repository.host.before_forward_for_testing = options.before_forward_for_testing;
  repository.memory_limit_bytes = options.memory_limit_bytes;
  server->repository_ = std::make_unique<ModelRepository>(repository);
  // On failure the versions loaded so far shut down with `server`.
  // On a thread of its own, whose intra-op threads (loading, warm-up) end with it.
  absl::Status loaded;
  RunOnThreadOfItsOwn([&] { loaded = server->repository_->LoadInitial(config); });
  if (!loaded.ok()) return loaded;

  ServiceOptions service_options;
  service_options.access_log = options.access_log;
  server->service_ =
      std::make_unique<ImageModelServiceImpl>(server->repository_.get(), service_options);
  ModelControlOptions control;
  control.enabled = options.enable_model_control;
  control.require_identity = options.control_require_identity;
  control.allowed_clients = options.control_clients;
  control.server_config = config;
  control.memory_bytes = options.memory_limit_bytes;
  server->control_ =
      std::make_unique<ModelControlServiceImpl>(server->repository_.get(), std::move(control));
  server->oip_models_ = std::make_unique<OipModels>(server->repository_.get(), options.version);
  server->oip_service_ =
      std::make_unique<OipServiceImpl>(server->oip_models_.get(), server->control_.get());
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  const std::string address = absl::StrCat(options.host, ":", options.port);
  builder.AddListeningPort(
      address,
      options.credentials != nullptr ? options.credentials : grpc::InsecureServerCredentials(),
      &server->port_);
  builder.SetMaxReceiveMessageSize(static_cast<int>(config.max_message_bytes()));
  grpc::ResourceQuota quota("convnext-transport");
  quota.Resize(static_cast<size_t>(config.transport_memory_bytes()));
  builder.SetResourceQuota(quota);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                             static_cast<int>(config.max_concurrent_streams()));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, options.keepalive_time_ms);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, options.keepalive_timeout_ms);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                             options.min_client_ping_interval_ms);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 2);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS, options.max_connection_idle_ms);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS, options.max_connection_age_ms);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                             options.max_connection_age_grace_ms);
  // Answers are checked against the same limit at admission (ModelHost::Submit), before any work.
  builder.SetMaxSendMessageSize(static_cast<int>(config.max_message_bytes()));
  builder.RegisterService(server->service_.get());
  builder.RegisterService(server->control_.get());
  builder.RegisterService(server->oip_service_.get());
  server->grpc_server_ = builder.BuildAndStart();
  if (server->grpc_server_ == nullptr || server->port_ == 0) {
    server->grpc_server_.reset();
    return absl::UnavailableError(absl::StrCat("cannot listen on ", address));
  }
  if (options.http_port >= 0) {
    OipHttpOptions http;
    http.host = options.http_host;
    http.port = options.http_port;
    http.max_body_bytes = config.max_message_bytes();
    http.read_deadline = options.http_read_deadline;
    http.max_buffered_bytes = config.transport_memory_bytes();
    http.tls_cert_pem = options.http_tls_cert_pem;
    http.tls_key_pem = options.http_tls_key_pem;
    http.tls_client_ca_pem = options.http_tls_client_ca_pem;
    absl::StatusOr<std::unique_ptr<OipHttpServer>> started =
        OipHttpServer::Start(server->oip_models_.get(), http);
    if (!started.ok()) return started.status();
    server->http_ = *std::move(started);
  }
  if (!options.watch_config_path.empty()) {
    ConfigWatchOptions watch;
    watch.path = options.watch_config_path;
    watch.interval = options.watch_interval;
    watch.applied = config;
    watch.memory_bytes = options.memory_limit_bytes;
    server->watch_ = std::make_unique<ConfigWatch>(server->repository_.get(), std::move(watch));
  }
  server->grpc_server_->GetHealthCheckService()->SetServingStatus(true);
  return server;
}

Server::~Server() { Drain(absl::Now()); }

int Server::metrics_port() const { return metrics_ != nullptr ? metrics_->port() : -1; }

std::shared_ptr<ModelHost> Server::model(const std::string& name) const {
  absl::StatusOr<std::shared_ptr<ModelHost>> host = repository_->Find(name, "");
  return host.ok() ? *std::move(host) : nullptr;
}

int64_t Server::Drain(absl::Time deadline) {
  absl::MutexLock lock(&drain_mu_);
  if (drained_) return 0;
  drained_ = true;
  // 1-2: drain while still answering: health says NOT_SERVING (load balancers and probes can see
  // it), new inference calls are refused with UNAVAILABLE, admitted ones run to their answers.
  watch_.reset();
  if (grpc_server_ != nullptr) grpc_server_->GetHealthCheckService()->SetServingStatus(false);
  int64_t left = 0;
  if (repository_ != nullptr) {
    repository_->StopAdmitting();
    repository_->WaitUntilIdle(deadline);
    left = repository_->pending_images();
  }
  // 3: stop gRPC: refuses new calls, waits for those still running, and cancels whatever is left
  // when the deadline passes.
  if (grpc_server_ != nullptr) grpc_server_->Shutdown(absl::ToChronoTime(deadline));
  http_.reset();
  // 4-5: finish what was admitted, in pipeline order: images still being preprocessed (the pool
  // runs all queued work before it is destroyed; they reach the batchers), then the batchers.
  // Calls cancelled by the deadline are still completed internally, so nothing outlives the
  // objects it uses.
  preprocess_pool_.reset();
  if (repository_ != nullptr) repository_->Shutdown();
  if (grpc_server_ != nullptr) grpc_server_->Wait();
  return left;
}

}  // namespace convnext::server
