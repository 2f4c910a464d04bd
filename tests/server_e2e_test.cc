// End-to-end with the generated C++ stubs: the product's Server object (server/server.h, the same
// wiring and shutdown as convnext-server) on a loopback port, called by C++ clients (the Python
// suite covers the convnext-server binary).
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <thread>

#include "absl/synchronization/notification.h"
#include "convnext/client.h"
#include "convnext/v1/image_model.grpc.pb.h"
#include "image/preprocess.h"
#include "model/batch.h"
#include "model/device.h"
#include "model/load_model.h"
#include "server/memory_budget.h"
#include "server/model_repository.h"
#include "server/server.h"
#include "server/server_config.h"
#include "server/thread_pool.h"
#include "testing/reference.h"

namespace convnext::server {
namespace {

// A loopback server of `config` (normalised and validated here), metrics off.
std::unique_ptr<Server> StartServer(ServerConfig config, ServerOptions options = {}) {
  NormalizeConfig(&config, 2, int64_t{8} << 30);
  config.set_intra_op_threads(2);
  if (absl::Status s = ValidateServerConfig(config); !s.ok()) {
    ADD_FAILURE() << s;
    return nullptr;
  }
  options.host = "127.0.0.1";
  options.port = 0;
  options.metrics_port = -1;
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Create(config, options);
  if (!server.ok()) {
    ADD_FAILURE() << server.status();
    return nullptr;
  }
  return *std::move(server);
}

class ServerE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ServerConfig config;
    ModelConfig* m = config.add_model();
    m->set_name("custom");
    m->set_checkpoint(testing::TestdataPath("custom.safetensors"));
    m->mutable_batching()->set_max_batch_size(8);
    m->mutable_batching()->set_max_queue_delay_us(20000);
    server_ = StartServer(config).release();
    ASSERT_NE(server_, nullptr);
    host_ = server_->model("custom");
    port_ = server_->port();
  }
  static void TearDownTestSuite() {
    host_.reset();
    delete server_;  // Drains.
    server_ = nullptr;
  }

  std::unique_ptr<v1::ImageModelService::Stub> Stub() {
    return v1::ImageModelService::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port_), grpc::InsecureChannelCredentials()));
  }

  static v1::Image TensorImage(const at::Tensor& t) { return TensorImageFor(t); }

 public:
  static v1::Image TensorImageFor(const at::Tensor& t) {
    v1::Image image;
    v1::Tensor* proto = image.mutable_tensor();
    for (int64_t s : t.sizes()) proto->add_shape(s);
    proto->set_dtype(v1::FP32);
    const at::Tensor c = t.contiguous();
    proto->set_data(c.data_ptr(), c.numel() * sizeof(float));
    return image;
  }

 protected:
  static inline Server* server_ = nullptr;
  static inline std::shared_ptr<ModelHost> host_;
  static inline int port_ = 0;
};

TEST_F(ServerE2eTest, ClassifyMatchesTorchvisionLogits) {
  const at::Tensor input = testing::ReadReference("custom.input.npy");    // [3, 3, 100, 72]
  const at::Tensor logits = testing::ReadReference("custom.logits.npy");  // [3, 10]
  v1::ClassifyRequest request;
  for (int64_t i = 0; i < input.size(0); ++i) *request.add_images() = TensorImage(input[i]);
  request.set_top_k(10);
  v1::ClassifyResponse response;
  grpc::ClientContext ctx;
  ASSERT_TRUE(Stub()->Classify(&ctx, request, &response).ok());
  ASSERT_EQ(response.results_size(), 3);
  for (int i = 0; i < 3; ++i) {
    const at::Tensor probs = at::softmax(logits[i], 0);
    for (const v1::ClassScore& c : response.results(i).classes()) {
      EXPECT_NEAR(c.score(), probs[c.index()].item<float>(), 1e-5);
    }
    EXPECT_EQ(response.results(i).classes(0).index(), probs.argmax().item<int64_t>());
  }
}

TEST_F(ServerE2eTest, FiftyConcurrentClientsFormBatchesAndGetTheirOwnAnswers) {
  const at::Tensor input = testing::ReadReference("custom.input.npy");
  const uint64_t images_before = host_->Info().stats().images();
  std::vector<v1::ClassifyResponse> responses(50);
  std::vector<grpc::Status> statuses(50);
  std::vector<std::thread> clients;
  auto request_for = [&](int i) {
    v1::ClassifyRequest r;
    *r.add_images() = TensorImage(input[i % 3] * (1.0 + 0.01 * i));
    r.set_top_k(10);
    return r;
  };
  for (int i = 0; i < 50; ++i) {
    clients.emplace_back([&, i] {
      grpc::ClientContext ctx;
      statuses[i] = Stub()->Classify(&ctx, request_for(i), &responses[i]);
    });
  }
  for (auto& t : clients) t.join();
  const v1::ModelInfo info = host_->Info();
  EXPECT_EQ(info.stats().images() - images_before, 50u);
  uint64_t largest = 0;
  for (const auto& [size, count] : info.stats().batch_sizes())
    largest = std::max<uint64_t>(largest, size);
  EXPECT_GT(largest, 1u);
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(statuses[i].ok()) << statuses[i].error_message();
    v1::ClassifyResponse alone;
    grpc::ClientContext ctx;
    ASSERT_TRUE(Stub()->Classify(&ctx, request_for(i), &alone).ok());
    for (int k = 0; k < 10; ++k) {
      EXPECT_EQ(responses[i].results(0).classes(k).index(), alone.results(0).classes(k).index());
      EXPECT_NEAR(responses[i].results(0).classes(k).score(), alone.results(0).classes(k).score(),
                  1e-5);
    }
  }
}

