"""Batched transfer schedule (``TransferRule._update_batched`` + ``ops.chopped_update_snapshots``) ≡ the
per-sample loop, bit for bit, on the compiled kernel and on the torch reference.

The per-sample path (``analogtrain.algorithms.transfer.BATCHED_TRANSFERS = False``) makes one pulsed
update of A per chunk/sample, one noisy read per transfer, the fused buffer/C-write op and the chopper
draws, one after the other. The batched path plans the chopper sequence, runs all A updates in one op
with snapshots, reads all snapshots at once and replays the digital part. Every buffer of the rule
(A, C, H, choppers, EMAs, running/past means, RNG offsets, pulse statistics) must come out equal.
"""

from __future__ import annotations

import pytest
import torch

import analogtrain.algorithms.transfer as transfer_mod
from analogtrain import ops
from analogtrain.algorithms.theory import build_rule
from analogtrain.ops import UpdateSpec
from analogtrain.ops.reference_chopped import chopped_update_snapshots_ref, grid_offsets_ref

torch.set_num_threads(1)

BACKENDS = ["reference"] + (["compiled"] if ops.compiled_available("cpu") else [])

# noisy softbounds with cycle-to-cycle noise and write noise: every random stream of the update is used
NOISY = {"name": "softbounds", "dw_min": 0.02, "write_noise_std": 0.5}
# transfer reads with every noise / quantiser the snapshot read reproduces
READ_IO = {"noise_management": "none", "bound_management": "none", "out_noise": 0.06, "w_noise": 0.02,
           "w_noise_type": "pcm_read", "inp_res": 1.0 / 126, "out_res": 1.0 / 510, "out_asymmetry": 0.05}
# the other branches of the read periphery: stochastic DAC rounding (the one-hot's 1 becomes 0.96 or 1.2,
# a draw per read and element) and ADC rounding, additive w-noise (the input's norm), negative-input
# asymmetry; the deterministic twin has a DAC bound below 1 (the one-hot's 1 clipped). A fine ADC keeps
# small errors of the read visible in the state.
READ_IO_STO = {"noise_management": "none", "bound_management": "none", "out_noise": 0.06, "w_noise": 0.02,
               "w_noise_type": "additive_constant", "inp_res": 1.0 / 10, "inp_sto_round": True,
               "inp_bound": 1.2, "inp_asymmetry": 0.1, "out_res": 1e-6, "out_sto_round": True}
READ_IO_DET = dict(READ_IO_STO, inp_sto_round=False, inp_bound=0.9)


def _run(algo, kw, batched, backend, *, size=(5, 4), batches=5, batch=6, tile_kw=None, device=NOISY, lr=0.1):
    ops.set_backend(backend)
    old = transfer_mod.BATCHED_TRANSFERS
    transfer_mod.BATCHED_TRANSFERS = batched
    calls = []
    try:
        rule = build_rule(algo, device, size[0], size[1], algo_kw=kw, tile_kw=tile_kw, seed=3)
        inner = rule._update_batched
        rule._update_batched = lambda *a: (calls.append(1), inner(*a))  # instance attribute: counts uses
        g = torch.Generator().manual_seed(1)
        for _ in range(batches):
            x = torch.rand(batch, size[1], generator=g)
            d = 0.3 * torch.randn(batch, size[0], generator=g)
            rule.update(x, d, lr)
        del rule._update_batched
    finally:
        transfer_mod.BATCHED_TRANSFERS = old
        ops.set_backend("auto")
    assert len(calls) == (batches if batched else 0)  # the path under test really ran
    return rule


def _assert_same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


