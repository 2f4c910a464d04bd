#include "server/service.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "base/status_macros.h"
#include "server/log.h"
#include "server/status_util.h"

namespace convnext::server {
namespace {

// Images per request at most: a request is admitted whole, so it must fit a model's queue.
constexpr int kMaxImagesPerRequest = 1024;
// Boxes per image at most (EmbedRequest.regions): pooling each costs up to a pass over a stage map.
constexpr int kMaxRegionsPerImage = 256;

absl::Status CheckImages(int count) {
  if (count == 0) return absl::InvalidArgumentError("the request has no images");
  if (count > kMaxImagesPerRequest) {
    return absl::InvalidArgumentError(
        absl::StrCat("the request has ", count, " images, more than ", kMaxImagesPerRequest));
  }
  return absl::OkStatus();
}

// The request's regions into `params`: boxes checked for what needs no image (finite, ordered,
// not negative, at most kMaxRegionsPerImage an image) and the pooling options for their ranges.
// The image's own bounds are checked once it is decoded (ModelHost::Preprocess).
absl::Status ParseRegions(const v1::EmbedRequest& request, InferenceRequest::Params* params) {
  if (request.regions().empty()) return absl::OkStatus();
  if (request.regions_size() != request.images_size()) {
    return absl::InvalidArgumentError(absl::StrCat("regions has ", request.regions_size(),
                                                   " entries for ", request.images_size(),
                                                   " images: give one per image (or none)"));
  }
  const v1::RegionPooling& pooling = request.region_pooling();
  std::set<int> seen;
  for (int s : pooling.stages()) {
    if (s < 1 || s > 4 || !seen.insert(s).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("region_pooling.stages must be distinct values in 1..4, got ", s));
    }
    params->region_stages.push_back(s);
  }
  if (params->region_stages.empty()) params->region_stages.push_back(4);
  RoiAlignOptions& o = params->region_pooling;
  o.output_size = pooling.output_size() == 0
                      ? 1
                      : static_cast<int>(std::min<uint32_t>(pooling.output_size(), 1u << 20));
  o.sampling_ratio = static_cast<int>(std::min<uint32_t>(pooling.sampling_ratio(), 1u << 20));
  o.aligned = pooling.aligned();
  if (absl::Status s = CheckRoiOptions(o); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("region_pooling: ", s.message()));
  }
  bool any = false;
  params->boxes.resize(request.regions_size());
  for (int i = 0; i < request.regions_size(); ++i) {
    const auto& boxes = request.regions(i).boxes();
    if (boxes.size() > kMaxRegionsPerImage) {
      return absl::InvalidArgumentError(absl::StrCat("image ", i, " has ", boxes.size(),
                                                     " boxes, more than the limit of ",
                                                     kMaxRegionsPerImage));
    }
    const auto& masks = request.regions(i).masks();
    if (!masks.empty() && masks.size() != boxes.size()) {
      return absl::InvalidArgumentError(absl::StrCat("image ", i, " has ", masks.size(),
                                                     " masks for ", boxes.size(),
                                                     " boxes: give one per box (or none)"));
    }
    for (int j = 0; j < boxes.size(); ++j) {
      const v1::Box& b = boxes.Get(j);
      if (!std::isfinite(b.x1()) || !std::isfinite(b.y1()) || !std::isfinite(b.x2()) ||
          !std::isfinite(b.y2()) || b.x1() < 0 || b.y1() < 0 || b.x1() > b.x2() ||
          b.y1() > b.y2()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "image ", i, " box ", j, " (", b.x1(), ", ", b.y1(), ", ", b.x2(), ", ", b.y2(),
            ") must have finite coordinates with 0 <= x1 <= x2 and 0 <= y1 <= y2"));
      }
      RegionBox box{b.x1(), b.y1(), b.x2(), b.y2(), /*mask_size=*/0, /*mask=*/{}};
      if (!masks.empty()) {
        const v1::RegionMask& m = masks.Get(j);
        if (m.size() < 1 || m.size() > static_cast<uint32_t>(kMaxRegionMaskSize) ||
            m.weights_size() != static_cast<int>(m.size() * m.size())) {
          return absl::InvalidArgumentError(
              absl::StrCat("image ", i, " mask ", j, " must have a size in 1..", kMaxRegionMaskSize,
                           " and size x size weights, got size ", m.size(), " and ",
                           m.weights_size(), " weights"));
        }
        box.mask_size = static_cast<int>(m.size());
        box.mask.assign(m.weights().begin(), m.weights().end());
        // The mask's own checks (weights, output_size), before any image is decoded.
        if (absl::Status s = CheckRegionBox(box, StageStride(1), o); !s.ok()) {
          return absl::InvalidArgumentError(
              absl::StrCat("image ", i, " box ", j, ": ", s.message()));
        }
      }
      params->boxes[i].push_back(std::move(box));
    }
    any |= !boxes.empty();
  }
  if (!any) params->boxes.clear();
  return absl::OkStatus();
}

