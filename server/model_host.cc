#include "server/model_host.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "checkpoint/npy.h"
#include "model/device.h"
#include "model/onednn_stage.h"
#include "model/process_tuning.h"
#include "server/image_input.h"
#include "server/log.h"
#include "server/tensor_proto.h"

namespace convnext::server {
namespace {

int64_t Micros(absl::Duration d) { return absl::ToInt64Microseconds(d); }

absl::StatusOr<std::string> Sha256File(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read '", path, "'"));
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), buf.size());
    EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(in.gcount()));
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), digest, &len);
  std::string hex;
  for (unsigned int i = 0; i < len; ++i)
    absl::StrAppend(&hex, absl::Hex(digest[i], absl::kZeroPad2));
  return hex;
}

// The class names: those of `labels_file` (one per line, as many as `classes`) if it is set,
// else the checkpoint's own.
absl::StatusOr<std::vector<std::string>> ReadLabels(const std::string& path, int64_t classes,
                                                    std::vector<std::string> from_checkpoint) {
  if (path.empty()) return from_checkpoint;
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("labels_file '", path, "' cannot be read"));
  std::vector<std::string> labels;
  for (std::string line; std::getline(in, line);) labels.push_back(line);
  if (static_cast<int64_t>(labels.size()) != classes) {
    return absl::InvalidArgumentError(absl::StrCat("labels_file '", path, "' has ", labels.size(),
                                                   " lines, the model has ", classes, " classes"));
  }
  return labels;
}

// The first 16 bytes of SHA-256 over `text`, in hex.
std::string ShortDigest(const std::string& text) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(text.data(), text.size(), digest, &len, EVP_sha256(), nullptr);
  std::string hex;
  for (unsigned int i = 0; i < 16 && i < len; ++i)
    absl::StrAppend(&hex, absl::Hex(digest[i], absl::kZeroPad2));
  return hex;
}

// Everything that decides where an image's embedding lands: the weights (the checkpoint file's
// digest), the transform before the network, the pooling, and the normalisation.
std::string EmbeddingSpace(const std::string& checkpoint_sha256,
                           const server::PreprocessingConfig& p, bool normalized) {
  return absl::StrCat(
      "es1-", ShortDigest(absl::StrCat(
                  "checkpoint=", checkpoint_sha256, ";size=", p.size(), ";crop_pct=", p.crop_pct(),
                  ";interpolation=", p.interpolation(), ";mean=", absl::StrJoin(p.mean(), ","),
                  ";std=", absl::StrJoin(p.std(), ","), ";channels=RGB;exif=applied",
                  ";pool=global_average+layernorm;l2=", normalized ? "1" : "0")));
}

// Variable-size batching (BatchingConfig.max_batch_pixels): a side that is a multiple of 32
// rounded up to its resolution bucket, a multiple of max(32, a quarter of the largest power of
// two not above it): 32s up to 256, then 64s up to 512, 128s up to 1024, ...
int64_t BucketSide(int64_t side) {
  int64_t power = 1;
  while (power * 2 <= side) power *= 2;
  const int64_t step = std::max<int64_t>(32, power / 4);
  return (side + step - 1) / step * step;
}

// Where an input of height x width batches: its own shape, or, with variable-size batching and
// sides that are multiples of 32, its bucket, whose batches hold max_batch_pixels of bucket.
struct BatchPlace {
  int64_t height = 0, width = 0;  // The batch's input size (the bucket, or the input's own).
  size_t max_batch = 0;           // The bucket's batch limit; 0: not bucketed (max_batch_size).
};

BatchPlace PlaceInBatch(const server::BatchingConfig& batching, int64_t height, int64_t width) {
  BatchPlace place{height, width, 0};
  if (batching.max_batch_pixels() == 0 || height % 32 != 0 || width % 32 != 0) return place;
  place.height = BucketSide(height);
  place.width = BucketSide(width);
  const uint64_t fit =
      batching.max_batch_pixels() / static_cast<uint64_t>(place.height * place.width);
  place.max_batch = static_cast<size_t>(
      std::clamp<uint64_t>(fit, 1, std::max<uint32_t>(1, batching.max_batch_size())));
  return place;
}

// Images of different kinds batch apart (they ask for different outputs), as do images that
// need a different number of stages computed (an Embed of stages 1-2 stops after stage 2), and
// only images of one input shape share a batch, or, bucketed, of one bucket.
std::string BatchKey(InferenceRequest::Kind kind, int deepest_stage, const at::Tensor& input,
                     const BatchPlace& place) {
  return absl::StrCat(static_cast<int>(kind), ":", deepest_stage, ":",
                      place.max_batch == 0 ? BatchShapeKey(input)
                                           : absl::StrCat("bucket:", input.size(1), "x",
                                                          place.height, "x", place.width));
}

