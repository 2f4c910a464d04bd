// Preprocessing: decoding of hostile, truncated and unusual input, raw pixels, keep-size padding
// and configuration (parity with torchvision through the model: tests/preprocess_parity_test.cc).
#include "image/preprocess.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "testing/testdata.h"

namespace convnext {
namespace {

using ::testing::HasSubstr;
using testing::TestdataPath;

std::string Photo(const std::string& name) {
  return testing::ReadTestFile(TestdataPath("preprocess/" + name));
}

// The status message of a call that must fail with INVALID_ARGUMENT.
template <typename T>
std::string InvalidArgumentMessage(const absl::StatusOr<T>& result) {
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << result.status();
  return std::string(result.status().message());
}

// ---- Decoding ----

TEST(PreprocessDecodeTest, GrayAndRgbaBecomeRgb) {
  absl::StatusOr<RgbImage> gray = DecodeImage(Photo("gray.png"), PreprocessConfig());
  ASSERT_TRUE(gray.ok()) << gray.status();
  EXPECT_EQ(gray->width, 600);
  EXPECT_EQ(gray->height, 400);
  ASSERT_EQ(gray->pixels.size(), 600u * 400u * 3u);
  for (size_t i = 0; i < gray->pixels.size(); i += 3) {
    ASSERT_EQ(gray->pixels[i], gray->pixels[i + 1]);
    ASSERT_EQ(gray->pixels[i], gray->pixels[i + 2]);
  }
  // The RGBA file is chelsea.png plus an alpha channel, which is dropped without compositing.
  absl::StatusOr<RgbImage> rgba = DecodeImage(Photo("rgba.png"), PreprocessConfig());
  absl::StatusOr<RgbImage> rgb = DecodeImage(Photo("chelsea.png"), PreprocessConfig());
  ASSERT_TRUE(rgba.ok() && rgb.ok());
  EXPECT_EQ(rgba->width, 451);
  EXPECT_EQ(rgba->height, 300);
  EXPECT_EQ(rgba->pixels, rgb->pixels);
}

TEST(PreprocessDecodeTest, ExifOrientationIsApplied) {
  absl::StatusOr<RgbImage> image = DecodeImage(Photo("exif_rotated.jpg"), PreprocessConfig());
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->width, 32);  // Stored 48 x 32.
  EXPECT_EQ(image->height, 48);
}

std::string Be32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
          static_cast<char>(v)};
}

std::string Le32(uint32_t v) {
  return {static_cast<char>(v), static_cast<char>(v >> 8), static_cast<char>(v >> 16),
          static_cast<char>(v >> 24)};
}

TEST(PreprocessDecodeTest, DecompressionBombIsRejectedBeforeDecoding) {
  // A valid PNG signature and IHDR declaring 50000 x 50000 RGB, then a few bytes of "data".
  const std::string png = std::string("\x89PNG\r\n\x1A\n", 8) + Be32(13) + "IHDR" + Be32(50000) +
                          Be32(50000) + std::string("\x08\x02\x00\x00\x00", 5) + "crc!" +
                          Be32(100) + "IDAT" + std::string(100, 'x');
  EXPECT_THAT(InvalidArgumentMessage(DecodeImage(png, PreprocessConfig())),
              HasSubstr("image is 50000x50000 = 2500000000 pixels, more than the limit of "
                        "40000000"));
  // Below OpenCV's own limit (2^30 pixels), so only the header check stands in the way.
  PreprocessConfig small;
  small.max_pixels = 100'000;
  const std::string png_400 = std::string("\x89PNG\r\n\x1A\n", 8) + Be32(13) + "IHDR" + Be32(400) +
                              Be32(400) + std::string(9, '\0');
  EXPECT_THAT(InvalidArgumentMessage(DecodeImage(png_400, small)),
              HasSubstr("image is 400x400 = 160000 pixels, more than the limit of 100000"));
}

