// CPU kernels of the tile ops (OpenMP) and the torch op schema (namespace `analogtrain`).
//
//   analogtrain::pulsed_update      the per-sample pulsed outer-product update (reference.py)
//   analogtrain::buffered_transfer  TT-family transfer of one slice: buffer accumulate, threshold,
//                                   forget/momentum, then the C write as a one-sample pulsed update
//                                   (reference_transfer.py)
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
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

#include "pulsed_update.h"

namespace analogtrain {
namespace {

struct Trains {
  int B = 0, I = 0, O = 0, nw = 0;
  std::vector<SampleScales> sc;
  std::vector<uint32_t> xbits, dbits;  // (B, I, nw), (B, O, nw)
  std::vector<float> px, pd;           // probabilities (B, I), (B, O)
  std::vector<float> sx, sd;           // signs incl. sign(lr) and choppers
  std::vector<int32_t> act;            // (B, I) active columns of each sample, first nact[b] valid
  std::vector<int32_t> nact;
  std::vector<uint8_t> dact;           // (B, O) row has a non-empty train / count
};

float entry_round_uniform(const UpdateArgs& u, uint32_t a, uint32_t b, uint32_t draw) {
  if (!(u.res > 0 && u.sto_round && u.mode != MODE_EXPECTED)) return 0.0f;
  return uniform_draw(u.seed, u.offset, S_PROB_ROUND, a, b, draw);
}

// Phase 1 for one sample b.
void build_sample(Trains& T, int b, const float* x, const float* d, const UpdateArgs& u, const float* cin,
                  const float* cout) {
  const int I = T.I, O = T.O, nw = T.nw;
  const float* xb = x + static_cast<int64_t>(b) * I;
  const float* db = d + static_cast<int64_t>(b) * O;
  const SampleScales s = T.sc[b];
  int32_t* act = T.act.data() + static_cast<int64_t>(b) * I;
  uint8_t* dact = T.dact.data() + static_cast<int64_t>(b) * O;
  int na = 0;
  if (s.bl == 0) {
    T.nact[b] = 0;
    return;
  }
  const float slr = static_cast<float>(u.sign_lr);
  for (int j = 0; j < I; ++j) {
    const int64_t q = static_cast<int64_t>(b) * I + j;
    const float p = probability(xb[j], s.b, u, entry_round_uniform(u, j, b, 0));  // x uses B
    T.px[q] = p;
    float sg = sign_f(xb[j]) * slr;
    if (cin) sg = sg * cin[j];
    T.sx[q] = sg;
    bool on;
    if (u.mode == MODE_PULSED) {
      uint32_t* wds = T.xbits.data() + q * nw;
      on = make_train(u.seed, u.offset, S_X_TRAIN, j, b, s.bl, p, wds);
    } else if (u.mode == MODE_MEAN_COUNT) {
      on = mean_count(p, s.bl) > 0.0;
    } else {
      on = p > 0.0f;
    }
    if (on && sg != 0.0f) act[na++] = j;
  }
  T.nact[b] = na;
  for (int i = 0; i < O; ++i) {
    const int64_t q = static_cast<int64_t>(b) * O + i;
    const float p = probability(db[i], s.a, u, entry_round_uniform(u, i, b, 1));  // d uses A
    T.pd[q] = p;
    float sg = sign_f(db[i]);
    if (cout) sg = sg * cout[i];
    T.sd[q] = sg;
    bool on;
    if (u.mode == MODE_PULSED) {
      uint32_t* wds = T.dbits.data() + q * nw;
      on = make_train(u.seed, u.offset, S_D_TRAIN, i, b, s.bl, p, wds);
    } else if (u.mode == MODE_MEAN_COUNT) {
      on = mean_count(p, s.bl) > 0.0;
    } else {
      on = p > 0.0f;
    }
    dact[i] = (on && sg != 0.0f) ? 1 : 0;
  }
}

inline int popcount32(uint32_t v) { return __builtin_popcount(v); }

// Phase 2 for one row i (all samples in order).
void run_row(const Trains& T, int i, float* w, float* w_p, const float* params, int64_t plane, const DeviceGlobals& g,
             const UpdateArgs& u, float* pulses) {
  const int I = T.I, O = T.O, nw = T.nw;
  float* prow = pulses + static_cast<int64_t>(i) * I;
  for (int b = 0; b < T.B; ++b) {
    const SampleScales s = T.sc[b];
    if (s.bl == 0) continue;
    const int64_t qd = static_cast<int64_t>(b) * O + i;
    if (!T.dact[qd]) continue;
    const float sdi = T.sd[qd];
    const int32_t* act = T.act.data() + static_cast<int64_t>(b) * I;
    const int na = T.nact[b];
    const float* sxb = T.sx.data() + static_cast<int64_t>(b) * I;
    if (u.mode == MODE_PULSED) {
      const uint32_t* dw = T.dbits.data() + qd * nw;
      const uint32_t* xw = T.xbits.data() + static_cast<int64_t>(b) * I * nw;
      for (int t = 0; t < na; ++t) {
        const int j = act[t];
        int n;
        if (nw == 1) {
          n = popcount32(xw[j] & dw[0]);
        } else {
          n = 0;
          for (int k = 0; k < nw; ++k) n += popcount32(xw[static_cast<int64_t>(j) * nw + k] & dw[k]);
        }
        if (n == 0) continue;
        const float sgn = sdi * sxb[j];
        if (sgn == 0.0f) continue;
        const int64_t e = static_cast<int64_t>(i) * I + j;
        const ElemParams p = load_params(params, plane, e);
        element_pulses(w, w_p, e, n, sgn < 0.0f, p, g, u.seed, u.offset, static_cast<uint32_t>(b));
        prow[j] += static_cast<float>(n);
      }
    } else if (u.mode == MODE_MEAN_COUNT) {
      const double cd = mean_count(T.pd[qd], s.bl);
      const float* pxb = T.px.data() + static_cast<int64_t>(b) * I;
      for (int t = 0; t < na; ++t) {
        const int j = act[t];
        const double nn = round_half_even((cd / s.bl) * mean_count(pxb[j], s.bl));
        const int n = static_cast<int>(nn);
        if (n <= 0) continue;
        const float sgn = sdi * sxb[j];
        if (sgn == 0.0f) continue;
        const int64_t e = static_cast<int64_t>(i) * I + j;
        const ElemParams p = load_params(params, plane, e);
        element_pulses(w, w_p, e, n, sgn < 0.0f, p, g, u.seed, u.offset, static_cast<uint32_t>(b));
        prow[j] += static_cast<float>(n);
      }
    } else {  // MODE_EXPECTED
      const float pdc = std::min(T.pd[qd], 1.0f);
      const float* pxb = T.px.data() + static_cast<int64_t>(b) * I;
      const float blf = static_cast<float>(s.bl);
      for (int t = 0; t < na; ++t) {
        const int j = act[t];
        const float en = (pdc * std::min(pxb[j], 1.0f)) * blf;  // BL·min(p_d,1)·min(p_x,1)
        const float sgn = sdi * sxb[j];
        if (!(en > 0.0f) || sgn == 0.0f) continue;
        const int64_t e = static_cast<int64_t>(i) * I + j;
        const ElemParams p = load_params(params, plane, e);
        element_expected(w, w_p, e, en, sgn < 0.0f, p, g);
        prow[j] += en;
      }
    }
  }
}

// The whole update on raw CPU buffers. x (B, I), d (B, O) row-major; pulses (O, I) accumulated.
void pulsed_update_raw(float* w, float* w_p, const float* params, const DeviceGlobals& g, const float* x,
                       const float* d, int B, int O, int I, const UpdateArgs& u, const float* cin, const float* cout,
                       float* pulses, int nthreads) {
  if (u.lr_abs == 0.0 || B == 0 || O == 0 || I == 0) return;
  Trains T;
  T.B = B;
  T.I = I;
  T.O = O;
  T.sc.resize(B);
  int maxbl = 0;
  for (int b = 0; b < B; ++b) {
    float xm = 0.0f, dm = 0.0f;
    const float* xb = x + static_cast<int64_t>(b) * I;
    const float* db = d + static_cast<int64_t>(b) * O;
    for (int j = 0; j < I; ++j) xm = std::max(xm, std::fabs(xb[j]));
    for (int i = 0; i < O; ++i) dm = std::max(dm, std::fabs(db[i]));
    T.sc[b] = update_scales(u, static_cast<double>(xm), static_cast<double>(dm));
    maxbl = std::max(maxbl, T.sc[b].bl);
  }
  if (maxbl == 0) return;
  T.nw = u.mode == MODE_PULSED ? (maxbl + 31) / 32 : 0;
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
  const int64_t plane = static_cast<int64_t>(O) * I;

  const int nt1 = std::max(1, std::min(nthreads, B));
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt1)
  for (int b = 0; b < B; ++b) build_sample(T, b, x, d, u, cin, cout);

