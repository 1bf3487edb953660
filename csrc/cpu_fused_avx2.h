// AVX2 fast path of the CPU pulsed update, exact mode (included by cpu_ops.cpp after
// cpu_fused_avx512.h; built only where that one is not): one (row, sample) of a KIND_LINEAR tile in
// the pulsed mode with pulse trains of at most 32 slots, without write noise — the eight-lane twin of
// cpu_fused_avx512.h's fused_jobs / fused_apply (same names and contracts, so cpu_ops.cpp's
// run_row_fused and run_flat_fused drive either):
//   pass 1  coincidences of the row's d train with every active column (popcount of x AND d: lanes::popcount),
//           compressed into a dense job list (column, pulse count, x sign) through a permutation
//           table (AVX2 has no compress-store);
//   pass 2  8 jobs at a time: gather the device state and parameters, draw the cycle-to-cycle normals
//           in registers (Philox4x32-10 on 8 counters, Box–Muller in double with glibc's libmvec:
//           box_muller_many's AVX2 operations), apply the pulses pulse-major (lane t takes pulse q
//           while q < n_t) with the float operations of device_step_t, and store state, visible
//           weight and pulse counts back lane by lane (AVX2 has no scatter; the lanes are distinct
//           elements).
// It replaces the generic job path's per-(row, sample) job arrays, counting sort and separate noise
// buffers; the numbers are the generic path's, bit for bit (the same Philox words, the same double
// Box–Muller with the same vector libm, the same float steps in the same order).
// AGG (the aggregated mode's one-sample calls, e.g. the TT family's C writes; where cpu_agg_lanes.h has
// its libmvec lanes, AT_LANES_MANY): each job's n pulses as moments from (w, 0) with cpu_agg_lanes.h's
// Group operations (the contract's, so the generic path's numbers), then one aggregate_normal each.
// Batches in the aggregated mode take cpu_agg_lanes.h's path.
// The same 8-lane Philox and Box–Muller also serve, on these CPUs, phase 1 (entries8: probabilities,
// signs and Bernoulli thresholds of the trains), the aggregated mode's final normals of a row
// (aggregate_normals8) and the IO-noise grids (cpu_ops.cpp philox_grid_rows) — each cpu_fused_avx512.h's
// 16-lane twin's contract.
// Needs AVX2 and libmvec; -DANALOGTRAIN_GENERIC_ONLY (ANALOGTRAIN_KERNEL_PATHS=generic) leaves it out.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu_agg_lanes.h"
#include "cpu_fused_avx512.h"
#include "device_step.h"

#if !AT_FUSED_AVX512 && defined(ANALOGTRAIN_LIBMVEC) && defined(__AVX2__) && !defined(ANALOGTRAIN_GENERIC_ONLY)
#define AT_FUSED_AVX2 1
#include <immintrin.h>

extern "C" __m256d _ZGVdN4v_log(__m256d);
extern "C" __m256d _ZGVdN4v_cos(__m256d);
extern "C" __m256d _ZGVdN4v_sin(__m256d);

