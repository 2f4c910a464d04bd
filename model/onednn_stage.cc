#include "model/onednn_stage.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <exception>
#include <map>
#include <optional>
#include <tuple>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "model/amx_mlp.h"
#include "model/avx512_mlp.h"
#include "model/grn.h"
#include "model/layer_norm_rows.h"
#include "oneapi/dnnl/dnnl.hpp"

namespace convnext {
namespace {

using dnnl::memory;
using Tag = memory::format_tag;
using DType = memory::data_type;
constexpr DType kF32 = DType::f32;
constexpr DType kBf16 = DType::bf16;

// Largest number of activation shapes whose primitives are kept. A server sees a handful (one per
// batch size and input size); past this the cache is emptied and refilled.
constexpr size_t kMaxCachedShapes = 64;

const dnnl::engine& CpuEngine() {
  static const dnnl::engine* engine = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
}

// Wraps a contiguous tensor's storage (no copy); the tensor must outlive the memory and hold the
// data type `md` names.
memory Wrap(const at::Tensor& t, const memory::desc& md) {
  return memory(md, CpuEngine(), const_cast<void*>(t.data_ptr()));
}

// Copies `plain` (a tensor in the layout `plain_md` describes) into a new oneDNN buffer laid out
// as `packed_md` (which may also change the data type).
memory Pack(const at::Tensor& plain, const memory::desc& plain_md, const memory::desc& packed_md) {
  memory src = Wrap(plain, plain_md);
  memory dst(packed_md, CpuEngine());
  dnnl::stream stream(CpuEngine());
  dnnl::reorder(src, dst).execute(stream, src, dst);
  stream.wait();
  return dst;
}

// The primitive descriptors of one block for activations [n, h, w, c], with the weight layouts
// given (`any` lets oneDNN choose them). The depthwise convolution and the LayerNorm are float32
// whichever the activations (oneDNN's float32 depthwise kernel measured the faster one, see
// onednn_stage.h); `to_act` (bfloat16 only) rounds the normalised rows to the activations' type for
// the matrix products.
struct Descriptors {
  dnnl::reorder::primitive_desc to_act;
  dnnl::convolution_forward::primitive_desc dwconv;
  dnnl::layer_normalization_forward::primitive_desc norm;
  dnnl::matmul::primitive_desc fc1;
  dnnl::matmul::primitive_desc fc2;
};

// The weight layouts of a stage's blocks.
struct WeightDescs {
  memory::desc dw, fc1, fc2;
};

// In float32 the pointwise layers' weights, [out, in] row-major in the reference layout, are used
// as they are: as matmul's [in, out] matrix that is the transposed layout `ba`. Measured with
// bench/model_throughput (convnext_tiny, batch 1 and 8), letting oneDNN repack them made no
// difference beyond the run-to-run noise (about 5%), and using them in place keeps loading at one
// copy of the weights. In bfloat16 they are converted anyway, into the layout oneDNN chooses.
memory::desc Fc1WeightDesc(int64_t c, DType t) { return memory::desc({c, 4 * c}, t, Tag::ba); }
memory::desc Fc2WeightDesc(int64_t c, DType t) { return memory::desc({4 * c, c}, t, Tag::ba); }

Descriptors MakeDescriptors(int64_t n, int64_t h, int64_t w, int64_t c, float eps, DType act,
                            const WeightDescs& weights) {
  const dnnl::engine& engine = CpuEngine();
  const int64_t m = n * h * w;
  const memory::desc x_nhwc({n, c, h, w}, kF32, Tag::nhwc);
  const memory::desc bias_c({c}, kF32, Tag::x);
  const dnnl::convolution_forward::desc dwconv(
      dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, x_nhwc, weights.dw,
      bias_c, x_nhwc, /*strides=*/{1, 1}, /*padding_l=*/{3, 3},
      /*padding_r=*/{3, 3});

  const memory::desc rows_c_f32({m, c}, kF32, Tag::ab);
  const dnnl::layer_normalization_forward::desc norm(
      dnnl::prop_kind::forward_inference, rows_c_f32, eps,
      dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift);

  const memory::desc rows_c({m, c}, act, Tag::ab);
  const memory::desc rows_4c({m, 4 * c}, act, Tag::ab);
  dnnl::post_ops gelu;
  gelu.append_eltwise(1.0f, dnnl::algorithm::eltwise_gelu_erf, 0.0f, 0.0f);
  dnnl::primitive_attr fc1_attr;
  fc1_attr.set_post_ops(gelu);
  const dnnl::matmul::desc fc1(rows_c, weights.fc1, memory::desc({1, 4 * c}, kF32, Tag::ab),
                               rows_4c);

  // The residual: fc2 adds its result into x, which is float32 whichever the activations.
  dnnl::post_ops residual;
  residual.append_sum(1.0f);
  dnnl::primitive_attr fc2_attr;
  fc2_attr.set_post_ops(residual);
  const dnnl::matmul::desc fc2(rows_4c, weights.fc2, memory::desc({1, c}, kF32, Tag::ab),
                               memory::desc({m, c}, kF32, Tag::ab));

  Descriptors d{
      {},
      dnnl::convolution_forward::primitive_desc(dwconv, engine),
      dnnl::layer_normalization_forward::primitive_desc(norm, engine),
      dnnl::matmul::primitive_desc(fc1, fc1_attr, engine),
      dnnl::matmul::primitive_desc(fc2, fc2_attr, engine),
  };
  if (act != kF32) d.to_act = dnnl::reorder::primitive_desc(engine, rows_c_f32, engine, rows_c);
  return d;
}

// One block's weights as oneDNN memories. Packed copies, or (float32 pointwise weights and the
// vectors) memories wrapping the tensors in `owners`.
struct PackedBlock {
  memory dw_weight, dw_bias, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias;
  std::vector<at::Tensor> owners;
  // ConvNeXt V2's GRN, float32 [4C] each; undefined for V1 blocks.
  at::Tensor grn_gamma, grn_beta;
  // The LayerNorm and the MLP (fc1, GELU, fc2, residual) as our own AMX kernel (where
  // Impl::amx_mlp; fc1_weight and fc2_weight are then not packed for oneDNN).
  std::optional<AmxMlpWeights> amx_mlp;
  // The same in float32 as our own AVX-512 kernel (where Impl::avx512_mlp).
  std::optional<Avx512MlpWeights> avx512_mlp;
};

// One activation shape's primitives. Those a stage does not use are left empty: the LayerNorm
// and the reorder after it where the LayerNorm is our own kernel, the matrix products where the MLP
// is (and the reorder in float32).
struct Primitives {
  dnnl::reorder to_act;
  dnnl::convolution_forward dwconv;
  dnnl::layer_normalization_forward norm;
  dnnl::matmul fc1, fc2;
};

}  // namespace

std::string OneDnnIsaName() {
  using Isa = dnnl::cpu_isa;
  switch (dnnl::get_effective_cpu_isa()) {
    case Isa::sse41:
      return "sse41";
    case Isa::avx:
      return "avx";
    case Isa::avx2:
      return "avx2";
    case Isa::avx2_vnni:
      return "avx2_vnni";
    case Isa::avx512_mic:
    case Isa::avx512_mic_4ops:
      return "avx512_mic";
    case Isa::avx512_core:
      return "avx512_core";
    case Isa::avx512_core_vnni:
      return "avx512_core_vnni";
    case Isa::avx512_core_bf16:
      return "avx512_core_bf16";
    case Isa::avx512_core_amx:
      return "avx512_core_amx";
    default:
      return "unknown";
  }
}

bool CpuHasNativeBf16() {
  const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
  return isa == dnnl::cpu_isa::avx512_core_bf16 || isa == dnnl::cpu_isa::avx512_core_amx;
}

bool CpuHasAmx() { return dnnl::get_effective_cpu_isa() == dnnl::cpu_isa::avx512_core_amx; }

struct OneDnnStage::Impl {
  int64_t channels = 0;
  float eps = 0;
  BlockPrecision precision = BlockPrecision::kFloat32;
  // Whether the LayerNorm (and in bfloat16 the rounding after it) is our own kernel
  // (model/layer_norm_rows.h) rather than oneDNN's primitives: where the CPU has AVX-512 and
  // oneDNN uses it (ONEDNN_MAX_CPU_ISA=avx2 gives the AVX2 machines' path, kernels included).
  bool own_norm = false;
  // Whether the blocks' LayerNorm and MLP are our own AMX kernel (model/amx_mlp.h): bfloat16 on
  // AMX, V1 blocks (GRN needs the whole image's GELU output between the products), C a multiple
  // of 32, where own_norm (the kernel normalises with it).
  bool amx_mlp = false;
  // Whether they are our own AVX-512 kernel (model/avx512_mlp.h): float32, V1 blocks, C a multiple
  // of 16, where own_norm.
  bool avx512_mlp = false;
  WeightDescs weight_descs;  // The layouts the weights were packed in (or wrapped as).
  std::vector<PackedBlock> blocks;