// What an image of a request asks of the model, with `boxes` as its regions: as the client
// gave them (in the image's own pixels, which is all that estimates need), or mapped into the
// model input (MapBoxes).
ImageRequest ToImageRequest(const InferenceRequest::Params& p, std::vector<RegionBox> boxes) {
  ImageRequest r;
  if (InferenceRequest::Classifies(p.kind)) r.top_k = p.top_k;
  if (InferenceRequest::Embeds(p.kind)) {
    r.embedding = p.include_embedding;
    r.normalize = p.normalize;
    r.stages = p.stages;
    r.stage_pooling = p.stage_pooling;
    r.dtype = ToOutputDType(p.dtype);
    if (!p.boxes.empty()) {
      r.boxes = std::move(boxes);
      r.region_stages = p.region_stages;
      r.region_pooling = p.region_pooling;
    }
  }
  return r;
}

// Image `index`'s boxes mapped into its model input: each must lie in the image as decoded, then
// goes through the preprocessing's scale and crop, and must be one RoIAlign accepts on every
// stage it is pooled from (checked here, so that no box fails the batch it would join).
absl::StatusOr<std::vector<RegionBox>> MapBoxes(const InferenceRequest::Params& p, int index,
                                                const PreparedImage& image) {
  std::vector<RegionBox> out;
  if (p.boxes.empty()) return out;
  const InputTransform& t = image.transform;
  const std::vector<RegionBox>& boxes = p.boxes[index];
  for (size_t j = 0; j < boxes.size(); ++j) {
    const RegionBox& b = boxes[j];
    if (b.x2 > static_cast<float>(image.width) || b.y2 > static_cast<float>(image.height)) {
      return absl::InvalidArgumentError(absl::StrCat("box ", j, " (", b.x1, ", ", b.y1, ", ", b.x2,
                                                     ", ", b.y2, ") is not inside the ",
                                                     image.width, "x", image.height, " image"));
    }
    // A mask lies over its box, wherever the box goes.
    RegionBox mapped{static_cast<float>(b.x1 * t.scale_x - t.offset_x),
                     static_cast<float>(b.y1 * t.scale_y - t.offset_y),
                     static_cast<float>(b.x2 * t.scale_x - t.offset_x),
                     static_cast<float>(b.y2 * t.scale_y - t.offset_y),
                     b.mask_size,
                     b.mask};
    for (int s : p.region_stages) {
      if (absl::Status st = CheckRegionBox(mapped, StageStride(s), p.region_pooling); !st.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("box ", j, ": ", st.message()));
      }
    }
    out.push_back(std::move(mapped));
  }
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ModelHost>> ModelHost::Create(const ModelHostOptions& options) {
  const server::ModelConfig& config = options.config;
  auto annotate = [&config](const absl::Status& s) {
    return absl::Status(s.code(), absl::StrCat("model '", config.name(), "' version ",
                                               config.version(), ": ", s.message()));
  };
  std::unique_ptr<ModelHost> host(new ModelHost(options));
  host->metrics_ = Metrics::ForModel(config.name(), config.version());

  LoadOptions load;
  load.path = config.checkpoint();
  load.variant = config.variant();
  load.model.cpu_fast_path = !config.disable_cpu_fast_path();
  load.max_checkpoint_bytes = config.max_checkpoint_bytes();
  load.fingerprint_trunk = !config.head().empty();
  // CUDA only (config validation refuses it elsewhere; the model layer's CPU stand-in for tests,
  // SetCpuGraphsForTesting, takes it too). One graph per batch size for each executor.
  load.model.cuda_graph_max_batch = config.cuda_graph_max_batch();
  load.model.cuda_graph_copies = std::max<int64_t>(1, config.batching().instances());
  std::vector<c10::Device> devices;
  for (const std::string& name : config.devices()) {
    absl::StatusOr<c10::Device> device = ParseDevice(name);
    if (!device.ok()) return annotate(device.status());
    devices.push_back(*device);
  }
  // Config validation let through one or more devices, all of one kind.
  const c10::Device* device = &devices[0];
  load.model.device = *device;
  if (device->is_cuda()) {
    EnableDeviceMetrics(host->metrics_, config.name(), config.version());
    // The whole model in the configured dtype, weights cast once at load (config validation let
    // only these through for CUDA).
    if (config.compute_dtype() == server::FP16) load.model.dtype = at::kHalf;
    if (config.compute_dtype() == server::BF16) load.model.dtype = at::kBFloat16;
    load.model.allow_tf32 = config.compute_dtype() == server::TF32;
    load.model.owner = absl::StrCat("model '", config.name(), "' version ", config.version());
    if (config.compute_dtype() == server::AUTO) {
      host->compute_dtype_reason_ =
          "AUTO: float32 on a CUDA device (TensorFloat-32 off); FP16 and BF16 are opt-in";
      Log("info", "compute_dtype_chosen",
          {{"model", config.name()},
           {"version", config.version()},
           {"compute_dtype", "float32"},
           {"reason", host->compute_dtype_reason_}});
    }
  } else if (config.compute_dtype() == server::BF16) {
    load.model.cpu_precision = BlockPrecision::kBFloat16;
  } else if (config.compute_dtype() == server::AUTO) {
    const bool fast_path = FastPathApplies(load.model);
    if (fast_path && CpuHasAmx()) {
      load.model.cpu_precision = BlockPrecision::kBFloat16;
      host->compute_dtype_reason_ =
          absl::StrCat("AUTO: AMX on this CPU (oneDNN ISA ", OneDnnIsaName(), ")");
    } else if (!fast_path) {
      host->compute_dtype_reason_ =
          "AUTO: bfloat16 blocks run on the CPU fast path only, which this model does not use";
    } else if (CpuHasNativeBf16()) {
      host->compute_dtype_reason_ = absl::StrCat(
          "AUTO: no AMX on this CPU (oneDNN ISA ", OneDnnIsaName(),
          "); its native bfloat16 without AMX measured slower than float32 (README, Numerics)");
    } else {
      host->compute_dtype_reason_ =
          absl::StrCat("AUTO: no native bfloat16 on this CPU (oneDNN ISA ", OneDnnIsaName(), ")");
    }
    Log("info", "compute_dtype_chosen",
        {{"model", config.name()},
         {"version", config.version()},
         {"compute_dtype", BlockPrecisionName(load.model.cpu_precision)},
         {"reason", host->compute_dtype_reason_}});
  }
  absl::StatusOr<LoadedModel> loaded = LoadModel(load);
  if (!loaded.ok()) return annotate(loaded.status());
  host->loaded_ = *std::move(loaded);
  // One replica per device: the first is the model just loaded, the others load the same
  // checkpoint onto theirs. A replica's failure names it when there are several.
  auto on_replica = [&](size_t r, const absl::Status& s) {
    if (devices.size() == 1) return annotate(s);
    return annotate(absl::Status(
        s.code(), absl::StrCat("replica ", r, " on ", devices[r].str(), ": ", s.message())));
  };
  host->replicas_.resize(devices.size());
  for (size_t r = 0; r < devices.size(); ++r) {
    Replica& replica = host->replicas_[r];
    if (r == 0) {
      replica.model = host->loaded_.model.get();
    } else {
      load.model.device = devices[r];
      load.fingerprint_trunk = false;
      absl::StatusOr<LoadedModel> copy = LoadModel(load);
      if (!copy.ok()) return on_replica(r, copy.status());
      replica.owned = std::move(copy->model);
      replica.model = replica.owned.get();
    }
    replica.metrics =
        Metrics::ForReplica(config.name(), config.version(), static_cast<int>(r), devices[r].str());
  }
  absl::StatusOr<std::vector<std::string>> labels =
      ReadLabels(config.labels_file(), host->architecture().num_classes, host->loaded_.labels);
  if (!labels.ok()) return annotate(labels.status());
  host->labels_ = *std::move(labels);
  absl::StatusOr<std::string> sha = Sha256File(config.checkpoint());
  if (!sha.ok()) return annotate(sha.status());
  host->checkpoint_sha256_ = *sha;

  absl::StatusOr<PreprocessConfig> preprocess =
      ToPreprocessConfig(config.preprocessing(), options.max_image_pixels);
  if (!preprocess.ok()) return annotate(preprocess.status());
  host->preprocess_ = *preprocess;
  host->memory_ = std::make_unique<MemoryBudget>(
      static_cast<int64_t>(config.batching().max_memory_bytes()), options.process_memory);
  // Every replica warmed up and golden-checked on its own device.
  for (size_t r = 0; r < host->replicas_.size(); ++r) {
    const ConvNeXt& model = *host->replicas_[r].model;
    if (absl::Status s =
            WarmUp(model, config.batching().max_batch_size(), config.preprocessing().size());
        !s.ok()) {
      return on_replica(r, s);
    }
    for (const server::GoldenCase& golden : config.golden()) {
      if (absl::Status s = host->CheckGolden(golden, model); !s.ok()) return on_replica(r, s);
    }
  }
  for (int normalized = 0; normalized < 2; ++normalized) {
    host->embedding_space_[normalized] =
        EmbeddingSpace(host->checkpoint_sha256_, config.preprocessing(), normalized != 0);
  }
  for (int i = 0; i < config.head_size(); ++i) {
    if (absl::Status s = host->AddHead(i); !s.ok()) return annotate(s);
  }
  host->loaded_.trunk.clear();

  BatcherOptions batcher;
  batcher.queue.max_batch_size = config.batching().max_batch_size();
  batcher.queue.max_queue_delay = absl::Microseconds(config.batching().max_queue_delay_us());
  batcher.queue.max_queue_size = config.batching().max_queue_size();
  batcher.num_executors = static_cast<int>(config.batching().instances() * host->replicas_.size());
  ModelHost* raw = host.get();
  absl::StatusOr<std::unique_ptr<Batcher<WorkPtr>>> b = Batcher<WorkPtr>::Create(
      batcher,
      [raw](std::vector<Batcher<WorkPtr>::Item> batch) { raw->ProcessBatch(std::move(batch)); },
      [raw](WorkPtr work, DropReason reason) {
        raw->End(*work,
                 reason == DropReason::kDeadlineExceeded
                     ? absl::DeadlineExceededError("the deadline passed while the image was queued")
                     : absl::CancelledError("the call was cancelled or failed"));
      },
      [](const WorkPtr& work) { return work->request->Abandoned(); });
  if (!b.ok()) return annotate(b.status());
  host->batcher_ = *std::move(b);
  host->ready_ = true;
  return host;
}

