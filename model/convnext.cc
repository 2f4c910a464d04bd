#include "model/convnext.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "base/status_macros.h"
#include "model/device.h"
#include "model/grn.h"

namespace convnext {

bool FastPathApplies(const ModelOptions& options) {
  return kHaveOneDnnFastPath && options.cpu_fast_path && options.device.is_cpu() &&
         options.dtype == c10::ScalarType::Float;
}

absl::StatusOr<c10::Device> ParseDevice(const std::string& name) {
  try {
    return c10::Device(name);
  } catch (const std::exception&) {
    return absl::InvalidArgumentError(
        absl::StrCat("device '", name, "' is not a LibTorch device (cpu, cuda, cuda:N)"));
  }
}
namespace {

std::vector<int64_t> ShapeOf(const at::Tensor& t) { return t.sizes().vec(); }

// Removes `name` from `weights` and returns it converted for the model.
at::Tensor Take(StateDict& weights, const std::string& name, const ModelOptions& options) {
  auto node = weights.extract(name);
  return node.mapped().to(options.device, options.dtype).contiguous();
}

// Input pixels per cell of stage `i`'s maps (0-based): 4, 8, 16, 32.
int64_t CellSide(int i) { return int64_t{4} << i; }

// The mask of a padded batch at a map of `rows` x `cols` with `stride` input pixels per cell:
// [N, 1, rows, cols], 1 inside each image's extent, 0 beyond.
at::Tensor ExtentMask(const std::vector<ImageExtent>& extents, int64_t rows, int64_t cols,
                      int64_t stride, const at::TensorOptions& options) {
  at::Tensor mask = at::zeros({static_cast<int64_t>(extents.size()), 1, rows, cols}, options);
  for (size_t i = 0; i < extents.size(); ++i) {
    mask[static_cast<int64_t>(i)]
        .slice(1, 0, extents[i].height / stride)
        .slice(2, 0, extents[i].width / stride)
        .fill_(1);
  }
  return mask;
}

// Each image's share of `x` ([N, C, H, W] or, with `nhwc`, [N, H, W, C]) averaged over its own
// extent; `x` is zero beyond it. [N, C].
at::Tensor PoolExtents(const at::Tensor& x, const std::vector<ImageExtent>& extents, int64_t stride,
                       bool nhwc) {
  std::vector<double> cells;
  cells.reserve(extents.size());
  for (const ImageExtent& e : extents) {
    cells.push_back(static_cast<double>((e.height / stride) * (e.width / stride)));
  }
  const at::Tensor count =
      at::tensor(cells, x.options().dtype(at::kDouble)).to(x.scalar_type()).unsqueeze(1);
  return (nhwc ? x.sum({1, 2}) : x.sum({2, 3})) / count;
}

// `options` with what its device implies: channels-last on CUDA (what cuDNN wants).
ModelOptions WithDeviceDefaults(ModelOptions options) {
  options.channels_last |= options.device.is_cuda();
  return options;
}

}  // namespace

// Captured graphs, each with its input and output tensors (the graph rewrites them), lent to one
// forward pass at a time.
struct ConvNeXt::GraphPool {
  struct Graph {
    std::unique_ptr<CapturedGraph> graph;
    at::Tensor input;   // [n, C, size, size], the model's dtype and layout.
    at::Tensor pooled;  // [n, dims[3]].
    bool lent = false;
  };

  // A graph for `n` images of height x width that is not lent, now lent; null if there is none.
  Graph* Lend(int64_t n, int64_t height, int64_t width) {
    absl::MutexLock lock(&mu);
    if (height != size || width != size) return nullptr;
    auto it = by_batch.find(n);
    if (it == by_batch.end()) return nullptr;
    for (const std::unique_ptr<Graph>& g : it->second) {
      if (!g->lent) {
        g->lent = true;
        return g.get();
      }
    }
    return nullptr;
  }
  void GiveBack(Graph* g) {
    absl::MutexLock lock(&mu);
    g->lent = false;
  }

  std::atomic<int64_t> replays{0};