namespace analogtrain {

// Lanes q < remaining of an 8-lane step as a vector mask (all-ones lanes).
inline __m256i tail_mask8(int64_t remaining) {
  const int r = remaining >= 8 ? 8 : (remaining > 0 ? static_cast<int>(remaining) : 0);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(r), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// The store of an 8-lane step with `remaining` entries left: a plain unaligned store when all 8 lanes
// are in range, the masked store only for the tail (vpmaskmov stores are microcoded on AMD Zen, a dozen
// cycles or more each; masked loads are cheap everywhere).
inline void store8_ps(float* p, __m256 v, int64_t remaining) {
  if (remaining >= 8)
    _mm256_storeu_ps(p, v);
  else
    _mm256_maskstore_ps(p, tail_mask8(remaining), v);
}
inline void store8_epi32(void* p, __m256i v, int64_t remaining) {
  if (remaining >= 8)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v);
  else
    _mm256_maskstore_epi32(reinterpret_cast<int*>(p), tail_mask8(remaining), v);
}

// 32×32 → 64-bit products of 8 lanes: hi and lo words (philox.h mulhilo32 on every lane).
inline void mulhilo8(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  // pe: even lanes' products (low dword at 2k, high at 2k+1); po: the odd lanes', at the same places
  const __m256i pe = _mm256_mul_epu32(a, m);
  const __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  lo = _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
}

// philox_block(seed, offset, stream, a = e[lane], b, blk) on 8 lanes.
inline void philox8(__m256i e, uint32_t stream, uint32_t blk, uint32_t b, uint64_t seed, uint64_t offset,
                    __m256i& r0, __m256i& r1, __m256i& r2, __m256i& r3) {
  __m256i c0 = e;
  __m256i c1 = _mm256_set1_epi32(static_cast<int>(((stream & 0xFFu) << 24) | (blk & 0xFFFFFFu)));
  __m256i c2 = _mm256_set1_epi32(static_cast<int>(b));
  __m256i c3 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset & 0xFFFFFFFFull)));
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  for (int r = 0; r < 10; ++r) {
    __m256i hi0, lo0, hi1, lo1;
    mulhilo8(c0, m0, hi0, lo0);
    mulhilo8(c2, m1, hi1, lo1);
    c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(k0)));
    c1 = lo1;
    c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(k1)));
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  r0 = c0, r1 = c1, r2 = c2, r3 = c3;
}

// The one-word trains (bl <= 32 slots) of n entries with Bernoulli thresholds thr (the contract of
// cpu_ops.cpp trains_many and cpu_fused_avx512.h trains16): entry q < n is Philox counter a = a0 + q of
// sample b, and its slot s fires when (word s & 3 of block s >> 2) >> 8 < thr[q]. 8 entries per philox8; a
// group whose thresholds are all 0 (never fires) draws nothing. (r >> 8 < 2^24 and thr <= 2^24: a signed
// compare is exact.)
inline void trains8(const uint32_t* thr, int n, uint32_t a0, uint32_t stream, uint32_t b, int bl, uint64_t seed,
                    uint64_t offset, uint32_t* out) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const int nblk = (bl + 3) >> 2;
  for (int q0 = 0; q0 < n; q0 += 8) {
    const __m256i lm = tail_mask8(n - q0);
    const __m256i t = _mm256_maskload_epi32(reinterpret_cast<const int*>(thr + q0), lm);
    __m256i bits = _mm256_setzero_si256();
    if (!_mm256_testz_si256(t, t)) {
      const __m256i a = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(a0 + static_cast<uint32_t>(q0))), lane);
      for (int blk = 0; blk < nblk; ++blk) {
        __m256i r[4];
        philox8(a, stream, static_cast<uint32_t>(blk), b, seed, offset, r[0], r[1], r[2], r[3]);
        for (int q = 0; q < 4; ++q) {
          const int k = (blk << 2) + q;
          if (k >= bl) break;
          const __m256i f = _mm256_cmpgt_epi32(t, _mm256_srli_epi32(r[q], 8));
          bits = _mm256_or_si256(bits, _mm256_and_si256(f, _mm256_set1_epi32(static_cast<int>(1u << k))));
        }
      }
    }
    store8_epi32(out + q0, bits, n - q0);
  }
}

// ((r >> 8) + 0.5)·2^-24 of the 4 words of half h (0: lanes 0-3, 1: lanes 4-7), exact in double
// (philox.h word_to_uniform_d; r >> 8 < 2^24 converts exactly as int32).
inline __m256d uniform4d(__m256i r, int h) {
  const __m256i a = _mm256_srli_epi32(r, 8);
  const __m128i x = h ? _mm256_extracti128_si256(a, 1) : _mm256_castsi256_si128(a);
  return _mm256_mul_pd(_mm256_add_pd(_mm256_cvtepi32_pd(x), _mm256_set1_pd(0.5)),
                       _mm256_set1_pd(5.9604644775390625e-08));
}

// word_to_uniform on 8 lanes: the exact double rounded to float.
inline __m256 uniform8(__m256i r) {
  return _mm256_set_m128(_mm256_cvtpd_ps(uniform4d(r, 1)), _mm256_cvtpd_ps(uniform4d(r, 0)));
}

