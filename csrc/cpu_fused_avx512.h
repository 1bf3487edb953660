// AVX-512 fast path of the CPU pulsed update (included by cpu_ops.cpp inside its anonymous namespace):
// one (row, sample) of a KIND_LINEAR tile in the pulsed mode with pulse trains of at most 32 slots.
//
// Same numbers as the generic path (apply_jobs / apply_pulses_t, and apply_aggregated_t under
// aggregation), only organised for 16 SIMD lanes with everything in registers:
//   pass 1  coincidences of every active column with this row's d train (vpopcntd), compressed into
//           a dense job list (column, pulse count, x sign);
//   pass 2  16 jobs at a time: gather the device state and parameters, draw the cycle-to-cycle normals
//           in-register (Philox4x32-10 on 16 counters, Box–Muller in double with glibc's vector libm:
//           the same double operations as philox.h's box_muller, rounded to float), apply the pulses
//           pulse-major (lane t takes pulse q while q < n_t) with the float operations of
//           device_step_t, and scatter the state, the visible weight and the pulse counts back.
// Lanes are distinct elements of one row, so the per-element sample order is untouched; the exact
// mode is bit-identical to the generic path (the tests compare both against the reference).
// Needs glibc's libmvec (the double _ZGVeN8v_log/cos/sin are declared by cpu_ops.cpp) and AVX-512
// F/DQ/VPOPCNTDQ; elsewhere (or built with ANALOGTRAIN_KERNEL_PATHS=generic or =portable:
// -DANALOGTRAIN_GENERIC_ONLY / -DANALOGTRAIN_NO_AVX512) AT_FUSED_AVX512 is 0 and the portable paths run
// (cpu_fused_avx2.h, cpu_agg_lanes.h, the generic job path).
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu_expm1.h"
#include "cpu_simd.h"
#include "device_step.h"

namespace analogtrain {

// The carry mode of the aggregated chopped_update_snapshots (both CPU paths): one pass over all samples
// of the batch's C calls, each element's moments carried across calls and finished (one normal, clip,
// store; moments restart from the stored value) only at an event — a transfer read of its slice — or
// at the end. Event q happens after the first pos[q] samples: the touched elements of slice slice[q]
// (column with `columns`, else row) are finished with the draws of op-call counter offset[q], then the
// slice's visible weight is copied to snaps[call[q]·L ..] (L = slice length). z: (nev, L) the finish
// normals of the slice's elements (filled when the device has noise). w: the visible weight (O, I).
struct CarryPlan {
  int nev = 0;
  std::vector<int> pos;
  std::vector<int64_t> slice, call;
  std::vector<uint64_t> offset;
  std::vector<float> z;
  bool columns = true;
  int64_t L = 0;
  float* snaps = nullptr;
  const float* w = nullptr;
};

// The inputs of one row's update that do not change from sample to sample.
struct FusedRow {
  int32_t row;              // i·I: flat index of the row's first element
  float* state;             // w_p (persistent weight) or w
  float* vis;               // w when w_p is given (no write noise): visible weight = state; else null
  const float* bmin;        // parameter planes (O·I floats each)
  const float* bmax;
  const float* sc_up;
  const float* sc_dn;
  const float* s_up;
  const float* s_dn;
  const float* ref;
  float* prow;              // pulse counts of this row (I floats, accumulated; null: fused_apply counts none)
  const float* params;      // all planes (NP, O, I): one gather picks slope/scale up or down per lane
  int32_t plane;            // O·I (NP·O·I < 2^31 on these paths: pick_path)
};

// Per-thread job list of one (row, sample).
struct FusedJobs {
  std::vector<int32_t> j, n;
  std::vector<float> sx;
  int nmax = 0;  // the jobs' largest pulse count (set by fused_jobs and run_flat_fused; read by order_dense_jobs)
};

}  // namespace analogtrain

// (cpu_simd.h: glibc >= 2.35, whose libmvec float log1pf this path calls)
#if AT_FUSED_AVX512

extern "C" __m512 _ZGVeN16v_log1pf(__m512);

namespace analogtrain {

// The aggregated sample loop's helpers must inline into it: an out-of-line call takes the address of the
// 16 lanes' state (AggLanes), which then lives in memory on every sample (measured ~25% slower when GCC
// stopped inlining agg_lanes_load / agg_lanes_finish after the carry mode was added).
#define AT_HOT_INLINE inline __attribute__((always_inline))

// Lanes q < remaining of a 16-lane step (all 16 when remaining >= 16, none when remaining <= 0).
inline __mmask16 tail_mask16(int64_t remaining) {
  if (remaining >= 16) return static_cast<__mmask16>(0xFFFF);
  return remaining > 0 ? static_cast<__mmask16>((1u << remaining) - 1u) : static_cast<__mmask16>(0);
}

// (0, 1, ..., 15): the lane offsets of 16 consecutive counters.
inline __m512i lane_index16() { return _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0); }

// ((r >> 8) + 0.5)·2^-24 of the 8 words of half h (0: lanes 0-7, 1: lanes 8-15), exact in double:
// philox.h's word_to_uniform_d.
inline __m512d uniform8d(__m512i r, int h) {
  const __m512i a = _mm512_srli_epi32(r, 8);
  const __m256i x = h ? _mm512_extracti64x4_epi64(a, 1) : _mm512_castsi512_si256(a);
  return _mm512_mul_pd(_mm512_add_pd(_mm512_cvtepu32_pd(x), _mm512_set1_pd(0.5)),
                       _mm512_set1_pd(5.9604644775390625e-08));
}

// word_to_uniform on 16 lanes: the exact double rounded to float.
inline __m512 uniform16(__m512i r) {
  return _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(uniform8d(r, 0))), _mm512_cvtpd_ps(uniform8d(r, 1)),
                            1);
}

// philox_block(seed, offset, stream, a = e[lane], b, blk) on 16 lanes. The rounds run on two halves,
// the even lanes and the odd lanes, each held in the low dwords of the eight 64-bit slots: the
// mulhilo32 of philox.h is then one _mm512_mul_epu32 (which reads only those low dwords) whose 64-bit
// product has the low word in place and the high word one 64-bit shift away, with no shuffle per round.
// The high dwords of the slots carry junk that no round reads; the lanes are interleaved back at the end.
inline void philox16(__m512i e, uint32_t stream, uint32_t blk, uint32_t b, uint64_t seed, uint64_t offset,
                     __m512i& r0, __m512i& r1, __m512i& r2, __m512i& r3) {
  const __m512i c1i = _mm512_set1_epi32(static_cast<int>(((stream & 0xFFu) << 24) | (blk & 0xFFFFFFu)));
  const __m512i c2i = _mm512_set1_epi32(static_cast<int>(b));
  const __m512i c3i = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset & 0xFFFFFFFFull)));
  __m512i c0[2] = {e, _mm512_srli_epi64(e, 32)}, c1[2] = {c1i, c1i}, c2[2] = {c2i, c2i}, c3[2] = {c3i, c3i};
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(0xCD9E8D57u));
  for (int r = 0; r < 10; ++r) {
    const __m512i kk0 = _mm512_set1_epi32(static_cast<int>(k0)), kk1 = _mm512_set1_epi32(static_cast<int>(k1));
    for (int h = 0; h < 2; ++h) {
      const __m512i p0 = _mm512_mul_epu32(c0[h], m0);  // lo0 in the low dword, hi0 in the high one
      const __m512i p1 = _mm512_mul_epu32(c2[h], m1);
      c0[h] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p1, 32), c1[h], kk0, 0x96);  // hi1 ^ c1 ^ k0
      c1[h] = p1;                                                                       // lo1
      c2[h] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p0, 32), c3[h], kk1, 0x96);  // hi0 ^ c3 ^ k1
      c3[h] = p0;                                                                       // lo0
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  // lane 2i: the low dword of slot i of the even half; lane 2i + 1: that of the odd half
  const auto merge = [](const __m512i* c) {
    return _mm512_mask_blend_epi32(static_cast<__mmask16>(0xAAAA), c[0], _mm512_slli_epi64(c[1], 32));
  };
  r0 = merge(c0);
  r1 = merge(c1);
  r2 = merge(c2);
  r3 = merge(c3);
}