  absl::Mutex mu;
  int64_t size ABSL_GUARDED_BY(mu) = 0;
  std::map<int64_t, std::vector<std::unique_ptr<Graph>>> by_batch ABSL_GUARDED_BY(mu);
};

ConvNeXt::ConvNeXt(ConvNeXtConfig config, ModelOptions options)
    : config_(std::move(config)),
      options_(WithDeviceDefaults(std::move(options))),
      graphs_(std::make_unique<GraphPool>()) {}

ConvNeXt::~ConvNeXt() = default;

absl::Status ConvNeXt::CaptureGraphs(int64_t max_batch, int64_t size) const {
  const int64_t top = std::min(max_batch, options_.cuda_graph_max_batch);
  if (top <= 0 || captured_graphs() > 0) return absl::OkStatus();
  if (size < 32) {
    return absl::InvalidArgumentError(
        absl::StrCat("CUDA graphs need inputs of at least 32x32, got ", size, "x", size));
  }
  std::map<int64_t, std::vector<std::unique_ptr<GraphPool::Graph>>> captured;
  try {
    c10::InferenceMode guard;
    const at::TensorOptions like =
        at::TensorOptions().device(options_.device).dtype(options_.dtype);
    for (int64_t n = 1; n <= top; ++n) {
      for (int64_t copy = 0; copy < std::max<int64_t>(1, options_.cuda_graph_copies); ++copy) {
        auto g = std::make_unique<GraphPool::Graph>();
        g->input = at::zeros({n, config_.in_channels, size, size}, like);
        if (options_.channels_last) g->input = g->input.contiguous(at::MemoryFormat::ChannelsLast);
        GraphPool::Graph* raw = g.get();
        // The stages as Forward runs them: graphs are CUDA's, where the ATen path runs; the CPU
        // stand-in (tests) may hold a fast-path model, whose stages run on oneDNN.
        ASSIGN_OR_RETURN(g->graph, CapturedGraph::Capture(options_.device, [this, raw] {
                           c10::InferenceMode inference;
                           if (!uses_fast_path()) {
                             raw->pooled = RunStagesAten(raw->input, kNumStages, nullptr, {});
                             return;
                           }
                           absl::StatusOr<at::Tensor> pooled =
                               RunStagesFast(raw->input, kNumStages, nullptr, {});
                           if (!pooled.ok()) throw std::runtime_error(pooled.status().ToString());
                           raw->pooled = *std::move(pooled);
                         }));
        captured[n].push_back(std::move(g));
      }
    }
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("capturing CUDA graphs failed: ", e.what()));
  }
  absl::MutexLock lock(&graphs_->mu);
  graphs_->size = size;
  graphs_->by_batch = std::move(captured);
  return absl::OkStatus();
}

int64_t ConvNeXt::graph_replays() const { return graphs_->replays.load(); }

int64_t ConvNeXt::captured_graphs() const {
  absl::MutexLock lock(&graphs_->mu);
  int64_t count = 0;
  for (const auto& [n, graphs] : graphs_->by_batch) count += static_cast<int64_t>(graphs.size());
  return count;
}

