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

std::map<std::string, OipModel> FactsOf(const std::map<std::string, ModelHost*>& models) {
  std::map<std::string, OipModel> facts;
  for (const auto& [name, host] : models) {
    OipModel& m = facts[name];
    m.name = name;
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
  return facts;
}

// What a ModelInfer call owns until it is answered: the converted call (its images are read by
// the admitted work until each image ends) and our own answer, converted at the end.
struct InferState {
  OipCall call;
  v1::ClassifyResponse classify;
  v1::EmbedResponse embed;
};

}  // namespace

OipModels::OipModels(std::map<std::string, ModelHost*> models, std::string version)
    : models_(std::move(models)), facts_(FactsOf(models_)), version_(std::move(version)) {}

absl::StatusOr<ModelHost*> OipModels::Find(const std::string& name,
                                           const std::string& version) const {
  auto it = models_.find(name);
  if (it == models_.end()) {
    return absl::NotFoundError(
        absl::StrCat("no model named '", absl::CHexEscape(name.substr(0, 128)), "'"));
  }
  if (!version.empty() && version != "1") {
    return absl::NotFoundError(absl::StrCat("model '", name, "' has no version '",
                                            absl::CHexEscape(version.substr(0, 64)),
                                            "'; its only version is 1"));
  }
  return it->second;
}

bool OipModels::Ready() const {
  return std::all_of(models_.begin(), models_.end(),
                     [](const auto& entry) { return entry.second->ready(); });
}

inference::ServerMetadataResponse OipModels::ServerMetadata() const {
  inference::ServerMetadataResponse m;
  m.set_name("convnext-serve");
  m.set_version(version_);
  m.add_extensions("classification");
  m.add_extensions("model_configuration");
  m.add_extensions("statistics");
  m.add_extensions("binary_tensor_data");
  return m;
}

absl::StatusOr<inference::ModelMetadataResponse> OipModels::ModelMetadata(
    const std::string& name, const std::string& version) const {
  absl::StatusOr<ModelHost*> host = Find(name, version);
  if (!host.ok()) return host.status();
  return OipMetadata(facts_.at((*host)->name()));
}

absl::StatusOr<inference::ModelConfig> OipModels::ModelConfig(const std::string& name,
                                                              const std::string& version) const {
  absl::StatusOr<ModelHost*> host = Find(name, version);
  if (!host.ok()) return host.status();
  return OipModelConfig(facts_.at((*host)->name()));
}

absl::StatusOr<inference::ModelStatisticsResponse> OipModels::Statistics(
    const std::string& name, const std::string& version) const {
  std::vector<ModelHost*> hosts;
  if (name.empty()) {
    for (const auto& [model, host] : models_) hosts.push_back(host);
  } else {
    absl::StatusOr<ModelHost*> host = Find(name, version);
    if (!host.ok()) return host.status();
    hosts.push_back(*host);
  }
  inference::ModelStatisticsResponse response;
  for (ModelHost* host : hosts) {
    const v1::ModelStats stats = host->Info().stats();
    inference::ModelStatistics* s = response.add_model_stats();
    s->set_name(host->name());
    s->set_version("1");
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
  absl::StatusOr<ModelHost*> found = Find(request.model_name(), request.model_version());
  if (!found.ok()) return finish(Metrics::ForModel(kUnknownModelLabel), found.status());
  ModelHost* host = *found;
  ModelMetrics* metrics = host->metrics();
  const OipModel& facts = facts_.at(host->name());
  absl::StatusOr<OipCall> call = ToOipCall(request, facts);
  if (!call.ok()) return finish(metrics, call.status());
  auto state = std::make_shared<InferState>();
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
  response->set_model_version("1");
  response->set_id(request.id());
  host->Run(state->call.params, state->call.images, deadline, ctx,
            classify ? &state->classify : nullptr, embed ? &state->embed : nullptr,
            [state, response, &facts, metrics, finish](const absl::Status& s) {
              absl::Status status = s;
              if (status.ok()) {
                status = FillInferResponse(state->call, facts, &state->classify, &state->embed,
                                           response);
              }
              finish(metrics, status);
            });
}

}  // namespace convnext::server
