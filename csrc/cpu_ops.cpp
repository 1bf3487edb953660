// CPU kernels of the tile ops (OpenMP) and the torch op schema (namespace `analogtrain`).
//
//   analogtrain::pulsed_update      the per-sample pulsed outer-product update (reference.py)
//   analogtrain::buffered_transfer  TT-family transfer of one slice: buffer accumulate, threshold,
//                                   forget/momentum, then the C write as a one-sample pulsed update
//                                   (reference_transfer.py)
//   analogtrain::chopped_update_snapshots  the c-TTv2/AGAD per-batch A work: the rule's sequence of
//                                   pulsed-update calls (own offsets, lrs, choppers) with a snapshot of
//                                   the slice read after each call (reference_chopped.py)
//   analogtrain::buffered_transfer_seq    the R transfers of a batch, each exactly one buffered_transfer
//   analogtrain::philox_*_grid_offsets     IO-noise grids with one op-call counter per row (batched reads)
//   analogtrain::auto_scale_lrs           the auto-scale EMA / fast-lr loop of a chopped batch (float64)
//   analogtrain::agad_signals             AGAD's reference correction of a batch's reads, in read order
//
// Work split of pulsed_update (semantics: every sample is its own update, applied in batch order):
//   phase 1 (parallel over samples): per-sample scales, probabilities, bit-packed x and d pulse trains
//            (one Philox block per 4 slots per entry, generated ONCE per row/column, not per element)
//            and the list of columns whose train is non-empty;
//   phase 2 (parallel over rows): every row walks the samples in order and, for each active column,
//            counts coincidences with a popcount and applies the pulses (noise drawn only for pulses
//            that happen). Rows are independent, so the per-element sample order is kept.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu_agg_lanes.h"  // (first: its vector libm is device_step.h's on this CPU)
#include "op_schemas.h"
#include "pulsed_update.h"

#if defined(ANALOGTRAIN_LIBMVEC) && defined(__AVX512F__)
#include <immintrin.h>
// glibc's vector math library (libmvec, ≤ 4 ulp in double: after rounding to float the normals equal
// the scalar Box–Muller's except with probability ~1e-8 per draw, by one float ulp).
extern "C" __m512d _ZGVeN8v_log(__m512d);
extern "C" __m512d _ZGVeN8v_cos(__m512d);
extern "C" __m512d _ZGVeN8v_sin(__m512d);
#define AT_VEC_WIDTH 8
#elif defined(ANALOGTRAIN_LIBMVEC) && defined(__AVX2__)
#include <immintrin.h>
extern "C" __m256d _ZGVdN4v_log(__m256d);
extern "C" __m256d _ZGVdN4v_cos(__m256d);
extern "C" __m256d _ZGVdN4v_sin(__m256d);
#define AT_VEC_WIDTH 4
#else
#define AT_VEC_WIDTH 1
#endif

#include "cpu_fused_avx512.h"  // AVX-512 fast paths of the pulsed update (AT_FUSED_AVX512)
#include "cpu_fused_avx2.h"    // else the AVX2 one of the exact mode (AT_FUSED_AVX2)
// either fast path of the exact mode (fused_jobs / fused_apply: run_row_fused, run_flat_fused), and
// whether it also takes the aggregated mode's one-sample calls (fused_apply<.., AGG = true>)
#define AT_FUSED (AT_FUSED_AVX512 || AT_FUSED_AVX2)
#define AT_FUSED_AGG (AT_FUSED_AVX512 || (AT_FUSED_AVX2 && AT_LANES_MANY))

namespace analogtrain {
namespace {

// ---- batched noise: Philox over many counters (auto-vectorised) and Box–Muller with vector libm ----

// r[k][q] = word k of philox_block(seed, offset, stream, a[q], b, blk[q]) for q < n.
void philox_many(int n, const uint32_t* a, const uint32_t* blk, uint32_t stream, uint32_t b, uint64_t seed,
                 uint64_t offset, uint32_t* r0, uint32_t* r1, uint32_t* r2, uint32_t* r3) {
  const uint32_t c3 = static_cast<uint32_t>(offset & 0xFFFFFFFFull);
  const uint32_t k0s = static_cast<uint32_t>(seed), k1s = static_cast<uint32_t>(seed >> 32);
#pragma omp simd
  for (int q = 0; q < n; ++q) {
    uint32_t x0 = a[q], x1 = ((stream & 0xFFu) << 24) | (blk[q] & 0xFFFFFFu), x2 = b, x3 = c3;
    uint32_t k0 = k0s, k1 = k1s;
    for (int r = 0; r < 10; ++r) {
      const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * x0;
      const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * x2;
      const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
      const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
      x0 = hi1 ^ x1 ^ k0;
      x1 = lo1;
      x2 = hi0 ^ x3 ^ k1;
      x3 = lo0;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    r0[q] = x0;
    r1[q] = x1;
    r2[q] = x2;
    r3[q] = x3;
  }
}

// bits[k] = the one-word train (bl <= 32 slots) of entry k < n with Bernoulli threshold thr[k] (sample b):
// make_train's slots, slot s firing when (word s & 3 of Philox block s >> 2) >> 8 < thr[k], the blocks of
// all n entries drawn by one philox_many each. thr = 0 (never fires) and 2^24 (always) need no special
// case: the comparison gives make_train's result without its shortcut.
[[maybe_unused]] void trains_many(const uint32_t* thr, int n, uint32_t stream, uint32_t b, int bl, uint64_t seed, uint64_t offset,
                 uint32_t* bits) {
  thread_local std::vector<uint32_t> a, blk, r0, r1, r2, r3;
  for (auto* v : {&a, &blk, &r0, &r1, &r2, &r3})
    if (v->size() < static_cast<size_t>(n)) v->resize(static_cast<size_t>(n));
  for (int k = 0; k < n; ++k) a[k] = static_cast<uint32_t>(k), bits[k] = 0u;
  for (int q0 = 0; q0 < bl; q0 += 4) {
    std::fill(blk.begin(), blk.begin() + n, static_cast<uint32_t>(q0 >> 2));
    philox_many(n, a.data(), blk.data(), stream, b, seed, offset, r0.data(), r1.data(), r2.data(), r3.data());
    const uint32_t* r[4] = {r0.data(), r1.data(), r2.data(), r3.data()};
    for (int q = 0; q < 4 && q0 + q < bl; ++q) {
      const uint32_t* rq = r[q];
      const int s = q0 + q;
#pragma omp simd
      for (int k = 0; k < n; ++k) bits[k] |= static_cast<uint32_t>((rq[k] >> 8) < thr[k]) << s;
    }
  }
}

// z_cos[q] (and z_sin[q] when want_sin; z_sin may be null otherwise) = Box–Muller of the word pair
// (w0[q], w1[q]), double -> float.
void box_muller_many(int n, const uint32_t* w0, const uint32_t* w1, bool want_sin, float* z_cos, float* z_sin) {
  int q = 0;
#if AT_VEC_WIDTH == 8
  // all in registers: u = ((w >> 8) + 0.5)·2^-24 exactly (cvtepu32 of a 24-bit integer), the same double
  // operations as box_muller, and cvtpd_ps rounds to nearest like static_cast<float>
  const __m512d half = _mm512_set1_pd(0.5), scale = _mm512_set1_pd(5.9604644775390625e-08);
  const __m512d two_pi = _mm512_set1_pd(6.283185307179586), m2 = _mm512_set1_pd(-2.0);
  for (; q + 8 <= n; q += 8) {
    const __m256i a0 = _mm256_srli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0 + q)), 8);
    const __m256i a1 = _mm256_srli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w1 + q)), 8);
    const __m512d u0 = _mm512_mul_pd(_mm512_add_pd(_mm512_cvtepu32_pd(a0), half), scale);
    const __m512d ang = _mm512_mul_pd(two_pi, _mm512_mul_pd(_mm512_add_pd(_mm512_cvtepu32_pd(a1), half), scale));
    const __m512d rad = _mm512_sqrt_pd(_mm512_mul_pd(m2, _ZGVeN8v_log(u0)));
    _mm256_storeu_ps(z_cos + q, _mm512_cvtpd_ps(_mm512_mul_pd(rad, _ZGVeN8v_cos(ang))));
    if (want_sin) _mm256_storeu_ps(z_sin + q, _mm512_cvtpd_ps(_mm512_mul_pd(rad, _ZGVeN8v_sin(ang))));
  }
#elif AT_VEC_WIDTH == 4
  // AVX2: the same in ymm registers, 4 doubles at a time ((w >> 8) < 2^24 converts exactly as int32)
  const __m256d half = _mm256_set1_pd(0.5), scale = _mm256_set1_pd(5.9604644775390625e-08);
  const __m256d two_pi = _mm256_set1_pd(6.283185307179586), m2 = _mm256_set1_pd(-2.0);
  for (; q + 4 <= n; q += 4) {
    const __m128i a0 = _mm_srli_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w0 + q)), 8);
    const __m128i a1 = _mm_srli_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w1 + q)), 8);
    const __m256d u0 = _mm256_mul_pd(_mm256_add_pd(_mm256_cvtepi32_pd(a0), half), scale);
    const __m256d ang = _mm256_mul_pd(two_pi, _mm256_mul_pd(_mm256_add_pd(_mm256_cvtepi32_pd(a1), half), scale));
    const __m256d rad = _mm256_sqrt_pd(_mm256_mul_pd(m2, _ZGVdN4v_log(u0)));
    _mm_storeu_ps(z_cos + q, _mm256_cvtpd_ps(_mm256_mul_pd(rad, _ZGVdN4v_cos(ang))));
    if (want_sin) _mm_storeu_ps(z_sin + q, _mm256_cvtpd_ps(_mm256_mul_pd(rad, _ZGVdN4v_sin(ang))));
  }
#endif
  for (; q < n; ++q) {
    if (want_sin) {
      box_muller2(w0[q], w1[q], z_cos[q], z_sin[q]);
    } else {
      z_cos[q] = box_muller(w0[q], w1[q], false);
    }
  }
}

// z[t] = aggregate_normal(seed, offset, e[t]) (device_step.h) for t < n, vectorised: one philox_many
// over the counters e >> 2, the word pair (r0, r1) or (r2, r3) by bit 1 of e, Box–Muller's cosine or
// sine by bit 0.
void aggregate_normals_of(uint64_t seed, uint64_t offset, const uint32_t* e, int n, float* z) {
  thread_local std::vector<uint32_t> a, blk, r0, r1, r2, r3;
  thread_local std::vector<float> zs;
  for (auto* v : {&a, &blk, &r0, &r1, &r2, &r3})
    if (v->size() < static_cast<size_t>(n)) v->resize(static_cast<size_t>(n));
  if (zs.size() < static_cast<size_t>(n)) zs.resize(static_cast<size_t>(n));
  for (int t = 0; t < n; ++t) a[t] = e[t] >> 2, blk[t] = 0u;
  philox_many(n, a.data(), blk.data(), S_PULSE_NOISE, 0u, seed, offset, r0.data(), r1.data(), r2.data(), r3.data());
  for (int t = 0; t < n; ++t)
    if (e[t] & 2u) r0[t] = r2[t], r1[t] = r3[t];
  box_muller_many(n, r0.data(), r1.data(), true, z, zs.data());
  for (int t = 0; t < n; ++t)
    if (e[t] & 1u) z[t] = zs[t];
}

// z[t] = aggregate_normal(seed, offset, e0 + t) for t < n: the consecutive elements of a row, four per
// Philox counter (e >> 2), so one philox_many over the row's counters and one sine-and-cosine
// Box–Muller per word pair give all of them (a quarter of aggregate_normals_of's Philox calls and half
// its logarithms; on the AVX2 path all in registers, cpu_fused_avx2.h aggregate_normals8). e0 + n <= 2^32;
// z needs room for n + AGG_RANGE_PAD floats (the AVX2 path stores whole blocks of 32).
constexpr int AGG_RANGE_PAD = 35;
void aggregate_normals_range(uint64_t seed, uint64_t offset, uint32_t e0, int n, float* z) {
  if (n <= 0) return;
#if AT_FUSED_AVX2
  aggregate_normals8(seed, offset, e0, n, z);
#else
  thread_local std::vector<uint32_t> a, blk, r0, r1, r2, r3;
  thread_local std::vector<float> zc01, zs01, zc23, zs23;
  const int lead = static_cast<int>(e0 & 3u), nb = (lead + n + 3) / 4;
  for (auto* v : {&a, &blk, &r0, &r1, &r2, &r3})
    if (v->size() < static_cast<size_t>(nb)) v->resize(static_cast<size_t>(nb));
  for (auto* v : {&zc01, &zs01, &zc23, &zs23})
    if (v->size() < static_cast<size_t>(nb)) v->resize(static_cast<size_t>(nb));
  for (int k = 0; k < nb; ++k) a[k] = (e0 >> 2) + static_cast<uint32_t>(k), blk[k] = 0u;
  philox_many(nb, a.data(), blk.data(), S_PULSE_NOISE, 0u, seed, offset, r0.data(), r1.data(), r2.data(), r3.data());
  box_muller_many(nb, r0.data(), r1.data(), true, zc01.data(), zs01.data());  // draws 0, 1
  box_muller_many(nb, r2.data(), r3.data(), true, zc23.data(), zs23.data());  // draws 2, 3
  const float* by_draw[4] = {zc01.data(), zs01.data(), zc23.data(), zs23.data()};
  for (int t = 0; t < n; ++t) {
    const int q = lead + t;
    z[t] = by_draw[q & 3][q >> 2];
  }
#endif
}

struct Trains {
  int B = 0, I = 0, O = 0, nw = 0;
  std::vector<SampleScales> sc;
  std::vector<uint32_t> xbits, dbits;  // (B, I, nw), (B, O, nw)
  std::vector<float> px, pd;           // probabilities (B, I), (B, O)
  std::vector<float> sx, sd;           // signs incl. sign(lr) and choppers
  std::vector<int32_t> act;            // (B, I) active columns of each sample, first nact[b] valid
  std::vector<int32_t> nact;
  std::vector<uint8_t> dact;           // (B, O) row has a non-empty train / count
  // nw == 1 (BL <= 32) pulsed mode: per sample, the active columns whose x train fires in slot k are
  // slot_cols[b][slot_off[b*33 + k] .. slot_off[b*33 + k + 1]) (for the scatter coincidence count)
  std::vector<int32_t> slot_off;
  std::vector<std::vector<int32_t>> slot_cols;
  // nw == 1 pulsed mode: x train word and x sign of each active column, in act order (B, I) (fused path)
  std::vector<uint32_t> xact_bits;
  std::vector<float> xact_sgn;
  // AGG_FAST path, one-slot calls (maxbl == 1): the x side's masks per sample and 16-column group
  // (side_masks16), (B, ceil(I / 16))
  std::vector<uint16_t> xon16, xpos16, xneg16;
  // which phase 2 runs (decided before phase 1, which builds only what that path reads)
  enum Path { GENERIC, FUSED, AGG_FAST, AGG_LANES } path = GENERIC;
  int maxbl = 0;  // the longest train of the call (1: every coincidence is exactly one pulse)
  // carry mode (aggregated chopped_update_snapshots): the finish events between samples, and per
  // 16-column group the events of its columns (columns mode, AVX-512 path)
  const CarryPlan* carry = nullptr;
  std::vector<std::vector<int>> gev;
};

float entry_round_uniform(const UpdateArgs& u, uint32_t a, uint32_t b, uint32_t draw) {
  if (!(u.res > 0 && u.sto_round && u.mode != MODE_EXPECTED)) return 0.0f;
  return uniform_draw(u.seed, u.offset, S_PROB_ROUND, a, b, draw);
}

// Whether one train element (x column or d row `idx` of sample b, probability p) takes part in the
// update: pulsed -> its bit-packed train (written to wds) has a fired slot; mean_count -> a non-zero
// count; expected -> p > 0.
inline bool element_fires(const UpdateArgs& u, uint32_t stream, int idx, int b, int bl, float p, uint32_t* wds) {
  if (u.mode == MODE_PULSED) return make_train(u.seed, u.offset, stream, idx, b, bl, p, wds);
  if (u.mode == MODE_MEAN_COUNT) return mean_count(p, bl) > 0.0;
  return p > 0.0f;
}

// Phase 1, one side of sample b (x: the sample's I inputs, scale B, sign(lr), chop_in, stream X_TRAIN,
// rounding draw 0; d: its O errors, scale A, 1, chop_out, stream D_TRAIN, draw 1). Writes the
// probabilities p and signs sg = sign(v)·slr·chop of the n entries, their trains (nw words per entry,
// pulsed mode) and on[k] = 1 where entry k takes part in the update (its train fires and its sign is
// not 0).
void build_side(const UpdateArgs& u, int b, int bl, double scale, const float* v, int n, float slr, const float* chop,
                uint32_t stream, uint32_t round_draw, int nw, float* p, float* sg, uint32_t* bits, uint8_t* on) {
  const auto entry = [&](int k) {
    p[k] = probability(v[k], scale, u, entry_round_uniform(u, static_cast<uint32_t>(k), static_cast<uint32_t>(b),
                                                           round_draw));
    sg[k] = sign_f(v[k]) * slr;
    if (chop) sg[k] = sg[k] * chop[k];
  };
  if (u.mode == MODE_PULSED && nw == 1) {
    // one-word trains: thresholds first, then 8 or 16 entries per Philox call (trains8 / trains16,
    // which skip the groups whose thresholds are all 0); without res, the probabilities, signs and
    // thresholds are computed 8 or 16 at a time too (entries8 / entries16: the scalar entry's numbers)
    thread_local std::vector<uint32_t> thr;
    thr.resize(static_cast<size_t>(n));
    // A mostly-zero side of 32+ entries (the one-hot x, or the sparse −n, of a transfer's C write: 150
    // entries for one live one in a LeNet conv2 read): without res a zero entry has p = 0, sign ±0
    // and threshold 0 and never fires, so those are filled in and only the non-zero entries are
    // computed (the scalar entry, whose numbers entries8 / entries16 reproduce)
    int nnz = n;
    if (!(u.res > 0) && n >= 32) {
      nnz = 0;
      for (int k = 0; k < n; ++k) nnz += v[k] != 0.0f ? 1 : 0;
    }
    if (4 * nnz <= n) {
      std::fill_n(p, n, 0.0f);
      std::fill_n(sg, n, 0.0f);
      std::fill(thr.begin(), thr.end(), 0u);
      for (int k = 0; k < n; ++k)
        if (v[k] != 0.0f) entry(k), thr[k] = bernoulli_threshold(p[k]);
    } else if (!(u.res > 0)) {
#if AT_FUSED_AVX512
      entries16(v, n, scale, slr, chop, p, sg, thr.data());
#elif AT_FUSED_AVX2
      entries8(v, n, scale, slr, chop, p, sg, thr.data());
#else
      for (int k = 0; k < n; ++k) entry(k), thr[k] = bernoulli_threshold(p[k]);
#endif
    } else {
      for (int k = 0; k < n; ++k) entry(k), thr[k] = bernoulli_threshold(p[k]);
    }
#if AT_FUSED_AVX512
    trains16(thr.data(), n, 0u, stream, static_cast<uint32_t>(b), bl, u.seed, u.offset, bits);
#elif AT_FUSED_AVX2
    trains8(thr.data(), n, 0u, stream, static_cast<uint32_t>(b), bl, u.seed, u.offset, bits);
#else
    trains_many(thr.data(), n, stream, static_cast<uint32_t>(b), bl, u.seed, u.offset, bits);
#endif
    for (int k = 0; k < n; ++k) on[k] = (bits[k] != 0u && sg[k] != 0.0f) ? 1 : 0;
    return;
  }
  for (int k = 0; k < n; ++k) {
    entry(k);
    const bool fires = element_fires(u, stream, k, b, bl, p[k], bits + static_cast<int64_t>(k) * nw);
    on[k] = (fires && sg[k] != 0.0f) ? 1 : 0;
  }
}

