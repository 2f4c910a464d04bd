#include "image/preprocess.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <optional>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "image/image_header.h"
#include "image/jpeg_decoder.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define CONVNEXT_AVX512BW __attribute__((target("avx512f,avx512bw,avx512vl")))
#endif

namespace convnext {
namespace {

std::atomic<bool> vector_resampling{true};

// 8-bit RGB pixels: `data` points at pixel (0, 0); rows are `stride` bytes apart.
struct View {
  const uint8_t* data = nullptr;
  ptrdiff_t stride = 0;
  int width = 0;
  int height = 0;
  const uint8_t* Row(int y) const { return data + y * stride; }
};

// ---- Resampling, as PIL 9.4's libImaging/Resample.c and Geometry.c (ImagingScaleAffine) ----

double BicubicFilter(double x) {  // Keys' cubic convolution with a = -0.5; support 2.
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

double BilinearFilter(double x) {  // Triangle; support 1.
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

// PIL's fixed point: weights with 22 fraction bits, which leaves 8 bits for the pixel and 2 for
// filter overshoot. The weights of one output sum to 1 and their absolute values to at most
// ~1.27 (bicubic, measured over all sizes up to 1000), so an accumulator stays below 2^31.
constexpr int kPrecisionBits = 32 - 8 - 2;
constexpr int32_t kHalf = int32_t{1} << (kPrecisionBits - 1);

uint8_t Clip8(int32_t acc) {
  const int32_t v = acc >> kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// Filter taps of the outputs [begin, begin + first.size()) of one axis resized from in_size to
// out_size pixels (PIL's precompute_coeffs and normalize_coeffs_8bpc).
struct Taps {
  int ksize = 0;                 // Weights stored per output.
  std::vector<int> first;        // First input pixel each output reads.
  std::vector<int> count;        // Number of input pixels it reads (<= ksize).
  std::vector<int32_t> weights;  // ksize per output, fixed point.
  int in_begin = 0;              // The input pixels [in_begin, in_end) any output reads.
  int in_end = 0;
};

Taps ComputeTaps(int in_size, int64_t out_size, int64_t begin, int n, Interpolation interp) {
  double (*filter)(double) = interp == Interpolation::kBilinear ? BilinearFilter : BicubicFilter;
  const double filter_support = interp == Interpolation::kBilinear ? 1.0 : 2.0;
  // PIL holds the source box in floats; the filter is widened by the downscale factor.
  const double scale = static_cast<double>(static_cast<float>(in_size)) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double inverse_filterscale = 1.0 / filterscale;  // PIL multiplies by the inverse.
  const double support = filter_support * filterscale;
  Taps taps;
  taps.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  taps.first.resize(n);
  taps.count.resize(n);
  taps.weights.assign(static_cast<size_t>(n) * taps.ksize, 0);
  taps.in_begin = in_size;
  std::vector<double> w(taps.ksize);
  for (int i = 0; i < n; ++i) {
    const double center = (static_cast<double>(begin + i) + 0.5) * scale;
    const double lo = center - support + 0.5, hi = center + support + 0.5;
    const int xmin = lo < 0.0 ? 0 : static_cast<int>(lo);  // PIL: (int) then clamp.
    const int xmax = hi > in_size ? in_size : static_cast<int>(hi);
    const int count = std::clamp(xmax - xmin, 0, taps.ksize);
    double ww = 0.0;
    for (int x = 0; x < count; ++x) {
      w[x] = filter((x + xmin - center + 0.5) * inverse_filterscale);
      ww += w[x];
    }
    int32_t* k = &taps.weights[static_cast<size_t>(i) * taps.ksize];
    for (int x = 0; x < count; ++x) {
      const double v = (ww != 0.0 ? w[x] / ww : w[x]) * (1 << kPrecisionBits);
      k[x] = static_cast<int32_t>(v < 0 ? v - 0.5 : v + 0.5);
    }
    taps.first[i] = xmin;
    taps.count[i] = count;
    taps.in_begin = std::min(taps.in_begin, xmin);
    taps.in_end = std::max(taps.in_end, xmin + count);
  }
  return taps;
}

// out: in.height rows of taps.first.size() pixels.
void HorizontalPass(const View& in, const Taps& taps, uint8_t* out) {
  const int out_w = static_cast<int>(taps.first.size());
  for (int y = 0; y < in.height; ++y) {
    const uint8_t* src = in.Row(y);
    uint8_t* dst = out + static_cast<ptrdiff_t>(y) * out_w * 3;
    for (int x = 0; x < out_w; ++x) {
      const uint8_t* s = src + taps.first[x] * 3;
      const int32_t* k = &taps.weights[static_cast<size_t>(x) * taps.ksize];
      int32_t r = kHalf, g = kHalf, b = kHalf;
      for (int t = 0; t < taps.count[x]; ++t) {
        r += s[3 * t] * k[t];
        g += s[3 * t + 1] * k[t];
        b += s[3 * t + 2] * k[t];
      }
      dst[3 * x] = Clip8(r);
      dst[3 * x + 1] = Clip8(g);
      dst[3 * x + 2] = Clip8(b);
    }
  }
}

// One output row of the vertical pass: dst[i] for i < n from the taps' `count` input rows and
// weights k. Works in blocks of a fixed 32 values so that the compiler vectorizes the inner loops
// at -O2.
void VerticalRow(const uint8_t* const* rows, const int32_t* k, int count, int n, uint8_t* dst) {
  constexpr int kBlock = 32;
  int i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    int32_t acc[kBlock];
    for (int j = 0; j < kBlock; ++j) acc[j] = kHalf;
    for (int t = 0; t < count; ++t) {
      const uint8_t* src = rows[t] + i;
      const int32_t weight = k[t];
      for (int j = 0; j < kBlock; ++j) acc[j] += src[j] * weight;
    }
    for (int j = 0; j < kBlock; ++j) dst[i + j] = Clip8(acc[j]);
  }
  for (; i < n; ++i) {
    int32_t acc = kHalf;
    for (int t = 0; t < count; ++t) acc += rows[t][i] * k[t];
    dst[i] = Clip8(acc);
  }
}

#if defined(__x86_64__)
// For the zero-masked forms of broadcast, widening, shift, max and narrowing over all lanes: GCC
// 12's unmasked ones start from an undefined vector and warn of it (-Wuninitialized).
constexpr __mmask16 kAllLanes = 0xffff;

// Clip8 on 16 accumulators: the shift, then [0, 255] (max with 0, unsigned saturation).
CONVNEXT_AVX512BW inline __m128i Clip8x16(__m512i acc) {
  acc = _mm512_maskz_max_epi32(kAllLanes, _mm512_maskz_srai_epi32(kAllLanes, acc, kPrecisionBits),
                               _mm512_setzero_si512());
  return _mm512_maskz_cvtusepi32_epi8(kAllLanes, acc);
}

// HorizontalPass on AVX-512, the same integers in the same order (bit-identical; held to the
// scalar pass by preprocess_test): four rows at a time, one 128-bit lane each. For an output
// pixel, each lane loads the row's taps five pixels (15 bytes) at a time; a byte shuffle spreads
// tap t's R, G, B over three 32-bit slots (the fourth zero), which are multiplied by its weight
// and added up, so that one multiply serves 4 rows x 3 channels. preprocess_bench (a 500x375
// photo, AMX Xeon): the evaluation transform 0.97 -> 0.61 ms with this pass alone, 0.41-0.44 ms
// with VerticalRowAvx512 too.
CONVNEXT_AVX512BW void HorizontalPassAvx512(const View& in, const Taps& taps, uint8_t* out) {
  const int out_w = static_cast<int>(taps.first.size());
  __m512i pick[5];  // Byte shuffles: pixel t of 5 -> dwords (R, G, B, 0) in every lane.
  for (int t = 0; t < 5; ++t) {
    alignas(16) int8_t control[16];
    std::fill_n(control, 16, int8_t{-128});  // High bit set: a zero byte.
    for (int c = 0; c < 3; ++c) control[4 * c] = static_cast<int8_t>(3 * t + c);
    pick[t] = _mm512_maskz_broadcast_i32x4(
        kAllLanes, _mm_load_si128(reinterpret_cast<const __m128i*>(control)));
  }
  const __m512i half = _mm512_set1_epi32(kHalf);
  for (int y = 0; y < in.height; y += 4) {
    const int rows = std::min(4, in.height - y);
    const uint8_t* src[4];
    uint8_t* dst[4];
    for (int r = 0; r < 4; ++r) {  // Past the last row: the last row again, not stored.
      const int row = y + std::min(r, rows - 1);
      src[r] = in.Row(row);
      dst[r] = out + static_cast<ptrdiff_t>(row) * out_w * 3;
    }
    for (int x = 0; x < out_w; ++x) {
      const int count = taps.count[x];
      const int32_t* k = &taps.weights[static_cast<size_t>(x) * taps.ksize];
      __m512i acc = half;
      for (int t0 = 0; t0 < count; t0 += 5) {
        const int n = std::min(5, count - t0);
        // Masked loads: no byte past the taps' last pixel is read (the row may end there).
        const __mmask16 mask = static_cast<__mmask16>((1u << (3 * n)) - 1);
        const ptrdiff_t offset = 3 * static_cast<ptrdiff_t>(taps.first[x] + t0);
        __m512i pixels = _mm512_zextsi128_si512(_mm_maskz_loadu_epi8(mask, src[0] + offset));
        pixels = _mm512_inserti32x4(pixels, _mm_maskz_loadu_epi8(mask, src[1] + offset), 1);
        pixels = _mm512_inserti32x4(pixels, _mm_maskz_loadu_epi8(mask, src[2] + offset), 2);
        pixels = _mm512_inserti32x4(pixels, _mm_maskz_loadu_epi8(mask, src[3] + offset), 3);
        for (int t = 0; t < n; ++t) {
          const __m512i tap = _mm512_shuffle_epi8(pixels, pick[t]);
          acc = _mm512_add_epi32(acc, _mm512_mullo_epi32(tap, _mm512_set1_epi32(k[t0 + t])));
        }
      }
      alignas(16) uint8_t bytes[16];
      _mm_store_si128(reinterpret_cast<__m128i*>(bytes), Clip8x16(acc));
      for (int r = 0; r < rows; ++r) std::memcpy(dst[r] + 3 * x, bytes + 4 * r, 3);
    }
  }
}

// VerticalRow on AVX-512, bit-identical as HorizontalPassAvx512: 16 values at a time, widened to
// 32 bits, one multiply a tap for all 16 (the SSE2 code the compiler makes of the scalar row
// emulates each 32-bit multiply with two 64-bit ones and shuffles).
CONVNEXT_AVX512BW void VerticalRowAvx512(const uint8_t* const* rows, const int32_t* k, int count,
                                         int n, uint8_t* dst) {
  const __m512i half = _mm512_set1_epi32(kHalf);
  for (int i = 0; i < n; i += 16) {
    const __mmask16 mask = n - i >= 16 ? kAllLanes : static_cast<__mmask16>((1u << (n - i)) - 1);
    __m512i acc = half;
    for (int t = 0; t < count; ++t) {
      const __m512i v =
          _mm512_maskz_cvtepu8_epi32(kAllLanes, _mm_maskz_loadu_epi8(mask, rows[t] + i));
      acc = _mm512_add_epi32(acc, _mm512_mullo_epi32(v, _mm512_set1_epi32(k[t])));
    }
    _mm_mask_storeu_epi8(dst + i, mask, Clip8x16(acc));
  }
}

#endif

// The implementations of the two passes this CPU runs: AVX-512 where it has F, BW and VL (unless
// a test has turned them off), the scalar ones otherwise.
struct Passes {
  void (*horizontal)(const View& in, const Taps& taps, uint8_t* out) = HorizontalPass;
  void (*vertical_row)(const uint8_t* const* rows, const int32_t* k, int count, int n,
                       uint8_t* dst) = VerticalRow;
};

Passes PassesForThisCpu() {
  Passes passes;
#if defined(__x86_64__)
  static const bool avx512bw = __builtin_cpu_supports("avx512f") &&
                               __builtin_cpu_supports("avx512bw") &&
                               __builtin_cpu_supports("avx512vl");
  if (avx512bw && vector_resampling.load(std::memory_order_relaxed)) {
    passes.horizontal = HorizontalPassAvx512;
    passes.vertical_row = VerticalRowAvx512;
  }
#endif
  return passes;
}

// out: taps.first.size() rows of in.width pixels, each from `row`. Input row r of the taps is
// in.Row(r - row0).
void VerticalPass(const View& in, int row0, const Taps& taps, decltype(Passes::vertical_row) row,
                  uint8_t* out) {
  const int n = in.width * 3;
  std::vector<const uint8_t*> rows(taps.ksize);
  for (size_t y = 0; y < taps.first.size(); ++y) {
    const int count = taps.count[y];
    for (int t = 0; t < count; ++t) rows[t] = in.Row(taps.first[y] + t - row0);
    row(rows.data(), &taps.weights[y * taps.ksize], count, n, out + y * n);
  }
}

// Source index of the outputs [begin, begin + n) of a nearest-neighbour resize, -1 outside the
// image. PIL accumulates the position in a double, so this does too, from output 0.
std::vector<int> NearestIndices(int in_size, int64_t out_size, int64_t begin, int n) {
  const double step = static_cast<double>(static_cast<float>(in_size)) / out_size;
  std::vector<int> index(n);
  double pos = step * 0.5;
  for (int64_t x = 0; x < begin + n; ++x, pos += step) {
    if (x < begin) continue;
    const int v = pos < 0.0 ? -1 : static_cast<int>(pos);
    index[x - begin] = v < in_size ? v : -1;
  }
  return index;
}

// A w x h window at (x, y) of an image.
struct Window {
  int64_t x = 0, y = 0;
  int w = 0, h = 0;
};

// The `win` window of `src` resized to out_w x out_h, as packed RGB rows. Equal to resizing the
// whole image and cropping: every output pixel depends only on its own taps.
std::vector<uint8_t> ResizeWindow(const View& src, int64_t out_w, int64_t out_h, const Window& win,
                                  Interpolation interp) {
  std::vector<uint8_t> out(static_cast<size_t>(win.w) * win.h * 3);
  if (interp == Interpolation::kNearest) {
    const std::vector<int> xs = NearestIndices(src.width, out_w, win.x, win.w);
    const std::vector<int> ys = NearestIndices(src.height, out_h, win.y, win.h);
    for (int y = 0; y < win.h; ++y) {
      if (ys[y] < 0) continue;  // Left black, as PIL does.
      const uint8_t* row = src.Row(ys[y]);
      uint8_t* dst = &out[static_cast<size_t>(y) * win.w * 3];
      for (int x = 0; x < win.w; ++x) {
        if (xs[x] >= 0) std::copy_n(row + xs[x] * 3, 3, dst + x * 3);
      }
    }
    return out;
  }
  // PIL resamples an axis only if its size changes: horizontally first, over just the rows the
  // vertical pass reads, then vertically.
  const bool horizontal = out_w != src.width, vertical = out_h != src.height;
  const Passes passes = PassesForThisCpu();
  Taps vtaps;
  int row0 = static_cast<int>(win.y), row1 = static_cast<int>(win.y) + win.h;
  if (vertical) {
    vtaps = ComputeTaps(src.height, out_h, win.y, win.h, interp);
    row0 = vtaps.in_begin;
    row1 = vtaps.in_end;
  }
  View rows{src.Row(row0), src.stride, src.width, row1 - row0};
  std::vector<uint8_t> temp;
  if (horizontal) {
    temp.resize(static_cast<size_t>(win.w) * rows.height * 3);
    passes.horizontal(rows, ComputeTaps(src.width, out_w, win.x, win.w, interp), temp.data());
    rows = View{temp.data(), static_cast<ptrdiff_t>(win.w) * 3, win.w, rows.height};
  } else {
    rows.data += win.x * 3;
    rows.width = win.w;
  }
  if (vertical) {
    VerticalPass(rows, row0, vtaps, passes.vertical_row, out.data());
  } else {
    for (int y = 0; y < win.h; ++y) {
      std::copy_n(rows.Row(y), static_cast<size_t>(win.w) * 3,
                  &out[static_cast<size_t>(y) * win.w * 3]);
    }
  }
  return out;
}

// ---- Normalisation and tensors ----

absl::Status CheckPixels(int64_t width, int64_t height, int64_t max_pixels) {
  if (width * height <= max_pixels) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("image is ", width, "x", height, " = ",
                                                 width * height, " pixels, more than the limit of ",
                                                 max_pixels));
}

absl::StatusOr<at::Tensor> NewInputTensor(int64_t height, int64_t width, bool zero,
                                          c10::ScalarType dtype = at::kFloat) {
  try {
    return zero ? at::zeros({1, 3, height, width}, dtype) : at::empty({1, 3, height, width}, dtype);
  } catch (const std::exception& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate a ", height, "x", width, " input tensor: ", e.what()));
  }
}

// Writes (x / 255 - mean) / std of `rgb` into the top-left of `out` [1, 3, H, W], computed in
// float32 in the same order as torchvision's ToTensor and Normalize, hence bit-identical.
void Normalize(const View& rgb, const PreprocessConfig& config, at::Tensor& out) {
  float lut[3][256];
  for (int c = 0; c < 3; ++c) {
    for (int v = 0; v < 256; ++v) {
      lut[c][v] = (static_cast<float>(v) / 255.0f - config.mean[c]) / config.std[c];
    }
  }
  const int64_t out_w = out.size(3), plane = out.size(2) * out_w;
  float* dst = out.data_ptr<float>();
  for (int y = 0; y < rgb.height; ++y) {
    const uint8_t* src = rgb.Row(y);
    float* r = dst + y * out_w;
    float* g = r + plane;
    float* b = g + plane;
    for (int x = 0; x < rgb.width; ++x) {
      r[x] = lut[0][src[3 * x]];
      g[x] = lut[1][src[3 * x + 1]];
      b[x] = lut[2][src[3 * x + 2]];
    }
  }
}

// The evaluation transform's geometry for a width x height image: the resized size and the
// window of it that the crop keeps.
struct EvalGeometry {
  int64_t out_w, out_h;
  Window crop;
};

absl::StatusOr<EvalGeometry> ComputeEvalGeometry(int64_t width, int64_t height,
                                                 const PreprocessConfig& config) {
  const int size = config.size;
  EvalGeometry g{size, size, Window{0, 0, size, size}};
  // Below kSquashFromSize: resize the shorter side as torchvision's Resize(int), then CenterCrop.
  if (size < kSquashFromSize) {
    const int64_t shorter = std::min(width, height);
    const int64_t longer = std::max(width, height);
    const int64_t new_short = ResizedShorterSide(config);
    // Python's int(new_short * long / short): exact product, correctly rounded division.
    const auto new_long = static_cast<int64_t>(static_cast<double>(new_short * longer) /
                                               static_cast<double>(shorter));
    g.out_w = width <= height ? new_short : new_long;
    g.out_h = width <= height ? new_long : new_short;
    if (g.out_w * g.out_h > config.max_pixels) {
      return absl::InvalidArgumentError(absl::StrCat(
          "image is ", width, "x", height, ", too elongated: resizing its shorter side to ",
          new_short, " gives ", g.out_w, "x", g.out_h, " = ", g.out_w * g.out_h,
          " pixels, more than the limit of ", config.max_pixels));
    }
    // Python's round(), half to even, as std::nearbyint in the default rounding mode.
    g.crop.x = static_cast<int64_t>(std::nearbyint((g.out_w - size) / 2.0));
    g.crop.y = static_cast<int64_t>(std::nearbyint((g.out_h - size) / 2.0));
  }
  return g;
}

// The evaluation transform's resized and cropped pixels: size x size, RGB interleaved.
absl::StatusOr<std::vector<uint8_t>> EvalPixels(const View& rgb, const PreprocessConfig& config) {
  ASSIGN_OR_RETURN(const EvalGeometry g, ComputeEvalGeometry(rgb.width, rgb.height, config));
  return ResizeWindow(rgb, g.out_w, g.out_h, g.crop, config.interpolation);
}

absl::StatusOr<at::Tensor> EvalTransform(const View& rgb, const PreprocessConfig& config) {
  const int size = config.size;
  ASSIGN_OR_RETURN(const std::vector<uint8_t> pixels, EvalPixels(rgb, config));
  ASSIGN_OR_RETURN(at::Tensor out, NewInputTensor(size, size, /*zero=*/false));
  Normalize(View{pixels.data(), static_cast<ptrdiff_t>(size) * 3, size, size}, config, out);
  return out;
}

// EvalTransform without ToTensor and Normalize: the same pixels as uint8 planes.
absl::StatusOr<at::Tensor> EvalTransformToUint8(const View& rgb, const PreprocessConfig& config) {
  const int size = config.size;
  ASSIGN_OR_RETURN(const std::vector<uint8_t> pixels, EvalPixels(rgb, config));
  ASSIGN_OR_RETURN(at::Tensor out, NewInputTensor(size, size, /*zero=*/false, at::kByte));
  const int64_t plane = int64_t{size} * size;
  uint8_t* dst = out.data_ptr<uint8_t>();
  for (int64_t i = 0; i < plane; ++i) {
    dst[i] = pixels[3 * i];
    dst[plane + i] = pixels[3 * i + 1];
    dst[2 * plane + i] = pixels[3 * i + 2];
  }
  return out;
}

absl::StatusOr<at::Tensor> KeepSizeTransform(const View& rgb, const PreprocessConfig& config) {
  const int64_t h32 = (rgb.height + 31) / 32 * 32, w32 = (rgb.width + 31) / 32 * 32;
  ASSIGN_OR_RETURN(at::Tensor out, NewInputTensor(h32, w32, /*zero=*/true));
  Normalize(rgb, config, out);
  return out;
}

// Checks raw pixels and presents them as RGB: a view of `data` itself if it is RGB already,
// otherwise of a converted copy in `storage`.
absl::StatusOr<View> PixelsAsRgb(const uint8_t* data, size_t num_bytes, int width, int height,
                                 int channels, bool bgr, const PreprocessConfig& config,
                                 std::vector<uint8_t>* storage) {
  RETURN_IF_ERROR(ValidatePreprocessConfig(config));
  if (width < 1 || height < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("raw pixels: width and height must be >= 1, got ", width, "x", height));
  }
  if (channels != 1 && channels != 3 && channels != 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("raw pixels: channels must be 1, 3 or 4, got ", channels));
  }
  RETURN_IF_ERROR(CheckPixels(width, height, config.max_pixels));
  const int64_t pixels = int64_t{width} * height;  // <= 2^30 now.
  if (static_cast<uint64_t>(pixels * channels) != num_bytes || data == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("raw pixels: ", width, "x", height, "x", channels, " needs ",
                     pixels * channels, " bytes, got ", data == nullptr ? 0 : num_bytes));
  }
  if (channels == 3 && !bgr) return View{data, static_cast<ptrdiff_t>(width) * 3, width, height};
  storage->resize(pixels * 3);
  uint8_t* dst = storage->data();
  const int r = bgr ? 2 : 0, b = bgr ? 0 : 2;
  for (int64_t i = 0; i < pixels; ++i, dst += 3) {
    const uint8_t* p = data + i * channels;
    if (channels == 1) {
      dst[0] = dst[1] = dst[2] = p[0];
    } else {
      dst[0] = p[r];
      dst[1] = p[1];
      dst[2] = p[b];
    }
  }
  return View{storage->data(), static_cast<ptrdiff_t>(width) * 3, width, height};
}

