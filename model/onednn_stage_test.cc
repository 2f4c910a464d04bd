// The CPU fast path (fused oneDNN blocks) against the ATen path on the same weights: every output,
// many shapes (so that cached primitives are reused, created anew and evicted), and several
// threads at once. The ATen path itself is held to torchvision by convnext_parity_test.cc.
// bfloat16 blocks against float32 ones, on CPUs with native bfloat16 (skipped elsewhere, with a
// message), and refused where they cannot run.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "model/convnext.h"
#include "model/convnext_config.h"
#include "model/layer_norm_rows.h"

namespace convnext {
namespace {

constexpr double kTolerance = 1e-4;

ConvNeXtConfig SmallConfig(bool stage_norms = false) {
  ConvNeXtConfig config;
  config.depths = {2, 1, 3, 1};
  config.dims = {16, 24, 40, 64};
  config.num_classes = stage_norms ? 0 : 10;
  config.stage_norms = stage_norms;
  return config;
}

// Weights drawn so that every block changes its input noticeably (as the parity tests do): a
// layer scale of 1e-6, the reference initialisation, would hide a wrong block.
StateDict RandomWeights(const ConvNeXtConfig& config) {
  StateDict weights;
  for (const auto& [name, shape] : ExpectedParameters(config)) {
    weights[name] =
        name.find("norm") != std::string::npos && name.find("weight") != std::string::npos
            ? 1 + 0.1 * at::randn(shape)
            : 0.2 * at::randn(shape);
  }
  return weights;
}

std::unique_ptr<ConvNeXt> Make(const ConvNeXtConfig& config, const StateDict& weights, bool fast,
                               BlockPrecision precision = BlockPrecision::kFloat32,
                               bool own_kernels = true) {
  ModelOptions options;
  options.cpu_fast_path = fast;
  options.cpu_precision = precision;
  options.cpu_own_kernels = own_kernels;
  absl::StatusOr<std::unique_ptr<ConvNeXt>> model = ConvNeXt::Create(config, weights, options);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *std::move(model) : nullptr;
}

// The same random weights on both paths.
struct ModelPair {
  std::unique_ptr<ConvNeXt> fast, aten;
};

ModelPair MakePair(const ConvNeXtConfig& config, uint64_t seed) {
  at::manual_seed(seed);
  const StateDict weights = RandomWeights(config);
  return {Make(config, weights, /*fast=*/true), Make(config, weights, /*fast=*/false)};
}

double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  return (a - b).abs().max().item<double>();
}

// Compares every output of the two models on `input`.
void ExpectSameOutputs(const ConvNeXt& fast, const ConvNeXt& aten, const at::Tensor& input) {
  OutputRequest request;
  request.logits = fast.config().num_classes > 0;
  request.embedding = !fast.config().stage_norms;
  request.stages = true;
  absl::StatusOr<ForwardOutputs> a = fast.Forward(input, request);
  absl::StatusOr<ForwardOutputs> b = aten.Forward(input, request);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  const std::string where = ::testing::PrintToString(input.sizes());
  if (request.logits) {
    EXPECT_LE(MaxAbsDiff(a->logits, b->logits), kTolerance) << where;
  }
  if (request.embedding) {
    EXPECT_LE(MaxAbsDiff(a->embedding, b->embedding), kTolerance) << where;
  }
  ASSERT_EQ(a->stages.size(), static_cast<size_t>(kNumStages));
  ASSERT_EQ(b->stages.size(), static_cast<size_t>(kNumStages));
  for (int i = 0; i < kNumStages; ++i) {
    EXPECT_TRUE(a->stages[i].is_contiguous());
    EXPECT_LE(MaxAbsDiff(a->stages[i], b->stages[i]), kTolerance) << where << " stage " << i;
  }
}

#define SKIP_WITHOUT_FAST_PATH()                                                \
  if (!kHaveOneDnnFastPath) {                                                   \
    GTEST_SKIP() << "this build has no oneDNN fast path (CONVNEXT_ONEDNN=OFF)"; \
  }

TEST(FastPathTest, MatchesTheAtenPathOnManyShapes) {
  SKIP_WITHOUT_FAST_PATH();
  const ConvNeXtConfig config = SmallConfig();
  const ModelPair m = MakePair(config, 1);
  ASSERT_NE(m.fast, nullptr);
  ASSERT_NE(m.aten, nullptr);
  const ConvNeXt& fast = *m.fast;
  const ConvNeXt& aten = *m.aten;
  // Batch sizes 1..5, square and not, sides that are not multiples of 32 (floored by the strided
  // convolutions), and a first shape repeated after others (a cached primitive reused).
  const std::vector<std::vector<int64_t>> shapes = {
      {1, 3, 64, 64}, {2, 3, 64, 64},  {5, 3, 96, 64}, {1, 3, 65, 97},
      {3, 3, 33, 47}, {1, 3, 224, 32}, {1, 3, 64, 64}, {4, 3, 128, 128},
  };
  // Two of them prepared ahead, as the server's warm-up does.
  ASSERT_TRUE(fast.Prepare(2, 64, 64).ok());
  ASSERT_TRUE(fast.Prepare(4, 128, 128).ok());
  EXPECT_TRUE(fast.uses_fast_path());
  EXPECT_FALSE(aten.uses_fast_path());
  for (const auto& shape : shapes) ExpectSameOutputs(fast, aten, at::randn(shape));
}

// Without our own block kernels (ModelOptions::cpu_own_kernels = false: oneDNN's matrix products
// for every stage, the baseline bench/model_throughput --own_kernels=false measures), the fast
// path still matches the ATen path. (With them, on an AVX-512 CPU, the stages of 16 and 64
// channels run model/avx512_mlp.h: the test above.)
TEST(FastPathTest, WithoutOwnKernelsMatchesTheAtenPath) {
  SKIP_WITHOUT_FAST_PATH();
  const ConvNeXtConfig config = SmallConfig();
  at::manual_seed(11);
  const StateDict weights = RandomWeights(config);
  const std::unique_ptr<ConvNeXt> fast =
      Make(config, weights, /*fast=*/true, BlockPrecision::kFloat32, /*own_kernels=*/false);
  const std::unique_ptr<ConvNeXt> aten = Make(config, weights, /*fast=*/false);
  ASSERT_NE(fast, nullptr);
  ASSERT_NE(aten, nullptr);
  EXPECT_TRUE(fast->uses_fast_path());
  for (const std::vector<int64_t>& shape :
       {std::vector<int64_t>{1, 3, 64, 64}, {3, 3, 65, 97}, {2, 3, 128, 96}}) {
    ExpectSameOutputs(*fast, *aten, at::randn(shape));
  }
}

// ConvNeXt V2 blocks: GRN between the matrix products, on the fast path as on the ATen path,
// over many shapes (its norms per image: batches of several images included).
TEST(FastPathTest, V2BlocksMatchTheAtenPath) {
  SKIP_WITHOUT_FAST_PATH();
  ConvNeXtConfig config = SmallConfig();
  config.grn = true;
  const ModelPair m = MakePair(config, 5);
  ASSERT_NE(m.fast, nullptr);
  ASSERT_NE(m.aten, nullptr);
  EXPECT_TRUE(m.fast->uses_fast_path());
  for (const auto& shape : std::vector<std::vector<int64_t>>{
           {1, 3, 64, 64}, {3, 3, 96, 64}, {2, 3, 65, 97}, {1, 3, 224, 32}}) {
    ExpectSameOutputs(*m.fast, *m.aten, at::randn(shape));
  }
}

TEST(FastPathTest, EvictsCachedShapesAndStaysCorrect) {
  SKIP_WITHOUT_FAST_PATH();
  ConvNeXtConfig config = SmallConfig();
  config.depths = {1, 1, 1, 1};
  const ModelPair m = MakePair(config, 2);
  ASSERT_NE(m.fast, nullptr);
  ASSERT_NE(m.aten, nullptr);
  const ConvNeXt& fast = *m.fast;
  const ConvNeXt& aten = *m.aten;
  // More distinct shapes than the cache keeps (64), then the first ones again.
  for (int64_t side = 32; side < 32 + 70; ++side) {
    ExpectSameOutputs(fast, aten, at::randn({1, 3, side, 32}));
  }
  ExpectSameOutputs(fast, aten, at::randn({1, 3, 32, 32}));
}

TEST(FastPathTest, DetectionBackboneStageNormsMatch) {
  SKIP_WITHOUT_FAST_PATH();
  const ConvNeXtConfig config = SmallConfig(/*stage_norms=*/true);
  const ModelPair m = MakePair(config, 3);
  ASSERT_NE(m.fast, nullptr);
  ASSERT_NE(m.aten, nullptr);
  const ConvNeXt& fast = *m.fast;
  const ConvNeXt& aten = *m.aten;
  ExpectSameOutputs(fast, aten, at::randn({2, 3, 96, 128}));
}

TEST(FastPathTest, ConcurrentCallsOfDifferentShapesEachGetTheirOwnAnswer) {
  SKIP_WITHOUT_FAST_PATH();
  const ConvNeXtConfig config = SmallConfig();
  const ModelPair m = MakePair(config, 4);
  ASSERT_NE(m.fast, nullptr);
  ASSERT_NE(m.aten, nullptr);
  const ConvNeXt& fast = *m.fast;
  const ConvNeXt& aten = *m.aten;
  constexpr int kThreads = 4;
  std::vector<at::Tensor> inputs, expected(kThreads), got(kThreads);
  for (int t = 0; t < kThreads; ++t) inputs.push_back(at::randn({1 + t, 3, 64 + 32 * (t % 2), 64}));
  for (int t = 0; t < kThreads; ++t) expected[t] = aten.Forward(inputs[t], {})->logits;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 5; ++rep) {
        absl::StatusOr<ForwardOutputs> out = fast.Forward(inputs[t], {});
        if (!out.ok()) return;  // `got` stays undefined and the check below fails.
        got[t] = out->logits;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_TRUE(got[t].defined()) << "thread " << t;
    EXPECT_LE(MaxAbsDiff(got[t], expected[t]), kTolerance) << "thread " << t;
  }
}