absl::Status ModelHost::AddHead(int index) {
  const server::HeadConfig& h = options_.config.head(index);
  auto annotate = [&h](const absl::Status& s) {
    return absl::Status(s.code(), absl::StrCat("head '", h.name(), "': ", s.message()));
  };
  LoadOptions load;
  load.path = h.checkpoint();
  load.max_checkpoint_bytes = options_.config.max_checkpoint_bytes();
  absl::StatusOr<LoadedHead> loaded = LoadHead(load, *loaded_.model, loaded_.trunk);
  if (!loaded.ok()) return annotate(loaded.status());
  std::vector<ConvNeXtHead> per_replica = {std::move(loaded->head)};
  for (size_t r = 1; r < replicas_.size(); ++r) {  // The same head on each replica's device.
    absl::StatusOr<LoadedHead> copy = LoadHead(load, *replicas_[r].model, loaded_.trunk);
    if (!copy.ok()) return annotate(copy.status());
    per_replica.push_back(std::move(copy->head));
  }

  ModelHostOptions options = options_;
  server::ModelConfig& config = options.config;
  config.set_name(h.name());
  config.set_checkpoint(h.checkpoint());
  config.set_labels_file(h.labels_file());
  config.clear_head();
  config.clear_golden();
  std::unique_ptr<ModelHost> view(new ModelHost(options));
  view->trunk_ = this;
  view->head_ = std::move(per_replica);
  view->head_architecture_ = architecture();
  view->head_architecture_.num_classes = view->head_[0].num_classes;
  view->loaded_.format = loaded->format;
  view->loaded_.layout = loaded->layout;
  absl::StatusOr<std::vector<std::string>> labels =
      ReadLabels(h.labels_file(), view->head_[0].num_classes, std::move(loaded->labels));
  if (!labels.ok()) return annotate(labels.status());
  view->labels_ = *std::move(labels);
  absl::StatusOr<std::string> sha = Sha256File(h.checkpoint());
  if (!sha.ok()) return annotate(sha.status());
  view->checkpoint_sha256_ = *sha;
  view->preprocess_ = preprocess_;
  view->compute_dtype_reason_ = compute_dtype_reason_;
  for (int normalized = 0; normalized < 2; ++normalized) {
    view->embedding_space_[normalized] =
        EmbeddingSpace(view->checkpoint_sha256_, config.preprocessing(), normalized != 0);
  }
  view->metrics_ = Metrics::ForModel(h.name(), config.version());
  view->ready_ = true;
  heads_.push_back(std::move(view));
  return absl::OkStatus();
}