TEST_F(ServerE2eTest, DeadlineUnknownModelAndEmptyRequest) {
  const at::Tensor input = testing::ReadReference("custom.input.npy");
  v1::ClassifyRequest request;
  *request.add_images() = TensorImage(input[0]);
  v1::ClassifyResponse response;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() - std::chrono::seconds(1));
    EXPECT_EQ(Stub()->Classify(&ctx, request, &response).error_code(),
              grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  {
    grpc::ClientContext ctx;
    request.set_model("unknown");
    EXPECT_EQ(Stub()->Classify(&ctx, request, &response).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext ctx;
    v1::ClassifyRequest empty;
    EXPECT_EQ(Stub()->Classify(&ctx, empty, &response).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
}

// A request with more images than the model's queue can ever hold is malformed for this model,
// not a momentary overload: INVALID_ARGUMENT (which clients do not retry), not UNAVAILABLE.
TEST_F(ServerE2eTest, RequestLargerThanTheQueueIsInvalidArgumentNotRetryLater) {
  const int64_t limit = host_->Info().batching().max_queue_size();
  const at::Tensor input = testing::ReadReference("custom.input.npy");
  v1::ClassifyRequest request;
  for (int64_t i = 0; i <= limit; ++i) *request.add_images() = TensorImage(input[0]);
  v1::ClassifyResponse response;
  grpc::ClientContext ctx;
  const grpc::Status status = Stub()->Classify(&ctx, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_NE(status.error_message().find("max_queue_size"), std::string::npos)
      << status.error_message();
  // Exactly the limit is admitted.
  request.mutable_images()->RemoveLast();
  grpc::ClientContext ok_ctx;
  EXPECT_TRUE(Stub()->Classify(&ok_ctx, request, &response).ok());
}

TEST_F(ServerE2eTest, ClientLibraryBlockingAndAsyncCalls) {
  client::ClientOptions options;
  options.target = absl::StrCat("127.0.0.1:", port_);
  absl::StatusOr<std::unique_ptr<client::Client>> c = client::Client::Create(options);
  ASSERT_TRUE(c.ok()) << c.status();
  v1::ClassifyRequest request;
  *request.add_images() = TensorImage(testing::ReadReference("custom.input.npy")[1]);
  absl::StatusOr<v1::ClassifyResponse> blocking = (*c)->Classify(request);
  ASSERT_TRUE(blocking.ok()) << blocking.status();
  absl::Notification done;
  absl::StatusOr<v1::ClassifyResponse> async = absl::UnknownError("not called");
  (*c)->ClassifyAsync(request, [&](absl::StatusOr<v1::ClassifyResponse> r) {
    async = std::move(r);
    done.Notify();
  });
  done.WaitForNotification();
  ASSERT_TRUE(async.ok()) << async.status();
  EXPECT_EQ(async->results(0).classes(0).index(), blocking->results(0).classes(0).index());
  EXPECT_FLOAT_EQ(async->results(0).classes(0).score(), blocking->results(0).classes(0).score());

  absl::StatusOr<v1::ModelInfo> info = (*c)->GetModel("");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->name(), "custom");
  absl::StatusOr<v1::ClassifyResponse> missing = [&] {
    v1::ClassifyRequest r = request;
    r.set_model("missing");
    return (*c)->Classify(r);
  }();
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);  // Not retried, not hidden.

  absl::Notification embedded;
  v1::EmbedRequest embed;
  *embed.add_images() = request.images(0);
  embed.set_include_embedding(true);
  (*c)->EmbedAsync(embed, [&](absl::StatusOr<v1::EmbedResponse> r) {
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok()) {
      EXPECT_EQ(r->results(0).embedding().shape(0), 64);
    }
    embedded.Notify();
  });
  embedded.WaitForNotification();
}

// Region features through the C++ client library: an image's boxes pooled from a stage in one
// backbone pass, against torchvision.ops.roi_align on torchvision's own stage maps
// (tests/python/convnext_reference.py, save_regions).
TEST_F(ServerE2eTest, EmbedRegionsMatchTorchvisionRoiAlign) {
  client::ClientOptions options;
  options.target = absl::StrCat("127.0.0.1:", port_);
  absl::StatusOr<std::unique_ptr<client::Client>> c = client::Client::Create(options);
  ASSERT_TRUE(c.ok()) << c.status();
  const at::Tensor input = testing::ReadReference("custom.features_input.npy")[0];  // 96 x 160
  const at::Tensor boxes = testing::ReadReference("custom.region_boxes.npy");       // [5, 4]
  auto decode = [](const v1::Tensor& t) {
    std::vector<int64_t> shape(t.shape().begin(), t.shape().end());
    at::Tensor out = at::empty(shape, at::kFloat);
    EXPECT_EQ(t.data().size(), out.numel() * sizeof(float));
    if (t.data().size() == out.numel() * sizeof(float)) {
      std::memcpy(out.data_ptr(), t.data().data(), t.data().size());
    }
    return out;
  };
  for (const int stage : {2, 4}) {
    v1::EmbedRequest request;
    *request.add_images() = TensorImage(input);
    *request.add_images() = TensorImage(input);  // No boxes: no regions, and the stage map.
    v1::ImageRegions* regions = request.add_regions();
    for (int64_t r = 0; r < boxes.size(0); ++r) {
      v1::Box* b = regions->add_boxes();
      b->set_x1(boxes[r][0].item<float>());
      b->set_y1(boxes[r][1].item<float>());
      b->set_x2(boxes[r][2].item<float>());
      b->set_y2(boxes[r][3].item<float>());
    }
    request.add_regions();
    request.add_stages(stage);
    request.mutable_region_pooling()->add_stages(stage);
    if (stage == 2) {
      request.mutable_region_pooling()->set_output_size(2);
      request.mutable_region_pooling()->set_sampling_ratio(2);
      request.mutable_region_pooling()->set_aligned(true);
    }
    absl::StatusOr<v1::EmbedResponse> response = (*c)->Embed(request);
    ASSERT_TRUE(response.ok()) << response.status();
    ASSERT_EQ(response->results_size(), 2);
    ASSERT_EQ(response->results(0).regions_size(), 1);
    EXPECT_EQ(response->results(1).regions_size(), 0);
    const at::Tensor want =
        testing::ReadReference(absl::StrCat("custom.regions.stage", stage, ".npy"));
    const at::Tensor got = decode(response->results(0).regions(0));
    ASSERT_EQ(got.sizes(), want.sizes());
    EXPECT_LE((got - want).abs().max().item<float>(), 1e-4) << "stage " << stage;
    const at::Tensor map = testing::ReadReference(absl::StrCat("custom.stage", stage, ".npy"))[0];
    EXPECT_LE((decode(response->results(1).stages(0)) - map).abs().max().item<float>(), 1e-4);
    if (stage != 4) continue;
    // Instance masks through the C++ client: each masked box is its mask-weighted RoIAlign bins
    // of torchvision's stage map (model/roi_align_test.cc checks the pooling itself).
    std::vector<RegionBox> masked;
    for (int r = 0; r < regions->boxes_size(); ++r) {
      const v1::Box& b = regions->boxes(r);
      RegionBox box{b.x1(), b.y1(), b.x2(), b.y2(), /*mask_size=*/0, /*mask=*/{}};
      box.mask_size = r + 1;
      v1::RegionMask* m = regions->add_masks();
      m->set_size(static_cast<uint32_t>(box.mask_size));
      for (int i = 0; i < box.mask_size * box.mask_size; ++i) {
        box.mask.push_back(i % 3 == 0 ? 1.0f : 0.25f * static_cast<float>(i % 4));
        m->add_weights(box.mask.back());
      }
      masked.push_back(std::move(box));
    }
    absl::StatusOr<v1::EmbedResponse> with_masks = (*c)->Embed(request);
    ASSERT_TRUE(with_masks.ok()) << with_masks.status();
    absl::StatusOr<at::Tensor> expected = RoiAlign(map, masked, 32.0, {});
    ASSERT_TRUE(expected.ok()) << expected.status();
    const at::Tensor got_masked = decode(with_masks->results(0).regions(0));
    ASSERT_EQ(got_masked.sizes(), (std::vector<int64_t>{boxes.size(0), map.size(0)}));
    EXPECT_LE((got_masked - expected->flatten(1)).abs().max().item<float>(), 1e-4);
    EXPECT_GT((got_masked - got).abs().max().item<float>(), 1e-3);  // The masks were applied.
  }
}

// The compact answer encodings through the C++ client: FP16, BF16 and per-channel INT8 decoded by
// client::TensorValues agree with the FP32 answer within each encoding's rounding.
TEST_F(ServerE2eTest, CompactDtypesDecodeToTheFloat32Answer) {
  client::ClientOptions options;
  options.target = absl::StrCat("127.0.0.1:", port_);
  absl::StatusOr<std::unique_ptr<client::Client>> c = client::Client::Create(options);
  ASSERT_TRUE(c.ok()) << c.status();
  v1::EmbedRequest request;
  *request.add_images() = TensorImage(testing::ReadReference("custom.features_input.npy")[1]);
  request.set_include_embedding(true);
  request.add_stages(1);
  request.add_stages(3);
  v1::Box* box = request.add_regions()->add_boxes();
  box->set_x2(120);
  box->set_y2(80);
  request.mutable_region_pooling()->set_output_size(3);
  request.mutable_region_pooling()->add_stages(2);
  absl::StatusOr<v1::EmbedResponse> f32 = (*c)->Embed(request);
  ASSERT_TRUE(f32.ok()) << f32.status();
  const v1::Embedding& want = f32->results(0);
  const std::vector<const v1::Tensor*> want_tensors = {&want.embedding(), &want.stages(0),
                                                       &want.stages(1), &want.regions(0)};
  for (const v1::DataType dtype : {v1::FP16, v1::BF16, v1::INT8}) {
    request.set_dtype(dtype);
    absl::StatusOr<v1::EmbedResponse> r = (*c)->Embed(request);
    ASSERT_TRUE(r.ok()) << r.status();
    const v1::Embedding& got = r->results(0);
    const std::vector<const v1::Tensor*> got_tensors = {&got.embedding(), &got.stages(0),
                                                        &got.stages(1), &got.regions(0)};
    for (size_t t = 0; t < got_tensors.size(); ++t) {
      const v1::Tensor& g = *got_tensors[t];
      EXPECT_EQ(g.dtype(), dtype);
      EXPECT_EQ(g.shape().size(), want_tensors[t]->shape().size());
      absl::StatusOr<std::vector<float>> values = client::TensorValues(g);
      absl::StatusOr<std::vector<float>> exact = client::TensorValues(*want_tensors[t]);
      ASSERT_TRUE(values.ok() && exact.ok()) << values.status();
      ASSERT_EQ(values->size(), exact->size());
      const size_t element = dtype == v1::INT8 ? 1 : 2;
      EXPECT_EQ(g.data().size(), exact->size() * element);
      float largest = 0;
      for (float v : *exact) largest = std::max(largest, std::abs(v));
      for (size_t i = 0; i < exact->size(); ++i) {
        const float e = (*exact)[i];
        // FP16: 11 significant bits; BF16: 8; INT8: half the largest scale.
        const float tolerance = dtype == v1::FP16   ? std::abs(e) / 1024 + 1e-7f
                                : dtype == v1::BF16 ? std::abs(e) / 128
                                                    : largest / 254 * 1.0001f;
        ASSERT_LE(std::abs((*values)[i] - e), tolerance)
            << v1::DataType_Name(dtype) << " tensor " << t << " element " << i;
      }
      if (dtype == v1::INT8) {
        EXPECT_EQ(g.scale_axis(), t == 0 ? -1 : (t == 3 ? 1 : 0));
      }
    }
  }
  // An image tensor in an answer-only dtype is refused.
  v1::EmbedRequest bf16_input = request;
  bf16_input.mutable_images(0)->mutable_tensor()->set_dtype(v1::BF16);
  absl::StatusOr<v1::EmbedResponse> refused = (*c)->Embed(bf16_input);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), ::testing::HasSubstr("must be FP32 or FP16"));
}

