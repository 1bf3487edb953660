// CUDA kernels of the tile ops. No torch headers here (compile time: environment.md §6); the torch
// glue (shapes, allocation, streams, op registration) is in cuda_ops.cpp.
//
// Same maths and the same random numbers as the CPU kernel (pulsed_update.h, device_step.h,
// philox.h); compiled with --fmad=false so float results round exactly as on the CPU.
//
// Launches go through AT_LAUNCH (cuda_compat.h), so that these sources also build for the CPU emulation of
// the kernels (cuda_emulation.cpp; tests/test_cuda_emulation.py holds it to the CPU kernel bit for bit).
//
// pulsed_update, three launches on the current stream:
//   1. k_scales : one thread per sample: (BL, A, B) from the per-sample abs-maxima (computed by ATen);
//   2. k_trains : one thread per (sample, entry) of x and of d: probability, sign and the bit-packed
//                 pulse train (nw uint32 words; slot k -> bit k%32 of word k/32);
//   3. k_update : one thread per weight element (i, j) (row-major, consecutive threads = consecutive
//                 columns, so w / params / x-train reads coalesce and the d-train word is a broadcast);
//                 the thread walks the samples IN ORDER, counts coincidences with __popc and applies
//                 the pulses one by one (noise drawn only for pulses that happen).
//
// chopped_update_snapshots in the aggregated mode (the CPU's chopped_carry_raw, same contract): k_scales
// and k_trains with per-sample call arguments (offset, lr, choppers, sample counter inside the call),
// then k_carry: one thread per element walks ALL samples of the batch, carrying its moments across the
// calls, and at each event of its slice (a transfer read) finishes itself if touched and writes its
// snapshot entry; k_slot_counts gives each call's exact pulse total from the trains.
#include <cstdint>

#include "cuda_compat.h"
#include "pulsed_update.h"

namespace analogtrain {
namespace cuda_impl {

#if defined(ANALOGTRAIN_CUDA_EMULATION)
using namespace cuda_emu;  // threadIdx, __popc, atomicAdd of the emulation
#endif

constexpr int kThreads = 256;

// Per-sample call arguments of a batch of calls (carry mode; null pointers: one call, u and b itself).
struct CallArgs {
  const UpdateArgs* us;  // (C,) the calls' arguments
  const int* scall;      // (S,) the call of each sample
  const int* sbc;        // (S,) the sample counter b inside its call
};

__global__ void k_scales(const float* __restrict__ xmax, const float* __restrict__ dmax, int B, UpdateArgs u,
                         SampleScales* __restrict__ sc, CallArgs ca) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= B) return;
  sc[b] = update_scales(ca.us ? ca.us[ca.scall[b]] : u, static_cast<double>(xmax[b]), static_cast<double>(dmax[b]));
}

// One thread per (sample b, entry a) of one side (x: n = I, stream X_TRAIN, scale B, draw 0 for
// sto_round; d: n = O, stream D_TRAIN, scale A, draw 1). With ca.us: sample b draws with its call's
// arguments and counter ca.sbc[b], and chop holds one row of n signs per call.
__global__ void k_trains(const float* __restrict__ v, int B, int n, const SampleScales* __restrict__ sc,
                         UpdateArgs u0, bool is_x, const float* __restrict__ chop, float* __restrict__ prob,
                         float* __restrict__ sgn, uint32_t* __restrict__ bits, int nw, CallArgs ca) {
  const int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= static_cast<int64_t>(B) * n) return;
  const int bs = static_cast<int>(q / n);  // storage index of the sample
  const int a = static_cast<int>(q % n);
  const UpdateArgs& u = ca.us ? ca.us[ca.scall[bs]] : u0;
  const uint32_t b = ca.us ? static_cast<uint32_t>(ca.sbc[bs]) : static_cast<uint32_t>(bs);
  if (chop && ca.us) chop += static_cast<int64_t>(ca.scall[bs]) * n;
  const SampleScales s = sc[bs];
  uint32_t* wds = bits ? bits + q * nw : nullptr;
  if (wds)
    for (int k = 0; k < nw; ++k) wds[k] = 0u;
  if (s.bl == 0) {
    prob[q] = 0.0f;
    sgn[q] = 0.0f;
    return;
  }
  const float val = v[q];
  float ur = 0.0f;
  if (u.res > 0 && u.sto_round && u.mode != MODE_EXPECTED)
    ur = uniform_draw(u.seed, u.offset, S_PROB_ROUND, a, b, is_x ? 0u : 1u);
  const float p = probability(val, is_x ? s.b : s.a, u, ur);
  prob[q] = p;
  float sg = sign_f(val);
  if (is_x) sg = sg * static_cast<float>(u.sign_lr);
  if (chop) sg = sg * chop[a];
  sgn[q] = sg;
  if (u.mode == MODE_PULSED) make_train(u.seed, u.offset, is_x ? S_X_TRAIN : S_D_TRAIN, a, b, s.bl, p, wds);
}