// Whether phase 1 also writes T's per-group x masks (AGG_FAST, one-slot trains: aggregate_chunk's
// sample step reads them).
inline bool x_masks([[maybe_unused]] const Trains& T) {
#if AT_FUSED_AVX512
  return T.path == Trains::AGG_FAST && T.maxbl == 1;
#else
  return false;
#endif
}

// Phase 1 for one sample: stored at index b of T (x, d: the rows of T's samples), drawn with sample
// counter bc (its index inside its pulsed-update call; b itself for a single call).
void build_sample(Trains& T, int b, uint32_t bc, const float* x, const float* d, const UpdateArgs& u,
                  const float* cin, const float* cout) {
  const int I = T.I, O = T.O, nw = T.nw;
  const SampleScales s = T.sc[b];
  if (s.bl == 0) {
    T.nact[b] = 0;
    return;
  }
  const int64_t qx = static_cast<int64_t>(b) * I, qd = static_cast<int64_t>(b) * O;
  int32_t* act = T.act.data() + qx;
  thread_local std::vector<uint8_t> xon;
  xon.resize(static_cast<size_t>(I));
  build_side(u, static_cast<int>(bc), s.bl, s.b, x + qx, I, static_cast<float>(u.sign_lr), cin, S_X_TRAIN, 0u, nw,
             T.px.data() + qx, T.sx.data() + qx, T.xbits.data() + qx * nw, xon.data());
  int na = 0;
  for (int j = 0; j < I; ++j) {  // (branch-free: whether a column fires is random)
    act[na] = j;
    na += xon[j];
  }
  T.nact[b] = na;
#if AT_FUSED_AVX512
  if (x_masks(T)) {
    const int64_t q = static_cast<int64_t>(b) * ((I + 15) / 16);
    side_masks16(xon.data(), T.sx.data() + qx, I, T.xon16.data() + q, T.xpos16.data() + q, T.xneg16.data() + q);
  }
#endif
  if (T.path == Trains::FUSED) {
    uint32_t* xa = T.xact_bits.data() + qx;
    float* xs = T.xact_sgn.data() + qx;
    for (int t = 0; t < na; ++t) {
      xa[t] = T.xbits[qx + act[t]];
      xs[t] = T.sx[qx + act[t]];
    }
  }
  if (T.path == Trains::GENERIC && u.mode == MODE_PULSED && nw == 1) {  // slot lists (counting sort by slot)
    int32_t* so = T.slot_off.data() + static_cast<int64_t>(b) * 33;
    int cnt[33] = {0};
    for (int t = 0; t < na; ++t)
      for (uint32_t m = T.xbits[qx + act[t]]; m; m &= m - 1) cnt[__builtin_ctz(m) + 1]++;
    so[0] = 0;
    for (int k = 0; k < 32; ++k) so[k + 1] = so[k] + cnt[k + 1];
    std::vector<int32_t>& cols = T.slot_cols[b];
    cols.resize(static_cast<size_t>(so[32]));
    int pos[32];
    for (int k = 0; k < 32; ++k) pos[k] = so[k];
    for (int t = 0; t < na; ++t)
      for (uint32_t m = T.xbits[qx + act[t]]; m; m &= m - 1) cols[pos[__builtin_ctz(m)]++] = act[t];
  }
  build_side(u, static_cast<int>(bc), s.bl, s.a, d + qd, O, 1.0f, cout, S_D_TRAIN, 1u, nw, T.pd.data() + qd,
             T.sd.data() + qd, T.dbits.data() + qd * nw, T.dact.data() + qd);
}


// Per-thread scratch of the job path of one (row, sample): the jobs, sorted by pulse count, their
// device state gathered into SoA arrays, and the cycle-to-cycle normals in pulse-major order.
struct JobScratch {
  std::vector<int32_t> job_j, job_n;  // unsorted jobs: column, pulses
  std::vector<uint8_t> job_up;
  std::vector<int32_t> cnt, touched;  // scatter coincidence counting: per column count (zeroed), columns hit
  std::vector<int32_t> hist, cgt, next;
  std::vector<int32_t> sj, sn;        // jobs sorted by n, descending
  std::vector<uint8_t> sup;
  std::vector<uint32_t> ea, blk, r0, r1, r2, r3;
  std::vector<float> wv, bmin, bmax, s, sc, sg, ref, zc, zs, z;
  std::vector<ElemParams> ep;
  std::vector<int32_t> zoff;
  std::vector<float> agg_m, agg_v;  // aggregated mode: moments of the row's elements, touched flags
  // the row paths of the aggregated batches (run_row_lanes, run_row_agg): the samples in which the row
  // takes part, its carry events (rows mode) and its final normals (scratch, not thread_local: a
  // thread_local of this shared library costs a __tls_get_addr call per row)
  std::vector<int> act_b, rev;
  std::vector<float> zrow;
  std::vector<uint8_t> agg_touched;  // bit 0: touched; bit 1 / 2: agg_up / agg_dn computed
  std::vector<int32_t> agg_list;     // the columns touched in this row (in first-touch order)
  std::vector<AggDir> agg_up, agg_dn;  // per-direction constants of the row's elements (once per call)
  template <class V>
  static void fit(V& v, size_t n) {
    if (v.size() < n) v.resize(n);
  }
};

// Apply the nj jobs (distinct columns j with n_j > 0 pulses of one sign) of row `row` in sample b.
//
// Jobs are counting-sorted by n (descending), so "the jobs that still have a pulse q" is a prefix of
// length cgt[q] = #{t: n_t > q}. Then (a) the normals are generated block-major for whole prefixes
// (one vectorised Philox call per block index, one vectorised Box–Muller call per word pair) and stored
// pulse-major, z[zoff[q] + t] = normal(…, a = row + j_t, b, draw = q); (b) the pulses are applied
// pulse-major, `for q: for t < cgt[q]: w_t = step(w_t, z_q[t])`: the inner loop runs over independent
// elements (SIMD across columns) instead of one element's serial chain. Every element still sees its
// pulses in draw order with exactly the reference's float operations, so the result is bit-identical
// to the element-by-element loop.
template <int KIND, bool MULT, bool NOISE>
void apply_jobs(JobScratch& ns, int nj, int64_t row, uint32_t b, float* w, float* w_p, const float* params,
                int64_t plane, const DeviceGlobals& g, const UpdateArgs& u, float* prow) {
  float* state = w_p ? w_p : w;
  int maxn = 0;
  for (int t = 0; t < nj; ++t) maxn = std::max(maxn, ns.job_n[t]);
  JobScratch::fit(ns.hist, maxn + 2);
  JobScratch::fit(ns.cgt, maxn + 4);
  JobScratch::fit(ns.next, maxn + 2);
  std::fill(ns.hist.begin(), ns.hist.begin() + maxn + 2, 0);
  for (int t = 0; t < nj; ++t) ns.hist[ns.job_n[t]]++;
  // cgt[q] = #jobs with n > q (q = 0..maxn+3; zero from maxn on)
  for (int q = maxn; q < maxn + 4; ++q) ns.cgt[q] = 0;
  for (int q = maxn - 1; q >= 0; --q) ns.cgt[q] = ns.cgt[q + 1] + ns.hist[q + 1];
  for (int n = 1; n <= maxn; ++n) ns.next[n] = ns.cgt[n];  // jobs with n pulses start after all larger n
  JobScratch::fit(ns.sj, nj), JobScratch::fit(ns.sn, nj), JobScratch::fit(ns.sup, nj);
  for (int t = 0; t < nj; ++t) {
    const int pos = ns.next[ns.job_n[t]]++;
    ns.sj[pos] = ns.job_j[t];
    ns.sn[pos] = ns.job_n[t];
    ns.sup[pos] = ns.job_up[t];
  }
  // gather the device state and parameters of the jobs
  JobScratch::fit(ns.wv, nj), JobScratch::fit(ns.ref, nj);
  if (KIND == KIND_LINEAR) {
    JobScratch::fit(ns.bmin, nj), JobScratch::fit(ns.bmax, nj), JobScratch::fit(ns.s, nj);
    JobScratch::fit(ns.sc, nj), JobScratch::fit(ns.sg, nj);
  } else {
    JobScratch::fit(ns.ep, nj);
  }
  for (int t = 0; t < nj; ++t) {
    const int64_t e = row + ns.sj[t];
    const bool up = ns.sup[t] != 0;
    const float rf = params[P_REF * plane + e];
    ns.ref[t] = rf;
    ns.wv[t] = state[e] + rf;
    if (KIND == KIND_LINEAR) {
      ns.bmin[t] = params[P_BMIN * plane + e];
      ns.bmax[t] = params[P_BMAX * plane + e];
      ns.s[t] = params[(up ? P_SLOPE_UP : P_SLOPE_DOWN) * plane + e];
      ns.sc[t] = params[(up ? P_SCALE_UP : P_SCALE_DOWN) * plane + e];
      ns.sg[t] = up ? 1.0f : -1.0f;  // w + (±1·Δ): ±1·Δ is exact, so this rounds as w ± Δ
    } else {
      ns.ep[t] = load_params(params, plane, e);
    }
  }
  // cycle-to-cycle normals, pulse-major: z[zoff[q] + t], t < cgt[q]
  const float* z = nullptr;
  if (NOISE) {
    JobScratch::fit(ns.zoff, maxn + 1);
    int tot = 0;
    for (int q = 0; q < maxn; ++q) ns.zoff[q] = tot, tot += ns.cgt[q];
    JobScratch::fit(ns.z, tot);
    const int m0 = ns.cgt[0];
    JobScratch::fit(ns.ea, m0), JobScratch::fit(ns.blk, m0), JobScratch::fit(ns.r0, m0), JobScratch::fit(ns.r1, m0);
    JobScratch::fit(ns.r2, m0), JobScratch::fit(ns.r3, m0), JobScratch::fit(ns.zc, m0), JobScratch::fit(ns.zs, m0);
    for (int t = 0; t < m0; ++t) ns.ea[t] = static_cast<uint32_t>(row + ns.sj[t]);
    float* zz = ns.z.data();
    for (int k0 = 0; k0 < maxn; k0 += 4) {
      const int m = ns.cgt[k0], m1 = ns.cgt[k0 + 1], m2 = ns.cgt[k0 + 2], m3 = ns.cgt[k0 + 3];
      std::fill(ns.blk.begin(), ns.blk.begin() + m, static_cast<uint32_t>(k0 >> 2));
      philox_many(m, ns.ea.data(), ns.blk.data(), S_PULSE_NOISE, b, u.seed, u.offset, ns.r0.data(), ns.r1.data(),
                  ns.r2.data(), ns.r3.data());
      box_muller_many(m, ns.r0.data(), ns.r1.data(), m1 > 0, ns.zc.data(), ns.zs.data());  // draws k0, k0+1
      std::memcpy(zz + ns.zoff[k0], ns.zc.data(), sizeof(float) * m);
      if (m1 > 0) std::memcpy(zz + ns.zoff[k0 + 1], ns.zs.data(), sizeof(float) * m1);
      if (m2 > 0) {  // draws k0+2, k0+3 from (r2, r3)
        box_muller_many(m2, ns.r2.data(), ns.r3.data(), m3 > 0, ns.zc.data(), ns.zs.data());
        std::memcpy(zz + ns.zoff[k0 + 2], ns.zc.data(), sizeof(float) * m2);
        if (m3 > 0) std::memcpy(zz + ns.zoff[k0 + 3], ns.zs.data(), sizeof(float) * m3);
      }
    }
    z = zz;
  }
  // the pulses, pulse-major (independent elements in the inner loop)
  float* wv = ns.wv.data();
  for (int q = 0; q < maxn; ++q) {
    const int m = ns.cgt[q];
    const float* zq = NOISE ? z + ns.zoff[q] : nullptr;
    if (KIND == KIND_LINEAR) {
      const float* bmn = ns.bmin.data();
      const float* bmx = ns.bmax.data();
      const float* sl = ns.s.data();
      const float* scl = ns.sc.data();
      const float* sgn = ns.sg.data();
      const float sigma = g.sigma;
#pragma omp simd
      for (int t = 0; t < m; ++t) {
        const float wt = wv[t];
        const float fac = NOISE ? 1.0f + sigma * zq[t] : 1.0f;
        const float dlt = MULT ? (sl[t] * wt + scl[t]) * fac : (sl[t] * wt + scl[t] * fac);
        float nw = wt + sgn[t] * dlt;
        nw = nw > bmn[t] ? nw : bmn[t];  // clip_bounds
        wv[t] = nw < bmx[t] ? nw : bmx[t];
      }
    } else {
      for (int t = 0; t < m; ++t)
        wv[t] = device_step_t<KIND, MULT, NOISE>(wv[t], ns.sup[t] != 0, ns.ep[t], g, NOISE ? zq[t] : 0.0f);
    }
  }
  // write back
  for (int t = 0; t < nj; ++t) {
    const int j = ns.sj[t];
    const int64_t e = row + j;
    store_state(w, w_p, e, wv[t] - ns.ref[t], g, u.seed, u.offset, b);
    prow[j] += static_cast<float>(ns.sn[t]);
  }
}