// Box–Muller of the word pairs (w0, w1) of 8 lanes in double (philox.h box_muller): rad = sqrt(−2 log u0)
// and ang = 2π·u1 per half, then float(rad·cos ang) or float(rad·sin ang) on demand.
struct BM8 {
  __m256d rad[2], ang[2];
};

inline BM8 bm8_prepare(__m256i w0, __m256i w1) {
  const __m256d two_pi = _mm256_set1_pd(6.283185307179586), m2 = _mm256_set1_pd(-2.0);
  BM8 o;
  for (int h = 0; h < 2; ++h) {
    o.ang[h] = _mm256_mul_pd(two_pi, uniform4d(w1, h));
    o.rad[h] = _mm256_sqrt_pd(_mm256_mul_pd(m2, _ZGVdN4v_log(uniform4d(w0, h))));
  }
  return o;
}

inline __m256 bm8_normal(const BM8& b, bool use_sin) {
  __m128 lo, hi;
  if (use_sin) {
    lo = _mm256_cvtpd_ps(_mm256_mul_pd(b.rad[0], _ZGVdN4v_sin(b.ang[0])));
    hi = _mm256_cvtpd_ps(_mm256_mul_pd(b.rad[1], _ZGVdN4v_sin(b.ang[1])));
  } else {
    lo = _mm256_cvtpd_ps(_mm256_mul_pd(b.rad[0], _ZGVdN4v_cos(b.ang[0])));
    hi = _mm256_cvtpd_ps(_mm256_mul_pd(b.rad[1], _ZGVdN4v_cos(b.ang[1])));
  }
  return _mm256_set_m128(hi, lo);
}

// Probabilities, signs and Bernoulli thresholds of n train entries without res discretisation: the
// contract of cpu_fused_avx512.h entries16 (p = float(|v|·scale) from the double product, sg =
// sign(v)·slr·chop, t = bernoulli_threshold(p): (q − 1) plus the candidates q − 1, q, q + 1 of
// q = floor(p·2^24) whose f(c) = float((c + 0.5)·2^-24) < p), 8 entries at a time, 4 in double.
inline void entries8(const float* v, int n, double scale, float slr, const float* chop, float* p_out, float* sg_out,
                     uint32_t* thr) {
  const __m256d sc = _mm256_set1_pd(scale), two24 = _mm256_set1_pd(16777216.0), half = _mm256_set1_pd(0.5);
  const __m256d inv24 = _mm256_set1_pd(5.9604644775390625e-08), sat = _mm256_set1_pd(1.0 + 1e-7);
  const __m256d zd = _mm256_setzero_pd(), oned = _mm256_set1_pd(1.0);
  const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f), mone = _mm256_set1_ps(-1.0f);
  for (int q0 = 0; q0 < n; q0 += 8) {
    const __m256i lm = tail_mask8(n - q0);
    const __m256 x = _mm256_maskload_ps(v + q0, lm);
    __m256 sg = _mm256_blendv_ps(_mm256_blendv_ps(zero, mone, _mm256_cmp_ps(x, zero, _CMP_LT_OQ)), one,
                                 _mm256_cmp_ps(x, zero, _CMP_GT_OQ));
    sg = _mm256_mul_ps(sg, _mm256_set1_ps(slr));
    if (chop) sg = _mm256_mul_ps(sg, _mm256_maskload_ps(chop + q0, lm));
    store8_ps(sg_out + q0, sg, n - q0);
    const __m256 ax = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
    __m128 ph[2];
    __m128i th[2];
    for (int h = 0; h < 2; ++h) {
      const __m128 axh = h ? _mm256_extractf128_ps(ax, 1) : _mm256_castps256_ps128(ax);
      const __m128 pf = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_cvtps_pd(axh), sc));  // probability(): double -> float
      ph[h] = pf;
      const __m256d pfd = _mm256_cvtps_pd(pf);
      const __m256d qd = _mm256_min_pd(_mm256_max_pd(_mm256_floor_pd(_mm256_mul_pd(pfd, two24)), zd), two24);
      __m256d t = _mm256_sub_pd(qd, oned);
      for (int dc = -1; dc <= 1; ++dc) {
        const __m256d c = _mm256_add_pd(qd, _mm256_set1_pd(static_cast<double>(dc)));
        const __m128 fc = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_add_pd(c, half), inv24));
        const __m256d valid = _mm256_and_pd(_mm256_cmp_pd(c, zd, _CMP_GE_OQ), _mm256_cmp_pd(c, two24, _CMP_LT_OQ));
        const __m256d below = _mm256_and_pd(
            valid, _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm_castps_si128(_mm_cmp_ps(fc, pf, _CMP_LT_OQ)))));
        t = _mm256_add_pd(t, _mm256_and_pd(below, oned));
      }
      t = _mm256_blendv_pd(t, _mm256_add_pd(t, oned), _mm256_cmp_pd(qd, zd, _CMP_EQ_OQ));  // q = 0: no c < q − 1
      t = _mm256_blendv_pd(t, two24, _mm256_cmp_pd(pfd, sat, _CMP_GE_OQ));                // saturated
      t = _mm256_blendv_pd(t, zd, _mm256_cmp_pd(pfd, zd, _CMP_NGT_UQ));                   // !(p > 0)
      th[h] = _mm256_cvttpd_epi32(t);
    }
    store8_ps(p_out + q0, _mm256_set_m128(ph[1], ph[0]), n - q0);
    store8_epi32(thr + q0, _mm256_set_m128i(th[1], th[0]), n - q0);
  }
}

