#include "model/batch.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"

namespace convnext {
namespace {

OutputTensor ToOutput(const at::Tensor& t, OutputDType dtype) {
  const bool half = dtype == OutputDType::kFloat16;
  const at::Tensor c = t.to(at::kCPU, half ? at::kHalf : at::kFloat).contiguous();
  OutputTensor out;
  out.shape = c.sizes().vec();
  out.dtype = dtype;
  out.bytes.assign(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
  return out;
}

absl::Status CheckRequest(const ConvNeXt& model, const ImageRequest& r) {
  const ConvNeXtConfig& c = model.config();
  if (r.top_k < 0 || r.top_k > c.num_classes) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_k = ", r.top_k, " is not in [0, ", c.num_classes, "]"));
  }
  if (r.embedding && c.stage_norms) {
    return absl::InvalidArgumentError("a detection backbone has no pooled embedding");
  }
  for (const std::vector<int>* stages : {&r.stages, &r.region_stages}) {
    for (int s : *stages) {
      if (s < 1 || s > kNumStages) {
        return absl::InvalidArgumentError(absl::StrCat("stage ", s, " is not in 1..", kNumStages));
      }
    }
  }
  if (!r.boxes.empty() && r.region_stages.empty()) {
    return absl::InvalidArgumentError("boxes need at least one stage to pool regions from");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ImageOutputs>> Run(const ConvNeXt& model,
                                              const std::vector<at::Tensor>& inputs,
                                              const std::vector<ImageRequest>& requests,
                                              const BeforeForwardFn& before_forward) {
  OutputRequest what;
  what.logits = false;
  int64_t k = 0;
  for (const ImageRequest& r : requests) {
    RETURN_IF_ERROR(CheckRequest(model, r));
    k = std::max<int64_t>(k, r.top_k);
    what.embedding |= r.embedding;
    what.stages |= !r.stages.empty() || !r.boxes.empty();
  }
  what.logits = k > 0;
  what.last_stage = 1;
  for (const ImageRequest& r : requests)
    what.last_stage = std::max(what.last_stage, DeepestStage(r));
  const at::Tensor batch = at::cat(inputs, /*dim=*/0);
  if (before_forward) before_forward(batch);
  ASSIGN_OR_RETURN(ForwardOutputs out, model.Forward(batch, what));

  at::Tensor top_scores, top_indices;
  if (k > 0) {
    const at::Tensor probs = at::softmax(out.logits.to(at::kCPU, at::kFloat), 1);
    std::tie(top_scores, top_indices) = at::topk(probs, k, /*dim=*/1);
    top_scores = top_scores.contiguous();
    top_indices = top_indices.contiguous();
  }
  std::vector<ImageOutputs> results(requests.size());
  for (size_t j = 0; j < requests.size(); ++j) {
    const ImageRequest& r = requests[j];
    ImageOutputs& o = results[j];
    if (r.top_k > 0) {
      const float* s = top_scores.data_ptr<float>() + j * k;
      const int64_t* idx = top_indices.data_ptr<int64_t>() + j * k;
      o.class_scores.assign(s, s + r.top_k);
      o.class_indices.assign(idx, idx + r.top_k);
    }
    if (r.embedding) {
      at::Tensor e = out.embedding[j];
      if (r.normalize) e = e / e.norm().clamp_min(1e-12);
      o.embedding = ToOutput(e, r.dtype);
    }
    for (int s : r.stages) o.stages.push_back(ToOutput(out.stages[s - 1][j], r.dtype));
    if (!r.boxes.empty()) {
      for (int s : r.region_stages) {
        ASSIGN_OR_RETURN(at::Tensor pooled,
                         RoiAlign(out.stages[s - 1][j], r.boxes, StageStride(s), r.region_pooling));
        if (r.region_pooling.output_size == 1) pooled = pooled.flatten(1);
        o.regions.push_back(ToOutput(pooled, r.dtype));
      }
    }
  }
  return results;
}

}  // namespace

absl::StatusOr<std::vector<ImageOutputs>> RunBatch(const ConvNeXt& model,
                                                   const std::vector<at::Tensor>& inputs,
                                                   const std::vector<ImageRequest>& requests,
                                                   const BeforeForwardFn& before_forward) {
  if (inputs.empty() || inputs.size() != requests.size()) {
    return absl::InvalidArgumentError(absl::StrCat("a batch needs one request per input (",
                                                   inputs.size(), " inputs, ", requests.size(),
                                                   " requests) and at least one input"));
  }
  for (const at::Tensor& t : inputs) {
    if (t.sizes() != inputs[0].sizes()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "inputs of one batch must have one shape: [", absl::StrJoin(inputs[0].sizes(), ", "),
          "] and [", absl::StrJoin(t.sizes(), ", "), "]"));
    }
  }
  // LibTorch throws; nothing it throws may leave this layer.
  try {
    return Run(model, inputs, requests, before_forward);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("the forward pass failed: ", e.what()));
  }
}

