// OipServiceImpl: the Open Inference Protocol's gRPC service (inference.GRPCInferenceService),
// served on the same port as our own API. ModelInfer requests are converted (oip_convert.h) into
// the images and parameters of a Classify or Embed call and admitted to the same ModelHost, so
// they share its admission, memory budget, batcher, deadlines and metrics (method label
// "ModelInfer"); readiness is the models' own.
//
// Every model has one version, "1"; an empty version means it too.
#ifndef CONVNEXT_SERVER_OIP_SERVICE_H_
#define CONVNEXT_SERVER_OIP_SERVICE_H_

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "inference/open_inference.grpc.pb.h"
#include "server/model_host.h"
#include "server/oip_convert.h"

namespace convnext::server {

class OipServiceImpl final : public inference::GRPCInferenceService::CallbackService {
 public:
  // `models` are owned by the caller and outlive the service. `version` is the server's, for
  // ServerMetadata.
  OipServiceImpl(std::map<std::string, ModelHost*> models, std::string version);

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
  // Counts only (images, forward passes by batch size, admitted requests); durations are 0:
  // the timings are in the Prometheus histograms.
  grpc::ServerUnaryReactor* ModelStatistics(
      grpc::CallbackServerContext* ctx, const inference::ModelStatisticsRequest* request,
      inference::ModelStatisticsResponse* response) override;

 private:
  // The model named `name` at `version` ("" or "1"): NOT_FOUND otherwise.
  absl::StatusOr<ModelHost*> Find(const std::string& name, const std::string& version) const;

  const std::map<std::string, ModelHost*> models_;
  const std::map<std::string, OipModel> facts_;  // By model name.
  const std::string version_;
};

}  // namespace convnext::server

#endif  // CONVNEXT_SERVER_OIP_SERVICE_H_