// Box–Muller of the word pairs (w0, w1) of 16 lanes, in double as philox.h's box_muller:
// u = ((w >> 8) + 0.5)·2^-24 (exact), rad = sqrt(−2 log u0), ang = 2π·u1; rad and ang kept per half.
struct BM16 {
  __m512d rad[2], ang[2];
};

inline BM16 bm16_prepare(__m512i w0, __m512i w1) {
  const __m512d two_pi = _mm512_set1_pd(6.283185307179586), m2 = _mm512_set1_pd(-2.0);
  BM16 o;
  for (int h = 0; h < 2; ++h) {
    o.ang[h] = _mm512_mul_pd(two_pi, uniform8d(w1, h));
    o.rad[h] = _mm512_sqrt_pd(_mm512_mul_pd(m2, _ZGVeN8v_log(uniform8d(w0, h))));
  }
  return o;
}

// float(rad·cos(ang)) (use_sin false) or float(rad·sin(ang)) of the 16 lanes.
inline __m512 bm16_normal(const BM16& b, bool use_sin) {
  __m256 lo, hi;
  if (use_sin) {
    lo = _mm512_cvtpd_ps(_mm512_mul_pd(b.rad[0], _ZGVeN8v_sin(b.ang[0])));
    hi = _mm512_cvtpd_ps(_mm512_mul_pd(b.rad[1], _ZGVeN8v_sin(b.ang[1])));
  } else {
    lo = _mm512_cvtpd_ps(_mm512_mul_pd(b.rad[0], _ZGVeN8v_cos(b.ang[0])));
    hi = _mm512_cvtpd_ps(_mm512_mul_pd(b.rad[1], _ZGVeN8v_cos(b.ang[1])));
  }
  return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
}

// z[t] = aggregate_normal(e_begin + t) (device_step.h: counter a = e >> 2, normal number e & 3 of the
// block — cos and sin of word pair (r0, r1), then of (r2, r3) —, i.e. rng.normal's draw numbering) for
// t < n: the aggregated mode's final draws, four consecutive elements per Philox call, so one philox16,
// two logarithms and a cosine and a sine of each word pair make 64 normals. z needs room for n + 67 floats.
inline void aggregate_normals(uint64_t seed, uint64_t offset, int64_t e_begin, int n, float* z) {
  const int64_t c_begin = e_begin >> 2;
  const int skip = static_cast<int>(e_begin & 3);  // z[0] is element 4·c_begin + skip
  alignas(64) float head[64];
  const __m512i lane = lane_index16();
  // pairs: (z0[l], z1[l]) for lanes 0-7 / 8-15, then pairs of pairs (as doubles) for lanes 0-3, 4-7
  const __m512i p_lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i p_hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
  const __m512i q_lo = _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0);
  const __m512i q_hi = _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4);
  for (int t0 = 0; t0 < n + skip; t0 += 64) {
    __m512i r0, r1, r2, r3;
    philox16(_mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(c_begin + t0 / 4)), lane), S_PULSE_NOISE, 0u,
             0u, seed, offset, r0, r1, r2, r3);
    const BM16 b01 = bm16_prepare(r0, r1), b23 = bm16_prepare(r2, r3);
    const __m512 z0 = bm16_normal(b01, false), z1 = bm16_normal(b01, true);
    const __m512 z2 = bm16_normal(b23, false), z3 = bm16_normal(b23, true);
    const __m512d a_lo = _mm512_castps_pd(_mm512_permutex2var_ps(z0, p_lo, z1));
    const __m512d a_hi = _mm512_castps_pd(_mm512_permutex2var_ps(z0, p_hi, z1));
    const __m512d b_lo = _mm512_castps_pd(_mm512_permutex2var_ps(z2, p_lo, z3));
    const __m512d b_hi = _mm512_castps_pd(_mm512_permutex2var_ps(z2, p_hi, z3));
    float* dst = t0 == 0 ? head : z - skip + t0;
    _mm512_storeu_pd(reinterpret_cast<double*>(dst), _mm512_permutex2var_pd(a_lo, q_lo, b_lo));
    _mm512_storeu_pd(reinterpret_cast<double*>(dst + 16), _mm512_permutex2var_pd(a_lo, q_hi, b_lo));
    _mm512_storeu_pd(reinterpret_cast<double*>(dst + 32), _mm512_permutex2var_pd(a_hi, q_lo, b_hi));
    _mm512_storeu_pd(reinterpret_cast<double*>(dst + 48), _mm512_permutex2var_pd(a_hi, q_hi, b_hi));
    if (t0 == 0)
      for (int k = skip; k < 64; ++k) z[k - skip] = head[k];
  }
}

// aggregate_normal of 16 arbitrary elements e: counter e >> 2, word pair (r0, r1) or (r2, r3) by bit 1
// of e, cosine or sine by bit 0.
inline __m512 aggregate_normal16(__m512i e, uint64_t seed, uint64_t offset) {
  __m512i r0, r1, r2, r3;
  philox16(_mm512_srli_epi32(e, 2), S_PULSE_NOISE, 0u, 0u, seed, offset, r0, r1, r2, r3);
  const __mmask16 hi = _mm512_test_epi32_mask(e, _mm512_set1_epi32(2));
  const __mmask16 odd = _mm512_test_epi32_mask(e, _mm512_set1_epi32(1));
  const BM16 b = bm16_prepare(_mm512_mask_blend_epi32(hi, r0, r2), _mm512_mask_blend_epi32(hi, r1, r3));
  __m512 z = bm16_normal(b, false);
  if (odd) z = _mm512_mask_mov_ps(z, odd, bm16_normal(b, true));
  return z;
}

// One pulse on the lanes of `mq` (device_step_t<KIND_LINEAR, MULT, NOISE>): fac = 1 + σz,
// Δ = (s·w + c)·fac (mult) or s·w + c·fac, w ← clip(w + sg·Δ) (sg = ±1: exact, rounds as w ± Δ).
template <bool MULT, bool NOISE>
inline __m512 step16(__m512 w, __mmask16 mq, __m512 s, __m512 c, __m512 sg, __m512 bmn, __m512 bmx, __m512 sigma,
                     __m512 z) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 fac = NOISE ? _mm512_add_ps(one, _mm512_mul_ps(sigma, z)) : one;
  const __m512 sw = _mm512_mul_ps(s, w);
  const __m512 dlt = MULT ? _mm512_mul_ps(_mm512_add_ps(sw, c), fac) : _mm512_add_ps(sw, _mm512_mul_ps(c, fac));
  __m512 nw = _mm512_add_ps(w, _mm512_mul_ps(sg, dlt));
  nw = _mm512_max_ps(nw, bmn);  // nw > bmn ? nw : bmn (clip_bounds, NaN-propagation included)
  nw = _mm512_min_ps(nw, bmx);  // nw < bmx ? nw : bmx
  return _mm512_mask_mov_ps(w, mq, nw);
}

// Pulse trains of n entries (BL <= 32: one word each): bit k of out[q] is set iff
// (word k of the (stream, a = a0 + q, b, draw k) sequence) >> 8 < thr[q] — make_train's test, 16
// entries per Philox call (thr = bernoulli_threshold(p): 0 never fires, 2^24 always fires).
inline void trains16(const uint32_t* thr, int n, uint32_t a0, uint32_t stream, uint32_t b, int bl, uint64_t seed,
                     uint64_t offset, uint32_t* out) {
  const __m512i lane = lane_index16();
  const int nblk = (bl + 3) >> 2;
  for (int q0 = 0; q0 < n; q0 += 16) {
    const __mmask16 lm = tail_mask16(n - q0);
    const __m512i t = _mm512_maskz_loadu_epi32(lm, thr + q0);
    const __m512i a = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(a0 + q0)), lane);
    __m512i bits = _mm512_setzero_si512();
    if (_mm512_mask_cmpgt_epu32_mask(lm, t, _mm512_setzero_si512())) {
      for (int blk = 0; blk < nblk; ++blk) {
        __m512i r[4];
        philox16(a, stream, static_cast<uint32_t>(blk), b, seed, offset, r[0], r[1], r[2], r[3]);
        for (int q = 0; q < 4; ++q) {
          const int k = (blk << 2) + q;
          if (k >= bl) break;
          const __mmask16 f = _mm512_cmplt_epu32_mask(_mm512_srli_epi32(r[q], 8), t);
          bits = _mm512_mask_or_epi32(bits, f, bits, _mm512_set1_epi32(static_cast<int>(1u << k)));
        }
      }
    }
    _mm512_mask_storeu_epi32(out + q0, lm, bits);
  }
}

