// ImageModelServiceImpl: the gRPC handlers of convnext.v1.ImageModelService. Thin by design:
// each handler validates the request, resolves the model, and hands the images to the model's
// ModelHost; the reactor is finished from the completion path (an executor or preprocessing
// thread), never by blocking a gRPC thread.
#ifndef CONVNEXT_SERVER_SERVICE_H_
#define CONVNEXT_SERVER_SERVICE_H_

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "convnext/v1/image_model.grpc.pb.h"
#include "server/metrics.h"
#include "server/model_host.h"
#include "server/model_repository.h"

namespace convnext::server {

struct ServiceOptions {
  // Log one line per call (model, method, request id, status, latency). Off by default: at
  // thousands of calls per second the log would cost more than the call.
  bool access_log = false;
};

class ImageModelServiceImpl final : public v1::ImageModelService::CallbackService {
 public:
  // `models` outlives the service.
  explicit ImageModelServiceImpl(const ModelRepository* models, ServiceOptions options = {});

  grpc::ServerUnaryReactor* Classify(grpc::CallbackServerContext* ctx,
                                     const v1::ClassifyRequest* request,
                                     v1::ClassifyResponse* response) override;
  grpc::ServerUnaryReactor* Embed(grpc::CallbackServerContext* ctx, const v1::EmbedRequest* request,
                                  v1::EmbedResponse* response) override;
  grpc::ServerWriteReactor<v1::EmbedChunk>* EmbedStream(
      grpc::CallbackServerContext* ctx, const v1::EmbedStreamRequest* request) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* ctx,
                                       const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* ctx,
                                     const v1::GetModelRequest* request,
                                     v1::ModelInfo* response) override;

 private:
  class EmbedStreamReactor;

  // Answers a call: Record, then finishes the reactor. Callable from any thread.
  void Answer(grpc::ServerUnaryReactor* reactor, const std::string& model, ModelMetrics* metrics,
              Method method, absl::Time start, const absl::Status& status);
  // A call's end in the metrics (of `metrics`, the model version's) and the access log.
  void Record(const std::string& model, ModelMetrics* metrics, Method method, absl::Time start,
              const absl::Status& status);
  // Validates an Embed request for the model `host` serves, into `params`.
  static absl::Status EmbedParams(const v1::EmbedRequest& request, const ModelHost& host,
                                  InferenceRequest::Params* params);
  // The parts of an Embed answer known before any image is computed: the model, its version and
  // embedding space, a result per image.
  static void StartEmbedResponse(const v1::EmbedRequest& request, const ModelHost& host,
                                 const InferenceRequest::Params& params,
                                 v1::EmbedResponse* response);
  // Admits a validated Classify or Embed call (one of classify/embed set) to the model; the
  // answer comes from the completion path.
  grpc::ServerUnaryReactor* Run(grpc::CallbackServerContext* ctx, ModelHost* host,
                                const InferenceRequest::Params& params,
                                const google::protobuf::RepeatedPtrField<v1::Image>& images,
                                v1::ClassifyResponse* classify, v1::EmbedResponse* embed,
                                Method method, absl::Time start);
  // Answers at once on the handler's thread (validation errors, listings).
  grpc::ServerUnaryReactor* AnswerNow(grpc::CallbackServerContext* ctx, const ModelHost* host,
                                      Method method, absl::Time start, const absl::Status& status);

  const ModelRepository* const models_;
  const ServiceOptions options_;
  std::atomic<uint64_t> next_request_id_{1};
};

}  // namespace convnext::server

#endif  // CONVNEXT_SERVER_SERVICE_H_
