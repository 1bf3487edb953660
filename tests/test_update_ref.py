"""The pure-torch pulsed update (``analogtrain.ops.reference.pulsed_update_ref``) vs aihwkit's semantics (§1)
and analytic expectations (Binomial pulse statistics, dynamic model)."""

from __future__ import annotations

import math

import pytest
import torch

from analogtrain.devices import device_from_config, device_step, sample_device
from analogtrain.devices import params as P
from analogtrain.ops import MODE_EXPECTED, MODE_MEAN_COUNT, MODE_PULSED, UpdateSpec
from analogtrain.ops import rng as R
from analogtrain.ops.reference import pulsed_update_ref, update_scales

torch.set_num_threads(1)

SINGLE = UpdateSpec(desired_bl=1, fixed_bl=True, ublm=False, um=False)  # one pulse per call (§6.7)


def wide_constant(dw=0.001, std=0.0):
    """Identical constant-step devices with far-away bounds: w changes by exactly ±dw per pulse."""
    return device_from_config({"name": "constant_step", "dw_min": dw, "dtod": 0.0, "dw_min_std": std,
                               "w_max": 100.0, "w_min": -100.0})


def run(cfg, w, x, d, lr, spec, seed=1, offset=0, w_p=None, dev_seed=0, **kw):
    s = sample_device(cfg, w.shape[0], w.shape[1], dev_seed)
    n = pulsed_update_ref(w, w_p, s.params, s.gparams, x, d, lr, s.dw, spec, seed, offset, **kw)
    return n, s


# ------------------------------------------------------------------------------------ scales (§1.2)


def test_update_scales_um_saturation_case():
    bl, a, b = update_scales(0.01, 0.001, 4.0, 0.5, UpdateSpec(desired_bl=10, ublm=False, um=True))
    # k = 20 > BL = 10: d_val = 0.5·10/20 = 0.25, A = sqrt(4/0.25) = 4, B = sqrt(0.25/4) = 0.25
    assert (bl, a, b) == (10, pytest.approx(4.0), pytest.approx(0.25))


def test_update_scales_ublm_makes_dense_short_trains():
    bl, a, b = update_scales(0.01, 0.001, 1.0, 0.5, UpdateSpec(desired_bl=31, ublm=True))
    # k = 5 -> BL = 5, A = B = sqrt(2), then A·sqrt(1/0.5) = 2, B·sqrt(0.5) = 1: both maxima fire with p = 1
    assert bl == 5 and a == pytest.approx(2.0) and b == pytest.approx(1.0)
    bl, a, b = update_scales(0.01, 0.001, 1.0, 0.23, UpdateSpec(desired_bl=31, ublm=True))
    assert bl == 3  # ceil(2.3)


def test_update_scales_grad_scale_and_no_um_and_free_bl():
    g = 4.0
    bl, a, b = update_scales(0.01, 0.001, 2.0, 0.1, UpdateSpec(desired_bl=31, ublm=False, um_grad_scale=g))
    k = 0.01 * 2.0 * g * 0.1 / 0.001
    assert 2.0 * b == pytest.approx(math.sqrt(k / 31))  # p_x(x_max) = sqrt(k/BL)
    assert 0.1 * a == pytest.approx(math.sqrt(k / 31) / g)  # p_d(d_max) = sqrt(k/BL)/g
    bl, a, b = update_scales(0.01, 0.001, 2.0, 0.1, UpdateSpec(desired_bl=31, ublm=False, um=False))
    assert bl == 31 and a == b == pytest.approx(math.sqrt(0.01 / (0.001 * 31)))
    bl, a, b = update_scales(0.1, 0.001, 2.0, 0.1, UpdateSpec(desired_bl=31, fixed_bl=False, ublm=False, um=False))
    assert (bl, a, b) == (100, 1.0, 1.0)  # dw·BL < lr: BL = ceil(lr/dw), A = B = 1
    assert update_scales(0.01, 0.001, 0.0, 0.1, UpdateSpec())[0] == 0


# ------------------------------------------------------------------------------- counts and signs