// EmbedStream through the client library: the answer reassembled from pieces of 1 KiB is the
// unary answer, byte for byte; errors arrive as statuses.
TEST_F(ServerE2eTest, StreamedEmbedReassemblesTheUnaryAnswer) {
  client::ClientOptions options;
  options.target = absl::StrCat("127.0.0.1:", port_);
  absl::StatusOr<std::unique_ptr<client::Client>> c = client::Client::Create(options);
  ASSERT_TRUE(c.ok()) << c.status();
  const at::Tensor input = testing::ReadReference("custom.features_input.npy");
  v1::EmbedRequest request;
  for (int64_t i = 0; i < input.size(0); ++i) *request.add_images() = TensorImage(input[i]);
  request.set_include_embedding(true);
  for (int s = 1; s <= 4; ++s) request.add_stages(s);
  v1::ImageRegions* regions = request.add_regions();
  regions->add_boxes()->set_x2(50);
  request.add_regions();  // The second image: no boxes.
  request.set_dtype(v1::INT8);
  // Byte for byte, one image a call: the two images of one call may share a batch or not (how
  // fast each is prepared), and a batch of two rounds differently from two of one.
  for (int image = 0; image < request.images_size(); ++image) {
    v1::EmbedRequest one = request;
    one.clear_images();
    *one.add_images() = request.images(image);
    one.clear_regions();
    *one.add_regions() = request.regions(image);
    absl::StatusOr<v1::EmbedResponse> unary = (*c)->Embed(one);
    ASSERT_TRUE(unary.ok()) << unary.status();
    for (uint32_t chunk : {1024u, 0u}) {
      absl::StatusOr<v1::EmbedResponse> streamed = (*c)->EmbedStreamed(one, chunk);
      ASSERT_TRUE(streamed.ok()) << streamed.status();
      ASSERT_EQ(streamed->results_size(), 1);
      EXPECT_EQ(streamed->results(0).SerializeAsString(), unary->results(0).SerializeAsString())
          << "image " << image << ", chunk_bytes " << chunk;
      EXPECT_EQ(streamed->model(), unary->model());
      EXPECT_EQ(streamed->embedding_space(), unary->embedding_space());
    }
  }
  // Both images in one streamed call: every tensor of each, in its place and shape.
  absl::StatusOr<v1::EmbedResponse> unary = (*c)->Embed(request);
  ASSERT_TRUE(unary.ok()) << unary.status();
  absl::StatusOr<v1::EmbedResponse> streamed = (*c)->EmbedStreamed(request, 1024);
  ASSERT_TRUE(streamed.ok()) << streamed.status();
  ASSERT_EQ(streamed->results_size(), unary->results_size());
  for (int i = 0; i < unary->results_size(); ++i) {
    const v1::Embedding& s = streamed->results(i);
    const v1::Embedding& u = unary->results(i);
    EXPECT_EQ(s.embedding().shape_size(), u.embedding().shape_size());
    EXPECT_EQ(s.embedding().data().size(), u.embedding().data().size());
    ASSERT_EQ(s.stages_size(), u.stages_size());
    for (int k = 0; k < s.stages_size(); ++k) {
      EXPECT_EQ(s.stages(k).data().size(), u.stages(k).data().size()) << "image " << i;
    }
    EXPECT_EQ(s.regions_size(), u.regions_size()) << "image " << i;
  }
  EXPECT_EQ((*c)->EmbedStreamed(request, 100).status().code(), absl::StatusCode::kInvalidArgument);
  v1::EmbedRequest unknown = request;
  unknown.set_model("missing");
  EXPECT_EQ((*c)->EmbedStreamed(unknown).status().code(), absl::StatusCode::kNotFound);
  v1::EmbedRequest empty = request;
  empty.clear_stages();
  empty.clear_regions();
  empty.set_include_embedding(false);
  EXPECT_EQ((*c)->EmbedStreamed(empty).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ServerE2eTest, ClientRetriesThenReportsUnavailable) {
  client::ClientOptions options;
  options.target = "127.0.0.1:1";  // Nothing listens there.
  options.max_attempts = 3;
  options.initial_backoff = absl::Milliseconds(1);
  options.deadline = absl::Seconds(20);
  auto c = client::Client::Create(options);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)->ListModels().status().code(), absl::StatusCode::kUnavailable);
  absl::Notification done;
  (*c)->ClassifyAsync(v1::ClassifyRequest(), [&](absl::StatusOr<v1::ClassifyResponse> r) {
    EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
    done.Notify();
  });
  done.WaitForNotification();
  EXPECT_TRUE(client::IsRetryable(absl::StatusCode::kUnavailable));
  // Never-fitting requests (over the message size or the memory budget) are not retried.
  EXPECT_FALSE(client::IsRetryable(absl::StatusCode::kResourceExhausted));
  EXPECT_FALSE(client::IsRetryable(absl::StatusCode::kInvalidArgument));
  // The client is kept (reachable, never destroyed) to the end of the process: destroying the last
  // channel that made a callback call tears down gRPC 1.51's callback completion queue and its
  // threads, and a process that exits right after (this test is the last thing its process does
  // under ctest) races that teardown: AddressSanitizer saw a double-free inside
  // grpc_cq_internal_unref on gRPC's own thread, about 1 run in 10 with both cores busy. README,
  // client library, says so.
  [[maybe_unused]] static client::Client* volatile kept = nullptr;  // volatile: the store stays.
  kept = c->release();
}

