"""The compiled CPU kernel (``csrc/``) against its pure-torch oracle ``ops.reference.pulsed_update_ref``.

Both draw from the same Philox4x32-10 counter layout (``ops/rng.py``), so for the same seed and offset
they must agree *exactly* in every mode: identical pulse counts, and weights equal up to float rounding
of the step functions (C++ compiled without FMA contraction, so in practice bit-identical; exp/pow and
the double-precision Box–Muller may differ from torch's by an ulp, hence allclose at 1e-6).
Statistical checks (Binomial counts) run on the kernel alone.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from analogtrain import ops
from analogtrain.devices import device_from_config, device_step, sample_device
from analogtrain.devices import params as P
from analogtrain.ops import MODE_EXPECTED, MODE_MEAN_COUNT, MODE_PULSED, UpdateSpec
from analogtrain.ops import rng as R
from analogtrain.ops.reference import pulsed_update_ref

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def kernel():
    """Build (or load the cached) CPU kernel once per session; skip cleanly without a compiler."""
    from analogtrain.ops import build

    try:
        build.build_cpu()
    except build.BuildError as e:  # pragma: no cover - machines without a C++ toolchain
        pytest.skip(f"compiled kernel unavailable: {e}")
    return torch.ops.analogtrain


pytestmark = pytest.mark.compiled

# device configs covering every kind / noise placement of devices/params.py
DEVICES = {
    "constant_step": {"name": "constant_step"},
    "linear_step": {"name": "linear_step", "gamma_up": 0.3, "gamma_down": 0.2},
    "linear_step_add": {"name": "linear_step", "gamma_up": 0.3, "gamma_down": 0.2, "mult_noise": False},
    "softbounds": {"name": "softbounds"},
    "softbounds_reference": {"name": "softbounds_reference", "reference_std": 0.05},
    "expstep": {"name": "expstep"},
    "expstep_complex": {"name": "expstep", "dw_min_std_add": 0.002, "dw_min_std_slope": 0.05},
    "powstep": {"name": "powstep", "pow_gamma": 2.0},
    "powstep_reference": {"name": "powstep_reference", "reference_std": 0.05},
    "reram_es": {"name": "reram_es"},  # ExpStep with write noise
    "reram_sb": {"name": "reram_sb"},  # SoftBoundsReference with write noise, additive noise
}


def _dev(key, O, I, seed=3):
    cfg = device_from_config(dict(DEVICES[key]))
    return sample_device(cfg, O, I, seed)


def _inputs(B, O, I, seed=0, zero_frac=0.3, d_scale=0.2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, I, generator=g)
    x[torch.rand(B, I, generator=g) < zero_frac] = 0.0  # ReLU-like zeros: empty trains
    d = torch.randn(B, O, generator=g) * d_scale
    d[torch.rand(B, O, generator=g) < 0.1] = 0.0
    return x, d


def _both(s, x, d, lr, spec, seed=11, offset=5, w0=None, chop_in=None, chop_out=None):
    """Run reference and kernel on identical copies; returns (n_ref, n_k, w_ref, w_k, wp_ref, wp_k)."""
    O, I = s.params.shape[1:]
    if w0 is None:
        g = torch.Generator().manual_seed(1)
        lo = (s.params[P.P_BMIN] - s.params[P.P_REF])
        hi = (s.params[P.P_BMAX] - s.params[P.P_REF])
        w0 = lo + (hi - lo) * torch.rand(O, I, generator=g)
    w_r, w_k = w0.clone(), w0.clone()
    wp_r = w0.clone() if s.write_noise else None
    wp_k = w0.clone() if s.write_noise else None
    n_r = pulsed_update_ref(w_r, wp_r, s.params, s.gparams, x, d, lr, s.dw, spec, seed, offset,
                            chop_in=chop_in, chop_out=chop_out)
    n_k = ops.pulsed_update(w_k, wp_k, s.params, s.gparams, x, d, lr, s.dw, spec, seed, offset,
                            chop_in=chop_in, chop_out=chop_out, backend="compiled")
    return n_r, n_k, w_r, w_k, wp_r, wp_k


def _assert_same(res, exact_weights=False):
    n_r, n_k, w_r, w_k, wp_r, wp_k = res
    assert torch.equal(n_r, n_k), f"pulse counts differ at {int((n_r != n_k).sum())} elements"
    atol = 0.0 if exact_weights else 1e-6
    torch.testing.assert_close(w_k, w_r, rtol=0, atol=atol)
    if wp_r is not None:
        torch.testing.assert_close(wp_k, wp_r, rtol=0, atol=atol)


# ----------------------------------------------------------------------------------------- the RNG


def test_philox_matches_rng_py_word_for_word(kernel):
    a = torch.arange(0, 2000, 7)
    for seed, offset, stream, b, draw in [(0, 0, 1, 0, 0), (123456789, 3, 2, 17, 5),
                                         (2**40 + 99, 2**33 + 1, 3, 4000, 130), (2**63 - 1, 7, 4, 1, 2)]:
        u_k = kernel.philox_uniform(ops._i64(seed), ops._i64(offset), stream, a, b, draw)
        u_r = R.uniform(seed, offset, stream, a, b, draw)
        assert torch.equal(u_k, u_r)
        z_k = kernel.philox_normal(ops._i64(seed), ops._i64(offset), stream, a, b, draw)
        z_r = R.normal(seed, offset, stream, a, b, draw)
        torch.testing.assert_close(z_k, z_r, rtol=0, atol=2e-6)  # double libm vs torch: ≤ 1 float ulp


def test_philox_known_answer_random123():
    # Random123 kat_vectors, philox4x32_10 with counter = key = 0: 6627e8d5 e169c58d bc57ac4c 9b00dbd8
    c = [torch.tensor(0, dtype=torch.int64)] * 4
    r = [int(t) for t in R.philox4x32(*c, seed=0)]
    assert r == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


# -------------------------------------------------------------------------------------- device steps


@pytest.mark.parametrize("key", sorted(DEVICES))
def test_device_step_matches_torch(kernel, key):
    s = _dev(key, 16, 12)
    M = 16 * 12
    g = torch.Generator().manual_seed(2)
    params = s.params.reshape(P.NP, M).contiguous()
    w = params[P.P_BMIN] + (params[P.P_BMAX] - params[P.P_BMIN]) * torch.rand(M, generator=g)
    up = torch.rand(M, generator=g) < 0.5
    xi = torch.randn(M, generator=g)
    use_noise = float(s.gparams[P.G_DW_MIN_STD]) != 0.0
    ref = device_step(w, up, params, s.gparams, xi if use_noise else None)
    got = kernel.device_step(w, up, params, s.gparams, xi)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-7)
    # bounds after the step
    assert bool((got <= params[P.P_BMAX] + 1e-7).all() and (got >= params[P.P_BMIN] - 1e-7).all())


# ---------------------------------------------------------------------------------- update parity

SPECS = {
    "ublm": UpdateSpec(desired_bl=31, ublm=True),
    "um": UpdateSpec(desired_bl=31, ublm=False, um=True),
    "plain": UpdateSpec(desired_bl=20, ublm=False, um=False),
    "free_bl_multiword": UpdateSpec(desired_bl=5, fixed_bl=False, ublm=False, um=False),  # BL = 67: 3 words
    "res": UpdateSpec(desired_bl=31, ublm=True, res=0.05),
    "sto_round": UpdateSpec(desired_bl=31, ublm=False, res=0.1, sto_round=True),
    "grad_scale": UpdateSpec(desired_bl=31, ublm=False, um_grad_scale=3.0),
}


@pytest.mark.parametrize("spec_key", sorted(SPECS))
@pytest.mark.parametrize("mode", [MODE_PULSED, MODE_MEAN_COUNT, MODE_EXPECTED])
def test_update_parity_softbounds_specs(kernel, spec_key, mode):
    s = _dev("softbounds", 20, 24)
    x, d = _inputs(6, 20, 24, seed=mode)
    spec = UpdateSpec(**{**SPECS[spec_key].__dict__, "mode": mode})
    lr = 0.067 if spec_key == "free_bl_multiword" else 0.02
    _assert_same(_both(s, x, d, lr, spec))


@pytest.mark.parametrize("key", sorted(DEVICES))
@pytest.mark.parametrize("mode", [MODE_PULSED, MODE_MEAN_COUNT, MODE_EXPECTED])
def test_update_parity_every_device(kernel, key, mode):
    s = _dev(key, 18, 22)
    x, d = _inputs(5, 18, 22, seed=7)
    _assert_same(_both(s, x, d, 0.05, UpdateSpec(mode=mode), seed=2**40 + 5, offset=2**32 + 9))


def test_update_parity_choppers_negative_lr_dense(kernel):
    s = _dev("softbounds", 16, 20)
    x, d = _inputs(8, 16, 20, seed=3)
    g = torch.Generator().manual_seed(4)
    cin = torch.where(torch.rand(20, generator=g) < 0.5, -1.0, 1.0)
    cout = torch.where(torch.rand(16, generator=g) < 0.5, -1.0, 1.0)
    for lr in (0.5, -0.03):  # dense regime (BL saturated) and the opposite sign
        res = _both(s, x, d, lr, UpdateSpec(), chop_in=cin, chop_out=cout)
        _assert_same(res)
        assert res[0].sum() > 0
    # the choppers flip the direction of exactly the chopped elements (noise-free constant step)
    cs = device_from_config({"name": "constant_step", "dw_min_std": 0.0, "dtod": 0.0, "w_max": 10, "w_min": -10})
    s2 = sample_device(cs, 16, 20, 0)
    one = _both(s2, x, d, 0.05, UpdateSpec(), w0=torch.zeros(16, 20))
    chopped = _both(s2, x, d, 0.05, UpdateSpec(), w0=torch.zeros(16, 20), chop_in=cin, chop_out=cout)
    sign = cout[:, None] * cin[None, :]
    torch.testing.assert_close(chopped[3], one[3] * sign, rtol=0, atol=0)


@pytest.mark.parametrize("key", ["softbounds", "expstep_complex", "reram_sb"])
def test_update_parity_wide_rows_batched_noise(kernel, key):
    """Wide rows with many pulses per (row, sample): exercises the batched (SIMD) Philox + Box–Muller path
    of the CPU kernel (vector libm, ≤ 4 double ulp) — counts identical, weights within float rounding."""
    s = _dev(key, 24, 160)
    x, d = _inputs(4, 24, 160, seed=21, zero_frac=0.05)
    res = _both(s, x, d, 0.3, UpdateSpec(), seed=99, offset=1)
    _assert_same(res)
    per_row_sample = res[0].sum() / (24 * 4)
    assert per_row_sample > 100  # many pulses per row and sample: the batched path ran on full vectors


@pytest.mark.parametrize("key", ["softbounds", "linear_step_add", "powstep"])
@pytest.mark.parametrize("spec", [UpdateSpec(desired_bl=1, ublm=False, um=False), UpdateSpec(desired_bl=31)])
def test_update_parity_single_pulse_regime(kernel, key, spec):
    """BL = 1 (or sparse UBLM): every coincidence is one pulse — the CPU kernel's single-pulse SIMD path."""
    s = _dev(key, 20, 200)
    x, d = _inputs(5, 20, 200, seed=33, zero_frac=0.05, d_scale=0.01)
    res = _both(s, x, d, 0.004, spec, seed=8, offset=3)
    _assert_same(res)
    assert res[0].max() <= 5 and res[0].sum() > 200  # single pulses per sample, many of them