def test_um_saturation_example_mean_pulses():
    # §1.2 / §9: dw 0.001, lr 0.01, BL 10, x = (4, 2), d = (0.5, 0.05) -> (10.00, 5.06 | 2.01, 1.04)
    cfg = wide_constant()
    nb = 1500
    x = torch.tensor([[4.0, 2.0]]).repeat(nb, 1)
    d = torch.tensor([[0.5, 0.05]]).repeat(nb, 1)
    for ublm in (False, True):
        w = torch.zeros(2, 2)
        n, _ = run(cfg, w, x, d, 0.01, UpdateSpec(desired_bl=10, ublm=ublm, um=True), offset=int(ublm))
        mean = n / nb
        assert mean[0, 0].item() == 10.0  # p_x = 1 exactly, p_d > 1 saturates: every slot fires
        assert mean[0, 1].item() == pytest.approx(5.0, abs=0.17)  # Binomial(10, 0.5)
        assert mean[1, 0].item() == pytest.approx(2.0, abs=0.15)
        assert mean[1, 1].item() == pytest.approx(1.0, abs=0.11)
        # target lr·x·d/dw is (20, 10 | 2, 1); the large-d row is cut, x's 2:1 ratio is kept
        assert (w / -0.001).sum() == pytest.approx(n.sum().item(), rel=1e-3)  # float32 accumulation


def test_mean_count_is_deterministic_with_res():
    cfg = wide_constant()
    x, d = torch.tensor([[4.0, 2.0]]), torch.tensor([[0.5, 0.05]])
    n, _ = run(cfg, torch.zeros(2, 2), x, d, 0.01, UpdateSpec(desired_bl=10, ublm=False, mode=MODE_MEAN_COUNT))
    assert torch.equal(n, torch.tensor([[10.0, 5.0], [2.0, 1.0]]))
    # res = 0.3: p_x = (0.9, 0.6), p_d = (2.1, 0.3) -> c_x = (9, 6), c_d = (10, 3) -> n = (9, 6 | 3, 2)
    n, _ = run(cfg, torch.zeros(2, 2), x, d, 0.01, UpdateSpec(desired_bl=10, ublm=False, res=0.3, mode=MODE_MEAN_COUNT))
    assert torch.equal(n, torch.tensor([[9.0, 6.0], [3.0, 2.0]]))


def test_pulse_trains_follow_the_philox_contract():
    """Counts equal popcount(x bits & d bits) with bits from Stream.X_TRAIN / Stream.D_TRAIN slots."""
    cfg = wide_constant()
    torch.manual_seed(0)
    x, d = torch.randn(2, 3), torch.randn(2, 4) * 0.3
    spec = UpdateSpec(desired_bl=31, ublm=True)
    seed, offset, lr, dw = 99, 5, 0.02, 0.001
    n, _ = run(cfg, torch.zeros(4, 3), x, d, lr, spec, seed=seed, offset=offset)
    expect = torch.zeros(4, 3)
    for b in range(2):
        bl, A, B = update_scales(lr, dw, x[b].abs().max().item(), d[b].abs().max().item(), spec)
        for i in range(4):
            for j in range(3):
                px = float(torch.tensor(abs(x[b, j].item()) * B, dtype=torch.float32))
                pd = float(torch.tensor(abs(d[b, i].item()) * A, dtype=torch.float32))
                for k in range(bl):
                    ux = R.uniform(seed, offset, R.Stream.X_TRAIN, j, b, k).item()
                    ud = R.uniform(seed, offset, R.Stream.D_TRAIN, i, b, k).item()
                    expect[i, j] += float(ux < px and ud < pd)
    assert torch.equal(n, expect)


