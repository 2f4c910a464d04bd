#include "model/layer_norm_rows.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace convnext {
namespace {

#define CONVNEXT_AVX512 __attribute__((target("avx512f")))
#define CONVNEXT_AVX512_BF16 __attribute__((target("avx512f,avx512bf16,avx512bw,avx512vl")))

// The mask of the first `n` (< 16) lanes.
inline __mmask16 FirstLanes(int64_t n) { return static_cast<__mmask16>((1u << n) - 1); }

// The sum of the 16 lanes (through memory: GCC 12's _mm512_reduce_add_ps warns of an
// uninitialised register in its own header).
CONVNEXT_AVX512 inline float SumLanes(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  float sum = 0;
  for (float lane : lanes) sum += lane;
  return sum;
}

// One row's mean and 1 / sqrt(variance + eps).
CONVNEXT_AVX512 inline void RowStatistics(const float* x, int64_t c, float eps, float* mean,
                                          float* rstd) {
  const int64_t full = c / 16 * 16;
  const __mmask16 tail = FirstLanes(c - full);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t i = 0; i < full; i += 16) sum = _mm512_add_ps(sum, _mm512_loadu_ps(x + i));
  if (tail != 0) sum = _mm512_add_ps(sum, _mm512_maskz_loadu_ps(tail, x + full));
  const float m = SumLanes(sum) / static_cast<float>(c);
  const __m512 vm = _mm512_set1_ps(m);
  __m512 sq = _mm512_setzero_ps();
  for (int64_t i = 0; i < full; i += 16) {
    const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(x + i), vm);
    sq = _mm512_fmadd_ps(d, d, sq);
  }
  if (tail != 0) {
    const __m512 d = _mm512_maskz_sub_ps(tail, _mm512_maskz_loadu_ps(tail, x + full), vm);
    sq = _mm512_fmadd_ps(d, d, sq);
  }
  const float var = SumLanes(sq) / static_cast<float>(c);
  *mean = m;
  *rstd = 1.0f / std::sqrt(var + eps);
}

// (x - mean) * rstd * gamma + beta for lanes [i, i + 16) (masked).
CONVNEXT_AVX512 inline __m512 Normalize16(const float* x, const float* gamma, const float* beta,
                                          int64_t i, __mmask16 lanes, __m512 mean, __m512 rstd) {
  const __m512 v = _mm512_maskz_loadu_ps(lanes, x + i);
  const __m512 scale = _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, gamma + i), rstd);
  return _mm512_fmadd_ps(_mm512_sub_ps(v, mean), scale, _mm512_maskz_loadu_ps(lanes, beta + i));
}

CONVNEXT_AVX512 void NormalizeRowsF32(const float* src, float* dst, int64_t begin, int64_t end,
                                      int64_t c, const float* gamma, const float* beta, float eps) {
  const int64_t full = c / 16 * 16;
  const __mmask16 tail = FirstLanes(c - full);
  for (int64_t r = begin; r < end; ++r) {
    const float* x = src + r * c;
    float* y = dst + r * c;
    float mean = 0, rstd = 0;
    RowStatistics(x, c, eps, &mean, &rstd);
    const __m512 vm = _mm512_set1_ps(mean), vr = _mm512_set1_ps(rstd);
    for (int64_t i = 0; i < full; i += 16) {
      _mm512_storeu_ps(y + i, Normalize16(x, gamma, beta, i, 0xFFFF, vm, vr));
    }
    if (tail != 0) {
      _mm512_mask_storeu_ps(y + full, tail, Normalize16(x, gamma, beta, full, tail, vm, vr));
    }
  }
}

CONVNEXT_AVX512_BF16 void NormalizeRowsBf16(const float* src, uint16_t* dst, int64_t begin,
                                            int64_t end, int64_t c, const float* gamma,
                                            const float* beta, float eps) {
  const int64_t full = c / 16 * 16;
  const __mmask16 tail = FirstLanes(c - full);
  for (int64_t r = begin; r < end; ++r) {
    const float* x = src + r * c;
    uint16_t* y = dst + r * c;
    float mean = 0, rstd = 0;
    RowStatistics(x, c, eps, &mean, &rstd);
    const __m512 vm = _mm512_set1_ps(mean), vr = _mm512_set1_ps(rstd);
    for (int64_t i = 0; i < full; i += 16) {
      const __m256bh b = _mm512_cvtneps_pbh(Normalize16(x, gamma, beta, i, 0xFFFF, vm, vr));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), reinterpret_cast<const __m256i&>(b));
    }
    if (tail != 0) {
      const __m256bh b = _mm512_cvtneps_pbh(Normalize16(x, gamma, beta, full, tail, vm, vr));
      _mm256_mask_storeu_epi16(y + full, tail, reinterpret_cast<const __m256i&>(b));
    }
  }
}

// Rows per task: about 16 K elements, so that small stages are not split into slivers.
int64_t Grain(int64_t c) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(c, 1)); }

}  // namespace

bool LayerNormRowsAvailable(bool bf16_output) {
  static const bool f32 = __builtin_cpu_supports("avx512f");
  static const bool bf16 = f32 && __builtin_cpu_supports("avx512bf16") &&
                           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  return bf16_output ? bf16 : f32;
}

void LayerNormRows(const float* src, float* dst, int64_t rows, int64_t c, const float* gamma,
                   const float* beta, float eps) {
  at::parallel_for(0, rows, Grain(c), [&](int64_t begin, int64_t end) {
    NormalizeRowsF32(src, dst, begin, end, c, gamma, beta, eps);
  });
}

void LayerNormRowsToBf16(const float* src, uint16_t* dst, int64_t rows, int64_t c,
                         const float* gamma, const float* beta, float eps) {
  at::parallel_for(0, rows, Grain(c), [&](int64_t begin, int64_t end) {
    NormalizeRowsBf16(src, dst, begin, end, c, gamma, beta, eps);
  });
}

void LayerNormRowsOnThisThread(const float* src, float* dst, int64_t rows, int64_t c,
                               const float* gamma, const float* beta, float eps) {
  NormalizeRowsF32(src, dst, 0, rows, c, gamma, beta, eps);
}

void LayerNormRowsToBf16OnThisThread(const float* src, uint16_t* dst, int64_t rows, int64_t c,
                                     const float* gamma, const float* beta, float eps) {
  NormalizeRowsBf16(src, dst, 0, rows, c, gamma, beta, eps);
}

}  // namespace convnext