def test_update_parity_edge_cases(kernel):
    s = _dev("softbounds", 10, 12)
    x, d = _inputs(4, 10, 12, seed=9)
    x[1] = 0.0  # a sample with x = 0 (skipped under UM)
    d[2] = 0.0
    _assert_same(_both(s, x, d, 0.03, UpdateSpec()))
    _assert_same(_both(s, x, d, 0.03, UpdateSpec(ublm=False, um=False)))
    res = _both(s, x, d, 0.0, UpdateSpec())  # lr = 0: nothing happens
    _assert_same(res)
    assert res[1].sum() == 0
    res = _both(s, x[:0], d[:0], 0.03, UpdateSpec())  # empty batch
    _assert_same(res)


def test_update_rejects_a_persistent_weight_of_another_shape(kernel):
    """w_p (the visible weight of a write-noise device) must have w's shape: the kernel indexes both with
    the same element offsets, so a w_p of another shape, even of the same size (here transposed), would
    be read and written at the wrong elements. The error names the op and leaves w and w_p untouched."""
    s = _dev("reram_sb", 10, 12)
    x, d = _inputs(4, 10, 12, seed=3)
    w = torch.zeros(10, 12)
    w_p = torch.zeros(12, 10)
    with pytest.raises(RuntimeError, match="analogtrain::pulsed_update: w_p and w shapes differ"):
        ops.pulsed_update(w, w_p, s.params, s.gparams, x, d, 0.03, s.dw, UpdateSpec(), 1, 0, backend="compiled")
    assert w.abs().sum() == 0 and w_p.abs().sum() == 0