def test_binomial_statistics_of_one_update():
    """n_ij ~ Binomial(BL, p_x p_d) (no saturation), rows share a train: Cov(n_ij, n_ik) = BL p_d p_x²(1 − p_d);
    Δw = −dw·Σ(1 + σξ) so E[Δw] = −lr·x·d and Var[Δw] = dw²(Var n + σ² E n)."""
    sigma, dw, lr, BL = 0.3, 0.001, 0.01, 31
    cfg = wide_constant(dw, std=sigma)
    spec = UpdateSpec(desired_bl=BL, ublm=False, um=False)
    xv, dv = 1.2, 0.9
    nb, O, I = 40, 48, 48
    x = torch.full((nb, I), xv)
    d = torch.full((nb, O), dv)
    A = B = math.sqrt(lr / (dw * BL))
    q = (xv * B) * (dv * A)
    counts, dws = [], []
    for b in range(nb):
        w = torch.zeros(O, I)
        n, _ = run(cfg, w, x[b : b + 1], d[b : b + 1], lr, spec, offset=b)
        counts.append(n)
        dws.append(w.clone())
    n = torch.stack(counts).double()
    dwt = torch.stack(dws).double()
    assert n.mean().item() == pytest.approx(BL * q, rel=0.02)
    assert n.var().item() == pytest.approx(BL * q * (1 - q), rel=0.1)
    cov_row = ((n[:, :, 0] - n.mean()) * (n[:, :, 1] - n.mean())).mean().item()
    px, pd = xv * B, dv * A
    assert cov_row == pytest.approx(BL * pd * px**2 * (1 - pd), rel=0.25)
    assert dwt.mean().item() == pytest.approx(-lr * xv * dv, rel=0.02)
    assert dwt.var().item() == pytest.approx(dw**2 * (BL * q * (1 - q) + sigma**2 * BL * q), rel=0.1)


@pytest.mark.parametrize(
    "xv,dv,lr,cin,cout,direction",
    [(1, 1, 1, None, None, -1), (1, -1, 1, None, None, 1), (-1, 1, 1, None, None, 1), (-1, -1, 1, None, None, -1),
     (1, 1, -1, None, None, 1), (1, 1, 1, -1, None, 1), (1, 1, 1, None, -1, 1), (1, 1, 1, -1, -1, -1)],
)
def test_sign_convention(xv, dv, lr, cin, cout, direction):
    # sign(x)·sign(d)·sign(lr)·c_in·c_out > 0 -> one DOWN step of scale_down; < 0 -> UP step of scale_up
    cfg = device_from_config({"name": "constant_step", "dtod": 0.0, "c2c": 0.0, "dw_min": 0.01, "up_down": 0.3})
    w = torch.zeros(1, 1)
    kw = {}
    if cin is not None:
        kw["chop_in"] = torch.tensor([float(cin)])
    if cout is not None:
        kw["chop_out"] = torch.tensor([float(cout)])
    n, _ = run(cfg, w, torch.tensor([[float(xv)]]), torch.tensor([[float(dv)]]), lr, SINGLE, **kw)
    assert n.item() == 1
    assert w.item() == pytest.approx(0.01 if direction > 0 else -0.007, abs=1e-8)


def test_batch_samples_are_separate_updates_in_order():
    # §1.5: SoftBounds ±0.6, dw_min 0.01, BL 1, w = 0.3, x = (+1, −1), d = (1, 1) -> 0.290250
    cfg = device_from_config({"name": "softbounds", "dtod": 0.0, "c2c": 0.0, "dw_min": 0.01})
    x = torch.tensor([[1.0], [-1.0]])
    d = torch.tensor([[1.0], [1.0]])
    w = torch.tensor([[0.3], [-0.3]])
    n, _ = run(cfg, w, x, d.repeat(1, 2), 1.0, SINGLE)
    assert w[0, 0].item() == pytest.approx(0.290250, abs=1e-7)
    assert torch.equal(n, torch.tensor([[2.0], [2.0]]))
    for k in range(199):
        run(cfg, w, x, d.repeat(1, 2), 1.0, SINGLE, offset=k + 1)
    # each batch = one down pulse then one up pulse: iterate that map in float64
    def pair(v):
        v = v - 0.01 * (1 + v / 0.6)
        return v + 0.01 * (1 - v / 0.6)

    for k, start in enumerate((0.3, -0.3)):
        v = start
        for _ in range(200):
            v = pair(v)
        assert w[k, 0].item() == pytest.approx(v, abs=2e-5)
        assert w[k, 0].item() == pytest.approx(0.005, abs=1e-3)  # "drifts to ≈ 0.005" (§1.5)