// One pulse on the lanes of mq (device_step_t<KIND_LINEAR, MULT, NOISE>, as step16): fac = 1 + σz,
// Δ = (s·w + c)·fac (mult) or s·w + c·fac, w ← clip(w + sg·Δ).
template <bool MULT, bool NOISE>
inline __m256 step8(__m256 w, __m256 mq, __m256 s, __m256 c, __m256 sg, __m256 bmn, __m256 bmx, __m256 sigma,
                    __m256 z) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 fac = NOISE ? _mm256_add_ps(one, _mm256_mul_ps(sigma, z)) : one;
  const __m256 sw = _mm256_mul_ps(s, w);
  const __m256 dlt = MULT ? _mm256_mul_ps(_mm256_add_ps(sw, c), fac) : _mm256_add_ps(sw, _mm256_mul_ps(c, fac));
  __m256 nw = _mm256_add_ps(w, _mm256_mul_ps(sg, dlt));
  nw = _mm256_max_ps(nw, bmn);  // nw > bmn ? nw : bmn (clip_bounds, NaN-propagation included)
  nw = _mm256_min_ps(nw, bmx);  // nw < bmx ? nw : bmx
  return _mm256_blendv_ps(w, nw, mq);
}

// aggregate_normal (device_step.h) of 8 arbitrary elements e: counter e >> 2, word pair (r0, r1) or
// (r2, r3) by bit 1 of e, cosine or sine by bit 0.
inline __m256 aggregate_normal8(__m256i e, uint64_t seed, uint64_t offset) {
  __m256i r0, r1, r2, r3;
  philox8(_mm256_srli_epi32(e, 2), S_PULSE_NOISE, 0u, 0u, seed, offset, r0, r1, r2, r3);
  const __m256i hi = _mm256_cmpeq_epi32(_mm256_and_si256(e, _mm256_set1_epi32(2)), _mm256_set1_epi32(2));
  const __m256i odd = _mm256_cmpeq_epi32(_mm256_and_si256(e, _mm256_set1_epi32(1)), _mm256_set1_epi32(1));
  const BM8 b = bm8_prepare(_mm256_blendv_epi8(r0, r2, hi), _mm256_blendv_epi8(r1, r3, hi));
  __m256 z = bm8_normal(b, false);
  if (!_mm256_testz_si256(odd, odd)) z = _mm256_blendv_ps(z, bm8_normal(b, true), _mm256_castsi256_ps(odd));
  return z;
}