def test_update_parity_at_the_edges_of_the_bernoulli_grid(kernel):
    """Train probabilities below one step of the 24-bit Bernoulli grid (0 < p < 2^-24: never fires),
    across the grid's first steps, and saturated (p >= 1 without update management: always fires) give
    the reference's trains and pulse counts exactly (the vectorised threshold paths' corner cases)."""
    s = _dev("softbounds", 12, 40)
    x, d = _inputs(3, 12, 40, seed=21, zero_frac=0.0)
    # |x| relative to the sample's max from 1e-30 up to 1e-6: p from far below 2^-24 to ~16 steps
    x[:, :25] = torch.logspace(-30, -6, 25) * torch.tensor([1.0, -1.0] * 12 + [1.0])
    d[:, :3] = torch.tensor([1e-30, -1e-9, 3e-8])
    _assert_same(_both(s, x, d, 0.03, UpdateSpec()))
    x[:, 25:] = 50.0  # p = |x|·scale >= 1: saturated trains
    _assert_same(_both(s, x, d, 0.03, UpdateSpec(ublm=False, um=False)))


def test_update_exact_bits_linear_kinds(kernel):
    """Without exp/pow the kernel is bit-identical to the torch reference (no FMA, same order)."""
    for key in ("softbounds", "linear_step_add", "constant_step"):
        s = _dev(key, 24, 16)
        x, d = _inputs(6, 24, 16, seed=1)
        _assert_same(_both(s, x, d, 0.1, UpdateSpec()), exact_weights=True)


