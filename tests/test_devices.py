"""Device families: single-pulse responses vs formulas (§2, §9), sampling, symmetry points, presets."""

from __future__ import annotations

import math
import os

import pytest
import torch

from analogtrain.config.errors import ConfigError
from analogtrain.devices import DEVICES, FAMILIES, device_from_config, device_step, sample_device
from analogtrain.devices import params as P
from analogtrain.ops import MODE_PULSED, UpdateSpec
from analogtrain.ops.reference import pulsed_update_ref

torch.set_num_threads(1)

CONF = os.path.join(os.path.dirname(__file__), "..", "conf")
WS = [-0.35, -0.2, 0.0, 0.2, 0.45]  # the §9 check points
SINGLE = UpdateSpec(desired_bl=1, fixed_bl=True, ublm=False, um=False, mode=MODE_PULSED)  # §6.7 recipe


def nominal(name, **kw):
    """A device without d2d and c2c variation (dtod knob 0, c2c 0)."""
    return device_from_config({"name": name, "dtod": 0.0, "c2c": 0.0, **kw})


def one_pulse(cfg, ws, up: bool, seed=0):
    """Apply exactly one pulse to a (len(ws), 1) tile through pulsed_update_ref (lr 1, BL 1, x = −1)."""
    s = sample_device(cfg, len(ws), 1, seed)
    w = torch.tensor(ws, dtype=torch.float32).reshape(-1, 1)
    x = torch.tensor([[-1.0]])
    d = torch.full((1, len(ws)), 1.0 if up else -1.0)  # x=−1, d=+1: sign −1 -> up
    n = pulsed_update_ref(w, None, s.params, s.gparams, x, d, 1.0, s.dw, SINGLE, seed=3, offset=0)
    assert torch.all(n == 1)
    return w.flatten().double()


def test_registry_has_every_family_and_preset():
    for fam in ("constant_step", "linear_step", "softbounds", "expstep", "powstep", "softbounds_reference",
                "powstep_reference"):
        assert fam in FAMILIES
    for preset in ("reram_sb", "reram_es", "ecram", "ecram_mo", "capacitor", "idealized", "gokmen_vlasov"):
        assert preset in DEVICES
    for name, cls in DEVICES.items():
        cfg = device_from_config({"name": name})
        assert isinstance(cfg, cls) and cfg.family in FAMILIES
        s = sample_device(cfg, 3, 5, seed=1)
        assert s.params.shape == (P.NP, 3, 5) and s.params.dtype == torch.float32
        assert s.gparams.shape == (P.NG,) and s.gparams.dtype == torch.float64
        assert torch.all(s.params[P.P_BMAX] >= 0) and torch.all(s.params[P.P_BMIN] <= 0)
        assert os.path.exists(os.path.join(CONF, "device", f"{name}.yaml")), name


def test_default_device_is_aihwkit_softbounds():
    cfg = device_from_config({})
    assert cfg.family == "softbounds" and cfg.dw_min == 0.001 and cfg.w_max == 0.6 and cfg.w_min == -0.6
    assert cfg.dw_min_dtod == 0.3 and cfg.dw_min_std == 0.3 and cfg.mult_noise is True


@pytest.mark.parametrize("up_down", [0.0, 0.25])
def test_softbounds_single_pulse_matches_formula(up_down):
    # §9: b_max 0.6, b_min −0.4, dw_min 0.01, up_down 0 and 0.25
    cfg = nominal("softbounds", w_max=0.6, w_min=-0.4, dw_min=0.01, up_down=up_down)
    su, sd = 0.01, 0.01 * (1 - up_down)
    w = torch.tensor(WS, dtype=torch.float64)
    up = one_pulse(cfg, WS, True)
    dn = one_pulse(cfg, WS, False)
    assert torch.allclose(up, w + su * (1 - w / 0.6), atol=1e-7)
    assert torch.allclose(dn, w - sd * (1 - w / -0.4), atol=1e-7)


@pytest.mark.parametrize("up_down,su,sd", [(0.3, 0.01, 0.007), (-0.3, 0.007, 0.01)])
def test_up_down_is_one_sided(up_down, su, sd):
    cfg = nominal("constant_step", dw_min=0.01, up_down=up_down)
    s = sample_device(cfg, 1, 1, 0)
    assert s.params[P.P_SCALE_UP].item() == pytest.approx(su, abs=1e-9)
    assert s.params[P.P_SCALE_DOWN].item() == pytest.approx(sd, abs=1e-9)
    assert one_pulse(cfg, [0.0], True).item() == pytest.approx(su, abs=1e-8)
    assert one_pulse(cfg, [0.0], False).item() == pytest.approx(-sd, abs=1e-8)


