#include "model/roi_align.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

namespace convnext {
namespace {

// torchvision's roi_align kernel for one image, written out sample by sample (no separability):
// the check on RoiAlign's per-axis weights. The python end-to-end test compares against
// torchvision itself.
at::Tensor SampleBySample(const at::Tensor& map, const std::vector<RegionBox>& boxes, double stride,
                          const RoiAlignOptions& o) {
  const int64_t c = map.size(0), h = map.size(1), w = map.size(2), k = o.output_size;
  at::Tensor out = at::zeros({static_cast<int64_t>(boxes.size()), c, k, k}, at::kDouble);
  auto f = map.accessor<float, 3>();
  auto a = out.accessor<double, 4>();
  const double scale = 1.0 / stride, offset = o.aligned ? 0.5 : 0.0;
  for (size_t r = 0; r < boxes.size(); ++r) {
    const RegionBox& b = boxes[r];
    const double sx = b.x1 * scale - offset, sy = b.y1 * scale - offset;
    double rw = b.x2 * scale - offset - sx, rh = b.y2 * scale - offset - sy;
    if (!o.aligned) {
      rw = std::max(rw, 1.0);
      rh = std::max(rh, 1.0);
    }
    const double bw = rw / k, bh = rh / k;
    const int gh = o.sampling_ratio > 0 ? o.sampling_ratio : static_cast<int>(std::ceil(rh / k));
    const int gw = o.sampling_ratio > 0 ? o.sampling_ratio : static_cast<int>(std::ceil(rw / k));
    const double count = std::max(gh * gw, 1);
    for (int64_t ph = 0; ph < k; ++ph) {
      for (int64_t pw = 0; pw < k; ++pw) {
        for (int iy = 0; iy < gh; ++iy) {
          for (int ix = 0; ix < gw; ++ix) {
            double y = sy + ph * bh + (iy + 0.5) * bh / gh;
            double x = sx + pw * bw + (ix + 0.5) * bw / gw;
            if (y < -1.0 || y > h || x < -1.0 || x > w) continue;
            y = std::max(y, 0.0);
            x = std::max(x, 0.0);
            int64_t y0 = static_cast<int64_t>(y), x0 = static_cast<int64_t>(x), y1, x1;
            if (y0 >= h - 1) {
              y1 = y0 = h - 1;
              y = static_cast<double>(y0);
            } else {
              y1 = y0 + 1;
            }
            if (x0 >= w - 1) {
              x1 = x0 = w - 1;
              x = static_cast<double>(x0);
            } else {
              x1 = x0 + 1;
            }
            const double ly = y - y0, lx = x - x0, hy = 1 - ly, hx = 1 - lx;
            for (int64_t ch = 0; ch < c; ++ch) {
              a[r][ch][ph][pw] += (hy * hx * f[ch][y0][x0] + hy * lx * f[ch][y0][x1] +
                                   ly * hx * f[ch][y1][x0] + ly * lx * f[ch][y1][x1]) /
                                  count;
            }
          }
        }
      }
    }
  }
  return out.to(at::kFloat);
}

TEST(RoiAlignTest, ConstantMapGivesTheConstantInsideAndZeroFarOutside) {
  const at::Tensor map = at::full({3, 7, 9}, 2.5f);
  const std::vector<RegionBox> boxes = {{0, 0, 36, 28}, {5, 3, 6, 4}, {200, 200, 240, 260}};
  for (int k : {1, 3}) {
    absl::StatusOr<at::Tensor> out = RoiAlign(map, boxes, 4.0, {k, 0, false});
    ASSERT_TRUE(out.ok()) << out.status();
    ASSERT_EQ(out->sizes(), (std::vector<int64_t>{3, 3, k, k}));
    EXPECT_TRUE(at::allclose((*out)[0], at::full({3, k, k}, 2.5f)));
    EXPECT_TRUE(at::allclose((*out)[1], at::full({3, k, k}, 2.5f)));
    EXPECT_TRUE(at::equal((*out)[2], at::zeros({3, k, k})));
  }
}

// Bilinear interpolation of a linear function is exact, so a box's single bin is the function at
// the mean of its sample positions: the box centre in feature pixels, less 0.5 when aligned.
TEST(RoiAlignTest, LinearMapGivesTheValueAtTheBoxCentre) {
  const int64_t h = 20, w = 30;
  const at::Tensor xs = at::arange(w, at::kFloat).view({1, 1, w}).expand({1, h, w});
  const at::Tensor ys = at::arange(h, at::kFloat).view({1, h, 1}).expand({1, h, w});
  const at::Tensor map = at::cat({xs, 2 * ys + 1}, 0).contiguous();  // [2, h, w]
  const double stride = 8;
  const RegionBox box{40, 24, 120, 96};  // Feature pixels (5, 3) to (15, 12).
  for (bool aligned : {false, true}) {
    for (int sampling : {0, 2, 5}) {
      absl::StatusOr<at::Tensor> out = RoiAlign(map, {box}, stride, {1, sampling, aligned});
      ASSERT_TRUE(out.ok()) << out.status();
      const double shift = aligned ? 0.5 : 0.0;
      EXPECT_NEAR((*out)[0][0][0][0].item<float>(), 10.0 - shift, 1e-4);
      EXPECT_NEAR((*out)[0][1][0][0].item<float>(), 2 * (7.5 - shift) + 1, 1e-4);
    }
  }
}

TEST(RoiAlignTest, SeparableSumsEqualSampleBySampleOnRandomBoxes) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> coord(-20.0f, 140.0f), side(0.0f, 90.0f);
  const at::Tensor map = at::randn({5, 13, 17}, at::TensorOptions().dtype(at::kFloat));
  std::vector<RegionBox> boxes;
  for (int i = 0; i < 40; ++i) {
    const float x = coord(rng), y = coord(rng);
    boxes.push_back({x, y, x + side(rng), y + (i % 7 == 0 ? 0.0f : side(rng))});
  }
  for (int k : {1, 2, 7}) {
    for (int sampling : {0, 1, 3}) {
      for (bool aligned : {false, true}) {
        const RoiAlignOptions o{k, sampling, aligned};
        absl::StatusOr<at::Tensor> got = RoiAlign(map, boxes, 8.0, o);
        ASSERT_TRUE(got.ok()) << got.status();
        const at::Tensor want = SampleBySample(map, boxes, 8.0, o);
        EXPECT_LE((*got - want).abs().max().item<float>(), 1e-5)
            << "k=" << k << " sampling=" << sampling << " aligned=" << aligned;
      }
    }
  }
}

TEST(RoiAlignTest, OtherDtypesArePooledInFloat32) {
  const at::Tensor map = at::randn({4, 6, 6});
  const std::vector<RegionBox> boxes = {{2, 3, 17, 20}};
  absl::StatusOr<at::Tensor> want = RoiAlign(map, boxes, 4.0, {2, 0, true});
  absl::StatusOr<at::Tensor> half = RoiAlign(map.to(at::kHalf), boxes, 4.0, {2, 0, true});
  ASSERT_TRUE(want.ok() && half.ok());
  EXPECT_EQ(half->scalar_type(), at::kFloat);
  EXPECT_LE((*half - *want).abs().max().item<float>(), 1e-2);
}

// A masked box is the mask-weighted mean of its mask_size x mask_size RoIAlign bins: checked
// against the sample-by-sample bins of the unmasked box; an all-ones mask is their plain mean.
TEST(RoiAlignTest, MaskedBoxesAreMaskWeightedMeansOfTheirBins) {
  at::manual_seed(4);
  const at::Tensor map = at::randn({6, 20, 24});
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  for (bool aligned : {false, true}) {
    RoiAlignOptions options;
    options.aligned = aligned;
    options.sampling_ratio = aligned ? 2 : 0;
    std::vector<RegionBox> boxes = {
        {8.5f, 4.0f, 60.0f, 50.0f}, {0.0f, 0.0f, 95.0f, 79.0f}, {30.0f, 12.0f, 31.0f, 13.0f}};
    std::vector<at::Tensor> expected;
    for (size_t r = 0; r < boxes.size(); ++r) {
      RegionBox& b = boxes[r];
      b.mask_size = r == 1 ? 1 : 7;
      for (int i = 0; i < b.mask_size * b.mask_size; ++i) {
        b.mask.push_back(r == 2 ? 1.0f : r == 1 ? 0.8f : (unit(rng) < 0.3f ? 0.0f : unit(rng)));
      }
      RoiAlignOptions bins = options;
      bins.output_size = b.mask_size;
      const at::Tensor grid =
          SampleBySample(map, {RegionBox{b.x1, b.y1, b.x2, b.y2}}, 4.0, bins)[0];  // [C, S, S]
      const at::Tensor w = at::tensor(b.mask, at::kDouble).view({1, b.mask_size, b.mask_size});
      expected.push_back((grid * w).sum({1, 2}) / w.sum());
    }
    absl::StatusOr<at::Tensor> got = RoiAlign(map, boxes, 4.0, options);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->sizes(), (std::vector<int64_t>{3, 6, 1, 1}));
    for (size_t r = 0; r < boxes.size(); ++r) {
      const at::Tensor g = got->select(0, static_cast<int64_t>(r)).flatten().to(at::kDouble);
      EXPECT_LT((g - expected[r]).abs().max().item<double>(), 1e-5) << "box " << r;
    }
    // A box without a mask beside masked ones keeps RoIAlign's plain output_size-1 value.
    std::vector<RegionBox> mixed = {boxes[0],
                                    RegionBox{boxes[0].x1, boxes[0].y1, boxes[0].x2, boxes[0].y2}};
    absl::StatusOr<at::Tensor> both = RoiAlign(map, mixed, 4.0, options);
    ASSERT_TRUE(both.ok()) << both.status();
    const at::Tensor plain = SampleBySample(map, {mixed[1]}, 4.0, options)[0].flatten();
    EXPECT_LT(((*both)[1].flatten().to(at::kDouble) - plain).abs().max().item<double>(), 1e-5);
    EXPECT_GT(((*both)[0] - (*both)[1]).abs().max().item<float>(), 1e-3);  // The mask mattered.
  }
}