// z[t] = aggregate_normal(e_begin + t) for t < n (device_step.h: counter e >> 2, normal e & 3 of its
// block), four consecutive elements per counter: one philox8, two logarithms and a cosine and a sine of
// each word pair make 32 normals, transposed from (normal, counter) to element order in registers.
// z needs room for n + 35 floats.
inline void aggregate_normals8(uint64_t seed, uint64_t offset, int64_t e_begin, int n, float* z) {
  const int64_t c_begin = e_begin >> 2;
  const int skip = static_cast<int>(e_begin & 3);  // z[0] is element 4·c_begin + skip
  alignas(32) float head[32];
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int t0 = 0; t0 < n + skip; t0 += 32) {
    __m256i r0, r1, r2, r3;
    philox8(_mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(c_begin + t0 / 4)), lane), S_PULSE_NOISE, 0u,
            0u, seed, offset, r0, r1, r2, r3);
    const BM8 b01 = bm8_prepare(r0, r1), b23 = bm8_prepare(r2, r3);
    const __m256 z0 = bm8_normal(b01, false), z1 = bm8_normal(b01, true);
    const __m256 z2 = bm8_normal(b23, false), z3 = bm8_normal(b23, true);
    // (z0 z1 | z2 z3) pairs of counters 0,1 / 2,3 (and 4,5 / 6,7 in the high halves), then the quads
    const __m256d a = _mm256_castps_pd(_mm256_unpacklo_ps(z0, z1)), b = _mm256_castps_pd(_mm256_unpackhi_ps(z0, z1));
    const __m256d c = _mm256_castps_pd(_mm256_unpacklo_ps(z2, z3)), d = _mm256_castps_pd(_mm256_unpackhi_ps(z2, z3));
    const __m256 q04 = _mm256_castpd_ps(_mm256_unpacklo_pd(a, c)), q15 = _mm256_castpd_ps(_mm256_unpackhi_pd(a, c));
    const __m256 q26 = _mm256_castpd_ps(_mm256_unpacklo_pd(b, d)), q37 = _mm256_castpd_ps(_mm256_unpackhi_pd(b, d));
    float* dst = t0 == 0 ? head : z - skip + t0;
    _mm256_storeu_ps(dst, _mm256_permute2f128_ps(q04, q15, 0x20));       // counters 0, 1
    _mm256_storeu_ps(dst + 8, _mm256_permute2f128_ps(q26, q37, 0x20));   // 2, 3
    _mm256_storeu_ps(dst + 16, _mm256_permute2f128_ps(q04, q15, 0x31));  // 4, 5
    _mm256_storeu_ps(dst + 24, _mm256_permute2f128_ps(q26, q37, 0x31));  // 6, 7
    if (t0 == 0)
      for (int k = skip; k < 32; ++k) z[k - skip] = head[k];
  }
}

// The permutation that packs the set lanes of an 8-bit mask to the front: lane k of the result reads
// source lane (idx[m] >> 3k) & 7. Built at compile time.
struct Compress8 {
  uint32_t idx[256];
  constexpr Compress8() : idx() {
    for (int m = 0; m < 256; ++m) {
      uint32_t p = 0;
      int k = 0;
      for (int l = 0; l < 8; ++l)
        if ((m >> l) & 1) p |= static_cast<uint32_t>(l) << (3 * k++);
      idx[m] = p;
    }
  }
};
inline constexpr Compress8 kCompress8{};

inline __m256i compress_perm8(unsigned m) {
  return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(kCompress8.idx[m])),
                                            _mm256_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21)),
                          _mm256_set1_epi32(7));
}

// max over the 8 lanes
inline int hmax8(__m256i v) {
  __m128i m = _mm_max_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  m = _mm_max_epi32(m, _mm_shuffle_epi32(m, 0x4E));
  m = _mm_max_epi32(m, _mm_shuffle_epi32(m, 0xB1));
  return _mm_cvtsi128_si32(m);
}

