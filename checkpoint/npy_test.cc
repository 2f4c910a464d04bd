#include "checkpoint/npy.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>

#include "testing/reference.h"

namespace convnext {
namespace {

using ::testing::HasSubstr;

TEST(NpyTest, RoundTripsShapesAndDtypes) {
  const std::string path = ::testing::TempDir() + "/npy_test.npy";
  for (const at::Tensor& t :
       {at::randn({2, 3, 4}), at::randn({7}).to(at::kDouble), at::arange(5, at::kLong),
        at::randn({1, 1}).to(at::kHalf), at::scalar_tensor(3.0, at::kFloat)}) {
    ASSERT_TRUE(WriteNpy(path, t).ok());
    absl::StatusOr<at::Tensor> back = ReadNpy(path);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->scalar_type(), t.scalar_type());
    EXPECT_EQ(back->sizes(), t.sizes());
    EXPECT_TRUE(at::equal(*back, t));
  }
}

TEST(NpyTest, ReadsWhatNumpyWrote) {
  // Written by numpy.save in tests/python/convnext_reference.py.
  at::Tensor x = testing::ReadReference("tiny.input.npy");
  EXPECT_EQ(x.sizes(), (at::IntArrayRef{2, 3, 224, 224}));
  EXPECT_EQ(x.scalar_type(), at::kFloat);
  EXPECT_GT(x.std().item<double>(), 0.9);  // Standard normal noise.
}

TEST(NpyTest, RejectsGarbageAndTruncation) {
  const std::string path = ::testing::TempDir() + "/npy_bad.npy";
  { std::ofstream(path) << "hello world"; }
  EXPECT_THAT(std::string(ReadNpy(path).status().message()), HasSubstr("magic"));
  ASSERT_TRUE(WriteNpy(path, at::randn({100})).ok());
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  bytes.resize(bytes.size() - 10);
  { std::ofstream(path, std::ios::binary) << bytes; }
  EXPECT_THAT(std::string(ReadNpy(path).status().message()), HasSubstr("truncated data"));
}

}  // namespace
}  // namespace convnext