// Applies `transform` to raw pixels, after PixelsAsRgb.
absl::StatusOr<at::Tensor> TransformRaw(
    absl::StatusOr<at::Tensor> (*transform)(const View&, const PreprocessConfig&),
    const uint8_t* data, size_t num_bytes, int width, int height, int channels, bool bgr,
    const PreprocessConfig& config) {
  std::vector<uint8_t> storage;
  ASSIGN_OR_RETURN(const View rgb,
                   PixelsAsRgb(data, num_bytes, width, height, channels, bgr, config, &storage));
  return transform(rgb, config);
}

}  // namespace

namespace internal {

void SetVectorResamplingForTesting(bool enabled) { vector_resampling.store(enabled); }

}  // namespace internal

bool IsAcceptedFormat(ImageFormat format) {
  switch (format) {
    case ImageFormat::kJpeg:
    case ImageFormat::kPng:
    case ImageFormat::kWebp:
    case ImageFormat::kBmp:
    case ImageFormat::kTiff:
    case ImageFormat::kPnm:
      return true;
    case ImageFormat::kGif:  // Recognised (its size is read) but OpenCV 4.6 cannot decode it.
    case ImageFormat::kUnknown:
      return false;
  }
  return false;
}

absl::StatusOr<RgbImage> DecodeImage(absl::string_view encoded, const PreprocessConfig& config) {
  RETURN_IF_ERROR(ValidatePreprocessConfig(config));
  if (encoded.empty())
    return absl::InvalidArgumentError("cannot decode image: empty input (0 bytes)");
  if (static_cast<int64_t>(encoded.size()) > config.max_encoded_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("image is ", encoded.size(),
                                                   " bytes, more than the limit of ",
                                                   config.max_encoded_bytes, " bytes"));
  }
  ASSIGN_OR_RETURN(const ImageHeader header, ReadImageHeader(encoded));
  if (header.format != ImageFormat::kUnknown) {
    RETURN_IF_ERROR(CheckPixels(header.width, header.height, config.max_pixels));
  }
  // Only formats whose header was read (and so whose size was checked) reach the decoder: OpenCV
  // also decodes JPEG 2000, OpenEXR, Radiance HDR, Sun raster, PAM, PFM..., bounded only by its
  // own limit of 2^30 pixels.
  if (!IsAcceptedFormat(header.format)) {
    return absl::InvalidArgumentError(
        absl::StrCat(header.format == ImageFormat::kUnknown
                         ? std::string("not an image: the data is in no accepted format")
                         : absl::StrCat(ImageFormatName(header.format), " images are not accepted"),
                     " (accepted: ", kAcceptedFormats, ")"));
  }
  // The common JPEG straight to RGB, the same pixels in half the time; the rest through OpenCV.
  if (std::optional<RgbImage> jpeg = DecodeCommonJpeg(encoded, header, config.max_pixels)) {
    return *std::move(jpeg);
  }
  const std::string format = absl::StrCat(ImageFormatName(header.format), " image");
  RgbImage image;
  try {
    const cv::Mat buf(1, static_cast<int>(encoded.size()), CV_8UC1,
                      const_cast<char*>(encoded.data()));
    // IMREAD_COLOR: EXIF orientation applied; 8-bit BGR whatever the source's channels and depth.
    const cv::Mat bgr = cv::imdecode(buf, cv::IMREAD_COLOR);
    if (bgr.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot decode ", format, ": corrupt data or an unsupported variant"));
    }
    if (bgr.type() != CV_8UC3) {
      return absl::InternalError(
          absl::StrCat("OpenCV decoded a ", format, " to type ", bgr.type(), ", expected CV_8UC3"));
    }
    RETURN_IF_ERROR(CheckPixels(bgr.cols, bgr.rows, config.max_pixels));
    image.width = bgr.cols;
    image.height = bgr.rows;
    image.pixels.resize(static_cast<size_t>(image.width) * image.height * 3);
    cv::Mat rgb(image.height, image.width, CV_8UC3, image.pixels.data());
    cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);  // Writes into image.pixels (same size and type).
  } catch (const cv::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("cannot decode ", format, ": ", e.err));
  } catch (const std::exception& e) {
    return absl::ResourceExhaustedError(absl::StrCat("cannot decode ", format, ": ", e.what()));
  }
  return image;
}

