// The Open Inference Protocol's tensors to and from our own requests and answers: a
// ModelInferRequest becomes the images and parameters of one Classify or Embed call (so that it
// goes through the same admission, budgets, batcher and metrics), and that call's answer becomes
// the ModelInferResponse's output tensors (probabilities together with the embedding or stage maps:
// one call of kind kClassifyAndEmbed, one forward pass). Pure functions of protos, tested on their
// own (oip_convert_test.cc); the gRPC handlers are oip_service.h.
//
// What a model accepts and returns (names, datatypes, shapes) is what ModelMetadata describes,
// built here too, so that the description and the checks cannot drift apart:
//   inputs (exactly one per request):
//     IMAGE   BYTES [N] or [N, 1] encoded images (JPEG, PNG, WebP, BMP, TIFF, PNM), the model's
//                                 classification transform applied
//     PIXELS  UINT8 [N, H, W, C]  raw RGB pixels (C = 3; 1 = gray, 4 = RGBA), same transform
//     TENSOR  FP32 [N, 3, H, W]   preprocessed, used as is (FP16 accepted too, datatype "FP16")
//   outputs (none requested: `probabilities`, or `embedding` for a headless model):
//     probabilities  FP32 [N, classes]  softmax; with the `classification` parameter k: BYTES
//                                       [N, k], "score:index[:label]", highest first
//     embedding      FP32 [N, C4]       pooled, after the final LayerNorm (request parameter
//                                       `normalize`: true for unit length)
//     stage1..stage4 FP32 [N, Ci, Hi, Wi] stage feature maps (strides 4, 8, 16, 32)
#ifndef CONVNEXT_SERVER_OIP_CONVERT_H_
#define CONVNEXT_SERVER_OIP_CONVERT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "convnext/v1/image_model.pb.h"
#include "inference/open_inference.pb.h"
#include "server/inference_request.h"

namespace convnext::server {

// What the conversion needs to know of a model.
struct OipModel {
  std::string name;
  std::string version = "1";
  int64_t num_classes = 0;    // 0: headless.
  bool has_embedding = true;  // False for detection backbones (stage outputs only).
  std::vector<int64_t> dims;  // Channels per stage.
  int64_t input_size = 224;   // The classification transform's output side.
  const std::vector<std::string>* labels = nullptr;  // May be null or empty.
  int64_t max_batch_size = 1;      // Images per forward pass (batching.max_batch_size).
  int64_t max_queue_size = 1;      // Images one request may carry at most.
  int64_t max_queue_delay_us = 0;  // batching.max_queue_delay_us.
};

// One output the client asked for.
struct OipOutput {
  std::string name;
  int stage = 0;           // 1..4 for stageN.
  int classification = 0;  // > 0: the top-k classes as BYTES.
};

// A ModelInferRequest, checked and turned into one of our calls.
struct OipCall {
  InferenceRequest::Params params;
  google::protobuf::RepeatedPtrField<v1::Image> images;
  std::vector<OipOutput> outputs;
  // The request's `timeout` parameter (microseconds); InfiniteDuration when absent.
  absl::Duration timeout = absl::InfiniteDuration();
};

// INVALID_ARGUMENT, naming the field, for anything the model does not accept (see above).
absl::StatusOr<OipCall> ToOipCall(const inference::ModelInferRequest& request,
                                  const OipModel& model);

// Fills `response`'s outputs (raw contents, in the order asked) from the answer of `call`:
// probabilities from `classify`, the others from `embed` (either may be null when not asked).
// INTERNAL if the answer does not have the shape the call implies.
absl::Status FillInferResponse(const OipCall& call, const OipModel& model,
                               const v1::ClassifyResponse* classify, const v1::EmbedResponse* embed,
                               inference::ModelInferResponse* response);

// The model's inputs and outputs as ModelMetadata describes them.
inference::ModelMetadataResponse OipMetadata(const OipModel& model);

// The same as Triton's model configuration (ModelConfig, for tritonclient and perf_analyzer):
// max_batch_size is the most images one request may carry, dims leave out that batch dimension
// (IMAGE: [1], one encoded image per row), PIXELS and TENSOR are marked optional since a request
// carries exactly one of the three inputs, the outputs are ModelMetadata's, and dynamic batching
// names the model's batch size and queue delay.
inference::ModelConfig OipModelConfig(const OipModel& model);

}  // namespace convnext::server

#endif  // CONVNEXT_SERVER_OIP_CONVERT_H_