  // The activations' data type.
  DType act() const { return precision == BlockPrecision::kBFloat16 ? kBf16 : kF32; }

  mutable absl::Mutex mu;
  mutable std::map<std::tuple<int64_t, int64_t, int64_t>, std::shared_ptr<const Primitives>> cache
      ABSL_GUARDED_BY(mu);

  // The primitives for activations [n, h, w, channels], from the cache or created.
  std::shared_ptr<const Primitives> PrimitivesFor(int64_t n, int64_t h, int64_t w) const {
    const auto key = std::make_tuple(n, h, w);
    {
      absl::MutexLock lock(&mu);
      auto it = cache.find(key);
      if (it != cache.end()) return it->second;
    }
    // The weights stay in the layouts they were packed in: those depend on the channel count,
    // the data type and the instruction set, not on the activation shape.
    const Descriptors d = MakeDescriptors(n, h, w, channels, eps, act(), weight_descs);
    auto made = std::make_shared<Primitives>();
    made->dwconv = dnnl::convolution_forward(d.dwconv);
    if (!own_norm) {
      made->norm = dnnl::layer_normalization_forward(d.norm);
      if (act() != kF32) made->to_act = dnnl::reorder(d.to_act);
    }
    if (!amx_mlp && !avx512_mlp) {
      made->fc1 = dnnl::matmul(d.fc1);
      made->fc2 = dnnl::matmul(d.fc2);
    }
    absl::MutexLock lock(&mu);
    if (cache.size() >= kMaxCachedShapes) cache.clear();
    return cache.emplace(key, std::move(made)).first->second;
  }
};

OneDnnStage::OneDnnStage(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
OneDnnStage::~OneDnnStage() = default;

absl::StatusOr<std::unique_ptr<OneDnnStage>> OneDnnStage::Create(std::vector<BlockWeights> blocks,
                                                                 double layer_norm_eps,
                                                                 BlockPrecision precision,
                                                                 bool own_kernels) {
  if (blocks.empty()) return absl::InvalidArgumentError("a stage needs at least one block");
  const bool bf16 = precision == BlockPrecision::kBFloat16;
  if (bf16 && !CpuHasNativeBf16()) {
    return absl::FailedPreconditionError(
        absl::StrCat("bfloat16 blocks need a CPU with native bfloat16 (AVX512-BF16 or AMX-BF16); "
                     "oneDNN runs this one as ",
                     OneDnnIsaName()));
  }
  auto impl = std::make_unique<Impl>();
  const int64_t c = blocks[0].dw_weight.size(0);
  impl->channels = c;
  impl->eps = static_cast<float>(layer_norm_eps);
  impl->precision = precision;
  const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
  impl->own_norm =
      LayerNormRowsAvailable(bf16) &&
      (isa == dnnl::cpu_isa::avx512_core || isa == dnnl::cpu_isa::avx512_core_vnni ||
       isa == dnnl::cpu_isa::avx512_core_bf16 || isa == dnnl::cpu_isa::avx512_core_amx);
  impl->amx_mlp = own_kernels && bf16 && impl->own_norm && CpuHasAmx() && AmxMlpAvailable() &&
                  c % 32 == 0 && !blocks[0].grn_gamma.defined();
  impl->avx512_mlp = own_kernels && !bf16 && impl->own_norm && Avx512MlpAvailable() &&
                     c % 16 == 0 && !blocks[0].grn_gamma.defined();
  try {
    // Let oneDNN choose the layouts of the weights it repacks, then pack every block's in them
    // once.
    const DType t = impl->act();
    const WeightDescs any{memory::desc({c, 1, 1, 7, 7}, kF32, Tag::any),
                          bf16 ? memory::desc({c, 4 * c}, t, Tag::any) : Fc1WeightDesc(c, t),
                          bf16 ? memory::desc({4 * c, c}, t, Tag::any) : Fc2WeightDesc(c, t)};
    const Descriptors chosen = MakeDescriptors(/*n=*/1, /*h=*/14, /*w=*/14, c, impl->eps, t, any);
    impl->weight_descs = {chosen.dwconv.weights_desc(), chosen.fc1.weights_desc(),
                          chosen.fc2.weights_desc()};
    const memory::desc dw_plain({c, 1, 1, 7, 7}, kF32, Tag::goihw);  // Groups first.
    for (BlockWeights& b : blocks) {
      auto f32 = [](const at::Tensor& t) { return t.to(at::kFloat).contiguous(); };
      PackedBlock p;
      p.dw_weight = Pack(f32(b.dw_weight), dw_plain, impl->weight_descs.dw);
      auto keep = [&](const at::Tensor& t, const memory::desc& md) {
        p.owners.push_back(f32(t));
        return Wrap(p.owners.back(), md);
      };
      const memory::desc vec_c({c}, kF32, Tag::x);
      p.dw_bias = keep(b.dw_bias, vec_c);
      p.norm_weight = keep(b.norm_weight, vec_c);
      p.norm_bias = keep(b.norm_bias, vec_c);
      if (impl->amx_mlp) {
        absl::StatusOr<AmxMlpWeights> mlp =
            AmxMlpWeights::Pack(b.norm_weight, b.norm_bias, layer_norm_eps, b.fc1_weight,
                                b.fc1_bias, b.fc2_weight, b.fc2_bias);
        if (!mlp.ok()) return mlp.status();
        p.amx_mlp = *std::move(mlp);
      } else if (impl->avx512_mlp) {
        absl::StatusOr<Avx512MlpWeights> mlp =
            Avx512MlpWeights::Pack(b.norm_weight, b.norm_bias, layer_norm_eps, b.fc1_weight,
                                   b.fc1_bias, b.fc2_weight, b.fc2_bias);
        if (!mlp.ok()) return mlp.status();
        p.avx512_mlp = *std::move(mlp);
      } else if (bf16) {
        p.fc1_weight = Pack(f32(b.fc1_weight), Fc1WeightDesc(c, kF32), impl->weight_descs.fc1);
        p.fc2_weight = Pack(f32(b.fc2_weight), Fc2WeightDesc(c, kF32), impl->weight_descs.fc2);
      } else {
        p.fc1_weight = keep(b.fc1_weight, impl->weight_descs.fc1);
        p.fc2_weight = keep(b.fc2_weight, impl->weight_descs.fc2);
      }
      p.fc1_bias = keep(b.fc1_bias, memory::desc({1, 4 * c}, kF32, Tag::ab));
      p.fc2_bias = keep(b.fc2_bias, memory::desc({1, c}, kF32, Tag::ab));
      if (b.grn_gamma.defined()) {
        p.grn_gamma = f32(b.grn_gamma);
        p.grn_beta = f32(b.grn_beta);
      }
      impl->blocks.push_back(std::move(p));
      b = BlockWeights();
    }
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("preparing oneDNN ", BlockPrecisionName(precision),
                                            " kernels for a stage of ", c,
                                            " channels: ", e.what()));
  }
  return std::unique_ptr<OneDnnStage>(new OneDnnStage(std::move(impl)));
}

BlockPrecision OneDnnStage::precision() const { return impl_->precision; }

absl::Status OneDnnStage::Prepare(int64_t n, int64_t h, int64_t w) const {
  try {
    impl_->PrimitivesFor(n, h, w);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("oneDNN stage of ", impl_->channels,
                                            " channels: preparing [", n, ", ", h, ", ", w,
                                            "]: ", e.what()));
  }
  return absl::OkStatus();
}

