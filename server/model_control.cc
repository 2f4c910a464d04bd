#include "server/model_control.h"

#include <grpc/grpc_security_constants.h>

#include <algorithm>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "server/log.h"
#include "server/server_config.h"
#include "server/status_util.h"

namespace convnext::server {
namespace {

// The names a client certificate gives its holder: subject alternative names and common name.
std::vector<std::string> PeerNames(const grpc::CallbackServerContext& ctx) {
  std::vector<std::string> names;
  const std::shared_ptr<const grpc::AuthContext> auth = ctx.auth_context();
  if (auth == nullptr || !auth->IsPeerAuthenticated()) return names;
  for (const char* property : {GRPC_X509_SAN_PROPERTY_NAME, GRPC_X509_CN_PROPERTY_NAME}) {
    for (const grpc::string_ref& v : auth->FindPropertyValues(property)) {
      names.emplace_back(v.data(), v.size());
    }
  }
  return names;
}

}  // namespace

ModelControlServiceImpl::ModelControlServiceImpl(ModelRepository* models,
                                                 ModelControlOptions options)
    : models_(models), options_(std::move(options)) {}

absl::Status ModelControlServiceImpl::Authorize(const grpc::CallbackServerContext& ctx) const {
  if (!options_.enabled) {
    return absl::PermissionDeniedError(
        "model control is off; start convnext-server with --enable_model_control");
  }
  if (!options_.require_identity) return absl::OkStatus();
  const std::vector<std::string> names = PeerNames(ctx);
  for (const std::string& name : names) {
    if (std::find(options_.allowed_clients.begin(), options_.allowed_clients.end(), name) !=
        options_.allowed_clients.end()) {
      return absl::OkStatus();
    }
  }
  return absl::PermissionDeniedError(
      absl::StrCat("client '", absl::StrJoin(names, "', '"),
                   "' may not change the models; --model_control_clients lists who may"));
}

void ModelControlServiceImpl::Finish(grpc::CallbackServerContext* ctx,
                                     grpc::ServerUnaryReactor* reactor, const char* method,
                                     const absl::Status& status) {
  Log(status.ok() ? "info" : "warning", "model_control",
      {{"method", method},
       {"client", absl::StrJoin(PeerNames(*ctx), ",")},
       {"peer", ctx->peer()},
       {"status", absl::StatusCodeToString(status.code())},
       {"message", std::string(status.message().substr(0, 300))}});
  reactor->Finish(ToGrpcStatus(status));
}

grpc::ServerUnaryReactor* ModelControlServiceImpl::Finish(grpc::CallbackServerContext* ctx,
                                                          const char* method,
                                                          const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  Finish(ctx, reactor, method, status);
  return reactor;
}

grpc::ServerUnaryReactor* ModelControlServiceImpl::LoadModel(grpc::CallbackServerContext* ctx,
                                                             const v1::LoadModelRequest* request,
                                                             v1::LoadModelResponse* response) {
  constexpr char kMethod[] = "LoadModel";
  if (absl::Status s = Authorize(*ctx); !s.ok()) return Finish(ctx, kMethod, s);
  absl::StatusOr<ModelConfig> config =
      ParseModelConfigText(request->config(), options_.server_config, options_.memory_bytes);
  if (!config.ok()) return Finish(ctx, kMethod, config.status());
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  models_->Load(*config, request->make_default(),
                [ctx, reactor, response](absl::StatusOr<ModelRepository::LoadResult> r) {
                  if (r.ok()) {
                    *response->mutable_model() = r->info;
                    response->set_load_seconds(r->seconds);
                    response->set_replaced(r->replaced);
                  }
                  Finish(ctx, reactor, "LoadModel", r.status());
                });
  return reactor;
}

void ModelControlServiceImpl::LoadForRepository(const std::string& model,
                                                const std::string& config_text,
                                                std::function<void(const absl::Status&)> done) {
  std::vector<ModelConfig> configs;
  if (!config_text.empty()) {
    const std::string text =
        config_text.find("name:") == std::string::npos
            ? absl::StrCat("name: \"", absl::CEscape(model), "\"\n", config_text)
            : config_text;
    absl::StatusOr<ModelConfig> config =
        ParseModelConfigText(text, options_.server_config, options_.memory_bytes);
    if (!config.ok()) return done(config.status());
    if (config->name() != model) {
      return done(absl::InvalidArgumentError(absl::StrCat(
          "the config names model '", config->name(), "', the request '", model, "'")));
    }
    configs.push_back(*std::move(config));
  } else {
    for (const auto& [key, config] : models_->Configs()) {
      if (key.first == model) configs.push_back(config);
    }
    if (configs.empty()) {
      return done(absl::NotFoundError(
          absl::StrCat("no model named '", absl::CHexEscape(model.substr(0, 128)),
                       "' to reload; give its config in the parameter \"config\" to load it")));
    }
  }
  // Answered once every load has ended, with the first failure if any.
  struct Pending {
    absl::Mutex mu;
    size_t left ABSL_GUARDED_BY(mu) = 0;
    absl::Status status ABSL_GUARDED_BY(mu);
    std::function<void(const absl::Status&)> done;
  };
  auto pending = std::make_shared<Pending>();
  pending->left = configs.size();
  pending->done = std::move(done);
  for (const ModelConfig& config : configs) {
    models_->Load(config, false, [pending](absl::StatusOr<ModelRepository::LoadResult> r) {
      absl::Status status;
      {
        absl::MutexLock lock(&pending->mu);
        if (!r.ok() && pending->status.ok()) pending->status = r.status();
        if (--pending->left > 0) return;
        status = pending->status;
      }
      pending->done(status);
    });
  }
}

grpc::ServerUnaryReactor* ModelControlServiceImpl::UnloadModel(
    grpc::CallbackServerContext* ctx, const v1::UnloadModelRequest* request,
    v1::UnloadModelResponse* response) {
  constexpr char kMethod[] = "UnloadModel";
  if (absl::Status s = Authorize(*ctx); !s.ok()) return Finish(ctx, kMethod, s);
  absl::StatusOr<std::vector<std::string>> unloaded =
      models_->Unload(request->name(), request->version());
  if (unloaded.ok()) {
    for (const std::string& v : *unloaded) response->add_versions(v);
  }
  return Finish(ctx, kMethod, unloaded.status());
}

grpc::ServerUnaryReactor* ModelControlServiceImpl::SetDefaultVersion(
    grpc::CallbackServerContext* ctx, const v1::SetDefaultVersionRequest* request,
    v1::SetDefaultVersionResponse* response) {
  constexpr char kMethod[] = "SetDefaultVersion";
  if (absl::Status s = Authorize(*ctx); !s.ok()) return Finish(ctx, kMethod, s);
  absl::StatusOr<std::string> now = models_->SetDefaultVersion(request->name(), request->version());
  if (now.ok()) response->set_version(*now);
  return Finish(ctx, kMethod, now.status());
}

}  // namespace convnext::server