TEST(FastPathTest, OtherDtypesUseTheAtenPath) {
  // float64 is not on the fast path: the model still loads and runs (through ATen).
  const ConvNeXtConfig config = SmallConfig();
  ModelOptions options;
  options.dtype = at::kDouble;
  absl::StatusOr<std::unique_ptr<ConvNeXt>> model =
      ConvNeXt::Create(config, RandomWeights(config), options);
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<ForwardOutputs> out = (*model)->Forward(at::randn({1, 3, 64, 64}), {});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->logits.scalar_type(), at::kDouble);
}

// The ATen path with channels-last activations and convolution weights (what CUDA models use,
// ModelOptions::channels_last) computes what the contiguous one does: V1 and V2 blocks, a
// detection backbone's stage norms, padded batches of images of different sizes.
TEST(AtenPathTest, ChannelsLastMatchesContiguousLayout) {
  for (const bool grn : {false, true}) {
    for (const bool stage_norms : {false, true}) {
      ConvNeXtConfig config = SmallConfig(stage_norms);
      config.grn = grn;
      at::manual_seed(11);
      const StateDict weights = RandomWeights(config);
      ModelOptions options;
      options.cpu_fast_path = false;
      absl::StatusOr<std::unique_ptr<ConvNeXt>> plain = ConvNeXt::Create(config, weights, options);
      options.channels_last = true;
      absl::StatusOr<std::unique_ptr<ConvNeXt>> nhwc = ConvNeXt::Create(config, weights, options);
      ASSERT_TRUE(plain.ok()) << plain.status();
      ASSERT_TRUE(nhwc.ok()) << nhwc.status();
      ASSERT_FALSE((*nhwc)->uses_fast_path());
      for (const auto& shape :
           std::vector<std::vector<int64_t>>{{1, 3, 64, 64}, {3, 3, 96, 64}, {2, 3, 65, 97}}) {
        ExpectSameOutputs(**nhwc, **plain, at::randn(shape));
      }
      // A padded batch: a 64 x 64 image beside a 96 x 128 one.
      OutputRequest request;
      request.logits = !stage_norms;
      request.stages = true;
      request.extents = {{64, 64}, {96, 128}};
      const at::Tensor batch = at::randn({2, 3, 96, 128});
      absl::StatusOr<ForwardOutputs> a = (*nhwc)->Forward(batch, request);
      absl::StatusOr<ForwardOutputs> b = (*plain)->Forward(batch, request);
      ASSERT_TRUE(a.ok()) << a.status();
      ASSERT_TRUE(b.ok()) << b.status();
      if (request.logits) {
        EXPECT_LE(MaxAbsDiff(a->logits, b->logits), kTolerance);
      }
      for (int i = 0; i < kNumStages; ++i) {
        EXPECT_LE(MaxAbsDiff(a->stages[i], b->stages[i]), kTolerance) << "stage " << i;
      }
    }
  }
}