// The request's stage_pooling into `params`: a known kind, a grid in 1..kMaxPoolingGrid, a
// finite GeM exponent > 0, and stage maps to pool.
absl::Status ParseStagePooling(const v1::EmbedRequest& request, InferenceRequest::Params* params) {
  const v1::SpatialPooling& p = request.stage_pooling();
  if (!v1::SpatialPooling::Kind_IsValid(p.kind())) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown stage_pooling kind ", static_cast<int>(p.kind())));
  }
  if (p.kind() == v1::SpatialPooling::NONE) return absl::OkStatus();
  if (request.stages().empty()) {
    return absl::InvalidArgumentError("stage_pooling needs stages to pool: list them in stages");
  }
  StagePooling& out = params->stage_pooling;
  out.kind = p.kind() == v1::SpatialPooling::AVERAGE ? StagePooling::Kind::kAverage
             : p.kind() == v1::SpatialPooling::MAX   ? StagePooling::Kind::kMax
                                                     : StagePooling::Kind::kGeM;
  if (p.grid() > static_cast<uint32_t>(kMaxPoolingGrid)) {
    return absl::InvalidArgumentError(
        absl::StrCat("stage_pooling.grid must be in 1..", kMaxPoolingGrid, ", got ", p.grid()));
  }
  out.grid = p.grid() == 0 ? 1 : static_cast<int>(p.grid());
  out.gem_p = p.gem_p() == 0 ? 3.0f : p.gem_p();
  if (!std::isfinite(out.gem_p) || !(out.gem_p > 0) || out.gem_p > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("stage_pooling.gem_p must be in (0, 64], got ", p.gem_p()));
  }
  return absl::OkStatus();
}

}  // namespace

ImageModelServiceImpl::ImageModelServiceImpl(const ModelRepository* models, ServiceOptions options)
    : models_(models), options_(options) {}

void ImageModelServiceImpl::Answer(grpc::ServerUnaryReactor* reactor, const std::string& model,
                                   ModelMetrics* metrics, Method method, absl::Time start,
                                   const absl::Status& status) {
  Record(model, metrics, method, start, status);
  reactor->Finish(ToGrpcStatus(status));
}

void ImageModelServiceImpl::Record(const std::string& model, ModelMetrics* metrics, Method method,
                                   absl::Time start, const absl::Status& status) {
  const grpc::Status grpc_status = ToGrpcStatus(status);
  const int64_t latency_us = absl::ToInt64Microseconds(absl::Now() - start);
  RecordRequest(metrics, method, grpc_status.error_code(), latency_us);
  if (options_.access_log) {
    Log(status.ok() ? "info" : "warning", "request",
        {{"model", model},
         {"method", MethodName(method)},
         {"request_id", absl::StrCat(next_request_id_++)},
         {"status", absl::StatusCodeToString(status.code())},
         {"latency_us", absl::StrCat(latency_us)},
         {"message", std::string(status.message().substr(0, 200))}});
  }
}