def test_update_exact_bits_with_dense_mixed_trains(kernel):
    """Dense trains (BL 31 saturated: one to ~30 pulses per element and sample, dozens of elements per row)
    make the fast paths (AVX2 and AVX-512) reorder a row's jobs by pulse count (order_dense_jobs) — the
    numbers must not move: pulse counts equal and weights bit-identical to the reference, multiplicative and
    additive noise, one sample and several."""
    for key in ("softbounds", "linear_step_add"):
        for B in (1, 4):
            s = _dev(key, 10, 72)
            x, d = _inputs(B, 10, 72, seed=31, zero_frac=0.1)
            res = _both(s, x, d, 3.0, UpdateSpec())
            if B == 1:  # premise: per row, many jobs of very different counts (some of 8 pulses or more)
                n = res[0]
                assert float(n.max()) >= 16 and int(((n > 0) & (n < 4)).sum()) >= 20
                assert int((n > 0).sum(dim=1).max()) > 16
            _assert_same(res, exact_weights=True)


@pytest.mark.parametrize("key", ["softbounds", "reram_sb"])
def test_update_parity_mostly_zero_sides(kernel, key):
    """Sides of 32+ entries with at most a quarter non-zero take the kernel's sparse route (only the
    non-zero entries' probabilities and thresholds are computed): a one-hot x with a sparse d (the C
    write of a column transfer), the transposed pattern (a row transfer), and a batch of such samples
    with a varying number of live entries — pulse counts equal to the reference, weights within rounding."""
    O, I = 40, 64
    s = _dev(key, O, I)
    g = torch.Generator().manual_seed(5)
    x_hot = torch.zeros(1, I)
    x_hot[0, 37] = 1.0
    d_sparse = torch.zeros(1, O)
    d_sparse[0, [3, 17, 18, 39]] = torch.tensor([-2.0, 1.0, 3.0, -0.5])
    x_rows = torch.zeros(1, I)
    x_rows[0, [0, 9, 31, 32, 63]] = torch.tensor([1.5, -2.0, 0.7, 2.5, -1.0])
    d_hot = torch.zeros(1, O)
    d_hot[0, 11] = -1.0
    xb = torch.randn(6, I, generator=g)
    xb = xb * (torch.rand(6, I, generator=g) < torch.linspace(0.02, 0.4, 6)[:, None])  # 2–40 % live entries
    db = torch.randn(6, O, generator=g) * (torch.rand(6, O, generator=g) < 0.2)
    for x, d, lr in ((x_hot, d_sparse, 0.4), (x_rows, d_hot, 0.4), (xb, db, 0.5)):
        res = _both(s, x, d, lr, UpdateSpec(), seed=17, offset=2)
        _assert_same(res)
        assert int((res[0] > 0).sum()) >= 4 and float(res[0].sum()) > 20