absl::StatusOr<std::unique_ptr<ConvNeXt>> ConvNeXt::Create(const ConvNeXtConfig& config,
                                                           StateDict weights,
                                                           const ModelOptions& options,
                                                           const SourceNameFn& source_name) {
  RETURN_IF_ERROR(ValidateArchitecture(config));
  if (!c10::isFloatingType(options.dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model dtype must be floating point, got ", c10::toString(options.dtype)));
  }
  const std::string who = config.variant == "custom" ? "the model" : config.variant;
  auto named = [&source_name](const std::string& canonical) {
    return source_name ? source_name(canonical) : canonical;
  };

  // Check everything before converting anything, so that a bad checkpoint fails fast and whole.
  const ParameterShapes expected = ExpectedParameters(config);
  for (const auto& [name, shape] : expected) {
    auto it = weights.find(name);
    if (it == weights.end()) {
      return absl::InvalidArgumentError(absl::StrCat("missing tensor ", named(name), ": ", who,
                                                     " expects shape ", ShapeToString(shape)));
    }
    const at::Tensor& t = it->second;
    if (!t.defined() || ShapeOf(t) != shape) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", named(name), " has shape ",
                       t.defined() ? ShapeToString(ShapeOf(t)) : "(undefined)", ", ", who,
                       " expects ", ShapeToString(shape)));
    }
    if (!c10::isFloatingType(t.scalar_type())) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", named(name), " has dtype ",
                                                     c10::toString(t.scalar_type()),
                                                     ", expected a floating-point tensor"));
    }
  }
  if (weights.size() != expected.size()) {
    std::set<std::string> known;
    for (const auto& e : expected) known.insert(e.first);
    std::vector<std::string> extra;
    for (const auto& [name, tensor] : weights) {
      if (known.count(name) == 0)
        extra.push_back(absl::StrCat(named(name), " ", ShapeToString(ShapeOf(tensor))));
    }
    const size_t shown = std::min<size_t>(extra.size(), 5);
    return absl::InvalidArgumentError(absl::StrCat(
        "unexpected tensor", extra.size() > 1 ? "s" : "", " ",
        absl::StrJoin(extra.begin(), extra.begin() + shown, ", "),
        extra.size() > shown ? absl::StrCat(" and ", extra.size() - shown, " more") : "",
        " (not part of ", who, ")"));
  }

  RETURN_IF_ERROR(CheckDevice(options.device));
  const bool cuda_float32 = options.device.is_cuda() && options.dtype == at::kFloat;
  if (options.allow_tf32 && !cuda_float32) {
    return absl::InvalidArgumentError(
        absl::StrCat("TensorFloat-32 applies to float32 models on a CUDA device only, not to ",
                     c10::toString(options.dtype), " on ", options.device.str()));
  }
  if (options.cuda_graph_max_batch > 0 && !options.device.is_cuda() &&
      !(options.device.is_cpu() && CpuGraphsForTesting())) {
    return absl::InvalidArgumentError(
        absl::StrCat("CUDA graphs need a CUDA device, not ", options.device.str()));
  }
  if (options.device.is_cuda()) ConfigureCudaOnce();
  std::unique_ptr<Float32ModeHold> float32_mode;
  if (cuda_float32) {
    ASSIGN_OR_RETURN(float32_mode,
                     HoldFloat32Mode(options.allow_tf32 ? Float32Mode::kTf32 : Float32Mode::kStrict,
                                     options.owner.empty() ? who : options.owner));
  }
  std::unique_ptr<ConvNeXt> model(new ConvNeXt(config, options));
  model->float32_mode_ = std::move(float32_mode);
  try {
    c10::InferenceMode guard;
    model->stages_.resize(kNumStages);
    for (int i = 0; i < kNumStages; ++i) {
      Stage& stage = model->stages_[i];
      const std::string ds = absl::StrCat("downsample_layers.", i, ".");
      // Stem: conv is .0 and norm .1; downsampling: norm is .0 and conv .1.
      const std::string conv = ds + (i == 0 ? "0." : "1.");
      const std::string norm = ds + (i == 0 ? "1." : "0.");
      stage.ds_conv_weight = Take(weights, conv + "weight", options);
      if (model->options_.channels_last) {
        stage.ds_conv_weight = stage.ds_conv_weight.contiguous(at::MemoryFormat::ChannelsLast);
      }
      stage.ds_conv_bias = Take(weights, conv + "bias", options);
      stage.ds_norm_weight = Take(weights, norm + "weight", options);
      stage.ds_norm_bias = Take(weights, norm + "bias", options);
      for (int64_t j = 0; j < config.depths[i]; ++j) {
        const std::string p = absl::StrCat("stages.", i, ".", j, ".");
        Block block;
        block.dw_weight = Take(weights, p + "dwconv.weight", options);
        if (model->options_.channels_last) {
          block.dw_weight = block.dw_weight.contiguous(at::MemoryFormat::ChannelsLast);
        }
        block.dw_bias = Take(weights, p + "dwconv.bias", options);
        block.norm_weight = Take(weights, p + "norm.weight", options);
        block.norm_bias = Take(weights, p + "norm.bias", options);
        block.fc1_weight = Take(weights, p + "pwconv1.weight", options);
        block.fc1_bias = Take(weights, p + "pwconv1.bias", options);
        block.fc2_weight = Take(weights, p + "pwconv2.weight", options);
        block.fc2_bias = Take(weights, p + "pwconv2.bias", options);
        if (config.grn) {
          block.grn_gamma = Take(weights, p + "grn.gamma", options);
          block.grn_beta = Take(weights, p + "grn.beta", options);
        } else {
          const at::Tensor gamma = Take(weights, p + "gamma", options);
          block.fc2_weight = block.fc2_weight * gamma.unsqueeze(1);
          block.fc2_bias = block.fc2_bias * gamma;
        }
        stage.blocks.push_back(std::move(block));
      }
    }
    const bool fast = FastPathApplies(options);
    if (!fast && options.cpu_precision != BlockPrecision::kFloat32) {
      return absl::InvalidArgumentError(absl::StrCat(
          BlockPrecisionName(options.cpu_precision),
          " blocks run on the CPU fast path only (device cpu, dtype float32, fast path enabled)",
          kHaveOneDnnFastPath ? "" : "; this build has none (CONVNEXT_ONEDNN=OFF)"));
    }
    for (size_t i = 0; fast && i < model->stages_.size(); ++i) {
      Stage& stage = model->stages_[i];
      // The fast path keeps its own copy of the blocks' weights, in oneDNN's layouts.
      ASSIGN_OR_RETURN(stage.fast,
                       OneDnnStage::Create(std::move(stage.blocks), config.layer_norm_eps,
                                           options.cpu_precision, options.cpu_own_kernels));
      stage.blocks.clear();
      // The downsampling layers compute as the blocks do; the stem (on the image, 3 channels: a
      // small share of the work) in float32.
      ASSIGN_OR_RETURN(
          stage.fast_ds,
          OneDnnPatchConv::Create(stage.ds_conv_weight, stage.ds_conv_bias,
                                  i == 0 ? BlockPrecision::kFloat32 : options.cpu_precision));
      stage.ds_conv_weight = at::Tensor();
      stage.ds_conv_bias = at::Tensor();
    }
    if (config.stage_norms) {
      for (int i = 0; i < kNumStages; ++i) {
        model->stages_[i].out_norm_weight =
            Take(weights, absl::StrCat("norm", i, ".weight"), options);
        model->stages_[i].out_norm_bias = Take(weights, absl::StrCat("norm", i, ".bias"), options);
      }
    } else {
      model->head_.norm_weight = Take(weights, "norm.weight", options);
      model->head_.norm_bias = Take(weights, "norm.bias", options);
      model->head_.norm_eps = config.head_norm_eps;
    }
    if (config.num_classes > 0) {
      model->head_.fc_weight = Take(weights, "head.weight", options);
      model->head_.fc_bias = Take(weights, "head.bias", options);
      model->head_.num_classes = config.num_classes;
    }
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("moving weights to ", options.device.str(), ": ", e.what()));
  }
  return model;
}