TEST(PreprocessDecodeTest, HeadersOfEveryFormatAreChecked) {
  const std::string big = "40000x40000 = 1600000000 pixels";
  const std::pair<std::string, std::string> cases[] = {
      // SOI, SOF0 (8 bits, 40000 x 40000, 3 components), SOS, two bytes of scan data, EOI.
      {"JPEG", std::string("\xFF\xD8\xFF\xC0\x00\x11\x08\x9C\x40\x9C\x40\x03", 12) +
                   std::string("\x01\x11\x00\x02\x11\x00\x03\x11\x00", 9) +
                   std::string("\xFF\xDA\x00\x0C\x03\x01\x00\x02\x11\x03\x11\x00\x3F\x00", 14) +
                   std::string("\x12\x34\xFF\xD9", 4)},
      {"BMP", "BM" + std::string(12, '\0') + Le32(40) + Le32(40000) +
                  Le32(static_cast<uint32_t>(-40000))},  // Top-down rows.
      {"GIF", std::string("GIF89a\x40\x9C\x40\x9C", 10)},
      {"WebP VP8X", "RIFF" + Le32(100) + "WEBPVP8X" + Le32(10) + Le32(0) +
                        std::string("\x3F\x9C\x00\x3F\x9C\x00", 6)},
      // Lossless WebP stores 14-bit sizes: 16384 x 16384 = 268435456 pixels at most.
      {"WebP VP8L", "RIFF" + Le32(100) + "WEBPVP8L" + Le32(10) + "\x2F" +
                        Le32((16384 - 1) | ((16384 - 1) << 14))},
      {"TIFF", std::string("II*\0", 4) + Le32(8) + std::string("\x02\x00", 2) +
                   std::string("\x00\x01\x04\x00", 4) + Le32(1) + Le32(40000) +
                   std::string("\x01\x01\x04\x00", 4) + Le32(1) + Le32(40000) + Le32(0)},
      {"PNM", "P6\n# a comment\n40000 40000\n255\n"},
  };
  for (const auto& [format, bytes] : cases) {
    EXPECT_THAT(InvalidArgumentMessage(DecodeImage(bytes, PreprocessConfig())),
                HasSubstr(format == "WebP VP8L" ? "16384x16384 = 268435456 pixels" : big))
        << format;
  }
}