// Phase 2 for one row i (all samples in order). Templated on the device kind and noise placement so
// the per-pulse loop has no run-time branches on tile-wide flags.
template <int KIND, bool MULT, bool NOISE>
void run_row(const Trains& T, int i, float* w, float* w_p, const float* params, int64_t plane, const DeviceGlobals& g,
             const UpdateArgs& u, float* pulses, JobScratch* scratch, int64_t* rtot) {
  const int I = T.I, O = T.O, nw = T.nw;
  const int64_t row = static_cast<int64_t>(i) * I;
  float* prow = pulses + row;
  JobScratch& ns = *scratch;
  if (u.aggregate) {  // (agg_touched is all zero between rows: cleared through agg_list at the end)
    JobScratch::fit(ns.agg_m, I), JobScratch::fit(ns.agg_v, I), JobScratch::fit(ns.agg_touched, I);
    JobScratch::fit(ns.agg_up, I), JobScratch::fit(ns.agg_dn, I);
    ns.agg_list.clear();
  }
  // carry mode (CarryPlan): event q finishes this row's touched elements of its slice, then copies the
  // slice's visible weight in this row to the snapshot
  const CarryPlan* cp = T.carry;
  int qe = 0;
  const auto event = [&](int q) {
    const int64_t k = cp->slice[q];
    if (!cp->columns && k != i) return;
    const int jb = cp->columns ? static_cast<int>(k) : 0, je = cp->columns ? static_cast<int>(k) + 1 : I;
    for (int j = jb; j < je; ++j) {
      if (!(ns.agg_touched[j] & 1)) continue;
      const int64_t e = row + j;
      const ElemParams p = load_params(params, plane, e);
      const float z = NOISE ? cp->z[q * cp->L + (cp->columns ? i : j)] : 0.0f;
      store_state(w, w_p, e, aggregate_draw(ns.agg_m[j], ns.agg_v[j], p, g, z) - p.ref, g, u.seed, cp->offset[q], 0u);
      ns.agg_touched[j] = 0;  // the next pulse restarts from the stored value
    }
    float* dst = cp->snaps + cp->call[q] * cp->L;
    if (cp->columns)
      dst[i] = w[row + k];
    else
      std::memcpy(dst, w + row, sizeof(float) * static_cast<size_t>(I));
  };
  for (int b = 0; b < T.B; ++b) {
    if (cp)
      for (; qe < cp->nev && cp->pos[qe] <= b; ++qe) event(qe);
    const SampleScales s = T.sc[b];
    if (s.bl == 0) continue;
    const int64_t qd = static_cast<int64_t>(b) * O + i;
    if (!T.dact[qd]) continue;
    const float sdi = T.sd[qd];
    const int32_t* act = T.act.data() + static_cast<int64_t>(b) * I;
    const int na = T.nact[b];
    const float* sxb = T.sx.data() + static_cast<int64_t>(b) * I;
    const float* pxb = T.px.data() + static_cast<int64_t>(b) * I;
    if (u.mode == MODE_EXPECTED) {
      const float pdc = std::min(T.pd[qd], 1.0f);
      const float blf = static_cast<float>(s.bl);
      for (int t = 0; t < na; ++t) {
        const int j = act[t];
        const float en = (pdc * std::min(pxb[j], 1.0f)) * blf;  // BL·min(p_d,1)·min(p_x,1)
        const float sgn = sdi * sxb[j];
        if (!(en > 0.0f) || sgn == 0.0f) continue;
        const int64_t e = row + j;
        element_expected(w, w_p, e, en, sgn < 0.0f, load_params(params, plane, e), g);
        prow[j] += en;
      }
      continue;
    }
    // 1. the jobs of this (row, sample): columns with n > 0 coincidences and a non-zero sign
    //    (every column of act and this row have non-zero signs: build_sample / dact guarantee it)
    const uint32_t* dwd = u.mode == MODE_PULSED ? T.dbits.data() + qd * nw : nullptr;
    const uint32_t* xw = u.mode == MODE_PULSED ? T.xbits.data() + static_cast<int64_t>(b) * I * nw : nullptr;
    JobScratch::fit(ns.job_j, na), JobScratch::fit(ns.job_n, na), JobScratch::fit(ns.job_up, na);
    int nj = 0;
    if (u.mode == MODE_PULSED && nw == 1) {
      const uint32_t d0 = dwd[0];
      // coincidences by scatter over the slot lists (work ∝ coincidences) when that beats a popcount
      // per active column (work ∝ na): the sparse regime, where most active pairs never coincide
      const int32_t* so = T.slot_off.data() + static_cast<int64_t>(b) * 33;
      int64_t cost = 0;
      for (uint32_t m = d0; m; m &= m - 1) {
        const int k = __builtin_ctz(m);
        cost += so[k + 1] - so[k];
      }
      if (cost < na) {
        JobScratch::fit(ns.cnt, I);
        JobScratch::fit(ns.touched, na);
        int* cnt = ns.cnt.data();  // all zero between uses
        int nt = 0;
        const int32_t* cols = T.slot_cols[b].data();
        for (uint32_t m = d0; m; m &= m - 1) {
          const int k = __builtin_ctz(m);
          for (int q = so[k]; q < so[k + 1]; ++q) {
            const int j = cols[q];
            if (cnt[j]++ == 0) ns.touched[nt++] = j;
          }
        }
        for (int t = 0; t < nt; ++t) {
          const int j = ns.touched[t];
          ns.job_j[nj] = j;
          ns.job_n[nj] = cnt[j];
          ns.job_up[nj] = sdi * sxb[j] < 0.0f;
          cnt[j] = 0;
          ++nj;
        }
      } else {
        for (int t = 0; t < na; ++t) {
          const int j = act[t];
          const int n = __builtin_popcount(xw[j] & d0);
          if (n <= 0) continue;
          ns.job_j[nj] = j;
          ns.job_n[nj] = n;
          ns.job_up[nj] = sdi * sxb[j] < 0.0f;
          ++nj;
        }
      }
    } else {
      const double cd_bl = u.mode == MODE_MEAN_COUNT ? mean_count(T.pd[qd], s.bl) / s.bl : 0.0;
      for (int t = 0; t < na; ++t) {
        const int j = act[t];
        int n;
        if (u.mode == MODE_PULSED) {
          n = 0;
          for (int k = 0; k < nw; ++k) n += __builtin_popcount(xw[static_cast<int64_t>(j) * nw + k] & dwd[k]);
        } else {
          n = static_cast<int>(round_half_even(cd_bl * mean_count(pxb[j], s.bl)));
        }
        if (n <= 0) continue;
        const float sgn = sdi * sxb[j];
        if (sgn == 0.0f) continue;
        ns.job_j[nj] = j;
        ns.job_n[nj] = n;
        ns.job_up[nj] = sgn < 0.0f;
        ++nj;
      }
    }
    if (nj == 0) continue;
    if (rtot) {  // exact per-row pulse total (integer counts) for the batched op's per-call statistics
      int64_t tot = 0;
      for (int t = 0; t < nj; ++t) tot += ns.job_n[t];
      rtot[i] += tot;
    }
    if (u.aggregate) {  // moments through the samples (KIND_LINEAR only: args_error)
      for (int t = 0; t < nj; ++t) {
        const int j = ns.job_j[t];
        const int64_t e = row + j;
        const ElemParams p = load_params(params, plane, e);
        const bool up = ns.job_up[t] != 0;
        uint8_t& st = ns.agg_touched[j];
        if (!st) {
          st = 1;
          ns.agg_list.push_back(j);
          ns.agg_m[j] = (w_p ? w_p : w)[e] + p.ref;
          ns.agg_v[j] = 0.0f;
        }
        const uint8_t have = up ? 2 : 4;
        AggDir& dir = up ? ns.agg_up[j] : ns.agg_dn[j];
        if (!(st & have)) {
          dir = agg_dir(up ? p.s_up : p.s_dn, up, g);
          st |= have;
        }
        aggregate_sample<MULT, NOISE>(ns.agg_m[j], ns.agg_v[j], ns.job_n[t], up, p, g, dir);
        prow[j] += static_cast<float>(ns.job_n[t]);
      }
      continue;
    }
    apply_jobs<KIND, MULT, NOISE>(ns, nj, row, static_cast<uint32_t>(b), w, w_p, params, plane, g, u, prow);
  }
  if (cp)
    for (; qe < cp->nev; ++qe) event(qe);
  if (u.aggregate) {  // the end of the call: one normal per touched element, drawn in batches (SIMD)
    // the touched columns: agg_list (work ∝ touched, not I: one-hot C writes touch one column); an
    // element finished by an event and touched again is listed twice, and kept once
    int nt = 0;
    JobScratch::fit(ns.touched, ns.agg_list.size()), JobScratch::fit(ns.ea, ns.agg_list.size());
    for (const int j : ns.agg_list) {
      if (ns.agg_touched[j] & 1) ns.touched[nt] = j, ns.ea[nt++] = static_cast<uint32_t>(row + j);
      ns.agg_touched[j] = 0;
    }
    const bool draw = g.has_noise && nt > 0;
    if (draw) {
      JobScratch::fit(ns.zc, nt);
      aggregate_normals_of(u.seed, u.offset, ns.ea.data(), nt, ns.zc.data());
    }
    for (int t = 0; t < nt; ++t) {
      const int j = ns.touched[t];
      const int64_t e = row + j;
      const ElemParams p = load_params(params, plane, e);
      const float wd = aggregate_draw(ns.agg_m[j], ns.agg_v[j], p, g, draw ? ns.zc[t] : 0.0f);
      store_state(w, w_p, e, wd - p.ref, g, u.seed, u.offset, 0u);
    }
  }
}

// The trains of one row's samples as run_lane_groups reads them: pointers and strides in a local of
// run_lane_groups, so they stay in registers through the sample loop (read through T, every sample reloaded
// the vectors' data pointers and T.O, T.I).
struct LaneSides {
  const uint32_t* dbits;  // the row's d word of sample 0 (stride O)
  const float* sd;        // the row's d sign of sample 0 (stride O)
  const int32_t* xbits;   // x words (B, I)
  const float* sx;        // x signs (B, I)
  int64_t O, I;
};

// One sample b of the group of columns [j0, j0 + G.nl) of row i (run_row_lanes): the coincidences of its
// trains, and the lanes' moments (m, v: the caller's registers) carried through its pulses. Returns the
// lanes left to the caller's scalar closed form (n > AGG_POLY_MAX without AT_LANES_MANY; their counts and
// directions in n_o, up_o), else none.
template <bool MULT, bool NOISE, bool ONE>
AT_LANES_INLINE lanes::vi lanes_sample(lanes::Group& G, const LaneSides& S, int b, int j0, lanes::vf& m,
                                       lanes::vf& v, lanes::vi& touched, lanes::vi& cnt, lanes::vi& n_o,
                                       lanes::vi& up_o) {
  using namespace lanes;
  const int64_t qd = static_cast<int64_t>(b) * S.O, qx = static_cast<int64_t>(b) * S.I + j0;
  const vi dw = splat_i(static_cast<int32_t>(S.dbits[qd]));
  const vi xw = load<vi>(S.xbits + qx, G.nl);  // lanes beyond the row: 0, never hit
  const vi hit = (xw & dw) != splat_i(0);
  if (!any(hit)) return splat_i(0);
  const vf sgn = splat(S.sd[qd]) * load<vf>(S.sx + qx, G.nl);
  const vi mk = hit & (sgn != splat(0.0f));  // (!=: true for NaN, as _CMP_NEQ_UQ)
  const vi up = mk & (sgn < splat(0.0f));    // sd·sx < 0: up pulses
  touched |= mk;
  if (ONE) {  // (a lane without pulses is left as it is: mk is all-zero there)
    cnt -= mk;  // mk lanes are −1
    G.one_pulse<MULT, NOISE>(mk, up, m, v);
    return splat_i(0);
  }
  const vi n = popcount(xw & dw) & mk;
  cnt += n;
  n_o = n, up_o = up;
  return G.pulses<MULT, NOISE>(mk, up, n, m, v);  // (AT_LANES_MANY: none left)
}

// The lanes of a group that took more than AGG_POLY_MAX pulses in one sample (builds without
// AT_LANES_MANY): the scalar aggregate_sample on the spilled moments, the direction constants on demand.
struct LanesScalarBig {
  AggDir dirs[2][lanes::W];
  bool have[2][lanes::W] = {};
  template <bool MULT, bool NOISE>
  void apply(float* ma, float* va, lanes::vi big, lanes::vi n, lanes::vi up, const float* params,
             int64_t plane, int64_t e0, int nl, const DeviceGlobals& g) {
    for (int l = 0; l < nl; ++l) {
      if (!big[l]) continue;
      const ElemParams p = load_params(params, plane, e0 + l);
      const bool u_l = up[l] != 0;
      AggDir& a = dirs[u_l][l];
      if (!have[u_l][l]) a = agg_dir(u_l ? p.s_up : p.s_dn, u_l, g), have[u_l][l] = true;
      aggregate_sample<MULT, NOISE>(ma[l], va[l], n[l], u_l, p, g, a);
    }
  }
};

// The end of the call for the group of elements [e0, e0 + G.nl) of run_row_lanes: the touched lanes
// drawn (z: their normals), clipped (aggregate_draw) and stored (store_state: the state, w_p or w; with a
// persistent weight w_p the visible w too, plus its write noise per element), and every lane's pulses
// added to prow (the group's counts). Returns the group's pulses.
template <bool NOISE>
AT_LANES_INLINE int64_t lanes_finish(const lanes::Group& G, lanes::vf m, lanes::vf v, lanes::vi touched,
                                     lanes::vi cnt, float* w, float* w_p, float* prow, const float* z, int64_t e0,
                                     const DeviceGlobals& g, const UpdateArgs& u) {
  using namespace lanes;
  if (any(touched)) {
    vf wd = m;
    if (NOISE) wd = m + vsqrt(v) * load<vf>(z, G.nl);
    const vf st = vmin(vmax(wd, G.bmn), G.bmx) - G.ref;
    store_masked((w_p ? w_p : w) + e0, st, touched, G.nl);
    if (w_p) {
      if (g.write_noise > 0.0f) {
        for (int l = 0; l < G.nl; ++l)
          if (touched[l]) store_state(w, w_p, e0 + l, st[l], g, u.seed, u.offset, 0u);
      } else {
        store_masked(w + e0, st, touched, G.nl);
      }
    }
  }
  // every lane's pulses (a lane finished by an event keeps the pulses it took before it)
  int64_t tot = 0;
  if (any(cnt)) {
    store_masked(prow, load<vf>(prow, G.nl) + __builtin_convertvector(cnt, vf), cnt != splat_i(0), G.nl);
    for (int l = 0; l < G.nl; ++l) tot += cnt[l];
  }
  return tot;
}

// What run_lane_groups needs of the row (run_row_lanes).
struct LaneRow {
  const Trains& T;
  int i;
  int64_t row;  // i·I: the row's first element
  float *w, *w_p, *state, *prow;  // state: the device state of the row (w_p or w), prow: its pulse counts
  const float* params;
  int64_t plane;
  const lanes::RowPlanes& P;
  const DeviceGlobals& g;
  const UpdateArgs& u;
  const std::vector<int>& act_b;  // the samples in which the row takes part
  const std::vector<int>& rev;    // carry mode, rows: the row's events
  const float* zrow;              // the row's final normals (NOISE)
};

// K groups of lanes::W columns from j0 (the last one nl_last lanes wide) of one row through its samples:
// the moments, touched lanes and pulse counts stay in registers; the rare scalar steps (carry events,
// n > AGG_POLY_MAX) work on copies in arrays. A group's moments are one chain of dependent operations
// per sample (step, add, clip, select: ~15 cycles of latency, few instructions), so K = 2 independent
// chains in one loop body fill the pipeline that one leaves idle (the 512×512 sparse update: about 15 %
// faster; K = 4 gained nothing more). CARRY: the call has carry events (T.carry); without them the
// sample loop has no event test at all (a few loads and compares per sample and group; with LaneSides the
// 512×512 sparse aggregated update took 5 % less). Returns the groups' pulses.
template <bool MULT, bool NOISE, bool ONE, int K, bool CARRY>
AT_LANES_INLINE int64_t run_lane_groups(const LaneRow& R, int j0, int nl_last) {
  using namespace lanes;
  const Trains& T = R.T;
  const CarryPlan* cp = T.carry;
  const int i = R.i;
  const int64_t row = R.row;
  Group G[K];
  vf m[K], v[K];
  vi t[K], c[K];
  alignas(32) float ma[K][W], va[K][W];
  alignas(32) int32_t ta[K][W];
  const std::vector<int>* evs[K];
  int nev[K], qe[K];
#if !AT_LANES_MANY
  LanesScalarBig sb[K];  // scalar constants of lanes that take n > AGG_POLY_MAX pulses (on demand)
#endif
#pragma GCC unroll 4
  for (int k = 0; k < K; ++k) {
    m[k] = G[k].template load_group<MULT>(R.state, R.P, j0 + k * W, k == K - 1 ? nl_last : W, R.g);
    v[k] = splat(0.0f), t[k] = splat_i(0), c[k] = splat_i(0);
    evs[k] = cp ? (cp->columns ? &T.gev[static_cast<size_t>((j0 + k * W) / W)] : &R.rev) : nullptr;
    nev[k] = evs[k] ? static_cast<int>(evs[k]->size()) : 0;
    qe[k] = 0;
  }
  // event q (CarryPlan) on group k's spilled lanes: finish its touched lanes of slice q
  // (clip(m + sqrt(v)·z), store; the moments restart from the stored value), then copy the slice's
  // visible weight to the snapshot (agg_lanes_event)
  const auto event = [&](int k, int q) {
    const int jk = j0 + k * W;
    const int64_t s = cp->slice[q];
    const int lb = cp->columns ? static_cast<int>(s - jk) : 0, le = cp->columns ? lb + 1 : G[k].nl;
    for (int l = lb; l < le; ++l) {
      if (!ta[k][l]) continue;
      const int j = jk + l;
      const ElemParams p = load_params(R.params, R.plane, row + j);
      const float z = NOISE ? cp->z[q * cp->L + (cp->columns ? i : j)] : 0.0f;
      const float st = aggregate_draw(ma[k][l], va[k][l], p, R.g, z) - p.ref;
      store_state(R.w, R.w_p, row + j, st, R.g, R.u.seed, cp->offset[q], 0u);
      ma[k][l] = st + p.ref;
      va[k][l] = 0.0f;
      ta[k][l] = 0;
    }
    float* dst = cp->snaps + cp->call[q] * cp->L;
    if (cp->columns)
      dst[i] = R.w[row + s];
    else
      std::memcpy(dst + jk, R.w + row + jk, sizeof(float) * static_cast<size_t>(G[k].nl));
  };
  // (m, v, t are the lambdas' arguments, not captures: a closure holding their addresses keeps them in
  // memory through the whole sample loop, a store-to-load round trip in every sample's chain)
  const auto spill = [&](int k, vf m_, vf v_, vi t_) {
    std::memcpy(ma[k], &m_, sizeof(ma[k])), std::memcpy(va[k], &v_, sizeof(va[k]));
    std::memcpy(ta[k], &t_, sizeof(ta[k]));
  };
  const auto reload = [&](int k, vf& m_, vf& v_, vi& t_) {
    m_ = load<vf>(ma[k], W), v_ = load<vf>(va[k], W), t_ = load<vi>(ta[k], W);
  };
  const LaneSides S{T.dbits.data() + i, T.sd.data() + i, reinterpret_cast<const int32_t*>(T.xbits.data()),
                    T.sx.data(), T.O, T.I};
  for (const int b : R.act_b) {
#pragma GCC unroll 4
    for (int k = 0; k < K; ++k) {
      if (CARRY && qe[k] < nev[k] && cp->pos[(*evs[k])[qe[k]]] <= b) {
        spill(k, m[k], v[k], t[k]);
        for (; qe[k] < nev[k] && cp->pos[(*evs[k])[qe[k]]] <= b; ++qe[k]) event(k, (*evs[k])[qe[k]]);
        reload(k, m[k], v[k], t[k]);
      }
    }
#pragma GCC unroll 4
    for (int k = 0; k < K; ++k) {
      vi n, up;
      [[maybe_unused]] const vi big =
          lanes_sample<MULT, NOISE, ONE>(G[k], S, b, j0 + k * W, m[k], v[k], t[k], c[k], n, up);
#if !AT_LANES_MANY
      if (!any(big)) continue;
      spill(k, m[k], v[k], t[k]);
      sb[k].template apply<MULT, NOISE>(ma[k], va[k], big, n, up, R.params, R.plane, row + j0 + k * W, G[k].nl, R.g);
      reload(k, m[k], v[k], t[k]);
#endif
    }
  }
  int64_t tot = 0;
#pragma GCC unroll 4
  for (int k = 0; k < K; ++k) {
    if (qe[k] < nev[k]) {
      spill(k, m[k], v[k], t[k]);
      for (; qe[k] < nev[k]; ++qe[k]) event(k, (*evs[k])[qe[k]]);
      reload(k, m[k], v[k], t[k]);
    }
    const int jk = j0 + k * W;
    const float* z = NOISE ? R.zrow + jk : nullptr;
    tot += lanes_finish<NOISE>(G[k], m[k], v[k], t[k], c[k], R.w, R.w_p, R.prow + jk, z, row + jk, R.g, R.u);
  }
  return tot;
}