std::string ConvNeXt::compute_dtype_name() const {
  if (uses_fast_path()) return BlockPrecisionName(block_precision());
  if (options_.allow_tf32) return "tf32";
  switch (options_.dtype) {
    case at::kHalf:
      return "float16";
    case at::kBFloat16:
      return "bfloat16";
    case at::kDouble:
      return "float64";
    default:
      return "float32";
  }
}

at::Tensor ConvNeXtHead::Embed(const at::Tensor& pooled) const {
  return at::layer_norm(pooled, {pooled.size(1)}, norm_weight, norm_bias, norm_eps);
}

at::Tensor ConvNeXtHead::Classify(const at::Tensor& embedding) const {
  return at::linear(embedding, fc_weight, fc_bias);
}

at::Tensor ConvNeXt::LayerNormChannelsFirst(const at::Tensor& x, const at::Tensor& weight,
                                            const at::Tensor& bias) const {
  // Normalise over channels: NHWC view, LayerNorm over the last dimension, back to NCHW.
  return at::layer_norm(x.permute({0, 2, 3, 1}), {x.size(1)}, weight, bias, config_.layer_norm_eps)
      .permute({0, 3, 1, 2});
}

at::Tensor ConvNeXt::RunBlock(const Block& block, const at::Tensor& x,
                              const at::Tensor& mask) const {
  const int64_t channels = x.size(1);
  at::Tensor y = at::conv2d(x, block.dw_weight, block.dw_bias, /*stride=*/{1, 1},
                            /*padding=*/{3, 3}, /*dilation=*/{1, 1}, /*groups=*/channels);
  y = at::layer_norm(y.permute({0, 2, 3, 1}), {channels}, block.norm_weight, block.norm_bias,
                     config_.layer_norm_eps);
  y = at::linear(y, block.fc1_weight, block.fc1_bias);
  y = at::gelu(y);  // Exact (erf) form, as in every reference implementation.
  if (block.grn_gamma.defined()) {
    // ConvNeXt V2: GRN of the NHWC hidden layer (over each image's own extent in a padded batch).
    ApplyGrn(y.view({y.size(0), -1, y.size(3)}), mask, block.grn_gamma, block.grn_beta);
  }
  y = at::linear(y, block.fc2_weight, block.fc2_bias);
  return x + y.permute({0, 3, 1, 2});
}

