"""The CUDA kernels run on the CPU (``build.build_cuda_emulation``: csrc/cuda_kernels.cu and cuda_ops.cpp
compiled by the host compiler, each launch running its grid's threads one after the other) against the
CPU kernel, bit for bit: pulse counts, weights, persistent weights, snapshots and pulse totals.

This checks, without a GPU, everything of the CUDA path but the GPU itself: the kernels' thread indexing
and grid-stride loops, the per-sample call arguments of the carry kernel, its events (finish, restart,
snapshot), the slot counts and the torch glue (shapes, scratch, mode dispatch). The emulation uses the
host's maths, so it must equal the CPU kernel exactly; on a GPU, CUDA's libm may move the weights by an
ulp, which is what the GPU parity tests (``-m cuda``) allow. Mutating a kernel (an event one sample late,
a sample skipped, a wrong train word) fails these tests (see the note of the change that added them).
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from analogtrain import ops
from analogtrain.devices import device_from_config, sample_device
from analogtrain.ops import MODE_EXPECTED, MODE_MEAN_COUNT, MODE_PULSED, UpdateSpec
from kernel_cases import CARRY_DEVICES, LRS, STARTS, UPDATE_DEVICES, carry_case, update_case

torch.set_num_threads(1)

COMPILED = ops.compiled_available("cpu")
pytestmark = [pytest.mark.compiled, pytest.mark.skipif(not COMPILED, reason="compiled kernel unavailable")]


@pytest.fixture(scope="module")
def emulated():
    """The emulation's ops (``torch.ops.analogtrain_cuda_emu``), built once per session (about 20 s)."""
    from analogtrain.ops import build

    build.build_cuda_emulation()
    return torch.ops.analogtrain_cuda_emu


@contextlib.contextmanager
def _through(emulated, name):
    """``ops.<name>(..., backend="compiled")`` on CPU tensors runs the emulated CUDA op instead of the CPU
    one: the same argument marshalling, the CUDA kernels' code."""
    ns = torch.ops.analogtrain
    cpu_op = getattr(ns, name)
    setattr(ns, name, getattr(emulated, name))
    try:
        yield
    finally:
        setattr(ns, name, cpu_op)


def _same(a, b):
    """Bit for bit (NaN-safe), or both None."""
    if a is None or b is None:
        return a is None and b is None
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


# ------------------------------------------------------------------------------------ pulsed_update

DEVICES = UPDATE_DEVICES
LINEAR_FAMILY = {"softbounds", "linear_step", "constant_step", "softbounds_reference", "reram_sb"}  # aggregate


def _update_case(key):
    """update_case (O·I = 3072 elements: twelve 256-thread blocks of the element kernel) with choppers."""
    s, x, d, w0 = update_case(key)
    g = torch.Generator().manual_seed(9)
    ci = torch.where(torch.rand(x.shape[1], generator=g) < 0.5, -1.0, 1.0)
    co = torch.where(torch.rand(d.shape[1], generator=g) < 0.5, -1.0, 1.0)
    return s, x, d, w0, ci, co


def _update(s, x, d, w0, ci, co, spec, lr):
    w = w0.clone()
    wp = w0.clone() if s.write_noise else None
    n = ops.pulsed_update(w, wp, s.params, s.gparams, x, d, lr, s.dw, spec, 2**35 + 3, 17, chop_in=ci, chop_out=co,
                          backend="compiled")
    return n, w, wp


def _update_specs(key, mode):
    specs = [(UpdateSpec(mode=mode), 0.05), (UpdateSpec(mode=mode, ublm=False, desired_bl=40), 0.05),
             (UpdateSpec(mode=mode, ublm=False, um=False, res=0.05, sto_round=True), 0.05)]
    if mode == MODE_PULSED and key in LINEAR_FAMILY:  # the aggregated mode: sparse, two-word trains, dense
        agg = UpdateSpec(aggregate=True)
        specs += [(agg, 0.05), (dataclasses.replace(agg, ublm=False, desired_bl=40), 0.05),
                  (dataclasses.replace(agg, ublm=False, desired_bl=63), 5.0)]
    return specs


@pytest.mark.parametrize("mode", [MODE_PULSED, MODE_MEAN_COUNT, MODE_EXPECTED], ids=["pulsed", "mean_count", "expected"])
@pytest.mark.parametrize("key", DEVICES)
def test_emulated_cuda_update_equals_cpu_kernel(emulated, key, mode):
    s, x, d, w0, ci, co = _update_case(key)
    for spec, lr in _update_specs(key, mode):
        cpu = _update(s, x, d, w0, ci, co, spec, lr)
        with _through(emulated, "pulsed_update"):
            emu = _update(s, x, d, w0, ci, co, spec, lr)
        assert float(cpu[0].sum()) > 50 and not torch.equal(cpu[1], w0), (spec, "a case that pulses")
        for a, b in zip(emu, cpu):
            assert _same(a, b), (key, spec)
        if lr == 5.0:  # more than 4·B pulses on an element: some sample brought it n > 4 (the expm1 form)
            assert float(cpu[0].max()) > 4 * x.shape[0]


