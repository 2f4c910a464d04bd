// ModelHost: one served model. It owns the loaded ConvNeXt, a dynamic batcher with the model's
// executor threads, and the model's admission limit; it turns admitted images into batched
// forward passes and writes each image's result into its request's response.
//
// Request path: Submit() (on a gRPC thread) admits all of a request's images or none, then hands
// each image to the preprocessing pool (image/ via image_input.h); preprocessed images enter the
// batcher, keyed by request kind and input shape; an executor computes each batch through the
// model layer's batch API (model/batch.h) and ends each image (InferenceRequest). Nothing on this
// path blocks a gRPC thread, and no tensor math happens here: the host only carries each image's
// input tensor from image/ to model/.
//
// One trunk, several heads (ModelConfig.head): a host also owns a view per head, a ModelHost
// that is served under the head's name with its own labels, metrics, statistics and embedding
// space, and that admits into this host's batcher, memory budget and queue. A view's images
// batch with this host's own (the batch key does not depend on the head): the trunk runs once
// for the batch and each image's head on its pooled features (model/batch.h, ImageRequest::head).
// A caller holds a view through a shared_ptr that shares this host's ownership
// (ModelRepository::Find), so the views live exactly as long as their trunk.
#ifndef CONVNEXT_SERVER_MODEL_HOST_H_
#define CONVNEXT_SERVER_MODEL_HOST_H_

#include <ATen/core/Tensor.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "convnext/v1/image_model.pb.h"
#include "image/preprocess.h"
#include "model/batch.h"
#include "model/load_model.h"
#include "server/batcher.h"
#include "server/config.pb.h"
#include "server/inference_request.h"
#include "server/memory_budget.h"
#include "server/metrics.h"
#include "server/thread_pool.h"

namespace convnext::server {

struct ModelHostOptions {
  server::ModelConfig config;  // Normalised and validated.
  // ServerConfig.max_image_pixels (normalised).
  uint64_t max_image_pixels = 0;
  // The largest answer the server sends (ServerConfig.max_message_bytes): a call whose answer
  // would be larger is refused before any work.
  int64_t max_response_bytes = 0;
  // The process-wide memory budget (ServerConfig.max_memory_bytes) that this model's budget
  // (batching.max_memory_bytes) nests in. Not owned; outlives the host; may be null (no
  // process-wide limit).
  MemoryBudget* process_memory = nullptr;
  ThreadPool* preprocess_pool = nullptr;  // Not owned; outlives the host.
  // Fault injection for tests: if set, called with each batch's stacked input [N, 3, H, W] on the
  // executor just before the forward pass, as part of it: an exception it throws fails that batch
  // exactly as a failing model would (INTERNAL for the batch's images, nothing else). Unset in
  // the server.
  BeforeForwardFn before_forward_for_testing;
};

class ModelHost {
 public:
  // Loads the checkpoint, warms the model up (batch 1 and max_batch_size), runs the golden
  // self-test (ModelConfig.golden: FAILED_PRECONDITION naming the case and the difference when
  // one is not reproduced) and starts the executors. A failure names the model and version.
  static absl::StatusOr<std::unique_ptr<ModelHost>> Create(const ModelHostOptions& options);
  ~ModelHost();

  const std::string& name() const { return options_.config.name(); }
  const std::string& version() const { return options_.config.version(); }
  const server::ModelConfig& config() const { return options_.config; }
  // The id of the vector space this version's embeddings lie in (a digest of the checkpoint
  // file, the preprocessing, the pooling and `normalized`): equal ids, interchangeable vectors.
  const std::string& embedding_space(bool normalized) const {
    return embedding_space_[normalized ? 1 : 0];
  }
  // The network's architecture (depths, dims, classes, whether it is a detection backbone); for a
  // head, its trunk's with the head's classes.
  const ConvNeXtConfig& architecture() const {
    return trunk_ != nullptr ? head_architecture_ : loaded_.model->config();
  }
  // The view serving head `name` (ModelConfig.head), owned by this host; null if none.
  ModelHost* head(absl::string_view name) const;
  // Every head's view, in the config's order.
  std::vector<ModelHost*> heads() const;
  // For a head's view: the host whose trunk it shares; null for a model.
  const ModelHost* trunk() const { return trunk_; }
  // This model's Prometheus metrics; null when metrics are off.
  ModelMetrics* metrics() const { return metrics_; }

  // Admits the request's images (all or none), before any of them is decoded:
  //  - INVALID_ARGUMENT: more images than the queue can ever hold, or an image that is malformed
  //    or over the pixel limit as its header declares it;
  //  - RESOURCE_EXHAUSTED (never retryable): the request's estimated memory (image/ and model/
  //    estimates: decoding, input tensors, activations, answer) is more than the model's or the
  //    process's memory budget, or its answer more than max_response_bytes;
  //  - UNAVAILABLE (retryable): the queue or the memory budget is full now, or shutting down.
  // On OK each image later ends through `request` (which owns the answer) and its memory is
  // released.
  absl::Status Submit(const std::shared_ptr<InferenceRequest>& request,
                      const google::protobuf::RepeatedPtrField<v1::Image>& images);

  // One call, as every protocol runs it: Submit() with a request made of these arguments (see
  // InferenceRequest), the model's in-flight gauge kept, and `done` called exactly once with the
  // final status (at once, on this thread, when the call is refused). `classify`, `embed` and
  // `images` must stay valid until then.
  void Run(const InferenceRequest::Params& params,
           const google::protobuf::RepeatedPtrField<v1::Image>& images, absl::Time deadline,
           grpc::CallbackServerContext* ctx, v1::ClassifyResponse* classify,
           v1::EmbedResponse* embed, InferenceRequest::DoneFn done);