// Phase 2 for one row in the aggregated mode without the AVX-512 path (cpu_agg_lanes.h): 8 columns at a
// time carry their moments in vector registers through the row's samples (samples of up to AGG_POLY_MAX
// pulses in the registers, a lane with more through the scalar aggregate_sample), then each touched element
// is finished with its normal (the row's normals drawn 4 per Philox counter) — the contract of run_row's
// aggregated branch, the same numbers. ONE: every train of the call has one slot (a coincidence is one
// pulse: no popcount). Carry mode: the events of the group's columns between its samples, as
// agg_lanes_event (T.gev groups of lanes::W columns). Two groups at a time (run_lane_groups), one for
// the last one or two groups of a row whose width is not a multiple of 16.
template <bool MULT, bool NOISE, bool ONE>
void run_row_lanes(const Trains& T, int i, float* w, float* w_p, const float* params, int64_t plane,
                   const DeviceGlobals& g, const UpdateArgs& u, float* pulses, JobScratch* s, int64_t* rtot) {
  using namespace lanes;
  const int I = T.I, O = T.O;
  const int64_t row = static_cast<int64_t>(i) * I;
  const RowPlanes P{params + P_REF * plane + row,      params + P_BMIN * plane + row,
                    params + P_BMAX * plane + row,     params + P_SLOPE_UP * plane + row,
                    params + P_SLOPE_DOWN * plane + row, params + P_SCALE_UP * plane + row,
                    params + P_SCALE_DOWN * plane + row};
  std::vector<int>& act_b = s->act_b;  // the samples in which this row takes part
  act_b.clear();
  for (int b = 0; b < T.B; ++b)
    if (T.sc[b].bl != 0 && T.dact[static_cast<int64_t>(b) * O + i]) act_b.push_back(b);
  const CarryPlan* cp = T.carry;
  if (act_b.empty() && !cp) return;  // (carry mode: the row's snapshots are still taken)
  std::vector<int>& rev = s->rev;  // carry mode, rows: the events of this row
  rev.clear();
  if (cp && !cp->columns)
    for (int q = 0; q < cp->nev; ++q)
      if (cp->slice[q] == i) rev.push_back(q);
  std::vector<float>& zrow = s->zrow;  // the row's final normals
  if (NOISE && !act_b.empty()) {
    zrow.resize(static_cast<size_t>(I) + AGG_RANGE_PAD);
    aggregate_normals_range(u.seed, u.offset, static_cast<uint32_t>(row), I, zrow.data());
  }
  const LaneRow R{T, i, row, w, w_p, (w_p ? w_p : w) + row, pulses + row, params, plane, P, g, u, act_b, rev,
                  zrow.data()};
  const auto all_groups = [&](auto carry) {  // (carry: std::true_type in carry mode)
    constexpr bool CARRY = decltype(carry)::value;
    int64_t t = 0;
    int j0 = 0;
    for (; j0 + 2 * W <= I; j0 += 2 * W) t += run_lane_groups<MULT, NOISE, ONE, 2, CARRY>(R, j0, W);
    for (; j0 < I; j0 += W) t += run_lane_groups<MULT, NOISE, ONE, 1, CARRY>(R, j0, std::min(W, I - j0));
    return t;
  };
  const int64_t tot = cp ? all_groups(std::true_type{}) : all_groups(std::false_type{});
  if (rtot) rtot[i] += tot;
}

template <bool MULT, bool NOISE>
void run_row_lanes_rt(const Trains& T, int i, float* w, float* w_p, const float* params, int64_t plane,
                      const DeviceGlobals& g, const UpdateArgs& u, float* pulses, JobScratch* s, int64_t* rtot) {
  if (T.maxbl == 1)
    run_row_lanes<MULT, NOISE, true>(T, i, w, w_p, params, plane, g, u, pulses, s, rtot);
  else
    run_row_lanes<MULT, NOISE, false>(T, i, w, w_p, params, plane, g, u, pulses, s, rtot);
}

#if AT_FUSED
// The parameter-plane pointers of row i (fast paths).
FusedRow fused_row(int i, int I, float* w, float* w_p, const float* params, int64_t plane, float* pulses,
                   bool vis) {
  FusedRow R;
  R.row = static_cast<int32_t>(static_cast<int64_t>(i) * I);
  R.state = w_p ? w_p : w;
  R.vis = (w_p && vis) ? w : nullptr;
  R.bmin = params + P_BMIN * plane;
  R.bmax = params + P_BMAX * plane;
  R.sc_up = params + P_SCALE_UP * plane;
  R.sc_dn = params + P_SCALE_DOWN * plane;
  R.s_up = params + P_SLOPE_UP * plane;
  R.s_dn = params + P_SLOPE_DOWN * plane;
  R.ref = params + P_REF * plane;
  R.prow = pulses + R.row;
  R.params = params;
  R.plane = static_cast<int32_t>(plane);
  return R;
}

// From this many pulses in one job (dense trains), the fused paths order a job list by count: fused_apply
// steps each group of FUSED_LANES lanes (8 on AVX2, 16 on AVX-512) as often as its largest count, so
// groups of equal counts idle no lane (512x512 dense pulsed update: AVX2 474 -> 396 ms, AVX-512 on a Zen 4
// host 314-325 -> 250-261 ms). Below it the counting sort costs more than the lanes it saves (c-TTv2's A
// updates, one to five pulses a job: measured slower on AVX2, sorted whole or with the single-pulse jobs
// split off).
constexpr int FUSED_SORT_MIN = 8;
constexpr int FUSED_LANES = AT_FUSED_AVX512 ? 16 : 8;

// The jobs J[0, nj) reordered by decreasing pulse count when the list is dense (more than one group of
// lanes and J.nmax >= FUSED_SORT_MIN; the caller sets J.nmax): a stable counting sort into a scratch list,
// then the two lists swapped. Elements are independent within a sample and each draw is keyed by
// (element, sample, pulse), so no number changes.
inline void order_dense_jobs(FusedJobs& J, int nj) {
  if (nj <= FUSED_LANES || J.nmax < FUSED_SORT_MIN) return;
  thread_local FusedJobs tmp;
  constexpr int NMAX = 32;  // one-word trains: at most 32 coincidences
  int hist[NMAX + 1] = {};
  for (int t = 0; t < nj; ++t) ++hist[J.n[t]];
  int pos[NMAX + 1];
  for (int k = NMAX, acc = 0; k >= 0; --k) pos[k] = acc, acc += hist[k];
  const size_t cap = J.j.size();  // (fused_jobs' full-width stores run past nj)
  if (tmp.j.size() < cap) tmp.j.resize(cap), tmp.n.resize(cap), tmp.sx.resize(cap);
  for (int t = 0; t < nj; ++t) {
    const int q = pos[J.n[t]]++;
    tmp.j[q] = J.j[t], tmp.n[q] = J.n[t], tmp.sx[q] = J.sx[t];
  }
  std::swap(J.j, tmp.j), std::swap(J.n, tmp.n), std::swap(J.sx, tmp.sx);
}

// Phase 2 for one row on the fused fast path (cpu_fused_avx512.h, or cpu_fused_avx2.h without AGG):
// KIND_LINEAR, pulsed, BL <= 32; AGG: the aggregated mode's one-sample calls (moments in one go, no
// per-pulse loop: the jobs' order by count does not matter there).
template <bool MULT, bool NOISE, bool AGG>
void run_row_fused(const Trains& T, int i, float* w, float* w_p, const float* params, int64_t plane,
                   const DeviceGlobals& g, const UpdateArgs& u, float* pulses, JobScratch*, int64_t* rtot) {
  thread_local FusedJobs J;
  const int I = T.I, O = T.O;
  // eligible only without write noise: the visible weight is the state
  FusedRow R = fused_row(i, I, w, w_p, params, plane, pulses, true);
#if AT_FUSED_AVX512
  float* const prow = R.prow;
  R.prow = nullptr;  // fused_apply leaves the counts to row_pulse_counts below
  thread_local std::vector<const uint32_t*> xrows;
  thread_local std::vector<uint32_t> dwords;
  xrows.clear(), dwords.clear();
#endif
  int64_t tot = 0;
  for (int b = 0; b < T.B; ++b) {
    if (T.sc[b].bl == 0) continue;
    const int64_t qd = static_cast<int64_t>(b) * O + i;
    if (!T.dact[qd]) continue;
    const int64_t q0 = static_cast<int64_t>(b) * I;
    const int nj = fused_jobs(T.act.data() + q0, T.xact_bits.data() + q0, T.xact_sgn.data() + q0, T.nact[b],
                              T.dbits[qd], J);
    if (!AGG) order_dense_jobs(J, nj);
    if (nj) {
      tot += fused_apply<MULT, NOISE, AGG>(R, J, nj, T.sd[qd], static_cast<uint32_t>(b), g, u);
#if AT_FUSED_AVX512
      xrows.push_back(T.xbits.data() + q0);
      dwords.push_back(T.dbits[qd]);
#endif
    }
  }
#if AT_FUSED_AVX512
  row_pulse_counts(xrows.data(), dwords.data(), static_cast<int>(xrows.size()), I, prow);
#endif
  if (rtot) rtot[i] += tot;
}

// One-sample calls on the fused path with few active columns (the TT family's one-hot C writes, x = e_k):
// the jobs of ALL rows in one list with flat element indices (j = i·I + column, sign sd_i·sx_j: a ±1
// product, exact either way round), applied 16 at a time by fused_apply with R.row = 0 and sdi = 1 —
// lanes then span rows (elements are independent within a sample) instead of one short list per row.
// (16 at a time on AVX-512, 8 on AVX2.)
// Same numbers as run_row_fused. Returns the pulses applied.
constexpr int FLAT_MAX_ACTIVE = 4;
template <bool MULT, bool NOISE, bool AGG>
int64_t run_flat_fused(const Trains& T, float* w, float* w_p, const float* params, int64_t plane,
                       const DeviceGlobals& g, const UpdateArgs& u, float* pulses) {
  thread_local FusedJobs J;
  const int I = T.I, O = T.O, na = T.nact[0];
  const size_t cap = static_cast<size_t>(O) * static_cast<size_t>(na) + 16;
  if (J.j.size() < cap) J.j.resize(cap), J.n.resize(cap), J.sx.resize(cap);
  int nj = 0;
  J.nmax = 0;
  for (int i = 0; i < O; ++i) {
    if (!T.dact[i]) continue;
    const uint32_t d0 = T.dbits[i];
    for (int t = 0; t < na; ++t) {
      const int n = __builtin_popcount(T.xact_bits[t] & d0);
      if (n <= 0) continue;
      J.j[nj] = i * I + T.act[t];
      J.n[nj] = n;
      J.sx[nj] = T.xact_sgn[t] * T.sd[i];
      J.nmax = std::max(J.nmax, n);
      ++nj;
    }
  }
  if (!AGG) order_dense_jobs(J, nj);
  const FusedRow R = fused_row(0, I, w, w_p, params, plane, pulses, true);
  return nj ? fused_apply<MULT, NOISE, AGG>(R, J, nj, 1.0f, 0u, g, u) : 0;
}

template <bool AGG>
int64_t run_flat_fused_rt(const Trains& T, float* w, float* w_p, const float* params, int64_t plane,
                          const DeviceGlobals& g, const UpdateArgs& u, float* pulses) {
  if (!g.has_noise) return run_flat_fused<true, false, AGG>(T, w, w_p, params, plane, g, u, pulses);
  return g.mult_noise ? run_flat_fused<true, true, AGG>(T, w, w_p, params, plane, g, u, pulses)
                      : run_flat_fused<false, true, AGG>(T, w, w_p, params, plane, g, u, pulses);
}
#endif

#if AT_FUSED_AVX512
// Groups of 16 columns per aggregate_chunks loop: 2 (512×512 B64 sparse aggregated update on a Zen 4
// host, minimum of 800 calls: one group per loop 2.30-2.41 ms, 2 groups 2.04-2.24, and in one
// back-to-back set 2 groups 2.07-2.12, 3 groups 2.18-2.41, 4 groups 2.18-2.43: from 3 the groups' 11
// registers each no longer fit in 32).
constexpr int AGG_GROUPS = 2;
// The same for the carry pass (aggregate_groups; c-TTv2/AGAD aggregated update): 2.
constexpr int AGG_CARRY_GROUPS = 2;

// Phase 2 for one row in the aggregated mode on the AVX-512 path: 16 columns at a time, moments in
// registers through the samples (cpu_fused_avx512.h aggregate_chunk).
template <bool MULT, bool NOISE>
void run_row_agg(const Trains& T, int i, float* w, float* w_p, const float* params, int64_t plane,
                 const DeviceGlobals& g, const UpdateArgs& u, float* pulses, JobScratch* s, int64_t* rtot) {
  const bool wn = w_p && g.write_noise > 0.0f;
  const FusedRow R = fused_row(i, T.I, w, w_p, params, plane, pulses, !wn);
  std::vector<int>& act_b = s->act_b;  // the samples in which this row takes part
  act_b.clear();
  for (int b = 0; b < T.B; ++b)
    if (T.sc[b].bl != 0 && T.dact[static_cast<int64_t>(b) * T.O + i]) act_b.push_back(b);
  if (act_b.empty() && !T.carry) return;  // (carry mode: the row's snapshots are still taken)
  std::vector<int>& rev = s->rev;  // carry mode, rows: the events of this row
  AggEvents ev_row;
  if (T.carry && !T.carry->columns) {
    rev.clear();
    for (int q = 0; q < T.carry->nev; ++q)
      if (T.carry->slice[q] == i) rev.push_back(q);
    ev_row = AggEvents{T.carry, rev.data(), static_cast<int>(rev.size())};
  }
  AggCall C{T.O, T.I, i, T.xbits.data(), T.sx.data(), T.dbits.data(), T.sd.data(), act_b.data(),
            static_cast<int>(act_b.size())};
  if (x_masks(T)) {  // (T.maxbl == 1: the one-slot sample steps read these)
    C.xon16 = T.xon16.data(), C.xpos16 = T.xpos16.data(), C.xneg16 = T.xneg16.data();
    C.G = (T.I + 15) / 16;
  }
  std::vector<float>& zrow = s->zrow;  // the row's final normals
  if (NOISE) {
    zrow.resize(static_cast<size_t>(T.I) + 80);
    aggregate_normals(u.seed, u.offset, R.row, T.I, zrow.data());
  }
  int64_t tot = 0;
  int j_first = 0;  // AGG_GROUPS groups at a time first (the last odd group below)
  if (T.maxbl == 1 && !T.carry) {
    constexpr int K = AGG_GROUPS;
    for (; j_first + 16 * (K - 1) < T.I; j_first += 16 * K)
      tot += aggregate_chunks<MULT, NOISE, K>(R, C, j_first, g, u, wn ? w : nullptr, zrow.data());
  } else if (T.carry) {
    constexpr int K = AGG_CARRY_GROUPS;
    AggEvents evs[K];
    for (; j_first + 16 * (K - 1) < T.I; j_first += 16 * K) {
      for (int k = 0; k < K; ++k) {
        evs[k] = ev_row;
        if (T.carry->columns) {
          const std::vector<int>& gq = T.gev[static_cast<size_t>(j_first / 16 + k)];
          evs[k] = AggEvents{T.carry, gq.data(), static_cast<int>(gq.size())};
        }
      }
      float* wvn = wn ? w : nullptr;
      tot += T.maxbl == 1 ? aggregate_groups<MULT, NOISE, true, true, K>(R, C, j_first, g, u, wvn, zrow.data(), evs)
                          : aggregate_groups<MULT, NOISE, false, true, K>(R, C, j_first, g, u, wvn, zrow.data(), evs);
    }
  }
  for (int j0 = j_first; j0 < T.I; j0 += 16) {
    AggEvents ev = ev_row;
    if (T.carry && T.carry->columns) {
      const std::vector<int>& gq = T.gev[static_cast<size_t>(j0 / 16)];
      ev = AggEvents{T.carry, gq.data(), static_cast<int>(gq.size())};
    }
    float* wvn = wn ? w : nullptr;
    if (T.carry)
      tot += T.maxbl == 1 ? aggregate_chunk<MULT, NOISE, true, true>(R, C, j0, g, u, wvn, zrow.data(), ev)
                          : aggregate_chunk<MULT, NOISE, false, true>(R, C, j0, g, u, wvn, zrow.data(), ev);
    else
      tot += T.maxbl == 1 ? aggregate_chunk<MULT, NOISE, true, false>(R, C, j0, g, u, wvn, zrow.data())
                          : aggregate_chunk<MULT, NOISE, false, false>(R, C, j0, g, u, wvn, zrow.data());
  }
  if (rtot) rtot[i] += tot;
}
#endif

using RowFn = void (*)(const Trains&, int, float*, float*, const float*, int64_t, const DeviceGlobals&,
                       const UpdateArgs&, float*, JobScratch*, int64_t*);

// Test hook (force_generic_path): every update call takes the generic job path, so a test can check a
// fast path against it on the same call, bit for bit.
std::atomic<bool> g_force_generic{false};

// Phase 2's path: the AVX-512 ones for KIND_LINEAR, pulsed, one-word trains (aggregated: any write
// noise; exact: without write noise), else the generic job path.
Trains::Path pick_path(const DeviceGlobals& g, const UpdateArgs& u, int B, int nw, int O, int I, const float* w_p,
                       bool carry = false) {
  if (g_force_generic.load(std::memory_order_relaxed)) return Trains::GENERIC;
  const bool lin1 = g.kind == KIND_LINEAR && u.mode == MODE_PULSED && nw == 1;
  const bool fast = lin1 && static_cast<int64_t>(NP_PLANES) * O * I < (int64_t{1} << 31);  // 32-bit gather indices
  const bool write_noise = w_p && g.write_noise > 0.0f;
#if AT_FUSED_AVX512
  // aggregated one-sample calls (c-TTv2/AGAD A updates): the job path, on the touched lanes only
  if (fast && u.aggregate) return (B == 1 && !write_noise && !carry) ? Trains::FUSED : Trains::AGG_FAST;
  if (fast && !write_noise) return Trains::FUSED;
#else
  // aggregated batches on the portable lanes
  if (lin1 && u.aggregate && B > 1) return Trains::AGG_LANES;
  // the AVX2 fused path without write noise (the visible weight is the state): the exact mode, and
  // where AT_FUSED_AGG the aggregated one-sample calls (else the job path, active columns only)
  if (AT_FUSED_AVX2 && fast && !write_noise && (!u.aggregate || (AT_FUSED_AGG && !carry))) return Trains::FUSED;
#endif
  return Trains::GENERIC;
}

RowFn pick_row_fn(const DeviceGlobals& g, [[maybe_unused]] const UpdateArgs& u, const Trains& T) {
#if AT_FUSED_AVX512
  if (T.path == Trains::AGG_FAST) {
    if (!g.has_noise) return &run_row_agg<true, false>;
    return g.mult_noise ? &run_row_agg<true, true> : &run_row_agg<false, true>;
  }
#endif
#if AT_FUSED_AGG
  if (T.path == Trains::FUSED && u.aggregate) {
    if (!g.has_noise) return &run_row_fused<true, false, true>;
    return g.mult_noise ? &run_row_fused<true, true, true> : &run_row_fused<false, true, true>;
  }
#endif
#if AT_FUSED
  if (T.path == Trains::FUSED) {
    if (!g.has_noise) return &run_row_fused<true, false, false>;
    return g.mult_noise ? &run_row_fused<true, true, false> : &run_row_fused<false, true, false>;
  }
#endif
  if (T.path == Trains::AGG_LANES) {
    if (!g.has_noise) return &run_row_lanes_rt<true, false>;
    return g.mult_noise ? &run_row_lanes_rt<true, true> : &run_row_lanes_rt<false, true>;
  }
  if (g.kind == KIND_LINEAR) {
    if (!g.has_noise) return &run_row<KIND_LINEAR, true, false>;
    return g.mult_noise ? &run_row<KIND_LINEAR, true, true> : &run_row<KIND_LINEAR, false, true>;
  }
  if (g.kind == KIND_EXP) return g.has_noise ? &run_row<KIND_EXP, true, true> : &run_row<KIND_EXP, true, false>;
  return g.has_noise ? &run_row<KIND_POW, true, true> : &run_row<KIND_POW, true, false>;
}

