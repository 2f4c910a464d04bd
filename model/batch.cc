#include "model/batch.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <map>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "model/device.h"

namespace convnext {
namespace {

// Tests: outputs leave a CPU model in one copy too (SetOneOutputCopyForTesting).
std::atomic<bool> one_output_copy_for_testing{false};

// An output converted to its dtype where the model computed it, waiting for its bytes (and int8
// scales) to be copied into results[image]'s embedding (kind kEmbedding), stages[index] or
// regions[index] (CopyOutputsToHost).
struct PendingOutput {
  enum Kind { kEmbedding, kStage, kRegion };
  size_t image = 0;
  Kind kind = kEmbedding;
  size_t index = 0;
  at::Tensor data;
  at::Tensor scales;  // kInt8 only.
};

// `t` as `dtype` (for kInt8 with a scale per index of `channel_axis`, -1: one scale), converted
// where `t` is (on a GPU: only the converted bytes leave the device). Returns the OutputTensor
// without its bytes and scales, and appends what they come from to `pending`.
OutputTensor Convert(const at::Tensor& t, OutputDType dtype, int channel_axis, PendingOutput where,
                     std::vector<PendingOutput>* pending) {
  OutputTensor out;
  out.dtype = dtype;
  switch (dtype) {
    case OutputDType::kFloat32:
      where.data = t.to(at::kFloat);
      break;
    case OutputDType::kFloat16:
      where.data = t.to(at::kHalf);
      break;
    case OutputDType::kBFloat16:  // Rounded to nearest even, as ATen converts.
      where.data = t.to(at::kBFloat16);
      break;
    case OutputDType::kInt8: {
      const at::Tensor f = t.to(at::kFloat);
      at::Tensor scale;
      if (channel_axis < 0) {
        scale = f.abs().max().reshape({1});
      } else {
        scale = f.abs().movedim(channel_axis, 0).reshape({f.size(channel_axis), -1}).amax(1);
      }
      // A channel of zeros keeps scale 1 (its values quantise to 0 either way).
      scale = at::where(scale > 0, scale / 127, at::ones_like(scale));
      std::vector<int64_t> view(f.dim(), 1);
      if (channel_axis >= 0) view[channel_axis] = f.size(channel_axis);
      where.data = at::round(f / (channel_axis < 0 ? scale : scale.view(view)))
                       .clamp(-127, 127)
                       .to(at::kChar);
      where.scales = scale;
      out.scale_axis = channel_axis;
      break;
    }
  }
  out.shape = where.data.sizes().vec();
  pending->push_back(std::move(where));
  return out;
}

OutputTensor& SlotOf(std::vector<ImageOutputs>& results, const PendingOutput& p) {
  ImageOutputs& o = results[p.image];
  switch (p.kind) {
    case PendingOutput::kEmbedding:
      return o.embedding;
    case PendingOutput::kStage:
      return o.stages[p.index];
    case PendingOutput::kRegion:
      break;
  }
  return o.regions[p.index];
}

// `t`'s elements as contiguous bytes, 1-d.
at::Tensor BytesOf(const at::Tensor& t) { return t.contiguous().reshape({-1}).view(at::kByte); }

// Fills the results' bytes and scales from `pending`. With `one_copy` (a CUDA model) every output
// of the batch leaves the device in one copy, and one synchronisation, instead of one per tensor:
// their bytes are concatenated on the device first. Otherwise each is read where it is.
void CopyOutputsToHost(const std::vector<PendingOutput>& pending, bool one_copy,
                       std::vector<ImageOutputs>& results) {
  if (!one_copy) {
    for (const PendingOutput& p : pending) {
      OutputTensor& out = SlotOf(results, p);
      const at::Tensor data = p.data.to(at::kCPU).contiguous();
      out.bytes.assign(static_cast<const char*>(data.data_ptr()),
                       data.numel() * data.element_size());
      if (p.scales.defined()) {
        const at::Tensor scales = p.scales.to(at::kCPU).contiguous();
        out.scales.assign(scales.data_ptr<float>(), scales.data_ptr<float>() + scales.numel());
      }
    }
    return;
  }
  std::vector<at::Tensor> parts;
  for (const PendingOutput& p : pending) {
    parts.push_back(BytesOf(p.data));
    if (p.scales.defined()) parts.push_back(BytesOf(p.scales));
  }
  if (parts.empty()) return;
  const at::Tensor host = at::cat(parts).to(at::kCPU).contiguous();
  const char* next = static_cast<const char*>(host.data_ptr());
  for (const PendingOutput& p : pending) {
    OutputTensor& out = SlotOf(results, p);
    const size_t bytes = p.data.numel() * p.data.element_size();
    out.bytes.assign(next, bytes);
    next += bytes;
    if (p.scales.defined()) {
      out.scales.resize(p.scales.numel());
      std::memcpy(out.scales.data(), next, out.scales.size() * sizeof(float));
      next += out.scales.size() * sizeof(float);
    }
  }
}

int64_t ElementBytes(OutputDType dtype) {
  switch (dtype) {
    case OutputDType::kFloat32:
      return 4;
    case OutputDType::kFloat16:
    case OutputDType::kBFloat16:
      return 2;
    case OutputDType::kInt8:
      return 1;
  }
  return 4;
}

// A [C, H, W] stage map pooled to [C, grid, grid].
at::Tensor Pool(const at::Tensor& map, const StagePooling& p) {
  const at::Tensor x = map.to(at::kFloat).unsqueeze(0);
  const std::vector<int64_t> size = {p.grid, p.grid};
  switch (p.kind) {
    case StagePooling::Kind::kNone:
      return map;
    case StagePooling::Kind::kAverage:
      return at::adaptive_avg_pool2d(x, size)[0];
    case StagePooling::Kind::kMax:
      return std::get<0>(at::adaptive_max_pool2d(x, size))[0];
    case StagePooling::Kind::kGeM:
      // In float64: x^p overflows float32 for large p.
      return at::adaptive_avg_pool2d(x.to(at::kDouble).clamp_min(1e-6).pow(p.gem_p), size)
          .pow(1.0 / p.gem_p)[0]
          .to(at::kFloat);
  }
  return map;
}

absl::Status CheckRequest(const ConvNeXt& model, const ImageRequest& r) {
  const ConvNeXtConfig& c = model.config();
  const int64_t classes = r.head != nullptr ? r.head->num_classes : c.num_classes;
  if (r.top_k < 0 || r.top_k > classes) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_k = ", r.top_k, " is not in [0, ", classes, "]"));
  }
  if (r.embedding && c.stage_norms) {
    return absl::InvalidArgumentError("a detection backbone has no pooled embedding");
  }
  if (r.stage_pooling.kind != StagePooling::Kind::kNone &&
      (r.stage_pooling.grid < 1 || r.stage_pooling.grid > kMaxPoolingGrid ||
       !(r.stage_pooling.gem_p > 0) || !std::isfinite(r.stage_pooling.gem_p))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "stage pooling needs a grid in 1..", kMaxPoolingGrid, " (got ", r.stage_pooling.grid,
        ") and a GeM exponent > 0 (got ", r.stage_pooling.gem_p, ")"));
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
                                              const std::vector<at::Tensor>& given,
                                              const std::vector<ImageRequest>& requests,
                                              const BeforeForwardFn& before_forward,
                                              const PixelNormalization* pixels) {
  // Pixels are normalised on the model's device when the whole batch is pixels of one shape
  // (below), else here, on the CPU, first.
  bool all_pixels = true, any_pixels = false, same_shape = true;
  for (const at::Tensor& t : given) {
    const bool is_pixels = t.scalar_type() == at::kByte;
    all_pixels &= is_pixels;
    any_pixels |= is_pixels;
    same_shape &= t.sizes() == given[0].sizes();
  }
  std::vector<at::Tensor> normalised;
  if (any_pixels && !(all_pixels && same_shape)) {
    normalised = given;
    for (at::Tensor& t : normalised) {
      if (t.scalar_type() == at::kByte) t = NormalizePixels(t, *pixels);
    }
  }
  const std::vector<at::Tensor>& inputs = normalised.empty() ? given : normalised;
  OutputRequest what;
  what.logits = false;
  // The heads asked for, each with its images and the largest k asked of it.
  struct HeadWork {
    std::vector<int64_t> rows;
    int64_t k = 0;
    bool embedding = false;
    at::Tensor top_scores, top_indices;  // [rows, k], in the order of `rows`.
    at::Tensor embeddings;               // [rows, dims[3]], if any of them asks.
  };
  std::map<const ConvNeXtHead*, HeadWork> heads;  // Nodes stay put: pointed to below.
  std::vector<std::pair<HeadWork*, int64_t>> head_row(requests.size());  // Per image: its row.
  for (size_t j = 0; j < requests.size(); ++j) {
    const ImageRequest& r = requests[j];
    RETURN_IF_ERROR(CheckRequest(model, r));
    what.stages |= !r.stages.empty() || !r.boxes.empty();
    if (r.top_k == 0 && !r.embedding) continue;
    const ConvNeXtHead* head = r.head != nullptr ? r.head : &model.head();
    HeadWork& h = heads[head];
    head_row[j] = {&h, static_cast<int64_t>(h.rows.size())};
    h.rows.push_back(static_cast<int64_t>(j));
    h.k = std::max<int64_t>(h.k, r.top_k);
    h.embedding |= r.embedding;
  }
  what.pooled = !heads.empty();
  what.last_stage = 1;
  for (const ImageRequest& r : requests)
    what.last_stage = std::max(what.last_stage, DeepestStage(r));
  const c10::Device device = model.options().device;
  UseOwnStream(device);
  at::Tensor batch;
  if (same_shape) {
    batch = StackOnDevice(inputs, device);
    if (all_pixels) batch = NormalizePixels(batch, *pixels);
  } else {
    // Variable-size batching (RunBatch checked: single 4-d images, sides multiples of 32):
    // zeros beyond each image, its extent in the request.
    int64_t height = 0, width = 0;
    for (const at::Tensor& t : inputs) {
      height = std::max(height, t.size(2));
      width = std::max(width, t.size(3));
    }
    batch = at::zeros({static_cast<int64_t>(inputs.size()), inputs[0].size(1), height, width},
                      inputs[0].options().pinned_memory(device.is_cuda()));
    for (size_t i = 0; i < inputs.size(); ++i) {
      const at::Tensor& t = inputs[i];
      batch[static_cast<int64_t>(i)].slice(1, 0, t.size(2)).slice(2, 0, t.size(3)).copy_(t[0]);
      what.extents.push_back({t.size(2), t.size(3)});
    }
    batch = CopyToDevice(batch, device);
  }
  if (before_forward) before_forward(batch);
  ASSIGN_OR_RETURN(ForwardOutputs out, model.Forward(batch, what));

  c10::InferenceMode guard;
  for (auto& [head, h] : heads) {
    const at::Tensor pooled =
        h.rows.size() == requests.size()
            ? out.pooled
            : out.pooled.index_select(0, at::tensor(h.rows, at::kLong).to(out.pooled.device()));
    const at::Tensor embeddings = head->Embed(pooled);
    if (h.embedding) h.embeddings = embeddings;
    if (h.k > 0) {
      // Softmax and top-k where the model is: only the top k of each row leave a GPU.
      const at::Tensor probs = at::softmax(head->Classify(embeddings).to(at::kFloat), 1);
      std::tie(h.top_scores, h.top_indices) = at::topk(probs, h.k, /*dim=*/1);
      h.top_scores = h.top_scores.to(at::kCPU).contiguous();
      h.top_indices = h.top_indices.to(at::kCPU).contiguous();
    }
  }
  std::vector<ImageOutputs> results(requests.size());
  std::vector<PendingOutput> pending;
  for (size_t j = 0; j < requests.size(); ++j) {
    const ImageRequest& r = requests[j];
    ImageOutputs& o = results[j];
    // Image j's map of stage s: in a padded batch, its own corner.
    auto stage_map = [&](int s) {
      at::Tensor map = out.stages[s - 1][j];
      if (what.extents.empty()) return map;
      const int64_t stride = static_cast<int64_t>(StageStride(s));
      return map.slice(1, 0, what.extents[j].height / stride)
          .slice(2, 0, what.extents[j].width / stride)
          .contiguous();
    };
    const auto [h, row] = head_row[j];
    if (r.top_k > 0) {
      const float* s = h->top_scores.data_ptr<float>() + row * h->k;
      const int64_t* idx = h->top_indices.data_ptr<int64_t>() + row * h->k;
      o.class_scores.assign(s, s + r.top_k);
      o.class_indices.assign(idx, idx + r.top_k);
    }
    if (r.embedding) {
      at::Tensor e = h->embeddings[row];
      if (r.normalize) e = e / e.norm().clamp_min(1e-12);
      o.embedding = Convert(e, r.dtype, -1, {j, PendingOutput::kEmbedding, 0, {}, {}}, &pending);
    }
    for (int s : r.stages) {
      o.stages.push_back(Convert(Pool(stage_map(s), r.stage_pooling), r.dtype, 0,
                                 {j, PendingOutput::kStage, o.stages.size(), {}, {}}, &pending));
    }
    if (!r.boxes.empty()) {
      for (int s : r.region_stages) {
        ASSIGN_OR_RETURN(at::Tensor pooled,
                         RoiAlign(stage_map(s), r.boxes, StageStride(s), r.region_pooling));
        if (r.region_pooling.output_size == 1) pooled = pooled.flatten(1);
        o.regions.push_back(Convert(
            pooled, r.dtype, 1, {j, PendingOutput::kRegion, o.regions.size(), {}, {}}, &pending));
      }
    }
  }
  CopyOutputsToHost(pending, device.is_cuda() || one_output_copy_for_testing.load(), results);
  return results;
}

}  // namespace