// Probabilities, signs and Bernoulli thresholds of n train entries (v: x or d of one sample) when no
// res discretisation is active: p = float(|v|·scale) (double product, probability()), sg = sign(v)·slr·
// chop (chop may be null), t = bernoulli_threshold(p) — the count of 24-bit k with
// f(k) = float((k + 0.5)·2^-24) < p, which lies within one of floor(p·2^24).
inline void entries16(const float* v, int n, double scale, float slr, const float* chop, float* p_out, float* sg_out,
                      uint32_t* thr) {
  const __m512d sc = _mm512_set1_pd(scale), two24 = _mm512_set1_pd(16777216.0), half = _mm512_set1_pd(0.5);
  const __m512d inv24 = _mm512_set1_pd(5.9604644775390625e-08), sat = _mm512_set1_pd(1.0 + 1e-7);
  const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f), mone = _mm512_set1_ps(-1.0f);
  for (int q0 = 0; q0 < n; q0 += 16) {
    const __mmask16 lm = tail_mask16(n - q0);
    const __m512 x = _mm512_maskz_loadu_ps(lm, v + q0);
    __m512 sg = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, zero, _CMP_GT_OQ),
                                     _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, zero, _CMP_LT_OQ), mone), one);
    sg = _mm512_mul_ps(sg, _mm512_set1_ps(slr));
    if (chop) sg = _mm512_mul_ps(sg, _mm512_maskz_loadu_ps(lm, chop + q0));
    _mm512_mask_storeu_ps(sg_out + q0, lm, sg);
    const __m512 ax = _mm512_abs_ps(x);
    __m256 ph[2];
    __m256i th[2];
    for (int h = 0; h < 2; ++h) {
      const __m256 axh = h ? _mm512_extractf32x8_ps(ax, 1) : _mm512_castps512_ps256(ax);
      const __m512d pd = _mm512_mul_pd(_mm512_cvtps_pd(axh), sc);
      const __m256 pf = _mm512_cvtpd_ps(pd);  // probability() rounds the double product to float
      ph[h] = pf;
      const __m512d pfd = _mm512_cvtps_pd(pf);
      // q = clamp(floor(p·2^24), 0, 2^24); t = (q − 1) + #{c ∈ {q−1, q, q+1}, 0 <= c < 2^24 : f(c) < p}
      const __m512d qd = _mm512_min_pd(_mm512_max_pd(_mm512_roundscale_pd(_mm512_mul_pd(pfd, two24), _MM_FROUND_TO_NEG_INF),
                                                     _mm512_setzero_pd()), two24);
      __m512d t = _mm512_sub_pd(qd, _mm512_set1_pd(1.0));
      for (int dc = -1; dc <= 1; ++dc) {
        const __m512d c = _mm512_add_pd(qd, _mm512_set1_pd(static_cast<double>(dc)));
        const __m256 fc = _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_add_pd(c, half), inv24));
        const __mmask8 valid = _mm512_cmp_pd_mask(c, _mm512_setzero_pd(), _CMP_GE_OQ) &
                               _mm512_cmp_pd_mask(c, two24, _CMP_LT_OQ);
        const __mmask8 below = _mm256_cmp_ps_mask(fc, pf, _CMP_LT_OQ) & valid;
        t = _mm512_mask_add_pd(t, below, t, _mm512_set1_pd(1.0));
      }
      // base q − 1 counts k < q − 1; for q = 0 there is none
      t = _mm512_mask_mov_pd(t, _mm512_cmp_pd_mask(qd, _mm512_setzero_pd(), _CMP_EQ_OQ),
                             _mm512_add_pd(t, _mm512_set1_pd(1.0)));
      t = _mm512_mask_mov_pd(t, _mm512_cmp_pd_mask(pfd, sat, _CMP_GE_OQ), two24);            // saturated
      t = _mm512_mask_mov_pd(t, _mm512_cmp_pd_mask(pfd, _mm512_setzero_pd(), _CMP_NGT_UQ),  // !(p > 0)
                             _mm512_setzero_pd());
      th[h] = _mm512_cvttpd_epu32(t);
    }
    _mm512_mask_storeu_ps(p_out + q0, lm, _mm512_insertf32x8(_mm512_castps256_ps512(ph[0]), ph[1], 1));
    _mm512_mask_storeu_epi32(thr + q0, lm, _mm512_inserti64x4(_mm512_castsi256_si512(th[0]), th[1], 1));
  }
}

// Pass 1: the jobs of (row, sample b): active columns act[0..na) with x trains xb (one word each) and
// signs xs; returns the number of jobs (n > 0) written to J.
inline int fused_jobs(const int32_t* act, const uint32_t* xb, const float* xs, int na, uint32_t d0, FusedJobs& J) {
  if (static_cast<int>(J.j.size()) < na + 16) {
    J.j.resize(na + 16);
    J.n.resize(na + 16);
    J.sx.resize(na + 16);
  }
  const __m512i dv = _mm512_set1_epi32(static_cast<int>(d0)), zero = _mm512_setzero_si512();
  __m512i vmax = zero;
  int cnt = 0;
  for (int t = 0; t < na; t += 16) {
    const __mmask16 lm = tail_mask16(na - t);
    const __m512i xw = _mm512_maskz_loadu_epi32(lm, xb + t);
    const __m512i n = _mm512_popcnt_epi32(_mm512_and_si512(xw, dv));
    const __mmask16 m = _mm512_mask_cmpgt_epi32_mask(lm, n, zero);
    if (!m) continue;
    vmax = _mm512_max_epi32(vmax, n);
    // compress in a register, then a full 16-lane store (the lists have 16 entries of slack): a
    // compressing store to memory is microcoded on AMD Zen 4, and these three made up ~85 % of the row
    // loop's time there (the sparse pulsed update ~20 %)
    _mm512_storeu_si512(J.j.data() + cnt, _mm512_maskz_compress_epi32(m, _mm512_maskz_loadu_epi32(lm, act + t)));
    _mm512_storeu_si512(J.n.data() + cnt, _mm512_maskz_compress_epi32(m, n));
    _mm512_storeu_ps(J.sx.data() + cnt, _mm512_maskz_compress_ps(m, _mm512_maskz_loadu_ps(lm, xs + t)));
    cnt += __builtin_popcount(static_cast<unsigned>(m));
  }
  J.nmax = _mm512_reduce_max_epi32(vmax);
  return cnt;
}

// The pulse counts of one row over its samples, added to prow (I floats): Σ_b popcount(x_b,j & d_b) per
// column j, 16 columns at a time from the call's dense x words (B, I). xrows[t]: the x words of the t-th
// sample the row takes part in, dwords[t] its d word. The counts fused_apply would add job by job (a
// gather and a scatter per 16 jobs), in one contiguous pass; integers, so the floats are the same.
inline void row_pulse_counts(const uint32_t* const* xrows, const uint32_t* dwords, int ns, int I, float* prow) {
  if (ns == 0) return;  // (a row without pulses: its counts stay as they are, untouched)
  for (int j0 = 0; j0 < I; j0 += 16) {
    const __mmask16 lm = tail_mask16(I - j0);
    __m512i c = _mm512_setzero_si512();
    for (int t = 0; t < ns; ++t) {
      const __m512i xw = _mm512_maskz_loadu_epi32(lm, xrows[t] + j0);
      c = _mm512_add_epi32(c, _mm512_popcnt_epi32(_mm512_and_si512(xw, _mm512_set1_epi32(static_cast<int>(dwords[t])))));
    }
    _mm512_mask_storeu_ps(prow + j0, lm, _mm512_add_ps(_mm512_maskz_loadu_ps(lm, prow + j0), _mm512_cvtepi32_ps(c)));
  }
}