grpc::ServerUnaryReactor* ImageModelServiceImpl::Run(
    grpc::CallbackServerContext* ctx, ModelHost* host, const InferenceRequest::Params& params,
    const google::protobuf::RepeatedPtrField<v1::Image>& images, v1::ClassifyResponse* classify,
    v1::EmbedResponse* embed, Method method, absl::Time start) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  host->Run(params, images, DeadlineOf(*ctx), ctx, classify, embed,
            [this, reactor, model = host->name(), metrics = host->metrics(), method,
             start](const absl::Status& s) { Answer(reactor, model, metrics, method, start, s); });
  return reactor;
}

grpc::ServerUnaryReactor* ImageModelServiceImpl::AnswerNow(grpc::CallbackServerContext* ctx,
                                                           const ModelHost* host, Method method,
                                                           absl::Time start,
                                                           const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (host != nullptr) {
    Answer(reactor, host->name(), host->metrics(), method, start, status);
  } else {
    Answer(reactor, kUnknownModelLabel, Metrics::ForModel(kUnknownModelLabel, ""), method, start,
           status);
  }
  return reactor;
}

grpc::ServerUnaryReactor* ImageModelServiceImpl::Classify(grpc::CallbackServerContext* ctx,
                                                          const v1::ClassifyRequest* request,
                                                          v1::ClassifyResponse* response) {
  const absl::Time start = absl::Now();
  constexpr Method kMethod = Method::kClassify;
  absl::StatusOr<std::shared_ptr<ModelHost>> host =
      models_->Find(request->model(), request->model_version());
  if (!host.ok()) return AnswerNow(ctx, nullptr, kMethod, start, host.status());
  const std::string& model = (*host)->name();
  auto fail = [&](const absl::Status& s) { return AnswerNow(ctx, host->get(), kMethod, start, s); };
  if (absl::Status s = CheckImages(request->images_size()); !s.ok()) return fail(s);
  const int64_t classes = (*host)->architecture().num_classes;
  if (classes == 0) {
    return fail(absl::FailedPreconditionError(absl::StrCat(
        "model '", model, "' has no classification head; use Embed for its features")));
  }
  InferenceRequest::Params params;
  params.kind = InferenceRequest::Kind::kClassify;
  params.top_k =
      request->top_k() == 0 ? 5 : static_cast<int>(std::min<uint32_t>(request->top_k(), 1u << 30));
  if (params.top_k > classes) {
    return fail(absl::InvalidArgumentError(absl::StrCat(
        "top_k = ", request->top_k(), " is more than the model's ", classes, " classes")));
  }
  response->set_model(model);
  response->set_model_version((*host)->version());
  response->set_embedding_space((*host)->embedding_space(false));
  for (int i = 0; i < request->images_size(); ++i) response->add_results();
  return Run(ctx, host->get(), params, request->images(), response, nullptr, kMethod, start);
}

absl::Status ImageModelServiceImpl::EmbedParams(const v1::EmbedRequest& request,
                                                const ModelHost& host,
                                                InferenceRequest::Params* params) {
  RETURN_IF_ERROR(CheckImages(request.images_size()));
  params->kind = InferenceRequest::Kind::kEmbed;
  params->include_embedding = request.include_embedding();
  params->normalize = request.normalize();
  std::set<int> seen;
  for (int s : request.stages()) {
    if (s < 1 || s > 4 || !seen.insert(s).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("stages must be distinct values in 1..4, got ", s));
    }
    params->stages.push_back(s);
  }
  RETURN_IF_ERROR(ParseRegions(request, params));
  if (!params->include_embedding && params->stages.empty() && params->boxes.empty()) {
    return absl::InvalidArgumentError(
        "nothing to compute: set include_embedding, list stages or give regions");
  }
  if (params->include_embedding && host.architecture().stage_norms) {
    return absl::FailedPreconditionError(
        absl::StrCat("model '", host.name(),
                     "' is a detection backbone without a pooled embedding; ask for stages"));
  }
  if (!v1::DataType_IsValid(request.dtype())) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown dtype ", static_cast<int>(request.dtype())));
  }
  params->dtype = request.dtype() == v1::DATA_TYPE_UNSPECIFIED ? v1::FP32 : request.dtype();
  RETURN_IF_ERROR(ParseStagePooling(request, params));
  if (!v1::ResizePolicy_IsValid(request.resize())) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown resize policy ", static_cast<int>(request.resize())));
  }
  params->resize = request.resize() == v1::KEEP_SIZE ? v1::KEEP_SIZE : v1::CLASSIFICATION;
  return absl::OkStatus();
}