at::Tensor NormalizePixels(const at::Tensor& pixels, const PixelNormalization& normalization) {
  const at::TensorOptions options = at::TensorOptions().dtype(at::kFloat).device(pixels.device());
  // Filled on the device (no copy from the host); a float is exact as the fill's double.
  at::Tensor mean = at::empty({1, 3, 1, 1}, options);
  at::Tensor std = at::empty({1, 3, 1, 1}, options);
  for (int64_t c = 0; c < 3; ++c) {
    mean[0][c].fill_(normalization.mean[c]);
    std[0][c].fill_(normalization.std[c]);
  }
  return pixels.to(at::kFloat).div_(at::full({1, 1, 1, 1}, 255.0f, options)).sub_(mean).div_(std);
}

absl::StatusOr<std::vector<ImageOutputs>> RunBatch(const ConvNeXt& model,
                                                   const std::vector<at::Tensor>& inputs,
                                                   const std::vector<ImageRequest>& requests,
                                                   const BeforeForwardFn& before_forward,
                                                   const PixelNormalization* pixels) {
  if (inputs.empty() || inputs.size() != requests.size()) {
    return absl::InvalidArgumentError(absl::StrCat("a batch needs one request per input (",
                                                   inputs.size(), " inputs, ", requests.size(),
                                                   " requests) and at least one input"));
  }
  for (const at::Tensor& t : inputs) {
    if (t.sizes() == inputs[0].sizes()) continue;
    const bool paddable = t.dim() == 4 && inputs[0].dim() == 4 && t.size(0) == 1 &&
                          inputs[0].size(0) == 1 && t.size(1) == inputs[0].size(1);
    const bool whole = paddable && t.size(2) % 32 == 0 && t.size(3) % 32 == 0 &&
                       inputs[0].size(2) % 32 == 0 && inputs[0].size(3) % 32 == 0;
    if (!paddable || !whole) {
      return absl::InvalidArgumentError(absl::StrCat(
          "inputs of one batch must have one shape, or be single images of one channel count "
          "whose sides are multiples of 32: [",
          absl::StrJoin(inputs[0].sizes(), ", "), "] and [", absl::StrJoin(t.sizes(), ", "), "]"));
    }
  }
  for (const at::Tensor& t : inputs) {
    if (t.scalar_type() != at::kByte) continue;
    if (pixels == nullptr || t.dim() != 4 || t.size(0) != 1 || t.size(1) != 3) {
      return absl::InvalidArgumentError(
          absl::StrCat("uint8 inputs are pixels [1, 3, H, W] with their normalisation; got [",
                       absl::StrJoin(t.sizes(), ", "), "]",
                       pixels == nullptr ? " without a normalisation" : ""));
    }
  }
  // LibTorch throws; nothing it throws may leave this layer.
  try {
    return Run(model, inputs, requests, before_forward, pixels);
  } catch (const c10::OutOfMemoryError& e) {  // A GPU's allocator; the batch is too large now.
    return absl::ResourceExhaustedError(absl::StrCat(
        "the forward pass ran out of memory on ", model.options().device.str(),
        " (send fewer or smaller images at once, or retry later): ", e.what_without_backtrace()));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the forward pass ran out of memory on ", model.options().device.str(),
                     " (send fewer or smaller images at once, or retry later)"));
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
  // V2's GRN on the fast path: float32 copies of the 4x-wide hidden layer (bfloat16 activations
  // widened, a padded batch's masked) for its norms.
  if (config.grn) elements += 8 * StageElements(config, 0, height, width);
  for (int i = 0; i < kNumStages; ++i) elements += StageElements(config, i, height, width);
  return elements * kFloat;
}

