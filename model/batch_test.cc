// The batch API: each image gets what it asked for from one shared forward pass, equal to what the
// model computes for that image alone; errors are Status values, never exceptions.
#include "model/batch.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "model/convnext.h"
#include "model/convnext_config.h"
#include "model/device.h"
#include "testing/testdata.h"

namespace convnext {
namespace {

using ::testing::HasSubstr;

// A small four-stage architecture: a classifier of 10 classes, or a detection backbone.
ConvNeXtConfig SmallConfig(bool backbone = false, bool grn = false) {
  ConvNeXtConfig config;
  config.depths = {1, 1, 2, 1};
  config.dims = {16, 24, 32, 48};
  config.num_classes = backbone ? 0 : 10;
  config.stage_norms = backbone;
  config.grn = grn;
  return config;
}

StateDict RandomWeights(const ConvNeXtConfig& config) {
  StateDict weights;
  for (const auto& [name, shape] : ExpectedParameters(config)) weights[name] = at::randn(shape);
  return weights;
}

std::unique_ptr<ConvNeXt> SmallModel(bool backbone = false, bool grn = false,
                                     bool fast_path = true) {
  const ConvNeXtConfig config = SmallConfig(backbone, grn);
  StateDict weights = RandomWeights(config);
  ModelOptions options;
  options.cpu_fast_path = fast_path;
  absl::StatusOr<std::unique_ptr<ConvNeXt>> model =
      ConvNeXt::Create(config, std::move(weights), options);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *std::move(model) : nullptr;
}

at::Tensor FloatsOf(const OutputTensor& t) {
  EXPECT_EQ(t.dtype, OutputDType::kFloat32);
  at::Tensor out = at::empty(t.shape, at::kFloat);
  EXPECT_EQ(t.bytes.size(), static_cast<size_t>(out.numel()) * sizeof(float));
  std::memcpy(out.data_ptr(), t.bytes.data(), t.bytes.size());
  return out;
}

TEST(BatchTest, EachImageGetsWhatItAskedForAsIfAlone) {
  std::unique_ptr<ConvNeXt> model = SmallModel();
  ASSERT_NE(model, nullptr);
  std::vector<at::Tensor> inputs = {at::randn({1, 3, 64, 64}), at::randn({1, 3, 64, 64}),
                                    at::randn({1, 3, 64, 64})};
  std::vector<ImageRequest> requests(3);
  requests[0].top_k = 3;
  requests[1].embedding = true;
  requests[1].normalize = true;
  requests[1].stages = {4, 2};
  requests[2].top_k = 10;
  absl::StatusOr<std::vector<ImageOutputs>> out = RunBatch(*model, inputs, requests);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->size(), 3u);

