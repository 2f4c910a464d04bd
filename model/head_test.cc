// Heads sharing a trunk: a head loaded from another checkpoint of the same trunk gives, through one
// shared forward pass, what that checkpoint's own model gives; a checkpoint of another trunk is
// refused, naming the tensor that differs.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "model/batch.h"
#include "model/load_model.h"
#include "testing/reference.h"

namespace convnext {
namespace {

using ::testing::HasSubstr;

at::Tensor FloatsOf(const OutputTensor& t) {
  at::Tensor out = at::empty(t.shape, at::kFloat);
  std::memcpy(out.data_ptr(), t.bytes.data(), t.bytes.size());
  return out;
}

double RelDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>() / b.abs().max().item<double>();
}

class HeadTest : public ::testing::TestWithParam<bool> {};  // The CPU fast path, or ATen.

TEST_P(HeadTest, ImagesOfSeveralHeadsShareOnePassAndGetWhatTheirOwnModelGives) {
  at::manual_seed(7);
  LoadOptions options;
  options.path = testing::TestdataPath("custom.safetensors");
  options.model.cpu_fast_path = GetParam();
  options.fingerprint_trunk = true;
  absl::StatusOr<LoadedModel> trunk = LoadModel(options);
  ASSERT_TRUE(trunk.ok()) << trunk.status();
  ASSERT_FALSE(trunk->trunk.empty());

  LoadOptions other = options;
  other.path = testing::WriteHeadCheckpoint("birds.safetensors", 7);
  other.fingerprint_trunk = false;
  absl::StatusOr<LoadedHead> head = LoadHead(other, *trunk->model, trunk->trunk);
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->head.num_classes, 7);
  EXPECT_EQ(head->layout, "torchvision");
  absl::StatusOr<LoadedModel> whole = LoadModel(other);  // The head's checkpoint as a model.
  ASSERT_TRUE(whole.ok()) << whole.status();

  // Four images: the trunk's own head and the other, mixed, classes and embeddings.
  std::vector<at::Tensor> inputs;
  std::vector<ImageRequest> requests;
  for (int i = 0; i < 4; ++i) {
    inputs.push_back(at::randn({1, 3, 64, 64}));
    ImageRequest r;
    r.head = i % 2 == 1 ? &head->head : nullptr;
    r.top_k = i % 2 == 1 ? 7 : 10;
    r.embedding = i < 2;
    requests.push_back(r);
  }
  absl::StatusOr<std::vector<ImageOutputs>> mixed = RunBatch(*trunk->model, inputs, requests);
  ASSERT_TRUE(mixed.ok()) << mixed.status();
  for (int i = 0; i < 4; ++i) {
    SCOPED_TRACE(i);
    ImageRequest alone = requests[i];
    alone.head = nullptr;
    const ConvNeXt& model = i % 2 == 1 ? *whole->model : *trunk->model;
    absl::StatusOr<std::vector<ImageOutputs>> ref = RunBatch(model, {inputs[i]}, {alone});
    ASSERT_TRUE(ref.ok()) << ref.status();
    const ImageOutputs& got = (*mixed)[i];
    const ImageOutputs& want = (*ref)[0];
    ASSERT_EQ(got.class_indices.size(), want.class_indices.size());
    EXPECT_EQ(got.class_indices, want.class_indices);
    for (size_t k = 0; k < got.class_scores.size(); ++k) {
      EXPECT_NEAR(got.class_scores[k], want.class_scores[k], 1e-5);
    }
    if (requests[i].embedding) {
      EXPECT_LT(RelDiff(FloatsOf(got.embedding), FloatsOf(want.embedding)), 1e-5);
    } else {
      EXPECT_TRUE(got.embedding.shape.empty());
    }
  }
  // The two heads really differ: the trunk's own top class list has 10 entries, the other's 7.
  EXPECT_EQ((*mixed)[0].class_indices.size(), 10u);
  EXPECT_EQ((*mixed)[1].class_indices.size(), 7u);

  // A top_k beyond the image's own head is refused for that head's class count.
  ImageRequest too_many;
  too_many.head = &head->head;
  too_many.top_k = 8;
  absl::StatusOr<std::vector<ImageOutputs>> refused =
      RunBatch(*trunk->model, {inputs[0]}, {too_many});
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(refused.status().message(), HasSubstr("[0, 7]"));
}

INSTANTIATE_TEST_SUITE_P(Paths, HeadTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "FastPath" : "Aten"; });

TEST(LoadHeadTest, ACheckpointOfAnotherTrunkIsRefusedNamingTheTensor) {
  LoadOptions options;
  options.path = testing::TestdataPath("custom.safetensors");
  options.fingerprint_trunk = true;
  absl::StatusOr<LoadedModel> trunk = LoadModel(options);
  ASSERT_TRUE(trunk.ok()) << trunk.status();

  LoadOptions other;
  other.path =
      testing::WriteHeadCheckpoint("other_trunk.safetensors", 10, "features.1.0.block.0.weight");
  absl::StatusOr<LoadedHead> head = LoadHead(other, *trunk->model, trunk->trunk);
  ASSERT_FALSE(head.ok());
  EXPECT_EQ(head.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(head.status().message(), HasSubstr("differs from the model's at tensor"));
  EXPECT_THAT(head.status().message(), HasSubstr(other.path));

  other.path = testing::TestdataPath("tiny.safetensors");  // Another architecture altogether.
  head = LoadHead(other, *trunk->model, trunk->trunk);
  ASSERT_FALSE(head.ok());
  EXPECT_EQ(head.status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace convnext