absl::StatusOr<at::Tensor> TransformPixels(const uint8_t* data, size_t num_bytes, int width,
                                           int height, int channels, bool bgr,
                                           const PreprocessConfig& config) {
  return TransformRaw(EvalTransform, data, num_bytes, width, height, channels, bgr, config);
}

absl::StatusOr<at::Tensor> TransformPixelsKeepSize(const uint8_t* data, size_t num_bytes, int width,
                                                   int height, int channels, bool bgr,
                                                   const PreprocessConfig& config) {
  return TransformRaw(KeepSizeTransform, data, num_bytes, width, height, channels, bgr, config);
}

absl::StatusOr<at::Tensor> TransformPixelsToUint8(const uint8_t* data, size_t num_bytes, int width,
                                                  int height, int channels, bool bgr,
                                                  const PreprocessConfig& config) {
  return TransformRaw(EvalTransformToUint8, data, num_bytes, width, height, channels, bgr, config);
}

absl::StatusOr<at::Tensor> TransformImageToUint8(const RgbImage& image,
                                                 const PreprocessConfig& config) {
  return TransformPixelsToUint8(image.pixels.data(), image.pixels.size(), image.width, image.height,
                                3, /*bgr=*/false, config);
}

absl::StatusOr<at::Tensor> TransformImage(const RgbImage& image, const PreprocessConfig& config) {
  return TransformPixels(image.pixels.data(), image.pixels.size(), image.width, image.height, 3,
                         /*bgr=*/false, config);
}

