#include "client/npy_writer.h"

#include <string>

#include "gtest/gtest.h"

namespace convnext::client {
namespace {

v1::Tensor MakeTensor(std::initializer_list<int64_t> shape, v1::DataType dtype, size_t bytes) {
  v1::Tensor t;
  for (int64_t d : shape) t.add_shape(d);
  t.set_dtype(dtype);
  t.set_data(std::string(bytes, '\0'));
  return t;
}

// The header dict without its prefix and padding.
std::string Dict(const std::string& header) {
  const size_t end = header.find('}');
  return header.substr(10, end + 1 - 10);
}

TEST(NpyHeaderTest, Fp32IsAlignedVersion1) {
  absl::StatusOr<std::string> h = NpyHeader(MakeTensor({16, 8, 8}, v1::FP32, 16 * 8 * 8 * 4));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  EXPECT_EQ(h->size() % 64, 0u);
  EXPECT_EQ(static_cast<size_t>(static_cast<unsigned char>((*h)[8]) |
                                static_cast<unsigned char>((*h)[9]) << 8),
            h->size() - 10);
  EXPECT_EQ(h->back(), '\n');
  EXPECT_EQ(Dict(*h), "{'descr': '<f4', 'fortran_order': False, 'shape': (16, 8, 8), }");
}

TEST(NpyHeaderTest, Fp16AndUnspecifiedAndOneDimension) {
  absl::StatusOr<std::string> h = NpyHeader(MakeTensor({128}, v1::FP16, 256));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(Dict(*h), "{'descr': '<f2', 'fortran_order': False, 'shape': (128,), }");
  h = NpyHeader(MakeTensor({2, 3}, v1::DATA_TYPE_UNSPECIFIED, 24));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(Dict(*h), "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }");
}

TEST(NpyHeaderTest, RejectsDataOfTheWrongSize) {
  EXPECT_EQ(NpyHeader(MakeTensor({2, 3}, v1::FP32, 23)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(NpyHeader(MakeTensor({2, -3}, v1::FP32, 0)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace convnext::client
