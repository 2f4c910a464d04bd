#include "model/convnext_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>

#include "absl/strings/match.h"

namespace convnext {
namespace {

using ::testing::HasSubstr;

TEST(ConvNeXtConfigTest, NamedVariantsHaveThePapersParameterCounts) {
  // The counts torchvision reports for its 1000-class models (xlarge from the FAIR definition).
  const std::pair<const char*, int64_t> expected[] = {
      {"convnext_tiny", 28589128},   {"convnext_small", 50223688},   {"convnext_base", 88591464},
      {"convnext_large", 197767336}, {"convnext_xlarge", 350196968},
  };
  for (const auto& [name, count] : expected) {
    absl::StatusOr<ConvNeXtConfig> config = ConfigForVariant(name);
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_EQ(config->variant, name);
    EXPECT_EQ(ParameterCount(*config), count) << name;
    EXPECT_TRUE(ValidateArchitecture(*config).ok());
    EXPECT_EQ(VariantNameFor(*config), name);
    EXPECT_FALSE(config->grn) << name;
  }
}

TEST(ConvNeXtConfigTest, SmallAndV2VariantsHaveTimmsParameterCounts) {
  // The counts timm 1.0.31 reports for its 1000-class models (tests/family_test.py checks them
  // against timm itself). A V2 block trades its layer scale [C] for GRN's gamma and beta [4C].
  const std::pair<const char*, int64_t> expected[] = {
      {"convnext_atto", 3695520},      {"convnext_femto", 5217784},
      {"convnext_pico", 9045672},      {"convnext_nano", 15593560},
      {"convnextv2_atto", 3708400},    {"convnextv2_femto", 5233240},
      {"convnextv2_pico", 9066280},    {"convnextv2_nano", 15623800},
      {"convnextv2_tiny", 28635496},   {"convnextv2_base", 88717800},
      {"convnextv2_large", 197956840}, {"convnextv2_huge", 660289640},
  };
  for (const auto& [name, count] : expected) {
    absl::StatusOr<ConvNeXtConfig> config = ConfigForVariant(name);
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_EQ(ParameterCount(*config), count) << name;
    EXPECT_EQ(VariantNameFor(*config), name);
    EXPECT_EQ(config->grn, absl::StartsWith(name, "convnextv2_")) << name;
    const ParameterShapes shapes = ExpectedParameters(*config);
    const bool has_grn = std::any_of(shapes.begin(), shapes.end(), [](const auto& entry) {
      return absl::StrContains(entry.first, ".grn.gamma");
    });
    const bool has_gamma = std::any_of(shapes.begin(), shapes.end(), [](const auto& entry) {
      return absl::EndsWith(entry.first, ".gamma") && !absl::StrContains(entry.first, ".grn.");
    });
    EXPECT_EQ(has_grn, config->grn) << name;
    EXPECT_NE(has_gamma, config->grn) << name;
  }
}

TEST(ConvNeXtConfigTest, ForwardFlopsMatchThePapersGFlops) {
  // Table 1 of the paper (multiply-adds at 224x224, which it calls FLOPs): 4.5G, 8.7G, 15.4G,
  // 34.4G, 60.9G. ForwardFlops counts 2 per multiply-add.
  const std::pair<const char*, double> expected[] = {
      {"convnext_tiny", 4.5},   {"convnext_small", 8.7},   {"convnext_base", 15.4},
      {"convnext_large", 34.4}, {"convnext_xlarge", 60.9},
  };
  for (const auto& [name, gmacs] : expected) {
    const ConvNeXtConfig config = *ConfigForVariant(name);
    EXPECT_NEAR(ForwardFlops(config, 224, 224) / 2e9, gmacs, 0.05) << name;
  }
  // At 384x384 the work grows with the pixels: (384/224)^2 = 2.94x (the paper: 15.4G -> 45.1G).
  EXPECT_NEAR(ForwardFlops(*ConfigForVariant("convnext_base"), 384, 384) / 2e9, 45.1, 0.05);
}

TEST(ConvNeXtConfigTest, UnknownVariantListsTheKnownOnes) {
  absl::StatusOr<ConvNeXtConfig> config = ConfigForVariant("convnext_huge");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(config.status().message()), HasSubstr("convnext_huge"));
  EXPECT_THAT(std::string(config.status().message()), HasSubstr("convnext_tiny"));
}

TEST(ConvNeXtConfigTest, HeadlessHasNoHeadParameters) {
  ConvNeXtConfig config = *ConfigForVariant("convnext_tiny");
  config.num_classes = 0;
  EXPECT_EQ(ParameterCount(config), 28589128 - (768 * 1000 + 1000));
  for (const auto& [name, shape] : ExpectedParameters(config)) {
    EXPECT_THAT(name, ::testing::Not(HasSubstr("head")));
  }
}

TEST(ConvNeXtConfigTest, ValidateNamesTheBadField) {
  ConvNeXtConfig config = *ConfigForVariant("convnext_tiny");
  config.depths = {3, 3, 9};
  EXPECT_THAT(std::string(ValidateArchitecture(config).message()),
              HasSubstr("depths must have 4 entries"));
  config = *ConfigForVariant("convnext_tiny");
  config.dims[2] = 0;
  EXPECT_THAT(std::string(ValidateArchitecture(config).message()), HasSubstr("dims[2]"));
  config = *ConfigForVariant("convnext_tiny");
  config.num_classes = -1;
  EXPECT_THAT(std::string(ValidateArchitecture(config).message()), HasSubstr("num_classes"));
}

std::map<std::string, std::vector<int64_t>> ShapesOf(const ConvNeXtConfig& config) {
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& [name, shape] : ExpectedParameters(config)) shapes[name] = shape;
  return shapes;
}