ModelHost* ModelHost::head(absl::string_view name) const {
  for (const auto& h : heads_) {
    if (h->name() == name) return h.get();
  }
  return nullptr;
}

std::vector<ModelHost*> ModelHost::heads() const {
  std::vector<ModelHost*> out;
  for (const auto& h : heads_) out.push_back(h.get());
  return out;
}

ModelHost::~ModelHost() { Shutdown(); }

void ModelHost::StopAdmitting() {
  stopping_ = true;
  ready_ = false;
  for (const auto& h : heads_) h->StopAdmitting();
}

void ModelHost::Shutdown() {
  StopAdmitting();
  if (batcher_ != nullptr) batcher_->Shutdown();
}

int64_t ModelHost::pending_images() const {
  if (trunk_ != nullptr) return trunk_->pending_images();
  absl::MutexLock lock(&pending_mu_);
  return pending_images_;
}

bool ModelHost::WaitUntilIdle(absl::Time deadline) const {
  if (trunk_ != nullptr) return trunk_->WaitUntilIdle(deadline);
  absl::MutexLock lock(&pending_mu_);
  const int64_t* pending = &pending_images_;
  return pending_mu_.AwaitWithDeadline(absl::Condition(
                                           +[](const int64_t* n) { return *n == 0; }, pending),
                                       deadline);
}