TEST(RoiAlignTest, MalformedMasksAreInvalidArgument) {
  const at::Tensor map = at::randn({2, 8, 8});
  RegionBox b{0, 0, 16, 16, 2, {0.5f, 0.5f, 0.5f}};  // 3 weights for size 2.
  EXPECT_EQ(RoiAlign(map, {b}, 4.0, {}).status().code(), absl::StatusCode::kInvalidArgument);
  b.mask = {0, 0, 0, 0};
  EXPECT_THAT(std::string(RoiAlign(map, {b}, 4.0, {}).status().message()),
              ::testing::HasSubstr("all zero"));
  b.mask = {0, 1.5f, 0, 0};
  EXPECT_THAT(std::string(RoiAlign(map, {b}, 4.0, {}).status().message()),
              ::testing::HasSubstr("[0, 1]"));
  b.mask = {0, std::nanf(""), 0, 1};
  EXPECT_FALSE(RoiAlign(map, {b}, 4.0, {}).ok());
  b.mask = {0, 1, 0, 1};
  RoiAlignOptions grid;
  grid.output_size = 2;
  EXPECT_THAT(std::string(RoiAlign(map, {b}, 4.0, grid).status().message()),
              ::testing::HasSubstr("output_size must be 1"));
  b.mask_size = kMaxRegionMaskSize + 1;
  b.mask.assign(static_cast<size_t>(b.mask_size) * b.mask_size, 1.0f);
  EXPECT_FALSE(RoiAlign(map, {b}, 4.0, {}).ok());
  b.mask_size = 0;
  b.mask.clear();
  EXPECT_TRUE(RoiAlign(map, {b}, 4.0, {}).ok());
}