def test_powstep_single_pulse_and_one_sided_exponents():
    cfg = nominal("powstep", pow_gamma=2.0, w_max=0.6, w_min=-0.4, dw_min=0.01)
    w = torch.tensor(WS, dtype=torch.float64)
    assert torch.allclose(one_pulse(cfg, WS, True), w + 0.01 * ((0.6 - w) / 1.0) ** 2, atol=1e-7)
    assert torch.allclose(one_pulse(cfg, WS, False), w - 0.01 * ((w + 0.4) / 1.0) ** 2, atol=1e-7)
    for beta, gu, gd in [(0.3, 2.0, 1.4), (-0.3, 1.4, 2.0)]:
        s = sample_device(nominal("powstep", pow_gamma=2.0, pow_up_down=beta), 1, 1, 0)
        assert s.params[P.P_GAMMA_UP].item() == pytest.approx(gu, abs=1e-6)
        assert s.params[P.P_GAMMA_DOWN].item() == pytest.approx(gd, abs=1e-6)
    assert cfg.granularity() == pytest.approx(0.01 * 0.25)


def test_expstep_single_pulse_matches_formula():
    cfg = nominal("expstep", w_max=0.6, w_min=-0.4, dw_min=0.01)
    A_up, A_dn, g_up, g_dn, a, b = 0.00081, 0.36833, 12.44625, 12.78785, 0.244, 0.2425
    w = torch.tensor(WS, dtype=torch.float64)
    z = 2 * a * w / 1.0 + b
    y_up = torch.clamp(1 - A_up * torch.exp(g_up * z), min=0)
    y_dn = torch.clamp(1 - A_dn * torch.exp(-g_dn * z), min=0)
    assert torch.allclose(one_pulse(cfg, WS, True), w + 0.01 * y_up, atol=1e-7)
    assert torch.allclose(one_pulse(cfg, WS, False), w - 0.01 * y_dn, atol=1e-7)


def test_linear_step_uses_mean_bound_reference():
    cfg = nominal("linear_step", gamma_up=0.5, gamma_down=0.3, w_max=0.6, w_min=-0.4, dw_min=0.01)
    w = torch.tensor(WS, dtype=torch.float64)
    assert torch.allclose(one_pulse(cfg, WS, True), w + 0.01 * (1 - 0.5 * w / 0.6), atol=1e-7)
    assert torch.allclose(one_pulse(cfg, WS, False), w - 0.01 * (1 + 0.3 * w / 0.4), atol=1e-7)


def test_softbounds_reference_acts_on_device_conductance():
    cfg = nominal("softbounds_reference", reference_mean=0.1, w_max=0.6, w_min=-0.4, dw_min=0.01)
    w = torch.tensor(WS[:4], dtype=torch.float64)  # visible weights; device = w + 0.1
    wd = w + 0.1
    assert torch.allclose(one_pulse(cfg, WS[:4], True), wd + 0.01 * (1 - wd / 0.6) - 0.1, atol=1e-6)
    assert torch.allclose(one_pulse(cfg, WS[:4], False), wd - 0.01 * (1 + wd / 0.4) - 0.1, atol=1e-6)


@pytest.mark.parametrize("mult,expected_std", [(True, 0.0025), (False, 0.005)])
def test_c2c_noise_placement(mult, expected_std):
    # §9: dw_min_std 0.5 at w = 0.3 (bounds 0.6/−0.4, dw_min 0.01): std 0.0025 mult, 0.005 additive
    cfg = device_from_config(
        {"name": "softbounds", "dtod": 0.0, "dw_min_std": 0.5, "mult_noise": mult, "w_max": 0.6, "w_min": -0.4,
         "dw_min": 0.01}
    )
    n = 4000
    s = sample_device(cfg, n, 1, 0)
    w = torch.full((n, 1), 0.3)
    pulsed_update_ref(w, None, s.params, s.gparams, torch.tensor([[-1.0]]), torch.ones(1, n), 1.0, s.dw, SINGLE, 7, 0)
    step = (w - 0.3).double()
    assert step.mean().item() == pytest.approx(0.005, rel=0.03)
    assert step.std().item() == pytest.approx(expected_std, rel=0.05)


