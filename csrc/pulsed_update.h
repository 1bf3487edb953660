// Pulsed-update building blocks shared by the CPU kernel (cpu_ops.cpp) and the CUDA kernel
// (cuda_kernels.cu): per-sample scales (aihwkit calculateBlAB + performUpdateManagement), pulse
// probabilities with res/sto_round, bit-packed pulse trains and the per-element work of one sample.
// Semantics and RNG layout: analogtrain/ops/reference.py (the oracle) — every step below names the
// line of that docstring it mirrors.
#pragma once

#include <cmath>
#include <cstdint>

#include "device_step.h"
#include "philox.h"

namespace analogtrain {

enum UpdateMode : int { MODE_PULSED = 0, MODE_MEAN_COUNT = 1, MODE_EXPECTED = 2 };
// Bit of the op's `mode` argument: aggregated pulses (pulsed trains and counts, the n pulses of an element
// in one sample applied as one step; analogtrain.ops.AGGREGATE_BIT). make_args splits it off.
constexpr int AGGREGATE_BIT = 4;

// Scalars of one call (UpdateSpec + lr, dw, seed, offset).
struct UpdateArgs {
  double lr_abs;
  double sign_lr;  // +1 or -1
  double dw;
  int desired_bl;
  bool fixed_bl, ublm, um;
  double um_grad_scale;
  double res;
  bool sto_round;
  int mode;        // MODE_* (without the aggregate bit)
  bool aggregate;  // MODE_PULSED with aggregated pulses
  uint64_t seed, offset;
};

// UpdateArgs from the op arguments (shared by the CPU and CUDA op wrappers): |lr| and its sign, and UM
// forced on under UBLM as in aihwkit.
inline UpdateArgs make_args(double lr, double dw, int64_t desired_bl, bool fixed_bl, bool ublm, bool um, double um_grad_scale,
                             double res, bool sto_round, int64_t mode, int64_t seed, int64_t offset) {
  UpdateArgs u;
  u.lr_abs = std::fabs(lr);
  u.sign_lr = lr > 0 ? 1.0 : -1.0;
  u.dw = dw;
  u.desired_bl = static_cast<int>(desired_bl);
  u.fixed_bl = fixed_bl;
  u.ublm = ublm;
  u.um = um || ublm;
  u.um_grad_scale = um_grad_scale;
  u.res = res;
  u.sto_round = sto_round;
  u.mode = static_cast<int>(mode) & ~AGGREGATE_BIT;
  u.aggregate = (mode & AGGREGATE_BIT) != 0;
  u.seed = static_cast<uint64_t>(seed);
  u.offset = static_cast<uint64_t>(offset);
  return u;
}

// Range check of the op's mode argument (MODE_* plus optionally AGGREGATE_BIT).
inline bool valid_mode_code(int64_t mode) {
  const int64_t m = mode & ~static_cast<int64_t>(AGGREGATE_BIT);
  return mode >= 0 && m >= MODE_PULSED && m <= MODE_EXPECTED;
}

// nullptr when the op arguments are consistent, else the message the op wrappers raise.
inline const char* args_error(const UpdateArgs& u, const DeviceGlobals& g) {
  if (u.mode < MODE_PULSED || u.mode > MODE_EXPECTED) return "analogtrain: unknown update mode";
  if (u.aggregate && u.mode != MODE_PULSED) return "analogtrain: aggregate pulses needs the pulsed mode";
  if (u.aggregate && g.kind != KIND_LINEAR)
    return "analogtrain: aggregate pulses needs a linear-step family device (constant_step, linear_step, softbounds)";
  return nullptr;
}

// One element of the TT-family buffer step (float32, the operation order of reference_transfer.py):
// h ← h + sig·lr_scale (no_buffer: h ← sig·lr_scale), n = clamp(trunc(h/thr), ±bl), then forget
// (h ← momentum·h where n ≠ 0) or subtract (h ← h − (1 − momentum)·n·thr), clamp h to ±cap (cap > 0).
// Updates *h and returns n. Shared by the CPU loop and the CUDA kernel.
AT_HD float buffer_element(float* h, float sig, float lr_scale, float thr, float bl, float momentum,
                           float one_minus_momentum, bool forget, bool no_buffer, float cap) {
  const float inc = sig * lr_scale;
  float hv = no_buffer ? inc : *h + inc;
  float n = truncf(hv / thr);
  n = n < -bl ? -bl : (n > bl ? bl : n);
  if (forget) {
    if (n != 0.0f) hv = momentum * hv;
  } else {
    hv = hv - (one_minus_momentum * n) * thr;
  }
  if (cap > 0.0f) hv = hv < -cap ? -cap : (hv > cap ? cap : hv);
  *h = hv;
  return n;
}

struct SampleScales {
  int bl;    // 0: no update for this sample
  double a;  // scale of d (p_d = |d|·A)
  double b;  // scale of x (p_x = |x|·B)
};

// Step 1 of reference.py (update_scales), in double, same operation order.
AT_HD SampleScales update_scales(const UpdateArgs& u, double x_max, double d_max) {
  SampleScales s{0, 0.0, 0.0};
  if (u.lr_abs == 0.0) return s;
  const int bld = u.desired_bl;
  int bl;
  double a, b;
  if (u.fixed_bl || u.ublm) {
    bl = bld;
    a = b = sqrt(u.lr_abs / (u.dw * bl));
  } else if (u.dw * bld < u.lr_abs) {
    const double c = ceil(u.lr_abs / u.dw);
    bl = c > 1.0 ? static_cast<int>(c) : 1;
    a = b = 1.0;
  } else {
    bl = bld;
    a = b = sqrt(u.lr_abs / (u.dw * bl));
  }
  if (!(u.um || u.ublm)) {
    s.bl = bl;
    s.a = a;
    s.b = b;
    return s;
  }
  if (x_max == 0.0 || d_max == 0.0) return s;
  double d_val = u.um_grad_scale * d_max;
  const double k = u.lr_abs * x_max * d_val / u.dw;
  if (u.ublm) {
    const double c = ceil(k);
    bl = c < static_cast<double>(bld) ? static_cast<int>(c) : bld;
    a = b = sqrt(u.lr_abs / (u.dw * bl));
  }
  if (k > bld) d_val = d_val * bld / k;  // x saturates at exactly 1, large |d| entries clip
  a = a * sqrt(x_max / d_val);
  b = b * sqrt(d_val / x_max);
  s.bl = bl;
  s.a = a;
  s.b = b;
  return s;
}

AT_HD double round_half_even(double v) {
#if defined(__CUDA_ARCH__)
  return rint(v);
#else
  return std::nearbyint(v);  // default rounding mode: half to even, like torch.round
#endif
}

// Step 2 of reference.py (_probabilities): float32 probability |v|·scale with res / sto_round.
// u_round: the PROB_ROUND uniform of this entry (used only with sto_round and not expected).
AT_HD float probability(float v, double scale, const UpdateArgs& u, float u_round) {
  double p = static_cast<double>(fabsf(v)) * scale;
  if (u.res > 0) {
    const bool expected = u.mode == MODE_EXPECTED;
    double q = p / u.res;
    if (u.sto_round && !expected) q = q + static_cast<double>(u_round) - 0.5;
    if (!(u.sto_round && expected)) p = u.res * round_half_even(q);
  }
  return static_cast<float>(p);
}

AT_HD float sign_f(float v) { return v > 0.0f ? 1.0f : (v < 0.0f ? -1.0f : 0.0f); }

// Bit-packed pulse train of one entry: slot k fires iff uniform(seed, offset, stream, a, b, k) < p.
// `words` (nw uint32 words, slot k -> bit k%32 of word k/32) must be zeroed by the caller.
// Returns true when any slot fired.
AT_HD bool make_train(uint64_t seed, uint64_t offset, uint32_t stream, uint32_t a, uint32_t sample, int bl,
                      float p, uint32_t* words) {
  const uint32_t t = bernoulli_threshold(p);
  if (t == 0u) return false;
  bool any = false;
  if (t == (1u << 24)) {  // every slot fires (p > max uniform): no draws needed
    for (int k = 0; k < bl; ++k) words[k >> 5] |= 1u << (k & 31);
    return bl > 0;
  }
  const int nblk = (bl + 3) >> 2;
  for (int blk = 0; blk < nblk; ++blk) {
    const Philox4 r = philox_block(seed, offset, stream, a, sample, static_cast<uint32_t>(blk));
    const int k0 = blk << 2;
#if defined(__CUDACC__)
#pragma unroll
#endif
    for (int q = 0; q < 4; ++q) {
      const int k = k0 + q;
      if (k < bl && (r.r[q] >> 8) < t) {
        words[k >> 5] |= 1u << (k & 31);
        any = true;
      }
    }
  }
  return any;
}

// The new device state st of element e after sample `sample`: with a persistent weight w_p the state
// lands there and the visible weight is redrawn, w = st + write_noise·normal(…, WRITE_NOISE, a = e,
// b = sample, draw 0) (w = st without write noise); else the state is w itself.
AT_HD void store_state(float* w, float* w_p, int64_t e, float st, const DeviceGlobals& g, uint64_t seed,
                       uint64_t offset, uint32_t sample) {
  if (!w_p) {
    w[e] = st;
    return;
  }
  w_p[e] = st;
  if (g.write_noise > 0.0f) {
    const float xi = normal_draw(seed, offset, S_WRITE_NOISE, static_cast<uint32_t>(e), sample, 0);
    w[e] = st + g.write_noise * xi;
  } else {
    w[e] = st;
  }
}

// One sample on one element with n pulses of sign `up` (pulsed / mean_count modes): pulses on
// w_dev = state + ref, then state = w_dev − ref; with a persistent weight the visible weight is
// redrawn (write noise). Step 4 of reference.py.
AT_HD void element_pulses(float* w, float* w_p, int64_t e, int n, bool up, const ElemParams& p,
                          const DeviceGlobals& g, uint64_t seed, uint64_t offset, uint32_t sample) {
  float* state = w_p ? w_p : w;
  float wd = state[e] + p.ref;
  wd = apply_pulses(wd, n, up, p, g, seed, offset, static_cast<uint32_t>(e), sample);
  store_state(w, w_p, e, wd - p.ref, g, seed, offset, sample);
}

// The end of an aggregated call for one touched element (moments m, v of w_dev): draw, clip, store
// the state and, with a persistent weight, the visible weight (write noise drawn once, b = 0).
AT_HD void element_aggregated(float* w, float* w_p, int64_t e, float m, float v, const ElemParams& p,
                              const DeviceGlobals& g, uint64_t seed, uint64_t offset) {
  store_state(w, w_p, e, aggregate_finish(m, v, p, g, seed, offset, static_cast<uint32_t>(e)) - p.ref, g, seed,
              offset, 0u);
}

// One sample on one element in the `expected` mode (step 5 of reference.py): en = E[n_ij] > 0.
AT_HD void element_expected(float* w, float* w_p, int64_t e, float en, bool up, const ElemParams& p,
                            const DeviceGlobals& g) {
  float* state = w_p ? w_p : w;
  const float wd = state[e] + p.ref;
  float su, sd;
  step_magnitudes(wd, p, g, su, sd);
  float nw = up ? wd + en * su : wd - en * sd;
  nw = clip_bounds(nw, p.bmin, p.bmax);
  if (g.kind != KIND_LINEAR && !(p.bmax - p.bmin > 0.0f)) nw = wd;  // exp/pow skip empty ranges
  const float st = nw - p.ref;
  state[e] = st;
  if (w_p) w[e] = st;
}

// Mean-count coincidences: n = rint((c_d / BL) · c_x) with c = clip(rint(BL·p), 0, BL) (float64).
AT_HD double mean_count(float p, int bl) {
  double c = round_half_even(static_cast<double>(bl) * static_cast<double>(p));
  c = c < 0.0 ? 0.0 : c;
  return c > bl ? static_cast<double>(bl) : c;
}

}  // namespace analogtrain