__global__ void k_update(float* __restrict__ w, float* __restrict__ w_p, const float* __restrict__ params,
                         DeviceGlobals g, int B, int O, int I, UpdateArgs u, const SampleScales* __restrict__ sc,
                         const float* __restrict__ px, const float* __restrict__ pd, const float* __restrict__ sx,
                         const float* __restrict__ sd, const uint32_t* __restrict__ xbits,
                         const uint32_t* __restrict__ dbits, int nw, float* __restrict__ pulses) {
  const int64_t plane = static_cast<int64_t>(O) * I;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < plane;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int i = static_cast<int>(e / I);
    const int j = static_cast<int>(e % I);
    bool loaded = false;
    ElemParams p;
    float count = 0.0f;
    bool touched = false;  // aggregated mode: moments (am, av) of w_dev through the samples
    float am = 0.0f, av = 0.0f;
    for (int b = 0; b < B; ++b) {
      const int bl = sc[b].bl;
      if (bl == 0) continue;
      const int64_t qx = static_cast<int64_t>(b) * I + j;
      const int64_t qd = static_cast<int64_t>(b) * O + i;
      const float sgn = sd[qd] * sx[qx];
      if (sgn == 0.0f) continue;
      if (u.mode == MODE_EXPECTED) {
        const float pdc = pd[qd] < 1.0f ? pd[qd] : 1.0f;
        const float pxc = px[qx] < 1.0f ? px[qx] : 1.0f;
        const float en = (pdc * pxc) * static_cast<float>(bl);
        if (!(en > 0.0f)) continue;
        if (!loaded) {
          p = load_params(params, plane, e);
          loaded = true;
        }
        element_expected(w, w_p, e, en, sgn < 0.0f, p, g);
        count += en;
        continue;
      }
      int n;
      if (u.mode == MODE_PULSED) {
        n = 0;
        for (int k = 0; k < nw; ++k) n += __popc(xbits[qx * nw + k] & dbits[qd * nw + k]);
      } else {
        const double cd = mean_count(pd[qd], bl);
        const double cx = mean_count(px[qx], bl);
        n = static_cast<int>(rint((cd / bl) * cx));
      }
      if (n <= 0) continue;
      if (!loaded) {
        p = load_params(params, plane, e);
        loaded = true;
      }
      if (u.aggregate) {
        if (!touched) {
          am = (w_p ? w_p : w)[e] + p.ref;
          touched = true;
        }
        aggregate_sample_rt(am, av, n, sgn < 0.0f, p, g);
      } else {
        element_pulses(w, w_p, e, n, sgn < 0.0f, p, g, u.seed, u.offset, static_cast<uint32_t>(b));
      }
      count += static_cast<float>(n);
    }
    if (touched) element_aggregated(w, w_p, e, am, av, p, g, u.seed, u.offset);
    pulses[e] += count;
  }
}

// The finish events of the carry mode (CarryPlan of the CPU kernel): event q happens after the first
// pos[q] samples, finishes the touched elements of slice slice[q] with the draws of counter off[q] and
// copies the slice's visible weight to snaps[call[q]·L ..].
struct CarryEvents {
  int n;
  const int* pos;
  const int64_t* slice;
  const int64_t* call;
  const uint64_t* off;
  bool columns;
  int64_t L;
  float* snaps;
};