  // Description and statistics (ListModels / GetModel); the version's state and default flag
  // are the repository's to fill.
  v1::ModelInfo Info() const;
  // Loaded, warm and admitting (false once StopAdmitting() was called, on it or its trunk).
  bool ready() const { return ready_ && (trunk_ == nullptr || trunk_->ready()); }
  // Class names by index; empty when the model has none.
  const std::vector<std::string>& labels() const { return labels_; }
  // The preprocessing the model's encoded and raw images get.
  const PreprocessConfig& preprocess() const { return preprocess_; }

  // Stops admitting: from now on Submit() answers UNAVAILABLE ("shutting down") while what was
  // admitted keeps running. The first step of a graceful shutdown.
  void StopAdmitting();
  // Images admitted and not yet answered.
  int64_t pending_images() const;
  // Waits until no admitted image is left, or until `deadline`. True if none is left.
  bool WaitUntilIdle(absl::Time deadline) const;

  // Computes everything admitted, then stops the executors.
  void Shutdown();

 private:
  struct Work {
    std::shared_ptr<InferenceRequest> request;
    ModelHost* served = nullptr;  // This host or one of its heads' views.
    int index = 0;                // Image index within the request.
    int64_t reserved_bytes = 0;   // Its share of the memory budget, released when it ends.
    at::Tensor input;             // [1, 3, H, W] float32 from image/, handed to model/ untouched.
    absl::Time admitted;
    int64_t preprocess_us = 0;
    int deepest_stage = 4;         // DeepestStage of its request, computed once at admission.
    std::vector<RegionBox> boxes;  // Its regions in model-input pixels, once preprocessed.
  };
  using WorkPtr = std::unique_ptr<Work>;
  // One per ModelConfig.devices entry (a model's; a view has none): a copy of the weights on that
  // device. Every executor computes on any replica: each batch takes the least busy one.
  struct Replica {
    std::unique_ptr<ConvNeXt> owned;  // Replicas after the first (the first is loaded_.model).
    ConvNeXt* model = nullptr;
    ReplicaMetrics* metrics = nullptr;
    // Guarded by replicas_mu_.
    int busy = 0;  // Batches computing on it now.
    uint64_t batches = 0, images = 0, graph_replays = 0;
  };

  explicit ModelHost(const ModelHostOptions& options) : options_(options) {}
  // Loads head `index` of the config (ModelConfig.head) into a view of this host.
  absl::Status AddHead(int index);
  // Submit() for `served` (this host or one of its views): admission into this host's queue.
  absl::Status Admit(const std::shared_ptr<InferenceRequest>& request,
                     const google::protobuf::RepeatedPtrField<v1::Image>& images,
                     ModelHost& served);
  void Preprocess(WorkPtr work, const v1::Image* image);
  void ProcessBatch(std::vector<Batcher<WorkPtr>::Item> batch);
  // The replica a batch computes on: the least busy (ties to the first listed), marked busy.
  int AcquireReplica();
  // Marks replica `r` done with a batch of `images`; counts its batches and graph replays.
  void ReleaseReplica(int r, int images);
  // Writes one image's outputs into its call's response. May throw (allocation).
  void WriteResult(const Work& work, ImageOutputs& outputs) const;
  void End(const Work& work, const absl::Status& status);
  // Preprocesses and computes one golden case as a Classify/Embed call would; OK if every value is
  // within its tolerance.
  absl::Status CheckGolden(const server::GoldenCase& golden, const ConvNeXt& model) const;

  const ModelHostOptions options_;
  LoadedModel loaded_;
  std::vector<std::string> labels_;
  PreprocessConfig preprocess_;
  std::string checkpoint_sha256_;
  // How the compute dtype was chosen, for compute_dtype AUTO (ModelInfo.compute_dtype_reason).
  std::string compute_dtype_reason_;
  std::string embedding_space_[2];  // Unnormalised, L2-normalised.
  std::unique_ptr<Batcher<WorkPtr>> batcher_;
  std::vector<Replica> replicas_;  // Fixed once the host serves.
  mutable absl::Mutex replicas_mu_;
  std::unique_ptr<MemoryBudget> memory_;  // batching.max_memory_bytes, nested in the process's.
  mutable absl::Mutex pending_mu_;
  int64_t pending_images_ ABSL_GUARDED_BY(pending_mu_) = 0;  // Admitted and not yet ended.
  std::atomic<bool> ready_{false};
  std::atomic<bool> stopping_{false};  // StopAdmitting() was called.
  ModelMetrics* metrics_ = nullptr;

  // One trunk, several heads. A view has trunk_ set, its head and architecture, and no model
  // (loaded_.model is null) or batcher of its own.
  std::vector<std::unique_ptr<ModelHost>> heads_;
  ModelHost* trunk_ = nullptr;
  std::vector<ConvNeXtHead> head_;  // One per trunk replica, on its device.
  ConvNeXtConfig head_architecture_;

  mutable absl::Mutex stats_mu_;
  uint64_t requests_ ABSL_GUARDED_BY(stats_mu_) = 0;
  uint64_t images_ ABSL_GUARDED_BY(stats_mu_) = 0;
  std::map<uint32_t, uint64_t> batch_sizes_ ABSL_GUARDED_BY(stats_mu_);
};

}  // namespace convnext::server

#endif  // CONVNEXT_SERVER_MODEL_HOST_H_
