// The exact (erf) GELU on 16 float32 lanes, for the fast path's own kernels (model/amx_mlp.h,
// model/avx512_mlp.h), which apply it to a block of a product while it is still in the cache.
//
// Numerics: x * Phi(x), with Phi(-|x|) = erfc(|x| / sqrt 2) / 2 and erfc(z) = t P(t) exp(-z^2),
// t = 1 / (1 + p z) (Abramowitz & Stegun 7.1.26, absolute error below 1.5e-7): no cancellation for
// negative x. exp by 2^n * 2^f, 2^f by its Taylor polynomial (relative error about 1e-7). z is
// clamped to 6 (|x| <= 8.49), where Phi(-|x|) is 1e-17: below, x Phi(x) is 1e-16 at most, not the
// denormal values (a microcode assist each, 2x slower on random-weight models' activations) that
// the unclamped exp, erfc and product reach. The tests of both kernels hold it to ATen's gelu.
//
// GeluForBfloat16 (the AMX kernel, whose GELU outputs are rounded to bfloat16, a relative step of
// 2^-8) leaves out what only float32 outputs need: the Newton step after rcp14 (relative error
// 2^-14) and the exp polynomial's last two terms (relative error 4e-5): about 1e-4 of Phi(-|x|),
// 2.5e-5 of gelu(x) at most, against bfloat16's 3.9e-3. Eight fewer operations in about thirty.
//
// Needs AVX-512F; the functions are inlined into kernels compiled for it (and more).
#ifndef CONVNEXT_MODEL_GELU_AVX512_H_
#define CONVNEXT_MODEL_GELU_AVX512_H_

#include <immintrin.h>

namespace convnext {
namespace gelu_avx512 {

#define CONVNEXT_GELU_AVX512 __attribute__((target("avx512f"), always_inline))

// All 16 lanes. The zero-masked forms of min, rcp14, roundscale and scalef are used: GCC 12's
// unmasked ones start from _mm512_undefined_ps() and warn of it (-Wuninitialized).
constexpr __mmask16 kAllLanes = 0xffff;

// exp(y) for -87 <= y <= 0 (no denormal results): 2^f by its Taylor polynomial of degree 6
// (relative error about 1e-7) or, kShort, 4 (4e-5).
template <bool kShort>
CONVNEXT_GELU_AVX512 inline __m512 ExpNonPositive(__m512 y) {
  const __m512 t = _mm512_mul_ps(y, _mm512_set1_ps(1.44269504088896341f));
  const __m512 n =
      _mm512_maskz_roundscale_ps(kAllLanes, t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p;
  if constexpr (kShort) {
    p = _mm512_set1_ps(9.6181291076284772e-3f);  // ln2^4 / 4!
  } else {
    p = _mm512_set1_ps(1.5403530393381609e-4f);  // ln2^6 / 6!
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428443e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-3f));
  }
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_maskz_scalef_ps(kAllLanes, p, n);
}

// gelu(x) = x * Phi(x), lane by lane; kShort: the shorter steps of GeluForBfloat16.
template <bool kShort>
CONVNEXT_GELU_AVX512 inline __m512 GeluSteps(__m512 x) {
  const __m512 z = _mm512_maskz_min_ps(
      kAllLanes, _mm512_mul_ps(_mm512_abs_ps(x), _mm512_set1_ps(0.70710678118654752f)),
      _mm512_set1_ps(6.0f));
  const __m512 d = _mm512_fmadd_ps(z, _mm512_set1_ps(0.3275911f), _mm512_set1_ps(1.0f));
  __m512 t = _mm512_maskz_rcp14_ps(kAllLanes, d);
  if constexpr (!kShort) {
    t = _mm512_mul_ps(t, _mm512_fnmadd_ps(d, t, _mm512_set1_ps(2.0f)));  // One Newton step.
  }
  __m512 p = _mm512_set1_ps(1.061405429f);
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
  p = _mm512_mul_ps(p, t);
  const __m512 erfc = _mm512_mul_ps(
      p, ExpNonPositive<kShort>(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(z, z))));
  const __m512 lower = _mm512_mul_ps(erfc, _mm512_set1_ps(0.5f));  // Phi(-|x|).
  const __mmask16 positive = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ);
  return _mm512_mul_ps(x, _mm512_mask_sub_ps(lower, positive, _mm512_set1_ps(1.0f), lower));
}

// For float32 outputs: absolute error of Phi below 1.5e-7.
CONVNEXT_GELU_AVX512 inline __m512 Gelu(__m512 x) { return GeluSteps<false>(x); }

// For outputs rounded to bfloat16 next (see the top of this file).
CONVNEXT_GELU_AVX512 inline __m512 GeluForBfloat16(__m512 x) { return GeluSteps<true>(x); }

#undef CONVNEXT_GELU_AVX512

}  // namespace gelu_avx512
}  // namespace convnext

#endif  // CONVNEXT_MODEL_GELU_AVX512_H_