// T's buffers for T.B samples once T.sc and T.maxbl are set (path: which phase 2 runs).
void size_trains(Trains& T, const UpdateArgs& u, Trains::Path path) {
  const int B = T.B, I = T.I, O = T.O;
  T.nw = u.mode == MODE_PULSED ? (T.maxbl + 31) / 32 : 0;
  const int64_t BI = static_cast<int64_t>(B) * I, BO = static_cast<int64_t>(B) * O;
  if (T.nw) {
    T.xbits.assign(BI * T.nw, 0u);
    T.dbits.assign(BO * T.nw, 0u);
  }
  T.px.resize(BI);
  T.pd.resize(BO);
  T.sx.resize(BI);
  T.sd.resize(BO);
  T.act.resize(BI);
  T.nact.assign(B, 0);
  T.dact.assign(BO, 0);
  T.path = path;
  if (T.nw == 1 && T.path == Trains::GENERIC) {
    T.slot_off.assign(static_cast<size_t>(B) * 33, 0);
    T.slot_cols.resize(B);
  }
  if (T.path == Trains::FUSED) {
    T.xact_bits.resize(BI);
    T.xact_sgn.resize(BI);
  }
  if (x_masks(T)) {
    const size_t n = static_cast<size_t>(B) * static_cast<size_t>((I + 15) / 16);
    T.xon16.resize(n), T.xpos16.resize(n), T.xneg16.resize(n);
  }
}

// max_j |v_j| of n floats.
float abs_max(const float* v, int n) {
  float m = 0.0f;
  for (int j = 0; j < n; ++j) m = std::max(m, std::fabs(v[j]));
  return m;
}

// f(i) for i in [0, n) on nt OpenMP threads (dynamic schedule, chunks of `chunk`), or in a plain loop on
// the calling thread when nt is 1: libgomp sets up a team even for one thread (a few µs, futex system
// calls included), which a conv layer's batched A updates (~25 000 one-sample calls per batch, two
// regions each) paid on every call: ~20 % of LeNet conv1's chopped_update_snapshots on one thread.
template <class F>
void for_each_index(int n, int nt, int chunk, const F& f) {
  if (nt <= 1) {
    for (int i = 0; i < n; ++i) f(i);
    return;
  }
#pragma omp parallel for schedule(dynamic, chunk) num_threads(nt)
  for (int i = 0; i < n; ++i) f(i);
}

// Work (row, active column) pairs below which a call's phase 2 runs on one thread (run_rows): an OpenMP
// team costs more than it saves there, and on a shared, loaded machine a barrier can stall for a time
// slice. chopped_update_snapshots gives its row blocks the calls whose bound on this work stays below it.
constexpr int64_t ONE_THREAD_WORK = int64_t{1} << 15;

// Phase 2 over the rows of T (u: the call's arguments; in carry mode the last call's, whose offset the
// final draws use).
// rows [r0, r1) only (r1 < 0: all rows; a partial range never takes the one-list path over all rows).
void run_rows(const Trains& T, float* w, float* w_p, const float* params, const DeviceGlobals& g, const UpdateArgs& u,
              float* pulses, int nthreads, int64_t* row_tot, int r0 = 0, int r1 = -1) {
  const int B = T.B, O = T.O;
  const int64_t plane = static_cast<int64_t>(O) * T.I;
  if (r1 < 0) r1 = O;
  [[maybe_unused]] const bool all_rows = r0 == 0 && r1 == O;
#if AT_FUSED
  if (all_rows && T.path == Trains::FUSED && B == 1 && T.nact[0] <= FLAT_MAX_ACTIVE) {  // e.g. one-hot C writes
#if AT_FUSED_AGG
    const int64_t tot = u.aggregate ? run_flat_fused_rt<true>(T, w, w_p, params, plane, g, u, pulses)
                                    : run_flat_fused_rt<false>(T, w, w_p, params, plane, g, u, pulses);
#else
    const int64_t tot = run_flat_fused_rt<false>(T, w, w_p, params, plane, g, u, pulses);  // (exact mode only)
#endif
    if (row_tot) row_tot[0] += tot;
    return;
  }
#endif
  // small calls (e.g. one-sample updates with few active entries) run on one thread (ONE_THREAD_WORK)
  int64_t work = 0;
  for (int b = 0; b < B; ++b) {
    if (T.nact[b] == 0) continue;
    int64_t rows = 0;
    const uint8_t* da = T.dact.data() + static_cast<int64_t>(b) * O;
    for (int i = r0; i < r1; ++i) rows += da[i];
    work += rows * T.nact[b];
  }
  const RowFn row_fn = pick_row_fn(g, u, T);
  const int nt2 = work < ONE_THREAD_WORK ? 1 : std::max(1, std::min(nthreads, r1 - r0));
  for_each_index(r1 - r0, nt2, 4, [&](int q) {
    thread_local JobScratch scratch;  // each thread's own
    row_fn(T, r0 + q, w, w_p, params, plane, g, u, pulses, &scratch, row_tot);
  });
}

// The whole update on raw CPU buffers. x (B, I), d (B, O) row-major; pulses (O, I) accumulated.
void pulsed_update_raw(float* w, float* w_p, const float* params, const DeviceGlobals& g, const float* x,
                       const float* d, int B, int O, int I, const UpdateArgs& u, const float* cin, const float* cout,
                       float* pulses, int nthreads, int64_t* row_tot = nullptr, int r0 = 0, int r1 = -1) {
  if (const char* msg = args_error(u, g)) TORCH_CHECK(false, msg);
  if (u.lr_abs == 0.0 || B == 0 || O == 0 || I == 0) return;
  // per calling thread and reused: its buffers (about 1 MB for 512×512×64) keep their pages between
  // calls. Bound to a local reference: inside the OpenMP regions below the name of a thread_local would
  // denote each worker's own (empty) instance.
  thread_local Trains trains;
  Trains& T = trains;
  T.carry = nullptr;
  T.B = B;
  T.I = I;
  T.O = O;
  T.sc.resize(B);
  int maxbl = 0;
  for (int b = 0; b < B; ++b) {
    T.sc[b] = update_scales(u, static_cast<double>(abs_max(x + static_cast<int64_t>(b) * I, I)),
                            static_cast<double>(abs_max(d + static_cast<int64_t>(b) * O, O)));
    maxbl = std::max(maxbl, T.sc[b].bl);
  }
  if (maxbl == 0) return;
  T.maxbl = maxbl;
  size_trains(T, u, pick_path(g, u, B, u.mode == MODE_PULSED ? (maxbl + 31) / 32 : 0, O, I, w_p));

  const int nt1 = std::max(1, std::min(nthreads, B));
  for_each_index(B, nt1, 1, [&](int b) { build_sample(T, b, static_cast<uint32_t>(b), x, d, u, cin, cout); });
  run_rows(T, w, w_p, params, g, u, pulses, nthreads, row_tot, r0, r1);
}

// Per-slot set-bit counts of bit-packed trains, branch-free (the pulse totals of chopped_carry_raw: one
// pass over every active train word instead of a loop over each word's set bits, whose data-dependent
// trip counts mispredict on small conv tiles with ~25 active trains per sample). Each byte of a word adds
// kSpreadBytes[byte] (its 8 bits moved to bit 0 of the 8 bytes of a uint64) to a byte-lane accumulator;
// the accumulators go to the int64 counts before a byte lane can pass 255.
struct SpreadBytes {
  uint64_t v[256];
  constexpr SpreadBytes() : v() {
    for (int m = 0; m < 256; ++m)
      for (int j = 0; j < 8; ++j) v[m] |= static_cast<uint64_t>((m >> j) & 1) << (8 * j);
  }
};
inline constexpr SpreadBytes kSpreadBytes{};

struct SlotCounts {
  int nw = 0, pending = 0;
  std::vector<uint64_t> acc;  // (nw, 4): word k, byte q
  std::vector<int64_t> cnt;   // (32 nw,): slot 32k + 8q + j
  void reset(int n_words) {
    nw = n_words;
    pending = 0;
    acc.assign(static_cast<size_t>(4 * nw), 0);
    cnt.assign(static_cast<size_t>(32 * nw), 0);
  }
  // the nw words of one train; keep = ~0u counts it, 0 adds nothing
  void add(const uint32_t* wds, uint32_t keep) {
    for (int k = 0; k < nw; ++k) {
      const uint32_t m = wds[k] & keep;
      uint64_t* a = acc.data() + 4 * k;
      a[0] += kSpreadBytes.v[m & 0xffu];
      a[1] += kSpreadBytes.v[(m >> 8) & 0xffu];
      a[2] += kSpreadBytes.v[(m >> 16) & 0xffu];
      a[3] += kSpreadBytes.v[m >> 24];
    }
    if (++pending == 255) flush();
  }
  void flush() {
    for (int q = 0; q < 4 * nw; ++q) {
      for (int j = 0; j < 8; ++j)
        cnt[static_cast<size_t>(8 * q + j)] += static_cast<int64_t>((acc[q] >> (8 * j)) & 0xffu);
      acc[q] = 0;
    }
    pending = 0;
  }
};

// The aggregated mode of chopped_update_snapshots (CarryPlan): the samples of the C calls of one batch
// in ONE pass. Phase 1 builds every sample's trains with its own call's counters (offset uc[c].offset,
// sample counter b − starts[c], lr, choppers: the pulse counts of the separate calls); phase 2 carries
// each element's moments across the calls and finishes it only at the events (the snapshots: the
// slice's touched elements with the draws of the snapshotting call's offset) and after the last call
// (the draws of the last call's offset). Writes snaps (C, L) and the exact pulse total of each call
// (cp, as the float32 sum of its integer counts).
void chopped_carry_raw(float* w, float* w_p, const float* params, const DeviceGlobals& g, const float* x,
                       const float* d, int O, int I, int64_t C, const int64_t* stp, const std::vector<UpdateArgs>& uc,
                       const float* ci, const float* co, const int64_t* snp, bool columns, float* snaps, double* cp,
                       float* pulses, int nthreads) {
  if (const char* msg = args_error(uc[0], g)) TORCH_CHECK(false, msg);
  const int64_t s0 = stp[0];
  const int S = static_cast<int>(stp[C] - s0);
  const int64_t L = columns ? O : I;
  CarryPlan P;
  P.columns = columns;
  P.L = L;
  P.snaps = snaps;
  P.w = w;
  for (int64_t c = 0; c < C; ++c) {
    if (snp[c] < 0) continue;
    P.pos.push_back(static_cast<int>(stp[c + 1] - s0));
    P.slice.push_back(snp[c]);
    P.call.push_back(c);
    P.offset.push_back(uc[static_cast<size_t>(c)].offset);
  }
  P.nev = static_cast<int>(P.pos.size());
  std::vector<int> scall(static_cast<size_t>(S));
  for (int64_t c = 0; c < C; ++c)
    for (int64_t q = stp[c]; q < stp[c + 1]; ++q) scall[static_cast<size_t>(q - s0)] = static_cast<int>(c);
  Trains T;
  T.B = S;
  T.I = I;
  T.O = O;
  T.sc.resize(static_cast<size_t>(S));
  int maxbl = 0;
  for (int s = 0; s < S; ++s) {
    T.sc[s] = update_scales(uc[static_cast<size_t>(scall[s])],
                            static_cast<double>(abs_max(x + (s0 + s) * I, I)),
                            static_cast<double>(abs_max(d + (s0 + s) * O, O)));
    maxbl = std::max(maxbl, T.sc[s].bl);
  }
  if (maxbl == 0 || O == 0 || I == 0) {  // no pulse anywhere: every snapshot is the unchanged slice
    for (int q = 0; q < P.nev; ++q) {
      float* dst = snaps + P.call[q] * L;
      for (int64_t r = 0; r < L; ++r) dst[r] = columns ? w[r * I + P.slice[q]] : w[P.slice[q] * I + r];
    }
    return;
  }
  T.maxbl = maxbl;
  const UpdateArgs& ul = uc[static_cast<size_t>(C - 1)];
  size_trains(T, ul, pick_path(g, ul, S, (maxbl + 31) / 32, O, I, w_p, /*carry=*/true));
  const int nt1 = std::max(1, std::min(nthreads, S));
  for_each_index(S, nt1, 1, [&](int s) {
    const int c = scall[s];
    build_sample(T, s, static_cast<uint32_t>(s0 + s - stp[c]), x + s0 * I, d + s0 * O, uc[static_cast<size_t>(c)],
                 ci ? ci + static_cast<int64_t>(c) * I : nullptr, co ? co + static_cast<int64_t>(c) * O : nullptr);
  });
  // pulse totals: Σ_ij popcount(x_j & d_i) over the active entries = Σ_slots (#x firing)·(#d firing)
  std::vector<int64_t> ctot(static_cast<size_t>(C), 0);
  SlotCounts cx, cd;
  for (int s = 0; s < S; ++s) {
    if (T.sc[s].bl == 0 || T.nact[s] == 0) continue;
    cx.reset(T.nw);
    cd.reset(T.nw);
    const int64_t qx = static_cast<int64_t>(s) * I, qd = static_cast<int64_t>(s) * O;
    for (int t = 0; t < T.nact[s]; ++t) cx.add(T.xbits.data() + (qx + T.act[qx + t]) * T.nw, ~0u);
    // (a row outside dact has a zero sign or an empty train: masked, as phase 2 skips it)
    for (int i = 0; i < O; ++i) cd.add(T.dbits.data() + (qd + i) * T.nw, T.dact[qd + i] ? ~0u : 0u);
    cx.flush();
    cd.flush();
    int64_t tot = 0;
    for (size_t k = 0; k < cx.cnt.size(); ++k) tot += cx.cnt[k] * cd.cnt[k];
    ctot[static_cast<size_t>(scall[s])] += tot;
  }
  for (int64_t c = 0; c < C; ++c) cp[c] = static_cast<double>(static_cast<float>(ctot[static_cast<size_t>(c)]));
  if (g.has_noise && P.nev) {  // the events' finish normals, (nev, L)
    P.z.resize(static_cast<size_t>(P.nev) * L);
    std::vector<uint32_t> e(static_cast<size_t>(L));
    for (int q = 0; q < P.nev; ++q) {
      for (int64_t r = 0; r < L; ++r)
        e[r] = static_cast<uint32_t>(columns ? r * I + P.slice[q] : P.slice[q] * I + r);
      aggregate_normals_of(ul.seed, P.offset[q], e.data(), static_cast<int>(L), P.z.data() + q * L);
    }
  }
  if (columns) {  // the events of each group of columns (AVX-512: 16, lanes: lanes::W)
    const int gw = T.path == Trains::AGG_LANES ? lanes::W : 16;
    T.gev.assign(static_cast<size_t>((I + gw - 1) / gw), {});
    for (int q = 0; q < P.nev; ++q) T.gev[static_cast<size_t>(P.slice[q] / gw)].push_back(q);
  }
  T.carry = &P;
  run_rows(T, w, w_p, params, g, ul, pulses, nthreads, nullptr);
}


void check_f32_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "analogtrain: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat, "analogtrain: ", name, " must be float32");
  TORCH_CHECK(t.is_contiguous(), "analogtrain: ", name, " must be contiguous");
}

DeviceGlobals globals_of(const at::Tensor& gparams) {
  at::Tensor g = gparams.to(at::kCPU, at::kDouble).contiguous();
  TORCH_CHECK(g.numel() >= NG_SCALARS, "analogtrain: gparams must hold ", NG_SCALARS, " scalars");
  return make_globals(g.data_ptr<double>());
}

// The checks of a tile's update tensors that every CPU update op makes (op: its name for the messages):
// w (O, I) float32, params its (NP, O, I) planes, a known mode code, dw > 0, and w_p (when given, non-empty)
// float32 of w's shape. Returns w_p's data, or null without one. (The CUDA ops: cuda_ops.cpp
// check_update_inputs.)
float* check_tile_tensors(const char* op, const at::Tensor& w, const std::optional<at::Tensor>& w_p,
                          const at::Tensor& params, double dw, int64_t mode) {
  check_f32_cpu(w, "w");
  check_f32_cpu(params, "params");
  TORCH_CHECK(w.dim() == 2, op, ": w must be 2-D");
  TORCH_CHECK(params.dim() == 3 && params.size(0) >= NP_PLANES && params.size(1) == w.size(0) &&
                  params.size(2) == w.size(1),
              op, ": params must be (NP, O, I)");
  TORCH_CHECK(valid_mode_code(mode), op, ": unknown mode ", mode);
  TORCH_CHECK(dw > 0, op, ": dw must be > 0");
  if (!(w_p.has_value() && w_p->defined() && w_p->numel() > 0)) return nullptr;
  check_f32_cpu(*w_p, "w_p");
  TORCH_CHECK(w_p->sizes() == w.sizes(), op, ": w_p and w shapes differ");
  return w_p->data_ptr<float>();
}

at::Tensor pulsed_update_cpu(at::Tensor w, const std::optional<at::Tensor>& w_p, const at::Tensor& params,
                             const at::Tensor& gparams, const at::Tensor& x, const at::Tensor& d, double lr, double dw,
                             int64_t desired_bl, bool fixed_bl, bool ublm, bool um, double um_grad_scale, double res,
                             bool sto_round, int64_t mode, int64_t seed, int64_t offset,
                             const std::optional<at::Tensor>& chop_in, const std::optional<at::Tensor>& chop_out) {
  float* wp = check_tile_tensors("analogtrain::pulsed_update", w, w_p, params, dw, mode);
  check_f32_cpu(x, "x");
  check_f32_cpu(d, "d");
  TORCH_CHECK(x.dim() == 2 && d.dim() == 2, "analogtrain::pulsed_update: x and d must be 2-D");
  const int O = static_cast<int>(w.size(0)), I = static_cast<int>(w.size(1)), B = static_cast<int>(x.size(0));
  TORCH_CHECK(x.size(1) == I && d.size(1) == O && d.size(0) == B, "analogtrain::pulsed_update: shape mismatch");
  const float* ci = nullptr;
  const float* co = nullptr;
  if (chop_in.has_value() && chop_in->defined()) {
    check_f32_cpu(*chop_in, "chop_in");
    TORCH_CHECK(chop_in->numel() == I, "chop_in must have I entries");
    ci = chop_in->data_ptr<float>();
  }
  if (chop_out.has_value() && chop_out->defined()) {
    check_f32_cpu(*chop_out, "chop_out");
    TORCH_CHECK(chop_out->numel() == O, "chop_out must have O entries");
    co = chop_out->data_ptr<float>();
  }
  at::Tensor pulses = at::zeros({O, I}, w.options());
  const UpdateArgs u = make_args(lr, dw, desired_bl, fixed_bl, ublm, um, um_grad_scale, res, sto_round, mode, seed,
                                 offset);
  pulsed_update_raw(w.data_ptr<float>(), wp, params.data_ptr<float>(), globals_of(gparams), x.data_ptr<float>(),
                    d.data_ptr<float>(), B, O, I, u, ci, co, pulses.data_ptr<float>(), at::get_num_threads());
  return pulses;
}