  const int nt2 = std::max(1, std::min(nthreads, O));
#pragma omp parallel for schedule(dynamic, 4) num_threads(nt2)
  for (int i = 0; i < O; ++i) run_row(T, i, w, w_p, params, plane, g, u, pulses);
}

UpdateArgs make_args(double lr, double dw, int64_t desired_bl, bool fixed_bl, bool ublm, bool um, double um_grad_scale,
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
  u.mode = static_cast<int>(mode);
  u.seed = static_cast<uint64_t>(seed);
  u.offset = static_cast<uint64_t>(offset);
  return u;
}

void check_f32_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "analogtrain::pulsed_update: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat, "analogtrain: ", name, " must be float32");
  TORCH_CHECK(t.is_contiguous(), "analogtrain: ", name, " must be contiguous");
}

DeviceGlobals globals_of(const at::Tensor& gparams) {
  at::Tensor g = gparams.to(at::kCPU, at::kDouble).contiguous();
  TORCH_CHECK(g.numel() >= NG_SCALARS, "analogtrain: gparams must hold ", NG_SCALARS, " scalars");
  return make_globals(g.data_ptr<double>());
}

at::Tensor pulsed_update_cpu(at::Tensor w, const std::optional<at::Tensor>& w_p, const at::Tensor& params,
                             const at::Tensor& gparams, const at::Tensor& x, const at::Tensor& d, double lr, double dw,
                             int64_t desired_bl, bool fixed_bl, bool ublm, bool um, double um_grad_scale, double res,
                             bool sto_round, int64_t mode, int64_t seed, int64_t offset,
                             const std::optional<at::Tensor>& chop_in, const std::optional<at::Tensor>& chop_out) {
  check_f32_cpu(w, "w");
  check_f32_cpu(params, "params");
  check_f32_cpu(x, "x");
  check_f32_cpu(d, "d");
  TORCH_CHECK(w.dim() == 2 && x.dim() == 2 && d.dim() == 2, "analogtrain::pulsed_update: w, x, d must be 2-D");
  const int O = static_cast<int>(w.size(0)), I = static_cast<int>(w.size(1)), B = static_cast<int>(x.size(0));
  TORCH_CHECK(x.size(1) == I && d.size(1) == O && d.size(0) == B, "analogtrain::pulsed_update: shape mismatch");
  TORCH_CHECK(params.dim() == 3 && params.size(0) >= NP_PLANES && params.size(1) == O && params.size(2) == I,
              "analogtrain::pulsed_update: params must be (NP, O, I)");
  TORCH_CHECK(mode >= 0 && mode <= 2, "analogtrain::pulsed_update: unknown mode ", mode);
  TORCH_CHECK(dw > 0, "analogtrain::pulsed_update: dw must be > 0");
  float* wp = nullptr;
  if (w_p.has_value() && w_p->defined() && w_p->numel() > 0) {
    check_f32_cpu(*w_p, "w_p");
    wp = w_p->data_ptr<float>();
  }
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
    const float inc = sig * lr_scale;
    float hv = no_buffer ? inc : h[r * h_stride] + inc;
    float n = std::trunc(hv / thr);
    n = n < -bl ? -bl : (n > bl ? bl : n);
    if (forget) {
      if (n != 0.0f) hv = momentum * hv;
    } else {
      hv = hv - (one_minus_momentum * n) * thr;
    }
    if (cap > 0.0f) hv = hv < -cap ? -cap : (hv > cap ? cap : hv);
    h[r * h_stride] = hv;
    n_out[r] = n;
    any = any || n != 0.0f;
  }
  return any;
}

