#include "server/server_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "server/model_repository.h"

namespace convnext::server {
namespace {

using ::testing::HasSubstr;

std::string Write(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

absl::Status Check(server::ServerConfig config) {
  NormalizeConfig(&config, 2, int64_t{8} << 30);
  return ValidateServerConfig(config);
}

TEST(ServerConfigTest, ReadsNormalisesAndValidatesATextProto) {
  absl::StatusOr<server::ServerConfig> config = ReadConfigFile(Write("ok.textproto", R"pb(
    model {
      name: "a"
      checkpoint: "/m/a.pth"
      batching { max_batch_size: 16 }
    }
    model {
      name: "b"
      checkpoint: "/m/b.safetensors"
      preprocessing { size: 384 }
    }
  )pb"));
  ASSERT_TRUE(config.ok()) << config.status();
  NormalizeConfig(&*config, 2, int64_t{8} << 30);
  ASSERT_TRUE(ValidateServerConfig(*config).ok()) << ValidateServerConfig(*config);
  EXPECT_EQ(config->default_model(), "a");
  EXPECT_EQ(config->intra_op_threads(), 2u);
  EXPECT_EQ(config->model(0).batching().max_batch_size(), 16u);
  EXPECT_EQ(config->model(0).batching().max_queue_size(), 64u);
  EXPECT_EQ(config->model(0).preprocessing().size(), 224u);
  EXPECT_FLOAT_EQ(config->model(0).preprocessing().crop_pct(), 0.875f);
  EXPECT_FLOAT_EQ(config->model(1).preprocessing().crop_pct(), 1.0f);  // Squash at >= 384.
  EXPECT_EQ(config->model(1).device(), "cpu");
}

TEST(ServerConfigTest, SyntaxErrorsNameTheLine) {
  absl::StatusOr<server::ServerConfig> config =
      ReadConfigFile(Write("bad.textproto", "model {\n  name: \"a\"\n  nonsense: 3\n}\n"));
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(std::string(config.status().message()), HasSubstr("line 3"));
  EXPECT_THAT(std::string(config.status().message()), HasSubstr("nonsense"));
}

TEST(ServerConfigTest, ErrorsNameTheModelAndField) {
  server::ServerConfig c;
  EXPECT_THAT(std::string(Check(c).message()), HasSubstr("no model to serve"));
  server::ModelConfig* m = c.add_model();
  m->set_name("tiny");
  EXPECT_THAT(std::string(Check(c).message()), HasSubstr("model 'tiny': checkpoint is required"));
  m->set_checkpoint("x.pth");
  m->mutable_preprocessing()->set_interpolation("lanczos");
  EXPECT_THAT(std::string(Check(c).message()),
              HasSubstr("model 'tiny': preprocessing.interpolation 'lanczos'"));
  m->mutable_preprocessing()->set_interpolation("bilinear");
  m->mutable_batching()->set_max_batch_size(32);
  m->mutable_batching()->set_max_queue_size(8);
  EXPECT_THAT(std::string(Check(c).message()),
              HasSubstr("model 'tiny': batching.max_queue_size must be at least max_batch_size"));
  m->mutable_batching()->set_max_queue_size(64);
  EXPECT_TRUE(Check(c).ok());
  *c.add_model() = *m;
  EXPECT_THAT(std::string(Check(c).message()),
              HasSubstr("model 'tiny': version '1' is used twice"));
  c.mutable_model(1)->set_name("bad\nname");
  EXPECT_THAT(std::string(Check(c).message()), HasSubstr("must be 1-64 characters"));
  c.mutable_model(1)->set_name("other");
  c.set_default_model("missing");
  EXPECT_THAT(std::string(Check(c).message()), HasSubstr("default_model 'missing'"));
}

TEST(ServerConfigTest, VersionsLabelsAndDefaultVersions) {
  server::ServerConfig c;
  for (const char* version : {"1", "2"}) {
    server::ModelConfig* m = c.add_model();
    m->set_name("tiny");
    m->set_checkpoint("x.pth");
    m->set_version(version);
  }
  c.mutable_model(1)->add_version_labels("canary");
  server::DefaultVersion* d = c.add_default_version();
  d->set_model("tiny");
  d->set_version("canary");
  EXPECT_TRUE(Check(c).ok()) << Check(c);
  *c.add_default_version() = *d;
  EXPECT_THAT(std::string(Check(c).message()), HasSubstr("names model 'tiny' twice"));
  c.mutable_default_version()->RemoveLast();
  d->set_version("3");
  EXPECT_THAT(std::string(Check(c).message()), HasSubstr("'3' is neither a version nor a label"));
  d->set_model("other");
  d->set_version("1");
  EXPECT_THAT(std::string(Check(c).message()), HasSubstr("names model 'other'"));
  c.clear_default_version();
  c.mutable_model(0)->add_version_labels("2");
  EXPECT_THAT(std::string(Check(c).message()),
              HasSubstr("version label '2' is also the name of a version"));
  c.mutable_model(0)->clear_version_labels();
  c.mutable_model(0)->add_version_labels("canary");
  EXPECT_THAT(std::string(Check(c).message()), HasSubstr("'canary' is used twice"));
  c.mutable_model(0)->clear_version_labels();
  c.mutable_model(0)->set_version("a/b");
  EXPECT_THAT(std::string(Check(c).message()), HasSubstr("model 'tiny': version 'a/b'"));
  c.mutable_model(0)->set_version("1");
  server::GoldenCase* g = c.mutable_model(0)->add_golden();
  g->set_image("cat.png");
  EXPECT_THAT(std::string(Check(c).message()), HasSubstr("golden needs both image and expected"));
  g->set_expected("cat.npy");
  g->set_output("logits");
  EXPECT_THAT(std::string(Check(c).message()), HasSubstr("golden.output 'logits'"));
  g->set_output("");
  EXPECT_TRUE(Check(c).ok()) << Check(c);
}

TEST(ServerConfigTest, ComputeDtype) {
  absl::StatusOr<server::ServerConfig> config = ReadConfigFile(Write("dtype.textproto", R"pb(
    model { name: "a" checkpoint: "/m/a.pth" compute_dtype: BF16 }
    model { name: "b" checkpoint: "/m/b.pth" compute_dtype: AUTO disable_cpu_fast_path: true }
    model { name: "c" checkpoint: "/m/c.pth" }
  )pb"));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->model(0).compute_dtype(), server::BF16);
  EXPECT_EQ(config->model(1).compute_dtype(), server::AUTO);
  EXPECT_EQ(config->model(2).compute_dtype(), server::FP32);
  // BF16 where it cannot run is refused at once (AUTO falls back instead).
  server::ServerConfig c = *config;
  c.mutable_model(0)->set_disable_cpu_fast_path(true);
  EXPECT_THAT(std::string(Check(c).message()),
              HasSubstr("model 'a': compute_dtype BF16 runs on the CPU fast path only"));
  // On a CUDA device the whole model computes in BF16 or FP16, whether or not the CPU fast path
  // is disabled; FP16 is refused elsewhere.
  c.mutable_model(0)->set_device("cuda");
  EXPECT_TRUE(Check(c).ok()) << Check(c);
  c.mutable_model(0)->set_disable_cpu_fast_path(false);
  c.mutable_model(0)->set_device("cuda:1");
  EXPECT_TRUE(Check(c).ok()) << Check(c);
  c.mutable_model(0)->set_device("mps");
  EXPECT_THAT(std::string(Check(c).message()), HasSubstr("compute_dtype BF16"));
  c.mutable_model(0)->set_compute_dtype(server::FP16);
  EXPECT_THAT(std::string(Check(c).message()),
              HasSubstr("model 'a': compute_dtype FP16 runs on a CUDA device only"));
  c.mutable_model(0)->set_device("cpu");
  EXPECT_THAT(std::string(Check(c).message()), HasSubstr("FP16 runs on a CUDA device only"));
  c.mutable_model(0)->set_device("cuda");
  EXPECT_TRUE(Check(c).ok()) << Check(c);
  // TF32 (float32 with TensorFloat-32) likewise: CUDA only.
  c.mutable_model(0)->set_compute_dtype(server::TF32);
  EXPECT_TRUE(Check(c).ok()) << Check(c);
  c.mutable_model(0)->set_device("cpu");
  EXPECT_THAT(
      std::string(Check(c).message()),
      HasSubstr("model 'a': compute_dtype TF32 (TensorFloat-32) runs on a CUDA device only"));
  // CUDA graphs likewise, and at most 64 batch sizes.
  c.mutable_model(0)->set_compute_dtype(server::FP32);
  c.mutable_model(0)->set_cuda_graph_max_batch(8);
  EXPECT_THAT(std::string(Check(c).message()),
              HasSubstr("model 'a': cuda_graph_max_batch CUDA graphs run on a CUDA device only"));
  c.mutable_model(0)->set_device("cuda:0");
  EXPECT_TRUE(Check(c).ok()) << Check(c);
  c.mutable_model(0)->set_cuda_graph_max_batch(65);
  EXPECT_THAT(std::string(Check(c).message()), HasSubstr("cuda_graph_max_batch must be <= 64"));
}

TEST(ServerConfigTest, DevicesOneReplicaEach) {
  absl::StatusOr<server::ServerConfig> config = ReadConfigFile(Write("devices.textproto", R"pb(
    model { name: "a" checkpoint: "/m/a.pth" }
    model { name: "b" checkpoint: "/m/b.pth" device: "cuda:1" }
    model {
      name: "c"
      checkpoint: "/m/c.pth"
      devices: [ "cuda:0", "cuda:1" ]
    }
    model {
      name: "d"
      checkpoint: "/m/d.pth"
      device: "cuda:0"
      devices: [ "cuda:0", "cuda:1" ]
    }
  )pb"));
  ASSERT_TRUE(config.ok()) << config.status();
  server::ServerConfig c = *config;
  NormalizeConfig(&c, 2, int64_t{8} << 30);
  ASSERT_TRUE(ValidateServerConfig(c).ok()) << ValidateServerConfig(c);
  // Either field fills the other.
  EXPECT_THAT(c.model(0).devices(), ::testing::ElementsAre("cpu"));
  EXPECT_EQ(c.model(0).device(), "cpu");
  EXPECT_THAT(c.model(1).devices(), ::testing::ElementsAre("cuda:1"));
  EXPECT_EQ(c.model(2).device(), "cuda:0");
  EXPECT_THAT(c.model(3).devices(), ::testing::ElementsAre("cuda:0", "cuda:1"));
  // Normalising twice changes nothing (a reload normalises an applied config again).
  server::ServerConfig again = c;
  NormalizeConfig(&again, 2, int64_t{8} << 30);
  EXPECT_EQ(again.DebugString(), c.DebugString());

  server::ServerConfig bad = *config;
  bad.mutable_model(3)->set_device("cuda:1");
  EXPECT_THAT(std::string(Check(bad).message()),
              HasSubstr("model 'd': device 'cuda:1' is not the first of devices ['cuda:0', "
                        "'cuda:1']; set one or the other"));
  bad = *config;
  bad.mutable_model(2)->add_devices("cpu");
  EXPECT_THAT(std::string(Check(bad).message()),
              HasSubstr("model 'c': devices mixes 'cuda:0' and 'cpu': a model's replicas are all "
                        "on the CPU or all on CUDA devices"));
  bad = *config;
  for (int i = 0; i < 17; ++i) bad.mutable_model(0)->add_devices("cpu");
  EXPECT_THAT(std::string(Check(bad).message()),
              HasSubstr("model 'a': devices lists 17 devices, at most 16"));
  // A device listed twice is two replicas there.
  bad.mutable_model(0)->mutable_devices()->DeleteSubrange(0, 15);
  EXPECT_TRUE(Check(bad).ok()) << Check(bad);
  // CUDA-only settings hold for every replica.
  bad = *config;
  bad.mutable_model(2)->set_compute_dtype(server::FP16);
  bad.mutable_model(2)->set_cuda_graph_max_batch(8);
  EXPECT_TRUE(Check(bad).ok()) << Check(bad);
}

TEST(ServerConfigTest, GoldenPathsAreRelativeToTheFile) {
  absl::StatusOr<server::ServerConfig> config = ParseConfigText(
      R"pb(model {
             name: "a"
             checkpoint: "a.pth"
             golden { image: "g/cat.png" expected: "/abs/cat.npy" }
           })pb",
      "/models/server.textproto");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->model(0).golden(0).image(), "/models/g/cat.png");
  EXPECT_EQ(config->model(0).golden(0).expected(), "/abs/cat.npy");
}

TEST(VersionLessTest, NumbersAsNumbersElseText) {
  EXPECT_TRUE(VersionLess("2", "10"));
  EXPECT_FALSE(VersionLess("10", "2"));
  EXPECT_TRUE(VersionLess("09", "10"));
  EXPECT_FALSE(VersionLess("1", "1"));
  EXPECT_TRUE(VersionLess("10", "2a"));  // Text order when either is not a number.
  EXPECT_TRUE(VersionLess("alpha", "beta"));
}

TEST(ServerConfigTest, ModelFlag) {
  absl::StatusOr<server::ModelConfig> m = ParseModelFlag("tiny=/models/t.pth");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->name(), "tiny");
  EXPECT_EQ(m->checkpoint(), "/models/t.pth");
  EXPECT_FALSE(ParseModelFlag("tiny").ok());
  EXPECT_FALSE(ParseModelFlag("=x").ok());
  EXPECT_FALSE(ParseModelFlag("x=").ok());
}

TEST(ServerConfigTest, ModelFlagWithAFolderTakesItsOneCheckpoint) {
  const std::string dir = ::testing::TempDir() + "/model_folder";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << "{}";
  EXPECT_THAT(std::string(ParseModelFlag("m=" + dir).status().message()),
              HasSubstr("holds 0 checkpoint files"));
  std::ofstream(dir + "/weights.safetensors") << "x";
  absl::StatusOr<server::ModelConfig> m = ParseModelFlag("m=" + dir);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->checkpoint(), dir + "/weights.safetensors");
  std::ofstream(dir + "/other.pth") << "x";
  EXPECT_THAT(std::string(ParseModelFlag("m=" + dir).status().message()),
              HasSubstr("holds 2 checkpoint files"));
}

}  // namespace
}  // namespace convnext::server