// A model that throws during compute: only the calls in its batch fail (INTERNAL), the server
// keeps serving. The fault is injected for batches containing a "poison" image (all 7s).
class ModelFaultTest : public ::testing::Test {
 protected:
  void Start(int max_batch_size, bool disable_cpu_fast_path = false) {
    ServerConfig config;
    ModelConfig* m = config.add_model();
    m->set_name("custom");
    m->set_checkpoint(testing::TestdataPath("custom.safetensors"));
    m->mutable_batching()->set_max_batch_size(max_batch_size);
    // Long enough that a batch closes only when full: which calls share a batch is then known.
    m->mutable_batching()->set_max_queue_delay_us(5'000'000);
    m->set_disable_cpu_fast_path(disable_cpu_fast_path);
    ServerOptions options;
    options.before_forward_for_testing = [](const at::Tensor& batch) {
      if (batch.eq(7).flatten(1).all(1).any().item<bool>()) {
        throw std::runtime_error("injected fault");
      }
      if (batch.eq(8).flatten(1).all(1).any().item<bool>()) {  // As LibTorch's allocators throw.
        TORCH_CHECK_WITH(OutOfMemoryError, false, "injected: out of device memory");
      }
    };
    server_ = StartServer(config, options);
    ASSERT_NE(server_, nullptr);
    host_ = server_->model("custom");
    stub_ = v1::ImageModelService::NewStub(grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", server_->port()), grpc::InsecureChannelCredentials()));
  }

  grpc::Status Classify(const at::Tensor& image) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    v1::ClassifyRequest request;
    *request.add_images() = ServerE2eTest::TensorImageFor(image);
    v1::ClassifyResponse response;
    return stub_->Classify(&ctx, request, &response);
  }

  const at::Tensor poison_ = at::full({3, 64, 64}, 7.0f);
  const at::Tensor normal_ = at::randn({3, 64, 64});
  std::unique_ptr<Server> server_;
  std::shared_ptr<ModelHost> host_;
  std::unique_ptr<v1::ImageModelService::Stub> stub_;
};

