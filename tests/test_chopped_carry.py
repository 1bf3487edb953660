"""Aggregated mode of ``ops.chopped_update_snapshots`` (the batched A side of c-TTv2 / AGAD / TTv2): each
element's mean and variance are carried across ALL pulsed-update calls of the batch and the element is
finished (one normal, clip, store) only when a transfer read observes it — right before the snapshot
of its slice, with the snapshotting call's counters — or after the last call (the last call's counters).

Checked here, on the torch reference and on every path of the compiled CPU kernel:
* one call: exactly the aggregated ``pulsed_update`` (same counters for the slice and the rest);
* noise-free devices without reference offsets: exactly the per-call aggregated updates (the moments of
  an affine chain need no finish in between), snapshots included;
* compiled vs reference: identical pulse totals, weights and snapshots up to libm rounding (columns and
  rows, empty calls, repeated slices, write noise, reference offsets, one-slot / multi-slot / generic
  trains);
* over many seeds, the final weights and the snapshots have the mean and variance of the pulsed mode;
* a c-TTv2 rule's batched schedule in aggregated mode equals its per-sample loop on a noise-free device.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from analogtrain import ops
from analogtrain.devices import device_from_config, sample_device
from analogtrain.devices import params as P
from analogtrain.ops import UpdateSpec
from analogtrain.ops.reference_chopped import chopped_update_snapshots_ref
from kernel_cases import CARRY_DEVICES, LRS, STARTS, carry_case

torch.set_num_threads(1)

AGG = UpdateSpec(aggregate=True)
COMPILED = ops.compiled_available("cpu")
BACKENDS = ["reference"] + (["compiled"] if COMPILED else [])

DEVICES = CARRY_DEVICES
C = len(LRS)
_inputs = carry_case


def _snap(S):
    return [0, 0, -1, 2 % S, 2 % S, -1, (S - 1), 1 % S]


def _op(backend, s, x, d, w0, ci, co, *, columns=True, spec=AGG, starts=STARTS, lrs=LRS, snap=None, seed=2**33 + 5,
        offsets=None):
    O, I = w0.shape
    snap = snap if snap is not None else _snap(I if columns else O)
    offsets = offsets if offsets is not None else [40 + c for c in range(len(lrs))]
    w = w0.clone()
    wp = w0.clone() if s.write_noise else None
    snaps, sums = ops.chopped_update_snapshots(w, wp, s.params, s.gparams, x, d, starts, offsets, lrs, ci, co, snap,
                                               columns, s.dw, spec, seed, backend=backend)
    return w, wp, snaps, sums


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("columns", [True, False], ids=["columns", "rows"])
def test_one_call_is_the_aggregated_pulsed_update(backend, columns):
    s, x, d, w0, ci, co = _inputs("reram_sb", 7, 6)
    O, I = w0.shape
    k = 3
    w, wp, snaps, sums = _op(backend, s, x, d, w0, ci[:1], co[:1], columns=columns, starts=[0, 9], lrs=[0.4],
                             snap=[k], offsets=[17])
    w_e, wp_e = w0.clone(), w0.clone()
    n = ops.pulsed_update(w_e, wp_e, s.params, s.gparams, x, d, 0.4, s.dw, AGG, 2**33 + 5, 17, chop_in=ci[0],
                          chop_out=co[0], backend=backend)
    exact = backend == "reference"  # the kernel's event draws and row draws are two vector libm routes
    check = torch.equal if exact else (lambda a, b: torch.allclose(a, b, rtol=1e-6, atol=1e-7))
    assert check(w, w_e) and check(wp, wp_e)
    assert check(snaps[0], w_e[:, k] if columns else w_e[k])
    assert sums.tolist() == [float(n.sum())] and float(n.sum()) > 100


def _noise_free(key):
    cfg = {"softbounds": {"name": "softbounds", "dw_min": 0.02, "dw_min_std": 0.0},
           "constant_step": {"name": "constant_step", "dw_min": 0.01, "w_max": 0.1, "w_min": -0.1,
                             "dw_min_std": 0.0}}[key]
    s = sample_device(device_from_config(cfg), 7, 6, 11)
    assert float(s.gparams[P.G_DW_MIN_STD]) == 0.0 and not bool(s.params[P.P_REF].any())
    return s


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("columns", [True, False], ids=["columns", "rows"])
@pytest.mark.parametrize("key", ["softbounds", "constant_step"])
def test_noise_free_carry_equals_the_per_call_updates(key, columns, backend):
    """Noise-free and ref = 0: finishing an element changes nothing (clip of a clipped mean, state = w_dev),
    so carrying the moments across calls gives the per-call aggregated updates bit for bit."""
    s = _noise_free(key)
    _, x, d, w0, ci, co = _inputs("softbounds_mult", 7, 6)
    w0 = w0.clamp(-0.09, 0.09)
    snap = _snap(6 if columns else 7)
    w, _, snaps, sums = _op(backend, s, x, d, w0, ci, co, columns=columns, snap=snap)
    w_e = w0.clone()
    for c in range(C):
        p = ops.pulsed_update(w_e, None, s.params, s.gparams, x[STARTS[c]:STARTS[c + 1]], d[STARTS[c]:STARTS[c + 1]],
                              LRS[c], s.dw, AGG, 2**33 + 5, 40 + c, chop_in=ci[c], chop_out=co[c], backend=backend)
        assert float(sums[c]) == float(p.sum())
        if snap[c] >= 0:
            assert torch.equal(snaps[c], w_e[:, snap[c]] if columns else w_e[snap[c]]), c
    assert torch.equal(w, w_e)
    assert float(sums.sum()) > 100 and not torch.equal(w, w0)


PATHS = {  # which phase 2 of the compiled kernel runs
    "multi_slot": {},  # BL up to 31: the AVX-512 moment loop with n >= 2 (or the generic path without AVX-512)
    "one_slot": {"lr_scale": 0.005},  # BL 1 under UBLM: one pulse per coincidence (the one-slot loop)
    "generic": {"spec": dataclasses.replace(AGG, desired_bl=40, ublm=False)},  # two-word trains
}


def _path_case(key, columns, path):
    """The inputs of a compiled-path case (O = 21, I = 37) and _op's keywords for ``PATHS[path]``: its lrs,
    spec and a snapshot schedule with slices in the second and third 16-lane groups."""
    p = PATHS[path]
    s, x, d, w0, ci, co = _inputs(key, 21, 37)
    kw = {"lrs": [v * p.get("lr_scale", 1.0) for v in LRS], "spec": p.get("spec", AGG),
          "snap": [0, 0, -1, 20, 20, -1, 36 if columns else 1, 17]}
    return s, x, d, w0, ci, co, kw


def _compiled_path_cases(test):
    """A compiled-kernel test over every device × orientation × ``PATHS`` case (ids key-columns-path)."""
    for mark in (pytest.mark.parametrize("key", sorted(DEVICES)),
                 pytest.mark.parametrize("columns", [True, False], ids=["columns", "rows"]),
                 pytest.mark.parametrize("path", sorted(PATHS)),
                 pytest.mark.skipif(not COMPILED, reason="compiled kernel unavailable"), pytest.mark.compiled):
        test = mark(test)
    return test


@_compiled_path_cases
def test_compiled_carry_matches_reference(key, columns, path):
    """O = 21, I = 37: partial 16-lane groups, slices in the second and third groups."""
    s, x, d, w0, ci, co, kw = _path_case(key, columns, path)
    ref = _op("reference", s, x, d, w0, ci, co, columns=columns, **kw)
    got = _op("compiled", s, x, d, w0, ci, co, columns=columns, **kw)
    assert got[3].tolist() == ref[3].tolist()
    assert float(ref[3].sum()) > 30
    for a, b in zip(got[:3], ref[:3]):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(ref[0], w0)
    # the snapshots are not the final slices: later calls moved them
    k = kw["snap"][3]
    assert not torch.equal(ref[2][3], ref[0][:, k] if columns else ref[0][k])


@_compiled_path_cases
def test_compiled_carry_fast_path_equals_the_generic_job_path_bit_for_bit(key, columns, path):
    """The carry pass through this CPU's fast path and, with the test hook force_generic_path, through the
    generic job path: the same snapshots, pulse totals and weights, bit for bit (events between samples
    included: finishing a slice, restarting its moments)."""
    s, x, d, w0, ci, co, kw = _path_case(key, columns, path)
    out = []
    for generic in (False, True):
        before = torch.ops.analogtrain.force_generic_path(generic)
        try:
            out.append(_op("compiled", s, x, d, w0, ci, co, columns=columns, **kw))
        finally:
            torch.ops.analogtrain.force_generic_path(before)
    (fast, generic) = out
    assert fast[3].tolist() == generic[3].tolist() and float(fast[3].sum()) > 30
    for a, b in zip(fast[:3], generic[:3]):
        if b is not None:
            assert torch.equal(a.view(torch.int32), b.view(torch.int32))


@pytest.mark.compiled
@pytest.mark.skipif(not COMPILED, reason="compiled kernel unavailable")
@pytest.mark.parametrize("path", ["multi_slot", "generic"])
def test_compiled_carry_totals_of_samples_with_hundreds_of_trains(path):
    """O = 300, I = 700: a sample has 500-odd active x trains and ~300 d trains, more than the 255 that the
    kernel's byte-lane slot counters take before they flush, so the exact pulse total of each call must
    survive the flushes in the middle of a sample (one- and two-word trains)."""
    kw = PATHS[path]
    s, x, d, w0, ci, co = _inputs("softbounds_mult", 300, 700)
    spec = kw.get("spec", AGG)
    snap = [0, 0, -1, 299, 5, -1, 150, 17]
    ref = _op("reference", s, x, d, w0, ci, co, lrs=LRS, spec=spec, snap=snap)
    got = _op("compiled", s, x, d, w0, ci, co, lrs=LRS, spec=spec, snap=snap)
    assert got[3].tolist() == ref[3].tolist()
    nx = int((x[STARTS[1]:STARTS[2]] != 0).sum(dim=1).min())
    assert nx > 255 and float(ref[3].max()) > 1e5

@pytest.mark.parametrize("backend", BACKENDS)
def test_snapshot_of_a_slice_not_pulsed_afterwards_is_its_final_value(backend):
    """Column 2 is finished at the read after call 3; later samples have x[:, 2] = 0, so the column keeps
    the value that read saw, and that value is the finished one (not the stale pre-batch weight)."""
    s, x, d, w0, ci, co = _inputs("softbounds_mult", 7, 6)
    x = x.clone()
    x[3:, 2] = 0.0
    x[:3, 2] = 0.9
    w, _, snaps, _ = _op(backend, s, x, d, w0, ci, co, columns=True)
    assert torch.equal(snaps[3], w[:, 2]) and torch.equal(snaps[4], w[:, 2])
    assert not torch.equal(snaps[3], w0[:, 2])


def test_carry_statistics_match_the_pulsed_mode_over_seeds():
    """Same counts per seed in both modes (same trains), so per element the mean difference of the final
    weights and of a mid-batch snapshot over 150 seeds is noise (within 5 standard errors), and the
    spread over seeds agrees; the changes dwarf the tolerance."""
    O, I, S = 6, 5, 150
    s = sample_device(device_from_config({"name": "softbounds", "dw_min": 0.03, "w_max": 0.3, "w_min": -0.3,
                                          "dw_min_std": 0.3, "dw_min_dtod": 0.05, "w_max_dtod": 0.05,
                                          "w_min_dtod": 0.05}), O, I, 3)
    g = torch.Generator().manual_seed(3)
    B = 6
    x = torch.rand(B, I, generator=g)
    d = torch.randn(B, O, generator=g)
    w0 = (torch.rand(O, I, generator=g) - 0.5) * 0.2
    starts, lrs, snap = list(range(B + 1)), [0.3] * B, [1, -1, 3, 1, -1, 0]
    ci = torch.ones(B, I)
    co = torch.ones(B, O)
    res = {True: [], False: []}
    for seed in range(S):
        for agg in (True, False):
            w = w0.clone()
            snaps, sums = chopped_update_snapshots_ref(w, None, s.params, s.gparams, x, d, starts, list(range(B)), lrs,
                                                       ci, co, snap, True, s.dw, UpdateSpec(aggregate=agg), 500 + seed)
            res[agg].append(torch.cat([w.view(-1), snaps[2]]).double())
        assert float(sums.sum()) > 0
    a, p = torch.stack(res[True]), torch.stack(res[False])
    diff = a - p
    se = diff.std(0) / math.sqrt(S)
    moved = (p.mean(0) - torch.cat([w0.view(-1), w0[:, 3]]).double()).abs() > 0
    assert int(moved.sum()) > 0.8 * moved.numel()
    t = diff.mean(0)[moved] / se[moved]
    assert float(t.abs().max()) < 5, float(t.abs().max())
    ratio = float(a.var(0)[moved].sum() / p.var(0)[moved].sum())
    assert abs(ratio - 1.0) < 0.15, ratio
    base = torch.cat([w0.view(-1), w0[:, 3]]).double()
    assert float(((p.mean(0) - base)[moved].abs() / se[moved]).median()) > 10


@pytest.mark.parametrize("backend", BACKENDS)
def test_cttv2_batched_aggregated_equals_its_loop_on_a_noise_free_device(backend):
    """The rule plumbing: with a noise-free, ref-free device the carried batch equals the per-sample loop's
    per-call finishes exactly, so every buffer of the rule agrees (chopper flips, buffers, C writes)."""
    import analogtrain.algorithms.transfer as transfer_mod
    from analogtrain.algorithms.theory import build_rule

    dev = {"name": "softbounds", "dw_min": 0.02, "dw_min_std": 0.0}
    kw = {"in_chop_prob": 0.4, "in_chop_random": True, "out_chop_prob": 0.3, "fast_lr": 0.5,
          "transfer_forward": {"is_perfect": True}}
    out = {}
    for batched in (True, False):
        ops.set_backend(backend)
        old = transfer_mod.BATCHED_TRANSFERS
        transfer_mod.BATCHED_TRANSFERS = batched
        try:
            rule = build_rule("cttv2", dev, 5, 7, algo_kw=kw, tile_kw={"update_mode": "aggregated"}, seed=3)
            g = torch.Generator().manual_seed(1)
            for _ in range(5):
                rule.update(torch.rand(6, 7, generator=g), 0.3 * torch.randn(6, 5, generator=g), 0.1)
        finally:
            transfer_mod.BATCHED_TRANSFERS = old
            ops.set_backend("auto")
        out[batched] = rule.state_dict()
    for k in out[True]:
        assert torch.equal(out[True][k], out[False][k]), k
    assert float(out[True]["pulses_c"]) > 0 and int(out[True]["flips"]) > 0


@pytest.mark.compiled
@pytest.mark.skipif(not COMPILED, reason="compiled kernel unavailable")
@pytest.mark.parametrize("path", ["bl4", "generic_sparse"])
@pytest.mark.parametrize("columns", [True, False], ids=["columns", "rows"])
@pytest.mark.parametrize("key", ["softbounds_mult", "linear_step_additive", "reram_sb"])
def test_compiled_carry_equals_reference_exactly_with_at_most_four_pulses(key, columns, path):
    """Every sample brings n <= AGG_POLY_MAX pulses per element — trains of 4 slots (AVX-512 loop, or the
    generic path on machines without it), or 40-slot trains at a small lr (two-word trains: the generic
    path's scalar aggregate_sample) — so the moments use only the binomial polynomials, no log1p/expm1
    whose rounding differs between libraries, and the compiled kernel reproduces the reference bit for
    bit (the final normals: libmvec vs torch agree except with probability ~1e-8 per draw)."""
    s, x, d, w0, ci, co = _inputs(key, 21, 37)
    spec, lrs = dataclasses.replace(AGG, desired_bl=4), LRS
    if path == "generic_sparse":  # lr ∝ dw: a few pulses per element over the batch
        spec, lrs = dataclasses.replace(AGG, desired_bl=40, ublm=False), [v * 0.25 * s.dw for v in LRS]
    snap = [0, 0, -1, 20, 20, -1, 36 if columns else 1, 17]
    for c in range(C if path == "generic_sparse" else 0):  # premise (BL 4 bounds every sample by itself):
        # <= 4 pulses per element in each call, with the op's counters in the pulsed mode
        n = ops.pulsed_update(w0.clone(), None, s.params, s.gparams, x[STARTS[c]:STARTS[c + 1]],
                              d[STARTS[c]:STARTS[c + 1]], lrs[c], s.dw, dataclasses.replace(spec, aggregate=False),
                              2**33 + 5, 40 + c, chop_in=ci[c], chop_out=co[c], backend="reference")
        assert float(n.max()) <= 4
    ref = _op("reference", s, x, d, w0, ci, co, columns=columns, spec=spec, snap=snap, lrs=lrs)
    got = _op("compiled", s, x, d, w0, ci, co, columns=columns, spec=spec, snap=snap, lrs=lrs)
    assert got[3].tolist() == ref[3].tolist() and float(ref[3].sum()) > (100 if path == "bl4" else 30)
    for a, b in zip(got[:3], ref[:3]):
        if b is not None:
            assert torch.equal(a, b)
    assert not torch.equal(ref[0], w0)


# ------------------------------------------------------------------------- CUDA (skipped without a GPU)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("columns", [True, False], ids=["columns", "rows"])
@pytest.mark.parametrize("key", sorted(DEVICES))
def test_cuda_carry_matches_reference(key, columns):
    """The CUDA op's carry kernel (k_carry) against the torch reference on the CPU: identical pulse totals,
    weights and snapshots up to libm rounding."""
    s, x, d, w0, ci, co = _inputs(key, 21, 37)
    snap = [0, 0, -1, 20, 20, -1, 36 if columns else 1, 17]
    ref = _op("reference", s, x, d, w0, ci, co, columns=columns, snap=snap)
    w = w0.cuda()
    wp = w0.clone().cuda() if s.write_noise else None
    snaps, sums = ops.chopped_update_snapshots(w, wp, s.params.cuda(), s.gparams, x.cuda(), d.cuda(), STARTS,
                                               [40 + c for c in range(C)], LRS, ci.cuda(), co.cuda(), snap, columns,
                                               s.dw, AGG, 2**33 + 5, backend="compiled")
    assert sums.tolist() == ref[3].tolist() and float(ref[3].sum()) > 100
    for a, b in zip((w, wp, snaps), ref[:3]):
        if b is not None:
            torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("mode", ["pulsed", "mean_count", "expected"])
def test_cuda_op_per_call_modes_match_cpu(mode):
    """The CUDA op's per-call path (pulsed / mean_count / expected) against the CPU kernel's op."""
    from analogtrain.ops import MODE_EXPECTED, MODE_MEAN_COUNT, MODE_PULSED

    spec = UpdateSpec(mode={"pulsed": MODE_PULSED, "mean_count": MODE_MEAN_COUNT, "expected": MODE_EXPECTED}[mode])
    s, x, d, w0, ci, co = _inputs("softbounds_write_noise", 21, 37)
    cpu = _op("compiled", s, x, d, w0, ci, co, spec=spec)
    w, wp = w0.cuda(), w0.clone().cuda()
    snaps, sums = ops.chopped_update_snapshots(w, wp, s.params.cuda(), s.gparams, x.cuda(), d.cuda(), STARTS,
                                               [40 + c for c in range(C)], LRS, ci.cuda(), co.cuda(), _snap(37), True,
                                               s.dw, spec, 2**33 + 5, backend="compiled")
    torch.testing.assert_close(sums, cpu[3], rtol=1e-6, atol=1e-3)
    for a, b in zip((w, wp, snaps), cpu[:3]):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-6)