at::Tensor ConvNeXt::RunStagesAten(at::Tensor x, int last_stage, std::vector<at::Tensor>* stages,
                                   const std::vector<ImageExtent>& extents) const {
  for (int i = 0; i < last_stage; ++i) {
    const Stage& stage = stages_[i];
    if (i == 0) {
      x = at::conv2d(x, stage.ds_conv_weight, stage.ds_conv_bias, /*stride=*/{4, 4});
      x = LayerNormChannelsFirst(x, stage.ds_norm_weight, stage.ds_norm_bias);
    } else {
      x = LayerNormChannelsFirst(x, stage.ds_norm_weight, stage.ds_norm_bias);
      x = at::conv2d(x, stage.ds_conv_weight, stage.ds_conv_bias, /*stride=*/{2, 2});
    }
    // x is each step's own new tensor here, so the masking may write into it.
    at::Tensor mask, mask_nhwc;
    if (!extents.empty()) {
      mask = ExtentMask(extents, x.size(2), x.size(3), CellSide(i), x.options());
      mask_nhwc = mask.permute({0, 2, 3, 1});
      x.mul_(mask);
    }
    for (const Block& block : stage.blocks) {
      x = RunBlock(block, x, mask_nhwc);
      if (mask.defined()) x.mul_(mask);
    }
    if (stages != nullptr) {
      stages->push_back(
          config_.stage_norms
              ? LayerNormChannelsFirst(x, stage.out_norm_weight, stage.out_norm_bias).contiguous()
              : x.contiguous());
    }
  }
  return extents.empty() ? x.mean({-2, -1})
                         : PoolExtents(x, extents, CellSide(last_stage - 1), /*nhwc=*/false);
}

absl::StatusOr<at::Tensor> ConvNeXt::RunStagesFast(at::Tensor x, int last_stage,
                                                   std::vector<at::Tensor>* stages,
                                                   const std::vector<ImageExtent>& extents) const {
  // Between stages x is a contiguous NHWC tensor [N, H, W, C]: the LayerNorms normalise its last
  // dimension with no permute copy, and the stem and downsampling convolutions (OneDnnPatchConv)
  // write it and read it as it is.
  auto norm_last = [this](const at::Tensor& t, const at::Tensor& weight, const at::Tensor& bias) {
    return at::layer_norm(t, {t.size(3)}, weight, bias, config_.layer_norm_eps);
  };
  auto to_nchw = [](const at::Tensor& nhwc) { return nhwc.permute({0, 3, 1, 2}); };
  for (int i = 0; i < last_stage; ++i) {
    const Stage& stage = stages_[i];
    if (i == 0) {
      ASSIGN_OR_RETURN(x, stage.fast_ds->Run(x.contiguous(), /*nhwc=*/false));
      x = norm_last(x, stage.ds_norm_weight, stage.ds_norm_bias);
    } else {
      x = norm_last(x, stage.ds_norm_weight, stage.ds_norm_bias);
      ASSIGN_OR_RETURN(x, stage.fast_ds->Run(x.contiguous(), /*nhwc=*/true));
    }
    at::Tensor mask;
    if (!extents.empty()) {
      mask =
          ExtentMask(extents, x.size(1), x.size(2), CellSide(i), x.options()).permute({0, 2, 3, 1});
      x.mul_(mask);
    }
    RETURN_IF_ERROR(stage.fast->Run(x, mask));
    if (stages != nullptr) {
      stages->push_back(to_nchw(config_.stage_norms
                                    ? norm_last(x, stage.out_norm_weight, stage.out_norm_bias)
                                    : x)
                            .contiguous());
    }
  }
  return extents.empty() ? x.mean({1, 2})
                         : PoolExtents(x, extents, CellSide(last_stage - 1), /*nhwc=*/true);
}

absl::Status ConvNeXt::Prepare(int64_t batch, int64_t height, int64_t width) const {
  // The input of the convolution before each stage: the image (stem, NCHW), then the previous
  // stage's output (NHWC).
  int64_t h = height, w = width;
  for (int i = 0; i < kNumStages && uses_fast_path(); ++i) {
    const int64_t k = i == 0 ? 4 : 2;
    if (h < k || w < k) break;
    RETURN_IF_ERROR(stages_[i].fast_ds->Prepare(batch, h, w));
    h /= k;
    w /= k;
    RETURN_IF_ERROR(stages_[i].fast->Prepare(batch, h, w));
  }
  return absl::OkStatus();
}