// Cosine similarity of two tensors of the same shape, flattened.
double Cosine(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor x = a.flatten().to(at::kDouble), y = b.flatten().to(at::kDouble);
  return (x.dot(y) / (x.norm() * y.norm())).item<double>();
}

// Largest difference relative to the largest magnitude of the reference.
double RelativeError(const at::Tensor& got, const at::Tensor& ref) {
  return MaxAbsDiff(got, ref) / ref.abs().max().item<double>();
}

#define SKIP_WITHOUT_NATIVE_BF16()                                                           \
  if (!CpuHasNativeBf16()) {                                                                 \
    GTEST_SKIP() << "this CPU has no native bfloat16 (oneDNN runs it as " << OneDnnIsaName() \
                 << "): bfloat16 blocks are refused here, which "                            \
                 << "Bf16Test.RefusedWithoutNativeBf16 checks";                              \
  }

// bfloat16 keeps 8 significant bits: each rounding errs by up to 2^-9 relative. Through the
// blocks of SmallConfig (7 blocks, weights that change every block's input noticeably) the
// outputs stay within these of float32; a wrong kernel, layout or weight would be far off.
constexpr double kBf16MinCosine = 0.9995;
constexpr double kBf16MaxRelativeError = 0.02;

TEST(Bf16Test, AgreesWithFloat32OnManyShapes) {
  SKIP_WITHOUT_NATIVE_BF16();
  // The last case's channels (multiples of 32 but 40) take our own AMX MLP kernel where the CPU
  // has AMX (model/amx_mlp.h); the others' oneDNN's matrix products.
  for (const auto& [stage_norms, grn, amx_dims] :
       {std::tuple{false, false, false}, std::tuple{true, false, false},
        std::tuple{false, true, false}, std::tuple{false, false, true}}) {
    SCOPED_TRACE(grn           ? "V2 (GRN)"
                 : stage_norms ? "stage norms"
                 : amx_dims    ? "V1, C 32/40/64/96"
                               : "V1");
    ConvNeXtConfig config = SmallConfig(stage_norms);
    config.grn = grn;
    if (amx_dims) config.dims = {32, 40, 64, 96};
    at::manual_seed(11);
    const StateDict weights = RandomWeights(config);
    const std::unique_ptr<ConvNeXt> f32 = Make(config, weights, true);
    const std::unique_ptr<ConvNeXt> bf16 = Make(config, weights, true, BlockPrecision::kBFloat16);
    ASSERT_NE(f32, nullptr);
    ASSERT_NE(bf16, nullptr);
    EXPECT_EQ(bf16->block_precision(), BlockPrecision::kBFloat16);
    EXPECT_EQ(f32->block_precision(), BlockPrecision::kFloat32);
    ASSERT_TRUE(bf16->Prepare(2, 64, 64).ok());
    OutputRequest request;
    request.logits = !stage_norms;
    request.embedding = !stage_norms;
    request.stages = true;
    double largest_difference = 0;
    for (const auto& shape : std::vector<std::vector<int64_t>>{
             {1, 3, 64, 64}, {2, 3, 64, 64}, {3, 3, 33, 47}, {1, 3, 224, 32}, {4, 3, 128, 96}}) {
      const at::Tensor input = at::randn(shape);
      absl::StatusOr<ForwardOutputs> a = bf16->Forward(input, request);
      absl::StatusOr<ForwardOutputs> b = f32->Forward(input, request);
      ASSERT_TRUE(a.ok()) << a.status();
      ASSERT_TRUE(b.ok()) << b.status();
      const std::string where = ::testing::PrintToString(input.sizes());
      std::vector<std::pair<at::Tensor, at::Tensor>> pairs;
      if (request.logits) pairs.emplace_back(a->logits, b->logits);
      if (request.embedding) pairs.emplace_back(a->embedding, b->embedding);
      ASSERT_EQ(a->stages.size(), static_cast<size_t>(kNumStages));
      for (int i = 0; i < kNumStages; ++i) pairs.emplace_back(a->stages[i], b->stages[i]);
      for (const auto& [got, ref] : pairs) {
        // The documented output dtypes do not change.
        EXPECT_EQ(got.scalar_type(), at::kFloat) << where;
        EXPECT_GE(Cosine(got, ref), kBf16MinCosine) << where;
        EXPECT_LE(RelativeError(got, ref), kBf16MaxRelativeError) << where;
        largest_difference = std::max(largest_difference, MaxAbsDiff(got, ref));
      }
    }
    // Really computed in bfloat16: float32 would agree to about 1e-6.
    EXPECT_GT(largest_difference, 1e-4);
  }
}

