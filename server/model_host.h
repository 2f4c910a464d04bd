// ModelHost: one served model. It owns the loaded ConvNeXt, a dynamic batcher with the model's
// executor threads, and the model's admission limit; it turns admitted images into batched
// forward passes and writes each image's result into its request's response.
//
// Request path: Submit() (on a gRPC thread) admits all of a request's images or none, then hands
// each image to the preprocessing pool; preprocessed images enter the batcher, keyed by request
// kind and input shape; an executor computes each batch and ends each image (InferenceRequest).
// Nothing on this path blocks a gRPC thread.
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
#include "absl/synchronization/mutex.h"
#include "convnext/v1/image_model.pb.h"
#include "model/checkpoint.h"
#include "model/preprocess.h"
#include "server/batcher.h"
#include "server/config.pb.h"
#include "server/inference_request.h"
#include "server/metrics.h"
#include "server/thread_pool.h"

namespace convnext::serving {

struct ModelHostOptions {
  server::ModelConfig config;  // Normalised and validated.
  int intra_op_threads = 1;
  uint64_t max_image_pixels = 40'000'000;
  ThreadPool* preprocess_pool = nullptr;  // Not owned; outlives the host.
  // Fault injection for tests: if set, called with each batch's stacked input [N, 3, H, W] on the
  // executor just before the forward pass, as part of it: an exception it throws fails that batch
  // exactly as a failing model would (INTERNAL for the batch's images, nothing else). Unset in
  // the server.
  std::function<void(const at::Tensor& batch)> before_forward_for_testing;
};

class ModelHost {
 public:
  // Loads the checkpoint, warms the model up (batch 1 and max_batch_size) and starts the
  // executors. A failure names the model.
  static absl::StatusOr<std::unique_ptr<ModelHost>> Create(const ModelHostOptions& options);
  ~ModelHost();

  const std::string& name() const { return options_.config.name(); }
  const ConvNeXtConfig& model_config() const { return loaded_.model->config(); }
  const std::vector<std::string>& labels() const { return labels_; }
  // This model's Prometheus metrics; null when metrics are off.
  ModelMetrics* metrics() const { return metrics_; }

  // Admits the request's images (all or none): UNAVAILABLE if the model's queue is full or it is
  // shutting down. On OK each image later ends through `request` (which owns the answer).
  absl::Status Submit(const std::shared_ptr<InferenceRequest>& request,
                      const google::protobuf::RepeatedPtrField<v1::Image>& images);

  // Description and statistics (ListModels / GetModel).
  v1::ModelInfo Info() const;

  // Stops admitting: from now on Submit() answers UNAVAILABLE ("shutting down") while what was
  // admitted keeps running. The first step of a graceful shutdown.
  void StopAdmitting();
  // Images admitted and not yet answered.
  int64_t pending_images() const { return pending_images_; }

  // Computes everything admitted, then stops the executors.
  void Shutdown();

 private:
  struct Work {
    std::shared_ptr<InferenceRequest> request;
    int index = 0;     // Image index within the request.
    at::Tensor input;  // [3, H, W], the model's dtype and device.
    absl::Time admitted;
    int64_t preprocess_us = 0;
  };
  using WorkPtr = std::unique_ptr<Work>;

  explicit ModelHost(const ModelHostOptions& options) : options_(options) {}
  void Preprocess(WorkPtr work, const v1::Image* image);
  void ProcessBatch(std::vector<Batcher<WorkPtr>::Item> batch);
  void End(const Work& work, const absl::Status& status);
  absl::Status Warmup();

  const ModelHostOptions options_;
  LoadedModel loaded_;
  std::vector<std::string> labels_;
  PreprocessConfig preprocess_;
  std::string checkpoint_sha256_;
  std::unique_ptr<Batcher<WorkPtr>> batcher_;
  std::atomic<int64_t> pending_images_{0};  // Admitted and not yet ended.
  std::atomic<bool> ready_{false};
  std::atomic<bool> stopping_{false};  // StopAdmitting() was called.
  ModelMetrics* metrics_ = nullptr;

  mutable absl::Mutex stats_mu_;
  uint64_t requests_ ABSL_GUARDED_BY(stats_mu_) = 0;
  uint64_t images_ ABSL_GUARDED_BY(stats_mu_) = 0;
  std::map<uint32_t, uint64_t> batch_sizes_ ABSL_GUARDED_BY(stats_mu_);
};

}  // namespace convnext::serving

#endif  // CONVNEXT_SERVER_MODEL_HOST_H_
