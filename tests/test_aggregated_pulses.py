"""Aggregated pulses (``tile.update_mode: aggregated``, contract version 4): the pulse counts of the pulsed
mode, but every element carries the exact mean and variance of its conductance through all its pulses of
one op call and draws ONE normal at the end (KIND_LINEAR devices, whose per-pulse map is affine); version
4 evaluates the geometric sums of samples with 2-4 pulses as binomial polynomials (no log1p/expm1);
version 5 draws the final normal with the counters (a = e >> 2, draw = e & 3), four elements per Philox
call.

Checked here:
* ``devices.step.aggregate_moments`` / ``aggregate_step`` against the moments evaluated in float64 by
  the per-pulse recursions (one sample, and a sequence of samples with both signs), and against a
  Monte-Carlo of the per-pulse chain ``device_step`` (mean and variance; this also checks the
  derivation, including the (1 + (ασ/A)²) factor of multiplicative noise);
* the reference op: pulse counts are those of the pulsed mode, noise-free devices give the pulsed
  weights up to float rounding (bounds included), write noise is drawn once at the end, degenerate
  devices use the clamped α, and over many seeds the dense batched update moves the weights like the
  pulsed mode (paired by seed);
* config: the mode maps to ``UpdateSpec(mode=MODE_PULSED, aggregate=True)``, the op encodes it as
  ``mode | AGGREGATE_BIT``, and non-linear devices are rejected naming ``tile.update_mode``;
* rules (SGD, c-TTv2 batched schedule) and the compiled CPU / CUDA kernels against the reference
  (skipped while the kernel lacks the mode). The batched TT-family op, whose moments are carried across
  its calls, has its own tests: tests/test_chopped_carry.py.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from analogtrain import ops
from analogtrain.config.errors import ConfigError
from analogtrain.devices import device_from_config, device_step, sample_device
from analogtrain.devices import params as P
from analogtrain.devices.step import AGG_ALPHA_MIN, aggregate_finish, aggregate_moments, aggregate_step
from analogtrain.ops import AGGREGATE_BIT, MODE_EXPECTED, MODE_MEAN_COUNT, MODE_PULSED, UpdateSpec, _spec_args
from analogtrain.ops import rng as R
from analogtrain.ops.reference import pulsed_update_ref

torch.set_num_threads(1)

AGG = UpdateSpec(aggregate=True)  # BL 31, UBLM, UM: the product default update, aggregated
PULSED = UpdateSpec()

# Devices with large slopes |α| = dw/bound (0.015-0.2), so that the geometric sums differ clearly from n
# (a wrong mean or variance formula shows up well beyond the statistical tolerance). Step and bound
# spreads are small so that no sampled element is degenerate (1 + α <= 0) and the aggregated Gaussian
# step stays > 3.5 standard deviations from the soft bound it approaches (no clipping bias).
_SMALL_DTOD = {"dw_min_dtod": 0.05, "w_max_dtod": 0.05, "w_min_dtod": 0.05}
SB_MULT = {"name": "softbounds", "dw_min": 0.04, "w_max": 0.3, "w_min": -0.3, "dw_min_std": 0.3,
           **_SMALL_DTOD}  # α_up = −scale_up/b_max ≈ −0.13, α_down ≈ −0.13, multiplicative noise
SB_STEEP = {**SB_MULT, "dw_min": 0.06}  # α ≈ −0.2: the (1 + (ασ/A)²) variance factor is ~8% at n = 31
LS_ADD = {"name": "linear_step", "dw_min": 0.01, "w_max": 2.0, "w_min": -2.0, "gamma_up": -3.0,
          "gamma_down": 0.5, "allow_increasing": True, "mult_noise": False, "dw_min_std": 0.3,
          **_SMALL_DTOD}  # α_up ≈ +0.015 (steps grow towards b_max), α_down ≈ −0.0025, additive noise
CONST = {"name": "constant_step", "dw_min": 0.01, "w_max": 1.0, "w_min": -1.0, "dw_min_std": 0.3,
         **_SMALL_DTOD}  # α = 0


def _flat(cfg: dict, m: int, seed: int = 0):
    """(params (NP, m), gparams) of m sampled devices of ``cfg``."""
    s = sample_device(device_from_config(dict(cfg)), 1, m, seed)
    return s.params.reshape(P.NP, m), s.gparams


def _start(params: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """Start weights uniform in [0.3·b_min, 0.3·b_max] per element (far from both bounds)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(params.shape[1], generator=g)
    return 0.3 * (params[P.P_BMIN] + (params[P.P_BMAX] - params[P.P_BMIN]) * u)


def _moments64(w0, n: int, up: bool, params, sigma: float, mult: bool, v0=None):
    """Mean and variance of the unclipped n-pulse chain from the recursions of the moments, in float64:
    m_{k+1} = A·m_k + g·c;  mult: V_{k+1} = (A² + α²σ²)·V_k + σ²·(α·m_k + g·c)²;  additive:
    V_{k+1} = A²·V_k + σ²·c² (exact for the affine per-pulse map; no closed form used). Starts from
    mean w0 and variance v0 (default 0)."""
    g = 1.0 if up else -1.0
    s = (params[P.P_SLOPE_UP] if up else params[P.P_SLOPE_DOWN]).double()
    c = (params[P.P_SCALE_UP] if up else params[P.P_SCALE_DOWN]).double()
    alpha, a = g * s, 1.0 + g * s
    m = w0.double().clone()
    v = torch.zeros_like(m) if v0 is None else v0.double().clone()
    for _ in range(n):
        if mult:
            v = (a * a + alpha * alpha * sigma**2) * v + sigma**2 * (alpha * m + g * c) ** 2
        else:
            v = a * a * v + sigma**2 * c * c
        m = a * m + g * c
    return m, v


