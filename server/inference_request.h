// InferenceRequest: the state of one Classify or Embed call, shared by its images while they are
// preprocessed, queued and computed on different threads.
//
// Every image ends exactly once, through ImageDone(): computed (OK), failed, or dropped (deadline,
// cancellation, shutdown). The call is answered when the last image ends, with the first error if
// any, so that the response message, the server context and the request's image bytes stay valid
// for as long as any image may still use them. A failed call's remaining queued images report
// Abandoned() and are dropped before compute.
//
// Thread-safe.
#ifndef CONVNEXT_SERVER_INFERENCE_REQUEST_H_
#define CONVNEXT_SERVER_INFERENCE_REQUEST_H_

#include <grpcpp/server_context.h>

#include <functional>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "convnext/v1/image_model.pb.h"
#include "model/batch.h"
#include "model/roi_align.h"

namespace convnext::server {

class InferenceRequest {
 public:
  // kClassifyAndEmbed (Open Inference Protocol requests that ask for probabilities with the
  // embedding or stage maps) computes both from one forward pass and fills both responses.
  enum class Kind { kClassify, kEmbed, kClassifyAndEmbed };
  // Whether a call of `kind` fills the classify (the embed) response.
  static bool Classifies(Kind kind) { return kind != Kind::kEmbed; }
  static bool Embeds(Kind kind) { return kind != Kind::kClassify; }

  // What to compute for each image. Validated by the service before the request is created.
  struct Params {
    Kind kind = Kind::kClassify;
    int top_k = 5;  // kClassify and kClassifyAndEmbed.
    bool include_embedding = false;
    bool normalize = false;
    std::vector<int> stages;  // 1-based.
    StagePooling stage_pooling;
    v1::DataType dtype = v1::FP32;
    v1::ResizePolicy resize = v1::CLASSIFICATION;
    // Region features (kEmbed): per image (empty, or one entry per image), boxes in the image's
    // own pixels, mapped to the model input once the image is decoded.
    std::vector<std::vector<RegionBox>> boxes;
    std::vector<int> region_stages;  // 1-based.
    RoiAlignOptions region_pooling;
    // The answer is streamed in pieces (EmbedStream): bounded by the memory budget, not by
    // max_message_bytes.
    bool streamed = false;
  };

  // Called once, when every image has ended, with OK or the first error.
  using DoneFn = std::function<void(const absl::Status&)>;

  // `ctx` (may be null in tests) is polled for cancellation; `classify`/`embed` is the response
  // being filled (matching params.kind: one of them, or both for kClassifyAndEmbed; the timings go
  // into `classify` when both are given).
  InferenceRequest(Params params, int num_images, absl::Time deadline,
                   grpc::CallbackServerContext* ctx, v1::ClassifyResponse* classify,
                   v1::EmbedResponse* embed, DoneFn done)
      : params_(std::move(params)),
        deadline_(deadline),
        ctx_(ctx),
        classify_(classify),
        embed_(embed),
        done_(std::move(done)),
        received_(absl::Now()),
        remaining_(num_images) {}

  InferenceRequest(const InferenceRequest&) = delete;
  InferenceRequest& operator=(const InferenceRequest&) = delete;

  const Params& params() const { return params_; }
  absl::Time deadline() const { return deadline_; }

  // True if the call failed already or the client cancelled it: its queued images need not run.
  bool Abandoned() const {
    {
      absl::MutexLock lock(&mu_);
      if (!status_.ok()) return true;
    }
    return ctx_ != nullptr && ctx_->IsCancelled();
  }

  // Runs `fill(classify_response, embed_response)` under the lock, to store one image's result.
  template <typename FillFn>
  void Fill(FillFn&& fill) {
    absl::MutexLock lock(&mu_);
    if (status_.ok()) fill(classify_, embed_);
  }

  // Records the timings of one image; the response carries the largest of each.
  void RecordTimings(int64_t queue_us, int64_t preprocess_us, int64_t compute_us) {
    absl::MutexLock lock(&mu_);
    queue_us_ = std::max(queue_us_, queue_us);
    preprocess_us_ = std::max(preprocess_us_, preprocess_us);
    compute_us_ = std::max(compute_us_, compute_us);
  }

  // Ends one image. The last one answers the call.
  void ImageDone(const absl::Status& status) {
    absl::Status final_status;
    {
      absl::MutexLock lock(&mu_);
      if (!status.ok() && status_.ok()) status_ = status;
      if (--remaining_ > 0) return;
      final_status = status_;
      if (final_status.ok()) {
        v1::Timings* t =
            classify_ != nullptr ? classify_->mutable_timings() : embed_->mutable_timings();
        t->set_queue_us(queue_us_);
        t->set_preprocess_us(preprocess_us_);
        t->set_compute_us(compute_us_);
        t->set_server_us(absl::ToInt64Microseconds(absl::Now() - received_));
      }
    }
    done_(final_status);
  }

 private:
  const Params params_;
  const absl::Time deadline_;
  grpc::CallbackServerContext* const ctx_;

  mutable absl::Mutex mu_;
  v1::ClassifyResponse* const classify_ ABSL_PT_GUARDED_BY(mu_);
  v1::EmbedResponse* const embed_ ABSL_PT_GUARDED_BY(mu_);
  const DoneFn done_;
  const absl::Time received_;
  int remaining_ ABSL_GUARDED_BY(mu_);
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  int64_t queue_us_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t preprocess_us_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t compute_us_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace convnext::server

#endif  // CONVNEXT_SERVER_INFERENCE_REQUEST_H_
