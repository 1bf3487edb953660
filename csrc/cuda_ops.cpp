// Torch glue of the CUDA kernels (cuda_kernels.cu): shape checks, scratch allocation on the tensors'
// device, the current stream, and the CUDA implementations of the `analogtrain` ops whose schemas
// cpu_ops.cpp defines. Compiled by the host compiler (keeps torch headers out of the .cu file).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

#include "cuda_compat.h"
#include "op_schemas.h"
#include "pulsed_update.h"

#if defined(ANALOGTRAIN_CUDA_EMULATION)
// CPU emulation (cuda_emulation.cpp): CPU tensors stand in for CUDA ones; no device guard, no stream,
// and a launch has already run when it returns
#define AT_DEVICE_TENSOR(t) (t).is_cpu()
#define AT_DEVICE_GUARD(dev) (void)(dev)
#define AT_CURRENT_STREAM(dev) static_cast<cudaStream_t>(nullptr)
#define AT_LAUNCH_CHECK() (void)0
#else
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define AT_DEVICE_TENSOR(t) (t).is_cuda()
#define AT_DEVICE_GUARD(dev) c10::cuda::CUDAGuard device_guard_(dev)
#define AT_CURRENT_STREAM(dev) c10::cuda::getCurrentCUDAStream((dev).index()).stream()
#define AT_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()
#endif

