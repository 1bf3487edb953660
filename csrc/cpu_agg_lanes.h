// Portable lanes of the aggregated update (tile.update_mode = aggregated) for CPUs without the AVX-512
// fast path (cpu_fused_avx512.h): 8 consecutive columns of one row carry their moments (m, v) through
// the row's samples in GCC/Clang vector registers (`vector_size`: AVX2 ymm with -march=native, two SSE
// or NEON registers elsewhere), contiguous loads only, instead of the generic path's per-(row, sample)
// job lists. The numbers are the contract's (device_step.h agg_dir / aggregate_sample): a sample that
// brings a lane 1 to AGG_POLY_MAX pulses updates it in the vector registers with the same float32
// operations in the same order as the scalar code (so bit-identical); a lane that takes more pulses in
// one sample (dense updates) runs the scalar aggregate_sample (log1p/expm1) on that lane.
//
// Used by cpu_ops.cpp run_row_lanes (KIND_LINEAR, pulsed, one-word trains, aggregated).
#pragma once

#include <cstdint>
#include <cstring>
#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "cpu_expm1.h"
#include "cpu_simd.h"

// n > AGG_POLY_MAX on the lanes (dense updates): libmvec's 8-lane log1pf/expm1f; else the scalar
// aggregate_sample per lane. With them, the scalar code of this build (device_step.h f_log1p/f_expm1:
// the generic job path's one-sample calls) takes lane 0 of the same functions, so every CPU path of the
// kernel gives the same n > AGG_POLY_MAX numbers (libms differ by an ulp; the contract allows it across
// machines, not between two paths of one kernel). Where the AVX-512 path is built, the scalar expm1 is
// instead the twin of its inline 16-lane expm1 (cpu_expm1.h; these lanes do not run there).
#if defined(ANALOGTRAIN_LIBMVEC) && defined(__AVX2__) && AT_LIBMVEC_FLOAT
#define AT_LANES_MANY 1
extern "C" __m256 _ZGVdN8v_log1pf(__m256);
extern "C" __m256 _ZGVdN8v_expm1f(__m256);
inline float at_log1pf_lanes(float x) { return _mm256_cvtss_f32(_ZGVdN8v_log1pf(_mm256_set1_ps(x))); }
inline float at_expm1f_lanes(float x) { return _mm256_cvtss_f32(_ZGVdN8v_expm1f(_mm256_set1_ps(x))); }
#define AT_HOST_LOG1PF at_log1pf_lanes
#else
#define AT_LANES_MANY 0
#endif
#if AT_FUSED_AVX512
#define AT_HOST_EXPM1F analogtrain::at_expm1f
#elif AT_LANES_MANY
#define AT_HOST_EXPM1F at_expm1f_lanes
#endif

#include "device_step.h"

namespace analogtrain {
namespace lanes {

constexpr int W = 8;  // columns per group
typedef float vf __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));
typedef uint32_t vu __attribute__((vector_size(32)));

inline vf splat(float s) { return vf{s, s, s, s, s, s, s, s}; }
inline vi splat_i(int32_t s) { return vi{s, s, s, s, s, s, s, s}; }
// m ? a : b per lane (m: 0 or -1, as the vector comparisons give; one blend where AVX has it: the
// moments' chain through a row's samples is a few of these, so their latency is the loop's)
inline vf sel(vi m, vf a, vf b) {
#if defined(__AVX__)
  return (vf)_mm256_blendv_ps((__m256)b, (__m256)a, (__m256)m);
#else
  return (vf)(((vi)a & m) | ((vi)b & ~m));
#endif
}
inline bool any(vi m) {
#if defined(__AVX__)
  return !_mm256_testz_si256((__m256i)m, (__m256i)m);
#else
  uint64_t q[4];
  std::memcpy(q, &m, sizeof(q));
  return (q[0] | q[1] | q[2] | q[3]) != 0;
#endif
}
// _mm*_max_ps / min_ps semantics (the second operand when unordered), as clip_bounds
#if defined(__AVX__)
inline vf vmax(vf a, vf b) { return (vf)_mm256_max_ps((__m256)a, (__m256)b); }
inline vf vmin(vf a, vf b) { return (vf)_mm256_min_ps((__m256)a, (__m256)b); }
#else
inline vf vmax(vf a, vf b) { return sel(a > b, a, b); }
inline vf vmin(vf a, vf b) { return sel(a < b, a, b); }
#endif

// nl <= W lanes from p, the rest 0
// (two objects: with one, zeroed and then overwritten, GCC keeps it on the stack and every full load
// becomes a store and a reload)
template <class V, class T>
inline V load(const T* p, int nl) {
  if (nl == W) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  V v{};
  std::memcpy(&v, p, sizeof(T) * static_cast<size_t>(nl));
  return v;
}

