// Loading checkpoints: layouts, inference of the architecture, and every kind of bad checkpoint
// failing with a specific message (never a crash, never a partial load).
#include "model/load_model.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>
#include <iterator>

#include "checkpoint/safetensors.h"
#include "testing/testdata.h"

namespace convnext {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::string WriteBytes(const std::string& name, const std::string& bytes) {
  const std::string path = ::testing::TempDir() + "/checkpoint_test_" + name;
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  return path;
}

// The custom torchvision model of the reference data (depths 2,2,2,2, dims 16..64, 10 classes).
StateDict CustomWeights() {
  absl::StatusOr<StateDict> sd = ReadSafetensors(testing::TestdataPath("custom.safetensors"));
  EXPECT_TRUE(sd.ok()) << sd.status();
  return sd.ok() ? *sd : StateDict();
}

absl::Status LoadStatus(const std::string& path, const std::string& variant = "") {
  LoadOptions options;
  options.path = path;
  options.variant = variant;
  return LoadModel(options).status();
}

std::string SaveModified(const std::string& name, const StateDict& sd) {
  const std::string path = ::testing::TempDir() + "/checkpoint_test_" + name;
  EXPECT_TRUE(WriteSafetensors(path, sd).ok());
  return path;
}

TEST(CheckpointTest, LoadsTorchvisionLayoutAndInfersTheArchitecture) {
  LoadOptions options;
  options.path = testing::TestdataPath("custom.safetensors");
  absl::StatusOr<LoadedModel> loaded = LoadModel(options);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->format, "safetensors");
  EXPECT_EQ(loaded->layout, "torchvision");
  const ConvNeXtConfig& config = loaded->model->config();
  EXPECT_EQ(config.variant, "custom");
  EXPECT_EQ(config.depths, (std::vector<int64_t>{2, 2, 2, 2}));
  EXPECT_EQ(config.dims, (std::vector<int64_t>{16, 32, 48, 64}));
  EXPECT_EQ(config.num_classes, 10);
}

TEST(CheckpointTest, TruncatedFile) {
  std::string bytes = ReadBytes(testing::TestdataPath("custom.safetensors"));
  bytes.resize(bytes.size() - 1000);
  const std::string path = WriteBytes("truncated.safetensors", bytes);
  const absl::Status status = LoadStatus(path);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()),
              StartsWith("checkpoint '" + path + "': file is truncated"));
}

TEST(CheckpointTest, TruncatedInsideTheHeader) {
  std::string bytes = ReadBytes(testing::TestdataPath("custom.safetensors"));
  bytes.resize(200);
  const absl::Status status = LoadStatus(WriteBytes("truncated_header.safetensors", bytes));
  EXPECT_THAT(std::string(status.message()), HasSubstr("file is truncated: the header claims"));
}

TEST(CheckpointTest, WrongShapeNamesKeyExpectedAndFound) {
  StateDict sd = CustomWeights();
  sd["features.1.0.block.0.weight"] = at::zeros({16, 1, 3, 3});
  const absl::Status status = LoadStatus(SaveModified("wrong_shape.safetensors", sd));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("tensor features.1.0.block.0.weight has shape [16, 1, 3, 3], the model "
                        "expects [16, 1, 7, 7]"));
}

TEST(CheckpointTest, WrongShapeAgainstANamedVariant) {
  const absl::Status status =
      LoadStatus(testing::TestdataPath("custom.safetensors"), "convnext_tiny");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("tensor features.0.0.weight has shape [16, 3, 4, 4], convnext_tiny "
                        "expects [96, 3, 4, 4]"));
}

TEST(CheckpointTest, MissingKey) {
  StateDict sd = CustomWeights();
  sd.erase("features.3.1.block.2.bias");
  const absl::Status status = LoadStatus(SaveModified("missing.safetensors", sd));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("missing tensor features.3.1.block.2.bias: the model expects shape [32]"));
}

TEST(CheckpointTest, UnexpectedKey) {
  StateDict sd = CustomWeights();
  sd["features.1.0.extra.weight"] = at::zeros({3});
  const absl::Status status = LoadStatus(SaveModified("unexpected.safetensors", sd));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("unexpected tensor features.1.0.extra.weight [3]"));
}

TEST(CheckpointTest, IntegerWeights) {
  StateDict sd = CustomWeights();
  sd["classifier.2.bias"] = at::zeros({10}, at::kLong);
  const absl::Status status = LoadStatus(SaveModified("int.safetensors", sd));
  EXPECT_THAT(std::string(status.message()), HasSubstr("tensor classifier.2.bias has dtype Long"));
}

TEST(CheckpointTest, NotACheckpointAtAll) {
  const std::string path =
      WriteBytes("notes.txt", "These are not the weights you are looking for.");
  const absl::Status status = LoadStatus(path);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("is not a checkpoint"));
}

TEST(CheckpointTest, SafetensorsWithoutConvNeXtKeys) {
  StateDict sd;
  sd["encoder.layer.0.weight"] = at::zeros({4, 4});
  const absl::Status status = LoadStatus(SaveModified("bert.safetensors", sd));
  EXPECT_THAT(std::string(status.message()), HasSubstr("no ConvNeXt layout recognised"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("encoder.layer.0.weight"));
}

TEST(CheckpointTest, PathIsADirectory) {
  const absl::Status status = LoadStatus(::testing::TempDir());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("is a directory"));
}

TEST(CheckpointTest, EmptyFile) {
  const absl::Status status = LoadStatus(WriteBytes("empty.safetensors", ""));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("is an empty file"));
}

TEST(CheckpointTest, MissingFile) {
  const absl::Status status = LoadStatus("/nonexistent/model.safetensors");
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("'/nonexistent/model.safetensors': no such file"));
}

TEST(CheckpointTest, LegacyTorchSaveFormat) {
  // Legacy torch.save files start with a pickled magic number: protocol 2 opcode 0x80 0x02.
  const absl::Status status =
      LoadStatus(WriteBytes("legacy.pth", std::string("\x80\x02\x8a\x0a", 4)));
  EXPECT_THAT(std::string(status.message()), HasSubstr("legacy (pre-1.6, non-zip) torch.save"));
}

TEST(CheckpointTest, UnknownVariantName) {
  const absl::Status status =
      LoadStatus(testing::TestdataPath("custom.safetensors"), "convnext_gigantic");
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("unknown ConvNeXt variant 'convnext_gigantic'"));
}

}  // namespace
}  // namespace convnext