// Buffer arithmetic of one slice (float32, the order of reference_transfer.py). h: the slice of H
// (strided view), v / chop: (L,). Writes n (L,) and returns whether any n != 0.
bool buffer_step_raw(float* h, int64_t h_stride, const float* v, const float* chop, int64_t L, float lr_scale,
                     float thr, float bl, float momentum, float one_minus_momentum, bool forget, bool no_buffer,
                     float cap, float* n_out) {
  bool any = false;
  for (int64_t r = 0; r < L; ++r) {
    const float sig = chop ? chop[r] * v[r] : v[r];
    const float n = buffer_element(h + r * h_stride, sig, lr_scale, thr, bl, momentum, one_minus_momentum, forget,
                                   no_buffer, cap);
    n_out[r] = n;
    any = any || n != 0.0f;
  }
  return any;
}

// One buffered transfer on raw CPU buffers (the body of buffered_transfer_cpu and of each read of
// buffered_transfer_seq_cpu): the buffer step of slice k of H (O, I) with the signal v (L,) and chopper
// signs chop (L,) or nullptr, n written to n_out (L,); then, if `write` and any n != 0, the pulsed write
// of C (w (O, I)) with x = e_k, d = −n (columns) or x = −n, d = e_k (rows), its pulse counts of the
// slice written to sp_out (L,) (left untouched where n = 0: the caller zeroes it).
struct TransferScratch {
  std::vector<float> onehot, negn, ws;  // (S,) one-hot, (L,) −n, (O·I,) pulse counts zeroed between calls
};

void buffered_transfer_raw(float* h_base, int64_t O, int64_t I, const float* v, int64_t k, const float* chop,
                           float lr_scale, float thr, int64_t bl_t, double momentum, bool forget, bool no_buffer,
                           double cap, bool columns, bool write, float* w, float* wp, const float* params,
                           const DeviceGlobals& g, const UpdateArgs& u, float* n_out, float* sp_out,
                           TransferScratch& s) {
  const int64_t L = columns ? O : I;
  const int64_t S = columns ? I : O;
  float* hp = h_base + (columns ? k : k * I);
  const int64_t hs = columns ? I : 1;
  const bool any = buffer_step_raw(hp, hs, v, chop, L, lr_scale, thr, static_cast<float>(bl_t),
                                   static_cast<float>(momentum), static_cast<float>(1.0 - momentum), forget, no_buffer,
                                   static_cast<float>(cap * static_cast<double>(bl_t)), n_out);
  if (!(write && any)) return;
  // the C write: one sample, x = e_k and d = −n (columns) or x = −n and d = e_k (rows)
  s.onehot.assign(static_cast<size_t>(S), 0.0f);  // (all of it: a call that threw may have left a 1)
  s.negn.resize(static_cast<size_t>(L));
  s.onehot[static_cast<size_t>(k)] = 1.0f;
  for (int64_t r = 0; r < L; ++r) s.negn[static_cast<size_t>(r)] = -n_out[r];
  const float* xs = columns ? s.onehot.data() : s.negn.data();
  const float* ds = columns ? s.negn.data() : s.onehot.data();
  // pulse counts land only on slice k (x or d is one-hot): a zeroed workspace, of which only the slice
  // is read back and re-zeroed (no O·I memset per transfer)
  if (s.ws.size() < static_cast<size_t>(O * I)) s.ws.assign(static_cast<size_t>(O * I), 0.0f);
  pulsed_update_raw(w, wp, params, g, xs, ds, 1, static_cast<int>(O), static_cast<int>(I), u, nullptr, nullptr,
                    s.ws.data(), 1);
  for (int64_t r = 0; r < L; ++r) {
    if (n_out[r] == 0.0f) continue;  // n_r = 0: entry r of the write's train is empty, no pulse (a cold line)
    float& cell = s.ws[static_cast<size_t>(columns ? r * I + k : k * I + r)];
    sp_out[r] = cell;
    cell = 0.0f;
  }
}

// The tensors of the two transfer ops, checked (op: the op's name for the messages): h the (O, I) buffer,
// and C's w, w_p, params, dw and mode as every update op checks them (check_tile_tensors). Returns the
// slice geometry (L entries per slice, S slices) and w_p's data (null when absent).
struct TransferTile {
  int64_t O, I, L, S;
  float* wp;
};
TransferTile check_transfer_tile(const char* op, const at::Tensor& h, const at::Tensor& w,
                                 const std::optional<at::Tensor>& w_p, const at::Tensor& params, bool columns,
                                 double dw, int64_t mode) {
  check_f32_cpu(h, "h");
  TORCH_CHECK(h.dim() == 2 && w.sizes() == h.sizes(), op, ": H and w shapes differ");
  float* wp = check_tile_tensors(op, w, w_p, params, dw, mode);
  const int64_t O = h.size(0), I = h.size(1);
  return TransferTile{O, I, columns ? O : I, columns ? I : O, wp};
}

std::tuple<at::Tensor, at::Tensor> buffered_transfer_cpu(at::Tensor h, const at::Tensor& v, int64_t k, const std::optional<at::Tensor>& chop,
                                 double lr_scale, double thr, int64_t bl_t, double momentum, bool forget,
                                 bool no_buffer, double cap, bool columns, bool write, at::Tensor w,
                                 const std::optional<at::Tensor>& w_p, const at::Tensor& params,
                                 const at::Tensor& gparams, double lr, double dw, int64_t desired_bl, bool fixed_bl,
                                 bool ublm, bool um, double um_grad_scale, double res, bool sto_round, int64_t mode,
                                 int64_t seed, int64_t offset) {
  check_f32_cpu(v, "v");
  const TransferTile t = check_transfer_tile("analogtrain::buffered_transfer", h, w, w_p, params, columns, dw, mode);
  const int64_t O = t.O, I = t.I, L = t.L, S = t.S;
  TORCH_CHECK(v.numel() == L, "analogtrain::buffered_transfer: v must have ", L, " entries");
  TORCH_CHECK(k >= 0 && k < S, "analogtrain::buffered_transfer: slice index out of range");
  const float* cp = nullptr;
  if (chop.has_value() && chop->defined()) {
    check_f32_cpu(*chop, "chop");
    TORCH_CHECK(chop->numel() == L, "analogtrain::buffered_transfer: chop must have ", L, " entries");
    cp = chop->data_ptr<float>();
  }
  float* wp = t.wp;
  at::Tensor n = at::empty({L}, v.options());
  at::Tensor slice_pulses = at::zeros({L}, v.options());
  const UpdateArgs u = make_args(lr, dw, desired_bl, fixed_bl, ublm, um, um_grad_scale, res, sto_round, mode, seed,
                                 offset);
  thread_local TransferScratch scratch;
  const at::Tensor vc = v.contiguous();
  buffered_transfer_raw(h.data_ptr<float>(), O, I, vc.data_ptr<float>(), k, cp, static_cast<float>(lr_scale),
                        static_cast<float>(thr), bl_t, momentum, forget, no_buffer, cap, columns, write,
                        w.data_ptr<float>(), wp, params.data_ptr<float>(), globals_of(gparams), u, n.data_ptr<float>(),
                        slice_pulses.data_ptr<float>(), scratch);
  return std::make_tuple(n, slice_pulses);
}

// The chopped-transfer family's per-batch A work in ONE call (twin: reference_chopped.py). The batch is
// cut into C pulsed-update calls; call c covers samples starts[c] .. starts[c+1]-1 and is EXACTLY the
// call the per-sample rule would make: pulsed_update with offset offsets[c], lr lrs[c], the samples
// numbered b = 0.. inside the call, choppers chop_in[c] (I,) / chop_out[c] (O,). Right after call c,
// if snap[c] >= 0, slice snap[c] of the visible weight w (column with `columns`, else row) is copied to
// snaps[c] (L,) — the value the transfer read after that call sees. Returns (snaps (C, L) float32,
// call_pulses (C,) float64: the pulse total of each call, i.e. the value of `pulses.sum()` of the
// separate call: exact integer counts in the pulsed / mean_count modes, a float32 torch sum of the
// call's (O, I) pulse map in the expected mode).
std::tuple<at::Tensor, at::Tensor> chopped_update_snapshots_cpu(
    at::Tensor w, const std::optional<at::Tensor>& w_p, const at::Tensor& params, const at::Tensor& gparams,
    const at::Tensor& x, const at::Tensor& d, const at::Tensor& starts, const at::Tensor& offsets,
    const at::Tensor& lrs, const std::optional<at::Tensor>& chop_in, const std::optional<at::Tensor>& chop_out,
    const at::Tensor& snap, bool columns, double dw, int64_t desired_bl, bool fixed_bl, bool ublm, bool um,
    double um_grad_scale, double res, bool sto_round, int64_t mode, int64_t seed) {
  float* wp = check_tile_tensors("analogtrain::chopped_update_snapshots", w, w_p, params, dw, mode);
  check_f32_cpu(x, "x");
  check_f32_cpu(d, "d");
  TORCH_CHECK(x.dim() == 2 && d.dim() == 2, "analogtrain::chopped_update_snapshots: x and d must be 2-D");
  const int O = static_cast<int>(w.size(0)), I = static_cast<int>(w.size(1));
  TORCH_CHECK(x.size(1) == I && d.size(1) == O && d.size(0) == x.size(0),
              "analogtrain::chopped_update_snapshots: shape mismatch");
  at::Tensor st = starts.to(at::kLong).contiguous(), of = offsets.to(at::kLong).contiguous();
  at::Tensor lr = lrs.to(at::kDouble).contiguous(), sn = snap.to(at::kLong).contiguous();
  const int64_t C = of.numel();
  TORCH_CHECK(st.numel() == C + 1 && lr.numel() == C && sn.numel() == C,
              "analogtrain::chopped_update_snapshots: starts (C+1,), offsets, lrs, snap (C,)");
  const int64_t* stp = st.data_ptr<int64_t>();
  TORCH_CHECK(stp[0] >= 0 && stp[C] <= x.size(0), "analogtrain::chopped_update_snapshots: starts out of range");
  for (int64_t c = 0; c < C; ++c) TORCH_CHECK(stp[c + 1] >= stp[c], "chopped_update_snapshots: starts must grow");
  const float* ci = nullptr;
  const float* co = nullptr;
  if (chop_in.has_value() && chop_in->defined()) {
    check_f32_cpu(*chop_in, "chop_in");
    TORCH_CHECK(chop_in->numel() == C * I, "chop_in must be (C, I)");
    ci = chop_in->data_ptr<float>();
  }
  if (chop_out.has_value() && chop_out->defined()) {
    check_f32_cpu(*chop_out, "chop_out");
    TORCH_CHECK(chop_out->numel() == C * O, "chop_out must be (C, O)");
    co = chop_out->data_ptr<float>();
  }
  const int64_t L = columns ? O : I, S = columns ? I : O;
  at::Tensor snaps = at::zeros({C, L}, w.options());
  at::Tensor call_pulses = at::zeros({C}, at::TensorOptions().dtype(at::kDouble));
  double* cp = call_pulses.data_ptr<double>();
  float* sp = snaps.data_ptr<float>();
  const int64_t* snp = sn.data_ptr<int64_t>();
  const double* lrp = lr.data_ptr<double>();
  const int64_t* ofp = of.data_ptr<int64_t>();
  const DeviceGlobals g = globals_of(gparams);
  const bool expected = (mode & ~AGGREGATE_BIT) == MODE_EXPECTED;
  // pulse maps: the integer modes count per row (exact); the expected mode sums a per-call map like torch
  at::Tensor ws = at::zeros({O, I}, w.options());
  float* wv = w.data_ptr<float>();
  // (taken once: data_ptr's checks cost ~1.5 % of a conv layer's ~25 000 one-sample calls)
  const float *pp = params.data_ptr<float>(), *xp = x.data_ptr<float>(), *dp = d.data_ptr<float>();
  float* wsp = ws.data_ptr<float>();
  const int nthreads = at::get_num_threads();
  // checked before any call runs (and before the parallel region below, which no exception may leave);
  // args_error looks only at the mode and the device kind, which all the calls share
  for (int64_t c = 0; c < C; ++c)
    TORCH_CHECK(snp[c] < S, "analogtrain::chopped_update_snapshots: snapshot slice out of range");
  const auto args_of = [&](int64_t c) {
    return make_args(lrp[c], dw, desired_bl, fixed_bl, ublm, um, um_grad_scale, res, sto_round, mode, seed, ofp[c]);
  };
  if (C > 0)
    if (const char* msg = args_error(args_of(0), g)) TORCH_CHECK(false, msg);
  if ((mode & AGGREGATE_BIT) && C > 0) {  // moments carried across the calls (chopped_carry_raw)
    std::vector<UpdateArgs> uc;
    for (int64_t c = 0; c < C; ++c) uc.push_back(args_of(c));
    chopped_carry_raw(wv, wp, pp, g, xp, dp, O, I, C, stp, uc, ci, co, snp, columns, sp, cp, wsp, nthreads);
    return std::make_tuple(snaps, call_pulses);
  }
  // Several threads and small calls: each thread takes a block of rows through all the calls (an
  // element's pulses depend only on its own state and the calls' trains, so the rows are independent;
  // each thread builds every call's trains itself, and writes its rows' share of the snapshots and pulse
  // totals). Calls below run_rows' ONE_THREAD_WORK (a conv layer's ~25 000 one-sample calls per batch) would
  // each run on one thread; larger ones keep their per-call row split, which builds the trains once (on a
  // 512×512 tile the blocks' duplicated trains made the c-TTv2 update slower). Not in the expected mode
  // (a per-call float sum of the whole pulse map).
  const int64_t per_call = static_cast<int64_t>(O) * I * ((stp[C] - stp[0]) / std::max<int64_t>(C, 1) + 1);
  const int nsplit = expected || C < 2 || per_call >= ONE_THREAD_WORK ? 1 : std::max(1, std::min(nthreads, O));
  std::vector<int64_t> part(static_cast<size_t>(nsplit * C), 0);  // (block, call) pulse totals
  // the calls in order on rows [r0, r1) (block t; `inner` threads within a call): the updates, the
  // block's share of each call's pulse total and of its snapshot
  const auto run_calls = [&](int t, int r0, int r1, int inner) {
    std::vector<int64_t> rt(static_cast<size_t>(O), 0);
    for (int64_t c = 0; c < C; ++c) {
      const int64_t s0 = stp[c];
      const int n = static_cast<int>(stp[c + 1] - s0);
      if (n > 0) {
        std::fill(rt.begin() + r0, rt.begin() + r1, 0);
        if (expected) ws.zero_();  // (one block only)
        pulsed_update_raw(wv, wp, pp, g, xp + s0 * I, dp + s0 * O, n, O, I, args_of(c), ci ? ci + c * I : nullptr,
                          co ? co + c * O : nullptr, wsp, inner, expected ? nullptr : rt.data(), r0, r1);
        if (expected) {
          cp[c] = static_cast<double>(ws.sum().item<float>());
        } else {
          int64_t tot = 0;
          for (int i = r0; i < r1; ++i) tot += rt[static_cast<size_t>(i)];
          part[static_cast<size_t>(t * C + c)] = tot;
        }
      }
      const int64_t k = snp[c];
      if (k < 0) continue;
      float* dst = sp + c * L;
      if (columns) {
        for (int64_t r = r0; r < r1; ++r) dst[r] = wv[r * I + k];
      } else if (k >= r0 && k < r1) {
        std::memcpy(dst, wv + k * I, sizeof(float) * static_cast<size_t>(L));
      }
    }
  };
  if (nsplit == 1) {
    run_calls(0, 0, O, nthreads);
  } else {
#pragma omp parallel for schedule(static, 1) num_threads(nsplit)
    for (int t = 0; t < nsplit; ++t)
      run_calls(t, static_cast<int>(static_cast<int64_t>(O) * t / nsplit),
                static_cast<int>(static_cast<int64_t>(O) * (t + 1) / nsplit), 1);
  }
  if (!expected) {
    for (int64_t c = 0; c < C; ++c) {
      if (stp[c + 1] == stp[c]) continue;
      int64_t tot = 0;
      for (int t = 0; t < nsplit; ++t) tot += part[static_cast<size_t>(t * C + c)];
      cp[c] = static_cast<double>(static_cast<float>(tot));  // as the float32 torch sum of integer counts
    }
  }
  return std::make_tuple(snaps, call_pulses);
}

// Scratch of grid_row's portable path (the SIMD paths draw in registers and need none).
struct GridScratch {
  std::vector<uint32_t> a, blk, r0, r1, r2, r3;
  std::vector<float> zc, zs;
};

// row[j] = draw `draw` of the sequence (seed, offset, stream, a = j, b) for j < n_a: one row of a noise
// grid (normal: the Box–Muller normal of rng.normal, else the uniform of rng.uniform). Every grid and
// fused IO pass below draws its rows here, so they all give the same numbers.
void grid_row(float* row, int64_t n_a, uint64_t seed, uint64_t offset, uint32_t stream, uint32_t b, uint32_t draw,
              bool normal, GridScratch& s) {
  const uint32_t k = draw & 3u, blk0 = draw >> 2;
  [[maybe_unused]] const bool second = k >= 2, use_sin = (k & 1u) != 0;
#if AT_FUSED_AVX512
  if (n_a < (int64_t{1} << 31)) {  // 16 counters per Philox call, only the needed Box–Muller branch
    for (int64_t j0 = 0; j0 < n_a; j0 += 16) {
      const __mmask16 lm = tail_mask16(n_a - j0);
      __m512i w[4];
      philox16(_mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(j0)), lane_index16()), stream, blk0, b, seed,
               offset, w[0], w[1], w[2], w[3]);
      const __m512 z = normal ? bm16_normal(bm16_prepare(second ? w[2] : w[0], second ? w[3] : w[1]), use_sin)
                              : uniform16(w[k]);
      _mm512_mask_storeu_ps(row + j0, lm, z);
    }
    return;
  }