def test_update_sequence_of_calls_stays_identical(kernel):
    """Many calls with advancing offsets (like a training loop) stay identical: no divergence builds up."""
    s = _dev("reram_sb", 12, 14)
    w_r = torch.zeros(12, 14)
    w_k = w_r.clone()
    wp_r, wp_k = w_r.clone(), w_r.clone()
    for off in range(15):
        x, d = _inputs(4, 12, 14, seed=100 + off)
        n_r = pulsed_update_ref(w_r, wp_r, s.params, s.gparams, x, d, 0.1, s.dw, UpdateSpec(), 5, off)
        n_k = ops.pulsed_update(w_k, wp_k, s.params, s.gparams, x, d, 0.1, s.dw, UpdateSpec(), 5, off,
                                backend="compiled")
        assert torch.equal(n_r, n_k)
    torch.testing.assert_close(w_k, w_r, rtol=0, atol=1e-6)
    torch.testing.assert_close(wp_k, wp_r, rtol=0, atol=1e-6)
    assert not torch.equal(w_k, wp_k)  # write noise really acted on the visible weight


@pytest.mark.parametrize("O,I,aggregate", [(40, 30, False), (200, 180, False), (200, 180, True)])
def test_update_uses_threads_identically(kernel, O, I, aggregate):
    """2 threads give the same result as 1 thread (no shared RNG state). 40×30×8 splits only the samples'
    trains over the threads (a call this small runs its rows on one thread); 200×180×8 runs the rows on
    both threads too, in the exact and in the aggregated mode."""
    s = _dev("softbounds", O, I)
    x, d = _inputs(8, O, I, seed=5)
    out = []
    for nt in (1, 2):
        torch.set_num_threads(nt)
        w = torch.zeros(O, I)
        n = ops.pulsed_update(w, None, s.params, s.gparams, x, d, 0.05, s.dw, UpdateSpec(aggregate=aggregate),
                              1, 2, backend="compiled")
        out.append((n, w))
    torch.set_num_threads(1)
    assert out[0][0].sum() > 1000  # (pulses, so the rows had work)
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


# ------------------------------------------------------------------------------------ statistics