def test_ublm_caps_pulses_per_sample():
    cfg = wide_constant()
    x, d = torch.tensor([[1.0, 0.5]]), torch.tensor([[0.23, 0.1]])  # k = 0.01·1·0.23/0.001 = 2.3 -> BL = 3
    maxima = []
    for off in range(150):
        n, _ = run(cfg, torch.zeros(2, 2), x, d, 0.01, UpdateSpec(desired_bl=31, ublm=True), offset=off)
        maxima.append(n.max().item())
    assert max(maxima) == 3.0


def test_noise_draw_layout_per_pulse():
    """Pulse p of element (i, j) in sample b uses normal(seed, offset, PULSE_NOISE, a=i*I+j, b=b, draw=p)."""
    cfg = device_from_config({"name": "softbounds", "dtod": 0.0, "dw_min": 0.01, "dw_min_std": 0.5})
    spec = UpdateSpec(desired_bl=3, ublm=False, um=False)  # lr 1, dw 0.01: A = B > 1 -> 3 pulses each
    O, I, seed, off = 2, 3, 17, 4
    w0 = torch.linspace(-0.3, 0.3, O * I).reshape(O, I)
    w = w0.clone()
    x, d = torch.ones(2, I), -torch.ones(2, O)  # up pulses, two samples
    n, s = run(cfg, w, x, d, 1.0, spec, seed=seed, offset=off)
    assert torch.all(n == 6)
    ref = w0.clone().view(-1)
    up = torch.ones(O * I, dtype=torch.bool)
    flat = torch.arange(O * I)
    pf = s.params.reshape(P.NP, -1)
    for b in range(2):
        for p in range(3):
            xi = R.normal(seed, off, R.Stream.PULSE_NOISE, flat, b, p)
            ref = device_step(ref, up, pf, s.gparams, xi)
    assert torch.equal(w.view(-1), ref)


def test_write_noise_redraw_of_touched_elements():
    cfg = device_from_config({"name": "softbounds", "dtod": 0.0, "c2c": 0.0, "dw_min": 0.01, "write_noise_std": 10.0})
    O = 2000
    w, w_p = torch.zeros(O, 2), torch.zeros(O, 2)
    x = torch.tensor([[-1.0, 0.0]])  # column 1 gets no pulses
    n, s = run(cfg, w, x, torch.ones(1, O), 1.0, SINGLE, w_p=w_p, seed=3, offset=2)
    assert s.write_noise
    assert torch.allclose(w_p[:, 0], torch.full((O,), 0.01)) and torch.all(w_p[:, 1] == 0)
    xi = R.normal(3, 2, R.Stream.WRITE_NOISE, torch.arange(O) * 2, 0, 0)
    assert torch.allclose(w[:, 0], w_p[:, 0] + 0.1 * xi, atol=1e-7)
    assert w[:, 0].std().item() == pytest.approx(0.1, rel=0.06)
    assert torch.all(w[:, 1] == 0)  # untouched elements keep their visible weight


def test_same_seed_same_result_other_offset_differs():
    cfg = device_from_config({"name": "softbounds"})
    torch.manual_seed(1)
    x, d = torch.randn(4, 10), torch.randn(4, 6) * 0.2
    res = []
    for off in (0, 0, 1):
        w = torch.zeros(6, 10)
        n, _ = run(cfg, w, x, d, 0.05, UpdateSpec(), offset=off)
        res.append((w, n))
    assert torch.equal(res[0][0], res[1][0]) and torch.equal(res[0][1], res[1][1])
    assert not torch.equal(res[0][0], res[2][0])


def test_bounds_respected_under_large_updates():
    cfg = device_from_config({"name": "softbounds", "dw_min": 0.05, "dw_min_std": 1.0})
    torch.manual_seed(2)
    w = torch.zeros(8, 8)
    for off in range(10):
        n, s = run(cfg, w, torch.randn(8, 8) * 3, torch.randn(8, 8), 1.0, UpdateSpec(fixed_bl=False, ublm=False),
                   offset=off)
        assert torch.all(w <= s.params[P.P_BMAX]) and torch.all(w >= s.params[P.P_BMIN])


# ------------------------------------------------------------------------------- expected mode