def test_bounds_are_hard_and_reached():
    for name in ("constant_step", "softbounds", "powstep", "expstep", "linear_step"):
        cfg = device_from_config({"name": name, "dw_min": 0.05, "dw_min_std": 1.0})
        s = sample_device(cfg, 20, 20, 2)
        w = torch.zeros(20, 20)
        up = torch.ones(20, 20, dtype=torch.bool)
        g = torch.Generator().manual_seed(0)
        for k in range(600):
            xi = torch.randn(20, 20, generator=g)
            w = device_step(w, up if k < 300 else ~up, s.params, s.gparams, xi)
            assert torch.all(w <= s.params[P.P_BMAX]) and torch.all(w >= s.params[P.P_BMIN])
    # noise-free: 300 down pulses of ~0.05 take every constant-step device exactly to its b_min
    s = sample_device(device_from_config({"name": "constant_step", "dw_min": 0.05, "dw_min_std": 0.0}), 20, 20, 2)
    w = torch.zeros(20, 20)
    for _ in range(300):
        w = device_step(w, torch.zeros(20, 20, dtype=torch.bool), s.params, s.gparams, None)
    assert torch.equal(w, s.params[P.P_BMIN])


def test_symmetry_point_closed_forms_with_d2d():
    s = sample_device(device_from_config({"name": "softbounds", "up_down": 0.2}), 30, 30, 5)
    p = s.params.double()
    su, sd, bmax, bmin = p[P.P_SCALE_UP], p[P.P_SCALE_DOWN], p[P.P_BMAX], p[P.P_BMIN]
    closed = (su - sd) / (su / bmax - sd / bmin)
    assert torch.allclose(s.symmetry_point().double(), closed.clamp(bmin, bmax), atol=1e-6)
    # nominal one-sided softbounds ±0.6: w* = 0.6·u/(2 − u)
    s0 = sample_device(nominal("softbounds", up_down=0.2), 1, 1, 0)
    assert s0.symmetry_point().item() == pytest.approx(0.6 * 0.2 / 1.8, abs=1e-6)
    # powstep, equal exponents: w* = (b_max + ρ b_min)/(1 + ρ), ρ = (sd/su)^(1/γ)
    sp = sample_device(device_from_config({"name": "powstep", "pow_gamma": 2.0, "pow_gamma_dtod": 0.0,
                                           "up_down": 0.3}), 20, 20, 1)
    p = sp.params.double()
    rho = (p[P.P_SCALE_DOWN] / p[P.P_SCALE_UP]) ** 0.5
    closed = (p[P.P_BMAX] + rho * p[P.P_BMIN]) / (1 + rho)
    assert torch.allclose(sp.symmetry_point().double(), closed, atol=1e-6)


@pytest.mark.parametrize("name,extra", [("softbounds", {"up_down": 0.3}), ("powstep", {"up_down": -0.2}),
                                        ("linear_step", {"gamma_up": 0.4, "gamma_down": 0.8})])
def test_alternating_pulses_converge_to_symmetry_point(name, extra):
    cfg = device_from_config({"name": name, "dw_min_std": 0.0, "dw_min": 0.005, **extra})
    s = sample_device(cfg, 8, 8, 3)
    w = torch.where(torch.arange(64).reshape(8, 8) % 2 == 0, s.params[P.P_BMIN], s.params[P.P_BMAX])
    up = torch.ones(8, 8, dtype=torch.bool)
    for _ in range(3000):
        w = device_step(w, up, s.params, s.gparams, None)
        w = device_step(w, ~up, s.params, s.gparams, None)
    # the up-then-down fixed point lies within one step of the equal-step point
    assert torch.allclose(w, s.symmetry_point(), atol=2 * 0.005 * 1.6)


def test_expstep_symmetry_point_is_equal_step_point():
    s = sample_device(device_from_config({"name": "reram_es"}), 10, 10, 0)
    sp = s.symmetry_point().double()
    up, dn = s.step_up(sp), s.step_down(sp)
    inside = (sp > s.params[P.P_BMIN]) & (sp < s.params[P.P_BMAX])
    assert inside.any()
    assert torch.allclose(up[inside], dn[inside], rtol=1e-4)