TEST(Bf16Test, ConcurrentCallsOfDifferentShapes) {
  SKIP_WITHOUT_NATIVE_BF16();
  const ConvNeXtConfig config = SmallConfig();
  at::manual_seed(12);
  const StateDict weights = RandomWeights(config);
  const std::unique_ptr<ConvNeXt> bf16 = Make(config, weights, true, BlockPrecision::kBFloat16);
  ASSERT_NE(bf16, nullptr);
  constexpr int kThreads = 4;
  std::vector<at::Tensor> inputs, expected(kThreads), got(kThreads);
  for (int t = 0; t < kThreads; ++t) inputs.push_back(at::randn({1 + t, 3, 64 + 32 * (t % 2), 64}));
  // Each thread's answer must be the one its input gets alone (the same kernels, so exactly).
  for (int t = 0; t < kThreads; ++t) expected[t] = bf16->Forward(inputs[t], {})->logits;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 5; ++rep) {
        absl::StatusOr<ForwardOutputs> out = bf16->Forward(inputs[t], {});
        if (!out.ok()) return;
        got[t] = out->logits;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_TRUE(got[t].defined()) << "thread " << t;
    EXPECT_LE(MaxAbsDiff(got[t], expected[t]), 1e-6) << "thread " << t;
  }
}