// Carry mode (aggregated, KIND_LINEAR): one thread per element (i, j) through all S samples of the
// batch's calls in order, its moments carried across the calls; at an event of its slice it finishes
// (if touched: element_aggregated with the event's counter, then restarts from the stored value) and
// writes its snapshot entry; after the last sample the final finish uses ulast's counter.
__global__ void k_carry(float* __restrict__ w, float* __restrict__ w_p, const float* __restrict__ params,
                        DeviceGlobals g, int S, int O, int I, UpdateArgs ulast, const SampleScales* __restrict__ sc,
                        const float* __restrict__ sx, const float* __restrict__ sd, const uint32_t* __restrict__ xbits,
                        const uint32_t* __restrict__ dbits, int nw, CarryEvents ev) {
  const int64_t plane = static_cast<int64_t>(O) * I;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < plane;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int i = static_cast<int>(e / I);
    const int j = static_cast<int>(e % I);
    const int64_t mine = ev.columns ? j : i;  // this element's slice
    const int64_t pos_in_slice = ev.columns ? i : j;
    const ElemParams p = load_params(params, plane, e);
    bool touched = false;
    float am = 0.0f, av = 0.0f;
    int q = 0;
    for (int b = 0; b <= S; ++b) {
      for (; q < ev.n && ev.pos[q] <= b; ++q) {
        if (ev.slice[q] != mine) continue;
        if (touched) {
          element_aggregated(w, w_p, e, am, av, p, g, ulast.seed, ev.off[q]);
          touched = false;  // the next pulse restarts from the stored value
        }
        ev.snaps[ev.call[q] * ev.L + pos_in_slice] = w[e];
      }
      if (b == S || sc[b].bl == 0) continue;
      const int64_t qx = static_cast<int64_t>(b) * I + j;
      const int64_t qd = static_cast<int64_t>(b) * O + i;
      const float sgn = sd[qd] * sx[qx];
      if (sgn == 0.0f) continue;
      int n = 0;
      for (int k = 0; k < nw; ++k) n += __popc(xbits[qx * nw + k] & dbits[qd * nw + k]);
      if (n <= 0) continue;
      if (!touched) {
        am = (w_p ? w_p : w)[e] + p.ref;
        av = 0.0f;
        touched = true;
      }
      aggregate_sample_rt(am, av, n, sgn < 0.0f, p, g);
    }
    if (touched) element_aggregated(w, w_p, e, am, av, p, g, ulast.seed, ulast.offset);
  }
}

// One thread per (sample, slot): (#x entries with a non-zero sign firing in the slot) · (#d entries
// likewise), added to the sample's call total: Σ_ij popcount(x_j & d_i) over the taking-part entries.
__global__ void k_slot_counts(const float* __restrict__ sx, const float* __restrict__ sd,
                              const uint32_t* __restrict__ xbits, const uint32_t* __restrict__ dbits, int S, int O,
                              int I, int nw, const int* __restrict__ scall, unsigned long long* __restrict__ ctot) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= static_cast<int64_t>(S) * nw * 32) return;
  const int b = static_cast<int>(t / (nw * 32));
  const int slot = static_cast<int>(t % (nw * 32));
  const int k = slot / 32;
  const uint32_t bit = 1u << (slot % 32);
  unsigned long long cx = 0, cd = 0;
  for (int j = 0; j < I; ++j) {
    const int64_t q = static_cast<int64_t>(b) * I + j;
    if (sx[q] != 0.0f && (xbits[q * nw + k] & bit)) ++cx;
  }
  if (cx == 0) return;
  for (int i = 0; i < O; ++i) {
    const int64_t q = static_cast<int64_t>(b) * O + i;
    if (sd[q] != 0.0f && (dbits[q * nw + k] & bit)) ++cd;
  }
  if (cd) atomicAdd(ctot + scall[b], cx * cd);
}

// Buffer arithmetic of one slice (same float order as the CPU kernel / reference_transfer.py).
__global__ void k_buffer(float* __restrict__ h, int64_t h_stride, const float* __restrict__ v,
                         const float* __restrict__ chop, int64_t L, float lr_scale, float thr, float bl,
                         float momentum, float one_minus_momentum, bool forget, bool no_buffer, float cap,
                         float* __restrict__ n_out) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= L) return;
  const float sig = chop ? chop[r] * v[r] : v[r];
  n_out[r] = buffer_element(h + r * h_stride, sig, lr_scale, thr, bl, momentum, one_minus_momentum, forget,
                            no_buffer, cap);
}

}  // namespace cuda_impl

// --- host launchers (called from cuda_ops.cpp) -------------------------------------------------------