absl::StatusOr<ForwardOutputs> ConvNeXt::Forward(const at::Tensor& images,
                                                 const OutputRequest& request) const {
  if (!images.defined() || images.dim() != 4) {
    return absl::InvalidArgumentError(absl::StrCat(
        "input must be a 4-d tensor [N, C, H, W], got ",
        images.defined() ? ShapeToString(ShapeOf(images)) : std::string("an undefined tensor")));
  }
  if (images.size(0) < 1 || images.size(1) != config_.in_channels || images.size(2) < 32 ||
      images.size(3) < 32) {
    return absl::InvalidArgumentError(
        absl::StrCat("input has shape ", ShapeToString(ShapeOf(images)), ", expected [N >= 1, ",
                     config_.in_channels, ", H >= 32, W >= 32]"));
  }
  if (!c10::isFloatingType(images.scalar_type())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "input dtype is ", c10::toString(images.scalar_type()), ", expected a floating dtype"));
  }
  if (request.logits && config_.num_classes == 0) {
    return absl::FailedPreconditionError(
        "this model has no classification head (num_classes = 0): it can return the embedding "
        "and stage outputs only");
  }

  if ((request.embedding || request.pooled) && config_.stage_norms) {
    return absl::FailedPreconditionError(
        "this model is a detection backbone (per-stage norms, no final norm): it returns stage "
        "outputs only");
  }

  if (request.last_stage < 1 || request.last_stage > kNumStages) {
    return absl::InvalidArgumentError(
        absl::StrCat("last_stage = ", request.last_stage, " is not in 1..", kNumStages));
  }
  if (request.last_stage < kNumStages && (request.logits || request.embedding || request.pooled)) {
    return absl::InvalidArgumentError(
        "logits, the embedding and pooled features need every stage: last_stage must be the last "
        "one");
  }

  if (!request.extents.empty()) {
    if (static_cast<int64_t>(request.extents.size()) != images.size(0)) {
      return absl::InvalidArgumentError(
          absl::StrCat(request.extents.size(), " extents for ", images.size(0), " images"));
    }
    for (size_t i = 0; i < request.extents.size(); ++i) {
      const ImageExtent& e = request.extents[i];
      if (e.height < 32 || e.width < 32 || e.height % 32 != 0 || e.width % 32 != 0 ||
          e.height > images.size(2) || e.width > images.size(3)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "image ", i, "'s extent ", e.height, "x", e.width,
            " must have sides that are multiples of 32, at least 32 and within the batch's ",
            images.size(2), "x", images.size(3)));
      }
    }
  }

  ForwardOutputs out;
  // The pooled features alone of a batch whose shape has a captured graph: replayed. (Models
  // without graphs do not look.)
  if (options_.cuda_graph_max_batch > 0 && request.pooled && !request.logits &&
      !request.embedding && !request.stages && request.last_stage == kNumStages &&
      request.extents.empty()) {
    if (GraphPool::Graph* g = graphs_->Lend(images.size(0), images.size(2), images.size(3))) {
      try {
        c10::InferenceMode guard;
        g->graph->Acquire();
        g->input.copy_(images);
        g->graph->Replay();
        graphs_->replays.fetch_add(1, std::memory_order_relaxed);
      } catch (const std::exception& e) {
        graphs_->GiveBack(g);
        return absl::InternalError(
            absl::StrCat("ConvNeXt forward (CUDA graph) failed: ", e.what()));
      }
      out.pooled = g->pooled;
      GraphPool* pool = graphs_.get();
      out.graph_lease = std::shared_ptr<void>(nullptr, [pool, g](void*) {
        g->graph->Release();
        pool->GiveBack(g);
      });
      return out;
    }
  }
  std::vector<at::Tensor>* stages = request.stages ? &out.stages : nullptr;
  at::Tensor pooled;
  try {
    c10::InferenceMode guard;
    at::Tensor x = images.to(options_.device, options_.dtype);
    if (options_.channels_last && !uses_fast_path()) {
      x = x.contiguous(at::MemoryFormat::ChannelsLast);
    }
    if (uses_fast_path()) {
      ASSIGN_OR_RETURN(pooled,
                       RunStagesFast(std::move(x), request.last_stage, stages, request.extents));
    } else {
      pooled = RunStagesAten(std::move(x), request.last_stage, stages, request.extents);
    }
    if (request.logits || request.embedding) {
      at::Tensor embedding = head_.Embed(pooled);
      if (request.logits) out.logits = head_.Classify(embedding);
      if (request.embedding) out.embedding = std::move(embedding);
    }
    if (request.pooled) out.pooled = std::move(pooled);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("ConvNeXt forward failed: ", e.what()));
  }
  return out;
}

}  // namespace convnext