void ImageModelServiceImpl::StartEmbedResponse(const v1::EmbedRequest& request,
                                               const ModelHost& host,
                                               const InferenceRequest::Params& params,
                                               v1::EmbedResponse* response) {
  response->set_model(host.name());
  response->set_model_version(host.version());
  response->set_embedding_space(host.embedding_space(params.normalize));
  for (int i = 0; i < request.images_size(); ++i) response->add_results();
}

grpc::ServerUnaryReactor* ImageModelServiceImpl::Embed(grpc::CallbackServerContext* ctx,
                                                       const v1::EmbedRequest* request,
                                                       v1::EmbedResponse* response) {
  const absl::Time start = absl::Now();
  constexpr Method kMethod = Method::kEmbed;
  absl::StatusOr<std::shared_ptr<ModelHost>> host =
      models_->Find(request->model(), request->model_version());
  if (!host.ok()) return AnswerNow(ctx, nullptr, kMethod, start, host.status());
  InferenceRequest::Params params;
  if (absl::Status s = EmbedParams(*request, **host, &params); !s.ok()) {
    return AnswerNow(ctx, host->get(), kMethod, start, s);
  }
  StartEmbedResponse(*request, **host, params, response);
  return Run(ctx, host->get(), params, request->images(), nullptr, response, kMethod, start);
}

// An EmbedStream call: computes the answer as Embed does, then writes it as a header and pieces
// of at most chunk_bytes, one write at a time (the next from OnWriteDone), so that at most one
// piece is copied at any time. Deletes itself when gRPC is done with it.
class ImageModelServiceImpl::EmbedStreamReactor : public grpc::ServerWriteReactor<v1::EmbedChunk> {
 public:
  EmbedStreamReactor(ImageModelServiceImpl* service, absl::Time start)
      : service_(service), start_(start) {}

  // Validates and admits the call, or finishes it with the error.
  void Start(grpc::CallbackServerContext* ctx, const v1::EmbedStreamRequest& stream_request) {
    const v1::EmbedRequest& request = stream_request.request();
    absl::StatusOr<std::shared_ptr<ModelHost>> host =
        service_->models_->Find(request.model(), request.model_version());
    if (!host.ok()) {
      model_ = kUnknownModelLabel;
      metrics_ = Metrics::ForModel(kUnknownModelLabel, "");
      return Done(host.status());
    }
    model_ = (*host)->name();
    metrics_ = (*host)->metrics();
    const uint32_t chunk = stream_request.chunk_bytes();
    if (chunk != 0 && (chunk < kMinChunkBytes || chunk > kMaxChunkBytes)) {
      return Done(absl::InvalidArgumentError(absl::StrCat("chunk_bytes must be 0 (1 MiB) or in ",
                                                          kMinChunkBytes, "..", kMaxChunkBytes,
                                                          ", got ", chunk)));
    }
    chunk_bytes_ = chunk == 0 ? kDefaultChunkBytes : chunk;
    InferenceRequest::Params params;
    if (absl::Status s = service_->EmbedParams(request, **host, &params); !s.ok()) return Done(s);
    params.streamed = true;
    StartEmbedResponse(request, **host, params, &response_);
    (*host)->Run(params, request.images(), DeadlineOf(*ctx), ctx, nullptr, &response_,
                 [this](const absl::Status& s) { Computed(s); });
  }

  void OnWriteDone(bool ok) override {
    if (!ok) return Done(absl::CancelledError("the client stopped reading the stream"));
    WriteNext();
  }

  void OnDone() override { delete this; }

