// OipServiceImpl: the Open Inference Protocol's gRPC service (inference.GRPCInferenceService),
// served on the same port as our own API; a thin front end of OipModels (oip_models.h), which
// converts ModelInfer requests and admits them to the same ModelHost as Classify and Embed.
#ifndef CONVNEXT_SERVER_OIP_SERVICE_H_
#define CONVNEXT_SERVER_OIP_SERVICE_H_

#include "inference/open_inference.grpc.pb.h"
#include "server/model_control.h"
#include "server/oip_models.h"

namespace convnext::server {

class OipServiceImpl final : public inference::GRPCInferenceService::CallbackService {
 public:
  // `models` outlives the service.
  // `models` and `control` outlive the service; `control` answers the repository extension's
  // load and unload.
  OipServiceImpl(const OipModels* models, ModelControlServiceImpl* control)
      : models_(models), control_(control) {}

  grpc::ServerUnaryReactor* ServerLive(grpc::CallbackServerContext* ctx,
                                       const inference::ServerLiveRequest* request,
                                       inference::ServerLiveResponse* response) override;
  grpc::ServerUnaryReactor* ServerReady(grpc::CallbackServerContext* ctx,
                                        const inference::ServerReadyRequest* request,
                                        inference::ServerReadyResponse* response) override;
  grpc::ServerUnaryReactor* ModelReady(grpc::CallbackServerContext* ctx,
                                       const inference::ModelReadyRequest* request,
                                       inference::ModelReadyResponse* response) override;
  grpc::ServerUnaryReactor* ServerMetadata(grpc::CallbackServerContext* ctx,
                                           const inference::ServerMetadataRequest* request,
                                           inference::ServerMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelMetadata(grpc::CallbackServerContext* ctx,
                                          const inference::ModelMetadataRequest* request,
                                          inference::ModelMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelInfer(grpc::CallbackServerContext* ctx,
                                       const inference::ModelInferRequest* request,
                                       inference::ModelInferResponse* response) override;
  // Triton's extensions (for tritonclient and perf_analyzer).
  grpc::ServerUnaryReactor* ModelConfig(grpc::CallbackServerContext* ctx,
                                        const inference::ModelConfigRequest* request,
                                        inference::ModelConfigResponse* response) override;
  grpc::ServerUnaryReactor* ModelStatistics(grpc::CallbackServerContext* ctx,
                                            const inference::ModelStatisticsRequest* request,
                                            inference::ModelStatisticsResponse* response) override;
  grpc::ServerUnaryReactor* RepositoryIndex(grpc::CallbackServerContext* ctx,
                                            const inference::RepositoryIndexRequest* request,
                                            inference::RepositoryIndexResponse* response) override;
  grpc::ServerUnaryReactor* RepositoryModelLoad(
      grpc::CallbackServerContext* ctx, const inference::RepositoryModelLoadRequest* request,
      inference::RepositoryModelLoadResponse* response) override;
  grpc::ServerUnaryReactor* RepositoryModelUnload(
      grpc::CallbackServerContext* ctx, const inference::RepositoryModelUnloadRequest* request,
      inference::RepositoryModelUnloadResponse* response) override;

 private:
  const OipModels* const models_;
  ModelControlServiceImpl* const control_;
};

}  // namespace convnext::server

#endif  // CONVNEXT_SERVER_OIP_SERVICE_H_