namespace {

// Rows (or columns) of stage `i` (0-based) for an input side of `side` pixels: the stem divides by
// 4 and each downsampling by 2, flooring as the convolutions do.
int64_t StageSide(int64_t side, int i) { return (side / 4) >> i; }

int64_t StageElements(const ConvNeXtConfig& c, int i, int64_t height, int64_t width) {
  return c.dims[i] * StageSide(height, i) * StageSide(width, i);
}

}  // namespace

int64_t EstimateForwardBytes(const ConvNeXtConfig& config, int64_t height, int64_t width) {
  constexpr int64_t kFloat = sizeof(float);
  int64_t elements = int64_t{config.in_channels} * height * width;
  elements += 7 * StageElements(config, 0, height, width);
  for (int i = 0; i < kNumStages; ++i) elements += StageElements(config, i, height, width);
  return elements * kFloat;
}

int64_t EstimateOutputBytes(const ConvNeXtConfig& config, const ImageRequest& request,
                            int64_t height, int64_t width) {
  const int64_t element = request.dtype == OutputDType::kFloat16 ? 2 : 4;
  int64_t bytes = 64 + int64_t{request.top_k} * 16;  // Message framing; (index, score) pairs.
  if (request.embedding) bytes += config.dims[kNumStages - 1] * element;
  for (int s : request.stages) {
    if (s >= 1 && s <= kNumStages) bytes += StageElements(config, s - 1, height, width) * element;
  }
  const int64_t bins = int64_t{request.region_pooling.output_size} *
                       request.region_pooling.output_size *
                       static_cast<int64_t>(request.boxes.size());
  for (int s : request.boxes.empty() ? std::vector<int>() : request.region_stages) {
    if (s >= 1 && s <= kNumStages) bytes += 16 + bins * config.dims[s - 1] * element;
  }
  return 2 * bytes;
}

int DeepestStage(const ImageRequest& request) {
  if (request.top_k > 0 || request.embedding) return kNumStages;
  int deepest = 0;
  for (int s : request.stages) deepest = std::max(deepest, s);
  if (!request.boxes.empty()) {
    for (int s : request.region_stages) deepest = std::max(deepest, s);
  }
  return deepest == 0 ? kNumStages : std::min(deepest, kNumStages);
}

double StageStride(int stage) { return 4.0 * (1 << (stage - 1)); }

std::string BatchShapeKey(const at::Tensor& input) { return absl::StrJoin(input.sizes(), "x"); }

absl::Status WarmUp(const ConvNeXt& model, int64_t max_batch_size, int64_t size) {
  const ConvNeXtConfig& c = model.config();
  OutputRequest request;
  request.logits = c.num_classes > 0;
  request.stages = !request.logits;
  try {
    for (int64_t batch : {int64_t{1}, max_batch_size}) {
      RETURN_IF_ERROR(
          model.Forward(at::zeros({batch, c.in_channels, size, size}), request).status());
    }
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("warm-up failed: ", e.what()));
  }
  // The batch sizes in between get their kernels prepared without running them.
  for (int64_t batch = 2; batch < max_batch_size; ++batch) {
    RETURN_IF_ERROR(model.Prepare(batch, size, size));
  }
  return absl::OkStatus();
}

}  // namespace convnext