void ModelHost::Run(const InferenceRequest::Params& params,
                    const google::protobuf::RepeatedPtrField<v1::Image>& images,
                    absl::Time deadline, grpc::CallbackServerContext* ctx,
                    v1::ClassifyResponse* classify, v1::EmbedResponse* embed,
                    InferenceRequest::DoneFn done) {
  AddInFlight(metrics_, 1);
  InferenceRequest::DoneFn finish = [metrics = metrics_,
                                     done = std::move(done)](const absl::Status& s) {
    AddInFlight(metrics, -1);
    done(s);
  };
  auto request = std::make_shared<InferenceRequest>(params, images.size(), deadline, ctx, classify,
                                                    embed, finish);
  // A refused request never reaches its own done function.
  if (absl::Status s = Submit(request, images); !s.ok()) finish(s);
}

absl::Status ModelHost::Submit(const std::shared_ptr<InferenceRequest>& request,
                               const google::protobuf::RepeatedPtrField<v1::Image>& images) {
  return trunk_ != nullptr ? trunk_->Admit(request, images, *this) : Admit(request, images, *this);
}

absl::Status ModelHost::Admit(const std::shared_ptr<InferenceRequest>& request,
                              const google::protobuf::RepeatedPtrField<v1::Image>& images,
                              ModelHost& served) {
  const int64_t n = images.size();
  const int64_t limit = options_.config.batching().max_queue_size();
  // Messages name the model the client called (a head's name for a head).
  const std::string& name = served.name();
  if (!served.ready()) {
    return absl::UnavailableError(
        absl::StrCat("model '", name, "' is not serving",
                     served.stopping_ || stopping_ ? ": the server is shutting down" : ""));
  }
  if (n > limit) {  // Could never be admitted: retrying cannot help.
    return absl::InvalidArgumentError(
        absl::StrCat("the request has ", n, " images, more than model '", name,
                     "' admits at once (batching.max_queue_size = ", limit,
                     "); split it into smaller requests"));
  }
  // What each image will cost, from headers and shapes only: nothing is decoded yet.
  const InferenceRequest::Params& params = request->params();
  std::vector<int64_t> costs(n);
  std::vector<int> deepest_stage(n);
  int64_t total = 0, answer = 0;
  for (int i = 0; i < n; ++i) {
    const ImageRequest outputs =
        ToImageRequest(params, params.boxes.empty() ? std::vector<RegionBox>() : params.boxes[i]);
    deepest_stage[i] = DeepestStage(outputs);
    absl::StatusOr<InputPlan> plan = PlanImage(images.Get(i), preprocess_, params.resize);
    if (!plan.ok()) {
      return absl::Status(plan.status().code(),
                          absl::StrCat("image ", i, ": ", plan.status().message()));
    }
    const int64_t output =
        EstimateOutputBytes(served.architecture(), outputs, plan->height, plan->width);
    // In a bucket's batch, the image's activations take the bucket's size.
    const BatchPlace place = PlaceInBatch(options_.config.batching(), plan->height, plan->width);
    costs[i] =
        plan->bytes + EstimateForwardBytes(architecture(), place.height, place.width) + output;
    total += costs[i];
    answer += output / 2;  // EstimateOutputBytes counts the serialised copy too.
  }
  if (!params.streamed && answer > options_.max_response_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the answer would be about ", answer >> 20,
                     " MiB, more than max_message_bytes (", options_.max_response_bytes >> 20,
                     " MiB); ask for fewer or smaller outputs (stages, "
                     "FP16, CLASSIFICATION resize) or fewer images per request"));
  }
  if (!memory_->CanEverFit(total)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the request needs about ", total >> 20, " MiB of memory, more than model '", name,
        "' may use at once (batching.max_memory_bytes = ", memory_->limit_bytes() >> 20,
        " MiB, within max_memory_bytes for the process); send smaller images or fewer per "
        "request"));
  }
  int64_t pending;
  {
    absl::MutexLock lock(&pending_mu_);
    if (pending_images_ + n > limit) {
      return absl::UnavailableError(absl::StrCat("model '", name, "' has ", limit,
                                                 " images in flight, its limit; retry later"));
    }
    if (!memory_->TryReserve(total)) {
      return absl::UnavailableError(absl::StrCat(
          "model '", name, "' has no memory budget left for this request now (it needs about ",
          total >> 20, " MiB); retry later"));
    }
    pending = pending_images_ += n;
  }
  SetQueueDepth(metrics_, pending);
  {
    absl::MutexLock lock(&served.stats_mu_);
    ++served.requests_;
  }
  const absl::Time now = absl::Now();
  for (int i = 0; i < n; ++i) {
    auto work = std::make_unique<Work>();
    work->request = request;
    work->served = &served;
    work->index = i;
    work->reserved_bytes = costs[i];
    work->admitted = now;
    work->deepest_stage = deepest_stage[i];
    const v1::Image* image = &images.Get(i);
    options_.preprocess_pool->Schedule(
        [this, w = work.release(), image] { Preprocess(WorkPtr(w), image); });
  }
  return absl::OkStatus();
}

