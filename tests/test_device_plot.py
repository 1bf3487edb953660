"""Device explorer: pulse traces, the figure and the scripts/plot_device.py entry point."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from analogtrain.config.errors import ConfigError
from analogtrain.devices import device_from_config, sample_device
from analogtrain.devices import params as P
from analogtrain.devices.plot import device_figure, nominal_config, pulse_traces

torch.set_num_threads(1)
ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_nominal_config_removes_all_variation():
    nom = nominal_config({"name": "reram_sb", "skew_std": 0.1})
    s = sample_device(nom, 4, 4, 0)
    assert nom.dw_min_std == 0.0 and nom.reference_std == 0.0
    for plane in range(P.NP):
        assert torch.all(s.params[plane] == s.params[plane, 0, 0])


def test_pulse_traces_of_a_constant_step_device_are_ramps():
    s = sample_device(nominal_config({"name": "constant_step", "dw_min": 0.1, "w_max": 1.0, "w_min": -1.0}), 1, 1, 0)
    tr = pulse_traces(s, 25, noise=False).flatten().double()
    up = torch.clamp(-1.0 + 0.1 * torch.arange(26, dtype=torch.float64), max=1.0)
    assert torch.allclose(tr[:26], up, atol=1e-5)  # 20 pulses reach b_max, the rest are clipped
    assert tr[-1].item() == pytest.approx(-1.0, abs=1e-5)


def test_softbounds_trace_saturates_towards_bound():
    s = sample_device(nominal_config({"name": "softbounds", "dw_min": 0.01}), 1, 1, 0)
    tr = pulse_traces(s, 300, noise=False).flatten().double()
    # up from b_min: w_k = 0.6 − 1.2·(1 − 0.01/0.6)^k
    k = torch.arange(301, dtype=torch.float64)
    assert torch.allclose(tr[:301], 0.6 - 1.2 * (1 - 0.01 / 0.6) ** k, atol=1e-4)


@pytest.mark.parametrize("node", [{"name": "softbounds"}, {"name": "reram_sb", "skew": 0.1},
                                  {"name": "reram_es"}, {"name": "powstep", "asymmetry": 2.0}])
def test_device_figure_writes_png(tmp_path, node):
    path = device_figure(node, tmp_path / "dev.png")
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def _script():
    spec = importlib.util.spec_from_file_location("plot_device", os.path.join(ROOT, "scripts", "plot_device.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_plot_device_script_composes_the_device_group(tmp_path):
    out = tmp_path / "x.png"
    path = _script().main(["device=capacitor", "device.n_states=100", f"out={out}"])
    assert path == out and out.stat().st_size > 20_000
    with pytest.raises(SystemExit):
        _script().main(["device=softbounds", "device.skew=0.9", f"out={out}"])
    with pytest.raises(Exception):  # Hydra refuses an unknown key of the schema
        _script().main(["device=softbounds", "device.nope=1", f"out={out}"])
    with pytest.raises(ConfigError):
        device_from_config({"name": "softbounds", "skew": 0.9})