  OutputRequest all;
  all.embedding = true;
  all.stages = true;
  for (int i : {0, 2}) {
    absl::StatusOr<ForwardOutputs> alone = model->Forward(inputs[i], all);
    ASSERT_TRUE(alone.ok());
    const at::Tensor probs = at::softmax(alone->logits[0], 0);
    const ImageOutputs& o = (*out)[i];
    ASSERT_EQ(o.class_indices.size(), static_cast<size_t>(requests[i].top_k));
    EXPECT_EQ(o.class_indices[0], probs.argmax().item<int64_t>());
    for (size_t k = 0; k < o.class_indices.size(); ++k) {
      EXPECT_NEAR(o.class_scores[k], probs[o.class_indices[k]].item<float>(), 1e-5);
      if (k > 0) {
        EXPECT_LE(o.class_scores[k], o.class_scores[k - 1]);
      }
    }
    EXPECT_TRUE(o.embedding.shape.empty());
    EXPECT_TRUE(o.stages.empty());
  }
  absl::StatusOr<ForwardOutputs> alone = model->Forward(inputs[1], all);
  ASSERT_TRUE(alone.ok());
  const ImageOutputs& e = (*out)[1];
  EXPECT_TRUE(e.class_indices.empty());
  const at::Tensor embedding = FloatsOf(e.embedding);
  EXPECT_EQ(embedding.sizes(), (std::vector<int64_t>{48}));
  EXPECT_NEAR(embedding.norm().item<double>(), 1.0, 1e-5);
  const at::Tensor expected = alone->embedding[0] / alone->embedding[0].norm();
  EXPECT_LT((embedding - expected).abs().max().item<double>(), 1e-4);
  ASSERT_EQ(e.stages.size(), 2u);  // In the order asked: stage 4, then stage 2.
  EXPECT_EQ(e.stages[0].shape, (std::vector<int64_t>{48, 2, 2}));
  EXPECT_EQ(e.stages[1].shape, (std::vector<int64_t>{24, 8, 8}));
  const double scale = std::max(1.0, alone->stages[1][0].abs().max().item<double>());
  EXPECT_LT((FloatsOf(e.stages[1]) - alone->stages[1][0]).abs().max().item<double>() / scale, 1e-5);
}

TEST(BatchTest, EarlyStagesOnlyStopThereWithTheSameValues) {
  for (bool backbone : {false, true}) {
    std::unique_ptr<ConvNeXt> model = SmallModel(backbone);
    ASSERT_NE(model, nullptr);
    const at::Tensor x = at::randn({2, 3, 64, 64});
    OutputRequest full;
    full.logits = false;
    full.stages = true;
    absl::StatusOr<ForwardOutputs> all = model->Forward(x, full);
    ASSERT_TRUE(all.ok()) << all.status();
    for (int last = 1; last <= kNumStages; ++last) {
      OutputRequest early = full;
      early.last_stage = last;
      absl::StatusOr<ForwardOutputs> part = model->Forward(x, early);
      ASSERT_TRUE(part.ok()) << part.status();
      ASSERT_EQ(part->stages.size(), static_cast<size_t>(last));  // Nothing deeper computed.
      for (int s = 0; s < last; ++s) {
        EXPECT_LT((part->stages[s] - all->stages[s]).abs().max().item<double>(), 1e-5)
            << "backbone " << backbone << ", last stage " << last << ", stage " << s + 1;
      }
    }
  }
  std::unique_ptr<ConvNeXt> model = SmallModel();
  OutputRequest bad;
  bad.last_stage = 2;  // With logits: they need every stage.
  EXPECT_THAT(std::string(model->Forward(at::randn({1, 3, 64, 64}), bad).status().message()),
              HasSubstr("need every stage"));
  bad.last_stage = 5;
  EXPECT_FALSE(model->Forward(at::randn({1, 3, 64, 64}), bad).ok());

  ImageRequest r;
  r.stages = {2, 1};
  EXPECT_EQ(DeepestStage(r), 2);
  r.embedding = true;
  EXPECT_EQ(DeepestStage(r), kNumStages);
  r = ImageRequest();
  r.top_k = 1;
  EXPECT_EQ(DeepestStage(r), kNumStages);
  // A batch of stage-2 requests computes two stages and answers as the full pass would.
  std::vector<ImageRequest> requests(2);
  requests[0].stages = {2};
  requests[1].stages = {1, 2};
  const std::vector<at::Tensor> inputs = {at::randn({1, 3, 64, 64}), at::randn({1, 3, 64, 64})};
  absl::StatusOr<std::vector<ImageOutputs>> out = RunBatch(*model, inputs, requests);
  ASSERT_TRUE(out.ok()) << out.status();
  OutputRequest full;
  full.logits = false;
  full.stages = true;
  absl::StatusOr<ForwardOutputs> alone = model->Forward(inputs[1], full);
  ASSERT_TRUE(alone.ok());
  // Relative to the values' scale (SmallModel's unit-variance weights make them large): a batch
  // of two and an image alone take different kernel blockings, so they differ by rounding.
  for (int s = 0; s < 2; ++s) {
    const at::Tensor expected = alone->stages[s][0];
    const double scale = std::max(1.0, expected.abs().max().item<double>());
    EXPECT_LT((FloatsOf((*out)[1].stages[s]) - expected).abs().max().item<double>() / scale, 1e-5)
        << "stage " << s + 1;
  }
}

TEST(BatchTest, Float16OutputsHoldHalfTheBytesOfTheSameValues) {
  std::unique_ptr<ConvNeXt> model = SmallModel();
  ASSERT_NE(model, nullptr);
  const std::vector<at::Tensor> inputs = {at::randn({1, 3, 64, 64})};
  std::vector<ImageRequest> requests(1);
  requests[0].embedding = true;
  requests[0].dtype = OutputDType::kFloat16;
  absl::StatusOr<std::vector<ImageOutputs>> half = RunBatch(*model, inputs, requests);
  requests[0].dtype = OutputDType::kFloat32;
  absl::StatusOr<std::vector<ImageOutputs>> full = RunBatch(*model, inputs, requests);
  ASSERT_TRUE(half.ok() && full.ok());
  const OutputTensor& h = (*half)[0].embedding;
  EXPECT_EQ(h.dtype, OutputDType::kFloat16);
  ASSERT_EQ(h.bytes.size(), 48u * 2);
  at::Tensor values = at::empty({48}, at::kHalf);
  std::memcpy(values.data_ptr(), h.bytes.data(), h.bytes.size());
  EXPECT_TRUE(at::allclose(values.to(at::kFloat), FloatsOf((*full)[0].embedding), 1e-2, 1e-2));
}

TEST(BatchTest, BadBatchesAndRequestsAreStatusesNotExceptions) {
  std::unique_ptr<ConvNeXt> model = SmallModel();
  std::unique_ptr<ConvNeXt> backbone = SmallModel(/*backbone=*/true);
  ASSERT_NE(model, nullptr);
  ASSERT_NE(backbone, nullptr);
  const at::Tensor a = at::randn({1, 3, 64, 64}), b = at::randn({1, 3, 96, 80});
  std::vector<ImageRequest> two(2);
  two[0].top_k = two[1].top_k = 1;
  absl::StatusOr<std::vector<ImageOutputs>> out = RunBatch(*model, {a, b}, two);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(out.status().message()), HasSubstr("one shape"));

  std::vector<ImageRequest> one(1);
  one[0].top_k = 11;  // The model has 10 classes.
  EXPECT_EQ(RunBatch(*model, {a}, one).status().code(), absl::StatusCode::kInvalidArgument);
  one[0].top_k = 0;
  one[0].stages = {5};
  EXPECT_EQ(RunBatch(*model, {a}, one).status().code(), absl::StatusCode::kInvalidArgument);
  one[0].stages = {};
  one[0].embedding = true;
  EXPECT_EQ(RunBatch(*backbone, {a}, one).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RunBatch(*model, {}, {}).status().code(), absl::StatusCode::kInvalidArgument);