absl::StatusOr<at::Tensor> TransformImageKeepSize(const RgbImage& image,
                                                  const PreprocessConfig& config) {
  return TransformPixelsKeepSize(image.pixels.data(), image.pixels.size(), image.width,
                                 image.height, 3, /*bgr=*/false, config);
}

absl::StatusOr<at::Tensor> DecodeAndTransform(absl::string_view encoded,
                                              const PreprocessConfig& config) {
  ASSIGN_OR_RETURN(const RgbImage image, DecodeImage(encoded, config));
  return TransformImage(image, config);
}

absl::StatusOr<InputPlan> PlanInput(int64_t width, int64_t height, const PreprocessConfig& config,
                                    bool keep_size) {
  RETURN_IF_ERROR(ValidatePreprocessConfig(config));
  if (width < 1 || height < 1 || width > (int64_t{1} << 31) || height > (int64_t{1} << 31)) {
    return absl::InvalidArgumentError(
        absl::StrCat("image is ", width, "x", height, ": sides must be in [1, 2^31]"));
  }
  RETURN_IF_ERROR(CheckPixels(width, height, config.max_pixels));
  InputPlan plan;
  const int64_t pixels = width * height;
  // Decoding: the decoder's own image (up to 4 channels of 16 bits: 8 bytes a pixel) and our RGB
  // copy (3 bytes a pixel), both alive while converting.
  plan.bytes = 11 * pixels;
  if (keep_size) {
    plan.height = (height + 31) / 32 * 32;
    plan.width = (width + 31) / 32 * 32;
  } else {
    plan.height = plan.width = config.size;
    // The separable resize's intermediate: `size` output columns (at most) of every source row,
    // for either orientation, 3 bytes each; then the cropped size x size result.
    plan.bytes +=
        3 * int64_t{config.size} * std::max(width, height) + 3 * int64_t{config.size} * config.size;
  }
  plan.bytes += 3 * plan.height * plan.width * static_cast<int64_t>(sizeof(float));  // The tensor.
  return plan;
}

