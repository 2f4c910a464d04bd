// ModelControlServiceImpl: the gRPC handlers of convnext.v1.ModelControl (load, reload, unload,
// default version), in front of the ModelRepository. Off unless enabled (then every call is
// PERMISSION_DENIED and says how to enable it); with mutual TLS, only clients whose certificate
// identity (subject alternative names, else common name) is in the allowed list may call it.
// LoadModel answers from the loader thread when the version is ready or has failed; nothing
// blocks a gRPC thread.
#ifndef CONVNEXT_SERVER_MODEL_CONTROL_H_
#define CONVNEXT_SERVER_MODEL_CONTROL_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "convnext/v1/image_model.grpc.pb.h"
#include "server/config.pb.h"
#include "server/model_repository.h"

namespace convnext::server {

struct ModelControlOptions {
  bool enabled = false;
  // Mutual TLS is on: the caller must present a certificate naming one of `allowed_clients`.
  bool require_identity = false;
  std::vector<std::string> allowed_clients;
  // The server's normalised config: defaults for the models loaded (NormalizeModelConfig).
  ServerConfig server_config;
  int64_t memory_bytes = 0;  // The memory limit, for defaults (0: the server config's).
};

class ModelControlServiceImpl final : public v1::ModelControl::CallbackService {
 public:
  // `models` outlives the service.
  ModelControlServiceImpl(ModelRepository* models, ModelControlOptions options);

  grpc::ServerUnaryReactor* LoadModel(grpc::CallbackServerContext* ctx,
                                      const v1::LoadModelRequest* request,
                                      v1::LoadModelResponse* response) override;
  grpc::ServerUnaryReactor* UnloadModel(grpc::CallbackServerContext* ctx,
                                        const v1::UnloadModelRequest* request,
                                        v1::UnloadModelResponse* response) override;
  grpc::ServerUnaryReactor* SetDefaultVersion(grpc::CallbackServerContext* ctx,
                                              const v1::SetDefaultVersionRequest* request,
                                              v1::SetDefaultVersionResponse* response) override;

  // OK if this caller may change the models.
  absl::Status Authorize(const grpc::CallbackServerContext& ctx) const;
  // The Open Inference Protocol's RepositoryModelLoad (after Authorize): `config_text` empty
  // reloads every version of `model` from its current config. `done` gets the first failure, or
  // OK when every version is ready.
  void LoadForRepository(const std::string& model, const std::string& config_text,
                         std::function<void(const absl::Status&)> done);

 private:
  // Logs a control call (method, client names, status) and answers it.
  static void Finish(grpc::CallbackServerContext* ctx, grpc::ServerUnaryReactor* reactor,
                     const char* method, const absl::Status& status);
  static grpc::ServerUnaryReactor* Finish(grpc::CallbackServerContext* ctx, const char* method,
                                          const absl::Status& status);

  ModelRepository* const models_;
  const ModelControlOptions options_;
};

}  // namespace convnext::server

#endif  // CONVNEXT_SERVER_MODEL_CONTROL_H_