TEST(ConvNeXtConfigTest, InferRecoversEveryVariantAndCustomConfigs) {
  for (const std::string& name : VariantNames()) {
    ConvNeXtConfig config = *ConfigForVariant(name);
    config.num_classes = 21841;
    absl::StatusOr<ConvNeXtConfig> inferred = InferConfig(ShapesOf(config));
    ASSERT_TRUE(inferred.ok()) << inferred.status();
    EXPECT_EQ(inferred->variant, name);
    EXPECT_EQ(inferred->depths, config.depths);
    EXPECT_EQ(inferred->dims, config.dims);
    EXPECT_EQ(inferred->grn, config.grn);
    EXPECT_EQ(inferred->num_classes, 21841);
  }
  ConvNeXtConfig custom;
  custom.depths = {1, 2, 3, 4};
  custom.dims = {8, 16, 24, 40};
  custom.num_classes = 0;
  custom.in_channels = 1;
  absl::StatusOr<ConvNeXtConfig> inferred = InferConfig(ShapesOf(custom));
  ASSERT_TRUE(inferred.ok()) << inferred.status();
  EXPECT_EQ(inferred->variant, "custom");
  EXPECT_EQ(inferred->depths, custom.depths);
  EXPECT_EQ(inferred->dims, custom.dims);
  EXPECT_EQ(inferred->num_classes, 0);
  EXPECT_EQ(inferred->in_channels, 1);
}

TEST(ConvNeXtConfigTest, InferFailsOnMissingStemOrStage) {
  auto shapes = ShapesOf(*ConfigForVariant("convnext_tiny"));
  auto no_stem = shapes;
  no_stem.erase("downsample_layers.0.0.weight");
  EXPECT_THAT(std::string(InferConfig(no_stem).status().message()),
              HasSubstr("missing tensor downsample_layers.0.0.weight"));
  auto no_stage = shapes;
  for (auto it = no_stage.begin(); it != no_stage.end();) {
    it = it->first.rfind("stages.2.", 0) == 0 ? no_stage.erase(it) : std::next(it);
  }
  EXPECT_THAT(std::string(InferConfig(no_stage).status().message()),
              HasSubstr("no blocks found for stage 2"));
  auto bad_stem = shapes;
  bad_stem["downsample_layers.0.0.weight"] = {96, 3};
  EXPECT_THAT(std::string(InferConfig(bad_stem).status().message()),
              HasSubstr("tensor downsample_layers.0.0.weight has shape [96, 3]"));
}

}  // namespace
}  // namespace convnext