absl::Status OneDnnStage::Run(at::Tensor& x, const at::Tensor& mask) const {
  const int64_t c = impl_->channels;
  if (!x.defined() || x.dim() != 4 || x.size(3) != c || x.scalar_type() != at::kFloat ||
      !x.is_contiguous() || !x.device().is_cpu()) {
    return absl::InternalError(absl::StrCat("oneDNN stage of ", c,
                                            " channels needs a contiguous float32 CPU tensor "
                                            "[N, H, W, ",
                                            c, "]"));
  }
  const int64_t n = x.size(0), h = x.size(1), w = x.size(2), m = n * h * w;
  const DType act = impl_->act();
  const bool bf16 = act != kF32;
  try {
    // oneDNN parallelises with OpenMP on the calling thread: give it LibTorch's thread count.
    at::internal::lazy_init_num_threads();
    std::shared_ptr<const Primitives> prims = impl_->PrimitivesFor(n, h, w);
    const at::TensorOptions act_options = x.options().dtype(bf16 ? at::kBFloat16 : at::kFloat);
    // The depthwise convolution's output, normalised in place: float32 whichever the
    // activations; bfloat16 rounds it into y16 for the matrix products.
    at::Tensor y = at::empty({m, c}, x.options());
    // Our own AMX kernel keeps the rounded rows and the GELU's output per thread instead.
    at::Tensor y16 = bf16 && !impl_->amx_mlp ? at::empty({m, c}, act_options) : at::Tensor();
    // The GELU's output between the two products.
    const bool own_mlp = impl_->amx_mlp || impl_->avx512_mlp;
    at::Tensor hidden = own_mlp ? at::Tensor() : at::empty({m, 4 * c}, act_options);
    memory x_nhwc = Wrap(x, memory::desc({n, c, h, w}, kF32, Tag::nhwc));
    memory x_rows = Wrap(x, memory::desc({m, c}, kF32, Tag::ab));
    memory y_nhwc = Wrap(y, memory::desc({n, c, h, w}, kF32, Tag::nhwc));
    memory y_rows = Wrap(y, memory::desc({m, c}, kF32, Tag::ab));
    memory fc1_src = y16.defined() ? Wrap(y16, memory::desc({m, c}, act, Tag::ab)) : y_rows;
    memory h_rows = own_mlp ? memory() : Wrap(hidden, memory::desc({m, 4 * c}, act, Tag::ab));
    dnnl::stream stream(CpuEngine());
    for (const PackedBlock& b : impl_->blocks) {
      prims->dwconv.execute(stream, {{DNNL_ARG_SRC, x_nhwc},
                                     {DNNL_ARG_WEIGHTS, b.dw_weight},
                                     {DNNL_ARG_BIAS, b.dw_bias},
                                     {DNNL_ARG_DST, y_nhwc}});
      if (b.amx_mlp) {  // LayerNorm, fc1, GELU, fc2 and the residual: one kernel of our own.
        stream.wait();
        b.amx_mlp->Run(y.data_ptr<float>(), m, x.data_ptr<float>());
        if (mask.defined()) x.mul_(mask);
        continue;
      }
      if (b.avx512_mlp) {  // The same in float32.
        stream.wait();
        b.avx512_mlp->Run(y.data_ptr<float>(), m, x.data_ptr<float>());
        if (mask.defined()) x.mul_(mask);
        continue;
      }
      if (impl_->own_norm) {
        stream.wait();
        const auto* gamma = static_cast<const float*>(b.norm_weight.get_data_handle());
        const auto* beta = static_cast<const float*>(b.norm_bias.get_data_handle());
        float* rows = y.data_ptr<float>();
        if (bf16) {
          LayerNormRowsToBf16(rows, static_cast<uint16_t*>(y16.data_ptr()), m, c, gamma, beta,
                              impl_->eps);
        } else {
          LayerNormRows(rows, rows, m, c, gamma, beta, impl_->eps);
        }
      } else {
        prims->norm.execute(stream, {{DNNL_ARG_SRC, y_rows},
                                     {DNNL_ARG_DST, y_rows},
                                     {DNNL_ARG_SCALE, b.norm_weight},
                                     {DNNL_ARG_SHIFT, b.norm_bias}});
        if (bf16) prims->to_act.execute(stream, y_rows, fc1_src);
      }
      prims->fc1.execute(stream, {{DNNL_ARG_SRC, fc1_src},
                                  {DNNL_ARG_WEIGHTS, b.fc1_weight},
                                  {DNNL_ARG_BIAS, b.fc1_bias},
                                  {DNNL_ARG_DST, h_rows}});
      if (b.grn_gamma.defined()) {
        stream.wait();
        ApplyGrn(hidden.view({n, h * w, 4 * c}), mask, b.grn_gamma, b.grn_beta);
      }
      prims->fc2.execute(stream, {{DNNL_ARG_SRC, h_rows},
                                  {DNNL_ARG_WEIGHTS, b.fc2_weight},
                                  {DNNL_ARG_BIAS, b.fc2_bias},
                                  {DNNL_ARG_DST, x_rows}});
      if (mask.defined()) {
        stream.wait();
        x.mul_(mask);
      }
    }
    stream.wait();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("oneDNN ", BlockPrecisionName(impl_->precision),
                                            " stage of ", c, " channels on [", n, ", ", h, ", ", w,
                                            ", ", c, "]: ", e.what()));
  }
  return absl::OkStatus();
}