def test_pulse_count_statistics_binomial(kernel):
    """n_ij ~ Binomial(BL, p_x p_d): mean lr|x d|/dw, variance BL·q(1 − q) over many independent samples."""
    cfg = device_from_config({"name": "constant_step", "dw_min_std": 0.0, "dtod": 0.0,
                              "w_max": 100.0, "w_min": -100.0})
    s = sample_device(cfg, 3, 2, 0)
    B = 4000
    x = torch.tensor([[0.8, 0.3]]).repeat(B, 1)
    d = torch.tensor([[0.5, 0.2, 0.05]]).repeat(B, 1)
    lr, bl = 0.01, 31
    spec = UpdateSpec(desired_bl=bl, ublm=False, um=False)
    counts = torch.stack([
        ops.pulsed_update(torch.zeros(3, 2), None, s.params, s.gparams, x[b:b + 1], d[b:b + 1], lr, s.dw, spec,
                          9, b, backend="compiled")
        for b in range(0, B, 8)])  # 500 independent calls (offsets)
    batch = ops.pulsed_update(torch.zeros(3, 2), None, s.params, s.gparams, x, d, lr, s.dw, spec, 9, 10**6,
                              backend="compiled") / B
    scale = math.sqrt(lr / (s.dw * bl))
    q = (d[0, :, None] * scale) * (x[0, None, :] * scale)
    mean, var = counts.mean(0), counts.var(0)
    torch.testing.assert_close(batch, bl * q, rtol=0.03, atol=0.01)  # 4000 samples
    torch.testing.assert_close(mean, bl * q, rtol=0.1, atol=0.03)
    torch.testing.assert_close(var, bl * q * (1 - q), rtol=0.2, atol=0.03)
    torch.testing.assert_close(batch * s.dw, lr * d[0, :, None] * x[0, None, :], rtol=0.03, atol=2e-5)


def test_um_saturation_counts(kernel):
    """§1.2: dw 0.001, lr 0.01, BL 10, x = (4, 2), d = (0.5, 0.05): mean (10, 5 | 2, 1) pulses per sample."""
    cfg = device_from_config({"name": "constant_step", "dw_min": 0.001, "dw_min_std": 0.0, "dtod": 0.0,
                              "w_max": 100.0, "w_min": -100.0})
    s = sample_device(cfg, 2, 2, 0)
    nb = 3000
    x = torch.tensor([[4.0, 2.0]]).repeat(nb, 1)
    d = torch.tensor([[0.5, 0.05]]).repeat(nb, 1)
    n = ops.pulsed_update(torch.zeros(2, 2), None, s.params, s.gparams, x, d, 0.01, s.dw,
                          UpdateSpec(desired_bl=10, ublm=False, um=True), 3, 0, backend="compiled") / nb
    assert n[0, 0].item() == 10.0
    torch.testing.assert_close(n, torch.tensor([[10.0, 5.0], [2.0, 1.0]]), rtol=0, atol=0.12)


# -------------------------------------------------------------------------------------- dispatch


def test_backend_switch_and_errors(kernel, monkeypatch):
    from analogtrain.config.errors import ConfigError
    from analogtrain.ops import build

    with pytest.raises(ConfigError, match="tile.backend"):
        ops.set_backend("fast")
    assert ops.get_backend() in ops.BACKENDS
    # a failed build: 'compiled' raises, 'auto' warns once and falls back to the reference
    monkeypatch.setattr(ops, "_READY", set())
    monkeypatch.setattr(ops, "_FAILED", {})

    def boom(*a, **k):
        raise build.BuildError("no compiler (test)")

    monkeypatch.setattr(build, "build_cpu", boom)
    s = _dev("softbounds", 4, 5)
    x, d = _inputs(2, 4, 5)
    with pytest.raises(build.BuildError):
        ops.pulsed_update(torch.zeros(4, 5), None, s.params, s.gparams, x, d, 0.1, s.dw, UpdateSpec(), 1, 0,
                          backend="compiled")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        w1 = torch.zeros(4, 5)
        ops.pulsed_update(w1, None, s.params, s.gparams, x, d, 0.1, s.dw, UpdateSpec(), 1, 0, backend="auto")
        ops.pulsed_update(torch.zeros(4, 5), None, s.params, s.gparams, x, d, 0.1, s.dw, UpdateSpec(), 1, 0,
                          backend="auto")
    msgs = [str(r.message) for r in rec if issubclass(r.category, RuntimeWarning)]
    assert len(msgs) == 1 and "falling back" in msgs[0]
    w2 = torch.zeros(4, 5)
    pulsed_update_ref(w2, None, s.params, s.gparams, x, d, 0.1, s.dw, UpdateSpec(), 1, 0)
    assert torch.equal(w1, w2)
    with pytest.raises(build.BuildError, match="no compiler"):  # compiled after a failed auto: still loud
        ops.pulsed_update(torch.zeros(4, 5), None, s.params, s.gparams, x, d, 0.1, s.dw, UpdateSpec(), 1, 0,
                          backend="compiled")