// Aggregated mode (device_step.h agg_dir / aggregate_sample / aggregate_finish) on 16 consecutive
// columns [j0, j0 + 16) ∩ [0, I) of one row: moments in registers through the row's active samples,
// contiguous loads and stores only. xbits / sx: (B, I) trains and signs of the call; dbits / sd: (B, O).
struct AggCall {
  int O, I, row_i;
  const uint32_t* xbits;
  const float* sx;
  const uint32_t* dbits;
  const float* sd;
  const int* samples;  // the samples in which this row's d train fires (batch order)
  int nsamples;
  // one-slot calls: per sample and 16-column group the masks of side_masks16 (B, G), G = ceil(I / 16)
  const uint16_t *xon16 = nullptr, *xpos16 = nullptr, *xneg16 = nullptr;
  int G = 0;
};

// The x side of one sample as 16-bit masks per group of 16 columns (n entries, G = ceil(n / 16) groups):
// on16 = the columns that take part (on), pos16 / neg16 = those whose sign sg is > 0 / < 0. A one-slot
// call's sample step reads these three words instead of the trains and signs (agg_lanes_sample_masks).
inline void side_masks16(const uint8_t* on, const float* sg, int n, uint16_t* on16, uint16_t* pos16,
                         uint16_t* neg16) {
  const __m512 zero = _mm512_setzero_ps();
  for (int j0 = 0, q = 0; j0 < n; j0 += 16, ++q) {
    const __mmask16 lm = tail_mask16(n - j0);
    alignas(16) uint8_t tail[16] = {};
    const uint8_t* o8 = on + j0;
    if (n - j0 < 16) o8 = static_cast<const uint8_t*>(std::memcpy(tail, o8, static_cast<size_t>(n - j0)));
    const __m512i o = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(o8)));  // (AVX-512F)
    const __m512 v = _mm512_maskz_loadu_ps(lm, sg + j0);
    on16[q] = _mm512_test_epi32_mask(o, o);
    pos16[q] = _mm512_mask_cmp_ps_mask(lm, v, zero, _CMP_GT_OQ);
    neg16[q] = _mm512_mask_cmp_ps_mask(lm, v, zero, _CMP_LT_OQ);
  }
}

// agg_dir on 16 lanes (same operations), in stages so that a chunk computes only what its samples
// need: alpha always; iA and eps (mult noise) once a lane is touched; log1p α and the reciprocals of the
// n > AGG_POLY_MAX closed form once a sample brings a lane more pulses (multi: sparse calls never do);
// log1p ε and 1/ε once a lane's noise sum needs its closed form, n·ε >= AGG_SERIES_MAX (multi_eps: rare).
struct AggDir16 {
  __m512 alpha, l, ia, iA, eps, lq, ie, ia2;
  __m512 k1, q1;  // one-pulse variance map v' = k1·v + (σd)² (mult) or k1·v + q1 (additive), see noise()
  void base(__m512 al) { alpha = _mm512_max_ps(al, _mm512_set1_ps(AGG_ALPHA_MIN)); }  // al > min ? al : min
  // c: this direction's scale. k1 = ((1+α)(1+α))(1+ε) (mult) or (1+α)(1+α) (additive), q1 = (σc)(σc):
  // the n = 1 values of the general formula's factors, in its operation order (so n = 1 is bit-identical).
  template <bool MULT>
  void noise(const DeviceGlobals& g, __m512 c) {
    const __m512 one = _mm512_set1_ps(1.0f), sigma = _mm512_set1_ps(g.sigma);
    const __m512 an = _mm512_add_ps(one, alpha);
    if (MULT) {
      iA = _mm512_div_ps(one, an);
      const __m512 q = _mm512_mul_ps(_mm512_mul_ps(alpha, sigma), iA);
      eps = _mm512_mul_ps(q, q);
      k1 = _mm512_mul_ps(_mm512_mul_ps(an, an), _mm512_add_ps(one, eps));
    } else {
      k1 = _mm512_mul_ps(an, an);
      const __m512 sc = _mm512_mul_ps(sigma, c);
      q1 = _mm512_mul_ps(sc, sc);
    }
  }
  template <bool MULT, bool NOISE>
  void multi() {
    const __m512 one = _mm512_set1_ps(1.0f);
    l = _ZGVeN16v_log1pf(alpha);
    ia = _mm512_div_ps(one, alpha);
    if (NOISE && !MULT) ia2 = _mm512_div_ps(one, _mm512_mul_ps(alpha, _mm512_add_ps(alpha, _mm512_set1_ps(2.0f))));
  }
  // the mult noise sum's closed form (n·ε >= AGG_SERIES_MAX: rare), on demand
  void multi_eps() {
    lq = _ZGVeN16v_log1pf(eps);
    ie = _mm512_div_ps(_mm512_set1_ps(1.0f), eps);
  }
};

// The moments and parameters of 16 columns of one row (aggregated mode).
struct AggLanes {
  __mmask16 lm = 0, touched = 0;
  int32_t e0 = 0;
  // the slopes and scales of the two directions, the down ones negated (ns_dn = −s_dn, nc_dn = −c_dn): a
  // down pulse's mean step −(s·m + c) is then (−s)·m + (−c), the same float (rounding is symmetric)
  // without a sign flip on the sample step's dependency chain (only the sign of an exact zero step can
  // differ, and m + (±0) is m unless m is itself a zero)
  __m512 ref, bmn, bmx, s_up, ns_dn, c_up, nc_dn, m, v;
  __m512i cnt;
  AggDir16 du, dd;
  bool have_noise = false, have_multi = false, have_multi_eps = false;
  // set with the multi-pulse constants, over every lane and both directions: k0, n·log1p(α) is within
  // expm1_16_k0's range for any n a sample can bring; a_nz, no α is 0 (the closed form's n-pulse sums
  // need no α = 0 case)
  bool k0 = false, a_nz = false;
};

// −v (the sign bit flipped: exact).
inline __m512 neg16(__m512 v) {
  return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(v), _mm512_set1_epi32(INT32_MIN)));
}

// The state and the parameter planes of the 16 elements from e (one cache line each) into L1, for the
// group after the current one.
inline void prefetch_group(const FusedRow& R, int64_t e) {
  for (const float* pl : {static_cast<const float*>(R.state), R.ref, R.bmin, R.bmax, R.s_up, R.s_dn, R.sc_up, R.sc_dn})
    _mm_prefetch(reinterpret_cast<const char*>(pl + e), _MM_HINT_T0);
}

AT_HOT_INLINE void agg_lanes_load(AggLanes& L, const FusedRow& R, int I, int j0) {
  const int rem = I - j0;
  L.lm = tail_mask16(rem);
  L.e0 = R.row + j0;
  L.ref = _mm512_maskz_loadu_ps(L.lm, R.ref + L.e0);
  L.bmn = _mm512_maskz_loadu_ps(L.lm, R.bmin + L.e0);
  L.bmx = _mm512_maskz_loadu_ps(L.lm, R.bmax + L.e0);
  L.s_up = _mm512_maskz_loadu_ps(L.lm, R.s_up + L.e0);
  L.ns_dn = neg16(_mm512_maskz_loadu_ps(L.lm, R.s_dn + L.e0));
  L.c_up = _mm512_maskz_loadu_ps(L.lm, R.sc_up + L.e0);
  L.nc_dn = neg16(_mm512_maskz_loadu_ps(L.lm, R.sc_dn + L.e0));
  L.du.base(L.s_up);
  L.dd.base(L.ns_dn);  // α of the down direction: −s
  L.m = _mm512_add_ps(_mm512_maskz_loadu_ps(L.lm, R.state + L.e0), L.ref);
  L.v = _mm512_setzero_ps();
  L.cnt = _mm512_setzero_si512();
}

// The new moments of lanes mk: a non-finite v' (degenerate devices) or a mean beyond a bound -> v' = 0,
// the mean clipped. The v' test is one vfixupimmps (+inf and NaN -> +0, every other class kept as is,
// -inf included: the same as v' <= FLT_MAX ? v' : 0) whose zero-masking also zeroes the out-of-bound
// lanes: off the compare -> mask -> blend chain that limited a sparse sample step to the latency of the
// variance's loop-carried dependency. Out of bound is "the clip changed the mean" (an ordered compare: a
// NaN mean is kept and not out, as the two bound compares gave).
AT_HOT_INLINE void agg_lanes_store(AggLanes& L, __mmask16 mk, __m512 mn, __m512 vn) {
  // response nibble per input class (0 QNaN, 1 SNaN, 2 zero, 3 +1, 4 -inf, 5 +inf, 6 negative, 7 positive):
  // 1 = the input, 8 = +0
  const __m512i keep_finite = _mm512_set1_epi32(0x11811188);
  const __m512 mc = _mm512_min_ps(_mm512_max_ps(mn, L.bmn), L.bmx);
  const __mmask16 out = _mm512_cmp_ps_mask(mn, mc, _CMP_NEQ_OQ);
  vn = _mm512_maskz_fixupimm_ps(static_cast<__mmask16>(~out), vn, vn, keep_finite, 0);
  L.m = _mm512_mask_mov_ps(L.m, mk, mc);
  L.v = _mm512_mask_mov_ps(L.v, mk, vn);
}