TEST(RoiAlignTest, BadInputsAreInvalidArgument) {
  const at::Tensor map = at::zeros({2, 4, 4});
  const RegionBox ok{0, 0, 8, 8};
  EXPECT_TRUE(RoiAlign(map, {}, 4.0, {}).ok());
  for (const RoiAlignOptions& o : {RoiAlignOptions{0, 0, false}, RoiAlignOptions{65, 0, false},
                                   RoiAlignOptions{1, -1, false}, RoiAlignOptions{1, 65, false}}) {
    EXPECT_EQ(RoiAlign(map, {ok}, 4.0, o).status().code(), absl::StatusCode::kInvalidArgument);
  }
  const float nan = std::nanf("");
  for (const RegionBox& b :
       {RegionBox{nan, 0, 1, 1}, RegionBox{0, 0, INFINITY, 1}, RegionBox{5, 0, 4, 1},
        RegionBox{0, 5, 1, 4}, RegionBox{0, 0, 1e12f, 1}}) {
    const absl::Status s = RoiAlign(map, {ok, b}, 4.0, {}).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("box 1"), std::string::npos) << s;
  }
  EXPECT_EQ(RoiAlign(map, {ok}, 0.0, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RoiAlign(at::zeros({4, 4}), {ok}, 4.0, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RoiAlign(at::zeros({2, 4, 4}, at::kLong), {ok}, 4.0, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace convnext