def test_subtract_symmetry_point_zeroes_visible_symmetry_point():
    s = sample_device(device_from_config({"name": "softbounds_reference", "up_down": 0.3,
                                          "subtract_symmetry_point": True}), 20, 20, 4)
    assert s.symmetry_point().abs().max().item() < 1e-5
    sp = sample_device(device_from_config({"name": "powstep_reference", "up_down": 0.3, "pow_gamma": 1.5,
                                           "dw_min": 0.01, "subtract_symmetry_point": True}), 6, 6, 4)
    assert sp.symmetry_point().abs().max().item() < 1e-4
    assert sp.params[P.P_REF].abs().min().item() > 1e-3  # the reference really moved


def test_d2d_sampling_reproducible_and_distributed():
    cfg = device_from_config({"name": "softbounds"})
    a = sample_device(cfg, 100, 100, seed=11)
    b = sample_device(cfg, 100, 100, seed=11)
    c = sample_device(cfg, 100, 100, seed=12)
    assert torch.equal(a.params, b.params) and torch.equal(a.gparams, b.gparams)
    assert not torch.equal(a.params, c.params)
    bmax = a.params[P.P_BMAX].double()
    assert bmax.mean().item() == pytest.approx(0.6, abs=0.01)
    assert bmax.std().item() == pytest.approx(0.6 * 0.3, rel=0.05)
    ratio = (a.params[P.P_SCALE_UP] + a.params[P.P_SCALE_DOWN]).double() / (2 * 0.001)  # the gain
    assert ratio.mean().item() == pytest.approx(1.0, abs=0.01)
    assert ratio.std().item() == pytest.approx(0.3, rel=0.05)
    diff = (a.params[P.P_SCALE_UP] - a.params[P.P_SCALE_DOWN]).double() / (2 * 0.001)  # r = 0.01 ξ
    assert diff.std().item() == pytest.approx(0.01, rel=0.05)
    # log-normal gain
    ln = sample_device(device_from_config({"name": "softbounds", "dw_min_dtod_log_normal": True}), 100, 100, 1)
    g = (ln.params[P.P_SCALE_UP] + ln.params[P.P_SCALE_DOWN]).double() / (2 * 0.001)
    assert torch.log(g).std().item() == pytest.approx(0.3, rel=0.05)


def test_reset_target_and_diffusion_rate_are_sampled_as_aihwkit():
    """§2.2: b_reset = reset + reset_dtod·ξ (additive), plus the symmetry point a reference family
    subtracted (§2.7); diffusion rate |diffusion·(1 + diffusion_dtod·ξ)|; both off (None) by default."""
    plain = sample_device(device_from_config({"name": "softbounds"}), 10, 10, 3)
    assert plain.reset_bias is None and plain.diffusion_rate is None and plain.reset_std == 0.01
    s = sample_device(device_from_config({"name": "softbounds", "reset": 0.1, "reset_dtod": 0.02,
                                          "diffusion": 0.01, "diffusion_dtod": 0.5}), 100, 100, 3)
    b, r = s.reset_bias.double(), s.diffusion_rate.double()
    assert b.mean().item() == pytest.approx(0.1, abs=0.001)
    assert b.std().item() == pytest.approx(0.02, rel=0.05)
    assert r.min().item() >= 0 and r.mean().item() == pytest.approx(0.01, abs=0.0005)
    # E|0.5ξ| = 0.5·sqrt(2/π)
    assert (r / 0.01 - 1).abs().mean().item() == pytest.approx(0.5 * math.sqrt(2 / math.pi), rel=0.1)
    ref = sample_device(device_from_config({"name": "softbounds_reference", "up_down": 0.3,
                                            "subtract_symmetry_point": True, "reference_std": 0.0}), 8, 8, 4)
    # the subtracted symmetry point is the reference (reference_mean 0, std 0) and the reset target
    assert torch.equal(ref.reset_bias, ref.params[P.P_REF])