inline vf vsqrt(vf x) {
#if defined(__AVX__)
  return (vf)_mm256_sqrt_ps((__m256)x);
#else
  for (int l = 0; l < W; ++l) x[l] = sqrtf(x[l]);  // (v >= 0: the same correctly rounded root)
  return x;
#endif
}

// p[l] = v[l] on the lanes of mk among the first nl (the others keep their values)
inline void store_masked(float* p, vf v, vi mk, int nl) {
  vf old = load<vf>(p, nl);
  old = sel(mk, v, old);
  if (nl == W)
    std::memcpy(p, &old, sizeof(vf));
  else
    std::memcpy(p, &old, sizeof(float) * static_cast<size_t>(nl));
}

// the number of set bits of each lane (no vector popcount instruction before AVX-512): AVX2 counts the
// nibbles with two table shuffles and sums the bytes of each lane with two multiply-adds (8 operations, no
// vpmulld); elsewhere SWAR
inline vi popcount(vi xi) {
#if defined(__AVX2__)
  const __m256i x = (__m256i)xi, low = _mm256_set1_epi8(0x0f);
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,  //
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i bytes = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(x, low)),
                                        _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), low)));
  return (vi)_mm256_madd_epi16(_mm256_maddubs_epi16(bytes, _mm256_set1_epi8(1)), _mm256_set1_epi16(1));
#else
  vu x = (vu)xi;
  x = x - ((x >> 1) & 0x55555555u);
  x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
  x = (x + (x >> 4)) & 0x0F0F0F0Fu;
  return (vi)((x * 0x01010101u) >> 24);
#endif
}

// The parameter planes of one row (KIND_LINEAR): pointers at the row's first element.
struct RowPlanes {
  const float *ref, *bmin, *bmax, *s_up, *s_dn, *c_up, *c_dn;
};

#define AT_LANES_INLINE inline __attribute__((always_inline))

// The parameters and per-direction constants of the W columns [j0, j0 + nl) of one row; the moments
// (m, v) are the caller's locals (kept in registers through the sample loop), passed to the updates.
struct Group {
  int nl = 0;
  vf ref, bmn, bmx, s_up, s_dn, c_up, c_dn;
  vf al_up, al_dn, ia_up, ia_dn, eps_up, eps_dn;  // agg_dir's alpha, iA, eps per direction
  vf k1_up, k1_dn, q1_up, q1_dn;  // one-pulse variance maps (aggregate_sample with n = 1)
  vf l_up, l_dn, iu_up, iu_dn, lq_up, lq_dn, ie_up, ie_dn, ib_up, ib_dn;  // agg_dir_multi's, on demand
  bool have_many = false;
  float sigma = 0.0f;  // g.sigma (c2c noise)

  // The lanes' parameters (n_lanes of them valid) and the per-direction constants derived from them.
  template <bool MULT>
  void init(int n_lanes, vf ref_, vf bmn_, vf bmx_, vf s_up_, vf s_dn_, vf c_up_, vf c_dn_, const DeviceGlobals& g) {
    nl = n_lanes;
    sigma = g.sigma;
    ref = ref_, bmn = bmn_, bmx = bmx_, s_up = s_up_, s_dn = s_dn_, c_up = c_up_, c_dn = c_dn_;
    direction<MULT>(s_up, c_up, g, al_up, ia_up, eps_up, k1_up, q1_up);
    direction<MULT>(-s_dn, c_dn, g, al_dn, ia_dn, eps_dn, k1_dn, q1_dn);
  }

  // planes: the row's parameters. Returns the starting mean m = state + ref (state: the row's stored
  // device state w_dev − ref).
  template <bool MULT>
  vf load_group(const float* state, const RowPlanes& P, int j0, int n_lanes, const DeviceGlobals& g) {
    const int n = n_lanes;
    init<MULT>(n, load<vf>(P.ref + j0, n), load<vf>(P.bmin + j0, n), load<vf>(P.bmax + j0, n),
               load<vf>(P.s_up + j0, n), load<vf>(P.s_dn + j0, n), load<vf>(P.c_up + j0, n),
               load<vf>(P.c_dn + j0, n), g);
    return load<vf>(state + j0, n) + ref;
  }