// Lanes mk of L take part in this sample with n pulses each: the one-pulse noise factors (once per
// group), the touched set and the pulse counts.
template <bool MULT, bool NOISE>
AT_HOT_INLINE void agg_lanes_touch(AggLanes& L, __mmask16 mk, __m512i n, const DeviceGlobals& g) {
  if (NOISE && !L.have_noise) {
    L.du.noise<MULT>(g, L.c_up);
    L.dd.noise<MULT>(g, L.nc_dn);  // (c enters squared)
    L.have_noise = true;
  }
  L.touched |= mk;
  L.cnt = _mm512_mask_add_epi32(L.cnt, mk, L.cnt, n);
}

// The mean step of one pulse, d = +(s·m + c) on the up lanes and (−s)·m + (−c) = −(s·m + c) on the
// others, s and c of each lane's direction (AggLanes: the down ones stored negated).
AT_HOT_INLINE __m512 agg_lanes_step(const AggLanes& L, __mmask16 up) {
  const __m512 s = _mm512_mask_blend_ps(up, L.ns_dn, L.s_up);
  const __m512 c = _mm512_mask_blend_ps(up, L.nc_dn, L.c_up);
  return _mm512_add_ps(_mm512_mul_ps(s, L.m), c);
}

// One pulse on lanes mk (up: their up lanes) with mean step d: m' = m + d, v' = k1·v + (σd)² (mult) or
// k1·v + q1 (additive): the n = 1 values of agg_lanes_apply's general factors.
template <bool MULT, bool NOISE>
AT_HOT_INLINE void agg_lanes_one_pulse(AggLanes& L, __mmask16 mk, __mmask16 up, __m512 d, const DeviceGlobals& g) {
  const __m512 mn = _mm512_add_ps(L.m, d);
  __m512 vn = _mm512_setzero_ps();
  if (NOISE) {
    const __m512 k1 = _mm512_mask_blend_ps(up, L.dd.k1, L.du.k1);
    if (MULT) {
      const __m512 t = _mm512_mul_ps(_mm512_set1_ps(g.sigma), d);
      vn = _mm512_add_ps(_mm512_mul_ps(k1, L.v), _mm512_mul_ps(t, t));
    } else {
      vn = _mm512_add_ps(_mm512_mul_ps(k1, L.v), _mm512_mask_blend_ps(up, L.dd.q1, L.du.q1));
    }
  }
  agg_lanes_store(L, mk, mn, vn);
}

// Σ_{k<n}(1+x)^k on 16 lanes for n <= AGG_POLY_MAX (device_step.h agg_poly_sum, same operations):
// nf + x(c2 + x(c3 + x·c4)) with the lanes' binomial coefficients c = (c2, c3, c4) = (C(n,2), C(n,3),
// C(n,4)) looked up by n (vpermps reads the index's low 4 bits; lanes of n > AGG_POLY_MAX do not use
// them): the values agg_poly_sum computes, exact small integers, without its division by 3 on every
// multi-pulse sample. (n = 2 gives c4 = +0 where the formula gives -0: c3 + x·c4 = +0 either way.)
struct AggPoly {
  __m512 nf, c2, c3, c4;
  AggPoly(__m512i n, __m512 n_f) : nf(n_f) {
    c2 = _mm512_permutexvar_ps(n, _mm512_setr_ps(0, 0, 1, 3, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0));
    c3 = _mm512_permutexvar_ps(n, _mm512_setr_ps(0, 0, 0, 1, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0));
    c4 = _mm512_permutexvar_ps(n, _mm512_setr_ps(0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0));
  }
  __m512 sum(__m512 x) const {
    return _mm512_add_ps(nf, _mm512_mul_ps(x, _mm512_add_ps(c2, _mm512_mul_ps(x, _mm512_add_ps(c3, _mm512_mul_ps(x, c4))))));
  }
};

// The constants of the n > AGG_POLY_MAX closed form in both directions (AggDir16::multi), once per group
// when a sample first brings a lane more pulses, and the flags derived from them (AggLanes k0, a_nz).
template <bool MULT, bool NOISE>
AT_HOT_INLINE void agg_lanes_multi(AggLanes& L) {
  L.du.multi<MULT, NOISE>();
  L.dd.multi<MULT, NOISE>();
  L.have_multi = true;
  // n <= 32 (one train word) and |l| <= 1/128: |n·l·LOG2E| <= 0.37 (with the roundings) < 1/2
  const __m512 lim = _mm512_set1_ps(0.25f / 32.0f), zero = _mm512_setzero_ps();
  L.k0 = _mm512_cmp_ps_mask(_mm512_abs_ps(L.du.l), lim, _CMP_LE_OQ) == 0xFFFF &&
         _mm512_cmp_ps_mask(_mm512_abs_ps(L.dd.l), lim, _CMP_LE_OQ) == 0xFFFF;
  L.a_nz = !_mm512_mask_cmp_ps_mask(L.lm, L.du.alpha, zero, _CMP_EQ_OQ) &&
           !_mm512_mask_cmp_ps_mask(L.lm, L.dd.alpha, zero, _CMP_EQ_OQ);
}