#elif AT_FUSED_AVX2
  if (n_a < (int64_t{1} << 31)) {  // the same on 8 lanes (cpu_fused_avx2.h)
    for (int64_t j0 = 0; j0 < n_a; j0 += 8) {
      __m256i w[4];
      philox8(_mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(j0)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)),
              stream, blk0, b, seed, offset, w[0], w[1], w[2], w[3]);
      const __m256 z = normal ? bm8_normal(bm8_prepare(second ? w[2] : w[0], second ? w[3] : w[1]), use_sin)
                              : uniform8(w[k]);
      store8_ps(row + j0, z, n_a - j0);
    }
    return;
  }
#endif
  const size_t n = static_cast<size_t>(n_a);
  if (s.a.size() < n) {
    for (auto* v : {&s.a, &s.blk, &s.r0, &s.r1, &s.r2, &s.r3}) v->resize(n);
    s.zc.resize(n);
    s.zs.resize(n);
    for (size_t j = 0; j < n; ++j) s.a[j] = static_cast<uint32_t>(j);
  }
  std::fill(s.blk.begin(), s.blk.begin() + static_cast<std::ptrdiff_t>(n), blk0);
  philox_many(static_cast<int>(n_a), s.a.data(), s.blk.data(), stream, b, seed, offset, s.r0.data(), s.r1.data(),
              s.r2.data(), s.r3.data());
  if (!normal) {
    const uint32_t* rw = k == 0 ? s.r0.data() : k == 1 ? s.r1.data() : k == 2 ? s.r2.data() : s.r3.data();
    for (int64_t j = 0; j < n_a; ++j) row[j] = word_to_uniform(rw[j]);
    return;
  }
  box_muller_many(static_cast<int>(n_a), second ? s.r2.data() : s.r0.data(), second ? s.r3.data() : s.r1.data(),
                  use_sin, s.zc.data(), s.zs.data());
  std::memcpy(row, use_sin ? s.zs.data() : s.zc.data(), sizeof(float) * n);
}

// Shared body of the two grids below: out[q, a] = draw `draw` of the sequence
// (seed, offsets[q], stream, a, b = bp[q]) for q < B, a < n_a; rows in parallel.
static at::Tensor philox_grid_rows(int64_t seed, const int64_t* offsets, int64_t stream, int64_t n_a, const int64_t* bp,
                                   int64_t B, int64_t draw, bool normal) {
  at::Tensor out = at::empty({B, n_a}, at::kFloat);
  float* op = out.data_ptr<float>();
  at::parallel_for(0, B, 1, [&](int64_t q0, int64_t q1) {
    GridScratch scratch;
    for (int64_t q = q0; q < q1; ++q)
      grid_row(op + q * n_a, n_a, static_cast<uint64_t>(seed), static_cast<uint64_t>(offsets[q]),
               static_cast<uint32_t>(stream), static_cast<uint32_t>(bp[q]), static_cast<uint32_t>(draw), normal,
               scratch);
  });
  return out;
}

// out[q, a] = draw `draw` of the sequence (seed, offsets[q], stream, a, b_idx[q]), a < n_a: the grid of
// philox_grid_cpu with one op-call counter per row (the per-read offsets of a batch of transfer reads).
at::Tensor philox_grid_offsets_cpu(int64_t seed, const at::Tensor& offsets, int64_t stream, int64_t n_a,
                                   const at::Tensor& b_idx, int64_t draw, bool normal) {
  at::Tensor bc = b_idx.to(at::kLong).contiguous(), oc = offsets.to(at::kLong).contiguous();
  const int64_t B = bc.numel();
  TORCH_CHECK(oc.numel() == B, "philox_grid_offsets: offsets and b_idx must have the same length");
  return philox_grid_rows(seed, oc.data_ptr<int64_t>(), stream, n_a, bc.data_ptr<int64_t>(), B, draw, normal);
}

at::Tensor philox_normal_grid_offsets_cpu(int64_t seed, const at::Tensor& offsets, int64_t stream, int64_t n_a,
                                          const at::Tensor& b_idx, int64_t draw) {
  return philox_grid_offsets_cpu(seed, offsets, stream, n_a, b_idx, draw, true);
}

at::Tensor philox_uniform_grid_offsets_cpu(int64_t seed, const at::Tensor& offsets, int64_t stream, int64_t n_a,
                                           const at::Tensor& b_idx, int64_t draw) {
  return philox_grid_offsets_cpu(seed, offsets, stream, n_a, b_idx, draw, false);
}

// R transfers of one batch in order (twin: reference_chopped.buffered_transfer_seq_ref): read r is
// exactly the buffered_transfer call of the per-read path — slice ks[r], signal v[r] (L,), chop[r],
// lr_scales[r], writes[r], C's counter offsets[r] — so every C write draws the same numbers.
// Returns (n (R, L), pulses (R, L)).
std::tuple<at::Tensor, at::Tensor> buffered_transfer_seq_cpu(
    at::Tensor h, const at::Tensor& v, const at::Tensor& ks, const std::optional<at::Tensor>& chop,
    const at::Tensor& lr_scales, const at::Tensor& writes, double thr, int64_t bl_t, double momentum, bool forget,
    bool no_buffer, double cap, bool columns, at::Tensor w, const std::optional<at::Tensor>& w_p,
    const at::Tensor& params, const at::Tensor& gparams, double lr, double dw, int64_t desired_bl, bool fixed_bl,
    bool ublm, bool um, double um_grad_scale, double res, bool sto_round, int64_t mode, int64_t seed,
    const at::Tensor& offsets) {
  check_f32_cpu(v, "v");
  TORCH_CHECK(v.dim() == 2, "analogtrain::buffered_transfer_seq: v must be (R, L)");
  const int64_t R = v.size(0);
  at::Tensor kc = ks.to(at::kLong).contiguous(), oc = offsets.to(at::kLong).contiguous();
  at::Tensor lc = lr_scales.to(at::kDouble).contiguous(), wc = writes.to(at::kBool).contiguous();
  TORCH_CHECK(kc.numel() == R && oc.numel() == R && lc.numel() == R && wc.numel() == R,
              "analogtrain::buffered_transfer_seq: ks, lr_scales, writes, offsets must have R entries");
  const TransferTile t =
      check_transfer_tile("analogtrain::buffered_transfer_seq", h, w, w_p, params, columns, dw, mode);
  const int64_t O = t.O, I = t.I, L = t.L, S = t.S;
  TORCH_CHECK(v.size(1) == L, "analogtrain::buffered_transfer_seq: v must be (R, ", L, ")");
  const float* cp = nullptr;
  at::Tensor chc;
  if (chop.has_value() && chop->defined()) {
    check_f32_cpu(*chop, "chop");
    TORCH_CHECK(chop->dim() == 2 && chop->size(0) == R && chop->size(1) == L,
                "analogtrain::buffered_transfer_seq: chop must be (R, L)");
    chc = chop->contiguous();
    cp = chc.data_ptr<float>();
  }
  float* wp = t.wp;
  at::Tensor vc = v.contiguous();
  at::Tensor n_all = at::zeros_like(vc), p_all = at::zeros_like(vc);
  const int64_t* kp = kc.data_ptr<int64_t>();
  const int64_t* op = oc.data_ptr<int64_t>();
  const double* lp = lc.data_ptr<double>();
  const bool* wr = wc.data_ptr<bool>();
  for (int64_t r = 0; r < R; ++r)
    TORCH_CHECK(kp[r] >= 0 && kp[r] < S, "analogtrain::buffered_transfer_seq: slice index out of range");
  const DeviceGlobals g = globals_of(gparams);
  const float* vp = vc.data_ptr<float>();
  float* np_ = n_all.data_ptr<float>();
  float* pp = p_all.data_ptr<float>();
  float* hb = h.data_ptr<float>();
  float* wv = w.data_ptr<float>();
  const float* prm = params.data_ptr<float>();
  thread_local TransferScratch scratch;
  // R reads in order, each exactly the buffered_transfer call of the per-read path (raw buffers: no
  // tensor is made per read, which for a conv layer — thousands of reads per batch — was the cost)
  for (int64_t r = 0; r < R; ++r) {
    const UpdateArgs u = make_args(lr, dw, desired_bl, fixed_bl, ublm, um, um_grad_scale, res, sto_round, mode, seed,
                                   op[r]);
    buffered_transfer_raw(hb, O, I, vp + r * L, kp[r], cp ? cp + r * L : nullptr, static_cast<float>(lp[r]),
                          static_cast<float>(thr), bl_t, momentum, forget, no_buffer, cap,
                          columns, wr[r], wv, wp, prm, g, u, np_ + r * L, pp + r * L, scratch);
  }
  return std::make_tuple(n_all, p_all);
}

// Grids of Philox draws for the torch-side ops (IO noise, reads): out[q, a] = draw `draw` of the sequence
// (seed, offset, stream, a, b = b_idx[q]), a < n_a. normal: same numbers as rng.normal (vector libm:
// equal up to a float ulp with probability ~1e-8); uniform: identical to rng.uniform.
at::Tensor philox_grid_cpu(int64_t seed, int64_t offset, int64_t stream, int64_t n_a, const at::Tensor& b_idx,
                           int64_t draw, bool normal) {
  at::Tensor bc = b_idx.to(at::kLong).contiguous();
  const int64_t B = bc.numel();
  std::vector<int64_t> offsets(static_cast<size_t>(B), offset);
  return philox_grid_rows(seed, offsets.data(), stream, n_a, bc.data_ptr<int64_t>(), B, draw, normal);
}

at::Tensor philox_normal_grid_cpu(int64_t seed, int64_t offset, int64_t stream, int64_t n_a, const at::Tensor& b_idx,
                                  int64_t draw) {
  return philox_grid_cpu(seed, offset, stream, n_a, b_idx, draw, true);
}

at::Tensor philox_uniform_grid_cpu(int64_t seed, int64_t offset, int64_t stream, int64_t n_a,
                                   const at::Tensor& b_idx, int64_t draw) {
  return philox_grid_cpu(seed, offset, stream, n_a, b_idx, draw, false);
}

// ---- fused IO periphery passes (the compiled path of tiles/periphery.py analog_mvm) ----------------
// The element-wise steps of one analog read before and after its matrix product, each row once through
// L1 with its noise drawn by grid_row, instead of one torch op (and one tensor pass) per step. Every step
// is the float32 operation of the torch evaluation, in the same order (true division, round half to
// even, NaN-propagating clip, no fused multiply-add: -ffp-contract=off), so the bits are the same
// (tests/test_io_speed_invariance.py compares both backends with the plain evaluation).

// v < lo ? lo : (v > hi ? hi : v), NaN through: torch.clamp with float32 bounds
inline float clip_f32(float v, float lo, float hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

// In place on row[0..n): v ← rint(v / bin)·bin, or floor(v / bin + u)·bin with u = row's uniforms
inline void quantise_row(float* row, int64_t n, float bin, const float* u) {
  if (u != nullptr) {
    for (int64_t j = 0; j < n; ++j) row[j] = std::floor(row[j] / bin + u[j]) * bin;
  } else {
    for (int64_t j = 0; j < n; ++j) row[j] = std::nearbyint(row[j] / bin) * bin;
  }
}

// In place on row[0..n): v ← v + z·f (the product rounded first, then the sum)
inline void add_scaled_row(float* row, const float* z, float f, int64_t n) {
  for (int64_t j = 0; j < n; ++j) row[j] = row[j] + z[j] * f;
}

// In place on row[0..n): v ← v·f where v < 0 (torch.where(v < 0, v·f, v))
inline void asym_row(float* row, float f, int64_t n) {
  for (int64_t j = 0; j < n; ++j) row[j] = row[j] < 0 ? row[j] * f : row[j];
}

// fn(q, z, gs) for every row q < n, rows in parallel, with a per-thread noise row z (width floats) and
// grid scratch gs; returns the sum of fn's results (a count of rows).
template <class Fn>
int64_t io_rows_parallel(int64_t n, int64_t width, const Fn& fn) {
  std::atomic<int64_t> total{0};
  at::parallel_for(0, n, 1, [&](int64_t q0, int64_t q1) {
    std::vector<float> z(static_cast<size_t>(width));
    GridScratch gs;
    int64_t count = 0;
    for (int64_t q = q0; q < q1; ++q) count += fn(q, z.data(), gs);
    total += count;
  });
  return total.load();
}

struct IoRows {  // the noise sequences of one read: (seed, offset, stream, a = column, b = b_idx[q])
  uint64_t seed, offset;
  uint32_t stream;
  const int64_t* b;
  void row(float* out, int64_t n, int64_t q, int64_t draw, bool normal, GridScratch& s) const {
    grid_row(out, n, seed, offset, stream, static_cast<uint32_t>(b[q]), static_cast<uint32_t>(draw), normal, s);
  }
};

IoRows io_rows(int64_t seed, int64_t offset, int64_t stream, const at::Tensor& bc, int64_t n, const char* op) {
  TORCH_CHECK(bc.numel() == n, op, ": b_idx must have one sample index per row");
  return IoRows{static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), static_cast<uint32_t>(stream),
                bc.data_ptr<int64_t>()};
}

// (n, 1) per-row factor of a read (input scale, NM scale, BM reduction) as a float32 pointer, or null
const float* io_row_factor(const std::optional<at::Tensor>& t, at::Tensor& keep, int64_t n, const char* what) {
  if (!t.has_value() || !t->defined()) return nullptr;
  keep = t->to(at::kFloat).contiguous();
  TORCH_CHECK(keep.numel() == n, "analogtrain::io: ", what, " must have one entry per row");
  return keep.data_ptr<float>();
}

// The input side of one read: v (n, I) from the rows x (n, I) of samples b_idx (n,):
//   v = x·s with s = 1/α per row: α = max_j |x_qj| capped at nm_thres when > 0 (nm 1, abs_max) or
//   max_j x_qj (nm 2, max), NaN through; with nm 0, s (n, 1) as given (none: v = x);
//   DAC v = rint(v/bin)·bin (sto: floor(v/bin + u)·bin, u = draw round_draw; bin <= 0: none),
//   v = clip(v, ±bound), v += noise·ξ (draw noise_draw, when noise > 0), v < 0 → v·(1 − asym) (asym ≠ 0).
// Returns (v, α (n, 1) (nm ≠ 0; else empty), the number of rows whose α is not > 0): a row with α <= 0
// or NaN needs the general path (tiles/periphery.py), and the caller then discards v.
std::tuple<at::Tensor, at::Tensor, int64_t> io_input_cpu(const at::Tensor& x, const std::optional<at::Tensor>& s,
                                                         int64_t nm, double nm_thres, double bin, bool sto,
                                                         double bound, double noise, double asym, int64_t seed,
                                                         int64_t offset, int64_t stream, const at::Tensor& b_idx,
                                                         int64_t round_draw, int64_t noise_draw) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 2,
              "analogtrain::io_input: x must be a float32 CPU (n, I)");
  TORCH_CHECK(nm >= 0 && nm <= 2, "analogtrain::io_input: nm must be 0 (given s), 1 (abs_max) or 2 (max)");
  const int64_t n = x.size(0), I = x.size(1);
  TORCH_CHECK(nm == 0 || I > 0, "analogtrain::io_input: noise management needs I > 0");
  TORCH_CHECK(nm == 0 || !(s.has_value() && s->defined()),
              "analogtrain::io_input: s must be None with noise management (the scales are 1/α)");
  at::Tensor xc = x.contiguous(), bc = b_idx.to(at::kLong).contiguous(), sk;
  const IoRows R = io_rows(seed, offset, stream, bc, n, "analogtrain::io_input");
  const float* sp = nm == 0 ? io_row_factor(s, sk, n, "s") : nullptr;
  at::Tensor v = at::empty({n, I}, at::kFloat);
  at::Tensor alpha = nm != 0 ? at::empty({n, 1}, at::kFloat) : at::empty({0}, at::kFloat);
  float* ap = alpha.data_ptr<float>();
  const float* xp = xc.data_ptr<float>();
  float* vp = v.data_ptr<float>();
  const float binf = static_cast<float>(bin), lo = static_cast<float>(-bound), hi = static_cast<float>(bound);
  const float nf = static_cast<float>(noise), af = static_cast<float>(1.0 - asym);
  const float thres = static_cast<float>(nm_thres);
  const int64_t n_bad = io_rows_parallel(n, I, [&](int64_t q, float* z, GridScratch& gs) -> int64_t {
    const float* xr = xp + q * I;
    float* vr = vp + q * I;
    float sq = 1.0f;
    bool scaled = sp != nullptr;
    if (nm != 0) {  // torch's amax: the largest value, NaN when any is NaN
      float m = nm == 1 ? std::fabs(xr[0]) : xr[0];
      bool nan = m != m;
      for (int64_t j = 1; j < I; ++j) {
        const float e = nm == 1 ? std::fabs(xr[j]) : xr[j];
        nan |= e != e;
        m = e > m ? e : m;
      }
      if (nan) m = std::numeric_limits<float>::quiet_NaN();
      if (nm == 1 && nm_thres > 0) m = m > thres ? thres : m;  // clamp(max=nm_thres), NaN through
      ap[q] = m;
      if (!(m > 0)) return 1;
      sq = 1.0f / m;  // torch.reciprocal
      scaled = true;
    } else if (sp != nullptr) {
      sq = sp[q];
    }
    if (scaled) {
      for (int64_t j = 0; j < I; ++j) vr[j] = xr[j] * sq;
    } else {
      std::memcpy(vr, xr, sizeof(float) * static_cast<size_t>(I));
    }
    if (bin > 0) {
      if (sto) R.row(z, I, q, round_draw, false, gs);
      quantise_row(vr, I, binf, sto ? z : nullptr);
    }
    for (int64_t j = 0; j < I; ++j) vr[j] = clip_f32(vr[j], lo, hi);
    if (noise > 0) {
      R.row(z, I, q, noise_draw, true, gs);
      add_scaled_row(vr, z, nf, I);
    }
    if (asym != 0) asym_row(vr, af, I);
    return 0;
  });
  return std::make_tuple(v, alpha, n_bad);
}

