#include "server/oip_models.h"

#include <algorithm>
#include <memory>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/metrics.h"
#include "server/status_util.h"

namespace convnext::server {
namespace {

// What the conversions need to know of a model version. `labels` points into `host`.
OipModel FactsOf(const ModelHost* host) {
  OipModel m;
  {
    m.name = host->name();
    m.version = host->version();
    m.num_classes = host->architecture().num_classes;
    m.has_embedding = !host->architecture().stage_norms;
    m.dims = host->architecture().dims;
    m.input_size = host->preprocess().size;
    m.labels = &host->labels();
    const v1::BatchingInfo batching = host->Info().batching();
    m.max_batch_size = batching.max_batch_size();
    m.max_queue_size = batching.max_queue_size();
    m.max_queue_delay_us = static_cast<int64_t>(batching.max_queue_delay_us());
  }
  return m;
}

// What a ModelInfer call owns until it is answered: the converted call (its images are read by
// the admitted work until each image ends) and our own answer, converted at the end.
struct InferState {
  std::shared_ptr<ModelHost> host;  // Until the answer is converted (facts.labels points into it).
  OipModel facts;
  OipCall call;
  v1::ClassifyResponse classify;
  v1::EmbedResponse embed;
};

}  // namespace

OipModels::OipModels(ModelRepository* models, std::string version)
    : models_(models), version_(std::move(version)) {}

absl::StatusOr<std::shared_ptr<ModelHost>> OipModels::Find(const std::string& name,
                                                           const std::string& version) const {
  if (name.empty()) return absl::NotFoundError("no model named ''");
  return models_->Find(name, version);
}

bool OipModels::Ready() const { return models_->AllReady(); }

inference::RepositoryIndexResponse OipModels::RepositoryIndex(bool ready_only) const {
  inference::RepositoryIndexResponse response;
  for (const v1::ModelInfo& info : models_->List()) {
    if (ready_only && info.state() != v1::READY) continue;
    inference::RepositoryIndexResponse::ModelIndex* m = response.add_models();
    m->set_name(info.name());
    m->set_version(info.version());
    switch (info.state()) {
      case v1::READY:
        m->set_state("READY");
        break;
      case v1::LOADING:
        m->set_state("LOADING");
        break;
      case v1::DRAINING:
        m->set_state("UNLOADING");
        break;
      default:
        m->set_state("UNAVAILABLE");
    }
    m->set_reason(info.state_reason());
  }
  return response;
}

absl::Status OipModels::Unload(const std::string& name) const {
  return models_->Unload(name, "").status();
}

inference::ServerMetadataResponse OipModels::ServerMetadata() const {
  inference::ServerMetadataResponse m;
  m.set_name("convnext-serve");
  m.set_version(version_);
  m.add_extensions("classification");
  m.add_extensions("model_configuration");
  m.add_extensions("statistics");
  m.add_extensions("binary_tensor_data");
  m.add_extensions("model_repository");
  return m;
}

absl::StatusOr<inference::ModelMetadataResponse> OipModels::ModelMetadata(
    const std::string& name, const std::string& version) const {
  absl::StatusOr<std::shared_ptr<ModelHost>> host = Find(name, version);
  if (!host.ok()) return host.status();
  return OipMetadata(FactsOf(host->get()));
}

absl::StatusOr<inference::ModelConfig> OipModels::ModelConfig(const std::string& name,
                                                              const std::string& version) const {
  absl::StatusOr<std::shared_ptr<ModelHost>> host = Find(name, version);
  if (!host.ok()) return host.status();
  return OipModelConfig(FactsOf(host->get()));
}

absl::StatusOr<inference::ModelStatisticsResponse> OipModels::Statistics(
    const std::string& name, const std::string& version) const {
  std::vector<v1::ModelInfo> infos;
  if (name.empty()) {
    for (v1::ModelInfo& info : models_->List()) {
      if (info.state() == v1::READY) infos.push_back(std::move(info));
    }
  } else {
    absl::StatusOr<std::shared_ptr<ModelHost>> host = Find(name, version);
    if (!host.ok()) return host.status();
    infos.push_back((*host)->Info());
  }
  inference::ModelStatisticsResponse response;
  for (const v1::ModelInfo& info : infos) {
    const v1::ModelStats& stats = info.stats();
    inference::ModelStatistics* s = response.add_model_stats();
    s->set_name(info.name());
    s->set_version(info.version());
    s->set_inference_count(stats.images());
    s->set_execution_count(stats.batches());
    s->mutable_inference_stats()->mutable_success()->set_count(stats.requests());
    for (const auto& [size, count] : stats.batch_sizes()) {
      inference::InferBatchStatistics* b = s->add_batch_stats();
      b->set_batch_size(size);
      b->mutable_compute_infer()->set_count(count);
    }
  }
  return response;
}

void OipModels::Infer(const inference::ModelInferRequest& request, absl::Time deadline,
                      grpc::CallbackServerContext* ctx, inference::ModelInferResponse* response,
                      DoneFn done) const {
  const absl::Time start = absl::Now();
  auto finish = [start, done = std::move(done)](ModelMetrics* metrics, const absl::Status& status) {
    RecordRequest(metrics, Method::kModelInfer, ToGrpcStatus(status).error_code(),
                  absl::ToInt64Microseconds(absl::Now() - start));
    done(status);
  };
  absl::StatusOr<std::shared_ptr<ModelHost>> found =
      Find(request.model_name(), request.model_version());
  if (!found.ok()) return finish(Metrics::ForModel(kUnknownModelLabel, ""), found.status());
  auto state = std::make_shared<InferState>();
  state->host = *std::move(found);
  ModelHost* host = state->host.get();
  ModelMetrics* metrics = host->metrics();
  state->facts = FactsOf(host);
  absl::StatusOr<OipCall> call = ToOipCall(request, state->facts);
  if (!call.ok()) return finish(metrics, call.status());
  state->call = *std::move(call);
  const InferenceRequest::Kind kind = state->call.params.kind;
  const bool classify = InferenceRequest::Classifies(kind);
  const bool embed = InferenceRequest::Embeds(kind);
  for (int i = 0; i < state->call.images.size(); ++i) {
    if (classify) state->classify.add_results();
    if (embed) state->embed.add_results();
  }
  if (state->call.timeout != absl::InfiniteDuration()) {
    deadline = std::min(deadline, start + state->call.timeout);
  }
  response->set_model_name(host->name());
  response->set_model_version(host->version());
  response->set_id(request.id());
  (*response->mutable_parameters())["embedding_space"].set_string_param(
      host->embedding_space(state->call.params.normalize));
  host->Run(state->call.params, state->call.images, deadline, ctx,
            classify ? &state->classify : nullptr, embed ? &state->embed : nullptr,
            [state, response, metrics, finish](const absl::Status& s) mutable {
              absl::Status status = s;
              if (status.ok()) {
                status = FillInferResponse(state->call, state->facts, &state->classify,
                                           &state->embed, response);
              }
              state.reset();  // May retire an old version (model_repository.h): not inline.
              finish(metrics, status);
            });
}

}  // namespace convnext::server