struct OneDnnPatchConv::Impl {
  int64_t in_channels = 0, out_channels = 0, kernel = 0;
  BlockPrecision precision = BlockPrecision::kFloat32;
  // float32: the convolution's weights [O, I, k, k]; bfloat16: the matrix product's [k k I, O]
  // (rows in the patches' (kh, kw, ci) order). Packed in the layout chosen for `weight_desc`.
  memory weight;
  memory::desc weight_desc;
  at::Tensor bias;  // float32 [O].
  memory bias_mem;  // Wraps `bias` ([O] for the convolution, [1, O] for the matrix product).

  bool bf16() const { return precision == BlockPrecision::kBFloat16; }

  // One input shape's primitive (the convolution, or in bfloat16 the matrix product), and the
  // weights repacked for it if it wants another layout than the one they were packed in (not
  // seen: the layout depends on the channels, data type and instruction set).
  struct Made {
    dnnl::primitive compute;
    memory weight;
  };
  mutable absl::Mutex mu;
  mutable std::map<std::tuple<int64_t, int64_t, int64_t>, std::shared_ptr<const Made>> cache
      ABSL_GUARDED_BY(mu);

  // The input's descriptor: a contiguous NHWC tensor [n, h, w, I] cropped to whole patches
  // (oh * k, ow * k) by its strides.
  memory::desc SrcDesc(int64_t n, int64_t h, int64_t w) const {
    const int64_t oh = h / kernel, ow = w / kernel, c = in_channels;
    return memory::desc({n, c, oh * kernel, ow * kernel}, kF32,
                        memory::dims{h * w * c, 1, w * c, c});
  }