def test_post_update_step_decays_towards_the_reset_target_and_diffuses():
    from analogtrain.tiles import DeviceArray

    dev = {"name": "softbounds", "dw_min_dtod": 0.0, "w_max_dtod": 0.0, "w_min_dtod": 0.0,
           "up_down_dtod": 0.0}
    arr = DeviceArray(device_from_config({**dev, "lifetime": 10.0, "reset": 0.1}), 20, 30, seed_device=1,
                      seed_pulse=2)
    w0 = (torch.rand(20, 30, generator=torch.Generator().manual_seed(0)) - 0.5) * 0.6
    arr.set_weights(w0)
    arr.post_update_step()
    assert torch.allclose(arr.get_weights(), (w0 - 0.1) * 0.9 + 0.1, atol=1e-7)

    arr = DeviceArray(device_from_config({**dev, "diffusion": 0.01}), 40, 50, seed_device=1, seed_pulse=2)
    arr.set_weights(torch.zeros(40, 50))
    arr.post_update_step()
    step = arr.get_weights().double() / 0.01
    assert step.mean().abs().item() < 0.05 and step.std().item() == pytest.approx(1.0, rel=0.05)
    again = DeviceArray(device_from_config({**dev, "diffusion": 0.01}), 40, 50, seed_device=1, seed_pulse=2)
    again.set_weights(torch.zeros(40, 50))
    again.post_update_step()
    assert torch.equal(again.get_weights(), arr.get_weights())  # Philox draws: reproducible
    arr.offset += 1
    arr.post_update_step()  # the next mini-batch draws anew: a random walk
    assert (arr.get_weights().double() / 0.01).var().item() == pytest.approx(2.0, rel=0.08)


def test_perfect_bias_column_is_an_ideal_base_device_that_the_family_then_samples():
    """aihwkit populate order: the base sets the bias column's scales to dw_min and its bounds ×100, then
    the family samples its own parameters from those (§2.2): a linear step keeps its slope relative to
    the mean bound (−γ·dw_min/w_max, not 0), a reference family its reference offset."""
    ls = device_from_config({"name": "linear_step", "gamma_up": 0.4, "gamma_up_dtod": 0.0,
                             "gamma_down_dtod": 0.0})
    s = sample_device(ls, 6, 5, 2, perfect_bias=True)
    su, sd = s.params[P.P_SCALE_UP][:, -1], s.params[P.P_SCALE_DOWN][:, -1]
    assert torch.all(su == ls.dw_min) and torch.all(sd == ls.dw_min)
    assert torch.allclose(s.params[P.P_BMAX][:, -1], torch.full((6,), 100 * ls.w_max))
    # mean-bound reference: slope −γ·dw_min/w_max, as on an ideal device of the other columns' bounds
    expected = torch.full((6,), -0.4 * ls.dw_min / ls.w_max)
    assert torch.allclose(s.params[P.P_SLOPE_UP][:, -1], expected, rtol=1e-6)
    ref = sample_device(device_from_config({"name": "softbounds_reference", "reference_std": 0.1}), 6, 5, 2,
                        perfect_bias=True)
    assert ref.params[P.P_REF][:, -1].abs().min() > 0  # the bias column has its reference offset too


def test_enforce_consistency():
    cfg = device_from_config({"name": "softbounds", "w_max_dtod": 3.0, "w_min_dtod": 3.0, "dw_min_dtod": 3.0})
    s = sample_device(cfg, 50, 50, 0)
    assert torch.all(s.params[P.P_BMAX] >= 0) and torch.all(s.params[P.P_BMIN] <= 0)
    assert torch.all(s.params[P.P_SCALE_UP] >= 0) and torch.all(s.params[P.P_SCALE_DOWN] >= 0)
    dead = sample_device(device_from_config({"name": "constant_step", "w_max_dtod": 3.0, "w_min_dtod": 3.0,
                                             "enforce_consistency": False}), 50, 50, 0)
    crossed = dead.params[P.P_BMIN] == dead.params[P.P_BMAX]
    assert crossed.any()  # crossed bounds collapse to their midpoint


def test_granularity_and_states_of_presets():
    # §5.2 nominal granularities / state counts
    assert device_from_config({"name": "reram_es"}).granularity() == pytest.approx(0.00199, rel=0.005)
    assert device_from_config({"name": "reram_es"}).num_states() == pytest.approx(1004, rel=0.002)
    for name, states in [("reram_sb", 1000), ("capacitor", 400), ("ecram", 1000), ("ecram_mo", 7090),
                         ("idealized", 10000), ("gokmen_vlasov", 1250)]:
        assert device_from_config({"name": name}).num_states() == pytest.approx(states, rel=0.001), name
    s = sample_device(device_from_config({"name": "reram_sb"}), 2, 2, 0)
    assert s.write_noise and s.write_noise_std == pytest.approx(56 * 0.002)
    assert s.gparams[P.G_MULT_NOISE].item() == 0.0