// agg_lanes_apply for a sample in which some lane takes n >= 2 pulses (lanes `multi`): the binomial
// polynomials on lanes with n <= AGG_POLY_MAX, and — BIG: some lane (`big`) takes more — the closed
// form with expm1 (cpu_expm1.h, inline) there. Sparse updates (a few pulses per sample) never take the
// BIG variant.
template <bool MULT, bool NOISE, bool BIG>
AT_HOT_INLINE void agg_lanes_closed(AggLanes& L, __m512i n, __mmask16 mk, __mmask16 up, __mmask16 multi, __mmask16 big,
                             __m512 d, const DeviceGlobals& g) {
  const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
  const __m512 sigma = _mm512_set1_ps(g.sigma);
  const __mmask16 small = multi & static_cast<__mmask16>(~big);  // 2 <= n <= AGG_POLY_MAX
  const __m512 c = _mm512_mask_blend_ps(up, L.nc_dn, L.c_up);  // (enters squared)
  const __m512 alpha = _mm512_mask_blend_ps(up, L.dd.alpha, L.du.alpha);
  const __m512 nf = _mm512_cvtepi32_ps(n);
  const AggPoly P(n, nf);
  const __m512 r_p = P.sum(alpha);
  __m512 e = _mm512_mask_mov_ps(alpha, small, _mm512_mul_ps(alpha, r_p));  // A^n − 1 (n = 1: α)
  __m512 r = _mm512_mask_mov_ps(one, small, r_p);                          // Σ_{k<n} A^k
  __mmask16 a0 = 0;
  if (BIG) {
    if (!L.have_multi) agg_lanes_multi<MULT, NOISE>(L);
    if (!L.a_nz) a0 = _mm512_cmp_ps_mask(alpha, zero, _CMP_EQ_OQ);
    const __m512 l = _mm512_mask_blend_ps(up, L.dd.l, L.du.l);
    const __m512 ia = _mm512_mask_blend_ps(up, L.dd.ia, L.du.ia);
    const __m512 x = _mm512_mul_ps(nf, l);
    const __m512 e_x = L.k0 ? expm1_16_k0(x) : expm1_16(x);
    e = _mm512_mask_mov_ps(e, big, e_x);
    r = _mm512_mask_mov_ps(r, big, _mm512_mask_mov_ps(_mm512_mul_ps(e_x, ia), a0, nf));
  }
  const __m512 mn = _mm512_add_ps(L.m, _mm512_mul_ps(d, r));
  __m512 vn = zero;
  if (NOISE) {
    const __m512 an = _mm512_add_ps(one, e);
    if (MULT) {
      const __m512 eps = _mm512_mask_blend_ps(up, L.dd.eps, L.du.eps);
      __m512 sq = _mm512_mask_mov_ps(one, small, P.sum(eps));  // Σ_{j<n} (1 + ε)^j
      if (BIG) {
        const __m512 ne = _mm512_mul_ps(nf, eps);
        const __mmask16 e0m = _mm512_cmp_ps_mask(eps, zero, _CMP_EQ_OQ);
        const __mmask16 ser = _mm512_cmp_ps_mask(ne, _mm512_set1_ps(AGG_SERIES_MAX), _CMP_LT_OQ) &
                              static_cast<__mmask16>(~e0m);
        const __mmask16 full = big & static_cast<__mmask16>(~(ser | e0m));
        // series n(1 + ((n − 1)ε)·0.5)
        __m512 sqm = _mm512_mul_ps(
            nf, _mm512_add_ps(one, _mm512_mul_ps(_mm512_mul_ps(_mm512_sub_ps(nf, one), eps), _mm512_set1_ps(0.5f))));
        sqm = _mm512_mask_mov_ps(sqm, e0m, nf);
        if (full) {
          if (!L.have_multi_eps) {
            L.du.multi_eps();
            L.dd.multi_eps();
            L.have_multi_eps = true;
          }
          const __m512 lq = _mm512_mask_blend_ps(up, L.dd.lq, L.du.lq);
          const __m512 ie = _mm512_mask_blend_ps(up, L.dd.ie, L.du.ie);
          sqm = _mm512_mask_mov_ps(sqm, full, _mm512_mul_ps(expm1_16(_mm512_mul_ps(nf, lq)), ie));
        }
        sq = _mm512_mask_mov_ps(sq, big, sqm);
      }
      const __m512 iA = _mm512_mask_blend_ps(up, L.dd.iA, L.du.iA);
      const __m512 an1 = _mm512_mask_mov_ps(one, multi, _mm512_mul_ps(an, iA));  // A^{n−1}
      const __m512 t = _mm512_mul_ps(_mm512_mul_ps(sigma, d), an1);
      vn = _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(an, an), _mm512_add_ps(one, _mm512_mul_ps(eps, sq))), L.v),
                         _mm512_mul_ps(_mm512_mul_ps(t, t), sq));
    } else {
      // Σ_{k<n} A^{2k}: the polynomial in β = α(α + 2) = A² − 1, or E(E + 2)/(α(α + 2))
      __m512 sa = _mm512_mask_mov_ps(one, small, P.sum(_mm512_mul_ps(alpha, _mm512_add_ps(alpha, two))));
      if (BIG) {
        const __m512 ia2 = _mm512_mask_blend_ps(up, L.dd.ia2, L.du.ia2);
        sa = _mm512_mask_mov_ps(sa, big, _mm512_mask_mov_ps(_mm512_mul_ps(_mm512_mul_ps(e, _mm512_add_ps(e, two)), ia2), a0, nf));
      }
      const __m512 sc = _mm512_mul_ps(sigma, c);
      vn = _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(an, an), L.v), _mm512_mul_ps(_mm512_mul_ps(sc, sc), sa));
    }
  }
  agg_lanes_store(L, mk, mn, vn);
}

// One sample on the lanes mk of L (n > 0 pulses, sign sgn = sd·sx != 0): the moments' update.
template <bool MULT, bool NOISE>
AT_HOT_INLINE void agg_lanes_apply(AggLanes& L, __m512i n, __m512 sgn, __mmask16 mk, const DeviceGlobals& g) {
  agg_lanes_touch<MULT, NOISE>(L, mk, n, g);
  const __mmask16 up = _mm512_mask_cmp_ps_mask(mk, sgn, _mm512_setzero_ps(), _CMP_LT_OQ);  // sd·sx < 0: up pulses
  const __mmask16 multi = _mm512_mask_cmpgt_epi32_mask(mk, n, _mm512_set1_epi32(1));     // n >= 2
  const __m512 d = agg_lanes_step(L, up);
  if (!multi) {  // every lane takes one pulse (the sparse regime)
    agg_lanes_one_pulse<MULT, NOISE>(L, mk, up, d, g);
    return;
  }
  const __mmask16 big = _mm512_mask_cmpgt_epi32_mask(mk, n, _mm512_set1_epi32(AGG_POLY_MAX));
  if (!big)
    agg_lanes_closed<MULT, NOISE, false>(L, n, mk, up, multi, 0, d, g);
  else
    agg_lanes_closed<MULT, NOISE, true>(L, n, mk, up, multi, big, d, g);
}

// One sample on the 16 lanes: x trains xw and signs sxv of these columns, the row's d word and sign.
template <bool MULT, bool NOISE>
AT_HOT_INLINE void agg_lanes_sample(AggLanes& L, __m512i xw, __m512 sxv, uint32_t dword, float sdv, const DeviceGlobals& g) {
  const __m512i n = _mm512_popcnt_epi32(_mm512_and_si512(xw, _mm512_set1_epi32(static_cast<int>(dword))));
  const __m512 sgn = _mm512_mul_ps(_mm512_set1_ps(sdv), sxv);
  const __mmask16 mk = _mm512_mask_cmpgt_epi32_mask(L.lm, n, _mm512_setzero_si512()) &
                       _mm512_cmp_ps_mask(sgn, _mm512_setzero_ps(), _CMP_NEQ_UQ);
  if (mk) agg_lanes_apply<MULT, NOISE>(L, n, sgn, mk, g);
}

// agg_lanes_sample for one-slot trains (BL = 1 in every sample of the call, as update-BL management sets
// it in the sparse regime), from the sample's x masks of this group (side_masks16): a coincidence is
// exactly one pulse, so the lanes that take part are `on` (the row's d train fires in this sample: its
// one slot) and take agg_lanes_one_pulse without counting bits or testing for n >= 2. The up lanes are
// those whose x sign is opposite to the row's sign sdv: the signs are sign(v)·sign(lr)·chopper (±1 or 0,
// and 0 never takes part), so sd·sx < 0 exactly when one is > 0 and the other < 0.
// qg: the (sample, group) index of C's masks.
template <bool MULT, bool NOISE>
AT_HOT_INLINE void agg_lanes_sample_masks(AggLanes& L, const AggCall& C, int64_t qg, float sdv,
                                          const DeviceGlobals& g) {
  const __mmask16 on = C.xon16[qg];
  if (!on) return;
  const __mmask16 up = on & (sdv > 0.0f ? C.xneg16[qg] : sdv < 0.0f ? C.xpos16[qg] : static_cast<__mmask16>(0));
  agg_lanes_touch<MULT, NOISE>(L, on, _mm512_set1_epi32(1), g);
  agg_lanes_one_pulse<MULT, NOISE>(L, on, up, agg_lanes_step(L, up), g);
}

// The end of the call for the touched lanes: one normal each, clip, store state / visible weight /
// pulse counts. Returns the pulses of these lanes.
template <bool NOISE>
AT_HOT_INLINE int64_t agg_lanes_finish(const AggLanes& L, const FusedRow& R, int j0, const DeviceGlobals& g,
                                const UpdateArgs& u, float* wvis_noise, const float* zrow) {
  if (!L.touched) return 0;
  __m512 wd = L.m;
  if (NOISE) {
    const __m512 z = _mm512_maskz_loadu_ps(L.lm, zrow + j0);
    wd = _mm512_add_ps(L.m, _mm512_mul_ps(_mm512_sqrt_ps(L.v), z));
  }
  wd = _mm512_min_ps(_mm512_max_ps(wd, L.bmn), L.bmx);
  const __m512 st = _mm512_sub_ps(wd, L.ref);
  _mm512_mask_storeu_ps(R.state + L.e0, L.touched, st);
  if (R.vis) _mm512_mask_storeu_ps(R.vis + L.e0, L.touched, st);
  if (wvis_noise) {  // write noise: visible = state + σ_w·normal(WRITE_NOISE, e, b = 0, draw 0), per lane
    alignas(64) float sa[16];
    _mm512_store_ps(sa, st);
    for (int q = 0; q < 16; ++q)
      if ((L.touched >> q) & 1)
        wvis_noise[L.e0 + q] = sa[q] + g.write_noise * normal_draw(u.seed, u.offset, S_WRITE_NOISE,
                                                                   static_cast<uint32_t>(L.e0 + q), 0u, 0);
  }
  const __m512 pc = _mm512_maskz_loadu_ps(L.lm, R.prow + j0);
  _mm512_mask_storeu_ps(R.prow + j0, L.touched, _mm512_add_ps(pc, _mm512_cvtepi32_ps(L.cnt)));
  return _mm512_mask_reduce_add_epi32(L.touched, L.cnt);
}