std::tuple<at::Tensor, at::Tensor> buffered_transfer_cpu(at::Tensor h, const at::Tensor& v, int64_t k, const std::optional<at::Tensor>& chop,
                                 double lr_scale, double thr, int64_t bl_t, double momentum, bool forget,
                                 bool no_buffer, double cap, bool columns, bool write, at::Tensor w,
                                 const std::optional<at::Tensor>& w_p, const at::Tensor& params,
                                 const at::Tensor& gparams, double lr, double dw, int64_t desired_bl, bool fixed_bl,
                                 bool ublm, bool um, double um_grad_scale, double res, bool sto_round, int64_t mode,
                                 int64_t seed, int64_t offset) {
  check_f32_cpu(h, "h");
  check_f32_cpu(v, "v");
  check_f32_cpu(w, "w");
  check_f32_cpu(params, "params");
  const int64_t O = h.size(0), I = h.size(1);
  TORCH_CHECK(w.size(0) == O && w.size(1) == I, "analogtrain::buffered_transfer: H and w shapes differ");
  const int64_t L = columns ? O : I;
  const int64_t S = columns ? I : O;
  TORCH_CHECK(v.numel() == L, "analogtrain::buffered_transfer: v must have ", L, " entries");
  TORCH_CHECK(k >= 0 && k < S, "analogtrain::buffered_transfer: slice index out of range");
  const float* cp = nullptr;
  if (chop.has_value() && chop->defined()) {
    check_f32_cpu(*chop, "chop");
    TORCH_CHECK(chop->numel() == L, "analogtrain::buffered_transfer: chop must have ", L, " entries");
    cp = chop->data_ptr<float>();
  }
  at::Tensor n = at::empty({L}, v.options());
  at::Tensor slice_pulses = at::zeros({L}, v.options());
  float* hp = h.data_ptr<float>() + (columns ? k : k * I);
  const int64_t hs = columns ? I : 1;
  const bool any = buffer_step_raw(hp, hs, v.data_ptr<float>(), cp, L, static_cast<float>(lr_scale),
                                   static_cast<float>(thr), static_cast<float>(bl_t), static_cast<float>(momentum),
                                   static_cast<float>(1.0 - momentum), forget, no_buffer,
                                   static_cast<float>(cap * static_cast<double>(bl_t)), n.data_ptr<float>());
  if (!(write && any)) return std::make_tuple(n, slice_pulses);
  // the C write: one sample, x = e_k and d = −n (columns) or x = −n and d = e_k (rows)
  std::vector<float> onehot(static_cast<size_t>(S), 0.0f), negn(static_cast<size_t>(L));
  onehot[static_cast<size_t>(k)] = 1.0f;
  const float* np_ = n.data_ptr<float>();
  for (int64_t r = 0; r < L; ++r) negn[static_cast<size_t>(r)] = -np_[r];
  const float* xs = columns ? onehot.data() : negn.data();
  const float* ds = columns ? negn.data() : onehot.data();
  float* wp = nullptr;
  if (w_p.has_value() && w_p->defined() && w_p->numel() > 0) {
    check_f32_cpu(*w_p, "w_p");
    wp = w_p->data_ptr<float>();
  }
  // pulse counts land only on slice k (x or d is one-hot): a zeroed per-thread workspace, of which
  // only the slice is read back and re-zeroed (no O·I memset per transfer)
  thread_local std::vector<float> ws;
  if (ws.size() < static_cast<size_t>(O * I)) ws.assign(static_cast<size_t>(O * I), 0.0f);
  const UpdateArgs u = make_args(lr, dw, desired_bl, fixed_bl, ublm, um, um_grad_scale, res, sto_round, mode, seed,
                                 offset);
  pulsed_update_raw(w.data_ptr<float>(), wp, params.data_ptr<float>(), globals_of(gparams), xs, ds, 1,
                    static_cast<int>(O), static_cast<int>(I), u, nullptr, nullptr, ws.data(), 1);
  float* sp = slice_pulses.data_ptr<float>();
  for (int64_t r = 0; r < L; ++r) {
    float& cell = ws[static_cast<size_t>(columns ? r * I + k : k * I + r)];
    sp[r] = cell;
    cell = 0.0f;
  }
  return std::make_tuple(n, slice_pulses);
}