  dnnl::convolution_forward::primitive_desc Describe(int64_t n, int64_t h, int64_t w,
                                                     const memory::desc& weights) const {
    const int64_t oh = h / kernel, ow = w / kernel;
    const dnnl::convolution_forward::desc d(
        dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, SrcDesc(n, h, w),
        weights, memory::desc({out_channels}, kF32, Tag::x),
        memory::desc({n, out_channels, oh, ow}, kF32, Tag::nhwc), {kernel, kernel}, {0, 0}, {0, 0});
    return dnnl::convolution_forward::primitive_desc(d, CpuEngine());
  }

  // bfloat16: the patches of an [n, h, w, I] input as rows [n (h / k) (w / k), k k I] times the
  // weights [k k I, O], plus the bias, into float32 rows [.., O] (the NHWC output).
  dnnl::matmul::primitive_desc DescribeMatmul(int64_t n, int64_t h, int64_t w,
                                              const memory::desc& weights) const {
    const int64_t m = n * (h / kernel) * (w / kernel);
    const int64_t k = kernel * kernel * in_channels;
    const dnnl::matmul::desc d(memory::desc({m, k}, kBf16, Tag::ab), weights,
                               memory::desc({1, out_channels}, kF32, Tag::ab),
                               memory::desc({m, out_channels}, kF32, Tag::ab));
    return dnnl::matmul::primitive_desc(d, CpuEngine());
  }