  one[0].embedding = false;
  one[0].top_k = 1;
  out = RunBatch(*model, {a}, one, [](const at::Tensor&) { throw std::runtime_error("boom"); });
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(out.status().message()), HasSubstr("boom"));
}

// Max |a - b| relative to b's scale (SmallModel's unit-variance weights make values large).
double RelativeDiff(const at::Tensor& a, const at::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  if (a.sizes() != b.sizes()) return 1;
  return (a - b).abs().max().item<double>() / std::max(1.0, b.abs().max().item<double>());
}

// Variable-size batching: images of different sizes padded into one batch each get what they
// get alone, on the fast path and the ATen path, for V1 and V2 (GRN) blocks: classes, the
// embedding, every stage map (cropped to the image's own size) and region features. Equal up to
// rounding, as any two batch shapes are (kernels block differently).
TEST(BatchTest, ImagesOfDifferentSizesGetWhatTheyWouldGetAlone) {
  struct Case {
    const char* name;
    bool grn, fast_path;
  };
  for (const Case& c :
       {Case{"V1 fast path", false, true}, Case{"V1 ATen", false, false},
        Case{"V2 (GRN) fast path", true, true}, Case{"V2 (GRN) ATen", true, false}}) {
    SCOPED_TRACE(c.name);
    std::unique_ptr<ConvNeXt> model = SmallModel(false, c.grn, c.fast_path);
    ASSERT_NE(model, nullptr);
    std::vector<at::Tensor> inputs = {at::randn({1, 3, 64, 96}), at::randn({1, 3, 128, 32}),
                                      at::randn({1, 3, 32, 32}), at::randn({1, 3, 96, 128})};
    std::vector<ImageRequest> requests(inputs.size());
    for (ImageRequest& r : requests) {
      r.top_k = 3;
      r.embedding = true;
      r.stages = {1, 2, 3, 4};
    }
    requests[3].boxes = {{0, 0, 128, 96}, {40, 8, 100, 60}};
    requests[3].region_stages = {2, 4};
    requests[3].region_pooling = {2, 0, true};
    absl::StatusOr<std::vector<ImageOutputs>> mixed = RunBatch(*model, inputs, requests);
    ASSERT_TRUE(mixed.ok()) << mixed.status();
    for (size_t i = 0; i < inputs.size(); ++i) {
      SCOPED_TRACE(::testing::Message() << "image " << i);
      absl::StatusOr<std::vector<ImageOutputs>> alone =
          RunBatch(*model, {inputs[i]}, {requests[i]});
      ASSERT_TRUE(alone.ok()) << alone.status();
      const ImageOutputs& got = (*mixed)[i];
      const ImageOutputs& want = (*alone)[0];
      EXPECT_EQ(got.class_indices, want.class_indices);
      for (size_t k = 0; k < want.class_scores.size(); ++k) {
        EXPECT_NEAR(got.class_scores[k], want.class_scores[k], 1e-5);
      }
      EXPECT_LE(RelativeDiff(FloatsOf(got.embedding), FloatsOf(want.embedding)), 1e-5);
      ASSERT_EQ(got.stages.size(), want.stages.size());
      for (size_t s = 0; s < want.stages.size(); ++s) {
        EXPECT_EQ(got.stages[s].shape, want.stages[s].shape) << "stage " << s + 1;
        EXPECT_LE(RelativeDiff(FloatsOf(got.stages[s]), FloatsOf(want.stages[s])), 1e-5)
            << "stage " << s + 1;
      }
      ASSERT_EQ(got.regions.size(), want.regions.size());
      for (size_t s = 0; s < want.regions.size(); ++s) {
        EXPECT_LE(RelativeDiff(FloatsOf(got.regions[s]), FloatsOf(want.regions[s])), 1e-5);
      }
    }
    // Without the masking, the padding would change the answer: the largest image's batch
    // neighbours are padded, and their stage 4 maps computed on the padded input differ.
    OutputRequest what;
    what.logits = false;
    what.stages = true;
    absl::StatusOr<ForwardOutputs> unmasked =
        model->Forward(at::constant_pad_nd(inputs[2], {0, 96, 0, 64}, 0), what);
    ASSERT_TRUE(unmasked.ok());
    EXPECT_GT(RelativeDiff(unmasked->stages[3][0].slice(1, 0, 1).slice(2, 0, 1),
                           FloatsOf((*mixed)[2].stages[3])),
              1e-3);
  }
  // Sizes that are not multiples of 32 do not mix.
  std::unique_ptr<ConvNeXt> model = SmallModel();
  absl::StatusOr<std::vector<ImageOutputs>> bad = RunBatch(
      *model, {at::randn({1, 3, 64, 64}), at::randn({1, 3, 64, 80})}, std::vector<ImageRequest>(2));
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("multiples of 32"));
}