CASES = {
    "cttv2_random": ("cttv2", {"in_chop_prob": 0.4, "in_chop_random": True, "fast_lr": 0.5}),
    "cttv2_regular": ("cttv2", {"in_chop_prob": 0.5, "in_chop_random": False, "fast_lr": 0.5}),
    "cttv2_out_chop": ("cttv2", {"in_chop_prob": 0.3, "out_chop_prob": 0.5, "fast_lr": 0.5}),
    "cttv2_auto_scale": ("cttv2", {"in_chop_prob": 0.3, "auto_scale": True, "fast_lr": 0.2}),
    # the buffer scale divides by A's fast lr at the read, which moves per sample with auto_scale
    "cttv2_auto_scale_corrected": ("cttv2", {"in_chop_prob": 0.3, "auto_scale": True, "fast_lr": 0.2,
                                             "correct_gradient_magnitudes": True}),
    "cttv2_gamma": ("cttv2", {"in_chop_prob": 0.3, "gamma": 0.5, "fast_lr": 0.5, "transfer_forward": READ_IO}),
    "cttv2_every2": ("cttv2", {"in_chop_prob": 0.3, "transfer_every": 2, "fast_lr": 0.5}),
    "cttv2_every2_auto": ("cttv2", {"in_chop_prob": 0.3, "transfer_every": 2, "auto_scale": True,
                                    "fast_lr": 0.2}),
    # chunks that straddle batches (every 4, batch 6) and batches without any read (every 7)
    "cttv2_every4": ("cttv2", {"in_chop_prob": 0.3, "transfer_every": 4, "fast_lr": 0.5}),
    "cttv2_every7_auto": ("cttv2", {"in_chop_prob": 0.3, "transfer_every": 7, "auto_scale": True,
                                    "fast_lr": 0.2}),
    "cttv2_rows": ("cttv2", {"in_chop_prob": 0.3, "out_chop_prob": 0.3, "transfer_columns": False,
                             "fast_lr": 0.5}),
    "cttv2_reference_array": ("cttv2", {"in_chop_prob": 0.3, "fast_lr": 0.5, "subtract_symmetry_point": True,
                                        "reference_std": 0.01}),
    "agad_warmup": ("agad", {"in_chop_prob": 0.5, "fast_lr": 0.5}),  # N = 2: warm-up, then writes
    "agad_random_auto": ("agad", {"in_chop_prob": 0.4, "in_chop_random": True, "auto_scale": True,
                                  "fast_lr": 0.2, "transfer_forward": READ_IO}),
    # β = tail_weightening/N < 1 (the presets' 5/50): M is a real running mean, not the last read
    "agad_tail": ("agad", {"in_chop_prob": 0.3, "in_chop_random": True, "tail_weightening": 1.5,
                           "fast_lr": 0.5}),
    "agad_cap": ("agad", {"in_chop_prob": 0.5, "forget_buffer": False, "buffer_cap": 2.0, "fast_lr": 0.5,
                          "experimental_correct_accumulation": True}),
    "ttv2_one_read": ("ttv2", {"units_in_mbatch": False, "transfer_every": 1, "fast_lr": 0.5}),
    "cttv2_sto_io": ("cttv2", {"in_chop_prob": 0.3, "fast_lr": 0.5, "transfer_forward": READ_IO_STO}),
    "cttv2_det_io": ("cttv2", {"in_chop_prob": 0.3, "fast_lr": 0.5, "transfer_forward": READ_IO_DET}),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", [(5, 4), (4, 9)], ids=["wraps", "distinct"])
@pytest.mark.parametrize("case", list(CASES))
def test_batched_schedule_equals_per_sample_loop(case, size, backend, monkeypatch):
    """size (5, 4): 6 reads per batch > 4 slices (a slice read twice per batch: AGAD's signals in rounds
    of distinct slices); (4, 9): distinct slices per batch. Both through ONE ``buffered_transfer_seq``."""
    algo, kw = CASES[case]
    nb = 5 if size == (5, 4) else 10  # AGAD's warm-up (N + 1 sweeps) must end inside the run
    ref = _run(algo, kw, False, backend, size=size, batches=nb)
    seq_calls = []
    inner = ops.buffered_transfer_seq
    monkeypatch.setattr(ops, "buffered_transfer_seq", lambda *a, **k: (seq_calls.append(1), inner(*a, **k))[1])
    new = _run(algo, kw, True, backend, size=size, batches=nb)
    _assert_same(ref, new)
    every = int(kw.get("transfer_every", 1))
    with_reads = sum(1 for b in range(nb) if 6 * (b + 1) // every > 6 * b // every)
    assert len(seq_calls) == with_reads  # one per batch with reads, whatever the reads per slice
    # the comparison is not vacuous: A moved, C was written, the schedule ran (and choppers flipped)
    assert int(new.transfers) == 6 * nb // every >= 4
    assert float(new.pulses_a) > 0 and float(new.pulses_c) > 0
    if "in_chop_prob" in kw and algo != "ttv2":
        assert int(new.flips) > 0
    assert not torch.equal(new.A.w, torch.zeros_like(new.A.w))


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_schedule_follows_sweep_dependent_hooks(backend, monkeypatch):
    """Hooks whose values change with the sweep (as AGAD's do) keep their per-sweep values in the
    batched plan: c-TTv2 with write permission on even sweeps only and half the accumulation scale on
    sweeps ≡ 2 (mod 3) equals its per-sample loop (ChoppedRule's own hooks ignore the sweep, and
    planned_scales then takes one run: a patched rule must not)."""
    from analogtrain.algorithms.cttv2 import ChoppedRule

    base_scale = ChoppedRule.accumulation_scale

    def write_allowed(self, sweeps=None):
        return (int(self.sweeps) if sweeps is None else sweeps) % 2 == 0

    def accumulation_scale(self, lr, sweeps=None, lr_a=None):
        s = int(self.sweeps) if sweeps is None else sweeps
        return base_scale(self, lr, sweeps, lr_a) * (0.5 if s % 3 == 2 else 1.0)

    monkeypatch.setattr(ChoppedRule, "write_allowed", write_allowed)
    monkeypatch.setattr(ChoppedRule, "accumulation_scale", accumulation_scale)
    kw = {"in_chop_prob": 0.3, "fast_lr": 0.5}
    ref = _run("cttv2", kw, False, backend, size=(4, 2), batch=8, batches=6)
    new = _run("cttv2", kw, True, backend, size=(4, 2), batch=8, batches=6)
    _assert_same(ref, new)
    assert int(new.sweeps) >= 6 and float(new.pulses_c) > 0


@pytest.mark.skipif("compiled" not in BACKENDS, reason="compiled CPU kernel not available")
@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("m0", [(0.0, 0.0), (0.7, 0.02)], ids=["cold", "warm"])
def test_auto_scale_lrs_compiled_equals_python_loop(scaled, m0):
    """The compiled auto-scale loop gives the Python loop's float64 numbers bit for bit: EMAs that start
    at 0 (first value taken), samples with max 0 (EMA kept; lr = fast_lr while an EMA is 0), and the
    (fast_lr·BL)·dw / (m_x·m_d) lrs, scaled by the SGD lr or not."""
    g = torch.Generator().manual_seed(5)
    xm = torch.rand(2000, generator=g, dtype=torch.float64) * 3.0
    dm = torch.rand(2000, generator=g, dtype=torch.float64) * 0.05
    xm[::7] = 0.0  # all-zero patches (image border)
    dm[:3] = 0.0
    args = (m0[0], m0[1], 0.9 / 2000, 0.5 * 31 * 0.001, 0.5, 0.03, scaled)
    ops.set_backend("compiled")
    try:
        got = ops.auto_scale_lrs(xm, dm, *args)
    finally:
        ops.set_backend("auto")
    want = ops.auto_scale_lrs_ref(xm.tolist(), dm.tolist(), *args)
    assert got[1:] == want[1:]
    assert got[0].tolist() == want[0]  # every lr, exactly
    assert len(set(want[0])) > 1000  # the EMAs really moved


@pytest.mark.parametrize("backend", BACKENDS)
def test_agad_batched_rounds_equal_loop_when_slices_repeat_often(backend, monkeypatch):
    """AGAD with every slice read four times per batch (2 columns, batch 8): its batched signals run in
    four rounds, each seeing the running mean M and the switched flags the earlier rounds left (P ← M at
    the first read after a flip). Equal to the one-by-one loop, with the flags really used."""
    kw = {"in_chop_prob": 0.45, "in_chop_random": True, "fast_lr": 0.5, "tail_weightening": 2.0}  # β = 2/3
    switched = []
    from analogtrain.algorithms.agad import AGADRule

    inner = AGADRule.batch_signals

    def spy(self, k, v, flips):
        switched.append(int(self.switched.sum()))
        return inner(self, k, v, flips)

    ref = _run("agad", kw, False, backend, size=(4, 2), batch=8, batches=8)
    monkeypatch.setattr(AGADRule, "batch_signals", spy)
    new = _run("agad", kw, True, backend, size=(4, 2), batch=8, batches=8)
    _assert_same(ref, new)
    assert len(switched) == 8 and sum(switched) > 0  # batches started with switched columns
    assert int(new.flips) >= 8 and float(new.pulses_c) > 0
    assert not torch.equal(new.P, torch.zeros_like(new.P))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["mean_count", "expected"])
def test_batched_schedule_other_update_modes(mode, backend):
    kw = {"in_chop_prob": 0.3, "out_chop_prob": 0.3, "fast_lr": 0.5}
    ref = _run("cttv2", kw, False, backend, tile_kw={"update_mode": mode})
    new = _run("cttv2", kw, True, backend, tile_kw={"update_mode": mode})
    _assert_same(ref, new)
    assert float(new.pulses_a) > 0


@pytest.mark.skipif("compiled" not in BACKENDS, reason="compiled kernel unavailable")
def test_batched_compiled_equals_batched_reference_on_noise_free_device():
    """Across backends (noise-free constant-step devices, perfect reads: no libm in the numbers)."""
    dev = {"name": "constant_step", "dw_min": 0.05, "dw_min_dtod": 0.0, "dw_min_std": 0.0, "up_down": 0.0,
           "up_down_dtod": 0.0, "w_max_dtod": 0.0, "w_min_dtod": 0.0}
    kw = {"in_chop_prob": 0.4, "in_chop_random": True, "out_chop_prob": 0.3, "fast_lr": 0.5,
          "transfer_forward": {"is_perfect": True}}
    a = _run("cttv2", kw, True, "compiled", device=dev)
    b = _run("cttv2", kw, True, "reference", device=dev)
    _assert_same(a, b)


def _op_inputs(seed=0, O=6, I=5, B=7):
    g = torch.Generator().manual_seed(seed)
    from analogtrain.devices import device_from_config, sample_device

    s = sample_device(device_from_config(dict(NOISY)), O, I, 11)
    x = torch.rand(B, I, generator=g)
    d = torch.randn(B, O, generator=g)
    w = 0.1 * torch.randn(O, I, generator=g)
    return s, x, d, w


# (backend, threads, O): with 2 threads the compiled op splits the rows into two blocks (O = 7: 3 and 4)
OP_CASES = [(b, 1, 6) for b in BACKENDS] + [("compiled", 2, o) for o in (6, 7) if "compiled" in BACKENDS]


@pytest.mark.parametrize("backend,threads,O", OP_CASES)
@pytest.mark.parametrize("columns", [True, False])
def test_op_equals_separate_pulsed_update_calls(backend, threads, O, columns):
    """The op itself: C calls with their own offsets, lrs and choppers, snapshots after the marked calls.
    With 2 threads the compiled op splits the rows into two blocks that each go through all the calls:
    the same weights, snapshots and call totals."""
    s, x, d, w0 = _op_inputs(O=O)
    O, I = w0.shape
    spec = UpdateSpec()
    starts, offsets, lrs = [0, 1, 3, 4, 7], [10, 11, 12, 13], [0.3, -0.2, 0.5, 0.1]
    g = torch.Generator().manual_seed(5)
    ci = torch.where(torch.rand(4, I, generator=g) < 0.5, -1.0, 1.0)
    co = torch.where(torch.rand(4, O, generator=g) < 0.5, -1.0, 1.0)
    snap = [2, -1, 0, 3]
    seed = 1234567

    w_a, wp_a = w0.clone(), w0.clone()
    snaps_exp, sums_exp = [], []
    for c in range(4):
        p = ops.pulsed_update(w_a, wp_a, s.params, s.gparams, x[starts[c]:starts[c + 1]], d[starts[c]:starts[c + 1]],
                              lrs[c], s.dw, spec, seed, offsets[c], chop_in=ci[c], chop_out=co[c], backend=backend)
        sums_exp.append(float(p.sum()))
        snaps_exp.append(None if snap[c] < 0 else (w_a[:, snap[c]] if columns else w_a[snap[c]]).clone())
    w_b, wp_b = w0.clone(), w0.clone()
    torch.set_num_threads(threads)
    try:
        snaps, sums = ops.chopped_update_snapshots(w_b, wp_b, s.params, s.gparams, x, d, starts, offsets, lrs,
                                                   ci, co, snap, columns, s.dw, spec, seed, backend=backend)
    finally:
        torch.set_num_threads(1)
    assert torch.equal(w_a, w_b) and torch.equal(wp_a, wp_b)
    assert sums.tolist() == sums_exp and sum(sums_exp) > 0
    for c in range(4):
        if snap[c] >= 0:
            assert torch.equal(snaps[c], snaps_exp[c])
        else:
            assert torch.equal(snaps[c], torch.zeros_like(snaps[c]))


@pytest.mark.skipif("compiled" not in BACKENDS, reason="compiled CPU kernel not available")
@pytest.mark.parametrize("threads", [1, 2])
def test_op_refuses_a_snapshot_slice_out_of_range_before_any_update(threads):
    """A snapshot slice beyond the tile (column 5 of a 6×5 tile, marked on the last call) is refused with
    a message naming it, before any call has changed the weights (one thread or the row blocks)."""
    s, x, d, w0 = _op_inputs()
    w = w0.clone()
    torch.set_num_threads(threads)
    try:
        with pytest.raises(RuntimeError, match="snapshot slice out of range"):
            ops.chopped_update_snapshots(w, None, s.params, s.gparams, x, d, [0, 1, 3, 4, 7], [10, 11, 12, 13],
                                         [0.3, -0.2, 0.5, 0.1], None, None, [2, -1, 0, 5], True, s.dw,
                                         UpdateSpec(), 1, backend="compiled")
    finally:
        torch.set_num_threads(1)
    assert torch.equal(w, w0)


def test_grid_offsets_rows_equal_single_offset_grids():
    offs = torch.tensor([0, 7, 2**32 + 3, 123456])
    b = torch.tensor([0, 1, 0, 5])
    for normal in (True, False):
        got = grid_offsets_ref(99, offs, 18, 9, b, 8 if not normal else 1, normal)
        for q in range(4):
            exp = ops.random_grid(99, int(offs[q]), 18, 9, b[q:q + 1], 8 if not normal else 1, normal=normal,
                                  backend="reference")
            assert torch.equal(got[q:q + 1], exp)
        if "compiled" in BACKENDS:
            comp = ops.random_grid_offsets(99, offs, 18, 9, b, 8 if not normal else 1, normal=normal,
                                           backend="compiled")
            for q in range(4):
                exp = ops.random_grid(99, int(offs[q]), 18, 9, b[q:q + 1], 8 if not normal else 1, normal=normal,
                                      backend="compiled")
                assert torch.equal(comp[q:q + 1], exp)


def test_ref_twin_matches_contract_shapes():
    s, x, d, w0 = _op_inputs()
    snaps, sums = chopped_update_snapshots_ref(w0.clone(), None, s.params, s.gparams, x, d, [0, 7], [0], [0.2],
                                               None, None, [-1], True, s.dw, UpdateSpec(), 1)
    assert snaps.shape == (1, w0.shape[0]) and sums.shape == (1,) and sums.dtype == torch.float64