// What a carry-mode event reads and changes of an AggLanes: a copy of these fields, so that the lanes'
// address does not escape into the out-of-line event and their moments stay in registers through the
// samples between events (with the whole AggLanes passed by reference, every sample stored m and v and
// the next reloaded them, a store-to-load round trip on the chain; c-TTv2 aggregated update about −5 %
// without it, with a few events per group and call).
struct AggEventLanes {
  __mmask16 lm, touched;
  int32_t e0;
  __m512 ref, bmn, bmx, m, v;
  explicit AggEventLanes(const AggLanes& L)
      : lm(L.lm), touched(L.touched), e0(L.e0), ref(L.ref), bmn(L.bmn), bmx(L.bmx), m(L.m), v(L.v) {}
  void put(AggLanes& L) const {  // the moments back
    L.m = m;
    L.v = v;
    L.touched = touched;
  }
};

// Carry-mode event q (CarryPlan) on the 16 lanes from j0 of row row_i: finish the touched lanes of the
// slice (clip(m + sqrt(v)·z), store, moments restart from the stored value), then copy the slice's
// visible weight in these lanes to the snapshot.
template <bool NOISE>
__attribute__((noinline)) void agg_lanes_event(AggEventLanes& L, const FusedRow& R, int j0, int row_i,
                                               const CarryPlan& P, int q, const DeviceGlobals& g, const UpdateArgs& u,
                                               float* wvis_noise) {
  const int64_t k = P.slice[q];
  const __mmask16 fm = P.columns ? static_cast<__mmask16>(L.lm & (1u << (k - j0))) : L.lm;
  const __mmask16 tm = fm & L.touched;
  if (tm) {
    __m512 wd = L.m;
    if (NOISE) {
      const float* zq = P.z.data() + q * P.L;
      const __m512 z = P.columns ? _mm512_set1_ps(zq[row_i]) : _mm512_maskz_loadu_ps(L.lm, zq + j0);
      wd = _mm512_add_ps(L.m, _mm512_mul_ps(_mm512_sqrt_ps(L.v), z));
    }
    wd = _mm512_min_ps(_mm512_max_ps(wd, L.bmn), L.bmx);
    const __m512 st = _mm512_sub_ps(wd, L.ref);
    _mm512_mask_storeu_ps(R.state + L.e0, tm, st);
    if (R.vis) _mm512_mask_storeu_ps(R.vis + L.e0, tm, st);
    if (wvis_noise) {
      alignas(64) float sa[16];
      _mm512_store_ps(sa, st);
      for (int l = 0; l < 16; ++l)
        if ((tm >> l) & 1)
          wvis_noise[L.e0 + l] = sa[l] + g.write_noise * normal_draw(u.seed, P.offset[q], S_WRITE_NOISE,
                                                                     static_cast<uint32_t>(L.e0 + l), 0u, 0);
    }
    L.m = _mm512_mask_mov_ps(L.m, tm, _mm512_add_ps(st, L.ref));  // m = state + ref, as a fresh call
    L.v = _mm512_mask_mov_ps(L.v, tm, _mm512_setzero_ps());
    L.touched &= static_cast<__mmask16>(~tm);
  }
  float* dst = P.snaps + P.call[q] * P.L;
  if (P.columns)
    dst[row_i] = P.w[L.e0 + (k - j0)];
  else
    _mm512_mask_storeu_ps(dst + j0, L.lm, _mm512_maskz_loadu_ps(L.lm, P.w + L.e0));
}

// The carry-mode events that concern one 16-lane group of a row (indices into CarryPlan, in order).
struct AggEvents {
  const CarryPlan* plan = nullptr;
  const int* idx = nullptr;
  int n = 0;
};

// aggregate_chunk for K neighbouring groups [j0, j0 + 16K) at once: a one-slot call without carry
// events, from the x masks (C.xon16 set). Each group's sample step is a dependent chain (the mean, then
// the variance) whose latency, not the work per sample, bounds one group; independent chains in one loop
// overlap. Same operations per group, so the same numbers. Returns the pulses of the K groups.
template <bool MULT, bool NOISE, int K>
int64_t aggregate_chunks(const FusedRow& R, const AggCall& C, int j0, const DeviceGlobals& g, const UpdateArgs& u,
                         float* wvis_noise, const float* zrow) {
  AggLanes L[K];
#pragma GCC unroll 8
  for (int k = 0; k < K; ++k) {
    agg_lanes_load(L[k], R, C.I, j0 + 16 * k);
    agg_lanes_touch<MULT, NOISE>(L[k], 0, _mm512_setzero_si512(), g);  // the noise factors up front
  }
  if (j0 + 16 * K < C.I) prefetch_group(R, R.row + j0 + 16 * K);  // the next block's first group
  const int64_t g0 = j0 >> 4;
  for (int t = 0; t < C.nsamples; ++t) {
    const int b = C.samples[t];
    const float sdv = C.sd[static_cast<int64_t>(b) * C.O + C.row_i];
    const int64_t qg = static_cast<int64_t>(b) * C.G + g0;
#pragma GCC unroll 8
    for (int k = 0; k < K; ++k) agg_lanes_sample_masks<MULT, NOISE>(L[k], C, qg + k, sdv, g);
  }
  int64_t tot = 0;
#pragma GCC unroll 8
  for (int k = 0; k < K; ++k) tot += agg_lanes_finish<NOISE>(L[k], R, j0 + 16 * k, g, u, wvis_noise, zrow);
  return tot;
}

// K neighbouring groups of 16 columns [j0, j0 + 16K) through the row's active samples, each group's
// moments carried sample after sample (carry mode, CARRY: with its events between samples). Trains: ONE,
// one-slot masks (agg_lanes_sample_masks), else the words. K = 1 is one group (aggregate_chunk); K > 1 is
// the carry pass of c-TTv2/AGAD: one group's sample step is a dependent chain (the mean: step, sum,
// clip; the variance after it), and the K independent chains of one loop overlap. Each group keeps its
// own events (evs[k], in order; rows mode: the same row list for every group) and runs them between the
// same two samples, through the same out-of-line function, whatever K: the same operations per group,
// so the same numbers. Returns the pulses of the K groups.
template <bool MULT, bool NOISE, bool ONE, bool CARRY, int K>
int64_t aggregate_groups(const FusedRow& R, const AggCall& C, int j0, const DeviceGlobals& g, const UpdateArgs& u,
                         float* wvis_noise /* w when the visible weight gets write noise, else null */,
                         const float* zrow /* the row's final normals (aggregate_normals), NOISE only */,
                         const AggEvents* evs /* K of them (CARRY) */) {
  AggLanes L[K];
  [[maybe_unused]] int qe[K], nxt[K];  // per group: the next event and its sample position (INT_MAX: none left)
  const auto next_pos = [&](int k) {
    return qe[k] < evs[k].n ? evs[k].plan->pos[evs[k].idx[qe[k]]] : std::numeric_limits<int>::max();
  };
#pragma GCC unroll 8
  for (int k = 0; k < K; ++k) {
    agg_lanes_load(L[k], R, C.I, j0 + 16 * k);
    if (CARRY) {
      qe[k] = 0;
      nxt[k] = next_pos(k);
    }
  }
  if (j0 + 16 * K < C.I) prefetch_group(R, R.row + j0 + 16 * K);  // the next group, while these run
  // group k's events up to sample position b
  [[maybe_unused]] const auto events_to = [&](int k, int b) {
    for (; qe[k] < evs[k].n && evs[k].plan->pos[evs[k].idx[qe[k]]] <= b; ++qe[k]) {
      AggEventLanes E(L[k]);
      agg_lanes_event<NOISE>(E, R, j0 + 16 * k, C.row_i, *evs[k].plan, evs[k].idx[qe[k]], g, u, wvis_noise);
      E.put(L[k]);
    }
    nxt[k] = next_pos(k);
  };
  for (int t = 0; t < C.nsamples; ++t) {
    const int b = C.samples[t];
    if (CARRY) {
#pragma GCC unroll 8
      for (int k = 0; k < K; ++k)
        if (b >= nxt[k]) events_to(k, b);
    }
    const int64_t qd = static_cast<int64_t>(b) * C.O + C.row_i;
    const float sdv = C.sd[qd];
    if (ONE) {
      const int64_t qg = static_cast<int64_t>(b) * C.G + (j0 >> 4);
#pragma GCC unroll 8
      for (int k = 0; k < K; ++k) agg_lanes_sample_masks<MULT, NOISE>(L[k], C, qg + k, sdv, g);
    } else {
      const uint32_t dword = C.dbits[qd];
#pragma GCC unroll 8
      for (int k = 0; k < K; ++k) {
        const int64_t qx = static_cast<int64_t>(b) * C.I + j0 + 16 * k;
        const __m512i xw = _mm512_maskz_loadu_epi32(L[k].lm, C.xbits + qx);
        const __m512 sxv = _mm512_maskz_loadu_ps(L[k].lm, C.sx + qx);
        agg_lanes_sample<MULT, NOISE>(L[k], xw, sxv, dword, sdv, g);
      }
    }
  }
  int64_t tot = 0;
#pragma GCC unroll 8
  for (int k = 0; k < K; ++k) {
    if (CARRY) events_to(k, std::numeric_limits<int>::max());
    tot += agg_lanes_finish<NOISE>(L[k], R, j0 + 16 * k, g, u, wvis_noise, zrow);
  }
  return tot;
}