# ------------------------------------------------------------------------- chopped_update_snapshots

AGG = UpdateSpec(aggregate=True)
CARRY_SPECS = {  # (spec, lr scale): the carry kernel (sparse, one-slot, two-word, dense) and the per-call modes
    "carry": (AGG, 1.0),
    "carry_one_slot": (AGG, 0.005),
    "carry_two_words": (dataclasses.replace(AGG, ublm=False, desired_bl=40), 1.0),
    "carry_dense": (AGG, 5.0),
    "pulsed": (UpdateSpec(), 1.0),
    "mean_count": (UpdateSpec(mode=MODE_MEAN_COUNT), 1.0),
    "expected": (UpdateSpec(mode=MODE_EXPECTED), 1.0),
}


def _carry_case(key, columns):
    """carry_case (O = 21, I = 37: partial groups) with slices read in the second and third 16-lane groups."""
    s, x, d, w0, ci, co = carry_case(key, 21, 37)
    return s, x, d, w0, ci, co, [0, 0, -1, 20, 20, -1, 36 if columns else 1, 17]


def _carry(s, x, d, w0, ci, co, snap, columns, spec, scale):
    w = w0.clone()
    wp = w0.clone() if s.write_noise else None
    snaps, sums = ops.chopped_update_snapshots(w, wp, s.params, s.gparams, x, d, STARTS,
                                               [40 + c for c in range(len(LRS))], [v * scale for v in LRS], ci, co,
                                               snap, columns, s.dw, spec, 2**33 + 5, backend="compiled")
    return w, wp, snaps, sums


@pytest.mark.parametrize("case", sorted(CARRY_SPECS))
@pytest.mark.parametrize("columns", [True, False], ids=["columns", "rows"])
@pytest.mark.parametrize("key", sorted(CARRY_DEVICES))
def test_emulated_cuda_snapshots_equal_cpu_kernel(emulated, key, columns, case):
    """k_carry (aggregated: moments across calls, events finishing and snapshotting a slice) and the
    per-call path (one k_update launch per call, snapshot after each) against the CPU kernel."""
    spec, scale = CARRY_SPECS[case]
    s, x, d, w0, ci, co, snap = _carry_case(key, columns)
    cpu = _carry(s, x, d, w0, ci, co, snap, columns, spec, scale)
    with _through(emulated, "chopped_update_snapshots"):
        emu = _carry(s, x, d, w0, ci, co, snap, columns, spec, scale)
    assert float(cpu[3].sum()) > 20 and not torch.equal(cpu[0], w0)
    assert emu[3].dtype == torch.float64 and emu[3].tolist() == cpu[3].tolist()
    for a, b in zip(emu[:3], cpu[:3]):
        assert _same(a, b), (key, columns, case)
    # the snapshot after call 3 is not the final slice: later calls moved it
    k = snap[3]
    assert not torch.equal(cpu[2][3], cpu[0][:, k] if columns else cpu[0][k])


# ---------------------------------------------------------------------------------- buffered_transfer


@pytest.mark.parametrize("columns", [True, False], ids=["columns", "rows"])
def test_emulated_cuda_transfer_equals_cpu_kernel(emulated, columns):
    """k_buffer (buffer step of a strided slice) and the C write through k_update, ten reads in a row."""
    O, I = 32, 24
    s = sample_device(device_from_config({"name": "softbounds"}), O, I, 2)
    h0 = torch.randn(O, I, generator=torch.Generator().manual_seed(0))
    L = O if columns else I
    out = []
    for emu in (False, True):
        h, c = h0.clone(), torch.zeros(O, I)
        gg = torch.Generator().manual_seed(1)
        ns, ps = [], []
        ctx = _through(emulated, "buffered_transfer") if emu else contextlib.nullcontext()
        with ctx:
            for r in range(10):
                v = torch.randn(L, generator=gg) * 0.05
                chop = torch.where(torch.rand(L, generator=gg) < 0.5, -1.0, 1.0)
                n, p = ops.buffered_transfer(h, v, r % (I if columns else O), lr_scale=25.0, thr=1.0, bl=1,
                                             momentum=0.1, forget=True, w=c, w_p=None, params=s.params,
                                             gparams=s.gparams, lr=s.dw, dw=s.dw,
                                             spec=UpdateSpec(desired_bl=1, ublm=False, um=False), seed=4, offset=r,
                                             chop=chop, columns=columns, backend="compiled")
                ns.append(n)
                ps.append(p)
        out.append((torch.stack(ns), torch.stack(ps), h, c))
    cpu, emu = out
    assert float(cpu[0].abs().sum()) > 10 and float(cpu[3].abs().sum()) > 0  # thresholds crossed, C written
    for a, b in zip(emu, cpu):
        assert _same(a, b)