TEST_F(ModelFaultTest, OnlyTheFailingBatchGetsInternalAndServingContinues) {
  Start(/*max_batch_size=*/1);
  // The poisoned call and four others at once: each is its own batch, so only the poisoned fails.
  grpc::Status poisoned;
  std::vector<grpc::Status> others(4);
  std::vector<std::thread> threads;
  threads.emplace_back([&] { poisoned = Classify(poison_); });
  for (int i = 0; i < 4; ++i) threads.emplace_back([&, i] { others[i] = Classify(normal_); });
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(poisoned.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_NE(poisoned.error_message().find("injected fault"), std::string::npos)
      << poisoned.error_message();
  for (const grpc::Status& s : others) EXPECT_TRUE(s.ok()) << s.error_message();
  // Unharmed afterwards, and the failure can repeat without consequence.
  EXPECT_EQ(Classify(poison_).error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_TRUE(Classify(normal_).ok());
}

// Running out of memory inside a forward pass (a GPU's, which admission does not bound: README,
// GPU) fails that batch's calls with RESOURCE_EXHAUSTED, not INTERNAL, and serving goes on.
TEST_F(ModelFaultTest, OutOfMemoryInTheForwardPassIsResourceExhausted) {
  Start(/*max_batch_size=*/1);
  const grpc::Status oom = Classify(at::full({3, 64, 64}, 8.0f));
  EXPECT_EQ(oom.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << oom.error_message();
  EXPECT_THAT(oom.error_message(),
              ::testing::HasSubstr("the forward pass ran out of memory on cpu"));
  EXPECT_THAT(oom.error_message(), ::testing::HasSubstr("injected: out of device memory"));
  EXPECT_TRUE(Classify(normal_).ok());
}

TEST_F(ModelFaultTest, EveryCallOfTheFailingBatchGetsInternal) {
  Start(/*max_batch_size=*/2);
  // Two calls in flight fill one batch of two: both fail with it.
  grpc::Status a, b;
  std::thread ta([&] { a = Classify(poison_); });
  std::thread tb([&] { b = Classify(normal_); });
  ta.join();
  tb.join();
  EXPECT_EQ(a.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_EQ(b.error_code(), grpc::StatusCode::INTERNAL);
  // The next batch (two clean calls) is served.
  grpc::Status c, d;
  std::thread tc([&] { c = Classify(normal_); });
  std::thread td([&] { d = Classify(normal_); });
  tc.join();
  td.join();
  EXPECT_TRUE(c.ok()) << c.error_message();
  EXPECT_TRUE(d.ok()) << d.error_message();
  EXPECT_EQ(host_->Info().stats().batch_sizes().at(2), 2u);
}

TEST_F(ModelFaultTest, HostWithoutTheFastPathGivesTheReferenceAnswers) {
  Start(/*max_batch_size=*/1, /*disable_cpu_fast_path=*/true);
  EXPECT_FALSE(host_->Info().cpu_fast_path());
  const at::Tensor input = testing::ReadReference("custom.input.npy");  // [3, 3, 100, 72]
  const at::Tensor probs = at::softmax(testing::ReadReference("custom.logits.npy"), 1);
  grpc::ClientContext ctx;
  v1::ClassifyRequest request;
  *request.add_images() = ServerE2eTest::TensorImageFor(input[0]);
  request.set_top_k(10);
  v1::ClassifyResponse response;
  ASSERT_TRUE(stub_->Classify(&ctx, request, &response).ok());
  ASSERT_EQ(response.results(0).classes_size(), 10);
  for (const v1::ClassScore& c : response.results(0).classes()) {
    EXPECT_NEAR(c.score(), probs[0][c.index()].item<float>(), 1e-4) << c.index();
  }
}

// The memory budget at admission: a request that fits the budget but not what is left of it now is
// UNAVAILABLE (retryable) and admitted once memory is released; one larger than the budget is
// RESOURCE_EXHAUSTED at once. The first request is held inside its forward pass, so what is in use
// at each step is known.
TEST(MemoryBudgetE2eTest, NotNowIsUnavailableNeverIsResourceExhausted) {
  const at::Tensor input = testing::ReadReference("custom.input.npy")[0];  // [3, 100, 72]
  ServerConfig config;
  ModelConfig* m = config.add_model();
  m->set_name("custom");
  m->set_checkpoint(testing::TestdataPath("custom.safetensors"));
  m->mutable_batching()->set_max_batch_size(1);
  // One image's estimated cost, from the same estimates admission uses.
  int64_t cost = 0;
  {
    std::unique_ptr<Server> probe = StartServer(config);
    ASSERT_NE(probe, nullptr);
    const ConvNeXtConfig& arch = probe->model("custom")->architecture();
    PreprocessConfig preprocess;
    absl::StatusOr<InputPlan> plan = PlanInput(input.size(2), input.size(1), preprocess, true);
    ASSERT_TRUE(plan.ok()) << plan.status();
    ImageRequest classify;
    classify.top_k = 5;
    cost = plan->bytes + EstimateForwardBytes(arch, plan->height, plan->width) +
           EstimateOutputBytes(arch, classify, plan->height, plan->width);
  }
  config.set_max_memory_bytes(cost * 3 / 2);  // One image fits, two never do.
  absl::Notification entered, release;
  ServerOptions options;
  options.before_forward_for_testing = [&](const at::Tensor&) {
    if (!entered.HasBeenNotified()) entered.Notify();
    release.WaitForNotification();
  };
  std::unique_ptr<Server> server = StartServer(config, options);
  ASSERT_NE(server, nullptr);
  auto stub = v1::ImageModelService::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", server->port()), grpc::InsecureChannelCredentials()));
  auto classify = [&](int images) {
    v1::ClassifyRequest request;
    for (int i = 0; i < images; ++i) *request.add_images() = ServerE2eTest::TensorImageFor(input);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    v1::ClassifyResponse response;
    return stub->Classify(&ctx, request, &response);
  };
  grpc::Status first;
  std::thread held([&] { first = classify(1); });
  ASSERT_TRUE(entered.WaitForNotificationWithTimeout(absl::Seconds(60)));
  const grpc::Status not_now = classify(1);
  EXPECT_EQ(not_now.error_code(), grpc::StatusCode::UNAVAILABLE) << not_now.error_message();
  EXPECT_NE(not_now.error_message().find("memory budget"), std::string::npos)
      << not_now.error_message();
  const grpc::Status never = classify(2);
  EXPECT_EQ(never.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << never.error_message();
  EXPECT_NE(never.error_message().find("max_memory_bytes"), std::string::npos)
      << never.error_message();
  release.Notify();
  held.join();
  EXPECT_TRUE(first.ok()) << first.error_message();
  const grpc::Status later = classify(1);  // The first call's memory came back.
  EXPECT_TRUE(later.ok()) << later.error_message();
}

// Variable-size batching (batching.max_batch_pixels) through the C++ client: concurrent Embed
// calls of different sizes in one resolution bucket share batches of at most the pixel budget,
// and each gets what the model computes for its image alone (in-process, the same checkpoint).
TEST(VariableBatchingE2eTest, MixedSizesShareBatchesAndGetTheirOwnAnswers) {
  ServerConfig config;
  ModelConfig* m = config.add_model();
  m->set_name("custom");
  m->set_checkpoint(testing::TestdataPath("custom.safetensors"));
  m->mutable_batching()->set_max_batch_size(8);
  // Long enough that the 320 bucket's batches close because they are full, not on time.
  m->mutable_batching()->set_max_queue_delay_us(2'000'000);
  m->mutable_batching()->set_max_batch_pixels(3 * 320 * 320);  // Bucket 320x320: 3 a batch.
  std::unique_ptr<Server> server = StartServer(config);
  ASSERT_NE(server, nullptr);
  LoadOptions load;
  load.path = testing::TestdataPath("custom.safetensors");
  absl::StatusOr<LoadedModel> reference = LoadModel(load);
  ASSERT_TRUE(reference.ok()) << reference.status();

  // Sides 288 and 320 share the 320 bucket (six calls, no size three times: a batch of three
  // mixes sizes); 64 x 64 has a bucket of its own.
  const std::vector<std::pair<int64_t, int64_t>> sizes = {
      {288, 320}, {320, 288}, {320, 320}, {288, 288}, {64, 64}, {320, 288}, {288, 320}, {64, 64}};
  at::manual_seed(11);
  std::vector<at::Tensor> inputs;
  for (const auto& [h, w] : sizes) inputs.push_back(at::randn({3, h, w}));
  auto request_for = [&](size_t i) {
    v1::EmbedRequest r;
    *r.add_images() = ServerE2eTest::TensorImageFor(inputs[i]);
    r.set_include_embedding(true);
    r.add_stages(1);
    r.add_stages(4);
    return r;
  };
  std::vector<absl::StatusOr<v1::EmbedResponse>> responses(sizes.size(),
                                                           absl::UnknownError("not run"));
  std::vector<std::thread> clients;
  for (size_t i = 0; i < sizes.size(); ++i) {
    clients.emplace_back([&, i] {
      client::ClientOptions options;
      options.target = absl::StrCat("127.0.0.1:", server->port());
      absl::StatusOr<std::unique_ptr<client::Client>> c = client::Client::Create(options);
      responses[i] = c.ok() ? (*c)->Embed(request_for(i)) : c.status();
    });
  }
  for (std::thread& t : clients) t.join();
  const v1::ModelInfo info = server->model("custom")->Info();
  uint64_t largest = 0;
  for (const auto& [size, count] : info.stats().batch_sizes()) {
    largest = std::max<uint64_t>(largest, size);
  }
  EXPECT_EQ(largest, 3u);  // Different sizes shared a batch, within the pixel budget.
  for (size_t i = 0; i < sizes.size(); ++i) {
    ASSERT_TRUE(responses[i].ok()) << responses[i].status();
    OutputRequest what;
    what.logits = false;
    what.embedding = true;
    what.stages = true;
    absl::StatusOr<ForwardOutputs> alone = reference->model->Forward(inputs[i].unsqueeze(0), what);
    ASSERT_TRUE(alone.ok()) << alone.status();
    const v1::Embedding& e = responses[i]->results(0);
    auto values = [](const v1::Tensor& t) {
      absl::StatusOr<std::vector<float>> v = client::TensorValues(t);
      EXPECT_TRUE(v.ok()) << v.status();
      return v.ok() ? at::tensor(*v) : at::zeros({0});
    };
    auto close = [](const at::Tensor& got, const at::Tensor& want) {
      if (got.numel() != want.numel()) return false;
      const double scale = std::max(1.0, want.abs().max().item<double>());
      return (got - want.flatten()).abs().max().item<double>() <= 1e-5 * scale;
    };
    EXPECT_TRUE(close(values(e.embedding()), alone->embedding[0])) << "image " << i;
    ASSERT_EQ(e.stages_size(), 2);
    EXPECT_EQ(e.stages(0).shape(1), sizes[i].first / 4);
    EXPECT_EQ(e.stages(0).shape(2), sizes[i].second / 4);
    EXPECT_TRUE(close(values(e.stages(0)), alone->stages[0][0])) << "image " << i;
    EXPECT_TRUE(close(values(e.stages(1)), alone->stages[3][0])) << "image " << i;
  }
}

// One trunk, several heads (ModelConfig.head) through the C++ client: Classify calls to the
// model and to two heads, made at once, share one forward pass of the trunk, and each gets what
// its own checkpoint's model computes alone (in-process); the heads are listed and described
// with their trunk, carry their own labels and statistics, and unload only with their trunk.
TEST(SharedTrunkE2eTest, HeadsShareTrunkPassesAndAnswerAsTheirOwnModels) {
  at::manual_seed(5);
  const std::string birds = testing::WriteHeadCheckpoint("birds.safetensors", 7);
  const std::string cars = testing::WriteHeadCheckpoint("cars.safetensors", 5);
  const std::string cars_labels = ::testing::TempDir() + "/cars.txt";
  {
    std::ofstream out(cars_labels);
    for (const char* l : {"sedan", "coupe", "van", "truck", "bus"}) out << l << "\n";
  }
  ServerConfig config;
  ModelConfig* m = config.add_model();
  m->set_name("custom");
  m->set_checkpoint(testing::TestdataPath("custom.safetensors"));
  m->mutable_batching()->set_max_batch_size(6);
  // Long enough that the batch closes because it is full, not on time.
  m->mutable_batching()->set_max_queue_delay_us(5'000'000);
  HeadConfig* h = m->add_head();
  h->set_name("birds");
  h->set_checkpoint(birds);
  h = m->add_head();
  h->set_name("cars");
  h->set_checkpoint(cars);
  h->set_labels_file(cars_labels);
  std::unique_ptr<Server> server = StartServer(config);
  ASSERT_NE(server, nullptr);

  const std::vector<std::string> served = {"custom", "birds", "cars", "custom", "birds", "cars"};
  std::map<std::string, std::unique_ptr<ConvNeXt>> own;  // Each checkpoint's model, alone.
  for (const auto& [name, path] : std::vector<std::pair<std::string, std::string>>{
           {"custom", testing::TestdataPath("custom.safetensors")},
           {"birds", birds},
           {"cars", cars}}) {
    LoadOptions load;
    load.path = path;
    absl::StatusOr<LoadedModel> loaded = LoadModel(load);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    own[name] = std::move(loaded->model);
  }
  at::manual_seed(6);
  std::vector<at::Tensor> inputs;
  for (size_t i = 0; i < served.size(); ++i) inputs.push_back(at::randn({3, 64, 64}));
  std::vector<absl::StatusOr<v1::ClassifyResponse>> responses(served.size(),
                                                              absl::UnknownError("not run"));
  std::vector<std::thread> clients;
  for (size_t i = 0; i < served.size(); ++i) {
    clients.emplace_back([&, i] {
      client::ClientOptions options;
      options.target = absl::StrCat("127.0.0.1:", server->port());
      absl::StatusOr<std::unique_ptr<client::Client>> c = client::Client::Create(options);
      v1::ClassifyRequest r;
      r.set_model(served[i]);
      *r.add_images() = ServerE2eTest::TensorImageFor(inputs[i]);
      r.set_top_k(5);
      responses[i] = c.ok() ? (*c)->Classify(r) : c.status();
    });
  }
  for (std::thread& t : clients) t.join();
  // One forward pass of six images: the model's and both heads' calls shared the trunk.
  const v1::ModelInfo trunk_info = server->model("custom")->Info();
  EXPECT_EQ(trunk_info.stats().batches(), 1u);
  EXPECT_EQ(trunk_info.stats().batch_sizes().at(6), 1u);
  for (size_t i = 0; i < served.size(); ++i) {
    SCOPED_TRACE(served[i]);
    ASSERT_TRUE(responses[i].ok()) << responses[i].status();
    ImageRequest what;
    what.top_k = 5;
    absl::StatusOr<std::vector<ImageOutputs>> alone =
        RunBatch(*own[served[i]], {inputs[i].unsqueeze(0)}, {what});
    ASSERT_TRUE(alone.ok()) << alone.status();
    const v1::Classification& got = responses[i]->results(0);
    ASSERT_EQ(got.classes_size(), 5);
    for (int k = 0; k < 5; ++k) {
      EXPECT_EQ(got.classes(k).index(), (*alone)[0].class_indices[k]);
      EXPECT_NEAR(got.classes(k).score(), (*alone)[0].class_scores[k], 1e-5);
      if (served[i] == "cars") {
        EXPECT_EQ(got.classes(k).label(),
                  std::vector<std::string>(
                      {"sedan", "coupe", "van", "truck", "bus"})[got.classes(k).index()]);
      }
    }
    EXPECT_EQ(responses[i]->model(), served[i]);
  }

  client::ClientOptions options;
  options.target = absl::StrCat("127.0.0.1:", server->port());
  absl::StatusOr<std::unique_ptr<client::Client>> c = client::Client::Create(options);
  ASSERT_TRUE(c.ok()) << c.status();
  // A head's own class count bounds top_k.
  v1::ClassifyRequest too_many;
  too_many.set_model("cars");
  *too_many.add_images() = ServerE2eTest::TensorImageFor(inputs[0]);
  too_many.set_top_k(6);
  absl::StatusOr<v1::ClassifyResponse> refused = (*c)->Classify(too_many);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);

  absl::StatusOr<v1::ListModelsResponse> list = (*c)->ListModels();
  ASSERT_TRUE(list.ok()) << list.status();
  std::map<std::string, v1::ModelInfo> listed;
  for (const v1::ModelInfo& info : list->models()) listed[info.name()] = info;
  ASSERT_EQ(listed.size(), 3u);
  EXPECT_THAT(listed["custom"].heads(), ::testing::ElementsAre("birds", "cars"));
  EXPECT_EQ(listed["birds"].trunk_model(), "custom");
  EXPECT_EQ(listed["birds"].num_classes(), 7);
  EXPECT_EQ(listed["birds"].state(), v1::READY);
  EXPECT_TRUE(listed["birds"].ready());
  EXPECT_NE(listed["birds"].embedding_space(), listed["custom"].embedding_space());
  absl::StatusOr<v1::ModelInfo> cars_info = (*c)->GetModel("cars");
  ASSERT_TRUE(cars_info.ok()) << cars_info.status();
  EXPECT_EQ(cars_info->num_classes(), 5);
  EXPECT_TRUE(cars_info->has_labels());
  EXPECT_EQ(cars_info->stats().requests(), 2u);  // The refused call was never admitted.
  EXPECT_EQ(cars_info->stats().images(), 2u);
  EXPECT_EQ(cars_info->checkpoint_path(), cars);

  // Heads change only with their trunk.
  ModelRepository& repository = *server->repository();
  absl::StatusOr<std::vector<std::string>> unload = repository.Unload("birds", "");
  ASSERT_FALSE(unload.ok());
  EXPECT_EQ(unload.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(unload.status().message(), ::testing::HasSubstr("head of model 'custom'"));
  auto load = [&](const ModelConfig& config) {
    absl::Notification loaded;
    absl::Status status;
    repository.Load(config, /*make_default=*/false,
                    [&](absl::StatusOr<ModelRepository::LoadResult> r) {
                      status = r.status();
                      loaded.Notify();
                    });
    loaded.WaitForNotification();
    return status;
  };
  // A model may not take a head's name.
  ModelConfig named_like_a_head = server->model("custom")->config();
  named_like_a_head.set_name("birds");
  named_like_a_head.clear_head();
  absl::Status clash = load(named_like_a_head);
  EXPECT_EQ(clash.code(), absl::StatusCode::kInvalidArgument) << clash;
  EXPECT_THAT(clash.message(), ::testing::HasSubstr("head of model 'custom'"));
  // Version 2 without heads becomes the model's default (the latest): the heads keep serving
  // from version 1, the latest version that declares them, and are not found in version 2.
  ModelConfig v2 = server->model("custom")->config();
  v2.set_version("2");
  v2.clear_head();
  ASSERT_TRUE(load(v2).ok());
  EXPECT_EQ(server->model("custom")->version(), "2");
  absl::StatusOr<std::shared_ptr<ModelHost>> head = repository.Find("birds", "");
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ((*head)->version(), "1");
  EXPECT_EQ((*head)->trunk()->version(), "1");
  EXPECT_EQ(repository.Find("birds", "2").status().code(), absl::StatusCode::kNotFound);
  absl::StatusOr<v1::ModelInfo> described = repository.Describe("birds", "");
  ASSERT_TRUE(described.ok()) << described.status();
  EXPECT_TRUE(described->default_version());
  EXPECT_EQ(described->version(), "1");
}

// A head whose checkpoint holds another trunk fails the model's load, naming the head and the
// tensor; head names are unique among every model and head.
TEST(SharedTrunkE2eTest, AHeadOfAnotherTrunkAndClashingNamesAreRefused) {
  ServerConfig config;
  ModelConfig* m = config.add_model();
  m->set_name("custom");
  m->set_checkpoint(testing::TestdataPath("custom.safetensors"));
  HeadConfig* h = m->add_head();
  h->set_name("other");
  h->set_checkpoint(testing::TestdataPath("tiny.safetensors"));
  NormalizeConfig(&config, 2, int64_t{8} << 30);
  ASSERT_TRUE(ValidateServerConfig(config).ok());
  ModelHostOptions options;
  options.config = config.model(0);
  options.max_image_pixels = config.max_image_pixels();
  ThreadPool pool(1);
  options.preprocess_pool = &pool;
  absl::StatusOr<std::unique_ptr<ModelHost>> host = ModelHost::Create(options);
  ASSERT_FALSE(host.ok());
  EXPECT_EQ(host.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(host.status().message(), ::testing::HasSubstr("head 'other'"));
  EXPECT_THAT(host.status().message(), ::testing::HasSubstr("tiny.safetensors"));

  h->set_name("custom");
  EXPECT_THAT(ValidateServerConfig(config).message(), ::testing::HasSubstr("used twice"));
  h->set_name("second");
  ModelConfig* second = config.add_model();
  *second = config.model(0);
  second->clear_head();
  second->set_name("second");
  EXPECT_THAT(ValidateServerConfig(config).message(),
              ::testing::HasSubstr("also the name of a model"));
  second->set_name("third");
  second->add_head()->CopyFrom(config.model(0).head(0));
  EXPECT_THAT(ValidateServerConfig(config).message(), ::testing::HasSubstr("also a head of model"));
}

// The test model ("custom") on two replicas, both on the CPU (an entry listed twice is two copies
// of the weights).
ModelConfig* AddTwoCpuReplicas(ServerConfig* config) {
  ModelConfig* m = config->add_model();
  m->set_name("custom");
  m->set_checkpoint(testing::TestdataPath("custom.safetensors"));
  m->add_devices("cpu");
  m->add_devices("cpu");
  return m;
}

// One model on several devices (ModelConfig.devices), here two replicas on the CPU (an entry listed
// twice is two copies of the weights): the batches of one queue go to the least busy replica, a
// head computes on the replica its batch took, and the answers are the model's own. Each phase's
// two calls are held inside their forward passes until both are there: two batches computing at
// once, so each phase has used both replicas.
TEST(ReplicasE2eTest, BatchesGoToTheLeastBusyReplicaWithTheirHeads) {
  at::manual_seed(7);
  const std::string birds = testing::WriteHeadCheckpoint("replica_birds.safetensors", 7);
  ServerConfig config;
  ModelConfig* m = AddTwoCpuReplicas(&config);
  m->mutable_batching()->set_max_batch_size(1);
  HeadConfig* h = m->add_head();
  h->set_name("birds");
  h->set_checkpoint(birds);
  absl::Mutex mu;
  int entered = 0;
  bool paired = true;
  ServerOptions options;
  options.before_forward_for_testing = [&](const at::Tensor&) {
    absl::MutexLock lock(&mu);
    // Calls 1-2 wait for each other, then 3-4.
    std::pair<int*, int> pair_done(&entered, (++entered + 1) / 2 * 2);
    if (!mu.AwaitWithTimeout(
            absl::Condition(
                +[](std::pair<int*, int>* p) { return *p->first >= p->second; }, &pair_done),
            absl::Seconds(60))) {
      paired = false;
    }
  };
  std::unique_ptr<Server> server = StartServer(config, options);
  ASSERT_NE(server, nullptr);
  const v1::ModelInfo loaded = server->model("custom")->Info();
  EXPECT_THAT(loaded.devices(), ::testing::ElementsAre("cpu", "cpu"));
  EXPECT_EQ(loaded.device(), "cpu");

  std::map<std::string, std::unique_ptr<ConvNeXt>> own;
  for (const auto& [name, path] : std::vector<std::pair<std::string, std::string>>{
           {"custom", testing::TestdataPath("custom.safetensors")}, {"birds", birds}}) {
    LoadOptions load;
    load.path = path;
    absl::StatusOr<LoadedModel> model = LoadModel(load);
    ASSERT_TRUE(model.ok()) << model.status();
    own[name] = std::move(model->model);
  }
  client::ClientOptions client_options;
  client_options.target = absl::StrCat("127.0.0.1:", server->port());
  for (const char* served : {"birds", "custom"}) {
    SCOPED_TRACE(served);
    const std::vector<at::Tensor> inputs = {at::randn({3, 64, 64}), at::randn({3, 64, 64})};
    std::vector<absl::StatusOr<v1::ClassifyResponse>> responses(2, absl::UnknownError("not run"));
    std::vector<std::thread> clients;
    for (int i = 0; i < 2; ++i) {
      clients.emplace_back([&, i] {
        absl::StatusOr<std::unique_ptr<client::Client>> c = client::Client::Create(client_options);
        v1::ClassifyRequest r;
        r.set_model(served);
        *r.add_images() = ServerE2eTest::TensorImageFor(inputs[i]);
        r.set_top_k(3);
        responses[i] = c.ok() ? (*c)->Classify(r) : c.status();
      });
    }
    for (std::thread& t : clients) t.join();
    for (int i = 0; i < 2; ++i) {
      ASSERT_TRUE(responses[i].ok()) << responses[i].status();
      ImageRequest what;
      what.top_k = 3;
      absl::StatusOr<std::vector<ImageOutputs>> alone =
          RunBatch(*own[served], {inputs[i].unsqueeze(0)}, {what});
      ASSERT_TRUE(alone.ok()) << alone.status();
      ASSERT_EQ(responses[i]->results(0).classes_size(), 3);
      for (int k = 0; k < 3; ++k) {
        EXPECT_EQ(responses[i]->results(0).classes(k).index(), (*alone)[0].class_indices[k]);
        EXPECT_NEAR(responses[i]->results(0).classes(k).score(), (*alone)[0].class_scores[k], 1e-5);
      }
    }
    // Both replicas computed this phase's batches: one each.
    const v1::ModelStats stats = server->model("custom")->Info().stats();
    ASSERT_EQ(stats.replicas_size(), 2);
    for (const v1::ReplicaStats& replica : stats.replicas()) {
      EXPECT_EQ(replica.device(), "cpu");
      EXPECT_EQ(replica.batches(), served == std::string("birds") ? 1u : 2u);
      EXPECT_EQ(replica.images(), replica.batches());
      EXPECT_EQ(replica.graph_replays(), 0u);
    }
  }
  absl::MutexLock lock(&mu);
  EXPECT_TRUE(paired) << "two batches never computed at once";
}
// CUDA graph replays are counted per replica, as GetModel's stats and the metrics show them. Here
// with the model layer's CPU stand-in for graphs (the work run again: model/device.h), which the
// server takes when the config is not validated (validation refuses graphs off CUDA): batches of
// the captured shapes that want classes replay, others run eagerly.
TEST(ReplicasE2eTest, GraphReplaysAreCountedPerReplica) {
  SetCpuGraphsForTesting(true);
  ServerConfig config;
  ModelConfig* m = AddTwoCpuReplicas(&config);
  m->mutable_preprocessing()->set_size(64);
  m->mutable_batching()->set_max_batch_size(2);
  m->set_cuda_graph_max_batch(2);
  NormalizeConfig(&config, 2, int64_t{8} << 30);
  EXPECT_THAT(ValidateServerConfig(config).message(),
              ::testing::HasSubstr("CUDA graphs run on a CUDA device only"));
  ServerOptions options;
  options.host = "127.0.0.1";
  options.port = 0;
  options.metrics_port = -1;
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Create(config, options);
  SetCpuGraphsForTesting(false);
  ASSERT_TRUE(server.ok()) << server.status();
  client::ClientOptions client_options;
  client_options.target = absl::StrCat("127.0.0.1:", (*server)->port());
  absl::StatusOr<std::unique_ptr<client::Client>> c = client::Client::Create(client_options);
  ASSERT_TRUE(c.ok()) << c.status();
  // One call at a time: each batch takes the first replica (both idle, ties to the first).
  for (int i = 0; i < 3; ++i) {
    v1::ClassifyRequest r;
    *r.add_images() = ServerE2eTest::TensorImageFor(at::randn({3, 64, 64}));
    ASSERT_TRUE((*c)->Classify(r).ok());
  }
  v1::EmbedRequest stages;  // Stage maps run eagerly.
  *stages.add_images() = ServerE2eTest::TensorImageFor(at::randn({3, 64, 64}));
  stages.add_stages(2);
  ASSERT_TRUE((*c)->Embed(stages).ok());
  v1::ClassifyRequest other_size;  // Not the captured size: eager.
  *other_size.add_images() = ServerE2eTest::TensorImageFor(at::randn({3, 96, 96}));
  ASSERT_TRUE((*c)->Classify(other_size).ok());
  const v1::ModelStats stats = (*server)->model("custom")->Info().stats();
  ASSERT_EQ(stats.replicas_size(), 2);
  EXPECT_EQ(stats.replicas(0).batches(), 5u);
  EXPECT_EQ(stats.replicas(0).graph_replays(), 3u);
  EXPECT_EQ(stats.replicas(1).batches(), 0u);
  EXPECT_EQ(stats.replicas(1).graph_replays(), 0u);
}

// The repository on its own: lookup by version, label and "name:version"; a version released
// while a caller still holds it keeps answering that caller, shows as DRAINING, and is freed
// once the caller lets go; loads and unloads from several threads at once (run under TSan).
TEST(ModelRepositoryTest, VersionsLabelsDrainingAndConcurrentChanges) {
  ServerConfig config;
  for (const char* version : {"1", "2"}) {
    ModelConfig* m = config.add_model();
    m->set_name("custom");
    m->set_version(version);
    m->set_checkpoint(testing::TestdataPath("custom.safetensors"));
  }
  config.mutable_model(1)->add_version_labels("canary");
  NormalizeConfig(&config, 2, int64_t{8} << 30);
  ASSERT_TRUE(ValidateServerConfig(config).ok());
  ThreadPool pool(2);
  MemoryBudget memory(int64_t{4} << 30);
  ModelRepositoryOptions options;
  options.host.max_image_pixels = config.max_image_pixels();
  options.host.max_response_bytes = config.max_message_bytes();
  options.host.process_memory = &memory;
  options.host.preprocess_pool = &pool;
  ModelRepository repository(options);
  ASSERT_TRUE(repository.LoadInitial(config).ok());

  auto version_of = [&](absl::string_view name, absl::string_view version) {
    absl::StatusOr<std::shared_ptr<ModelHost>> host = repository.Find(name, version);
    return host.ok() ? (*host)->version() : std::string(host.status().message());
  };
  EXPECT_EQ(version_of("", ""), "2");  // The latest.
  EXPECT_EQ(version_of("custom", "canary"), "2");
  EXPECT_EQ(version_of("custom:1", ""), "1");
  EXPECT_THAT(version_of("custom", "3"), ::testing::HasSubstr("no version or version label '3'"));
  ASSERT_TRUE(repository.SetDefaultVersion("custom", "1").ok());
  EXPECT_EQ(version_of("", ""), "1");

  // Version 1 unloaded while held: still usable by its holder, DRAINING, then freed.
  std::shared_ptr<ModelHost> held = *repository.Find("custom", "1");
  ASSERT_TRUE(repository.Unload("custom", "1").ok());
  EXPECT_THAT(version_of("custom", "1"), ::testing::HasSubstr("no version"));
  EXPECT_EQ(version_of("", ""), "2");  // The pinned default is gone: the latest serves.
  EXPECT_TRUE(held->ready());  // Its holder may still be admitted (a call found it before)...
  auto draining = [&] {
    int n = 0;
    for (const v1::ModelInfo& info : repository.List()) n += info.state() == v1::DRAINING;
    return n;
  };
  EXPECT_EQ(draining(), 0);  // ...but is not retired while held.
  held.reset();              // Retired now: the reaper frees it.
  repository.WaitUntilIdle(absl::Now() + absl::Seconds(30));

  // Concurrent reloads of version 2, lookups and a load of version 3.
  std::vector<std::thread> threads;
  std::atomic<int> loaded{0}, found{0};
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&] {
      absl::Notification done;
      repository.Load(config.model(1), false, [&](absl::StatusOr<ModelRepository::LoadResult> r) {
        EXPECT_TRUE(r.ok()) << r.status();
        if (r.ok()) ++loaded;
        done.Notify();
      });
      done.WaitForNotification();
    });
  }
  threads.emplace_back([&] {
    for (int i = 0; i < 200; ++i) found += repository.Find("custom", "canary").ok();
  });
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(loaded.load(), 2);
  EXPECT_EQ(found.load(), 200);  // Never missing during a reload.
  repository.Shutdown();
}

}  // namespace
}  // namespace convnext::server
