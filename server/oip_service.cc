#include "server/oip_service.h"

#include "server/status_util.h"

namespace convnext::server {
namespace {

grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* ctx, const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// Answers with `result`'s value in `response`, or its error.
template <typename T>
grpc::ServerUnaryReactor* AnswerWith(grpc::CallbackServerContext* ctx, absl::StatusOr<T> result,
                                     T* response) {
  if (!result.ok()) return Answer(ctx, result.status());
  *response = *std::move(result);
  return Answer(ctx, absl::OkStatus());
}

}  // namespace

grpc::ServerUnaryReactor* OipServiceImpl::ServerLive(grpc::CallbackServerContext* ctx,
                                                     const inference::ServerLiveRequest*,
                                                     inference::ServerLiveResponse* response) {
  response->set_live(true);
  return Answer(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* OipServiceImpl::ServerReady(grpc::CallbackServerContext* ctx,
                                                      const inference::ServerReadyRequest*,
                                                      inference::ServerReadyResponse* response) {
  response->set_ready(models_->Ready());
  return Answer(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* OipServiceImpl::ModelReady(grpc::CallbackServerContext* ctx,
                                                     const inference::ModelReadyRequest* request,
                                                     inference::ModelReadyResponse* response) {
  absl::StatusOr<std::shared_ptr<ModelHost>> host =
      models_->Find(request->name(), request->version());
  response->set_ready(host.ok() && (*host)->ready());
  return Answer(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* OipServiceImpl::ServerMetadata(
    grpc::CallbackServerContext* ctx, const inference::ServerMetadataRequest*,
    inference::ServerMetadataResponse* response) {
  *response = models_->ServerMetadata();
  return Answer(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* OipServiceImpl::ModelMetadata(
    grpc::CallbackServerContext* ctx, const inference::ModelMetadataRequest* request,
    inference::ModelMetadataResponse* response) {
  return AnswerWith(ctx, models_->ModelMetadata(request->name(), request->version()), response);
}

grpc::ServerUnaryReactor* OipServiceImpl::ModelInfer(grpc::CallbackServerContext* ctx,
                                                     const inference::ModelInferRequest* request,
                                                     inference::ModelInferResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  models_->Infer(*request, DeadlineOf(*ctx), ctx, response,
                 [reactor](const absl::Status& status) { reactor->Finish(ToGrpcStatus(status)); });
  return reactor;
}

grpc::ServerUnaryReactor* OipServiceImpl::ModelConfig(grpc::CallbackServerContext* ctx,
                                                      const inference::ModelConfigRequest* request,
                                                      inference::ModelConfigResponse* response) {
  return AnswerWith(ctx, models_->ModelConfig(request->name(), request->version()),
                    response->mutable_config());
}

grpc::ServerUnaryReactor* OipServiceImpl::ModelStatistics(
    grpc::CallbackServerContext* ctx, const inference::ModelStatisticsRequest* request,
    inference::ModelStatisticsResponse* response) {
  return AnswerWith(ctx, models_->Statistics(request->name(), request->version()), response);
}

}  // namespace convnext::server