 private:
  static constexpr uint32_t kMinChunkBytes = 1 << 10;
  static constexpr uint32_t kMaxChunkBytes = 16 << 20;
  static constexpr uint32_t kDefaultChunkBytes = 1 << 20;

  // The answer is complete (or failed): take every tensor's data out of it, send the rest.
  void Computed(const absl::Status& status) {
    if (!status.ok()) return Done(status);
    for (v1::Embedding& e : *response_.mutable_results()) {
      if (e.embedding().shape_size() > 0) Take(e.mutable_embedding());
      for (v1::Tensor& t : *e.mutable_stages()) Take(&t);
      for (v1::Tensor& t : *e.mutable_regions()) Take(&t);
    }
    *chunk_.mutable_header() = std::move(response_);
    StartWrite(&chunk_);
  }

  void Take(v1::Tensor* t) {
    data_.push_back(std::move(*t->mutable_data()));
    t->clear_data();
  }

  // The next piece, or the end of the stream.
  void WriteNext() {
    while (tensor_ < data_.size() && offset_ >= data_[tensor_].size()) {
      std::string().swap(data_[tensor_]);  // Sent: free it now.
      ++tensor_;
      offset_ = 0;
    }
    if (tensor_ >= data_.size()) return Done(absl::OkStatus());
    const std::string& d = data_[tensor_];
    const size_t n = std::min<size_t>(chunk_bytes_, d.size() - offset_);
    chunk_.Clear();
    chunk_.set_tensor(static_cast<uint32_t>(tensor_));
    chunk_.set_offset(offset_);
    chunk_.set_data(d.data() + offset_, n);
    offset_ += n;
    StartWrite(&chunk_);
  }

  void Done(const absl::Status& status) {
    service_->Record(model_, metrics_, Method::kEmbedStream, start_, status);
    Finish(ToGrpcStatus(status));
  }

  ImageModelServiceImpl* const service_;
  const absl::Time start_;
  std::string model_;
  ModelMetrics* metrics_ = nullptr;
  uint32_t chunk_bytes_ = kDefaultChunkBytes;
  v1::EmbedResponse response_;
  v1::EmbedChunk chunk_;
  std::vector<std::string> data_;  // Each tensor's data, in answer order.
  size_t tensor_ = 0;              // The tensor being sent.
  size_t offset_ = 0;              // Its bytes sent.
};

grpc::ServerWriteReactor<v1::EmbedChunk>* ImageModelServiceImpl::EmbedStream(
    grpc::CallbackServerContext* ctx, const v1::EmbedStreamRequest* request) {
  auto* reactor = new EmbedStreamReactor(this, absl::Now());
  reactor->Start(ctx, *request);
  return reactor;
}

grpc::ServerUnaryReactor* ImageModelServiceImpl::ListModels(grpc::CallbackServerContext* ctx,
                                                            const v1::ListModelsRequest*,
                                                            v1::ListModelsResponse* response) {
  const absl::Time start = absl::Now();
  for (v1::ModelInfo& info : models_->List()) response->add_models()->Swap(&info);
  response->set_default_model(models_->default_model());
  absl::StatusOr<std::shared_ptr<ModelHost>> host = models_->Find("", "");
  return AnswerNow(ctx, host.ok() ? host->get() : nullptr, Method::kListModels, start,
                   absl::OkStatus());
}

grpc::ServerUnaryReactor* ImageModelServiceImpl::GetModel(grpc::CallbackServerContext* ctx,
                                                          const v1::GetModelRequest* request,
                                                          v1::ModelInfo* response) {
  const absl::Time start = absl::Now();
  absl::StatusOr<v1::ModelInfo> info = models_->Describe(request->name(), request->version());
  if (!info.ok()) return AnswerNow(ctx, nullptr, Method::kGetModel, start, info.status());
  *response = *std::move(info);
  absl::StatusOr<std::shared_ptr<ModelHost>> host =
      models_->Find(response->name(), response->version());
  return AnswerNow(ctx, host.ok() ? host->get() : nullptr, Method::kGetModel, start,
                   absl::OkStatus());
}

}  // namespace convnext::server