def _chain(w0, n: int, up, params, gparams, gen):
    """The exact per-pulse chain: n calls of ``device_step`` with fresh standard normals."""
    w = w0.clone()
    for _ in range(n):
        w = device_step(w, up, params, gparams, torch.randn(w.shape, generator=gen))
    return w


CASES = [("softbounds_mult", SB_MULT, True), ("linear_step_additive", LS_ADD, False),
         ("constant_step", CONST, True)]


# ------------------------------------------------------------------------- aggregate_step: the moments


@pytest.mark.parametrize(("name", "cfg", "mult"), CASES, ids=[c[0] for c in CASES])
def test_aggregate_step_equals_float64_moments(name, cfg, mult):
    """z = 0 gives the chain's mean, z = 1 the mean plus one standard deviation (float64 recursion)."""
    params, gparams = _flat(cfg, 4000)
    assert bool(gparams[P.G_MULT_NOISE] != 0) == mult
    w0 = _start(params)
    sigma = float(gparams[P.G_DW_MIN_STD])
    for n in (1, 2, 5, 31):
        for up in (True, False):
            upt = torch.full_like(w0, up, dtype=torch.bool)
            nt = torch.full_like(w0, n, dtype=torch.int64)
            m, v = _moments64(w0, n, up, params, sigma, mult)
            mean = aggregate_step(w0, nt, upt, params, gparams, torch.zeros_like(w0))
            plus = aggregate_step(w0, nt, upt, params, gparams, torch.ones_like(w0))
            lo, hi = params[P.P_BMIN].double(), params[P.P_BMAX].double()
            assert bool(((m + v.sqrt() < hi) & (m - v.sqrt() > lo)).all()), "test set-up clips"
            # increments compared (w0 cancels): float32 rounding of w0 + D0·R is ~1e-7 absolute
            torch.testing.assert_close((mean - w0).double(), m - w0.double(), rtol=2e-5, atol=2e-7)
            torch.testing.assert_close((plus - mean).double(), v.sqrt(), rtol=2e-5, atol=2e-7)
    # n as a float tensor is the same thing
    upt = torch.ones_like(w0, dtype=torch.bool)
    a = aggregate_step(w0, torch.full_like(w0, 7.0), upt, params, gparams, torch.ones_like(w0))
    b = aggregate_step(w0, torch.full_like(w0, 7, dtype=torch.int32), upt, params, gparams,
                       torch.ones_like(w0))
    assert torch.equal(a, b)


SEQUENCE = [(5, True), (3, False), (31, True), (1, False), (12, False)]  # (n, up) of consecutive samples


@pytest.mark.parametrize(("name", "cfg", "mult"), CASES, ids=[c[0] for c in CASES])
def test_aggregate_moments_through_samples_equal_float64_recursion(name, cfg, mult):
    """Carrying (m, V) through samples of both signs (V > 0 on entry from the second sample on) gives the
    float64 moments of the whole pulse sequence."""
    params, gparams = _flat(cfg, 4000, seed=5)
    w0 = _start(params, seed=6)
    sigma = float(gparams[P.G_DW_MIN_STD])
    m, v = w0.clone(), torch.zeros_like(w0)
    m64, v64 = w0.double(), torch.zeros_like(w0, dtype=torch.float64)
    for n, up in SEQUENCE:
        upt = torch.full_like(w0, up, dtype=torch.bool)
        m, v = aggregate_moments(m, v, torch.full_like(w0, float(n)), upt, params, gparams)
        m64, v64 = _moments64(m64, n, up, params, sigma, mult, v0=v64)
        torch.testing.assert_close((m - w0).double(), m64 - w0.double(), rtol=2e-5, atol=3e-7)
        torch.testing.assert_close(v.double().sqrt(), v64.sqrt(), rtol=2e-5, atol=1e-9)
    assert float(v.min()) > 0


@pytest.mark.parametrize(("name", "cfg", "mult"), CASES[:2], ids=[c[0] for c in CASES[:2]])
def test_aggregate_step_matches_monte_carlo_of_the_pulse_chain(name, cfg, mult):
    """200k elements: the per-pulse chain and the aggregated step have the float64 mean and variance
    (standardised residuals r = (w − m)/sqrt(V): mean 0 and mean r² = 1 within 5 standard errors), for
    n in {2, 5, 31} up and down, and for the whole sample sequence carried by ``aggregate_moments``."""
    M = 200_000
    params, gparams = _flat(cfg, M, seed=2)
    w0 = _start(params, seed=3)
    sigma = float(gparams[P.G_DW_MIN_STD])
    gen = torch.Generator().manual_seed(4)

    def check(label, w, m, v):
        r = (w.double() - m) / v.sqrt()
        r2 = r * r
        se_mean, se_r2 = 1.0 / math.sqrt(M), float(r2.std()) / math.sqrt(M)
        assert abs(float(r.mean())) < 5 * se_mean, (label, float(r.mean()))
        assert abs(float(r2.mean()) - 1.0) < 5 * se_r2, (label, float(r2.mean()))

    for n in (2, 5, 31):
        for up in (True, False):
            upt = torch.full((M,), up, dtype=torch.bool)
            m, v = _moments64(w0, n, up, params, sigma, mult)
            check(f"chain n={n} up={up}", _chain(w0, n, upt, params, gparams, gen), m, v)
            agg = aggregate_step(w0, torch.full((M,), n), upt, params, gparams, torch.randn(M, generator=gen))
            check(f"aggregated n={n} up={up}", agg, m, v)
    chain, am, av = w0.clone(), w0.clone(), torch.zeros_like(w0)
    m, v = w0.double(), torch.zeros_like(w0, dtype=torch.float64)
    for n, up in SEQUENCE:
        upt = torch.full((M,), up, dtype=torch.bool)
        chain = _chain(chain, n, upt, params, gparams, gen)
        am, av = aggregate_moments(am, av, torch.full((M,), n), upt, params, gparams)
        m, v = _moments64(m, n, up, params, sigma, mult, v0=v)
    check("chain sequence", chain, m, v)
    agg = aggregate_finish(am, av, params, gparams, torch.randn(M, generator=gen))
    check("aggregated sequence", agg, m, v)