def test_corrupt_devices_are_stuck():
    s = sample_device(device_from_config({"name": "softbounds", "corrupt_devices_prob": 0.5}), 40, 40, 0)
    stuck = s.params[P.P_SCALE_UP] == 0
    assert 0.4 < stuck.float().mean().item() < 0.6
    assert torch.all(s.params[P.P_BMIN][stuck] == s.params[P.P_BMAX][stuck])
    assert torch.all(s.params[P.P_BMAX][stuck].abs() <= 0.1 + 1e-7)


@pytest.mark.parametrize(
    "node,key,fragment",
    [
        ({"name": "softbounds", "foo": 1}, "device.foo", "allowed keys"),
        ({"name": "softbounds", "dw_min": "abc"}, "device.dw_min", "allowed a number"),
        ({"name": "softbounds", "mult_noise": 1}, "device.mult_noise", "true or false"),
        ({"name": "softbounds", "up_down": 1.5}, "device.up_down", "-1.0 < up_down < 1.0"),
        ({"name": "softbounds", "dw_min": 0.0}, "device.dw_min", "dw_min > 0"),
        ({"name": "softbounds", "w_min": 0.3}, "device.w_min", "w_min <= 0.0"),
        ({"name": "nope"}, "device.name", "softbounds"),
        ({"name": "reram_sb", "family": "powstep"}, "device.family", "softbounds_reference"),
        ({"name": "softbounds", "skew": 0.7}, "device.skew", "w_min=-0.6 < skew < w_max=0.6"),
        ({"name": "softbounds", "asymmetry": 1.5}, "device.asymmetry", "0 <= asymmetry <= 1"),
        ({"name": "expstep", "asymmetry": 0.5}, "device.asymmetry", "expstep"),
        ({"name": "constant_step", "skew": 0.1}, "device.skew", "asymmetry > 0"),
        ({"name": "softbounds", "n_states": -3}, "device.n_states", "n_states > 0"),
        ({"name": "softbounds", "dtod": -1}, "device.dtod", "dtod >= 0"),
        ({"name": "softbounds", "write_noise_std": -1}, "device.write_noise_std", ">= 0"),
        ({"name": "softbounds_reference", "reference_std": -0.1}, "device.reference_std", ">= 0"),
        ({"name": "softbounds", "diffusion": -0.01}, "device.diffusion", "diffusion >= 0"),
        ({"name": "linear_step", "reset_std": -1}, "device.reset_std", "reset_std >= 0"),
        ({"name": "softbounds", "reset_dtod": -0.1}, "device.reset_dtod", "reset_dtod >= 0"),
    ],
)
def test_config_errors_name_key_and_allowed(node, key, fragment):
    with pytest.raises(ConfigError) as ei:
        device_from_config(node)
    assert ei.value.key == key
    assert fragment in str(ei.value)
    assert "\n" not in str(ei.value)


def test_prefix_is_used_in_errors():
    with pytest.raises(ConfigError) as ei:
        device_from_config({"name": "softbounds", "bad": 1}, prefix="algo.device_c")
    assert ei.value.key == "algo.device_c.bad"


def test_hydra_group_composes_every_device():
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore

    from analogtrain.devices.schema import register_configs

    register_configs(ConfigStore.instance())
    with initialize_config_dir(config_dir=os.path.abspath(CONF), version_base=None):
        for name, cls in DEVICES.items():
            cfg = compose(overrides=[f"+device={name}"])
            dev = device_from_config(cfg.device)
            assert dev == device_from_config({"name": name}), name
        cfg = compose(overrides=["+device=reram_sb", "device.skew=0.1", "device.n_states=200"])
        dev = device_from_config(cfg.device)
        assert dev.reference_mean == pytest.approx(-0.1) and dev.num_states() == pytest.approx(200)


def test_step_up_down_helpers_match_device_step():
    s = sample_device(device_from_config({"name": "softbounds", "dw_min_std": 0.0}), 4, 4, 0)
    lo, hi = s.params[P.P_BMIN], s.params[P.P_BMAX]
    w = lo + (hi - lo) * torch.linspace(0.05, 0.95, 16).reshape(4, 4)  # inside each device's bounds
    up = torch.ones(4, 4, dtype=torch.bool)
    assert torch.allclose(s.step_up(w), device_step(w, up, s.params, s.gparams, None) - w, atol=1e-7)
    assert torch.allclose(s.step_down(w), w - device_step(w, ~up, s.params, s.gparams, None), atol=1e-7)
    assert math.isclose(float(s.step_up(s.symmetry_point())[0, 0]), float(s.step_down(s.symmetry_point())[0, 0]),
                        rel_tol=1e-4)