  // agg_dir: α = max(g·s, AGG_ALPHA_MIN), iA = 1/(1 + α), ε = ((α·σ)·iA)²; and the n = 1 factors of
  // aggregate_sample in its operation order: k1 = (A·A)(1 + ε) (mult) or A·A, q1 = (σc)² (additive).
  template <bool MULT>
  static void direction(vf gs, vf c, const DeviceGlobals& g, vf& alpha, vf& iA, vf& eps, vf& k1, vf& q1) {
    const vf one = splat(1.0f), sig = splat(g.sigma);
    alpha = vmax(gs, splat(AGG_ALPHA_MIN));
    const vf an = one + alpha;
    iA = one / an;
    const vf q = (alpha * sig) * iA;
    eps = q * q;
    if (MULT) {
      k1 = (an * an) * (one + eps);
      q1 = splat(0.0f);
    } else {
      k1 = an * an;
      const vf sc = sig * c;
      q1 = sc * sc;
    }
  }

  // The new moments of the lanes mk: a mean beyond a bound is clipped with v' = 0, as a non-finite v'.
  AT_LANES_INLINE void store(vi mk, vf mn, vf vn, vf& m, vf& v) const {
    const vi out = (mn < bmn) | (mn > bmx) | ~(vn <= splat(3.4028234663852886e38f));
    mn = vmin(vmax(mn, bmn), bmx);
    vn = sel(out, splat(0.0f), vn);
    m = sel(mk, mn, m);
    v = sel(mk, vn, v);
  }

  // d = ±(s·m + c) of each lane's direction (−y: the sign bit flipped, exactly the product with −1)
  AT_LANES_INLINE vf step(vi up, vf m) const {
    const vf y = sel(up, s_up, s_dn) * m + sel(up, c_up, c_dn);
    return sel(up, y, -y);
  }

  // One pulse on the lanes mk (up: their up lanes): m' = m + d, v' = k1·v + (σd)² (mult) or k1·v + q1.
  template <bool MULT, bool NOISE>
  AT_LANES_INLINE void one_pulse(vi mk, vi up, vf& m, vf& v) const {
    const vf d = step(up, m);
    vf vn = splat(0.0f);
    if (NOISE) {
      const vf k1 = sel(up, k1_up, k1_dn);
      const vf t = splat(sigma) * d;
      vn = MULT ? k1 * v + t * t : k1 * v + sel(up, q1_up, q1_dn);
    }
    store(mk, m + d, vn, m, v);
  }

  // The binomial coefficients (C(n,2), C(n,3), C(n,4)) of agg_poly_sum for lanes of n <= AGG_POLY_MAX
  // pulses: exact small integers there (agg_poly_sum's n(n−1)·0.5, c2(n−2)/3, c3(n−3)·0.25 round to them),
  // so a table lookup gives the same floats without the division's latency in the moments' chain. Lanes
  // of other counts get values the callers select away.
  AT_LANES_INLINE static void binomials(vi n, vf nf, vf& c2, vf& c3, vf& c4) {
#if defined(__AVX2__)
    (void)nf;
    const __m256i k = (__m256i)n;  // (vpermps reads the index's low 3 bits)
    c2 = (vf)_mm256_permutevar8x32_ps(_mm256_setr_ps(0, 0, 1, 3, 6, 0, 0, 0), k);
    c3 = (vf)_mm256_permutevar8x32_ps(_mm256_setr_ps(0, 0, 0, 1, 4, 0, 0, 0), k);
    c4 = (vf)_mm256_permutevar8x32_ps(_mm256_setr_ps(0, 0, 0, 0, 1, 0, 0, 0), k);
#else
    (void)n;
    const vf one = splat(1.0f);
    c2 = (nf * (nf - one)) * splat(0.5f);
    c3 = (c2 * (nf - splat(2.0f))) / splat(3.0f);
    c4 = (c3 * (nf - splat(3.0f))) * splat(0.25f);
#endif
  }

#if AT_LANES_MANY
  // agg_dir_multi per direction: log1p(α), 1/α, log1p(ε), 1/ε, 1/(α(α + 2))
  void many_constants() {
    const vf one = splat(1.0f), two = splat(2.0f);
    const auto lp = [](vf x) { return (vf)_ZGVdN8v_log1pf((__m256)x); };
    l_up = lp(al_up), l_dn = lp(al_dn);
    iu_up = one / al_up, iu_dn = one / al_dn;
    lq_up = lp(eps_up), lq_dn = lp(eps_dn);
    ie_up = one / eps_up, ie_dn = one / eps_dn;
    ib_up = one / (al_up * (al_up + two)), ib_dn = one / (al_dn * (al_dn + two));
    have_many = true;
  }
#endif