def test_monte_carlo_resolves_the_multiplicative_variance_factor():
    """Non-vacuity of the Monte-Carlo test: dropping the q = 1 + (ασ/A)² factor of the multiplicative
    variance (or using n·D0 as the mean) is far outside its 5-standard-error tolerance for a steep
    device (α ≈ −0.2, n = 31; the factor only matters where the n-pulse spread is comparable to the
    distance to the soft bound)."""
    M, n = 200_000, 31
    params, gparams = _flat(SB_STEEP, M, seed=2)
    w0 = _start(params, seed=3)
    upt = torch.ones(M, dtype=torch.bool)
    m, v = _moments64(w0, n, True, params, 0.3, True)
    chain = _chain(w0, n, upt, params, gparams, torch.Generator().manual_seed(5)).double()
    d0 = (params[P.P_SLOPE_UP] * w0 + params[P.P_SCALE_UP]).double()
    alpha = params[P.P_SLOPE_UP].double()
    v_no_q = 0.09 * d0**2 * (1 + alpha) ** (2 * (n - 1)) * n
    r2 = ((chain - m) ** 2 / v_no_q)
    assert float(r2.mean()) - 1.0 > 8 * float(r2.std()) / math.sqrt(M)  # (measured: ~8% = ~15 SE)
    naive = w0.double() + n * d0
    assert float(((chain - naive) / v.sqrt()).mean()) < -20 / math.sqrt(M)


def test_aggregate_moments_clip_the_mean_and_reset_the_variance():
    """A mean beyond a bound sits at the bound with zero variance; finishing clips the draw once."""
    params, gparams = _flat(CONST, 1000)
    w0 = params[P.P_BMAX] - 0.02  # two steps below the upper bound
    up = torch.ones(1000, dtype=torch.bool)
    m, v = aggregate_moments(w0, torch.full_like(w0, 1e-6), torch.full((1000,), 31), up, params, gparams)
    assert torch.equal(m, params[P.P_BMAX]) and torch.equal(v, torch.zeros_like(v))
    m, v = aggregate_moments(m, v, torch.full((1000,), 5), ~up, params, gparams)  # back down: variance again
    assert float(v.min()) > 0 and bool((m < params[P.P_BMAX]).all())
    big = aggregate_finish(m, v, params, gparams, torch.full_like(m, 1e4))
    assert torch.equal(big, params[P.P_BMAX])
    with pytest.raises(ValueError, match="z"):
        aggregate_finish(m, v, params, gparams, None)  # σ > 0 needs z
    p_exp, g_exp = _flat({"name": "expstep"}, 10)
    with pytest.raises(ValueError, match="KIND_LINEAR"):
        aggregate_step(torch.zeros(10), torch.full((10,), 3), torch.ones(10, dtype=torch.bool), p_exp, g_exp,
                       torch.zeros(10))