// The output side of one read, in place on y (n, O) = v @ Mᵀ of the rows of samples b_idx (n,):
//   y += amp·ξ_w (amp (n, 1) or (n, O), draw w_draw; none: no weight noise), y < 0 → y·(1 − asym) (asym ≠ 0),
//   y += noise·ξ (draw noise_draw, noise > 0), ADC quantiser as io_input's (draw round_draw),
//   then with bound > 0: exceeded[q] = any(y > bound) (test 1) or any(|y| > bound) (test 2; test 0: none),
//   y = clip(y, ±bound); and y ·= scale (when ≠ 1), ·= alpha[q], ·= red[q] (alpha/red (n, 1) or none).
// Returns (exceeded (n,) bool, the number of rows that exceeded).
std::tuple<at::Tensor, int64_t> io_output_cpu(at::Tensor y, const std::optional<at::Tensor>& amp, double asym,
                                              double noise, double bin, bool sto, double bound, int64_t test,
                                              double scale, const std::optional<at::Tensor>& alpha,
                                              const std::optional<at::Tensor>& red, int64_t seed, int64_t offset,
                                              int64_t stream, const at::Tensor& b_idx, int64_t w_draw,
                                              int64_t noise_draw, int64_t round_draw) {
  check_f32_cpu(y, "y");
  TORCH_CHECK(y.dim() == 2 && y.is_contiguous(), "analogtrain::io_output_: y must be a contiguous (n, O)");
  TORCH_CHECK(test >= 0 && test <= 2, "analogtrain::io_output_: test must be 0, 1 or 2");
  const int64_t n = y.size(0), O = y.size(1);
  at::Tensor bc = b_idx.to(at::kLong).contiguous(), ak, alk, rk;
  const IoRows R = io_rows(seed, offset, stream, bc, n, "analogtrain::io_output_");
  // amp: one amplitude per row (n, 1) (additive_constant) or per output (n, O) (pcm_read)
  const float* ampp = nullptr;
  bool amp_rows = true;
  if (amp.has_value() && amp->defined()) {
    ak = amp->to(at::kFloat).contiguous();
    amp_rows = ak.numel() == n;
    TORCH_CHECK(amp_rows || ak.numel() == n * O, "analogtrain::io_output_: amp must be (n, 1) or (n, O)");
    ampp = ak.data_ptr<float>();
  }
  const float* alp = io_row_factor(alpha, alk, n, "alpha");
  const float* rp = io_row_factor(red, rk, n, "red");
  at::Tensor exceeded = at::zeros({n}, at::kBool);
  bool* ex = exceeded.data_ptr<bool>();
  float* yp = y.data_ptr<float>();
  const float binf = static_cast<float>(bin), nf = static_cast<float>(noise), af = static_cast<float>(1.0 - asym);
  const float hi = static_cast<float>(bound), lo = static_cast<float>(-bound), sf = static_cast<float>(scale);
  const int64_t n_exceeded = io_rows_parallel(n, O, [&](int64_t q, float* z, GridScratch& gs) -> int64_t {
    float* yr = yp + q * O;
    if (ampp != nullptr) {
      R.row(z, O, q, w_draw, true, gs);
      if (amp_rows) {
        add_scaled_row(yr, z, ampp[q], O);
      } else {
        const float* ar = ampp + q * O;
        for (int64_t j = 0; j < O; ++j) yr[j] = yr[j] + z[j] * ar[j];
      }
    }
    if (asym != 0) asym_row(yr, af, O);
    if (noise > 0) {
      R.row(z, O, q, noise_draw, true, gs);
      add_scaled_row(yr, z, nf, O);
    }
    if (bin > 0) {
      if (sto) R.row(z, O, q, round_draw, false, gs);
      quantise_row(yr, O, binf, sto ? z : nullptr);
    }
    bool e = false;  // (NaN compares false, as in torch)
    if (bound > 0) {
      if (test == 2) {
        for (int64_t j = 0; j < O; ++j) e |= (yr[j] > hi) | (yr[j] < lo);
      } else if (test == 1) {
        for (int64_t j = 0; j < O; ++j) e |= yr[j] > hi;
      }
      ex[q] = e;
      for (int64_t j = 0; j < O; ++j) yr[j] = clip_f32(yr[j], lo, hi);
    }
    if (scale != 1.0) {
      for (int64_t j = 0; j < O; ++j) yr[j] = yr[j] * sf;
    }
    for (const float* f : {alp, rp}) {
      if (f == nullptr) continue;
      const float fq = f[q];
      for (int64_t j = 0; j < O; ++j) yr[j] = yr[j] * fq;
    }
    return e ? 1 : 0;
  });
  return std::make_tuple(exceeded, n_exceeded);
}

// Test hooks: the RNG and the device step exactly as the kernels use them.
at::Tensor philox_draws(int64_t seed, int64_t offset, int64_t stream, const at::Tensor& a, int64_t b, int64_t draw,
                        bool normal) {
  at::Tensor ac = a.to(at::kLong).contiguous();
  at::Tensor out = at::empty({ac.numel()}, at::kFloat);
  const int64_t* ap = ac.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  const auto draw_fn = normal ? &normal_draw : &uniform_draw;
  for (int64_t q = 0; q < ac.numel(); ++q)
    op[q] = draw_fn(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), static_cast<uint32_t>(stream),
                    static_cast<uint32_t>(ap[q]), static_cast<uint32_t>(b), static_cast<uint32_t>(draw));
  return out;
}

at::Tensor philox_uniform_cpu(int64_t seed, int64_t offset, int64_t stream, const at::Tensor& a, int64_t b,
                              int64_t draw) {
  return philox_draws(seed, offset, stream, a, b, draw, false);
}

at::Tensor philox_normal_cpu(int64_t seed, int64_t offset, int64_t stream, const at::Tensor& a, int64_t b,
                             int64_t draw) {
  return philox_draws(seed, offset, stream, a, b, draw, true);
}

at::Tensor device_step_cpu(const at::Tensor& w_dev, const at::Tensor& up, const at::Tensor& params,
                           const at::Tensor& gparams, const at::Tensor& xi) {
  at::Tensor wc = w_dev.contiguous();
  at::Tensor uc = up.to(at::kBool).contiguous();
  at::Tensor pc = params.contiguous();
  at::Tensor xc = xi.contiguous();
  check_f32_cpu(wc, "w_dev");
  check_f32_cpu(pc, "params");
  const int64_t M = wc.numel();
  TORCH_CHECK(pc.numel() == NP_PLANES * M || pc.size(0) >= NP_PLANES, "device_step: params must be (NP, M)");
  const DeviceGlobals g = globals_of(gparams);
  at::Tensor out = at::empty_like(wc);
  const float* wp = wc.data_ptr<float>();
  const bool* upp = uc.data_ptr<bool>();
  const float* xp = xc.data_ptr<float>();
  const float* pp = pc.data_ptr<float>();
  float* op = out.data_ptr<float>();
  for (int64_t e = 0; e < M; ++e) op[e] = device_step(wp[e], upp[e], load_params(pp, M, e), g, xp[e]);
  return out;
}

// Test hook: (the scalar f_expm1 of this build, its vector twin) at x (float32, contiguous): the twin is
// the AVX-512 lanes' inline expm1_16 (cpu_expm1.h), or the AVX2 lanes' libmvec expm1f, or (neither
// built) f_expm1 again. The n > AGG_POLY_MAX closed form calls both, so they must agree bit for bit.
// Third: the AVX-512 path's expm1_16_k0 (the twin again elsewhere), which must equal expm1_16 bit for bit
// wherever |x·log2 e| < 1/2.
std::vector<at::Tensor> host_expm1_cpu(const at::Tensor& x) {
  at::Tensor xc = x.contiguous();
  check_f32_cpu(xc, "x");
  at::Tensor s = at::empty_like(xc), v = at::empty_like(xc), k = at::empty_like(xc);
  const int64_t n = xc.numel();
  const float* xp = xc.data_ptr<float>();
  float* sp = s.data_ptr<float>();
  float* vp = v.data_ptr<float>();
  for (int64_t e = 0; e < n; ++e) sp[e] = f_expm1(xp[e]);
#if AT_FUSED_AVX512
  float* kp = k.data_ptr<float>();
  for (int64_t e = 0; e < n; e += 16) {
    const __mmask16 m = tail_mask16(n - e);
    const __m512 xv = _mm512_maskz_loadu_ps(m, xp + e);
    _mm512_mask_storeu_ps(vp + e, m, expm1_16(xv));
    _mm512_mask_storeu_ps(kp + e, m, expm1_16_k0(xv));
  }
  return {s, v, k};
#elif AT_LANES_MANY
  for (int64_t e = 0; e < n; e += 8) {
    alignas(32) float buf[8] = {};
    const int64_t k = std::min<int64_t>(8, n - e);
    std::memcpy(buf, xp + e, k * sizeof(float));
    _mm256_store_ps(buf, _ZGVdN8v_expm1f(_mm256_load_ps(buf)));
    std::memcpy(vp + e, buf, k * sizeof(float));
  }
#else
  std::memcpy(vp, sp, n * sizeof(float));
#endif
  k.copy_(v);  // (no k = 0 variant outside the AVX-512 path)
  return {s, v, k};
}

// The auto-scaled fast lrs of a chopped-transfer batch (twin: ops.auto_scale_lrs_ref, the loop of
// ChoppedRule._plan_calls): per sample b the EMAs move first, m ← new when m <= 0, else (1 − τ)·m + τ·new
// when new > 0 (keep = 1 − τ given), then lr_b = num/(m_x·m_d) (base when either EMA is 0), ×lr when
// scaled. xm, dm: (B,) float64 per-sample max|x|, max|d|. float64 in the loop's order, no fused
// multiply-add (-ffp-contract=off), so the numbers are the Python floats'. Returns (lrs (B,), m_x, m_d).
std::tuple<at::Tensor, double, double> auto_scale_lrs(const at::Tensor& xm, const at::Tensor& dm, double mx, double md,
                                                      double tau, double keep, double num, double base, double lr,
                                                      bool scaled) {
  TORCH_CHECK(xm.device().is_cpu() && dm.device().is_cpu() && xm.scalar_type() == at::kDouble &&
                  dm.scalar_type() == at::kDouble && xm.dim() == 1 && dm.sizes() == xm.sizes(),
              "analogtrain::auto_scale_lrs: xm, dm must be (B,) float64 CPU tensors");
  at::Tensor xc = xm.contiguous(), dc = dm.contiguous();
  const int64_t B = xc.numel();
  at::Tensor out = at::empty({B}, xc.options());
  const double* xp = xc.data_ptr<double>();
  const double* dp = dc.data_ptr<double>();
  double* op = out.data_ptr<double>();
  for (int64_t b = 0; b < B; ++b) {
    const double nx = xp[b], nd = dp[b];
    if (mx <= 0)
      mx = nx;
    else if (nx > 0)
      mx = mx * keep + tau * nx;
    if (md <= 0)
      md = nd;
    else if (nd > 0)
      md = md * keep + tau * nd;
    const double f = (mx > 0 && md > 0) ? num / (mx * md) : base;
    op[b] = scaled ? f * lr : f;
  }
  return std::make_tuple(out, mx, md);
}

// AGAD's batched reference correction (twin: the torch rounds of AGADRule.batch_signals). Read r of the
// batch is at position q = r mod n0 of the round order (n0 = min(R, n_slices): sequential slices, every
// round in the same cyclic order); mr, pr (n0, L) are M and P and sr (n0,) the switched flags gathered
// into that order, updated in place. Per read, as the one-by-one path: P_q ← M_q if switched, signal
// v_r − P_q, M_q ← (1 − β)·M_q + β·v_r (float32 products with the factors rounded to float32, then the
// sum: torch's scalar·tensor ops; no fused multiply-add), switched_q ← flips[r]. Returns the signals
// (R, L).
at::Tensor agad_signals(const at::Tensor& v, at::Tensor mr, at::Tensor pr, at::Tensor sr, const at::Tensor& flips,
                        double beta) {
  TORCH_CHECK(v.device().is_cpu() && v.scalar_type() == at::kFloat && v.dim() == 2 && v.is_contiguous(),
              "analogtrain::agad_signals: v must be a contiguous (R, L) float32 CPU tensor");
  const int64_t R = v.size(0), L = v.size(1);
  TORCH_CHECK(mr.scalar_type() == at::kFloat && pr.scalar_type() == at::kFloat && mr.is_contiguous() &&
                  pr.is_contiguous() && mr.dim() == 2 && mr.sizes() == pr.sizes() && mr.size(1) == L &&
                  mr.device().is_cpu() && pr.device().is_cpu(),
              "analogtrain::agad_signals: mr, pr must be contiguous (n0, L) float32 CPU tensors");
  const int64_t n0 = mr.size(0);
  TORCH_CHECK(n0 > 0 || R == 0, "analogtrain::agad_signals: empty round order");
  TORCH_CHECK(sr.scalar_type() == at::kBool && sr.is_contiguous() && sr.numel() == n0 && sr.device().is_cpu(),
              "analogtrain::agad_signals: sr must be a contiguous (n0,) bool CPU tensor");
  at::Tensor fc = flips.to(at::kBool).contiguous();
  TORCH_CHECK(fc.numel() == R && fc.device().is_cpu(), "analogtrain::agad_signals: flips must be (R,) on the CPU");
  at::Tensor out = at::empty({R, L}, v.options());
  const float* vp = v.data_ptr<float>();
  float* mp = mr.data_ptr<float>();
  float* pp = pr.data_ptr<float>();
  bool* sp = sr.data_ptr<bool>();
  const bool* fp = fc.data_ptr<bool>();
  float* op = out.data_ptr<float>();
  const float keep = static_cast<float>(1.0 - beta), bf = static_cast<float>(beta);
  for (int64_t r = 0; r < R; ++r) {
    const int64_t q = r % n0;
    const float* vr = vp + r * L;
    float* m = mp + q * L;
    float* p = pp + q * L;
    float* o = op + r * L;
    if (sp[q]) std::memcpy(p, m, sizeof(float) * static_cast<size_t>(L));
    for (int64_t e = 0; e < L; ++e) {
      o[e] = vr[e] - p[e];
      const float a = keep * m[e];
      const float b = bf * vr[e];
      m[e] = a + b;
    }
    sp[q] = fp[r];
  }
  return out;
}

// Which fast paths this build has: 1 the AVX-512 ones (cpu_fused_avx512.h), 2 the AVX2 one of the exact
// mode (cpu_fused_avx2.h), 0 none (the portable lanes and the generic job path).
int64_t cpu_fast_paths() { return AT_FUSED_AVX512 ? 1 : (AT_FUSED_AVX2 ? 2 : 0); }

// Test hook: on = every CPU update call takes the generic job path (pick_path) until switched off;
// returns the previous setting.
bool force_generic_path(bool on) { return g_force_generic.exchange(on); }

}  // namespace
}  // namespace analogtrain

TORCH_LIBRARY(analogtrain, m) {
  m.def(AT_SCHEMA_PULSED_UPDATE);
  m.def(AT_SCHEMA_BUFFERED_TRANSFER);
  m.def("philox_uniform(int seed, int offset, int stream, Tensor a, int b, int draw) -> Tensor");
  m.def("philox_normal(int seed, int offset, int stream, Tensor a, int b, int draw) -> Tensor");
  m.def("philox_normal_grid(int seed, int offset, int stream, int n_a, Tensor b_idx, int draw) -> Tensor");
  m.def("philox_uniform_grid(int seed, int offset, int stream, int n_a, Tensor b_idx, int draw) -> Tensor");
  m.def(AT_SCHEMA_CHOPPED_UPDATE_SNAPSHOTS);
  m.def(
      "buffered_transfer_seq(Tensor(a!) h, Tensor v, Tensor ks, Tensor? chop, Tensor lr_scales, Tensor writes, "
      "float thr, int bl_t, float momentum, bool forget, bool no_buffer, float cap, bool columns, Tensor(b!) w, "
      "Tensor(c!)? w_p, Tensor params, Tensor gparams, float lr, float dw, int desired_bl, bool fixed_bl, bool ublm, "
      "bool um, float um_grad_scale, float res, bool sto_round, int mode, int seed, Tensor offsets) -> (Tensor, Tensor)");
  m.def("philox_normal_grid_offsets(int seed, Tensor offsets, int stream, int n_a, Tensor b_idx, int draw) -> Tensor");
  m.def("philox_uniform_grid_offsets(int seed, Tensor offsets, int stream, int n_a, Tensor b_idx, int draw) -> Tensor");
  m.def("io_input(Tensor x, Tensor? s, int nm, float nm_thres, float bin, bool sto, float bound, float noise, "
        "float asym, int seed, int offset, int stream, Tensor b_idx, int round_draw, int noise_draw) "
        "-> (Tensor, Tensor, int)");
  m.def("io_output_(Tensor(a!) y, Tensor? amp, float asym, float noise, float bin, bool sto, float bound, int test, "
        "float scale, Tensor? alpha, Tensor? red, int seed, int offset, int stream, Tensor b_idx, int w_draw, "
        "int noise_draw, int round_draw) -> (Tensor, int)");
  m.def("device_step(Tensor w_dev, Tensor up, Tensor params, Tensor gparams, Tensor xi) -> Tensor");
  m.def("host_expm1(Tensor x) -> Tensor[]");
  m.def("cpu_fast_paths() -> int", &analogtrain::cpu_fast_paths);
  m.def("force_generic_path(bool on) -> bool", &analogtrain::force_generic_path);
  m.def("agad_signals(Tensor v, Tensor(a!) mr, Tensor(b!) pr, Tensor(c!) sr, Tensor flips, float beta) -> Tensor",
        &analogtrain::agad_signals);
  m.def("auto_scale_lrs(Tensor xm, Tensor dm, float mx, float md, float tau, float keep, float num, float base, "
        "float lr, bool scaled) -> (Tensor, float, float)", &analogtrain::auto_scale_lrs);
}

TORCH_LIBRARY_IMPL(analogtrain, CPU, m) {
  m.impl("pulsed_update", &analogtrain::pulsed_update_cpu);
  m.impl("buffered_transfer", &analogtrain::buffered_transfer_cpu);
  m.impl("philox_uniform", &analogtrain::philox_uniform_cpu);
  m.impl("philox_normal", &analogtrain::philox_normal_cpu);
  m.impl("device_step", &analogtrain::device_step_cpu);
  m.impl("host_expm1", &analogtrain::host_expm1_cpu);
  m.impl("chopped_update_snapshots", &analogtrain::chopped_update_snapshots_cpu);
  m.impl("buffered_transfer_seq", &analogtrain::buffered_transfer_seq_cpu);
  m.impl("philox_normal_grid_offsets", &analogtrain::philox_normal_grid_offsets_cpu);
  m.impl("philox_uniform_grid_offsets", &analogtrain::philox_uniform_grid_offsets_cpu);
  m.impl("philox_normal_grid", &analogtrain::philox_normal_grid_cpu);
  m.impl("philox_uniform_grid", &analogtrain::philox_uniform_grid_cpu);
  m.impl("io_input", &analogtrain::io_input_cpu);
  m.impl("io_output_", &analogtrain::io_output_cpu);
}