  std::shared_ptr<const Made> PrimitiveFor(int64_t n, int64_t h, int64_t w) const {
    const auto key = std::make_tuple(n, h, w);
    {
      absl::MutexLock lock(&mu);
      auto it = cache.find(key);
      if (it != cache.end()) return it->second;
    }
    const memory::desc any(weight_desc.dims(), bf16() ? kBf16 : kF32, Tag::any);
    auto made = std::make_shared<Made>();
    memory::desc wanted;
    if (bf16()) {
      const auto pd = DescribeMatmul(n, h, w, any);
      made->compute = dnnl::matmul(pd);
      wanted = pd.weights_desc();
    } else {
      const auto pd = Describe(n, h, w, any);
      made->compute = dnnl::convolution_forward(pd);
      wanted = pd.weights_desc();
    }
    if (wanted == weight_desc) {
      made->weight = weight;
    } else {
      made->weight = memory(wanted, CpuEngine());
      dnnl::stream stream(CpuEngine());
      memory packed = weight;
      dnnl::reorder(packed, made->weight).execute(stream, packed, made->weight);
      stream.wait();
    }
    absl::MutexLock lock(&mu);
    if (cache.size() >= kMaxCachedShapes) cache.clear();
    return cache.emplace(key, std::move(made)).first->second;
  }
};

