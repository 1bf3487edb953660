// The schemas of the update ops that have a CUDA implementation: defined once (cpu_ops.cpp, namespace
// `analogtrain`) and again, identical, by the CPU emulation of the CUDA kernels (cuda_ops.cpp built with
// -DANALOGTRAIN_CUDA_EMULATION, namespace `analogtrain_cuda_emu`).
#pragma once

#define AT_SCHEMA_PULSED_UPDATE \
    "pulsed_update(Tensor(a!) w, Tensor(b!)? w_p, Tensor params, Tensor gparams, Tensor x, Tensor d, float lr, " \
    "float dw, int desired_bl, bool fixed_bl, bool ublm, bool um, float um_grad_scale, float res, bool sto_round, " \
    "int mode, int seed, int offset, Tensor? chop_in, Tensor? chop_out) -> Tensor"

#define AT_SCHEMA_BUFFERED_TRANSFER \
    "buffered_transfer(Tensor(a!) h, Tensor v, int k, Tensor? chop, float lr_scale, float thr, int bl_t, " \
    "float momentum, bool forget, bool no_buffer, float cap, bool columns, bool write, Tensor(b!) w, " \
    "Tensor(c!)? w_p, Tensor params, Tensor gparams, float lr, float dw, int desired_bl, bool fixed_bl, bool ublm, " \
    "bool um, float um_grad_scale, float res, bool sto_round, int mode, int seed, int offset) -> (Tensor, Tensor)"

#define AT_SCHEMA_CHOPPED_UPDATE_SNAPSHOTS \
    "chopped_update_snapshots(Tensor(a!) w, Tensor(b!)? w_p, Tensor params, Tensor gparams, Tensor x, Tensor d, " \
    "Tensor starts, Tensor offsets, Tensor lrs, Tensor? chop_in, Tensor? chop_out, Tensor snap, bool columns, " \
    "float dw, int desired_bl, bool fixed_bl, bool ublm, bool um, float um_grad_scale, float res, bool sto_round, " \
    "int mode, int seed) -> (Tensor, Tensor)"