// TIFF: libtiff decodes the size of the first of duplicated ImageWidth/ImageLength tags; a small
// second one must not pass the size check for a huge first one. Duplicates are refused.
TEST(PreprocessDecodeTest, DuplicatedTiffSizeTagsAreRefused) {
  const std::string tiff = std::string("II*\0", 4) + Le32(8) + std::string("\x03\x00", 2) +
                           std::string("\x00\x01\x04\x00", 4) + Le32(1) + Le32(40000) +
                           std::string("\x00\x01\x04\x00", 4) + Le32(1) + Le32(8) +
                           std::string("\x01\x01\x04\x00", 4) + Le32(1) + Le32(8) + Le32(0);
  absl::StatusOr<ImageHeader> header = ReadImageHeader(tiff);
  EXPECT_EQ(header.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(InvalidArgumentMessage(DecodeImage(tiff, {})), HasSubstr("tag 256 appears twice"));
}

// Only formats whose header is read (and so whose size is checked before decoding) are decoded:
// others that OpenCV would decode, bounded only by its own 2^30-pixel limit, are refused.
TEST(PreprocessDecodeTest, OnlyAcceptedFormatsAreDecoded) {
  // Radiance HDR and Sun raster signatures (OpenCV decodes both), and a small GIF.
  for (const std::string& bytes :
       {std::string("#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 8 +X 8\n") + std::string(64, '\0'),
        std::string("\x59\xA6\x6A\x95", 4) + std::string(64, '\0')}) {
    EXPECT_THAT(InvalidArgumentMessage(DecodeImage(bytes, {})),
                HasSubstr("no accepted format (accepted: JPEG, PNG, WebP, BMP, TIFF, PNM)"));
  }
  EXPECT_THAT(InvalidArgumentMessage(DecodeImage(
                  std::string("GIF89a\x08\x00\x08\x00", 10) + std::string(32, '\0'), {})),
              HasSubstr("GIF images are not accepted"));
  EXPECT_TRUE(IsAcceptedFormat(ImageFormat::kJpeg));
  EXPECT_FALSE(IsAcceptedFormat(ImageFormat::kUnknown));
}

TEST(PreprocessDecodeTest, BadInputIsInvalidArgument) {
  const std::string jpeg = Photo("china.jpg");
  EXPECT_THAT(InvalidArgumentMessage(DecodeImage(jpeg.substr(0, jpeg.size() / 2), {})),
              HasSubstr("truncated JPEG image"));
  EXPECT_THAT(InvalidArgumentMessage(DecodeImage(jpeg.substr(0, 300), {})),
              HasSubstr("truncated JPEG image"));
  const std::string png = Photo("coffee.png");
  EXPECT_THAT(InvalidArgumentMessage(DecodeImage(png.substr(0, png.size() / 2), {})),
              HasSubstr("cannot decode PNG image"));
  EXPECT_THAT(InvalidArgumentMessage(DecodeImage("", {})),
              HasSubstr("cannot decode image: empty input (0 bytes)"));
  EXPECT_THAT(InvalidArgumentMessage(DecodeImage("just some text, not an image", {})),
              HasSubstr("not an image"));
  PreprocessConfig config;
  config.max_encoded_bytes = 1000;
  EXPECT_THAT(InvalidArgumentMessage(DecodeImage(jpeg, config)),
              HasSubstr("image is 196653 bytes, more than the limit of 1000 bytes"));
  EXPECT_THAT(InvalidArgumentMessage(DecodeAndTransform(jpeg, config)), HasSubstr("1000 bytes"));
}

TEST(PreprocessDecodeTest, PrefixesAndCorruptionsNeverCrash) {
  for (const char* name : {"china.jpg", "chelsea.png"}) {
    const std::string bytes = Photo(name);
    for (size_t n = 0; n < 1000; n += 7) {
      EXPECT_FALSE(DecodeImage(bytes.substr(0, n), {}).ok()) << name << " prefix " << n;
    }
    std::mt19937 rng(42);
    for (int i = 0; i < 30; ++i) {
      std::string corrupt = bytes;
      for (int j = 0; j < 10; ++j) corrupt[rng() % corrupt.size()] = static_cast<char>(rng());
      absl::StatusOr<RgbImage> image = DecodeImage(corrupt, {});  // Any outcome but a crash.
      if (image.ok()) {
        EXPECT_EQ(image->pixels.size(), static_cast<size_t>(image->width) * image->height * 3);
      }
    }
  }
}

// ---- Raw pixels ----

std::vector<uint8_t> RandomPixels(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (uint8_t& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

TEST(PreprocessPixelsTest, ChannelOrdersAndLayoutsAgree) {
  const int w = 97, h = 61;
  const std::vector<uint8_t> rgb = RandomPixels(w * h * 3, 1);
  std::vector<uint8_t> bgr(rgb.size()), rgba(w * h * 4), bgra(w * h * 4);
  for (int i = 0; i < w * h; ++i) {
    for (int c = 0; c < 3; ++c) {
      bgr[3 * i + c] = rgb[3 * i + 2 - c];
      rgba[4 * i + c] = rgb[3 * i + c];
      bgra[4 * i + c] = rgb[3 * i + 2 - c];
    }
    rgba[4 * i + 3] = bgra[4 * i + 3] = static_cast<uint8_t>(i);
  }
  const PreprocessConfig config;
  absl::StatusOr<at::Tensor> a = TransformPixels(rgb.data(), rgb.size(), w, h, 3, false, config);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->sizes(), (std::vector<int64_t>{1, 3, 224, 224}));
  for (const auto& [data, channels, is_bgr] :
       {std::tuple(&bgr, 3, true), std::tuple(&rgba, 4, false), std::tuple(&bgra, 4, true)}) {
    absl::StatusOr<at::Tensor> b =
        TransformPixels(data->data(), data->size(), w, h, channels, is_bgr, config);
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_TRUE(at::equal(*a, *b)) << channels << " channels, bgr " << is_bgr;
  }
  // Gray equals RGB with three equal channels.
  const std::vector<uint8_t> gray = RandomPixels(w * h, 2);
  std::vector<uint8_t> gray_rgb(w * h * 3);
  for (int i = 0; i < w * h * 3; ++i) gray_rgb[i] = gray[i / 3];
  absl::StatusOr<at::Tensor> g1 = TransformPixels(gray.data(), gray.size(), w, h, 1, false, config);
  absl::StatusOr<at::Tensor> g3 =
      TransformPixels(gray_rgb.data(), gray_rgb.size(), w, h, 3, false, config);
  ASSERT_TRUE(g1.ok() && g3.ok());
  EXPECT_TRUE(at::equal(*g1, *g3));
}

TEST(PreprocessPixelsTest, DecodedImageAndItsPixelsGiveTheSameTensor) {
  absl::StatusOr<RgbImage> image = DecodeImage(Photo("china.jpg"), {});
  ASSERT_TRUE(image.ok());
  absl::StatusOr<at::Tensor> a = TransformImage(*image, {});
  absl::StatusOr<at::Tensor> b = DecodeAndTransform(Photo("china.jpg"), {});
  absl::StatusOr<at::Tensor> c = TransformPixels(image->pixels.data(), image->pixels.size(),
                                                 image->width, image->height, 3, false, {});
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_TRUE(at::equal(*a, *b));
  EXPECT_TRUE(at::equal(*a, *c));
}

// The uint8 variant stops before ToTensor and Normalize: (x / 255 - mean) / std of its pixels, in
// float32 in that order, is the float transform exactly, for photos and raw pixels (gray, BGRA),
// squashed (size >= 384) or cropped, with another mean and std.
TEST(PreprocessPixelsTest, Uint8PixelsNormalisedGiveTheFloatTransformExactly) {
  auto normalised = [](const at::Tensor& pixels, const PreprocessConfig& config) {
    EXPECT_EQ(pixels.scalar_type(), at::kByte);
    at::Tensor out = at::empty(pixels.sizes(), at::kFloat);
    const int64_t plane = pixels.size(2) * pixels.size(3);
    const uint8_t* src = pixels.data_ptr<uint8_t>();
    float* dst = out.data_ptr<float>();
    for (int c = 0; c < 3; ++c) {
      for (int64_t i = 0; i < plane; ++i) {
        dst[c * plane + i] =
            (static_cast<float>(src[c * plane + i]) / 255.0f - config.mean[c]) / config.std[c];
      }
    }
    return out;
  };
  absl::StatusOr<RgbImage> image = DecodeImage(Photo("china.jpg"), {});
  ASSERT_TRUE(image.ok());
  PreprocessConfig other;
  other.size = 384;
  other.mean = {0.5f, 0.25f, 0.125f};
  other.std = {0.3f, 0.7f, 0.11f};
  for (const PreprocessConfig& config : {PreprocessConfig(), other}) {
    absl::StatusOr<at::Tensor> want = TransformImage(*image, config);
    absl::StatusOr<at::Tensor> pixels = TransformImageToUint8(*image, config);
    ASSERT_TRUE(want.ok() && pixels.ok());
    EXPECT_EQ(pixels->sizes(), want->sizes());
    EXPECT_TRUE(at::equal(normalised(*pixels, config), *want)) << config.size;
  }
  const int w = 97, h = 61;
  for (const int channels : {1, 4}) {
    const std::vector<uint8_t> raw = RandomPixels(w * h * channels, 3);
    absl::StatusOr<at::Tensor> want =
        TransformPixels(raw.data(), raw.size(), w, h, channels, /*bgr=*/true, {});
    absl::StatusOr<at::Tensor> pixels =
        TransformPixelsToUint8(raw.data(), raw.size(), w, h, channels, /*bgr=*/true, {});
    ASSERT_TRUE(want.ok() && pixels.ok());
    EXPECT_TRUE(at::equal(normalised(*pixels, {}), *want)) << channels << " channels";
  }
  const std::vector<uint8_t> short_data(300);
  EXPECT_THAT(
      InvalidArgumentMessage(TransformPixelsToUint8(short_data.data(), 300, 10, 11, 3, false, {})),
      HasSubstr("10x11x3 needs 330 bytes, got 300"));
}

// The vector horizontal pass (AVX-512) gives the scalar pass's bytes: upscaled and downscaled
// (up to ~220 taps an output), 1 to 6 rows (the last group of 4 partial), widths down to 1,
// bicubic and bilinear, cropped and squashed, against the same transform with it turned off.
TEST(PreprocessPixelsTest, VectorResamplingGivesTheScalarBytes) {
#if defined(__x86_64__)
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
      !__builtin_cpu_supports("avx512vl")) {
    GTEST_SKIP() << "this CPU lacks AVX-512 (F, BW, VL): the scalar pass is the only one";
  }
#else
  GTEST_SKIP() << "the vector pass is x86-64 only";
#endif
  struct Case {
    int w, h, size;
  };
  int compared = 0;
  for (const Case& c : std::vector<Case>{{97, 61, 224},
                                         {500, 375, 224},
                                         {1, 1, 32},
                                         {2, 5, 32},
                                         {7, 3, 32},
                                         {3, 700, 32},
                                         {2000, 2000, 32},
                                         {1001, 6, 64},
                                         {123, 45, 400},
                                         {640, 480, 384}}) {
    for (const Interpolation interp : {Interpolation::kBicubic, Interpolation::kBilinear}) {
      PreprocessConfig config;
      config.size = c.size;
      config.interpolation = interp;
      config.max_pixels = int64_t{1} << 26;
      const std::vector<uint8_t> raw = RandomPixels(static_cast<size_t>(c.w) * c.h * 3, c.w + c.h);
      internal::SetVectorResamplingForTesting(false);
      absl::StatusOr<at::Tensor> scalar =
          TransformPixelsToUint8(raw.data(), raw.size(), c.w, c.h, 3, /*bgr=*/false, config);
      internal::SetVectorResamplingForTesting(true);
      absl::StatusOr<at::Tensor> vector =
          TransformPixelsToUint8(raw.data(), raw.size(), c.w, c.h, 3, /*bgr=*/false, config);
      ASSERT_TRUE(scalar.ok()) << scalar.status();
      ASSERT_TRUE(vector.ok()) << vector.status();
      EXPECT_TRUE(at::equal(*scalar, *vector))
          << c.w << "x" << c.h << " to " << c.size << ", interpolation " << static_cast<int>(interp)
          << ": " << (*scalar != *vector).sum().item<int64_t>() << " bytes differ";
      ++compared;
    }
  }
  EXPECT_EQ(compared, 20);
}

TEST(PreprocessPixelsTest, BadSizesAreInvalidArgument) {
  const std::vector<uint8_t> data(300);
  const PreprocessConfig config;
  EXPECT_THAT(InvalidArgumentMessage(TransformPixels(data.data(), 300, 10, 10, 2, false, config)),
              HasSubstr("channels must be 1, 3 or 4, got 2"));
  EXPECT_THAT(InvalidArgumentMessage(TransformPixels(data.data(), 300, 10, 11, 3, false, config)),
              HasSubstr("10x11x3 needs 330 bytes, got 300"));
  EXPECT_THAT(InvalidArgumentMessage(TransformPixels(data.data(), 300, 0, 10, 3, false, config)),
              HasSubstr("must be >= 1, got 0x10"));
  EXPECT_THAT(InvalidArgumentMessage(TransformPixels(nullptr, 300, 10, 10, 3, false, config)),
              HasSubstr("needs 300 bytes, got 0"));
  // Products that overflow 32 or 64 bits are caught by the pixel limit first.
  EXPECT_THAT(InvalidArgumentMessage(
                  TransformPixels(data.data(), 300, 2147483647, 2147483647, 4, false, config)),
              HasSubstr("= 4611686014132420609 pixels, more than the limit of 40000000"));
  // Within the pixel limit, but resizing the shorter side to 256 would make 256 x 51200000.
  const std::vector<uint8_t> strip(200000 * 3);
  EXPECT_THAT(InvalidArgumentMessage(
                  TransformPixels(strip.data(), strip.size(), 200000, 1, 3, false, config)),
              HasSubstr("too elongated"));
}

TEST(PreprocessPixelsTest, KeepSizePadsToMultiplesOf32) {
  const int w = 100, h = 70;
  const std::vector<uint8_t> rgb = RandomPixels(w * h * 3, 3);
  PreprocessConfig config;
  absl::StatusOr<at::Tensor> t =
      TransformPixelsKeepSize(rgb.data(), rgb.size(), w, h, 3, false, config);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->sizes(), (std::vector<int64_t>{1, 3, 96, 128}));
  EXPECT_EQ(t->slice(2, h).abs().max().item<float>(), 0.0f);  // Bottom padding.
  EXPECT_EQ(t->slice(3, w).abs().max().item<float>(), 0.0f);  // Right padding.
  for (const auto& [y, x] : {std::pair(0, 0), std::pair(h - 1, w - 1), std::pair(31, 77)}) {
    for (int c = 0; c < 3; ++c) {
      const float v = (rgb[(y * w + x) * 3 + c] / 255.0f - config.mean[c]) / config.std[c];
      EXPECT_EQ((*t)[0][c][y][x].item<float>(), v) << y << "," << x << "," << c;
    }
  }
  // Exact multiples are not padded; an RgbImage gives the same as its pixels.
  const std::vector<uint8_t> square = RandomPixels(64 * 32 * 3, 4);
  RgbImage image{64, 32, square};
  absl::StatusOr<at::Tensor> s = TransformImageKeepSize(image, config);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->sizes(), (std::vector<int64_t>{1, 3, 32, 64}));
  config.max_pixels = 2000;
  config.size = 32;
  config.crop_pct = 1.0;
  EXPECT_THAT(InvalidArgumentMessage(TransformImageKeepSize(image, config)),
              HasSubstr("image is 64x32 = 2048 pixels, more than the limit of 2000"));
}