OneDnnPatchConv::OneDnnPatchConv(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
OneDnnPatchConv::~OneDnnPatchConv() = default;

absl::StatusOr<std::unique_ptr<OneDnnPatchConv>> OneDnnPatchConv::Create(const at::Tensor& weight,
                                                                         const at::Tensor& bias,
                                                                         BlockPrecision precision) {
  if (weight.dim() != 4 || weight.size(2) != weight.size(3) || weight.size(2) < 1 ||
      bias.dim() != 1 || bias.size(0) != weight.size(0)) {
    return absl::InvalidArgumentError(
        "a patchify convolution needs weights [O, I, k, k] and a bias [O]");
  }
  if (precision == BlockPrecision::kBFloat16 && !CpuHasNativeBf16()) {
    return absl::FailedPreconditionError(
        absl::StrCat("a bfloat16 patchify convolution needs a CPU with native bfloat16; oneDNN "
                     "runs this one as ",
                     OneDnnIsaName()));
  }
  auto impl = std::make_unique<Impl>();
  impl->out_channels = weight.size(0);
  impl->in_channels = weight.size(1);
  impl->kernel = weight.size(2);
  impl->precision = precision;
  try {
    const int64_t o = impl->out_channels, i = impl->in_channels, k = impl->kernel;
    const at::Tensor plain = weight.to(at::kFloat).contiguous();
    impl->bias = bias.to(at::kFloat).contiguous().clone();
    // Let oneDNN choose the weights' layout (on a representative shape: the layout depends on
    // the channels, data type and instruction set), then pack them in it once.
    if (impl->bf16()) {
      const auto chosen = impl->DescribeMatmul(/*n=*/1, /*h=*/8 * k, /*w=*/8 * k,
                                               memory::desc({k * k * i, o}, kBf16, Tag::any));
      impl->weight_desc = chosen.weights_desc();
      // [O, I, kh, kw] -> [kh, kw, I, O]: a row per (kh, kw, ci), as the patches are gathered.
      const at::Tensor rows = plain.permute({2, 3, 1, 0}).contiguous();
      impl->weight = Pack(rows, memory::desc({k * k * i, o}, kF32, Tag::ab), impl->weight_desc);
      impl->bias_mem = Wrap(impl->bias, memory::desc({1, o}, kF32, Tag::ab));
    } else {
      const auto chosen = impl->Describe(/*n=*/1, /*h=*/8 * k, /*w=*/8 * k,
                                         memory::desc({o, i, k, k}, kF32, Tag::any));
      impl->weight_desc = chosen.weights_desc();
      impl->weight = Pack(plain, memory::desc({o, i, k, k}, kF32, Tag::oihw), impl->weight_desc);
      impl->bias_mem = Wrap(impl->bias, memory::desc({o}, kF32, Tag::x));
    }
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("preparing a oneDNN ", BlockPrecisionName(precision),
                                            " patchify convolution: ", e.what()));
  }
  return std::unique_ptr<OneDnnPatchConv>(new OneDnnPatchConv(std::move(impl)));
}