// Test hooks: the RNG and the device step exactly as the kernels use them.
at::Tensor philox_uniform_cpu(int64_t seed, int64_t offset, int64_t stream, const at::Tensor& a, int64_t b,
                              int64_t draw) {
  at::Tensor ac = a.to(at::kLong).contiguous();
  at::Tensor out = at::empty({ac.numel()}, at::kFloat);
  const int64_t* ap = ac.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  for (int64_t q = 0; q < ac.numel(); ++q)
    op[q] = uniform_draw(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), static_cast<uint32_t>(stream),
                         static_cast<uint32_t>(ap[q]), static_cast<uint32_t>(b), static_cast<uint32_t>(draw));
  return out;
}

at::Tensor philox_normal_cpu(int64_t seed, int64_t offset, int64_t stream, const at::Tensor& a, int64_t b,
                             int64_t draw) {
  at::Tensor ac = a.to(at::kLong).contiguous();
  at::Tensor out = at::empty({ac.numel()}, at::kFloat);
  const int64_t* ap = ac.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  for (int64_t q = 0; q < ac.numel(); ++q)
    op[q] = normal_draw(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), static_cast<uint32_t>(stream),
                        static_cast<uint32_t>(ap[q]), static_cast<uint32_t>(b), static_cast<uint32_t>(draw));
  return out;
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

}  // namespace
}  // namespace analogtrain