// The stem and downsampling convolutions on their own, against ATen's conv2d: both layouts,
// sides that are not multiples of the patch (floored), a batch, and the primitive cache reused.
TEST(PatchConvTest, MatchesAtenConvolutionInBothLayouts) {
  SKIP_WITHOUT_FAST_PATH();
  at::manual_seed(3);
  for (const int64_t k : {2, 4}) {
    const at::Tensor weight = at::randn({24, 8, k, k}) * 0.2;
    const at::Tensor bias = at::randn({24});
    absl::StatusOr<std::unique_ptr<OneDnnPatchConv>> conv = OneDnnPatchConv::Create(weight, bias);
    ASSERT_TRUE(conv.ok()) << conv.status();
    ASSERT_TRUE((*conv)->Prepare(2, 16, 16).ok());
    for (const auto& [n, h, w] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
             {1, 16, 16}, {2, 16, 16}, {3, 17, 23}, {1, k, 5 * k + 1}, {2, 16, 16}}) {
      const at::Tensor nchw = at::randn({n, 8, h, w});
      const at::Tensor expected = at::conv2d(nchw, weight, bias, {k, k}).permute({0, 2, 3, 1});
      for (const bool nhwc : {false, true}) {
        const std::string where =
            absl::StrCat("k ", k, " [", n, ", 8, ", h, ", ", w, "] ", nhwc ? "NHWC" : "NCHW");
        const at::Tensor input = nhwc ? nchw.permute({0, 2, 3, 1}).contiguous() : nchw;
        absl::StatusOr<at::Tensor> got = (*conv)->Run(input, nhwc);
        ASSERT_TRUE(got.ok()) << where << ": " << got.status();
        ASSERT_EQ(got->sizes(), expected.sizes()) << where;
        EXPECT_TRUE(got->is_contiguous()) << where;
        EXPECT_LE(MaxAbsDiff(*got, expected), 1e-5) << where;
      }
    }
    // Smaller than one patch: refused, not computed.
    absl::StatusOr<at::Tensor> small = (*conv)->Run(at::randn({1, 8, k - 1, 8}), false);
    ASSERT_FALSE(small.ok());
    EXPECT_EQ(small.status().code(), absl::StatusCode::kInvalidArgument) << small.status();
  }
}