  // One sample's pulses on the lanes mk when some lane takes two or more (multi: n >= 2), each lane with
  // aggregate_sample's operations in its order: n = 1 lanes exactly one step, n <= AGG_POLY_MAX lanes the
  // binomial polynomials (agg_poly_sum), and — BIG (AT_LANES_MANY only): some lane (`big`) takes more —
  // the closed form there (E = expm1(n·log1p α); the α = 0, ε = 0 and short-series cases) with libmvec's
  // expm1f. One step d and one store for all lanes (the sums differ per lane, the update's form does not).
  template <bool MULT, bool NOISE, bool BIG>
  AT_LANES_INLINE void closed(vi mk, vi up, vi n, vi multi, vi big, vf& m, vf& v) {
    const vf one = splat(1.0f), zero = splat(0.0f);
    const vf nf = __builtin_convertvector(n, vf);
    const vi small = multi & ~big;  // 2 <= n <= AGG_POLY_MAX
    vf c2, c3, c4;
    binomials(n, nf, c2, c3, c4);
    const auto poly = [&](vf x) { return nf + x * (c2 + x * (c3 + x * c4)); };  // Σ_{k<n} (1 + x)^k
    const vf alpha = sel(up, al_up, al_dn);
    const vf r_p = poly(alpha);
    vf e = sel(small, alpha * r_p, alpha);  // A^n − 1 (n = 1: α)
    vf r = sel(small, r_p, one);            // Σ_{k<n} A^k
    [[maybe_unused]] vi a0 = splat_i(0);
#if AT_LANES_MANY
    const auto em1 = [](vf x) { return (vf)_ZGVdN8v_expm1f((__m256)x); };
    if (BIG) {
      if (!have_many) many_constants();
      a0 = alpha == zero;
      const vf ex = em1(nf * sel(up, l_up, l_dn));
      e = sel(big, ex, e);
      r = sel(big, sel(a0, nf, ex * sel(up, iu_up, iu_dn)), r);
    }
#endif
    const vf d = step(up, m);
    vf vn = zero;
    if (NOISE) {
      const vf an = one + e;
      if (MULT) {
        const vf eps = sel(up, eps_up, eps_dn);
        vf sq = sel(small, poly(eps), one);  // Σ_{j<n} (1 + ε)^j
#if AT_LANES_MANY
        if (BIG) {
          const vi e0 = eps == zero;
          const vi ser = ((nf * eps) < splat(AGG_SERIES_MAX)) & ~e0;
          vf sqm = nf * (one + ((nf - one) * eps) * splat(0.5f));  // the series
          if (any(big & ~(ser | e0))) sqm = sel(ser, sqm, em1(nf * sel(up, lq_up, lq_dn)) * sel(up, ie_up, ie_dn));
          sq = sel(big, sel(e0, nf, sqm), sq);
        }
#endif
        const vf an1 = sel(multi, an * sel(up, ia_up, ia_dn), one);  // A^{n−1}
        const vf t = (splat(sigma) * d) * an1;
        vn = ((an * an) * (one + eps * sq)) * v + (t * t) * sq;
      } else {
        vf sa = sel(small, poly(alpha * (alpha + splat(2.0f))), one);  // Σ_{k<n} A^{2k}
#if AT_LANES_MANY
        if (BIG) sa = sel(big, sel(a0, nf, (e * (e + splat(2.0f))) * sel(up, ib_up, ib_dn)), sa);
#endif
        const vf sc = splat(sigma) * sel(up, c_up, c_dn);
        vn = (an * an) * v + (sc * sc) * sa;
      }
    }
    store(mk, m + d * r, vn, m, v);
  }

  // One sample's n >= 1 pulses on the lanes mk (n = 0 elsewhere): one_pulse when no lane takes two,
  // else closed. Returns the lanes of more than AGG_POLY_MAX pulses left to the caller's scalar closed
  // form (none where AT_LANES_MANY).
  template <bool MULT, bool NOISE>
  AT_LANES_INLINE vi pulses(vi mk, vi up, vi n, vf& m, vf& v) {
    const vi multi = n > splat_i(1);
    if (!any(multi)) {
      one_pulse<MULT, NOISE>(mk, up, m, v);
      return splat_i(0);
    }
    const vi big = n > splat_i(AGG_POLY_MAX);
#if AT_LANES_MANY
    if (any(big))
      closed<MULT, NOISE, true>(mk, up, n, multi, big, m, v);
    else
      closed<MULT, NOISE, false>(mk, up, n, multi, big, m, v);
    return splat_i(0);
#else
    closed<MULT, NOISE, false>(mk & ~big, up, n, multi, big, m, v);
    return big;
#endif
  }
};

}  // namespace lanes
}  // namespace analogtrain
