// CUDA kernels of the tile ops. No torch headers here (compile time: environment.md §6); the torch
// glue (shapes, allocation, streams, op registration) is in cuda_ops.cpp.
//
// Same maths and the same random numbers as the CPU kernel (pulsed_update.h, device_step.h,
// philox.h); compiled with --fmad=false so float results round exactly as on the CPU.
//
// pulsed_update, three launches on the current stream:
//   1. k_scales : one thread per sample: (BL, A, B) from the per-sample abs-maxima (computed by ATen);
//   2. k_trains : one thread per (sample, entry) of x and of d: probability, sign and the bit-packed
//                 pulse train (nw uint32 words; slot k -> bit k%32 of word k/32);
//   3. k_update : one thread per weight element (i, j) (row-major, consecutive threads = consecutive
//                 columns, so w / params / x-train reads coalesce and the d-train word is a broadcast);
//                 the thread walks the samples IN ORDER, counts coincidences with __popc and applies
//                 the pulses one by one (noise drawn only for pulses that happen).
#include <cuda_runtime.h>

#include <cstdint>

#include "pulsed_update.h"

namespace analogtrain {
namespace cuda_impl {

constexpr int kThreads = 256;

__global__ void k_scales(const float* __restrict__ xmax, const float* __restrict__ dmax, int B, UpdateArgs u,
                         SampleScales* __restrict__ sc) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= B) return;
  sc[b] = update_scales(u, static_cast<double>(xmax[b]), static_cast<double>(dmax[b]));
}

// One thread per (sample b, entry a) of one side (x: n = I, stream X_TRAIN, scale B, draw 0 for
// sto_round; d: n = O, stream D_TRAIN, scale A, draw 1).
__global__ void k_trains(const float* __restrict__ v, int B, int n, const SampleScales* __restrict__ sc,
                         UpdateArgs u, bool is_x, const float* __restrict__ chop, float* __restrict__ prob,
                         float* __restrict__ sgn, uint32_t* __restrict__ bits, int nw) {
  const int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= static_cast<int64_t>(B) * n) return;
  const int b = static_cast<int>(q / n);
  const int a = static_cast<int>(q % n);
  const SampleScales s = sc[b];
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
  k_scales<<<(B + kThreads - 1) / kThreads, kThreads, 0, stream>>>(xmax, dmax, B, u, sc);
  const int64_t nx = static_cast<int64_t>(B) * I, nd = static_cast<int64_t>(B) * O;
  k_trains<<<static_cast<unsigned>((nx + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      x, B, I, sc, u, true, cin, px, sx, u.mode == MODE_PULSED ? xbits : nullptr, nw);
  k_trains<<<static_cast<unsigned>((nd + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      d, B, O, sc, u, false, cout, pd, sd, u.mode == MODE_PULSED ? dbits : nullptr, nw);
  const int64_t ne = static_cast<int64_t>(O) * I;
  int64_t blocks = (ne + kThreads - 1) / kThreads;
  if (blocks > 65535LL * 32) blocks = 65535LL * 32;  // grid-stride loop covers the rest
  k_update<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(w, w_p, params, g, B, O, I, u, sc, px, pd, sx,
                                                                   sd, xbits, dbits, nw, pulses);
}

void cuda_buffer_step(float* h, int64_t h_stride, const float* v, const float* chop, int64_t L, float lr_scale,
                      float thr, float bl, float momentum, float one_minus_momentum, bool forget, bool no_buffer,
                      float cap, float* n_out, cudaStream_t stream) {
  using namespace cuda_impl;
  if (L == 0) return;
  k_buffer<<<static_cast<unsigned>((L + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      h, h_stride, v, chop, L, lr_scale, thr, bl, momentum, one_minus_momentum, forget, no_buffer, cap, n_out);
}

}  // namespace analogtrain