// In bfloat16 (gathered patches times the weights, both rounded to bfloat16, float32
// accumulation): against ATen's float32 conv2d within bfloat16's rounding, both layouts, sides
// floored, down to a 1x1 output (the digits model's last downsampling is [7, 64, 2, 2] -> 1x1).
TEST(PatchConvTest, Bfloat16MatchesAtenConvolutionWithinRounding) {
  SKIP_WITHOUT_FAST_PATH();
  if (!CpuHasNativeBf16()) {
    GTEST_SKIP() << "no native bfloat16 here (" << OneDnnIsaName() << ")";
  }
  at::manual_seed(4);
  for (const auto& [ci, co, k] :
       std::vector<std::tuple<int64_t, int64_t, int64_t>>{{8, 24, 2}, {64, 96, 2}, {3, 16, 4}}) {
    const at::Tensor weight = at::randn({co, ci, k, k}) * 0.2;
    const at::Tensor bias = at::randn({co});
    absl::StatusOr<std::unique_ptr<OneDnnPatchConv>> conv =
        OneDnnPatchConv::Create(weight, bias, BlockPrecision::kBFloat16);
    ASSERT_TRUE(conv.ok()) << conv.status();
    for (const auto& [n, h, w] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
             {1, 16, 16}, {3, 17, 23}, {7, k, k}, {2, k + 1, 3 * k}}) {
      const at::Tensor nchw = at::randn({n, ci, h, w});
      const at::Tensor expected = at::conv2d(nchw, weight, bias, {k, k}).permute({0, 2, 3, 1});
      for (const bool nhwc : {false, true}) {
        const std::string where =
            absl::StrCat("[", co, ", ", ci, ", ", k, ", ", k, "] on [", n, ", ", ci, ", ", h, ", ",
                         w, "] ", nhwc ? "NHWC" : "NCHW");
        const at::Tensor input = nhwc ? nchw.permute({0, 2, 3, 1}).contiguous() : nchw;
        absl::StatusOr<at::Tensor> got = (*conv)->Run(input, nhwc);
        ASSERT_TRUE(got.ok()) << where << ": " << got.status();
        ASSERT_EQ(got->sizes(), expected.sizes()) << where;
        EXPECT_TRUE(got->is_contiguous()) << where;
        EXPECT_EQ(got->scalar_type(), at::kFloat) << where;
        // Inputs and weights each rounded to 8 significant bits: relative error about 2^-8 per
        // product, over ci k k products of random sign.
        const double scale = expected.abs().max().item<double>();
        EXPECT_LE(MaxAbsDiff(*got, expected), 2e-2 * scale) << where;
        EXPECT_GT(MaxAbsDiff(*got, expected), 0) << where << ": not computed in bfloat16?";
      }
    }
  }
}