void cuda_pulsed_update(float* w, float* w_p, const float* params, const DeviceGlobals& g, const float* x,
                        const float* d, const float* xmax, const float* dmax, int B, int O, int I,
                        const UpdateArgs& u, const float* cin, const float* cout, float* pulses, int nw,
                        uint32_t* xbits, uint32_t* dbits, float* px, float* pd, float* sx, float* sd,
                        SampleScales* sc, cudaStream_t stream) {
  using namespace cuda_impl;
  if (B == 0 || O == 0 || I == 0) return;
  const CallArgs one{nullptr, nullptr, nullptr};
  AT_LAUNCH(k_scales, (B + kThreads - 1) / kThreads, kThreads, stream, xmax, dmax, B, u, sc, one);
  const int64_t nx = static_cast<int64_t>(B) * I, nd = static_cast<int64_t>(B) * O;
  AT_LAUNCH(k_trains, static_cast<unsigned>((nx + kThreads - 1) / kThreads), kThreads, stream,
      x, B, I, sc, u, true, cin, px, sx, u.mode == MODE_PULSED ? xbits : nullptr, nw, one);
  AT_LAUNCH(k_trains, static_cast<unsigned>((nd + kThreads - 1) / kThreads), kThreads, stream,
      d, B, O, sc, u, false, cout, pd, sd, u.mode == MODE_PULSED ? dbits : nullptr, nw, one);
  const int64_t ne = static_cast<int64_t>(O) * I;
  int64_t blocks = (ne + kThreads - 1) / kThreads;
  if (blocks > 65535LL * 32) blocks = 65535LL * 32;  // grid-stride loop covers the rest
  AT_LAUNCH(k_update, static_cast<unsigned>(blocks), kThreads, stream,
      w, w_p, params, g, B, O, I, u, sc, px, pd, sx, sd, xbits, dbits, nw, pulses);
}

// Carry mode of chopped_update_snapshots (aggregated): S samples (x (S, I), d (S, O), already offset to the
// batch's first sample), per-sample call arguments (us: C device UpdateArgs, scall / sbc: (S,) ints),
// choppers (C, I) / (C, O) or null, events ev (device arrays); ctot: (C,) zeroed uint64 call totals.
void cuda_chopped_carry(float* w, float* w_p, const float* params, const DeviceGlobals& g, const float* x,
                        const float* d, const float* xmax, const float* dmax, int S, int O, int I,
                        const UpdateArgs& ulast, const UpdateArgs* us, const int* scall, const int* sbc,
                        const float* cin, const float* cout, int nw, uint32_t* xbits, uint32_t* dbits, float* px,
                        float* pd, float* sx, float* sd, SampleScales* sc, int nev, const int* ev_pos,
                        const int64_t* ev_slice, const int64_t* ev_call, const uint64_t* ev_off, bool columns,
                        int64_t L, float* snaps, unsigned long long* ctot, cudaStream_t stream) {
  using namespace cuda_impl;
  if (S == 0 || O == 0 || I == 0) return;
  const CallArgs ca{us, scall, sbc};
  AT_LAUNCH(k_scales, (S + kThreads - 1) / kThreads, kThreads, stream, xmax, dmax, S, ulast, sc, ca);
  const int64_t nx = static_cast<int64_t>(S) * I, nd = static_cast<int64_t>(S) * O;
  AT_LAUNCH(k_trains, static_cast<unsigned>((nx + kThreads - 1) / kThreads), kThreads, stream,
      x, S, I, sc, ulast, true, cin, px, sx, xbits, nw, ca);
  AT_LAUNCH(k_trains, static_cast<unsigned>((nd + kThreads - 1) / kThreads), kThreads, stream,
      d, S, O, sc, ulast, false, cout, pd, sd, dbits, nw, ca);
  const int64_t nsl = static_cast<int64_t>(S) * nw * 32;
  AT_LAUNCH(k_slot_counts, static_cast<unsigned>((nsl + kThreads - 1) / kThreads), kThreads, stream,
      sx, sd, xbits, dbits, S, O, I, nw, scall, ctot);
  const CarryEvents ev{nev, ev_pos, ev_slice, ev_call, ev_off, columns, L, snaps};
  const int64_t ne = static_cast<int64_t>(O) * I;
  int64_t blocks = (ne + kThreads - 1) / kThreads;
  if (blocks > 65535LL * 32) blocks = 65535LL * 32;
  AT_LAUNCH(k_carry, static_cast<unsigned>(blocks), kThreads, stream,
      w, w_p, params, g, S, O, I, ulast, sc, sx, sd, xbits, dbits, nw, ev);
}

void cuda_buffer_step(float* h, int64_t h_stride, const float* v, const float* chop, int64_t L, float lr_scale,
                      float thr, float bl, float momentum, float one_minus_momentum, bool forget, bool no_buffer,
                      float cap, float* n_out, cudaStream_t stream) {
  using namespace cuda_impl;
  if (L == 0) return;
  AT_LAUNCH(k_buffer, static_cast<unsigned>((L + kThreads - 1) / kThreads), kThreads, stream,
      h, h_stride, v, chop, L, lr_scale, thr, bl, momentum, one_minus_momentum, forget, no_buffer, cap, n_out);
}

}  // namespace analogtrain