// Pass 1: the jobs of (row, sample b): active columns act[0..na) with x trains xb (one word each) and
// signs xs; returns the number of jobs (n > 0) written to J (cpu_fused_avx512.h fused_jobs' contract),
// and sets J.nmax, their largest pulse count (order_dense_jobs in cpu_ops.cpp).
inline int fused_jobs(const int32_t* act, const uint32_t* xb, const float* xs, int na, uint32_t d0, FusedJobs& J) {
  if (static_cast<int>(J.j.size()) < na + 8) {  // (full 8-lane stores past the count)
    J.j.resize(na + 8);
    J.n.resize(na + 8);
    J.sx.resize(na + 8);
  }
  const __m256i dv = _mm256_set1_epi32(static_cast<int>(d0)), zero = _mm256_setzero_si256();
  __m256i vmax = zero;
  int cnt = 0;
  for (int t = 0; t < na; t += 8) {
    const __m256i lm = tail_mask8(na - t);
    const __m256i xw = _mm256_maskload_epi32(reinterpret_cast<const int*>(xb + t), lm);  // 0 past na
    const __m256i n = (__m256i)lanes::popcount((lanes::vi)_mm256_and_si256(xw, dv));
    const unsigned m = static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(n, zero))));
    if (!m) continue;
    vmax = _mm256_max_epi32(vmax, n);
    const __m256i p = compress_perm8(m);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(J.j.data() + cnt),
                        _mm256_permutevar8x32_epi32(_mm256_maskload_epi32(act + t, lm), p));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(J.n.data() + cnt), _mm256_permutevar8x32_epi32(n, p));
    _mm256_storeu_ps(J.sx.data() + cnt, _mm256_permutevar8x32_ps(_mm256_maskload_ps(xs + t, lm), p));
    cnt += __builtin_popcount(m);
  }
  J.nmax = hmax8(vmax);
  return cnt;
}

// _mm256_mask_i32gather_ps(zero, base, idx, m, 4): the lanes of m loaded, the others 0. Built for AMD Zen 1-3
// (-march=native there tunes for znver1-3) as eight scalar loads: those cores run a ymm gather as a long
// microcoded sequence, and fused_apply's six gathers per 8 jobs made the 512x512 sparse pulsed update ~8 %
// slower than the scalar loads on a Zen 3 host. Every lane's index must be in range, the masked-off ones
// included (fused_apply's tail lanes index the row's first element).
inline __m256 gather8_ps(const float* base, __m256i idx, __m256 m) {
#if defined(__tune_znver1__) || defined(__tune_znver2__) || defined(__tune_znver3__)
  alignas(32) int32_t q[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(q), idx);
  const __m256 v = _mm256_setr_ps(base[q[0]], base[q[1]], base[q[2]], base[q[3]], base[q[4]], base[q[5]],
                                  base[q[6]], base[q[7]]);
  return _mm256_and_ps(v, m);
#else
  return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), base, idx, m, 4);
#endif
}