// One group of 16 columns from j0 (aggregate_groups with K = 1; carry mode: with the events of `ev`).
// (One-slot calls without events run their groups K at a time in aggregate_chunks, carry calls in
// aggregate_groups; a row's last group left over from those comes here.)
template <bool MULT, bool NOISE, bool ONE, bool CARRY>
int64_t aggregate_chunk(const FusedRow& R, const AggCall& C, int j0, const DeviceGlobals& g, const UpdateArgs& u,
                        float* wvis_noise, const float* zrow, const AggEvents& ev = AggEvents{}) {
  return aggregate_groups<MULT, NOISE, ONE, CARRY, 1>(R, C, j0, g, u, wvis_noise, zrow, &ev);
}

// Pass 2 on the jobs of (row, sample b). d sign sdi (±1, times chopper). Returns the pulses applied.
// AGG (one-sample calls in the aggregated mode): the moments of each job's n pulses from (w, 0) and one
// aggregate_normal (device_step.h), the aggregate_chunk contract for B = 1 but only on the touched lanes.
template <bool MULT, bool NOISE, bool AGG>
int64_t fused_apply(const FusedRow& R, const FusedJobs& J, int nj, float sdi, uint32_t b, const DeviceGlobals& g,
                    const UpdateArgs& u) {
  const __m512 zero = _mm512_setzero_ps(), sigma = _mm512_set1_ps(g.sigma), sdv = _mm512_set1_ps(sdi);
  const __m512 plus = _mm512_set1_ps(1.0f), minus = _mm512_set1_ps(-1.0f);
  const __m512i rowv = _mm512_set1_epi32(R.row);
  int64_t tot = 0;
  for (int t = 0; t < nj; t += 16) {
    const __mmask16 m = tail_mask16(nj - t);
    const __m512i j = _mm512_maskz_loadu_epi32(m, J.j.data() + t);
    const __m512i n = _mm512_maskz_loadu_epi32(m, J.n.data() + t);
    const __m512 sx = _mm512_maskz_loadu_ps(m, J.sx.data() + t);
    const __mmask16 up = _mm512_mask_cmp_ps_mask(m, _mm512_mul_ps(sdv, sx), zero, _CMP_LT_OQ);  // sdi·sx < 0
    const __m512i e = _mm512_add_epi32(j, rowv);
    const __m512 wst = _mm512_mask_i32gather_ps(zero, m, e, R.state, 4);
    const __m512 ref = _mm512_mask_i32gather_ps(zero, m, e, R.ref, 4);
    const __m512 bmn = _mm512_mask_i32gather_ps(zero, m, e, R.bmin, 4);
    const __m512 bmx = _mm512_mask_i32gather_ps(zero, m, e, R.bmax, 4);
    // one gather each for the slope and the scale of the lane's direction (plane index by up/down)
    const __m512i pl = _mm512_set1_epi32(R.plane);
    const __m512i es = _mm512_add_epi32(e, _mm512_mullo_epi32(pl, _mm512_mask_blend_epi32(
                                               up, _mm512_set1_epi32(P_SLOPE_DOWN), _mm512_set1_epi32(P_SLOPE_UP))));
    const __m512i ec = _mm512_add_epi32(e, _mm512_mullo_epi32(pl, _mm512_mask_blend_epi32(
                                               up, _mm512_set1_epi32(P_SCALE_DOWN), _mm512_set1_epi32(P_SCALE_UP))));
    const __m512 s = _mm512_mask_i32gather_ps(zero, m, es, R.params, 4);
    const __m512 c = _mm512_mask_i32gather_ps(zero, m, ec, R.params, 4);
    const __m512 sg = _mm512_mask_blend_ps(up, minus, plus);
    __m512 wd = _mm512_add_ps(wst, ref);
    if (AGG) {
      AggLanes L;
      L.lm = m;
      L.ref = ref, L.bmn = bmn, L.bmx = bmx, L.s_up = s, L.c_up = c, L.ns_dn = neg16(s), L.nc_dn = neg16(c);
      L.du.base(s);
      L.dd.base(L.ns_dn);  // −s
      L.m = wd;
      L.v = zero;
      L.cnt = _mm512_setzero_si512();
      agg_lanes_apply<MULT, NOISE>(L, n, _mm512_mul_ps(sdv, sx), m, g);
      wd = L.m;
      if (NOISE)
        wd = _mm512_add_ps(L.m, _mm512_mul_ps(_mm512_sqrt_ps(L.v), aggregate_normal16(e, u.seed, u.offset)));
      wd = _mm512_min_ps(_mm512_max_ps(wd, bmn), bmx);
    } else {
      const int maxn = _mm512_mask_reduce_max_epi32(m, n);
      BM16 bm;
      __m512i r2 = _mm512_setzero_si512(), r3 = _mm512_setzero_si512();
      for (int q = 0; q < maxn; ++q) {
        const __mmask16 mq = _mm512_mask_cmpgt_epi32_mask(m, n, _mm512_set1_epi32(q));
        __m512 z = zero;
        if (NOISE) {
          switch (q & 3) {
            case 0: {
              __m512i r0, r1;
              philox16(e, S_PULSE_NOISE, static_cast<uint32_t>(q >> 2), b, u.seed, u.offset, r0, r1, r2, r3);
              bm = bm16_prepare(r0, r1);
              z = bm16_normal(bm, false);
              break;
            }
            case 1:
              z = bm16_normal(bm, true);
              break;
            case 2:
              bm = bm16_prepare(r2, r3);
              z = bm16_normal(bm, false);
              break;
            default:
              z = bm16_normal(bm, true);
          }
        }
        wd = step16<MULT, NOISE>(wd, mq, s, c, sg, bmn, bmx, sigma, z);
      }
    }
    const __m512 st = _mm512_sub_ps(wd, ref);
    _mm512_mask_i32scatter_ps(R.state, m, e, st, 4);
    if (R.vis) _mm512_mask_i32scatter_ps(R.vis, m, e, st, 4);
    if (R.prow) {  // (null: the caller counts the row's pulses itself, row_pulse_counts)
      const __m512 pc = _mm512_mask_i32gather_ps(zero, m, j, R.prow, 4);
      _mm512_mask_i32scatter_ps(R.prow, m, j, _mm512_add_ps(pc, _mm512_cvtepi32_ps(n)), 4);
    }
    tot += _mm512_mask_reduce_add_epi32(m, n);
  }
  return tot;
}


}  // namespace analogtrain

#endif