void ModelHost::Preprocess(WorkPtr work, const v1::Image* image) {
  // No intra-op threads of this pool's own: the executors' are the process's (a KEEP_SIZE input's
  // zero fill, say, would otherwise start them here).
  UseOneIntraOpThreadOnThisThread();
  if (work->request->Abandoned()) {
    End(*work, absl::CancelledError("the call was cancelled or failed"));
    return;
  }
  const absl::Time start = absl::Now();
  absl::StatusOr<PreparedImage> input = absl::InternalError("not prepared");
  absl::StatusOr<std::vector<RegionBox>> boxes;
  try {  // OpenCV and LibTorch throw; the image must still end with a status.
    input = PrepareImage(*image, preprocess_, work->request->params().resize);
    if (input.ok()) {
      boxes = MapBoxes(work->request->params(), work->index, *input);
      if (!boxes.ok()) input = boxes.status();
    }
  } catch (const std::bad_alloc&) {
    input = absl::ResourceExhaustedError("out of memory while preparing the image");
  } catch (const std::exception& e) {
    input = absl::InternalError(absl::StrCat("preparing the image failed: ", e.what()));
  }
  if (!input.ok()) {
    End(*work, absl::Status(input.status().code(),
                            absl::StrCat("image ", work->index, ": ", input.status().message())));
    return;
  }
  work->preprocess_us = Micros(absl::Now() - start);
  work->input = std::move(input->input);
  work->boxes = *std::move(boxes);
  const BatchPlace place =
      work->input.dim() == 4
          ? PlaceInBatch(options_.config.batching(), work->input.size(2), work->input.size(3))
          : BatchPlace();
  const std::string key =
      BatchKey(work->request->params().kind, work->deepest_stage, work->input, place);
  const absl::Time deadline = work->request->deadline();
  absl::Status scheduled = batcher_->Schedule(work, key, deadline, place.max_batch);
  if (!scheduled.ok()) End(*work, scheduled);  // Schedule left `work` with us.
}

void ModelHost::End(const Work& work, const absl::Status& status) {
  int64_t pending;
  // Once the count is down, a retired host may be freed (the reaper waits for 0) before this
  // thread goes on when it is not one of the host's executors: nothing of `this` is read after.
  ModelMetrics* const metrics = metrics_;
  {
    absl::MutexLock lock(&pending_mu_);
    pending = --pending_images_;
    memory_->Release(work.reserved_bytes);
  }
  SetQueueDepth(metrics, pending);
  work.request->ImageDone(status);
}

int ModelHost::AcquireReplica() {
  if (replicas_.size() == 1) return 0;
  absl::MutexLock lock(&replicas_mu_);
  int best = 0;
  for (int r = 1; r < static_cast<int>(replicas_.size()); ++r) {
    if (replicas_[r].busy < replicas_[best].busy) best = r;
  }
  ++replicas_[best].busy;
  return best;
}

void ModelHost::ReleaseReplica(int r, int images) {
  Replica& replica = replicas_[r];
  uint64_t replays = 0;
  {
    absl::MutexLock lock(&replicas_mu_);
    if (replicas_.size() > 1) --replica.busy;
    ++replica.batches;
    replica.images += images;
    if (options_.config.cuda_graph_max_batch() > 0) {
      // The model counts its replays; read under the lock, each is counted once.
      const uint64_t total = static_cast<uint64_t>(replica.model->graph_replays());
      replays = total - replica.graph_replays;
      replica.graph_replays = total;
    }
  }
  RecordReplicaBatch(replica.metrics, images, replays);
}

void ModelHost::ProcessBatch(std::vector<Batcher<WorkPtr>::Item> batch) {
  const absl::Time start = absl::Now();
  const int r = AcquireReplica();
  const ConvNeXt& model = *replicas_[r].model;
  std::vector<at::Tensor> inputs;
  std::vector<ImageRequest> requests;
  for (const auto& item : batch) {
    inputs.push_back(item.payload->input);
    // The mapped boxes (and their masks) are not needed after the batch: moved, not copied.
    requests.push_back(
        ToImageRequest(item.payload->request->params(), std::move(item.payload->boxes)));
    if (item.payload->served != this) requests.back().head = &item.payload->served->head_[r];
  }
  const c10::Device device = model.options().device;
  DeviceTimer device_timer(device);  // Measures on CUDA only.
  // Images prepared as pixels (PrepareImage) are normalised where the model runs.
  const PixelNormalization pixels{preprocess_.mean, preprocess_.std};
  absl::StatusOr<std::vector<ImageOutputs>> out =
      RunBatch(model, inputs, requests, options_.before_forward_for_testing, &pixels);
  inputs.clear();
  ReleaseReplica(r, static_cast<int>(batch.size()));
  const int64_t compute_us = Micros(absl::Now() - start);
  if (device.is_cuda()) {
    if (const int64_t device_us = device_timer.ElapsedMicros(); device_us >= 0) {
      RecordDeviceCompute(metrics_, device_us);
    }
    if (const std::optional<DeviceMemory> memory = MemoryOf(device)) {
      SetDeviceMemory(device.str(), memory->allocated, memory->reserved);
    }
  }
  {
    absl::MutexLock lock(&stats_mu_);
    images_ += batch.size();
    ++batch_sizes_[static_cast<uint32_t>(batch.size())];
  }
  RecordBatch(metrics_, static_cast<int>(batch.size()), compute_us);
  for (size_t j = 0; j < batch.size(); ++j) {
    Work& w = *batch[j].payload;
    if (!out.ok()) {
      End(w, out.status());
      continue;
    }
    const int64_t queue_us = Micros(start - w.admitted) - w.preprocess_us;
    w.request->RecordTimings(queue_us, w.preprocess_us, compute_us);
    RecordImage(w.served->metrics_, queue_us, w.preprocess_us);
    if (w.served != this) {
      absl::MutexLock lock(&w.served->stats_mu_);
      ++w.served->images_;
    }
    absl::Status written;
    try {
      WriteResult(w, (*out)[j]);
    } catch (const std::bad_alloc&) {
      written = absl::ResourceExhaustedError("out of memory while writing the answer");
    } catch (const std::exception& e) {
      written = absl::InternalError(absl::StrCat("writing the answer failed: ", e.what()));
    }
    End(w, written);
  }
}