// ---- Configuration ----

TEST(PreprocessConfigTest, ValidationNamesTheBadField) {
  EXPECT_TRUE(ValidatePreprocessConfig(PreprocessConfig()).ok());
  auto message = [](void (*change)(PreprocessConfig&)) {
    PreprocessConfig c;
    change(c);
    const absl::Status s = ValidatePreprocessConfig(c);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    return std::string(s.message());
  };
  EXPECT_EQ(message([](PreprocessConfig& c) { c.size = 16; }),
            "PreprocessConfig.size must be in [32, 4096], got 16");
  EXPECT_THAT(message([](PreprocessConfig& c) { c.crop_pct = 0; }),
              HasSubstr("PreprocessConfig.crop_pct must be in (0, 1], got 0"));
  EXPECT_THAT(message([](PreprocessConfig& c) { c.crop_pct = 1.5; }),
              HasSubstr("PreprocessConfig.crop_pct"));
  EXPECT_THAT(message([](PreprocessConfig& c) { c.crop_pct = 1e-300; }),
              HasSubstr("PreprocessConfig.max_pixels (40000000) is below the resized size"));
  EXPECT_THAT(message([](PreprocessConfig& c) { c.interpolation = static_cast<Interpolation>(7); }),
              HasSubstr("PreprocessConfig.interpolation"));
  EXPECT_THAT(message([](PreprocessConfig& c) { c.mean[2] = NAN; }),
              HasSubstr("PreprocessConfig.mean[2] must be finite"));
  EXPECT_THAT(message([](PreprocessConfig& c) { c.std[1] = 0; }),
              HasSubstr("PreprocessConfig.std[1] must be positive"));
  EXPECT_THAT(message([](PreprocessConfig& c) { c.max_pixels = 0; }),
              HasSubstr("PreprocessConfig.max_pixels must be in [1, 2^30]"));
  EXPECT_THAT(message([](PreprocessConfig& c) { c.max_encoded_bytes = int64_t{1} << 40; }),
              HasSubstr("PreprocessConfig.max_encoded_bytes"));
  EXPECT_THAT(message([](PreprocessConfig& c) { c.max_pixels = 60000; }),
              HasSubstr("PreprocessConfig.max_pixels (60000) is below the resized size of even a "
                        "square image (256x256"));
  // Every entry point checks the config.
  PreprocessConfig bad;
  bad.size = 0;
  EXPECT_THAT(InvalidArgumentMessage(DecodeAndTransform(Photo("china.jpg"), bad)),
              HasSubstr("PreprocessConfig.size"));
}

TEST(PreprocessConfigTest, InterpolationNamesRoundTrip) {
  for (Interpolation i :
       {Interpolation::kBicubic, Interpolation::kBilinear, Interpolation::kNearest}) {
    absl::StatusOr<Interpolation> parsed = InterpolationFromName(InterpolationName(i));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, i);
  }
  EXPECT_THAT(InvalidArgumentMessage(InterpolationFromName("lanczos")),
              HasSubstr("'lanczos' is not bicubic, bilinear or nearest"));
}

TEST(PreprocessFileTest, LoadImageTensorNamesThePath) {
  absl::StatusOr<at::Tensor> t = LoadImageTensor(TestdataPath("preprocess/china.jpg"), {});
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(at::equal(*t, *DecodeAndTransform(Photo("china.jpg"), {})));
  absl::StatusOr<at::Tensor> missing = LoadImageTensor("/nonexistent/x.jpg", {});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("/nonexistent/x.jpg"));
  absl::StatusOr<at::Tensor> text = LoadImageTensor(TestdataPath("manifest.json"), {});
  EXPECT_THAT(InvalidArgumentMessage(text), HasSubstr("manifest.json': not an image"));
}

}  // namespace
}  // namespace convnext