absl::StatusOr<InputTransform> TransformOf(int64_t width, int64_t height,
                                           const PreprocessConfig& config, bool keep_size) {
  RETURN_IF_ERROR(ValidatePreprocessConfig(config));
  if (width < 1 || height < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("image is ", width, "x", height, ": sides must be >= 1"));
  }
  InputTransform t;
  if (keep_size) return t;
  ASSIGN_OR_RETURN(const EvalGeometry g, ComputeEvalGeometry(width, height, config));
  t.scale_x = static_cast<double>(g.out_w) / static_cast<double>(width);
  t.scale_y = static_cast<double>(g.out_h) / static_cast<double>(height);
  t.offset_x = static_cast<double>(g.crop.x);
  t.offset_y = static_cast<double>(g.crop.y);
  return t;
}

absl::StatusOr<at::Tensor> LoadImageTensor(const std::string& path,
                                           const PreprocessConfig& config) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open image '", path, "'"));
  const std::streamoff size = in.tellg();
  if (size > config.max_encoded_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("'", path, "': image is ", size,
                                                   " bytes, more than the limit of ",
                                                   config.max_encoded_bytes, " bytes"));
  }
  std::string bytes(size < 0 ? 0 : static_cast<size_t>(size), '\0');
  in.seekg(0);
  if (!in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()))) {
    return absl::NotFoundError(absl::StrCat("cannot read image '", path, "'"));
  }
  absl::StatusOr<at::Tensor> t = DecodeAndTransform(bytes, config);
  if (!t.ok()) {
    return absl::Status(t.status().code(), absl::StrCat("'", path, "': ", t.status().message()));
  }
  return t;
}

}  // namespace convnext