void ModelHost::WriteResult(const Work& w, ImageOutputs& o) const {
  if (InferenceRequest::Classifies(w.request->params().kind)) {
    w.request->Fill([&](v1::ClassifyResponse* r, v1::EmbedResponse*) {
      v1::Classification* c = r->mutable_results(w.index);
      for (size_t k = 0; k < o.class_indices.size(); ++k) {
        const int64_t index = o.class_indices[k];
        v1::ClassScore* score = c->add_classes();
        score->set_index(static_cast<int32_t>(index));
        score->set_score(o.class_scores[k]);
        if (index < static_cast<int64_t>(w.served->labels_.size()))
          score->set_label(w.served->labels_[index]);
      }
    });
  }
  if (InferenceRequest::Embeds(w.request->params().kind)) {
    v1::Embedding result;
    if (!o.embedding.shape.empty()) ToProto(std::move(o.embedding), result.mutable_embedding());
    for (OutputTensor& stage : o.stages) ToProto(std::move(stage), result.add_stages());
    for (OutputTensor& regions : o.regions) ToProto(std::move(regions), result.add_regions());
    w.request->Fill([&](v1::ClassifyResponse*, v1::EmbedResponse* r) {
      r->mutable_results(w.index)->Swap(&result);
    });
  }
}

absl::Status ModelHost::CheckGolden(const server::GoldenCase& golden, const ConvNeXt& model) const {
  std::ifstream in(golden.image(), std::ios::binary);
  if (!in)
    return absl::NotFoundError(absl::StrCat("golden image '", golden.image(), "' cannot be read"));
  v1::Image image;
  image.set_encoded(
      std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>()));
  absl::StatusOr<PreparedImage> input = PrepareImage(image, preprocess_, v1::CLASSIFICATION);
  if (!input.ok()) {
    return absl::Status(input.status().code(), absl::StrCat("golden image '", golden.image(),
                                                            "': ", input.status().message()));
  }
  ImageRequest request;
  const bool probabilities = golden.output() == "probabilities";
  if (probabilities) {
    if (architecture().num_classes == 0) {
      return absl::FailedPreconditionError(
          "golden output \"probabilities\" needs a classification head");
    }
    request.top_k = static_cast<int>(architecture().num_classes);
  } else {
    request.embedding = true;
  }
  const PixelNormalization pixels{preprocess_.mean, preprocess_.std};
  absl::StatusOr<std::vector<ImageOutputs>> out =
      RunBatch(model, {input->input}, {request}, nullptr, &pixels);
  if (!out.ok()) return out.status();
  std::vector<float> actual;
  const ImageOutputs& o = (*out)[0];
  if (probabilities) {
    actual.assign(o.class_indices.size(), 0.0f);
    for (size_t k = 0; k < o.class_indices.size(); ++k)
      actual[o.class_indices[k]] = o.class_scores[k];
  } else {
    actual.resize(o.embedding.bytes.size() / sizeof(float));
    std::memcpy(actual.data(), o.embedding.bytes.data(), actual.size() * sizeof(float));
  }
  absl::StatusOr<std::vector<float>> expected = ReadNpyAsFloats(golden.expected());
  if (!expected.ok()) {
    return absl::Status(expected.status().code(), absl::StrCat("golden '", golden.expected(),
                                                               "': ", expected.status().message()));
  }
  if (expected->size() != actual.size()) {
    return absl::FailedPreconditionError(absl::StrCat("golden '", golden.expected(), "' holds ",
                                                      expected->size(), " values, the model's ",
                                                      golden.output(), " has ", actual.size()));
  }
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double d = std::abs(static_cast<double>(actual[i]) - (*expected)[i]);
    if (!(d <= worst)) {  // Also catches NaN.
      worst = d;
      at = i;
      if (std::isnan(d)) break;
    }
  }
  if (!(worst <= golden.tolerance())) {
    return absl::FailedPreconditionError(
        absl::StrCat("golden self-test failed: image '", golden.image(), "' ", golden.output(), "[",
                     at, "] differs from '", golden.expected(), "' by ", worst, " (tolerance ",
                     golden.tolerance(), "); wrong checkpoint or preprocessing?"));
  }
  return absl::OkStatus();
}