def test_expected_mode_is_the_dynamic_model():
    # ALD: softbounds ±τ without variation: q± = 1 ∓ w/τ, F = 1, G = w/τ, so w += Δ − |Δ|·w/τ, Δ = −lr·x·d
    tau = 0.6
    cfg = device_from_config({"name": "softbounds", "dtod": 0.0, "c2c": 0.0})
    w0 = torch.linspace(-0.5, 0.5, 12).reshape(3, 4)
    w = w0.clone()
    x, d = torch.tensor([[0.3, -0.5, 0.8, 0.1]]), torch.tensor([[0.2, -0.4, 0.05]])
    lr = 0.02
    n, s = run(cfg, w, x, d, lr, UpdateSpec(mode=MODE_EXPECTED))
    delta = -lr * torch.outer(d[0], x[0]).double()
    expect = w0.double() + delta - delta.abs() * w0.double() / tau
    assert torch.allclose(w.double(), expect, atol=1e-7)
    assert torch.allclose(n.double(), (lr * torch.outer(d[0], x[0]).abs() / 0.001).double(), rtol=1e-5)


def test_expected_mode_matches_mean_of_pulsed_runs():
    cfg = device_from_config({"name": "softbounds", "dw_min": 0.002})
    torch.manual_seed(3)
    O, I = 6, 6
    s = sample_device(cfg, O, I, 0)
    lo, hi = s.params[P.P_BMIN], s.params[P.P_BMAX]
    w0 = lo + (hi - lo) * torch.rand(O, I)
    x, d = torch.randn(1, I), torch.randn(1, O) * 0.5
    lr, spec = 0.02, UpdateSpec(desired_bl=31)
    we = w0.clone()
    pulsed_update_ref(we, None, s.params, s.gparams, x, d, lr, s.dw, spec.__class__(mode=MODE_EXPECTED), 1, 0)
    runs = []
    for off in range(300):
        w = w0.clone()
        pulsed_update_ref(w, None, s.params, s.gparams, x, d, lr, s.dw, spec, 1, off)
        runs.append(w - w0)
    dwp = torch.stack(runs).double()
    mean, se = dwp.mean(0), dwp.std(0) / math.sqrt(len(runs))
    exp = (we - w0).double()
    assert torch.all((mean - exp).abs() <= 5 * se + 0.02 * exp.abs() + 1e-7)


def test_expected_mode_choppers_flip_the_direction():
    cfg = device_from_config({"name": "softbounds", "dtod": 0.0, "c2c": 0.0})
    x, d = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.2]])
    w1, w2 = torch.zeros(1, 2), torch.zeros(1, 2)
    run(cfg, w1, x, d, 0.01, UpdateSpec(mode=MODE_EXPECTED))
    run(cfg, w2, x, d, 0.01, UpdateSpec(mode=MODE_EXPECTED), chop_in=torch.tensor([1.0, -1.0]))
    assert w1[0, 0].item() == pytest.approx(-0.001, rel=1e-5) and w2[0, 0].item() == w1[0, 0].item()
    assert w2[0, 1].item() == pytest.approx(0.001, rel=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", [MODE_PULSED, MODE_MEAN_COUNT, MODE_EXPECTED])
def test_reference_gives_the_same_result_on_cpu_and_gpu(mode):
    """Counter-based RNG: the torch reference itself draws the same numbers on CPU and GPU."""
    cfg = device_from_config({"name": "reram_sb"})
    s = sample_device(cfg, 32, 24, 0)
    torch.manual_seed(0)
    x, d = torch.randn(8, 24), torch.randn(8, 32) * 0.3
    out = []
    for dev in ("cpu", "cuda"):
        w = torch.zeros(32, 24, device=dev)
        w_p = torch.zeros(32, 24, device=dev)
        n = pulsed_update_ref(w, w_p, s.params.to(dev), s.gparams.to(dev), x.to(dev), d.to(dev), 0.05, s.dw,
                              UpdateSpec(mode=mode), 5, 1)
        out.append((n.cpu(), w.cpu(), w_p.cpu()))
    assert torch.equal(out[0][0], out[1][0])
    assert torch.allclose(out[0][1], out[1][1], atol=1e-6) and torch.allclose(out[0][2], out[1][2], atol=1e-6)