// On a GPU (CONVNEXT_TEST_DEVICE=cuda: scripts/gpu_check.sh on the GPU machine) a batch is staged
// in page-locked memory and copied on the thread's own stream, the model runs channels-last,
// softmax and top-k run on the device and outputs are converted there: each image must get what
// the same weights give on the CPU, in float32 (TF32 off) within 1e-4, for stacked and padded
// batches, from several threads at once. Skipped, with a message, without a CUDA device.
TEST(BatchTest, OnTheTestDeviceEachImageGetsWhatTheCpuGives) {
  const std::string name = testing::TestDevice();
  if (name.rfind("cuda", 0) != 0 || !at::hasCUDA()) {
    GTEST_SKIP() << "needs a CUDA device (CONVNEXT_TEST_DEVICE=" << name << ", this LibTorch "
                 << (at::hasCUDA() ? "sees" : "sees no")
                 << " GPU): runs in scripts/gpu_check.sh on the GPU machine";
  }
  const ConvNeXtConfig config = SmallConfig();
  const StateDict weights = RandomWeights(config);
  ModelOptions cpu_options;
  cpu_options.cpu_fast_path = false;
  absl::StatusOr<std::unique_ptr<ConvNeXt>> cpu = ConvNeXt::Create(config, weights, cpu_options);
  ModelOptions gpu_options = cpu_options;
  gpu_options.device = c10::Device(name);
  absl::StatusOr<std::unique_ptr<ConvNeXt>> gpu = ConvNeXt::Create(config, weights, gpu_options);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  ASSERT_TRUE(WarmUp(**gpu, 3, 64).ok());
  const std::vector<std::vector<at::Tensor>> batches = {
      {at::randn({1, 3, 64, 64}), at::randn({1, 3, 64, 64}), at::randn({1, 3, 64, 64})},
      {at::randn({1, 3, 64, 96}), at::randn({1, 3, 128, 32})}};
  auto check = [&](const std::vector<at::Tensor>& inputs) {
    std::vector<ImageRequest> requests(inputs.size());
    for (size_t i = 0; i < requests.size(); ++i) {
      requests[i].top_k = 3;
      requests[i].embedding = true;
      requests[i].normalize = i == 0;
      requests[i].stages = {2, 4};
      requests[i].dtype = i == 1 ? OutputDType::kInt8 : OutputDType::kFloat32;
    }
    absl::StatusOr<std::vector<ImageOutputs>> want = RunBatch(**cpu, inputs, requests);
    absl::StatusOr<std::vector<ImageOutputs>> got = RunBatch(**gpu, inputs, requests);
    ASSERT_TRUE(want.ok()) << want.status();
    ASSERT_TRUE(got.ok()) << got.status();
    for (size_t i = 0; i < inputs.size(); ++i) {
      const ImageOutputs& g = (*got)[i];
      const ImageOutputs& w = (*want)[i];
      EXPECT_EQ(g.class_indices, w.class_indices) << "image " << i;
      for (size_t k = 0; k < w.class_scores.size(); ++k) {
        EXPECT_NEAR(g.class_scores[k], w.class_scores[k], 1e-4) << "image " << i;
      }
      if (requests[i].dtype == OutputDType::kInt8) {
        // Quantised on the device: the scales agree; a value may round to the next step.
        ASSERT_EQ(g.embedding.scales.size(), w.embedding.scales.size());
        EXPECT_NEAR(g.embedding.scales[0], w.embedding.scales[0], 1e-4 * w.embedding.scales[0]);
        ASSERT_EQ(g.embedding.bytes.size(), w.embedding.bytes.size());
        for (size_t b = 0; b < w.embedding.bytes.size(); ++b) {
          EXPECT_LE(std::abs(g.embedding.bytes[b] - w.embedding.bytes[b]), 1) << "value " << b;
        }
        continue;
      }
      EXPECT_LE(RelativeDiff(FloatsOf(g.embedding), FloatsOf(w.embedding)), 1e-4) << i;
      ASSERT_EQ(g.stages.size(), w.stages.size());
      for (size_t s = 0; s < w.stages.size(); ++s) {
        EXPECT_EQ(g.stages[s].shape, w.stages[s].shape);
        EXPECT_LE(RelativeDiff(FloatsOf(g.stages[s]), FloatsOf(w.stages[s])), 1e-4) << i;
      }
    }
  };
  for (const auto& inputs : batches) check(inputs);
  // Several threads, each on its own stream, at once.
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) threads.emplace_back([&, t] { check(batches[t % 2]); });
  for (std::thread& t : threads) t.join();
}

