// ImageModelServiceImpl: the gRPC handlers of convnext.v1.ImageModelService. Thin by design:
// each handler validates the request, resolves the model, and hands the images to the model's
// ModelHost; the reactor is finished from the completion path (an executor or preprocessing
// thread), never by blocking a gRPC thread.
#ifndef CONVNEXT_SERVER_SERVICE_H_
#define CONVNEXT_SERVER_SERVICE_H_

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "convnext/v1/image_model.grpc.pb.h"
#include "server/model_host.h"

namespace convnext::serving {

class ImageModelServiceImpl final : public v1::ImageModelService::CallbackService {
 public:
  // `models` are owned by the caller and outlive the service; `default_model` is one of them.
  ImageModelServiceImpl(std::map<std::string, ModelHost*> models, std::string default_model);

  grpc::ServerUnaryReactor* Classify(grpc::CallbackServerContext* ctx,
                                     const v1::ClassifyRequest* request,
                                     v1::ClassifyResponse* response) override;
  grpc::ServerUnaryReactor* Embed(grpc::CallbackServerContext* ctx, const v1::EmbedRequest* request,
                                  v1::EmbedResponse* response) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* ctx,
                                       const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* ctx,
                                     const v1::GetModelRequest* request,
                                     v1::ModelInfo* response) override;

 private:
  absl::StatusOr<ModelHost*> Find(const std::string& name) const;

  const std::map<std::string, ModelHost*> models_;
  const std::string default_model_;
};

}  // namespace convnext::serving

#endif  // CONVNEXT_SERVER_SERVICE_H_