def test_default_backend_is_auto_and_uses_kernel(kernel, monkeypatch):
    from analogtrain.tiles.config import TileConfig

    assert TileConfig().backend == "auto"
    monkeypatch.setattr(ops, "_READY", set())
    monkeypatch.setattr(ops, "_FAILED", {})
    monkeypatch.setattr(ops, "_BACKEND", "auto")
    s = _dev("softbounds", 4, 5)
    x, d = _inputs(2, 4, 5)
    ops.pulsed_update(torch.zeros(4, 5), None, s.params, s.gparams, x, d, 0.1, s.dw, UpdateSpec(), 1, 0)
    assert ops._READY == {"cpu"} and not ops._FAILED  # auto routed the call to the compiled kernel


def test_prepare_kernel_builds_up_front_per_backend(kernel, monkeypatch):
    """ops.prepare_kernel (a run calls it before its first step): the backend's implementation, the
    compiled kernel built here, not in the first op; a failed build under 'auto' warns and reports the
    reference, under 'compiled' raises; 'reference' builds nothing."""
    from analogtrain.ops import build

    monkeypatch.setattr(ops, "_READY", set())
    monkeypatch.setattr(ops, "_FAILED", {})
    monkeypatch.setattr(ops, "_BACKEND", "auto")
    assert ops.prepare_kernel("cpu") == "compiled" and ops._READY == {"cpu"}

    def boom(*a, **k):
        raise build.BuildError("no compiler (test)")

    monkeypatch.setattr(build, "build_cpu", boom)
    monkeypatch.setattr(ops, "_READY", set())
    monkeypatch.setattr(ops, "_BACKEND", "reference")
    assert ops.prepare_kernel("cpu") == "reference" and not ops._FAILED  # (boom was not called)
    monkeypatch.setattr(ops, "_BACKEND", "compiled")
    with pytest.raises(build.BuildError, match="no compiler"):
        ops.prepare_kernel("cpu")
    monkeypatch.setattr(ops, "_BACKEND", "auto")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert ops.prepare_kernel("cpu") == "reference"
    assert [str(r.message) for r in rec if "falling back" in str(r.message)]


def test_build_logs_a_compile_and_not_a_cached_load(kernel, monkeypatch, tmp_path, caplog):
    """A library missing from the extension cache is announced before the compile and timed after it; a
    cached one loads without a word (cpp_extension.load replaced by a fake that writes the library)."""
    import logging

    from torch.utils import cpp_extension

    from analogtrain.ops import build

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(build, "_loaded", {})
    calls = []

    def fake_load(name, **kw):
        calls.append(name)
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / f"{name}.so").write_bytes(b"")

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    name = build.build_name("cpu", build.CPU_SOURCES, ["-O3"])
    assert build.cached_library(name) is None
    with caplog.at_level(logging.INFO, logger="analogtrain.ops.build"):
        got = build.build_cpu()
    assert calls == [got] and build.cached_library(got) == tmp_path / got / f"{got}.so"
    msgs = [r.getMessage() for r in caplog.records if r.name == "analogtrain.ops.build"]
    assert len(msgs) == 2 and msgs[0].startswith(f"building the compiled cpu kernel {got}"), msgs
    assert msgs[1].startswith(f"built {got} in ") and str(tmp_path) in msgs[1]
    caplog.clear()
    monkeypatch.setattr(build, "_loaded", {})  # another process: the library is in the cache now
    with caplog.at_level(logging.INFO, logger="analogtrain.ops.build"):
        assert build.build_cpu() == got
    assert calls == [got, got] and not [r for r in caplog.records if r.name == "analogtrain.ops.build"]