// CUDA graphs (ModelOptions::cuda_graph_max_batch): WarmUp captures one graph per batch size and
// copy; batches that ask for classes and embeddings at the captured size replay them, from several
// threads at once, and get what the same weights give eagerly; other batches (stage maps, larger
// batches, another size) run eagerly. On a CUDA device (the device check) with real graphs;
// elsewhere with the CPU stand-in (SetCpuGraphsForTesting), which runs everything but the capture.
TEST(BatchTest, CudaGraphsGiveWhatEagerGives) {
  const std::string name = testing::TestDevice();
  const bool cuda = name.rfind("cuda", 0) == 0 && at::hasCUDA();
  SetCpuGraphsForTesting(!cuda);
  const ConvNeXtConfig config = SmallConfig();
  const StateDict weights = RandomWeights(config);
  ModelOptions options;
  options.device = c10::Device(cuda ? name : "cpu");
  options.cpu_fast_path = false;  // The graphs run the ATen path.
  absl::StatusOr<std::unique_ptr<ConvNeXt>> eager = ConvNeXt::Create(config, weights, options);
  options.cuda_graph_max_batch = 3;
  options.cuda_graph_copies = 2;
  absl::StatusOr<std::unique_ptr<ConvNeXt>> graphed = ConvNeXt::Create(config, weights, options);
  ASSERT_TRUE(eager.ok()) << eager.status();
  ASSERT_TRUE(graphed.ok()) << graphed.status();
  ASSERT_TRUE(WarmUp(**eager, 4, 64).ok());
  const absl::Status warm = WarmUp(**graphed, 4, 64);
  ASSERT_TRUE(warm.ok()) << warm;
  EXPECT_EQ((*graphed)->captured_graphs(), 6);  // Sizes 1..3, two copies each.
  auto check = [&](int64_t n, int64_t size, bool stages) {
    std::vector<at::Tensor> inputs;
    for (int64_t i = 0; i < n; ++i) inputs.push_back(at::randn({1, 3, size, size}));
    std::vector<ImageRequest> requests(n);
    for (ImageRequest& r : requests) {
      r.top_k = 3;
      r.embedding = true;
      if (stages) r.stages = {4};
    }
    absl::StatusOr<std::vector<ImageOutputs>> want = RunBatch(**eager, inputs, requests);
    absl::StatusOr<std::vector<ImageOutputs>> got = RunBatch(**graphed, inputs, requests);
    ASSERT_TRUE(want.ok()) << want.status();
    ASSERT_TRUE(got.ok()) << got.status();
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_EQ((*got)[i].class_indices, (*want)[i].class_indices) << n << " images, image " << i;
      for (size_t k = 0; k < (*want)[i].class_scores.size(); ++k) {
        EXPECT_NEAR((*got)[i].class_scores[k], (*want)[i].class_scores[k], 1e-5);
      }
      EXPECT_LE(RelativeDiff(FloatsOf((*got)[i].embedding), FloatsOf((*want)[i].embedding)), 1e-5);
    }
  };
  for (int64_t n = 1; n <= 4; ++n) check(n, 64, false);  // 4: larger than the graphs, eager.
  check(2, 64, true);                                    // Stage maps: eager.
  check(2, 96, false);                                   // Another size: eager.
  EXPECT_EQ((*graphed)->graph_replays(), 3);             // Batches of 1, 2 and 3 at 64.
  EXPECT_EQ((*eager)->graph_replays(), 0);
  // A graph comes back when its batch's outputs are done: one size, more batches than copies.
  for (int rep = 0; rep < 3; ++rep) check(1, 64, false);
  EXPECT_EQ((*graphed)->graph_replays(), 6);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 5; ++rep) check(1 + (t + rep) % 3, 64, false);
    });
  }
  for (std::thread& t : threads) t.join();
  // Four threads, two graphs of each size: most replay, some may have run eagerly.
  EXPECT_GT((*graphed)->graph_replays(), 6);
  SetCpuGraphsForTesting(false);
}

TEST(BatchTest, ShapeKeyAndWarmUp) {
  EXPECT_EQ(BatchShapeKey(at::zeros({1, 3, 64, 96})), BatchShapeKey(at::ones({1, 3, 64, 96})));
  EXPECT_NE(BatchShapeKey(at::zeros({1, 3, 64, 96})), BatchShapeKey(at::zeros({1, 3, 96, 64})));
  std::unique_ptr<ConvNeXt> model = SmallModel();
  std::unique_ptr<ConvNeXt> backbone = SmallModel(/*backbone=*/true);
  ASSERT_NE(model, nullptr);
  ASSERT_NE(backbone, nullptr);
  EXPECT_TRUE(WarmUp(*model, 4, 64).ok());
  EXPECT_TRUE(WarmUp(*backbone, 2, 64).ok());
}

