"""Physics knobs (asymmetry, skew, skew_std, n_states, dtod, c2c) <-> raw parameters (devices/base.py)."""

from __future__ import annotations

import pytest
import torch

from analogtrain.config.errors import ConfigError
from analogtrain.devices import device_from_config, sample_device
from analogtrain.devices import params as P

torch.set_num_threads(1)


def test_dtod_scales_every_spread_but_not_the_reference():
    raw = device_from_config({"name": "reram_sb", "reference_std": 0.05})
    c = device_from_config({"name": "reram_sb", "reference_std": 0.05, "dtod": 2.0})
    for f in ("dw_min_dtod", "up_down_dtod", "w_max_dtod", "w_min_dtod", "slope_up_dtod"):
        assert getattr(c, f) == pytest.approx(2.0 * getattr(raw, f))
    assert c.reference_std == 0.05
    lin = device_from_config({"name": "ecram", "dtod": 0.5})
    assert lin.gamma_up_dtod == pytest.approx(0.025)
    s = sample_device(device_from_config({"name": "softbounds", "dtod": 0.0}), 5, 5, 3)
    for plane in range(P.NP):
        assert torch.all(s.params[plane] == s.params[plane, 0, 0])  # identical devices


def test_c2c_sets_dw_min_std():
    assert device_from_config({"name": "softbounds", "c2c": 1.2}).dw_min_std == 1.2
    s = sample_device(device_from_config({"name": "expstep", "c2c": 0.7}), 1, 1, 0)
    assert s.gparams[P.G_DW_MIN_STD].item() == pytest.approx(0.7)


@pytest.mark.parametrize("name,extra,factor", [
    ("softbounds", {}, 1.0),
    ("constant_step", {}, 1.0),
    ("powstep", {"pow_gamma": 2.0}, 0.25),
    ("reram_es", {}, None),
])
def test_n_states_maps_to_dw_min_through_granularity(name, extra, factor):
    c = device_from_config({"name": name, "n_states": 250, **extra})
    assert c.num_states() == pytest.approx(250)
    if factor is not None:
        assert c.dw_min == pytest.approx((c.w_max - c.w_min) / (250 * factor))


def test_asymmetry_on_linear_families():
    c = device_from_config({"name": "linear_step", "asymmetry": 0.4})
    assert c.gamma_up == 0.4 and c.gamma_down == 0.4
    for name in ("softbounds", "constant_step"):
        c = device_from_config({"name": name, "asymmetry": 0.5, "dtod": 0.0, "c2c": 0.0})
        s = sample_device(c, 1, 1, 0)
        w = torch.tensor([[0.3]])
        # up step shrinks by the fraction a·w/b_max, the down step grows by a·w/|b_min|
        assert s.step_up(w).item() == pytest.approx(0.001 * (1 - 0.5 * 0.3 / 0.6), rel=1e-5)
        assert s.step_down(w).item() == pytest.approx(0.001 * (1 + 0.5 * 0.3 / 0.6), rel=1e-5)
        assert s.symmetry_point().item() == pytest.approx(0.0, abs=1e-6)
    flat = sample_device(device_from_config({"name": "softbounds", "asymmetry": 0.0, "dtod": 0.0}), 1, 1, 0)
    assert flat.step_up(torch.tensor([[0.5]])).item() == pytest.approx(0.001)  # a = 0: constant step
    full = device_from_config({"name": "softbounds", "asymmetry": 1.0})
    assert torch.equal(sample_device(full, 4, 4, 1).params,
                       sample_device(device_from_config({"name": "softbounds"}), 4, 4, 1).params)


def test_asymmetry_on_powstep_is_the_exponent():
    c = device_from_config({"name": "powstep", "asymmetry": 0.5})
    assert c.pow_gamma == 0.5


@pytest.mark.parametrize("node", [
    {"name": "softbounds"},
    {"name": "softbounds", "w_max": 0.8, "w_min": -0.4},
    {"name": "linear_step", "asymmetry": 0.5},
    {"name": "constant_step", "asymmetry": 0.8},
    {"name": "powstep", "pow_gamma": 1.5},
    {"name": "expstep"},
    {"name": "ecram"},
])
@pytest.mark.parametrize("skew", [-0.15, 0.1])
def test_skew_places_the_nominal_symmetry_point(node, skew):
    c = device_from_config({**node, "skew": skew, "dtod": 0.0})
    s = sample_device(c, 1, 1, 0)
    assert s.symmetry_point().item() == pytest.approx(skew, abs=1e-5)
    # one-sided: only one of the two steps is shrunk
    assert min(s.params[P.P_SCALE_UP].item(), s.params[P.P_SCALE_DOWN].item()) < c.dw_min
    assert max(s.params[P.P_SCALE_UP].item(), s.params[P.P_SCALE_DOWN].item()) == pytest.approx(c.dw_min)


def test_skew_on_softbounds_is_the_papers_c_lin_mapping():
    # softbounds ±b, full slopes: up_down = 2s/(b + s) for s > 0 (one-sided version of q± = (1 ± c)(1 ∓ w/τ))
    c = device_from_config({"name": "softbounds", "skew": 0.2})
    assert c.up_down == pytest.approx(2 * 0.2 / (0.6 + 0.2))


@pytest.mark.parametrize("name", ["softbounds_reference", "powstep_reference", "reram_sb"])
def test_skew_on_reference_families_is_the_reference_offset(name):
    c = device_from_config({"name": name, "skew": 0.12, "skew_std": 0.05, "subtract_symmetry_point": True})
    assert c.reference_mean == pytest.approx(-0.12) and c.reference_std == 0.05
    s = sample_device(c, 60, 60, 1)
    sp = s.symmetry_point().double()
    assert sp.mean().item() == pytest.approx(0.12, abs=0.005)
    assert sp.std().item() == pytest.approx(0.05, rel=0.05)


@pytest.mark.parametrize("skew", [0.05, 0.3, -0.3])
def test_skew_std_on_softbounds_spreads_the_symmetry_point(skew):
    """Also with a large skew, whose one-sided up_down changes how r moves the symmetry point (a factor
    1/(1 + bias) on the shrunk side: the old /2 mapping gave twice the std at skew 0.3)."""
    c = device_from_config({"name": "softbounds", "skew": skew, "skew_std": 0.02, "dtod": 0.0})
    s = sample_device(c, 100, 100, 2)
    sp = s.symmetry_point().double()
    assert sp.mean().item() == pytest.approx(skew, abs=0.004)
    assert sp.std().item() == pytest.approx(0.02, rel=0.08)  # first-order mapping


def test_knob_resolution_is_idempotent_and_recorded():
    c = device_from_config({"name": "softbounds", "skew": 0.1, "n_states": 300, "dtod": 0.5, "asymmetry": 0.7})
    again = device_from_config(c)
    assert again == c
    assert c.applied_knobs == {"skew": 0.1, "n_states": 300.0, "dtod": 0.5, "asymmetry": 0.7}
    assert c.skew is None and c.n_states is None and c.dtod is None


def test_knob_errors():
    with pytest.raises(ConfigError, match="device.skew_std"):
        device_from_config({"name": "constant_step", "skew_std": 0.1})
    with pytest.raises(ConfigError, match="device.asymmetry"):
        device_from_config({"name": "powstep", "asymmetry": -0.1})
    with pytest.raises(ConfigError, match="device.c2c"):
        device_from_config({"name": "softbounds", "c2c": -0.1})