def test_random_grid_matches_rng(kernel):
    b_idx = torch.tensor([0, 5, 2**32 + 7, 64])
    for seed, offset, stream, draw in [(3, 0, 16, 0), (2**50 + 1, 9, 17, 5), (7, 2**34, 18, 10), (1, 1, 19, 3)]:
        a = torch.arange(300)[None, :]
        for normal in (True, False):
            got = ops.random_grid(seed, offset, stream, 300, b_idx, draw, normal=normal, backend="compiled")
            f = R.normal if normal else R.uniform
            want = f(seed, offset, stream, a, (b_idx & 0xFFFFFFFF)[:, None], draw)
            if normal:
                torch.testing.assert_close(got, want, rtol=0, atol=2e-6)
                assert (got != want).float().mean() < 1e-3
            else:
                assert torch.equal(got, want)
            ref = ops.random_grid(seed, offset, stream, 300, b_idx, draw, normal=normal, backend="reference")
            assert torch.equal(ref, want)


def test_build_sources_found_and_cache_name_hashes_sources(tmp_path, monkeypatch):
    from analogtrain.ops import build

    d = build.csrc_dir()
    for name in build.CPU_SOURCES + build.CUDA_SOURCES + build.HEADERS:
        assert (d / name).is_file(), name
    # every header is in the cache name's hash: an edit to one not listed would load a stale library
    assert {p.name for p in d.glob("*.h")} <= set(build.HEADERS)
    flags = ["-O3"]
    n1 = build.build_name("cpu", build.CPU_SOURCES, flags)
    for name in build.CPU_SOURCES + build.HEADERS:
        (tmp_path / name).write_bytes((d / name).read_bytes())
    monkeypatch.setattr(build, "csrc_dir", lambda: tmp_path)
    assert build.build_name("cpu", build.CPU_SOURCES, flags) == n1  # same bytes, same cache entry
    (tmp_path / "device_step.h").write_text((d / "device_step.h").read_text() + "\n// changed\n")
    assert build.build_name("cpu", build.CPU_SOURCES, flags) != n1  # a changed header rebuilds
    assert build.build_name("cpu", build.CPU_SOURCES, flags + ["-O2"]) != build.build_name(
        "cpu", build.CPU_SOURCES, flags)


def test_uniform_scalar_matches_rng():
    """``ops.uniform_scalar`` (Python-int Philox for one draw, used by per-event chopper flips) returns
    exactly ``rng.uniform``'s float32 for arbitrary 64-bit seeds, offsets, streams and indices."""
    import random

    from analogtrain.ops import rng

    r = random.Random(7)
    for _ in range(300):
        s, o, st = r.getrandbits(63), r.getrandbits(40), r.randrange(256)
        a, b, k = r.getrandbits(32), r.getrandbits(32), r.randrange(64)
        assert ops.uniform_scalar(s, o, st, a, b, k) == float(rng.uniform(s, o, st, a, b, k))


def test_uniform_counters_match_rng():
    """``ops.uniform_counters`` (numpy Philox over per-element offsets, a and b: a batch's chopper draws)
    returns ``rng.uniform``'s float32 values element by element as a float64 array, indices beyond 32 bits
    wrapped."""
    import random

    from analogtrain.ops import rng

    r = random.Random(11)
    for _ in range(40):
        s, st, k = r.getrandbits(64), r.randrange(256), r.randrange(64)
        offs = [r.getrandbits(40) for _ in range(17)]
        a = [r.getrandbits(34) for _ in range(17)]
        b = [r.getrandbits(33) for _ in range(17)]
        got = ops.uniform_counters(s, offs, st, a, b, k)
        want = [float(rng.uniform(s, o, st, x & 0xFFFFFFFF, y & 0xFFFFFFFF, k)) for o, x, y in zip(offs, a, b)]
        assert got.dtype == np.float64 and got.tolist() == want