// The fast path's own LayerNorm kernel against ATen's layer_norm: channel counts with and without
// a tail of lanes, rows of different scales and offsets (the variance of an offset row is where a
// one-pass formula would lose digits), in place and into a second buffer, float32 and
// bfloat16 (which must equal ATen's float32 result rounded to bfloat16, to the last bit but for
// rare ties near a rounding boundary).
TEST(LayerNormRowsTest, MatchesAtenLayerNorm) {
  if (!LayerNormRowsAvailable(/*bf16_output=*/false)) {
    GTEST_SKIP() << "no AVX-512 here: the fast path uses oneDNN's LayerNorm";
  }
  at::manual_seed(5);
  for (const int64_t c : {96, 40, 7, 768}) {
    for (const int64_t rows : {1, 3, 257}) {
      const std::string where = absl::StrCat(rows, " rows of ", c);
      const at::Tensor scale = at::exp(at::randn({rows, 1}));
      const at::Tensor x = (at::randn({rows, c}) * scale + at::randn({rows, 1}) * 5).contiguous();
      const at::Tensor gamma = at::randn({c}), beta = at::randn({c});
      const at::Tensor expected = at::layer_norm(x, {c}, gamma, beta, 1e-6);
      at::Tensor out = at::empty_like(x);
      LayerNormRows(x.data_ptr<float>(), out.data_ptr<float>(), rows, c, gamma.data_ptr<float>(),
                    beta.data_ptr<float>(), 1e-6f);
      EXPECT_LE(MaxAbsDiff(out, expected), 1e-4) << where;
      at::Tensor in_place = x.clone();
      LayerNormRows(in_place.data_ptr<float>(), in_place.data_ptr<float>(), rows, c,
                    gamma.data_ptr<float>(), beta.data_ptr<float>(), 1e-6f);
      EXPECT_TRUE(at::equal(in_place, out)) << where;
      if (!LayerNormRowsAvailable(/*bf16_output=*/true)) continue;
      at::Tensor rounded = at::empty({rows, c}, at::kBFloat16);
      LayerNormRowsToBf16(x.data_ptr<float>(), static_cast<uint16_t*>(rounded.data_ptr()), rows, c,
                          gamma.data_ptr<float>(), beta.data_ptr<float>(), 1e-6f);
      const at::Tensor want = out.to(at::kBFloat16);
      const double mismatched = rounded.ne(want).to(at::kDouble).mean().item<double>();
      EXPECT_LE(mismatched, 0.01) << where;
      EXPECT_LE(MaxAbsDiff(rounded.to(at::kFloat), expected),
                expected.abs().max().item<double>() / 128)
          << where;
    }
  }
}

TEST(Bf16Test, RefusedOffTheFastPath) {
  const ConvNeXtConfig config = SmallConfig();
  ModelOptions options;
  options.cpu_fast_path = false;
  options.cpu_precision = BlockPrecision::kBFloat16;
  absl::StatusOr<std::unique_ptr<ConvNeXt>> model =
      ConvNeXt::Create(config, RandomWeights(config), options);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(model.status().message().find("fast path"), std::string::npos) << model.status();
}

TEST(Bf16Test, RefusedWithoutNativeBf16) {
  SKIP_WITHOUT_FAST_PATH();
  if (CpuHasNativeBf16()) {
    GTEST_SKIP() << "this CPU has native bfloat16 (" << OneDnnIsaName()
                 << "); tests/server_e2e_test.py refuses it with ONEDNN_MAX_CPU_ISA lowered";
  }
  const ConvNeXtConfig config = SmallConfig();
  ModelOptions options;
  options.cpu_precision = BlockPrecision::kBFloat16;
  absl::StatusOr<std::unique_ptr<ConvNeXt>> model =
      ConvNeXt::Create(config, RandomWeights(config), options);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(model.status().message().find(OneDnnIsaName()), std::string::npos) << model.status();
}

}  // namespace
}  // namespace convnext
