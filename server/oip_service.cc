#include "server/oip_service.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
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

grpc::ServerUnaryReactor* OipServiceImpl::RepositoryIndex(
    grpc::CallbackServerContext* ctx, const inference::RepositoryIndexRequest* request,
    inference::RepositoryIndexResponse* response) {
  *response = models_->RepositoryIndex(request->ready());
  return Answer(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* OipServiceImpl::RepositoryModelLoad(
    grpc::CallbackServerContext* ctx, const inference::RepositoryModelLoadRequest* request,
    inference::RepositoryModelLoadResponse*) {
  if (absl::Status s = control_->Authorize(*ctx); !s.ok()) return Answer(ctx, s);
  std::string config;
  if (auto it = request->parameters().find("config"); it != request->parameters().end()) {
    if (it->second.parameter_choice_case() != inference::ModelRepositoryParameter::kStringParam) {
      return Answer(ctx, absl::InvalidArgumentError("the parameter \"config\" must be a string"));
    }
    config = it->second.string_param();
  }
  for (const auto& [key, value] : request->parameters()) {
    if (key != "config") {
      return Answer(ctx,
                    absl::InvalidArgumentError(absl::StrCat(
                        "unknown parameter '", absl::CHexEscape(key.substr(0, 64)),
                        "'; only \"config\" (a ModelConfig in protobuf text format) is taken")));
    }
  }
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  control_->LoadForRepository(request->model_name(), config, [reactor](const absl::Status& s) {
    reactor->Finish(ToGrpcStatus(s));
  });
  return reactor;
}

grpc::ServerUnaryReactor* OipServiceImpl::RepositoryModelUnload(
    grpc::CallbackServerContext* ctx, const inference::RepositoryModelUnloadRequest* request,
    inference::RepositoryModelUnloadResponse*) {
  if (absl::Status s = control_->Authorize(*ctx); !s.ok()) return Answer(ctx, s);
  return Answer(ctx, models_->Unload(request->model_name()));
}

}  // namespace convnext::server
