// OipModels: the served models as the Open Inference Protocol sees them, shared by its two front
// ends (oip_service.h over gRPC, oip_http.h over HTTP): model lookup by name and version, the
// models' descriptions (oip_convert.h), readiness, statistics, and ModelInfer itself, which
// converts the request into a Classify/Embed-style call and admits it to the model's ModelHost,
// so that every protocol shares one admission path, budget, batcher and metrics
// (method="ModelInfer").
//
// Versions are the repository's (model_repository.h): an empty version selects the model's
// default version, and a version label selects its version. Thread-safe.
#ifndef CONVNEXT_SERVER_OIP_MODELS_H_
#define CONVNEXT_SERVER_OIP_MODELS_H_

#include <functional>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "inference/open_inference.pb.h"
#include "server/model_host.h"
#include "server/model_repository.h"
#include "server/oip_convert.h"

namespace convnext::server {

class OipModels {
 public:
  // `models` outlives this object. `version` is the server's.
  OipModels(ModelRepository* models, std::string version);

  // The serving host of the model named `name` at `version` (NOT_FOUND if none).
  absl::StatusOr<std::shared_ptr<ModelHost>> Find(const std::string& name,
                                                  const std::string& version) const;
  // Every model has a version loaded, warm and admitting (ModelRepository::AllReady).
  bool Ready() const;

  inference::ServerMetadataResponse ServerMetadata() const;
  absl::StatusOr<inference::ModelMetadataResponse> ModelMetadata(const std::string& name,
                                                                 const std::string& version) const;
  absl::StatusOr<inference::ModelConfig> ModelConfig(const std::string& name,
                                                     const std::string& version) const;
  // Counts only (images, forward passes by batch size, admitted requests); durations are 0: the
  // timings are in the Prometheus histograms. An empty name: every model.
  absl::StatusOr<inference::ModelStatisticsResponse> Statistics(const std::string& name,
                                                                const std::string& version) const;

  // The repository extension's index: every version and its state ("READY", "LOADING",
  // "UNLOADING", "UNAVAILABLE" with the reason); with `ready_only`, the serving ones.
  inference::RepositoryIndexResponse RepositoryIndex(bool ready_only) const;
  // Unloads every version of `name` (the caller has authorised it).
  absl::Status Unload(const std::string& name) const;

  // Runs one ModelInfer. `done` is called exactly once, from any thread (the caller's when the
  // request is refused at once), with the final status; `response` is filled when it is OK and
  // must stay valid until then. The call's deadline is `deadline` or the request's `timeout`
  // parameter, whichever comes first; `ctx` (may be null) is polled for cancellation.
  using DoneFn = std::function<void(const absl::Status&)>;
  void Infer(const inference::ModelInferRequest& request, absl::Time deadline,
             grpc::CallbackServerContext* ctx, inference::ModelInferResponse* response,
             DoneFn done) const;

 private:
  ModelRepository* const models_;
  const std::string version_;
};

}  // namespace convnext::server

#endif  // CONVNEXT_SERVER_OIP_MODELS_H_