TORCH_LIBRARY(analogtrain, m) {
  m.def(
      "pulsed_update(Tensor(a!) w, Tensor(b!)? w_p, Tensor params, Tensor gparams, Tensor x, Tensor d, float lr, "
      "float dw, int desired_bl, bool fixed_bl, bool ublm, bool um, float um_grad_scale, float res, bool sto_round, "
      "int mode, int seed, int offset, Tensor? chop_in, Tensor? chop_out) -> Tensor");
  m.def(
      "buffered_transfer(Tensor(a!) h, Tensor v, int k, Tensor? chop, float lr_scale, float thr, int bl_t, "
      "float momentum, bool forget, bool no_buffer, float cap, bool columns, bool write, Tensor(b!) w, "
      "Tensor(c!)? w_p, Tensor params, Tensor gparams, float lr, float dw, int desired_bl, bool fixed_bl, bool ublm, "
      "bool um, float um_grad_scale, float res, bool sto_round, int mode, int seed, int offset) -> (Tensor, Tensor)");
  m.def("philox_uniform(int seed, int offset, int stream, Tensor a, int b, int draw) -> Tensor");
  m.def("philox_normal(int seed, int offset, int stream, Tensor a, int b, int draw) -> Tensor");
  m.def("device_step(Tensor w_dev, Tensor up, Tensor params, Tensor gparams, Tensor xi) -> Tensor");
}

TORCH_LIBRARY_IMPL(analogtrain, CPU, m) {
  m.impl("pulsed_update", &analogtrain::pulsed_update_cpu);
  m.impl("buffered_transfer", &analogtrain::buffered_transfer_cpu);
  m.impl("philox_uniform", &analogtrain::philox_uniform_cpu);
  m.impl("philox_normal", &analogtrain::philox_normal_cpu);
  m.impl("device_step", &analogtrain::device_step_cpu);
}
