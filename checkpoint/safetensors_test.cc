#include "checkpoint/safetensors.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <fstream>

namespace convnext {
namespace {

using ::testing::HasSubstr;

std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + "/safetensors_test_" + name;
}

// A file holding an 8-byte little-endian length, `header` and `data_bytes` zero bytes.
std::string MakeFile(const std::string& header, size_t data_bytes) {
  std::string bytes(8, '\0');
  const uint64_t len = header.size();
  std::memcpy(bytes.data(), &len, 8);
  return bytes + header + std::string(data_bytes, '\0');
}

TEST(SafetensorsTest, RoundTripsEveryFloatDtypeAndIntegers) {
  StateDict in;
  in["a.f32"] = at::randn({3, 4});
  in["b.f16"] = at::randn({5}).to(at::kHalf);
  in["c.bf16"] = at::randn({2, 2, 2}).to(at::kBFloat16);
  in["d.i64"] = at::arange(7, at::kLong);
  in["e.scalar"] = at::scalar_tensor(2.5);
  in["f.empty"] = at::empty({0, 3});
  const std::string path = TempPath("roundtrip.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, in).ok());
  absl::StatusOr<StateDict> out = ReadSafetensors(path);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->size(), in.size());
  for (const auto& [name, tensor] : in) {
    const at::Tensor& got = out->at(name);
    EXPECT_EQ(got.scalar_type(), tensor.scalar_type()) << name;
    EXPECT_EQ(got.sizes(), tensor.sizes()) << name;
    EXPECT_TRUE(at::equal(got, tensor)) << name;
  }
}

TEST(SafetensorsTest, ParsesMetadata) {
  const std::string file =
      MakeFile(R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2],)"
               R"("data_offsets":[0,8]}})",
               8);
  absl::StatusOr<SafetensorsHeader> h = ParseSafetensorsHeader(file, file.size());
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->metadata.at("format"), "pt");
  ASSERT_EQ(h->entries.size(), 1u);
  EXPECT_EQ(h->entries[0].name, "w");
  EXPECT_EQ(h->entries[0].shape, std::vector<int64_t>{2});
}

struct BadHeaderCase {
  std::string name;
  std::string header;
  size_t data_bytes;
  std::string message;
};

void PrintTo(const BadHeaderCase& c, std::ostream* os) { *os << c.name; }

class SafetensorsBadHeaderTest : public ::testing::TestWithParam<BadHeaderCase> {};

TEST_P(SafetensorsBadHeaderTest, IsInvalidArgumentWithMessage) {
  const BadHeaderCase& c = GetParam();
  const std::string file = MakeFile(c.header, c.data_bytes);
  absl::StatusOr<SafetensorsHeader> h = ParseSafetensorsHeader(file, file.size());
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(h.status().message()), HasSubstr(c.message));
}

INSTANTIATE_TEST_SUITE_P(
    Cases, SafetensorsBadHeaderTest,
    ::testing::Values(
        BadHeaderCase{"NotJson", "{not json", 0, "not valid JSON"},
        BadHeaderCase{"NotAnObject", "[1,2]", 0, "not a JSON object"},
        BadHeaderCase{"NoDtype", R"({"w":{"shape":[2],"data_offsets":[0,8]}})", 8,
                      "no string 'dtype'"},
        BadHeaderCase{"UnknownDtype", R"({"w":{"dtype":"F8","shape":[2],"data_offsets":[0,2]}})", 2,
                      "unsupported safetensors dtype 'F8'"},
        BadHeaderCase{"NegativeDim", R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})",
                      8, "not a whole number"},
        BadHeaderCase{"ShapeMismatch", R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
                      8, "do not match its shape"},
        BadHeaderCase{"ReversedOffsets",
                      R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8,
                      "do not match its shape"},
        BadHeaderCase{"TruncatedData", R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                      4, "file is truncated: tensor w ends at byte 8"},
        BadHeaderCase{"HugeShape",
                      R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],)"
                      R"("data_offsets":[0,8]}})",
                      8, "impossibly large shape"},
        BadHeaderCase{"NonStringMetadata", R"({"__metadata__":{"a":1}})", 0,
                      "values must be strings"},
        // Two tensors sharing bytes: a few bytes of file claiming many tensors' worth of data.
        BadHeaderCase{"OverlappingRanges",
                      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                      12, "tensors a and b overlap"}),
    [](const auto& info) { return info.param.name; });

TEST(SafetensorsTest, HeaderLongerThanFileIsTruncated) {
  std::string file = MakeFile(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8);
  file.resize(20);
  absl::StatusOr<SafetensorsHeader> h = ParseSafetensorsHeader(file, file.size());
  ASSERT_FALSE(h.ok());
  EXPECT_THAT(std::string(h.status().message()), HasSubstr("file is truncated: the header claims"));
}

TEST(SafetensorsTest, HugeHeaderLengthIsRejectedBeforeAllocation) {
  std::string file(16, '\xff');
  absl::StatusOr<SafetensorsHeader> h = ParseSafetensorsHeader(file, file.size());
  ASSERT_FALSE(h.ok());
  EXPECT_THAT(std::string(h.status().message()), HasSubstr("exceeds"));
  EXPECT_FALSE(LooksLikeSafetensors(file));
}

TEST(SafetensorsTest, MissingFileIsNotFound) {
  absl::StatusOr<StateDict> out = ReadSafetensors(TempPath("does-not-exist"));
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace convnext