absl::Status OneDnnPatchConv::Prepare(int64_t n, int64_t h, int64_t w) const {
  if (h < impl_->kernel || w < impl_->kernel) return absl::OkStatus();  // Run refuses these.
  try {
    impl_->PrimitiveFor(n, h, w);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("oneDNN patchify convolution: preparing [", n, ", ",
                                            impl_->in_channels, ", ", h, ", ", w, "]: ", e.what()));
  }
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> OneDnnPatchConv::Run(const at::Tensor& x, bool nhwc) const {
  const int64_t c = impl_->in_channels, k = impl_->kernel;
  if (!x.defined() || x.dim() != 4 || x.size(nhwc ? 3 : 1) != c || x.scalar_type() != at::kFloat ||
      !x.is_contiguous() || !x.device().is_cpu()) {
    return absl::InternalError(
        absl::StrCat("oneDNN patchify convolution needs a contiguous float32 CPU tensor with ", c,
                     " channels ", nhwc ? "last" : "first"));
  }
  const int64_t n = x.size(0);
  const int64_t h = x.size(nhwc ? 1 : 2), w = x.size(nhwc ? 2 : 3);
  if (h < k || w < k) {
    return absl::InvalidArgumentError(
        absl::StrCat("an input of ", h, "x", w, " is smaller than the ", k, "x", k,
                     " patches of a ConvNeXt stem or downsampling layer"));
  }
  try {
    at::internal::lazy_init_num_threads();
    std::shared_ptr<const Impl::Made> made = impl_->PrimitiveFor(n, h, w);
    // oneDNN's fast kernels read NHWC (an NCHW source with an NHWC destination gets its reference
    // kernel): the image is permuted first.
    const at::Tensor src = nhwc ? x : x.permute({0, 2, 3, 1}).contiguous();
    const int64_t oh = h / k, ow = w / k;
    at::Tensor y = at::empty({n, oh, ow, impl_->out_channels}, x.options());
    dnnl::stream stream(CpuEngine());
    if (impl_->bf16()) {
      // The patches as rows (kh, kw, ci), rounded to bfloat16 in the same copy; sides cropped to
      // whole patches.
      at::Tensor patches = at::empty({n, oh, ow, k, k, c}, x.options().dtype(at::kBFloat16));
      patches.copy_(src.narrow(1, 0, oh * k)
                        .narrow(2, 0, ow * k)
                        .view({n, oh, k, ow, k, c})
                        .permute({0, 1, 3, 2, 4, 5}));
      memory src_mem = Wrap(patches, memory::desc({n * oh * ow, k * k * c}, kBf16, Tag::ab));
      memory rows_mem = Wrap(y, memory::desc({n * oh * ow, impl_->out_channels}, kF32, Tag::ab));
      made->compute.execute(stream, {{DNNL_ARG_SRC, src_mem},
                                     {DNNL_ARG_WEIGHTS, made->weight},
                                     {DNNL_ARG_BIAS, impl_->bias_mem},
                                     {DNNL_ARG_DST, rows_mem}});
    } else {
      memory src_mem(impl_->SrcDesc(n, h, w), CpuEngine(), const_cast<void*>(src.data_ptr()));
      memory dst_mem = Wrap(y, memory::desc({n, impl_->out_channels, oh, ow}, kF32, Tag::nhwc));
      made->compute.execute(stream, {{DNNL_ARG_SRC, src_mem},
                                     {DNNL_ARG_WEIGHTS, made->weight},
                                     {DNNL_ARG_BIAS, impl_->bias_mem},
                                     {DNNL_ARG_DST, dst_mem}});
    }
    stream.wait();
    return y;
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("oneDNN patchify convolution on [", n, ", ", c, ", ", h,
                                            ", ", w, "]: ", e.what()));
  }
}

}  // namespace convnext