namespace analogtrain {

void cuda_pulsed_update(float* w, float* w_p, const float* params, const DeviceGlobals& g, const float* x,
                        const float* d, const float* xmax, const float* dmax, int B, int O, int I,
                        const UpdateArgs& u, const float* cin, const float* cout, float* pulses, int nw,
                        uint32_t* xbits, uint32_t* dbits, float* px, float* pd, float* sx, float* sd,
                        SampleScales* sc, cudaStream_t stream);

void cuda_buffer_step(float* h, int64_t h_stride, const float* v, const float* chop, int64_t L, float lr_scale,
                      float thr, float bl, float momentum, float one_minus_momentum, bool forget, bool no_buffer,
                      float cap, float* n_out, cudaStream_t stream);

void cuda_chopped_carry(float* w, float* w_p, const float* params, const DeviceGlobals& g, const float* x,
                        const float* d, const float* xmax, const float* dmax, int S, int O, int I,
                        const UpdateArgs& ulast, const UpdateArgs* us, const int* scall, const int* sbc,
                        const float* cin, const float* cout, int nw, uint32_t* xbits, uint32_t* dbits, float* px,
                        float* pd, float* sx, float* sd, SampleScales* sc, int nev, const int* ev_pos,
                        const int64_t* ev_slice, const int64_t* ev_call, const uint64_t* ev_off, bool columns,
                        int64_t L, float* snaps, unsigned long long* ctot, cudaStream_t stream);

namespace {

void check_f32_cuda(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(AT_DEVICE_TENSOR(t), "analogtrain (CUDA): ", name, " must be a CUDA tensor");
  TORCH_CHECK(t.device() == like.device(), "analogtrain (CUDA): ", name, " is on another device");
  TORCH_CHECK(t.scalar_type() == at::kFloat, "analogtrain (CUDA): ", name, " must be float32");
  TORCH_CHECK(t.is_contiguous(), "analogtrain (CUDA): ", name, " must be contiguous");
}


// The checks every update op makes on its tensors (op: the op's name for the messages).
void check_update_inputs(const at::Tensor& w, const at::Tensor& params, const at::Tensor& x, const at::Tensor& d,
                         int64_t mode, double dw, const char* op) {
  check_f32_cuda(w, "w", w);
  check_f32_cuda(params, "params", w);
  check_f32_cuda(x, "x", w);
  check_f32_cuda(d, "d", w);
  const int64_t O = w.size(0), I = w.size(1);
  TORCH_CHECK(x.dim() == 2 && d.dim() == 2 && x.size(1) == I && d.size(1) == O && d.size(0) == x.size(0),
              "analogtrain::", op, " (CUDA): shape mismatch");
  TORCH_CHECK(params.dim() == 3 && params.size(0) >= NP_PLANES && params.size(1) == O && params.size(2) == I,
              "analogtrain::", op, " (CUDA): params must be (NP, O, I)");
  TORCH_CHECK(valid_mode_code(mode), "analogtrain::", op, ": unknown mode ", mode);
  TORCH_CHECK(dw > 0, "analogtrain::", op, ": dw must be > 0");
}

// Largest BL any sample of this call can get (sizes the bit-packed trains without a device sync).
int max_bl(const UpdateArgs& u) {
  if (u.fixed_bl || u.ublm) return u.desired_bl;
  if (u.dw * u.desired_bl < u.lr_abs) {
    const double c = std::ceil(u.lr_abs / u.dw);
    return c > 1.0 ? static_cast<int>(c) : 1;
  }
  return u.desired_bl;
}

DeviceGlobals globals_of(const at::Tensor& gparams) {
  at::Tensor g = gparams.to(at::kCPU, at::kDouble).contiguous();  // 12 scalars
  TORCH_CHECK(g.numel() >= NG_SCALARS, "analogtrain: gparams must hold ", NG_SCALARS, " scalars");
  return make_globals(g.data_ptr<double>());
}

const float* opt_ptr(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& like, int64_t n) {
  if (!(t.has_value() && t->defined() && t->numel() > 0)) return nullptr;
  check_f32_cuda(*t, name, like);
  TORCH_CHECK(t->numel() == n, "analogtrain (CUDA): ", name, " must have ", n, " entries");
  return t->data_ptr<float>();
}

void run_update(at::Tensor& w, float* wp, const at::Tensor& params, const DeviceGlobals& g, const at::Tensor& x,
                const at::Tensor& d, const UpdateArgs& u, const float* ci, const float* co, at::Tensor& pulses) {
  const int O = static_cast<int>(w.size(0)), I = static_cast<int>(w.size(1)), B = static_cast<int>(x.size(0));
  if (const char* msg = args_error(u, g)) TORCH_CHECK(false, msg);
  if (u.lr_abs == 0.0 || B == 0 || O == 0 || I == 0) return;
  at::Tensor xmax = x.abs().amax({1}).contiguous();
  at::Tensor dmax = d.abs().amax({1}).contiguous();
  const int nw = u.mode == MODE_PULSED ? (max_bl(u) + 31) / 32 : 0;
  auto iopt = w.options().dtype(at::kInt);
  at::Tensor xbits = at::empty({nw ? static_cast<int64_t>(B) * I * nw : 1}, iopt);
  at::Tensor dbits = at::empty({nw ? static_cast<int64_t>(B) * O * nw : 1}, iopt);
  at::Tensor px = at::empty({B, I}, w.options()), sx = at::empty({B, I}, w.options());
  at::Tensor pd = at::empty({B, O}, w.options()), sd = at::empty({B, O}, w.options());
  // SampleScales {int, double, double} = 24 bytes per sample; raw bytes in a uint8 tensor
  at::Tensor sc = at::empty({static_cast<int64_t>(B) * static_cast<int64_t>(sizeof(SampleScales))},
                            w.options().dtype(at::kByte));
  cudaStream_t stream = AT_CURRENT_STREAM(w.device());
  cuda_pulsed_update(w.data_ptr<float>(), wp, params.data_ptr<float>(), g, x.data_ptr<float>(), d.data_ptr<float>(),
                     xmax.data_ptr<float>(), dmax.data_ptr<float>(), B, O, I, u, ci, co, pulses.data_ptr<float>(), nw,
                     reinterpret_cast<uint32_t*>(xbits.data_ptr<int32_t>()),
                     reinterpret_cast<uint32_t*>(dbits.data_ptr<int32_t>()), px.data_ptr<float>(),
                     pd.data_ptr<float>(), sx.data_ptr<float>(), sd.data_ptr<float>(),
                     reinterpret_cast<SampleScales*>(sc.data_ptr<uint8_t>()), stream);
  AT_LAUNCH_CHECK();
}

at::Tensor pulsed_update_cuda(at::Tensor w, const std::optional<at::Tensor>& w_p, const at::Tensor& params,
                              const at::Tensor& gparams, const at::Tensor& x, const at::Tensor& d, double lr,
                              double dw, int64_t desired_bl, bool fixed_bl, bool ublm, bool um, double um_grad_scale,
                              double res, bool sto_round, int64_t mode, int64_t seed, int64_t offset,
                              const std::optional<at::Tensor>& chop_in, const std::optional<at::Tensor>& chop_out) {
  AT_DEVICE_GUARD(w.device());
  check_update_inputs(w, params, x, d, mode, dw, "pulsed_update");
  const int64_t O = w.size(0), I = w.size(1);
  float* wp = const_cast<float*>(opt_ptr(w_p, "w_p", w, O * I));
  const float* ci = opt_ptr(chop_in, "chop_in", w, I);
  const float* co = opt_ptr(chop_out, "chop_out", w, O);
  at::Tensor pulses = at::zeros({O, I}, w.options());
  const UpdateArgs u = make_args(lr, dw, desired_bl, fixed_bl, ublm, um, um_grad_scale, res, sto_round, mode, seed,
                                 offset);
  run_update(w, wp, params, globals_of(gparams), x, d, u, ci, co, pulses);
  return pulses;
}

std::tuple<at::Tensor, at::Tensor> buffered_transfer_cuda(at::Tensor h, const at::Tensor& v, int64_t k, const std::optional<at::Tensor>& chop,
                                  double lr_scale, double thr, int64_t bl_t, double momentum, bool forget,
                                  bool no_buffer, double cap, bool columns, bool write, at::Tensor w,
                                  const std::optional<at::Tensor>& w_p, const at::Tensor& params,
                                  const at::Tensor& gparams, double lr, double dw, int64_t desired_bl, bool fixed_bl,
                                  bool ublm, bool um, double um_grad_scale, double res, bool sto_round, int64_t mode,
                                  int64_t seed, int64_t offset) {
  AT_DEVICE_GUARD(h.device());
  check_f32_cuda(h, "h", h);
  check_f32_cuda(v, "v", h);
  check_f32_cuda(w, "w", h);
  check_f32_cuda(params, "params", h);
  TORCH_CHECK(h.dim() == 2 && w.sizes() == h.sizes(), "analogtrain::buffered_transfer (CUDA): H and w shapes differ");
  const int64_t O = h.size(0), I = h.size(1);
  const int64_t L = columns ? O : I, S = columns ? I : O;
  TORCH_CHECK(v.numel() == L, "analogtrain::buffered_transfer (CUDA): v must have ", L, " entries");
  TORCH_CHECK(k >= 0 && k < S, "analogtrain::buffered_transfer (CUDA): slice index out of range");
  const float* cp = opt_ptr(chop, "chop", h, L);
  at::Tensor n = at::empty({L}, v.options());
  cudaStream_t stream = AT_CURRENT_STREAM(h.device());
  cuda_buffer_step(h.data_ptr<float>() + (columns ? k : k * I), columns ? I : 1, v.data_ptr<float>(), cp, L,
                   static_cast<float>(lr_scale), static_cast<float>(thr), static_cast<float>(bl_t),
                   static_cast<float>(momentum), static_cast<float>(1.0 - momentum), forget, no_buffer,
                   static_cast<float>(cap * static_cast<double>(bl_t)), n.data_ptr<float>(), stream);
  AT_LAUNCH_CHECK();
  if (!write) return std::make_tuple(n, at::zeros({L}, v.options()));
  // the C write (no host sync: with all n = 0 the one-sample update touches nothing, as the skip would)
  at::Tensor onehot = at::zeros({1, S}, h.options());
  onehot.select(1, k).fill_(1.0);
  at::Tensor negn = n.neg().reshape({1, L}).contiguous();
  at::Tensor x = columns ? onehot : negn;
  at::Tensor d = columns ? negn : onehot;
  float* wp = const_cast<float*>(opt_ptr(w_p, "w_p", h, O * I));
  at::Tensor pulses = at::zeros({O, I}, w.options());
  const UpdateArgs u = make_args(lr, dw, desired_bl, fixed_bl, ublm, um, um_grad_scale, res, sto_round, mode, seed,
                                 offset);
  run_update(w, wp, params, globals_of(gparams), x, d, u, nullptr, nullptr, pulses);
  at::Tensor slice_pulses = columns ? pulses.select(1, k).contiguous() : pulses.select(0, k).contiguous();
  return std::make_tuple(n, slice_pulses);
}

// A host vector as a tensor on `like`'s device (small metadata arrays of the carry mode).
template <class T>
at::Tensor to_device(const std::vector<T>& v, const at::Tensor& like) {
  at::Tensor h = at::empty({static_cast<int64_t>(v.size() * sizeof(T))}, at::TensorOptions().dtype(at::kByte));
  if (!v.empty()) std::memcpy(h.data_ptr<uint8_t>(), v.data(), v.size() * sizeof(T));
  return h.to(like.device());
}

// chopped_update_snapshots on CUDA tensors (contract: analogtrain/ops/__init__.py; the CPU twin
// chopped_update_snapshots_cpu). starts / offsets / lrs / snap are host tensors. Pulsed, mean_count and
// expected modes: the C pulsed-update calls in order (run_update), each followed by its snapshot copy;
// the aggregated mode: one cuda_chopped_carry over all samples (moments carried across the calls).
std::tuple<at::Tensor, at::Tensor> chopped_update_snapshots_cuda(
    at::Tensor w, const std::optional<at::Tensor>& w_p, const at::Tensor& params, const at::Tensor& gparams,
    const at::Tensor& x, const at::Tensor& d, const at::Tensor& starts, const at::Tensor& offsets,
    const at::Tensor& lrs, const std::optional<at::Tensor>& chop_in, const std::optional<at::Tensor>& chop_out,
    const at::Tensor& snap, bool columns, double dw, int64_t desired_bl, bool fixed_bl, bool ublm, bool um,
    double um_grad_scale, double res, bool sto_round, int64_t mode, int64_t seed) {
  AT_DEVICE_GUARD(w.device());
  check_update_inputs(w, params, x, d, mode, dw, "chopped_update_snapshots");
  const int64_t O = w.size(0), I = w.size(1);
  at::Tensor st = starts.to(at::kCPU, at::kLong).contiguous(), of = offsets.to(at::kCPU, at::kLong).contiguous();
  at::Tensor lr = lrs.to(at::kCPU, at::kDouble).contiguous(), sn = snap.to(at::kCPU, at::kLong).contiguous();
  const int64_t C = of.numel();
  TORCH_CHECK(st.numel() == C + 1 && lr.numel() == C && sn.numel() == C,
              "analogtrain::chopped_update_snapshots: starts (C+1,), offsets, lrs, snap (C,)");
  const int64_t* stp = st.data_ptr<int64_t>();
  const int64_t* ofp = of.data_ptr<int64_t>();
  const double* lrp = lr.data_ptr<double>();
  const int64_t* snp = sn.data_ptr<int64_t>();
  const int64_t L = columns ? O : I, Ssl = columns ? I : O;
  TORCH_CHECK(stp[0] >= 0 && stp[C] <= x.size(0), "analogtrain::chopped_update_snapshots: starts out of range");
  for (int64_t c = 0; c < C; ++c) {
    TORCH_CHECK(stp[c + 1] >= stp[c], "chopped_update_snapshots: starts must grow");
    TORCH_CHECK(snp[c] < Ssl, "analogtrain::chopped_update_snapshots: snapshot slice out of range");
  }
  float* wp = const_cast<float*>(opt_ptr(w_p, "w_p", w, O * I));
  const float* ci = opt_ptr(chop_in, "chop_in", w, C * I);
  const float* co = opt_ptr(chop_out, "chop_out", w, C * O);
  const DeviceGlobals g = globals_of(gparams);
  at::Tensor snaps = at::zeros({C, L}, w.options());
  const auto snapshot = [&](int64_t c) {
    if (snp[c] >= 0) snaps.select(0, c).copy_(columns ? w.select(1, snp[c]) : w.select(0, snp[c]));
  };
  std::vector<UpdateArgs> uc;
  for (int64_t c = 0; c < C; ++c)
    uc.push_back(make_args(lrp[c], dw, desired_bl, fixed_bl, ublm, um, um_grad_scale, res, sto_round, mode, seed,
                           ofp[c]));
  if (!(mode & AGGREGATE_BIT) || C == 0) {  // the calls one by one
    at::Tensor sums = at::zeros({C}, w.options());
    for (int64_t c = 0; c < C; ++c) {
      const int64_t s0 = stp[c], n = stp[c + 1] - stp[c];
      if (n > 0) {
        at::Tensor pulses = at::zeros({O, I}, w.options());
        run_update(w, wp, params, g, x.narrow(0, s0, n), d.narrow(0, s0, n), uc[static_cast<size_t>(c)],
                   ci ? ci + c * I : nullptr, co ? co + c * O : nullptr, pulses);
        sums.select(0, c).copy_(pulses.sum());
      }
      snapshot(c);
    }
    return std::make_tuple(snaps, sums.to(at::kCPU).to(at::kDouble));
  }
  if (const char* msg = args_error(uc[0], g)) TORCH_CHECK(false, msg);
  const int64_t s0 = stp[0];
  const int S = static_cast<int>(stp[C] - s0);
  at::Tensor call_pulses = at::zeros({C}, at::TensorOptions().dtype(at::kDouble));
  if (S == 0 || O == 0 || I == 0) {  // nothing pulses: the snapshots are the unchanged slices
    for (int64_t c = 0; c < C; ++c) snapshot(c);
    return std::make_tuple(snaps, call_pulses);
  }
  std::vector<int> scall(static_cast<size_t>(S)), sbc(static_cast<size_t>(S)), ev_pos;
  for (int64_t c = 0; c < C; ++c)
    for (int64_t q = stp[c]; q < stp[c + 1]; ++q) {
      scall[static_cast<size_t>(q - s0)] = static_cast<int>(c);
      sbc[static_cast<size_t>(q - s0)] = static_cast<int>(q - stp[c]);
    }
  std::vector<int64_t> ev_slice, ev_call;
  std::vector<uint64_t> ev_off;
  int maxbl = 0;
  for (int64_t c = 0; c < C; ++c) {
    maxbl = std::max(maxbl, max_bl(uc[static_cast<size_t>(c)]));
    if (snp[c] < 0) continue;
    ev_pos.push_back(static_cast<int>(stp[c + 1] - s0));
    ev_slice.push_back(snp[c]);
    ev_call.push_back(c);
    ev_off.push_back(uc[static_cast<size_t>(c)].offset);
  }
  const int nw = (maxbl + 31) / 32;
  at::Tensor xs = x.narrow(0, s0, S).contiguous(), ds = d.narrow(0, s0, S).contiguous();
  at::Tensor xmax = xs.abs().amax({1}).contiguous(), dmax = ds.abs().amax({1}).contiguous();
  auto iopt = w.options().dtype(at::kInt);
  at::Tensor xbits = at::empty({static_cast<int64_t>(S) * I * nw}, iopt);
  at::Tensor dbits = at::empty({static_cast<int64_t>(S) * O * nw}, iopt);
  at::Tensor px = at::empty({S, I}, w.options()), sx = at::empty({S, I}, w.options());
  at::Tensor pd = at::empty({S, O}, w.options()), sd = at::empty({S, O}, w.options());
  at::Tensor sc = at::empty({static_cast<int64_t>(S) * static_cast<int64_t>(sizeof(SampleScales))},
                            w.options().dtype(at::kByte));
  at::Tensor us_d = to_device(uc, w), scall_d = to_device(scall, w);
  at::Tensor sbc_d = to_device(sbc, w), pos_d = to_device(ev_pos, w);
  at::Tensor slice_d = to_device(ev_slice, w), call_d = to_device(ev_call, w);
  at::Tensor off_d = to_device(ev_off, w);
  at::Tensor ctot = at::zeros({C}, w.options().dtype(at::kLong));
  cudaStream_t stream = AT_CURRENT_STREAM(w.device());
  cuda_chopped_carry(w.data_ptr<float>(), wp, params.data_ptr<float>(), g, xs.data_ptr<float>(), ds.data_ptr<float>(),
                     xmax.data_ptr<float>(), dmax.data_ptr<float>(), S, static_cast<int>(O), static_cast<int>(I),
                     uc[static_cast<size_t>(C - 1)], reinterpret_cast<const UpdateArgs*>(us_d.data_ptr<uint8_t>()),
                     reinterpret_cast<const int*>(scall_d.data_ptr<uint8_t>()),
                     reinterpret_cast<const int*>(sbc_d.data_ptr<uint8_t>()), ci, co, nw,
                     reinterpret_cast<uint32_t*>(xbits.data_ptr<int32_t>()),
                     reinterpret_cast<uint32_t*>(dbits.data_ptr<int32_t>()), px.data_ptr<float>(),
                     pd.data_ptr<float>(), sx.data_ptr<float>(), sd.data_ptr<float>(),
                     reinterpret_cast<SampleScales*>(sc.data_ptr<uint8_t>()), static_cast<int>(ev_pos.size()),
                     reinterpret_cast<const int*>(pos_d.data_ptr<uint8_t>()),
                     reinterpret_cast<const int64_t*>(slice_d.data_ptr<uint8_t>()),
                     reinterpret_cast<const int64_t*>(call_d.data_ptr<uint8_t>()),
                     reinterpret_cast<const uint64_t*>(off_d.data_ptr<uint8_t>()), columns, L, snaps.data_ptr<float>(),
                     reinterpret_cast<unsigned long long*>(ctot.data_ptr<int64_t>()), stream);
  AT_LAUNCH_CHECK();
  at::Tensor tot = ctot.to(at::kCPU);
  const int64_t* tp = tot.data_ptr<int64_t>();
  double* cp = call_pulses.data_ptr<double>();
  for (int64_t c = 0; c < C; ++c) cp[c] = static_cast<double>(static_cast<float>(tp[c]));  // as float32 sums
  return std::make_tuple(snaps, call_pulses);
}

}  // namespace
}  // namespace analogtrain

#if defined(ANALOGTRAIN_CUDA_EMULATION)
// the emulation's ops, on CPU tensors, under their own namespace (the CPU ops keep `analogtrain::`)
TORCH_LIBRARY(analogtrain_cuda_emu, m) {
  m.def(AT_SCHEMA_PULSED_UPDATE, &analogtrain::pulsed_update_cuda);
  m.def(AT_SCHEMA_BUFFERED_TRANSFER, &analogtrain::buffered_transfer_cuda);
  m.def(AT_SCHEMA_CHOPPED_UPDATE_SNAPSHOTS, &analogtrain::chopped_update_snapshots_cuda);
}
#else
TORCH_LIBRARY_IMPL(analogtrain, CUDA, m) {
  m.impl("pulsed_update", &analogtrain::pulsed_update_cuda);
  m.impl("buffered_transfer", &analogtrain::buffered_transfer_cuda);
  m.impl("chopped_update_snapshots", &analogtrain::chopped_update_snapshots_cuda);
}
#endif
