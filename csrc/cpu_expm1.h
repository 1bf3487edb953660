// expm1 for the AVX-512 path's aggregated update (device_step.h: E = expm1(n·log1p α), and the noise
// sum's expm1(n·log1p ε), of a sample that brings an element more than AGG_POLY_MAX pulses: dense
// updates, once per element and sample), inline on 16 lanes instead of libmvec's expm1f: a vector-libm
// call clobbers every zmm register, so each such sample spilled and reloaded the lanes' moments and
// parameters around it (512x512 dense aggregated update on a Zen 4 host: 31 -> 23 ms).
//
// expm1_16 and its scalar twin at_expm1f (the f_expm1 of device_step.h in these builds: the generic
// job path, one-sample calls) take the same operations in the same order — fused multiply-adds as
// std::fma, roundscale as nearbyint, scalef as ldexp — so every CPU path of the build gives the same
// numbers. Within about one ulp of expm1; the contract allows libm's rounding differences between CPU,
// CUDA and torch.
//
//   x clamped to [-30, 89] (a NaN passes): below -17.4 expm1 is -1 in float, above 88.73 it overflows
//   k = rint(x / ln 2), r = x - k·ln 2 in two parts (LN2_HI has 15 significant bits and |k| <= 129, so
//       k·LN2_HI is exact; Cody–Waite), |r| <= ln 2 / 2 (+ rounding)
//   p = expm1(r) = r + r²·(1/2! + r(1/3! + ... + r/8!)): the Taylor series to r^8, whose remainder is
//       below 1e-9 of p for |r| <= ln 2 / 2
//   expm1(x) = 2^k·p + (2^k - 1) = 2·(h·p + (h - 1/2)) with h = 2^(k-1): the doubling overflows to inf
//       where expm1 does (no inf - inf), and k = 0 returns p exactly
#pragma once

#include "cpu_simd.h"

#if AT_FUSED_AVX512
#include <immintrin.h>

#include <cmath>

namespace analogtrain {
namespace expm1_c {
constexpr float LO = -30.0f, HI = 89.0f, LOG2E = 1.44269504f;
constexpr float LN2_HI = 0.693145751953125f, LN2_LO = 1.42860677e-06f;
constexpr float C[7] = {2.48015873e-05f, 1.98412698e-04f, 1.38888889e-03f, 8.33333333e-03f,  // 1/8! ... 1/5!
                        4.16666667e-02f, 1.66666667e-01f, 0.5f};                             // 1/4! ... 1/2!
}  // namespace expm1_c

inline float at_expm1f(float x) {
  using namespace expm1_c;
  x = LO > x ? LO : x;  // _mm512_max_ps(LO, x)
  x = HI < x ? HI : x;  // _mm512_min_ps(HI, x)
  const float k = std::nearbyint(x * LOG2E);
  const float r = std::fma(-k, LN2_LO, std::fma(-k, LN2_HI, x));
  float q = C[0];
  for (int i = 1; i < 7; ++i) q = std::fma(q, r, C[i]);
  const float p = std::fma(q, r * r, r);
  const float h = std::ldexp(1.0f, static_cast<int>(k) - 1);
  const float t = std::fma(p, h, h - 0.5f);
  return t + t;
}

inline __m512 expm1_16(__m512 x) {
  using namespace expm1_c;
  x = _mm512_max_ps(_mm512_set1_ps(LO), x);
  x = _mm512_min_ps(_mm512_set1_ps(HI), x);
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(LN2_LO), _mm512_fnmadd_ps(k, _mm512_set1_ps(LN2_HI), x));
  __m512 q = _mm512_set1_ps(C[0]);
  for (int i = 1; i < 7; ++i) q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(C[i]));
  const __m512 p = _mm512_fmadd_ps(q, _mm512_mul_ps(r, r), r);
  const __m512 h = _mm512_scalef_ps(_mm512_set1_ps(1.0f), _mm512_sub_ps(k, _mm512_set1_ps(1.0f)));
  const __m512 t = _mm512_fmadd_ps(p, h, _mm512_sub_ps(h, _mm512_set1_ps(0.5f)));
  return _mm512_add_ps(t, t);
}

// expm1_16 for arguments with |x·LOG2E| < 1/2, where k = 0: its operations with k = 0 substituted, for
// about half of them. The clamp does nothing there, r = x (the reduction adds k·ln 2 = ±0, which maps a
// zero x to +0, and a zero r gives p = +0 either way), h = 2^-1 and h − 1/2 = +0, so the result is
// bit-identical to expm1_16(x) — the caller guarantees the range (agg_lanes_closed: every lane's
// |log1p α| small enough for a whole group).
inline __m512 expm1_16_k0(__m512 x) {
  using namespace expm1_c;
  __m512 q = _mm512_set1_ps(C[0]);
  for (int i = 1; i < 7; ++i) q = _mm512_fmadd_ps(q, x, _mm512_set1_ps(C[i]));
  const __m512 p = _mm512_fmadd_ps(q, _mm512_mul_ps(x, x), x);
  const __m512 t = _mm512_fmadd_ps(p, _mm512_set1_ps(0.5f), _mm512_setzero_ps());
  return _mm512_add_ps(t, t);
}

}  // namespace analogtrain
#endif