// Pass 2 on the jobs of (row, sample b). d sign sdi (±1, times chopper). Returns the pulses applied.
// AGG (one-sample calls of the aggregated mode; built where AT_LANES_MANY): the moments of each job's
// n pulses from (w, 0) and one aggregate_normal, the contract of run_row's aggregated branch for B = 1.
template <bool MULT, bool NOISE, bool AGG>
int64_t fused_apply(const FusedRow& R, const FusedJobs& J, int nj, float sdi, uint32_t b, const DeviceGlobals& g,
                    const UpdateArgs& u) {
  static_assert(!AGG || AT_LANES_MANY, "the aggregated one-sample path needs cpu_agg_lanes.h's libmvec lanes");
  const __m256 zero = _mm256_setzero_ps(), sigma = _mm256_set1_ps(g.sigma), sdv = _mm256_set1_ps(sdi);
  const __m256 plus = _mm256_set1_ps(1.0f), minus = _mm256_set1_ps(-1.0f);
  const __m256i rowv = _mm256_set1_epi32(R.row), plv = _mm256_set1_epi32(R.plane);
  alignas(32) int32_t e_out[8], j_out[8], n_out[8];
  alignas(32) float st_out[8];
  int64_t tot = 0;
  for (int t = 0; t < nj; t += 8) {
    const int nl = nj - t < 8 ? nj - t : 8;
    const __m256i mi = tail_mask8(nl);
    const __m256 m = _mm256_castsi256_ps(mi);
    const __m256i j = _mm256_maskload_epi32(J.j.data() + t, mi);
    const __m256i n = _mm256_maskload_epi32(J.n.data() + t, mi);  // 0 on the tail lanes: no pulse
    const __m256 sx = _mm256_maskload_ps(J.sx.data() + t, mi);
    const __m256 up = _mm256_and_ps(m, _mm256_cmp_ps(_mm256_mul_ps(sdv, sx), zero, _CMP_LT_OQ));  // sdi·sx < 0
    const __m256i e = _mm256_add_epi32(j, rowv);
    const __m256 wst = gather8_ps(R.state, e, m);
    const __m256 ref = gather8_ps(R.ref, e, m);
    const __m256 bmn = gather8_ps(R.bmin, e, m);
    const __m256 bmx = gather8_ps(R.bmax, e, m);
    // the slope and the scale of the lane's direction: plane index by up/down
    const __m256i upi = _mm256_castps_si256(up);
    const __m256i es = _mm256_add_epi32(e, _mm256_mullo_epi32(plv, _mm256_blendv_epi8(
                                               _mm256_set1_epi32(P_SLOPE_DOWN), _mm256_set1_epi32(P_SLOPE_UP), upi)));
    const __m256i ec = _mm256_add_epi32(e, _mm256_mullo_epi32(plv, _mm256_blendv_epi8(
                                               _mm256_set1_epi32(P_SCALE_DOWN), _mm256_set1_epi32(P_SCALE_UP), upi)));
    const __m256 s = gather8_ps(R.params, es, m);
    const __m256 c = gather8_ps(R.params, ec, m);
    const __m256 sg = _mm256_blendv_ps(minus, plus, up);
    __m256 wd = _mm256_add_ps(wst, ref);
    if (AGG) {
#if AT_LANES_MANY
      using lanes::vf;
      using lanes::vi;
      lanes::Group G;  // the jobs' parameters, each lane's own direction in both slots
      G.init<MULT>(8, (vf)ref, (vf)bmn, (vf)bmx, (vf)s, (vf)s, (vf)c, (vf)c, g);
      vf mm = (vf)wd, vv = lanes::splat(0.0f);
      G.pulses<MULT, NOISE>((vi)mi, (vi)_mm256_castps_si256(up), (vi)n, mm, vv);  // (AT_LANES_MANY: all lanes)
      wd = (__m256)mm;
      if (NOISE) wd = _mm256_add_ps(wd, _mm256_mul_ps(_mm256_sqrt_ps((__m256)vv), aggregate_normal8(e, u.seed, u.offset)));
      wd = _mm256_min_ps(_mm256_max_ps(wd, bmn), bmx);  // aggregate_draw's clip
#endif
    }
    const int maxn = AGG ? 0 : hmax8(n);
    BM8 bm;
    __m256i r2 = _mm256_setzero_si256(), r3 = _mm256_setzero_si256();
    for (int q = 0; q < maxn; ++q) {
      const __m256 mq = _mm256_castsi256_ps(_mm256_cmpgt_epi32(n, _mm256_set1_epi32(q)));
      __m256 z = zero;
      if (NOISE) {  // draw q of element e: word pair (r0, r1) of block q >> 2 for q & 3 < 2, else (r2, r3)
        switch (q & 3) {
          case 0: {
            __m256i r0, r1;
            philox8(e, S_PULSE_NOISE, static_cast<uint32_t>(q >> 2), b, u.seed, u.offset, r0, r1, r2, r3);
            bm = bm8_prepare(r0, r1);
            z = bm8_normal(bm, false);
            break;
          }
          case 1:
            z = bm8_normal(bm, true);
            break;
          case 2:
            bm = bm8_prepare(r2, r3);
            z = bm8_normal(bm, false);
            break;
          default:
            z = bm8_normal(bm, true);
        }
      }
      wd = step8<MULT, NOISE>(wd, mq, s, c, sg, bmn, bmx, sigma, z);
    }
    _mm256_store_ps(st_out, _mm256_sub_ps(wd, ref));
    _mm256_store_si256(reinterpret_cast<__m256i*>(e_out), e);
    _mm256_store_si256(reinterpret_cast<__m256i*>(j_out), j);
    _mm256_store_si256(reinterpret_cast<__m256i*>(n_out), n);
    for (int l = 0; l < nl; ++l) {
      R.state[e_out[l]] = st_out[l];
      if (R.vis) R.vis[e_out[l]] = st_out[l];
      R.prow[j_out[l]] += static_cast<float>(n_out[l]);
      tot += n_out[l];
    }
  }
  return tot;
}

}  // namespace analogtrain

#else
#define AT_FUSED_AVX2 0
#endif