int64_t EstimateOutputBytes(const ConvNeXtConfig& config, const ImageRequest& request,
                            int64_t height, int64_t width) {
  const int64_t element = ElementBytes(request.dtype);
  // An int8 tensor carries a float32 scale per channel.
  const int64_t per_channel = request.dtype == OutputDType::kInt8 ? 4 : 0;
  int64_t bytes = 64 + int64_t{request.top_k} * 16;  // Message framing; (index, score) pairs.
  if (request.embedding) bytes += config.dims[kNumStages - 1] * element + per_channel;
  const bool pooled = request.stage_pooling.kind != StagePooling::Kind::kNone;
  for (int s : request.stages) {
    if (s < 1 || s > kNumStages) continue;
    const int64_t elements = pooled ? config.dims[s - 1] * int64_t{request.stage_pooling.grid} *
                                          request.stage_pooling.grid
                                    : StageElements(config, s - 1, height, width);
    bytes += elements * element + config.dims[s - 1] * per_channel;
  }
  const int64_t bins = int64_t{request.region_pooling.output_size} *
                       request.region_pooling.output_size *
                       static_cast<int64_t>(request.boxes.size());
  for (int s : request.boxes.empty() ? std::vector<int>() : request.region_stages) {
    if (s >= 1 && s <= kNumStages) {
      bytes += 16 + bins * config.dims[s - 1] * element + config.dims[s - 1] * per_channel;
    }
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
  // On CUDA every batch size is computed: cuDNN's benchmark mode (model/device.h) times its
  // algorithms on a shape's first run, which no request should pay for. On the CPU the first and
  // the last are, and the others get their kernels prepared without running them.
  const bool every = model.options().device.is_cuda();
  UseOwnStream(model.options().device);
  try {
    for (int64_t batch = 1; batch <= max_batch_size; ++batch) {
      if (every || batch == 1 || batch == max_batch_size) {
        RETURN_IF_ERROR(
            model.Forward(at::zeros({batch, c.in_channels, size, size}), request).status());
      } else {
        RETURN_IF_ERROR(model.Prepare(batch, size, size));
      }
    }
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("warm-up failed: ", e.what()));
  }
  // With every shape timed by cuDNN, the CUDA graphs asked for (ModelOptions) are captured.
  return model.CaptureGraphs(max_batch_size, size);
}

void SetOneOutputCopyForTesting(bool on) { one_output_copy_for_testing.store(on); }

}  // namespace convnext