def test_degenerate_devices_use_the_clamped_alpha():
    """1 + α <= 0 (a pulse overshoots the fixed point): α is clamped to −1 + 2⁻¹² wherever it appears
    (not in D), which keeps every number finite: m' = m + D·((1 + α_c)^n − 1)/α_c, no NaN."""
    params, gparams = _flat(SB_MULT, 64)
    params = params.clone()
    params[P.P_SLOPE_UP] = -1.5  # α_up = −1.5
    params[P.P_SLOPE_DOWN] = 2.0  # α_down = −2
    w0 = _start(params)
    for up in (True, False):
        upt = torch.full_like(w0, up, dtype=torch.bool)
        m, v = aggregate_moments(w0, torch.zeros_like(w0), torch.full_like(w0, 4.0), upt, params, gparams)
        g = 1.0 if up else -1.0
        s = (params[P.P_SLOPE_UP] if up else params[P.P_SLOPE_DOWN]).double()
        c = (params[P.P_SCALE_UP] if up else params[P.P_SCALE_DOWN]).double()
        ac = AGG_ALPHA_MIN
        expect = w0.double() + g * (s * w0.double() + c) * ((1 + ac) ** 4 - 1) / ac
        expect = torch.minimum(torch.maximum(expect, params[P.P_BMIN].double()), params[P.P_BMAX].double())
        assert bool(torch.isfinite(m).all() and torch.isfinite(v).all() and (v >= 0).all())
        torch.testing.assert_close(m.double(), expect, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------ the reference op


def _batch(B, O, I, seed=0, d_scale=0.2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, I, generator=g)
    x[torch.rand(B, I, generator=g) < 0.3] = 0.0
    d = torch.randn(B, O, generator=g) * d_scale
    return x, d


def _pair(s, x, d, lr, seed=11, offset=5, w0=None, spec_a=AGG, spec_p=PULSED):
    """The same update in aggregated and pulsed mode from identical state:
    returns (n_agg, n_pulsed, w_agg, w_pulsed, w_p_agg, w_p_pulsed)."""
    O, I = s.params.shape[1:]
    if w0 is None:
        w0 = torch.zeros(O, I)
    ref = s.params[P.P_REF]
    w0 = torch.minimum(torch.maximum(w0, s.params[P.P_BMIN] - ref), s.params[P.P_BMAX] - ref)  # programmable
    out = []
    for spec in (spec_a, spec_p):
        w = w0.clone()
        wp = w0.clone() if s.write_noise else None
        n = pulsed_update_ref(w, wp, s.params, s.gparams, x, d, lr, s.dw, spec, seed, offset)
        out.append((n, w, wp))
    (na, wa, wpa), (np_, wpl, wpp) = out
    return na, np_, wa, wpl, wpa, wpp


NOISE_FREE = {
    "constant_step": {"name": "constant_step", "dw_min": 0.02, "w_max": 0.15, "w_min": -0.15},  # hits bounds
    "softbounds": {"name": "softbounds", "dw_min": 0.01, "w_max": 0.3, "w_min": -0.3},
    "linear_step": {"name": "linear_step", "gamma_up": 0.5, "gamma_down": 0.3},
}


@pytest.mark.parametrize("lr", [0.005, 0.5], ids=["sparse", "dense"])
@pytest.mark.parametrize("key", sorted(NOISE_FREE))
def test_noise_free_devices_equal_pulsed_up_to_rounding(key, lr):
    """Without cycle-to-cycle noise the affine pulse chain is deterministic, so the carried mean IS the
    pulsed result (bounds included: a monotone run of pulses that crosses a bound ends on it either way),
    up to float rounding; the pulse counts are those of the pulsed mode."""
    s = sample_device(device_from_config({**NOISE_FREE[key], "dw_min_std": 0.0}), 24, 20, 3)
    assert float(s.gparams[P.G_DW_MIN_STD]) == 0.0
    x, d = _batch(10, 24, 20, d_scale=0.5)
    w0 = (torch.rand(24, 20, generator=torch.Generator().manual_seed(1)) - 0.5) * 0.2
    na, np_, wa, wpl, _, _ = _pair(s, x, d, lr, w0=w0)
    assert float(np_.sum()) > 50
    assert torch.equal(na, np_)
    assert not torch.equal(wpl, w0)
    torch.testing.assert_close(wa, wpl, rtol=0, atol=2e-6)
    if key == "constant_step" and lr == 0.5:
        lo, hi = s.params[P.P_BMIN], s.params[P.P_BMAX]
        assert int(((wpl == lo) | (wpl == hi)).sum()) > 10  # the bounds were reached


def test_write_noise_is_drawn_once_at_the_end_of_the_call():
    """With write noise the pulses act on the persistent weight; the visible weight of every touched
    element is redrawn once, w = w_p + write_noise·normal(seed, offset, WRITE_NOISE, a=i*I+j, b=0, 0)."""
    s = sample_device(device_from_config({"name": "reram_sb"}), 16, 12, 3)
    assert s.write_noise and float(s.gparams[P.G_WRITE_NOISE]) > 0
    x, d = _batch(5, 16, 12)
    x[:, :3] = 0.0  # columns 0-2 get no pulses
    w0 = (torch.rand(16, 12, generator=torch.Generator().manual_seed(1)) - 0.5) * 0.2
    w, wp = w0.clone(), w0.clone()
    n = pulsed_update_ref(w, wp, s.params, s.gparams, x, d, 0.5, s.dw, AGG, 21, 4)
    touched = (n > 0).view(-1)
    assert 0 < int(touched.sum()) < touched.numel()
    idx = torch.nonzero(touched, as_tuple=True)[0]
    z = R.normal(21, 4, R.Stream.WRITE_NOISE, idx, 0, 0)
    wn = torch.tensor(float(s.gparams[P.G_WRITE_NOISE]), dtype=torch.float32)
    assert torch.equal(w.view(-1)[idx], wp.view(-1)[idx] + wn * z)
    assert torch.equal(w.view(-1)[~touched], w0.view(-1)[~touched])
    assert torch.equal(wp.view(-1)[~touched], w0.view(-1)[~touched])


def test_dense_regime_counts_identical_weights_close():
    """lr 0.5 (~25 coincidences per element per sample): same counts as the pulsed mode; weights differ
    only by the noise realisation (a few σ·dw·sqrt(n)), not systematically."""
    s = sample_device(device_from_config({"name": "softbounds"}), 32, 24, 3)
    x, d = _batch(6, 32, 24)
    na, np_, wa, wpl, _, _ = _pair(s, x, d, 0.5)
    assert float(np_.max()) >= 20
    assert torch.equal(na, np_)
    assert not torch.equal(wa, wpl)
    diff = (wa - wpl)[np_ > 0]
    scale = 0.3 * s.dw * torch.sqrt(np_[np_ > 0])  # c2c noise of the accumulated pulses
    assert float((diff.abs() / scale).max()) < 8
    assert abs(float((diff / scale).mean())) < 5 / math.sqrt(diff.numel())


def test_dense_batched_update_agrees_with_pulsed_over_seeds():
    """End-to-end: a dense batched update (lr 0.5, B = 4, a device with |α| ≈ 0.03-0.05 so the pulse
    chains are clearly nonlinear) from the same state with 100 seeds. For each seed both modes draw the
    same counts, so the difference of the weight changes is pure noise with mean 0 (affine maps compose:
    the first two moments of the aggregated update equal those of the chain over the whole batch). Per
    element, the mean difference over seeds is within 5 standard errors; the changes themselves are
    large compared to those errors (the check is not vacuous)."""
    O, I, B, S = 12, 10, 4, 100
    s = sample_device(device_from_config({"name": "softbounds", "dw_min": 0.01, "w_max": 0.3, "w_min": -0.3,
                                          "w_max_dtod": 0.05, "w_min_dtod": 0.05}), O, I, 3)
    x, d = _batch(B, O, I, seed=5, d_scale=0.5)
    w0 = (torch.rand(O, I, generator=torch.Generator().manual_seed(2)) - 0.5) * 0.2
    dw_a, dw_p = [], []
    for seed in range(S):
        na, np_, wa, wpl, _, _ = _pair(s, x, d, 0.5, seed=1000 + seed, offset=seed, w0=w0)
        assert torch.equal(na, np_)
        dw_a.append(wa - w0)
        dw_p.append(wpl - w0)
    dw_a, dw_p = torch.stack(dw_a).double(), torch.stack(dw_p).double()
    diff = dw_a - dw_p
    se = diff.std(0) / math.sqrt(S)
    moved = dw_p.mean(0).abs() > 0
    assert int(moved.sum()) > O * I // 2
    t = diff.mean(0)[moved] / se[moved]
    assert float(t.abs().max()) < 5, float(t.abs().max())
    assert abs(float(t.mean())) < 5 / math.sqrt(t.numel())
    assert float((dw_p.mean(0)[moved].abs() / se[moved]).median()) > 30  # the signal dwarfs the tolerance
    # and the spread over seeds (counts and noise) is the same
    ratio = float(dw_a.var(0)[moved].sum() / dw_p.var(0)[moved].sum())
    assert abs(ratio - 1.0) < 0.1, ratio


def test_reference_rejects_aggregate_for_nonlinear_devices_and_other_modes():
    s = sample_device(device_from_config({"name": "expstep"}), 4, 3, 0)
    x, d = _batch(2, 4, 3)
    with pytest.raises(ValueError, match="linear-step"):
        pulsed_update_ref(torch.zeros(4, 3), None, s.params, s.gparams, x, d, 0.1, s.dw, AGG, 1, 0)
    s = sample_device(device_from_config({"name": "softbounds"}), 4, 3, 0)
    with pytest.raises(ValueError, match="MODE_PULSED"):
        pulsed_update_ref(torch.zeros(4, 3), None, s.params, s.gparams, x, d, 0.1, s.dw,
                          UpdateSpec(mode=MODE_EXPECTED, aggregate=True), 1, 0)


# ----------------------------------------------------------------------------------------- config


def test_update_mode_maps_to_aggregate_spec_and_op_encoding():
    from analogtrain.tiles import UpdateConfig, update_spec
    from analogtrain.tiles.config import TileConfig, validate_tile

    validate_tile(TileConfig(update_mode="aggregated"))
    spec = update_spec(UpdateConfig(desired_bl=7), "aggregated")
    assert spec.mode == MODE_PULSED and spec.aggregate and spec.desired_bl == 7
    assert not update_spec(UpdateConfig(), "pulsed").aggregate
    assert update_spec(UpdateConfig(pulse_type="none"), "aggregated") is None
    with pytest.raises(ConfigError, match="tile.update_mode"):
        update_spec(UpdateConfig(pulse_type="mean_count"), "aggregated")
    assert AGGREGATE_BIT == 4
    assert _spec_args(spec)[-1] == MODE_PULSED | AGGREGATE_BIT == 4
    assert _spec_args(UpdateSpec())[-1] == MODE_PULSED
    assert _spec_args(UpdateSpec(mode=MODE_MEAN_COUNT))[-1] == MODE_MEAN_COUNT
    with pytest.raises(ValueError, match="MODE_PULSED"):
        _spec_args(UpdateSpec(mode=MODE_MEAN_COUNT, aggregate=True))


def test_config_validation_accepts_linear_and_rejects_other_devices(compose):
    from analogtrain.config.validate import validate_config

    for dev in ("softbounds", "constant_step", "linear_step", "reram_sb"):
        cfg = compose(["tile.update_mode=aggregated", f"device={dev}"])
        validate_config(cfg)
        from analogtrain.tiles.array import update_spec

        assert update_spec(cfg.tile["update"], cfg.tile.update_mode).aggregate  # (.update: a Mapping method)
    for over in (["device=expstep"], ["device=powstep"], ["algo=tt_reram_es"],
                 ["algo=tt", "algo.device_c={name: expstep}"]):
        with pytest.raises(ConfigError, match=r"tile\.update_mode") as e:
            validate_config(compose(["tile.update_mode=aggregated", *over]))
        assert "linear-step" in str(e.value)
    validate_config(compose(["device=expstep"]))  # other modes keep working with exp/pow devices
    validate_config(compose(["tile.update_mode=aggregated", "device=expstep", "algo=digital"]))  # no tiles


def test_device_array_rejects_aggregate_on_nonlinear_device():
    from analogtrain.tiles import DeviceArray

    arr = DeviceArray(device_from_config({"name": "powstep"}), 4, 3, seed_device=0, seed_pulse=1,
                      backend="reference")
    x, d = _batch(2, 4, 3)
    with pytest.raises(ConfigError, match=r"tile\.update_mode"):
        arr.update(x, d, 0.1, AGG)


def _rule_run(algo, backend, batched=True):
    """A small rule (sgd, or c-TTv2 whose batched schedule uses ops.chopped_update_snapshots and the fused
    transfer write) trained for 4 mini-batches in aggregated mode on ``backend``."""
    import analogtrain.algorithms.transfer as transfer_mod
    from analogtrain.algorithms.theory import build_rule

    kw = {"in_chop_prob": 0.3, "out_chop_prob": 0.3, "fast_lr": 0.5} if algo == "cttv2" else None
    ops.set_backend(backend)
    old = transfer_mod.BATCHED_TRANSFERS
    transfer_mod.BATCHED_TRANSFERS = batched
    try:
        rule = build_rule(algo, {"name": "softbounds", "dw_min": 0.02, "write_noise_std": 0.5}, 6, 5,
                          algo_kw=kw, tile_kw={"update_mode": "aggregated"}, seed=3)
        assert rule.spec.aggregate
        g = torch.Generator().manual_seed(1)
        for _ in range(4):
            rule.update(torch.rand(6, 5, generator=g), 0.3 * torch.randn(6, 6, generator=g), 0.1)
    finally:
        transfer_mod.BATCHED_TRANSFERS = old
        ops.set_backend("auto")
    return rule


@pytest.mark.parametrize("algo", ["sgd", "cttv2"])
def test_rules_train_in_aggregated_mode_on_every_backend(algo):
    """The mode reaches every op a rule uses (pulsed update, batched chopped updates, fused transfer
    writes): the compiled kernel (when it builds and supports the mode) gives the same pulse statistics and
    weights as the reference up to libm rounding. (The batched c-TTv2 schedule carries A's moments across
    the batch's calls, so on a noisy device it draws other numbers than its per-sample loop; on a
    noise-free one both agree bit for bit: tests/test_chopped_carry.py.)"""
    ref = _rule_run(algo, "reference")
    state = ref.state_dict()
    assert any(float(v.abs().sum()) > 0 for k, v in state.items() if k.endswith(".w"))
    if algo == "cttv2":  # the batched schedule ran and transferred
        assert int(ref.transfers) > 0 and float(ref.pulses_c) > 0
    if not ops.compiled_available("cpu"):
        return
    comp = _compiled_or_skip(lambda: _rule_run(algo, "compiled")).state_dict()
    assert state.keys() == comp.keys()
    for k in state:
        if state[k].is_floating_point():
            torch.testing.assert_close(comp[k], state[k], rtol=1e-5, atol=1e-5, msg=k)
        else:
            assert torch.equal(comp[k], state[k]), k


# -------------------------------------------------------------------- compiled kernels vs reference


PARITY = {
    "softbounds_noisy": {"name": "softbounds", "dw_min_std": 0.3},  # multiplicative noise
    "reram_sb": {"name": "reram_sb"},  # reference offsets, additive noise, write noise
    "linear_step_additive": {"name": "linear_step", "gamma_up": 0.4, "gamma_down": 0.2, "mult_noise": False},
    "constant_step": {"name": "constant_step", "dw_min": 0.01, "w_max": 0.1, "w_min": -0.1},  # α = 0, bounds
    # every 5th column: 1 + α <= 0 (clamped α), noise-free, additive and multiplicative noise (where the
    # variance overflows and the contract maps it to 0: test_degenerate_device_with_mult_noise_stays_finite)
    "degenerate": {"name": "softbounds", "dw_min_std": 0.0},
    "degenerate_additive": {"name": "softbounds", "mult_noise": False},
    "degenerate_mult": {"name": "softbounds", "dw_min_std": 0.3},
}


def _parity_case(key, O=64, I=48, B=8):
    s = sample_device(device_from_config(dict(PARITY[key])), O, I, 3)
    params = s.params.clone()
    if key.startswith("degenerate"):
        params[P.P_SLOPE_UP][:, ::5] = -1.5
        params[P.P_SLOPE_DOWN][:, ::5] = 1.5
    x, d = _batch(B, O, I, seed=4)
    lo, hi = params[P.P_BMIN] - params[P.P_REF], params[P.P_BMAX] - params[P.P_REF]
    w0 = lo + (hi - lo) * torch.rand(O, I, generator=torch.Generator().manual_seed(6))
    g = torch.Generator().manual_seed(7)
    chop_in = torch.where(torch.rand(I, generator=g) < 0.5, -1.0, 1.0)
    chop_out = torch.where(torch.rand(O, generator=g) < 0.5, -1.0, 1.0)
    return s, params, x, d, w0, chop_in, chop_out


def test_reference_final_draw_uses_the_documented_counters():
    """Step 4a's one normal per touched element e is normal(seed, offset, PULSE_NOISE, a = e >> 2, b = 0,
    draw = e & 3): the reference result equals the one rebuilt from aggregate_moments / aggregate_finish
    with exactly those draws (and differs from version 3's counters a = e >> 1, draw 2·(e & 1))."""
    O, I = 5, 13
    s = sample_device(device_from_config(dict(SB_MULT)), O, I, 0)
    params = s.params.reshape(P.NP, -1)
    g = torch.Generator().manual_seed(3)
    x, d = torch.rand(1, I, generator=g) + 0.5, torch.rand(1, O, generator=g) + 0.5
    w = torch.zeros(O, I)
    seed, offset = 2**33 + 5, 9
    n = pulsed_update_ref(w, None, s.params, s.gparams, x, d, 0.5, s.dw, AGG, seed, offset).reshape(-1)
    e = torch.nonzero(n > 0).flatten()
    assert e.numel() > 40 and all(bool((e % 4 == k).any()) for k in range(4))
    pe, ref = params[:, e], params[P.P_REF, e]
    # x, d, lr > 0: every pulse goes down (w -= lr·x·d); the state starts at 0, so w_dev = ref
    m, v = aggregate_moments(ref.clone(), torch.zeros_like(ref), n[e], torch.zeros_like(e, dtype=torch.bool), pe,
                             s.gparams)
    assert bool((v > 0).all())
    z = R.normal(seed, offset, R.Stream.PULSE_NOISE, e >> 2, 0, e & 3)
    torch.testing.assert_close(w.reshape(-1)[e], aggregate_finish(m, v, pe, s.gparams, z) - ref, rtol=0, atol=0)
    z_old = R.normal(seed, offset, R.Stream.PULSE_NOISE, e >> 1, 0, 2 * (e & 1))
    assert not torch.allclose(w.reshape(-1)[e], aggregate_finish(m, v, pe, s.gparams, z_old) - ref)
    untouched = torch.ones(O * I, dtype=torch.bool)
    untouched[e] = False
    assert bool((w.reshape(-1)[untouched] == 0).all())


def test_degenerate_device_with_mult_noise_stays_finite():
    s = sample_device(device_from_config({"name": "softbounds", "dw_min_std": 0.3}), 4, 3, 0)
    params = s.params.reshape(P.NP, -1).clone()
    params[P.P_SLOPE_UP] = -1.5
    w0 = torch.zeros(12)
    up = torch.ones(12, dtype=torch.bool)
    m, v = aggregate_moments(w0, torch.zeros_like(w0), torch.full_like(w0, 8.0), up, params, s.gparams)
    # 1 + α <= 0 (clamped to 2^-12) with multiplicative noise: expm1(n·log1p ε) overflows while A^n
    # underflows; the contract maps the non-finite variance to 0 (the device sits at its fixed point)
    assert bool(torch.isfinite(m).all() and torch.isfinite(v).all())
    assert bool((v == 0).all())


def _compiled_or_skip(fn):
    """Run a compiled op; skip while the kernel is unavailable or lacks aggregated-pulse support."""
    from analogtrain.ops.build import BuildError

    try:
        return fn()
    except BuildError as e:  # pragma: no cover - machines without a toolchain
        pytest.skip(f"compiled kernel unavailable: {e}")
    except RuntimeError as e:
        if "aggregate" in str(e).lower():
            pytest.skip(f"kernel without aggregated pulses: {e}")
        raise


def _parity(device: str, key: str, spec=None, B: int = 8, lr0: float = 0.5, shape=(64, 48)):
    """Aggregated update, reference vs compiled: identical pulse counts, weights (and persistent weights)
    equal up to float rounding. lr0 0.5: dense (~25 pulses per element per sample); 0.0005: sparse (BL 1
    under UBLM here, at most one pulse per element per sample). ``shape`` (O, I): an odd I puts row starts
    off the four-element groups of the final draws and leaves a partial 16-lane tail."""
    spec = spec or AGG
    s, params, x, d, w0, ci, co = _parity_case(key, O=shape[0], I=shape[1], B=B)
    for lr, chop in ((lr0, False), (-lr0, True)):
        res = {}
        for backend in ("reference", "compiled"):
            dev = "cpu" if backend == "reference" else device
            w = w0.clone().to(dev)
            wp = w0.clone().to(dev) if s.write_noise else None
            args = (w, wp, params.to(dev), s.gparams, x.to(dev), d.to(dev), lr, s.dw, spec, 2**35 + 3, 17)
            kw = {"chop_in": ci.to(dev), "chop_out": co.to(dev)} if chop else {}
            if backend == "reference":
                n = pulsed_update_ref(*args, **kw)
            else:
                n = _compiled_or_skip(lambda a=args, k=kw: ops.pulsed_update(*a, **k, backend="compiled"))
            res[backend] = (n.cpu(), w.cpu(), None if wp is None else wp.cpu())
        (n_r, w_r, wp_r), (n_k, w_k, wp_k) = res["reference"], res["compiled"]
        if lr0 >= 0.5:
            assert float(n_r.max()) >= 20  # dense: the aggregated moments carry many pulses
        else:
            assert float(n_r.max()) <= B and bool((n_r > 0).any())  # sparse: one pulse per sample at most
        assert torch.equal(n_r, n_k), f"pulse counts differ at {int((n_r != n_k).sum())} elements"
        torch.testing.assert_close(w_k, w_r, rtol=1e-5, atol=1e-6)
        if wp_r is not None:
            torch.testing.assert_close(wp_k, wp_r, rtol=1e-5, atol=1e-6)
        assert not torch.equal(w_r, w0)


@pytest.mark.compiled
@pytest.mark.parametrize("key", sorted(PARITY))
def test_compiled_cpu_aggregated_matches_reference(key):
    _parity("cpu", key)


@pytest.mark.compiled
@pytest.mark.parametrize("key", ["softbounds_noisy", "reram_sb", "linear_step_additive", "constant_step"])
@pytest.mark.parametrize("B", [1, 8])
def test_compiled_cpu_sparse_aggregated_matches_reference(key, B):
    """Sparse calls (every sample one pulse per element at most): the kernels' one-pulse fast path."""
    _parity("cpu", key, B=B, lr0=0.0005)


@pytest.mark.compiled
@pytest.mark.parametrize("key", ["softbounds_noisy", "linear_step_additive", "constant_step", "degenerate_mult"])
def test_compiled_cpu_one_sample_aggregated_matches_reference(key):
    """One-sample calls (the c-TTv2/AGAD A updates) take the CPU kernel's job path on touched lanes."""
    _parity("cpu", key, B=1)


@pytest.mark.compiled
@pytest.mark.parametrize("key", ["softbounds_noisy", "reram_sb", "degenerate_mult"])
def test_compiled_cpu_generic_path_aggregated_matches_reference(key):
    """Trains longer than 32 slots take the CPU kernel's generic job path (not the AVX-512 one)."""
    _parity("cpu", key, spec=dataclasses.replace(AGG, desired_bl=40, ublm=False))


@pytest.mark.compiled
@pytest.mark.parametrize("key", ["softbounds_noisy", "linear_step_additive"])
@pytest.mark.parametrize("case", ["dense", "sparse", "one_sample", "generic"])
def test_compiled_cpu_aggregated_matches_reference_odd_width(key, case):
    """I = 45: rows start at odd and even elements (the final draws' Philox pairs straddle rows) and every
    row ends in a partial 16-lane group, on each kernel path."""
    kw = {"dense": {}, "sparse": {"lr0": 0.0005}, "one_sample": {"B": 1},
          "generic": {"spec": dataclasses.replace(AGG, desired_bl=40, ublm=False)}}[case]
    _parity("cpu", key, shape=(9, 45), **kw)


@pytest.mark.compiled
@pytest.mark.parametrize("key", sorted(PARITY))
def test_compiled_cpu_fast_paths_equal_the_generic_job_path_bit_for_bit(key):
    """Within one build every CPU path gives the same numbers: the same call through the fast path this
    CPU takes (AVX-512 agg_fast / fused one-sample calls, or the AVX2 lanes) and, with the test hook
    force_generic_path, through the generic job path — identical pulse counts and weights, bit for bit, in
    the dense (every closed-form branch: n <= 4 polynomials, the n > 4 expm1 and its short form, the noise
    sum's series and closed form), sparse and one-sample regimes."""
    if not ops.compiled_available("cpu"):
        pytest.skip("compiled CPU kernel unavailable")
    for B, lr in ((8, 0.5), (8, -0.5), (8, 0.0005), (1, 0.5)):
        s, params, x, d, w0, ci, co = _parity_case(key, O=64, I=48, B=B)
        kw = {"chop_in": ci, "chop_out": co} if lr < 0 else {}
        out = []
        for generic in (False, True):
            before = torch.ops.analogtrain.force_generic_path(generic)
            try:
                w = w0.clone()
                wp = w0.clone() if s.write_noise else None
                n = ops.pulsed_update(w, wp, params, s.gparams, x, d, lr, s.dw, AGG, 2**35 + 3, 17,
                                      backend="compiled", **kw)
            finally:
                torch.ops.analogtrain.force_generic_path(before)
            out.append((n, w, wp))
        (n_f, w_f, wp_f), (n_g, w_g, wp_g) = out
        assert float(n_f.sum()) > 0 and torch.equal(n_f, n_g), (B, lr)
        assert torch.equal(w_f.view(torch.int32), w_g.view(torch.int32)), (B, lr, int((w_f != w_g).sum()))
        if wp_f is not None:
            assert torch.equal(wp_f.view(torch.int32), wp_g.view(torch.int32)), (B, lr)


@pytest.mark.compiled
def test_compiled_cpu_expm1_twins_agree_bit_for_bit_within_two_ulp():
    """The expm1 of the n > AGG_POLY_MAX closed form in the CPU kernel: the build's scalar f_expm1 (generic
    path, one-sample calls) and its vector twin (the AVX-512 lanes' inline expm1, the AVX2 lanes' libmvec
    expm1f) agree bit for bit, so every path of one build gives the same dense-update numbers; within 2 ulp
    of expm1 (float64, rounded), inf where expm1 overflows the float range, NaN through."""
    if not ops.compiled_available("cpu"):
        pytest.skip("compiled CPU kernel unavailable")
    g = torch.Generator().manual_seed(3)
    x = torch.cat([torch.linspace(-40.0, 95.0, 400_001),
                   torch.randn(200_000, generator=g) * 0.3,
                   -17.0 * torch.rand(200_000, generator=g),  # the dense updates' n·log1p(α), α < 0
                   torch.tensor([0.0, -0.0, 0.3465736, -0.3465736, 88.72, 88.7228, 88.723, 89.0, 1e3, -1e3,
                                 1e-30, -1e-30, math.inf, -math.inf, math.nan])])
    s, v, k0 = torch.ops.analogtrain.host_expm1(x)
    nan = x.isnan()
    assert s[nan].isnan().all() and v[nan].isnan().all()
    assert torch.equal(s[~nan].view(torch.int32), v[~nan].view(torch.int32))
    # the AVX-512 lanes' short form for arguments of rounding k = rint(x·log2 e) = 0 (agg_lanes_closed takes
    # it for groups whose n·log1p(α) stay below 0.37 in magnitude): bit-identical there, ±0 included
    small = (x.double() * 1.4426950408889634).abs() < 0.5
    assert int(small.sum()) > 100_000
    assert torch.equal(k0[small].view(torch.int32), v[small].view(torch.int32))
    exact = torch.expm1(x[~nan].double())
    ref = exact.float()
    got = s[~nan]
    over = ref.isinf()
    assert int(over.sum()) > 100 and torch.equal(got[over], ref[over])
    ulp = (torch.nextafter(ref.abs(), torch.tensor(math.inf)) - ref.abs()).double()
    err = ((got.double() - exact).abs() / ulp)[~over]
    assert float(err.max()) <= 2.0, float(err.max())
    assert float(s[x == -1e3]) == -1.0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("key", sorted(PARITY))
def test_compiled_cuda_aggregated_matches_reference(key):
    _parity("cuda", key)
