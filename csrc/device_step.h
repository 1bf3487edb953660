// Per-pulse device step functions (host and device): the C++/CUDA twin of
// analogtrain/devices/step.py (`device_step`, `step_magnitudes`) over the parameter layout of
// analogtrain/devices/params.py. Change both or neither.
//
// All arithmetic is float32 in exactly the order of the torch code (compile with -ffp-contract=off /
// nvcc --fmad=false so no FMA fuses two roundings), so the deterministic paths agree bit for bit with
// the reference; expf/powf may differ from torch's by an ulp.
#pragma once

#include <cmath>
#include <cstdint>

#include "philox.h"

namespace analogtrain {

// --- planes of params (NP, O, I) --------------------------------------------------------------------
enum ParamPlane : int {
  P_BMIN = 0,
  P_BMAX = 1,
  P_SCALE_UP = 2,
  P_SCALE_DOWN = 3,
  P_SLOPE_UP = 4,
  P_SLOPE_DOWN = 5,
  P_GAMMA_UP = 6,
  P_GAMMA_DOWN = 7,
  P_REF = 8,
  NP_PLANES = 9,
};

// --- tile-wide scalars gparams (NG,) float64 --------------------------------------------------------
enum GParam : int {
  G_KIND = 0,
  G_DW_MIN_STD = 1,
  G_MULT_NOISE = 2,
  G_WRITE_NOISE = 3,
  G_ES_A_UP = 4,
  G_ES_A_DOWN = 5,
  G_ES_GAMMA_UP = 6,
  G_ES_GAMMA_DOWN = 7,
  G_ES_A = 8,
  G_ES_B = 9,
  G_ES_STD_ADD = 10,
  G_ES_STD_SLOPE = 11,
  NG_SCALARS = 12,
};

enum DeviceKind : int { KIND_LINEAR = 0, KIND_EXP = 1, KIND_POW = 2 };

// Tile-wide scalars rounded to float32 once (as step.py's _g32), plus derived flags.
struct DeviceGlobals {
  int kind;
  float sigma;        // dw_min_std
  bool has_noise;     // sigma != 0: the reference draws (and applies) a normal per pulse
  bool mult_noise;    // KIND_LINEAR: multiplicative noise
  float write_noise;  // write-noise std in weight units (0: off)
  float es_a_up, es_a_down, es_gamma_up, es_gamma_down, es_two_a, es_b, es_std_add, es_std_slope;
  bool es_complex;    // KIND_EXP complex noise active
};

inline DeviceGlobals make_globals(const double* g) {
  DeviceGlobals o;
  o.kind = static_cast<int>(g[G_KIND]);
  o.sigma = static_cast<float>(g[G_DW_MIN_STD]);
  o.has_noise = g[G_DW_MIN_STD] != 0.0;
  o.mult_noise = g[G_MULT_NOISE] != 0.0;
  o.write_noise = static_cast<float>(g[G_WRITE_NOISE]);
  o.es_a_up = static_cast<float>(g[G_ES_A_UP]);
  o.es_a_down = static_cast<float>(g[G_ES_A_DOWN]);
  o.es_gamma_up = static_cast<float>(g[G_ES_GAMMA_UP]);
  o.es_gamma_down = static_cast<float>(g[G_ES_GAMMA_DOWN]);
  o.es_two_a = static_cast<float>(g[G_ES_A]) * 2.0f;
  o.es_b = static_cast<float>(g[G_ES_B]);
  o.es_std_add = static_cast<float>(g[G_ES_STD_ADD]);
  o.es_std_slope = static_cast<float>(g[G_ES_STD_SLOPE]);
  o.es_complex = o.has_noise && o.sigma > 0.0f && (o.es_std_add != 0.0f || o.es_std_slope != 0.0f);
  return o;
}

// The sampled parameters of one element (gathered from the planes).
struct ElemParams {
  float bmin, bmax, sc_up, sc_dn, s_up, s_dn, g_up, g_dn, ref;
};

AT_HD ElemParams load_params(const float* params, int64_t plane_stride, int64_t e) {
  ElemParams p;
  p.bmin = params[P_BMIN * plane_stride + e];
  p.bmax = params[P_BMAX * plane_stride + e];
  p.sc_up = params[P_SCALE_UP * plane_stride + e];
  p.sc_dn = params[P_SCALE_DOWN * plane_stride + e];
  p.s_up = params[P_SLOPE_UP * plane_stride + e];
  p.s_dn = params[P_SLOPE_DOWN * plane_stride + e];
  p.g_up = params[P_GAMMA_UP * plane_stride + e];
  p.g_dn = params[P_GAMMA_DOWN * plane_stride + e];
  p.ref = params[P_REF * plane_stride + e];
  return p;
}

AT_HD float clip_bounds(float v, float lo, float hi) {
  // torch.minimum(torch.maximum(v, lo), hi)
  v = v > lo ? v : lo;
  return v < hi ? v : hi;
}

AT_HD float f_exp(float v) {
#if defined(__CUDA_ARCH__)
  return expf(v);
#else
  return std::exp(v);
#endif
}

AT_HD float f_pow(float b, float e) {
#if defined(__CUDA_ARCH__)
  return powf(b, e);
#else
  return std::pow(b, e);
#endif
}

// ONE pulse on the device conductance w_dev (up or down), cycle-to-cycle noise xi (ignored when the
// tile has no noise), clipped to [b_min, b_max]. Mirrors devices/step.py::device_step line by line.
AT_HD float device_step(float w, bool up, const ElemParams& p, const DeviceGlobals& g, float xi) {
  const float noise = g.has_noise ? g.sigma * xi : 0.0f;  // σξ
  const float fac = g.has_noise ? 1.0f + noise : 1.0f;    // (1 + σξ)
  if (g.kind == KIND_LINEAR) {
    float nw;
    if (g.mult_noise) {
      nw = up ? w + (p.s_up * w + p.sc_up) * fac : w - (p.s_dn * w + p.sc_dn) * fac;
    } else {
      nw = up ? w + (p.s_up * w + p.sc_up * fac) : w - (p.s_dn * w + p.sc_dn * fac);
    }
    return clip_bounds(nw, p.bmin, p.bmax);
  }
  if (g.kind == KIND_EXP) {
    const float rng = p.bmax - p.bmin;
    if (!(rng > 0.0f)) return w;  // aihwkit skips devices with an empty range (no clip)
    const float z = g.es_two_a * w / rng + g.es_b;  // 2a·w/(b_max − b_min) + b
    float nw;
    if (up) {
      float y = 1.0f - g.es_a_up * f_exp(g.es_gamma_up * z);
      y = y > 0.0f ? y : 0.0f;
      if (g.es_complex) {
        const float delta = y * p.sc_up;
        const float spread = (fabsf(delta) + g.es_std_add) + g.es_std_slope * fabsf(w);
        nw = (w + delta) + g.sigma * spread * xi;
      } else {
        nw = w + (y * fac) * p.sc_up;
      }
    } else {
      float y = 1.0f - g.es_a_down * f_exp(-g.es_gamma_down * z);
      y = y > 0.0f ? y : 0.0f;
      if (g.es_complex) {
        const float delta = -(y * p.sc_dn);
        const float spread = (fabsf(delta) + g.es_std_add) + g.es_std_slope * fabsf(w);
        nw = (w + delta) + g.sigma * spread * xi;
      } else {
        nw = w - (y * fac) * p.sc_dn;
      }
    }
    return clip_bounds(nw, p.bmin, p.bmax);
  }
  // KIND_POW
  const float rng = p.bmax - p.bmin;
  if (rng == 0.0f) return w;
  const float safe = rng > 0.0f ? rng : 1.0f;  // as step.py (only reachable for inconsistent bounds)
  float nw;
  if (up) {
    float base = (p.bmax - w) / safe;
    base = base > 0.0f ? base : 0.0f;
    nw = w + (p.sc_up * f_pow(base, p.g_up)) * fac;
  } else {
    float base = (w - p.bmin) / safe;
    base = base > 0.0f ? base : 0.0f;
    nw = w - (p.sc_dn * f_pow(base, p.g_dn)) * fac;
  }
  return clip_bounds(nw, p.bmin, p.bmax);
}

// Noise-free step magnitudes (step_up, step_down) at w_dev, float32, no clipping (step.py's
// step_magnitudes evaluated in float32, as the `expected` update mode does).
AT_HD void step_magnitudes(float w, const ElemParams& p, const DeviceGlobals& g, float& st_up, float& st_dn) {
  if (g.kind == KIND_LINEAR) {
    st_up = p.s_up * w + p.sc_up;
    st_dn = p.s_dn * w + p.sc_dn;
    return;
  }
  const float rng = p.bmax - p.bmin;
  if (g.kind == KIND_EXP) {
    const bool ok = rng > 0.0f;
    const float safe = ok ? rng : 1.0f;
    const float z = g.es_two_a * w / safe + g.es_b;
    float yu = 1.0f - g.es_a_up * f_exp(g.es_gamma_up * z);
    float yd = 1.0f - g.es_a_down * f_exp(-g.es_gamma_down * z);
    yu = yu > 0.0f ? yu : 0.0f;
    yd = yd > 0.0f ? yd : 0.0f;
    st_up = ok ? yu * p.sc_up : 0.0f;
    st_dn = ok ? yd * p.sc_dn : 0.0f;
    return;
  }
  const bool ok = rng != 0.0f;
  const float safe = ok ? rng : 1.0f;
  float bu = (p.bmax - w) / safe;
  float bd = (w - p.bmin) / safe;
  bu = bu > 0.0f ? bu : 0.0f;
  bd = bd > 0.0f ? bd : 0.0f;
  st_up = ok ? p.sc_up * f_pow(bu, p.g_up) : 0.0f;
  st_dn = ok ? p.sc_dn * f_pow(bd, p.g_dn) : 0.0f;
}

// n single pulses of one sign on one element in one sample: pulse q uses
// normal(seed, offset, PULSE_NOISE, a = flat element, b = sample, draw = q). Returns the new w_dev.
AT_HD float apply_pulses(float w, int n, bool up, const ElemParams& p, const DeviceGlobals& g, uint64_t seed,
                         uint64_t offset, uint32_t flat, uint32_t sample) {
  if (!g.has_noise) {
    for (int q = 0; q < n; ++q) w = device_step(w, up, p, g, 0.0f);
    return w;
  }
  for (int q0 = 0; q0 < n; q0 += 4) {
    const Philox4 r = philox_block(seed, offset, S_PULSE_NOISE, flat, sample, static_cast<uint32_t>(q0 >> 2));
    float z[4];
    box_muller2(r.r[0], r.r[1], z[0], z[1]);
    const int m = n - q0 < 4 ? n - q0 : 4;
    if (m > 2) box_muller2(r.r[2], r.r[3], z[2], z[3]);
    for (int q = 0; q < m; ++q) w = device_step(w, up, p, g, z[q]);
  }
  return w;
}

// --- specialised fast path (CPU hot loop): kind and noise placement as template parameters -------------
// Same arithmetic, same order as device_step (so results are bit-identical to it), but no run-time
// branches on the tile-wide flags, and the up/down choice is a select: w − d == w + (−d) exactly in
// IEEE arithmetic, so "w + (up ? d_up : −d_down)" rounds exactly as the reference's two branches.
template <int KIND, bool MULT, bool NOISE>
AT_HD float device_step_t(float w, bool up, const ElemParams& p, const DeviceGlobals& g, float xi) {
  const float fac = NOISE ? 1.0f + g.sigma * xi : 1.0f;
  if (KIND == KIND_LINEAR) {
    const float s = up ? p.s_up : p.s_dn;
    const float sc = up ? p.sc_up : p.sc_dn;
    const float dlt = MULT ? (s * w + sc) * fac : (s * w + sc * fac);
    return clip_bounds(w + (up ? dlt : -dlt), p.bmin, p.bmax);
  } else {
    return device_step(w, up, p, g, xi);  // exp / pow: transcendental-bound anyway
  }
}

// Normals of draws q0..q0+m-1 (m <= 4) of one Philox block, computing only the ones needed.
AT_HD void block_normals(const Philox4& r, int m, float* z) {
  if (m == 1) {
    z[0] = box_muller(r.r[0], r.r[1], false);
    return;
  }
  box_muller2(r.r[0], r.r[1], z[0], z[1]);
  if (m == 3) z[2] = box_muller(r.r[2], r.r[3], false);
  if (m == 4) box_muller2(r.r[2], r.r[3], z[2], z[3]);
}

template <int KIND, bool MULT, bool NOISE>
AT_HD float apply_pulses_t(float w, int n, bool up, const ElemParams& p, const DeviceGlobals& g, uint64_t seed,
                           uint64_t offset, uint32_t flat, uint32_t sample) {
  if (!NOISE) {
    for (int q = 0; q < n; ++q) w = device_step_t<KIND, MULT, false>(w, up, p, g, 0.0f);
    return w;
  }
  for (int q0 = 0; q0 < n; q0 += 4) {
    const Philox4 r = philox_block(seed, offset, S_PULSE_NOISE, flat, sample, static_cast<uint32_t>(q0 >> 2));
    float z[4];
    const int m = n - q0 < 4 ? n - q0 : 4;
    block_normals(r, m, z);
    for (int q = 0; q < m; ++q) w = device_step_t<KIND, MULT, true>(w, up, p, g, z[q]);
  }
  return w;
}


// --- aggregated pulses (tile.update_mode = aggregated; contract: ops/reference.py, "aggregated") --------
// KIND_LINEAR elements carry the exact mean m and variance v of their pulse chain through the samples of
// one call; one normal per touched element at the end. Per pulse w' = w + g(s·w + c)(1 + σξ) (mult) or
// w + g(s·w + c(1 + σξ)) (additive), g = ±1, α = g·s, A = 1 + α. For n pulses from (m, v):
//   D = g(s·m + c), E = expm1(n·log1p α) = A^n − 1, m' = m + D·E/α            (α = 0: m + n·D)
//   mult:     v' = A^{2n}(1 + ε·Sq)·v + (σ·D·A^{n−1})²·Sq,  ε = (ασ/A)², Sq = Σ_{j<n}(1+ε)^j
//   additive: v' = A^{2n}·v + (σc)²·Σ_{k<n} A^{2k}
// then a mean beyond a bound is clipped and v reset to 0 (the device sits at its bound). For n <= 4 the
// sums are polynomials: Σ_{k<n}A^k = agg_poly_sum(α, n), E = α·that, Sq = agg_poly_sum(ε, n),
// Σ_{k<n}A^{2k} = agg_poly_sum(α(α + 2), n). float32 in the contract's operation order; log1p/expm1
// differ by an ulp across libms, so CPU, CUDA and torch agree to float rounding where a sample brings
// more than 4 pulses, and exactly otherwise.
constexpr float AGG_ALPHA_MIN = -1.0f + 1.0f / 4096.0f;  // clamp of α (degenerate devices only)
// n·ε below this: Σ_{j<n}(1+ε)^j = n(1 + (n−1)ε/2) (the next term, n³ε²/6, is below float resolution)
constexpr float AGG_SERIES_MAX = 1.0f / 1024.0f;
// n <= this (contract version 4): the geometric sums Σ_{k<n}(1+x)^k are the binomial polynomials
// n + x(C(n,2) + x(C(n,3) + x·C(n,4))), no log1p/expm1 (sparse updates bring few pulses per sample)
constexpr int AGG_POLY_MAX = 4;

// Σ_{k<n}(1+x)^k for 1 <= n <= AGG_POLY_MAX (nf = n as float): Horner innermost first, one rounding per
// operation; c2 = n(n−1)·0.5, c3 = c2(n−2)/3, c4 = c3(n−3)·0.25 are exact (devices/step.py agg_poly_sum).
AT_HD float agg_poly_sum(float x, float nf) {
  const float c2 = (nf * (nf - 1.0f)) * 0.5f;
  const float c3 = (c2 * (nf - 2.0f)) / 3.0f;
  const float c4 = (c3 * (nf - 3.0f)) * 0.25f;
  return nf + x * (c2 + x * (c3 + x * c4));
}

// (AT_HOST_LOG1PF / AT_HOST_EXPM1F: the CPU kernel's vector libm, cpu_agg_lanes.h, when it has one)
AT_HD float f_log1p(float v) {
#if defined(__CUDA_ARCH__)
  return log1pf(v);
#elif defined(AT_HOST_LOG1PF)
  return AT_HOST_LOG1PF(v);
#else
  return std::log1p(v);
#endif
}

AT_HD float f_expm1(float v) {
#if defined(__CUDA_ARCH__)
  return expm1f(v);
#elif defined(AT_HOST_EXPM1F)
  return AT_HOST_EXPM1F(v);
#else
  return std::expm1(v);
#endif
}

// Per-element, per-direction constants of the aggregated step (computed once per call; the logarithms
// and reciprocals of the n >= 2 closed form only when a sample brings two pulses: agg_dir_multi).
struct AggDir {
  float alpha;  // g·s clamped to >= AGG_ALPHA_MIN
  float iA;     // 1/(1 + alpha)
  float eps;    // (alpha·σ·iA)² (mult noise)
  bool multi;   // the fields below are set
  float l;      // log1p(alpha)
  float ia;     // 1/alpha (unused when alpha == 0)
  float lq;     // log1p(eps)
  float ie;     // 1/eps (unused when eps == 0)
  float ia2;    // 1/(alpha·(alpha + 2)) (additive noise)
};

AT_HD AggDir agg_dir(float s, bool up, const DeviceGlobals& g) {
  AggDir a;
  const float al = up ? s : -s;
  a.alpha = al > AGG_ALPHA_MIN ? al : AGG_ALPHA_MIN;
  a.iA = 1.0f / (1.0f + a.alpha);
  const float q = (a.alpha * g.sigma) * a.iA;
  a.eps = q * q;
  a.multi = false;
  a.l = a.ia = a.lq = a.ie = a.ia2 = 0.0f;
  return a;
}

AT_HD void agg_dir_multi(AggDir& a) {
  a.l = f_log1p(a.alpha);
  a.ia = 1.0f / a.alpha;
  a.lq = f_log1p(a.eps);
  a.ie = 1.0f / a.eps;
  a.ia2 = 1.0f / (a.alpha * (a.alpha + 2.0f));
  a.multi = true;
}

// One sample's n >= 1 pulses of one sign on the moments (m, v) of one element (the contract's float
// order; n == 1 uses the exact values E = α, R = Sq = Sa = A^{n−1} = 1).
template <bool MULT, bool NOISE>
AT_HD void aggregate_sample(float& m, float& v, int n, bool up, const ElemParams& p, const DeviceGlobals& g,
                            AggDir& a) {
  const float gs = up ? 1.0f : -1.0f;
  const float s = up ? p.s_up : p.s_dn;
  const float c = up ? p.sc_up : p.sc_dn;
  const float d = gs * (s * m + c);
  const float nf = static_cast<float>(n);
  const bool one = n == 1;
  const bool poly = n <= AGG_POLY_MAX;
  if (!poly && !a.multi) agg_dir_multi(a);
  float e, r;  // A^n − 1, Σ_{k<n} A^k
  if (one) {
    e = a.alpha, r = 1.0f;
  } else if (poly) {
    r = agg_poly_sum(a.alpha, nf);
    e = a.alpha * r;
  } else {
    e = f_expm1(nf * a.l);
    r = a.alpha == 0.0f ? nf : e * a.ia;
  }
  float mn = m + d * r;
  float vn = 0.0f;
  if (NOISE) {
    const float an = 1.0f + e;
    if (MULT) {
      float sq;  // Σ_{j<n} (1 + ε)^j
      if (one) sq = 1.0f;
      else if (poly) sq = agg_poly_sum(a.eps, nf);
      else if (a.eps == 0.0f) sq = nf;
      else if (nf * a.eps < AGG_SERIES_MAX) sq = nf * (1.0f + ((nf - 1.0f) * a.eps) * 0.5f);
      else sq = f_expm1(nf * a.lq) * a.ie;
      const float an1 = one ? 1.0f : an * a.iA;  // A^{n−1}
      const float t = (g.sigma * d) * an1;
      vn = ((an * an) * (1.0f + a.eps * sq)) * v + (t * t) * sq;
    } else {
      const float sa = one    ? 1.0f
                       : poly ? agg_poly_sum(a.alpha * (a.alpha + 2.0f), nf)
                              : (a.alpha == 0.0f ? nf : (e * (e + 2.0f)) * a.ia2);  // Σ_{k<n} A^{2k}
      const float sc = g.sigma * c;
      vn = (an * an) * v + (sc * sc) * sa;
    }
  }
  // a degenerate device (α clamped, A = 2^-12) can give 0·inf in v': it sits at its fixed point, v' = 0
  if (!(vn <= 3.4028234663852886e38f)) vn = 0.0f;
  if (mn < p.bmin || mn > p.bmax) {
    mn = clip_bounds(mn, p.bmin, p.bmax);
    vn = 0.0f;
  }
  m = mn;
  v = vn;
}

// The final draw of element `flat` in the aggregated mode (contract version 5): normal(…, PULSE_NOISE,
// a = flat >> 2, b = 0, draw = flat & 3) — four consecutive elements share one Philox call, the cosine
// and sine of its word pairs, so a vectorised finish makes 64 normals per 16-lane Philox call with two
// logarithms per lane (cpu_fused_avx512.h aggregate_normals).
AT_HD float aggregate_normal(uint64_t seed, uint64_t offset, uint32_t flat) {
  return normal_draw(seed, offset, S_PULSE_NOISE, flat >> 2, 0u, flat & 3u);
}

// The end of the call for a touched element: w_dev = clip(m + sqrt(v)·z), z = aggregate_normal(flat)
// (not drawn without noise); aggregate_draw takes z already drawn.
AT_HD float aggregate_draw(float m, float v, const ElemParams& p, const DeviceGlobals& g, float z) {
  const float out = g.has_noise ? m + sqrtf(v) * z : m;
  return clip_bounds(out, p.bmin, p.bmax);
}

AT_HD float aggregate_finish(float m, float v, const ElemParams& p, const DeviceGlobals& g, uint64_t seed,
                             uint64_t offset, uint32_t flat) {
  return aggregate_draw(m, v, p, g, g.has_noise ? aggregate_normal(seed, offset, flat) : 0.0f);
}

// Run-time dispatch of aggregate_sample (KIND_LINEAR only; the ops reject other kinds).
AT_HD void aggregate_sample_rt(float& m, float& v, int n, bool up, const ElemParams& p, const DeviceGlobals& g) {
  AggDir a = agg_dir(up ? p.s_up : p.s_dn, up, g);
  if (!g.has_noise) aggregate_sample<true, false>(m, v, n, up, p, g, a);
  else if (g.mult_noise) aggregate_sample<true, true>(m, v, n, up, p, g, a);
  else aggregate_sample<false, true>(m, v, n, up, p, g, a);
}

}  // namespace analogtrain