// Regions: each image's boxes pooled from the stage maps of the shared pass, as RoiAlign pools the
// maps of that image alone; an image without boxes gets none; asking only for regions of early
// stages stops there.
TEST(BatchTest, RegionsArePooledFromEachImagesOwnStageMaps) {
  std::unique_ptr<ConvNeXt> model = SmallModel();
  ASSERT_NE(model, nullptr);
  std::vector<at::Tensor> inputs = {at::randn({1, 3, 64, 96}), at::randn({1, 3, 64, 96})};
  std::vector<ImageRequest> requests(2);
  requests[0].boxes = {{0, 0, 96, 64}, {10, 5, 40, 33.5f}};
  requests[0].region_stages = {3, 1};
  requests[0].region_pooling = {2, 0, true};
  requests[1].stages = {2};
  EXPECT_EQ(DeepestStage(requests[0]), 3);
  EXPECT_EQ(DeepestStage(requests[1]), 2);
  absl::StatusOr<std::vector<ImageOutputs>> out = RunBatch(*model, inputs, requests);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ((*out)[0].regions.size(), 2u);
  EXPECT_TRUE((*out)[1].regions.empty());
  OutputRequest what;
  what.logits = false;
  what.stages = true;
  absl::StatusOr<ForwardOutputs> alone = model->Forward(inputs[0], what);
  ASSERT_TRUE(alone.ok());
  for (int i = 0; i < 2; ++i) {
    const int stage = requests[0].region_stages[i];
    absl::StatusOr<at::Tensor> want = RoiAlign(alone->stages[stage - 1][0], requests[0].boxes,
                                               StageStride(stage), requests[0].region_pooling);
    ASSERT_TRUE(want.ok());
    const at::Tensor got = FloatsOf((*out)[0].regions[i]);
    ASSERT_EQ(got.sizes(), want->sizes());
    // Relative to the maps' scale, as above: the shared batch and the image alone take different
    // kernel blockings (on AMD EPYC stage 3's absolute difference reached 1.07e-4).
    const double scale = std::max(1.0, want->abs().max().item<double>());
    EXPECT_LE((got - *want).abs().max().item<double>() / scale, 1e-5) << "stage " << stage;
  }
  // A vector per box at output_size 1, and its bytes in the estimate.
  requests[0].region_pooling.output_size = 1;
  out = RunBatch(*model, {inputs[0]}, {requests[0]});
  ASSERT_TRUE(out.ok());
  EXPECT_EQ((*out)[0].regions[1].shape, (std::vector<int64_t>{2, 16}));
  ImageRequest none = requests[0];
  none.boxes.clear();
  EXPECT_EQ(EstimateOutputBytes(model->config(), requests[0], 64, 96) -
                EstimateOutputBytes(model->config(), none, 64, 96),
            2 * ((16 + 2 * 32 * 4) + (16 + 2 * 16 * 4)));
  // Boxes with no stage to pool from are a malformed request.
  requests[0].region_stages.clear();
  EXPECT_EQ(RunBatch(*model, {inputs[0]}, {requests[0]}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Stage maps pooled to a grid: the mean, the maximum and GeM of each adaptive bin, checked on a
// map whose bins are known: a 4 x 6 map pooled to 2 x 2 has bins of 2 x 3 pixels.
TEST(BatchTest, StagePoolingAveragesMaximaAndGeneralisedMeansOfBins) {
  std::unique_ptr<ConvNeXt> model = SmallModel();
  ASSERT_NE(model, nullptr);
  const at::Tensor input = at::randn({1, 3, 128, 192});  // Stage 2: 16 x 24; stage 4: 4 x 6.
  ImageRequest full;
  full.stages = {4, 2};
  absl::StatusOr<std::vector<ImageOutputs>> base = RunBatch(*model, {input}, {full});
  ASSERT_TRUE(base.ok());
  const at::Tensor map = FloatsOf((*base)[0].stages[0]);  // [48, 4, 6]
  ASSERT_EQ(map.sizes(), (std::vector<int64_t>{48, 4, 6}));
  const at::Tensor bins =
      map.view({48, 2, 2, 2, 3}).permute({0, 1, 3, 2, 4}).reshape({48, 2, 2, 6});
  const float p = 2.5f;
  const std::vector<std::pair<StagePooling::Kind, at::Tensor>> cases = {
      {StagePooling::Kind::kAverage, bins.mean(-1)},
      {StagePooling::Kind::kMax, std::get<0>(bins.max(-1))},
      {StagePooling::Kind::kGeM, bins.clamp_min(1e-6).pow(p).mean(-1).pow(1 / p)}};
  for (const auto& [kind, want] : cases) {
    ImageRequest r = full;
    r.stage_pooling = {kind, 2, p};
    absl::StatusOr<std::vector<ImageOutputs>> out = RunBatch(*model, {input}, {r});
    ASSERT_TRUE(out.ok()) << out.status();
    const at::Tensor got = FloatsOf((*out)[0].stages[0]);
    ASSERT_EQ(got.sizes(), want.sizes());
    EXPECT_LE((got - want).abs().max().item<float>(),
              1e-6 * std::max(1.0f, want.abs().max().item<float>()))
        << static_cast<int>(kind);
    EXPECT_EQ((*out)[0].stages[1].shape, (std::vector<int64_t>{24, 2, 2}));  // Stage 2 too.
    EXPECT_LT(EstimateOutputBytes(model->config(), r, 128, 192),
              EstimateOutputBytes(model->config(), full, 128, 192));
  }
  ImageRequest bad = full;
  bad.stage_pooling = {StagePooling::Kind::kAverage, 0, 3};
  EXPECT_EQ(RunBatch(*model, {input}, {bad}).status().code(), absl::StatusCode::kInvalidArgument);
  bad.stage_pooling = {StagePooling::Kind::kGeM, 2, -1};
  EXPECT_EQ(RunBatch(*model, {input}, {bad}).status().code(), absl::StatusCode::kInvalidArgument);
}

// A CUDA model's outputs leave the device in one copy per batch (all their bytes concatenated
// there first): run that way on the CPU, every byte and scale of every output of a mixed batch is
// what the direct copies give.
TEST(BatchTest, OneCopyPerBatchGivesTheSameBytes) {
  std::unique_ptr<ConvNeXt> model = SmallModel();
  ASSERT_NE(model, nullptr);
  const std::vector<at::Tensor> inputs = {at::randn({1, 3, 64, 64}), at::randn({1, 3, 64, 64}),
                                          at::randn({1, 3, 64, 64})};
  std::vector<ImageRequest> requests(3);
  requests[0].top_k = 2;
  requests[0].embedding = true;
  requests[0].normalize = true;
  requests[0].dtype = OutputDType::kFloat16;
  requests[1].stages = {1, 3};
  requests[1].dtype = OutputDType::kInt8;
  requests[1].embedding = true;
  requests[2].boxes = {{0, 0, 64, 64}, {3, 4, 30, 50}};
  requests[2].region_stages = {2, 4};
  requests[2].stages = {4};
  requests[2].dtype = OutputDType::kBFloat16;
  absl::StatusOr<std::vector<ImageOutputs>> direct = RunBatch(*model, inputs, requests);
  SetOneOutputCopyForTesting(true);
  absl::StatusOr<std::vector<ImageOutputs>> one_copy = RunBatch(*model, inputs, requests);
  SetOneOutputCopyForTesting(false);
  ASSERT_TRUE(direct.ok()) << direct.status();
  ASSERT_TRUE(one_copy.ok()) << one_copy.status();
  auto same = [](const OutputTensor& a, const OutputTensor& b, const std::string& what) {
    EXPECT_EQ(a.shape, b.shape) << what;
    EXPECT_EQ(a.dtype, b.dtype) << what;
    EXPECT_EQ(a.bytes, b.bytes) << what;
    EXPECT_EQ(a.scales, b.scales) << what;
    EXPECT_EQ(a.scale_axis, b.scale_axis) << what;
  };
  int tensors = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const ImageOutputs& a = (*one_copy)[i];
    const ImageOutputs& b = (*direct)[i];
    EXPECT_EQ(a.class_indices, b.class_indices);
    EXPECT_EQ(a.class_scores, b.class_scores);
    same(a.embedding, b.embedding, "embedding " + std::to_string(i));
    tensors += !b.embedding.bytes.empty();
    ASSERT_EQ(a.stages.size(), b.stages.size());
    ASSERT_EQ(a.regions.size(), b.regions.size());
    for (size_t s = 0; s < b.stages.size(); ++s) {
      same(a.stages[s], b.stages[s], "stage " + std::to_string(s));
      ++tensors;
    }
    for (size_t s = 0; s < b.regions.size(); ++s) {
      same(a.regions[s], b.regions[s], "regions " + std::to_string(s));
      ++tensors;
    }
  }
  EXPECT_EQ(tensors, 7);  // 2 embeddings, 3 stage maps, 2 region features: all compared.
  EXPECT_EQ((*direct)[1].stages[0].scales.size(), 16u);  // int8 scales, one per channel.
}

// Pixels (uint8) become the model's input as torchvision's ToTensor and Normalize make it, bit for
// bit: every value of every channel, on the CPU and, in the device check, on the GPU.
TEST(BatchTest, PixelsNormaliseExactlyAsTorchvisionDoes) {
  const PixelNormalization n{{0.485f, 0.456f, 0.406f}, {0.229f, 0.224f, 0.225f}};
  const at::Tensor values = at::arange(256, at::kInt).to(at::kByte);
  const at::Tensor pixels = values.view({1, 1, 16, 16}).expand({2, 3, 16, 16}).contiguous();
  at::Tensor want = at::empty({2, 3, 16, 16}, at::kFloat);
  for (int64_t i = 0; i < 2; ++i) {
    for (int64_t c = 0; c < 3; ++c) {
      for (int64_t v = 0; v < 256; ++v) {
        want[i][c][v / 16][v % 16] = (static_cast<float>(v) / 255.0f - n.mean[c]) / n.std[c];
      }
    }
  }
  const at::Tensor cpu = NormalizePixels(pixels, n);
  EXPECT_EQ(cpu.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(cpu, want));
  const std::string name = testing::TestDevice();
  if (name.rfind("cuda", 0) != 0 || !at::hasCUDA()) {
    GTEST_SKIP() << "the CUDA half needs a CUDA device (CONVNEXT_TEST_DEVICE=" << name
                 << "): runs in scripts/gpu_check.sh on the GPU machine";
  }
  EXPECT_TRUE(at::equal(NormalizePixels(pixels.to(c10::Device(name)), n).cpu(), want));
}

// A batch of pixels (normalised where the model runs), and a batch mixing pixels with float
// inputs (normalised on the CPU first), give what the float inputs give; pixels need their
// normalisation.
TEST(BatchTest, PixelInputsGiveWhatTheirNormalisedFloatsGive) {
  std::unique_ptr<ConvNeXt> model = SmallModel();
  ASSERT_NE(model, nullptr);
  const PixelNormalization n{{0.5f, 0.4f, 0.3f}, {0.2f, 0.25f, 0.3f}};
  std::vector<at::Tensor> pixels, floats;
  for (int i = 0; i < 3; ++i) {
    pixels.push_back(at::randint(0, 256, {1, 3, 64, 64}, at::kByte));
    floats.push_back(NormalizePixels(pixels.back(), n));
  }
  std::vector<ImageRequest> requests(3);
  for (ImageRequest& r : requests) {
    r.top_k = 3;
    r.embedding = true;
    r.stages = {2};
  }
  absl::StatusOr<std::vector<ImageOutputs>> want = RunBatch(*model, floats, requests);
  ASSERT_TRUE(want.ok()) << want.status();
  std::vector<at::Tensor> mixed = {pixels[0], floats[1], pixels[2]};
  for (const auto* inputs : {&pixels, &mixed}) {
    absl::StatusOr<std::vector<ImageOutputs>> got = RunBatch(*model, *inputs, requests, {}, &n);
    ASSERT_TRUE(got.ok()) << got.status();
    for (size_t i = 0; i < requests.size(); ++i) {
      EXPECT_EQ((*got)[i].class_indices, (*want)[i].class_indices);
      EXPECT_EQ((*got)[i].class_scores, (*want)[i].class_scores);
      EXPECT_EQ((*got)[i].embedding.bytes, (*want)[i].embedding.bytes);
      EXPECT_EQ((*got)[i].stages[0].bytes, (*want)[i].stages[0].bytes);
    }
  }
  absl::StatusOr<std::vector<ImageOutputs>> bare = RunBatch(*model, pixels, requests);
  EXPECT_EQ(bare.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bare.status().message()), HasSubstr("without a normalisation"));
  absl::StatusOr<std::vector<ImageOutputs>> gray =
      RunBatch(*model, {at::zeros({1, 1, 64, 64}, at::kByte)}, {requests[0]}, {}, &n);
  EXPECT_EQ(gray.status().code(), absl::StatusCode::kInvalidArgument);
}

// The compact dtypes: bfloat16 is float32 rounded to nearest even; int8 has one scale per channel
// (a stage map's axis 0, region features' axis 1, the embedding's whole vector), each channel's
// largest magnitude / 127, and every value within half a scale.
TEST(BatchTest, Bfloat16AndPerChannelInt8Outputs) {
  std::unique_ptr<ConvNeXt> model = SmallModel();
  ASSERT_NE(model, nullptr);
  const at::Tensor input = at::randn({1, 3, 64, 64});
  ImageRequest r;
  r.embedding = true;
  r.stages = {3};
  r.boxes = {{0, 0, 64, 64}, {3, 4, 30, 50}, {10, 10, 11, 11}};
  r.region_stages = {2};
  r.region_pooling.output_size = 2;
  absl::StatusOr<std::vector<ImageOutputs>> f32 = RunBatch(*model, {input}, {r});
  ASSERT_TRUE(f32.ok());
  const ImageOutputs& want = (*f32)[0];

  r.dtype = OutputDType::kBFloat16;
  absl::StatusOr<std::vector<ImageOutputs>> bf16 = RunBatch(*model, {input}, {r});
  ASSERT_TRUE(bf16.ok());
  auto widen = [](const OutputTensor& t) {
    EXPECT_EQ(t.dtype, OutputDType::kBFloat16);
    at::Tensor out = at::empty(t.shape, at::kBFloat16);
    EXPECT_EQ(t.bytes.size(), static_cast<size_t>(out.numel()) * 2);
    std::memcpy(out.data_ptr(), t.bytes.data(), t.bytes.size());
    return out.to(at::kFloat);
  };
  EXPECT_TRUE(at::equal(widen((*bf16)[0].stages[0]),
                        FloatsOf(want.stages[0]).to(at::kBFloat16).to(at::kFloat)));
  EXPECT_TRUE(at::equal(widen((*bf16)[0].regions[0]),
                        FloatsOf(want.regions[0]).to(at::kBFloat16).to(at::kFloat)));

  r.dtype = OutputDType::kInt8;
  absl::StatusOr<std::vector<ImageOutputs>> int8 = RunBatch(*model, {input}, {r});
  ASSERT_TRUE(int8.ok());
  const std::vector<std::tuple<const OutputTensor*, const OutputTensor*, int>> tensors = {
      {&(*int8)[0].embedding, &want.embedding, -1},
      {&(*int8)[0].stages[0], &want.stages[0], 0},
      {&(*int8)[0].regions[0], &want.regions[0], 1}};
  for (const auto& [q, f, axis] : tensors) {
    EXPECT_EQ(q->dtype, OutputDType::kInt8);
    EXPECT_EQ(q->scale_axis, axis);
    const at::Tensor ref = FloatsOf(*f);
    ASSERT_EQ(q->shape, f->shape);
    ASSERT_EQ(q->bytes.size(), static_cast<size_t>(ref.numel()));
    at::Tensor values = at::empty(q->shape, at::kChar);
    std::memcpy(values.data_ptr(), q->bytes.data(), q->bytes.size());
    const int64_t channels = axis < 0 ? 1 : ref.size(axis);
    ASSERT_EQ(q->scales.size(), static_cast<size_t>(channels));
    at::Tensor scales = at::tensor(q->scales);
    std::vector<int64_t> view(ref.dim(), 1);
    if (axis >= 0) view[axis] = channels;
    scales = axis < 0 ? scales : scales.view(view);
    const at::Tensor decoded = values.to(at::kFloat) * scales;
    EXPECT_LE(((decoded - ref).abs() - scales / 2).max().item<float>(), 1e-6) << "axis " << axis;
    EXPECT_EQ(values.abs().max().item<int>(), 127);  // The largest magnitude uses the range.
    const at::Tensor largest = axis < 0
                                   ? ref.abs().max().reshape({1})
                                   : ref.abs().movedim(axis, 0).reshape({channels, -1}).amax(1);
    EXPECT_TRUE(at::allclose(at::tensor(q->scales), largest / 127));
  }
}

}  // namespace
}  // namespace convnext