v1::ModelInfo ModelHost::Info() const {
  if (trunk_ != nullptr) {
    // The trunk's description, with what is the head's own.
    v1::ModelInfo info = trunk_->Info();
    const int64_t dims = architecture().dims.back();
    info.set_parameter_count(info.parameter_count() - info.num_classes() * (dims + 1) +
                             head_[0].num_classes * (dims + 1));
    info.set_name(name());
    info.clear_heads();
    info.set_trunk_model(trunk_->name());
    info.set_num_classes(head_[0].num_classes);
    info.set_has_labels(!labels_.empty());
    info.set_checkpoint_path(options_.config.checkpoint());
    info.set_checkpoint_sha256(checkpoint_sha256_);
    info.set_checkpoint_format(loaded_.format);
    info.set_checkpoint_layout(loaded_.layout);
    info.set_embedding_space(embedding_space_[0]);
    info.set_golden_cases_passed(0);
    info.set_ready(ready());
    absl::MutexLock lock(&stats_mu_);
    info.mutable_stats()->set_requests(requests_);
    info.mutable_stats()->set_images(images_);
    return info;
  }
  v1::ModelInfo info;
  const ConvNeXtConfig& c = architecture();
  const server::ModelConfig& config = options_.config;
  info.set_name(name());
  info.set_version(version());
  for (const std::string& label : config.version_labels()) info.add_version_labels(label);
  info.set_embedding_space(embedding_space_[0]);
  info.set_golden_cases_passed(config.golden_size());
  for (const auto& h : heads_) info.add_heads(h->name());
  info.set_state(v1::READY);
  info.set_variant(c.variant);
  for (int64_t d : c.depths) info.add_depths(d);
  for (int64_t d : c.dims) info.add_dims(d);
  info.set_num_classes(c.num_classes);
  v1::PreprocessingInfo* p = info.mutable_preprocessing();
  p->set_size(config.preprocessing().size());
  p->set_crop_pct(config.preprocessing().crop_pct());
  p->set_interpolation(config.preprocessing().interpolation());
  for (float v : config.preprocessing().mean()) p->add_mean(v);
  for (float v : config.preprocessing().std()) p->add_std(v);
  p->set_resize_shorter_side(static_cast<uint32_t>(ResizedShorterSide(preprocess_)));
  p->set_channel_order("RGB");
  p->set_exif_orientation("applied");
  info.set_has_labels(!labels_.empty());
  info.set_parameter_count(loaded_.model->parameter_count());
  info.set_checkpoint_path(config.checkpoint());
  info.set_checkpoint_sha256(checkpoint_sha256_);
  info.set_checkpoint_format(loaded_.format);
  info.set_checkpoint_layout(loaded_.layout);
  info.set_device(loaded_.model->options().device.str());
  for (const Replica& r : replicas_) info.add_devices(r.model->options().device.str());
  info.set_cpu_fast_path(loaded_.model->uses_fast_path());
  info.set_compute_dtype(loaded_.model->compute_dtype_name());
  info.set_compute_dtype_reason(compute_dtype_reason_);
  v1::BatchingInfo* b = info.mutable_batching();
  b->set_max_batch_size(config.batching().max_batch_size());
  b->set_max_queue_delay_us(config.batching().max_queue_delay_us());
  b->set_max_queue_size(config.batching().max_queue_size());
  b->set_instances(config.batching().instances());
  b->set_max_batch_pixels(config.batching().max_batch_pixels());
  b->set_intra_op_threads(IntraOpThreads());
  info.set_ready(ready_);
  absl::MutexLock lock(&stats_mu_);
  v1::ModelStats* stats = info.mutable_stats();
  stats->set_requests(requests_);
  stats->set_images(images_);
  uint64_t batches = 0;
  for (const auto& [size, count] : batch_sizes_) {
    (*stats->mutable_batch_sizes())[size] = count;
    batches += count;
  }
  stats->set_batches(batches);
  absl::MutexLock replicas_lock(&replicas_mu_);
  for (const Replica& r : replicas_) {
    v1::ReplicaStats* replica = stats->add_replicas();
    replica->set_device(r.model->options().device.str());
    replica->set_batches(r.batches);
    replica->set_images(r.images);
    replica->set_graph_replays(r.graph_replays);
  }
  return info;
}

}  // namespace convnext::server
