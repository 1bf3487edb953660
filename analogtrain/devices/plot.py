"""Device explorer: pulse-response figure of one device config (matplotlib, Agg backend).

Panels:
1. Pulse-response traces: a few sampled devices (d2d and c2c noise on, thin lines) and the nominal
   device (no variation, thick line) driven by up pulses from b_min, then down pulses back (aihwkit's
   ``plot_pulse_response`` style).
2. Noise-free step size vs weight of the nominal device, up and down, with the symmetry point w*
   (where the two are equal) marked.
3. Histogram of the symmetry points of a sampled 32×32 array (the d2d spread that ``skew_std`` sets).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from analogtrain.devices import params as P
from analogtrain.devices.registry import device_from_config
from analogtrain.devices.sampling import sample_device
from analogtrain.devices.step import device_step

__all__ = ["device_figure", "nominal_config", "pulse_traces"]


def nominal_config(cfg):
    """The same device without device-to-device or cycle-to-cycle variation (knobs dtod = c2c = 0)."""
    cfg = device_from_config(cfg)
    changes = {"dtod": 0.0, "c2c": 0.0}
    if hasattr(cfg, "reference_std"):
        changes["reference_std"] = 0.0
    return device_from_config(dataclasses.replace(cfg, **changes))


def pulse_traces(sampled, n_pulses: int, noise: bool, seed: int = 0) -> torch.Tensor:
    """(2·n_pulses + 1, n_devices) visible weights: start at each device's b_min, n_pulses up, n_pulses down.

    ``sampled`` is a SampledDevice of shape (n_devices, 1)."""
    p = sampled.params
    ref = p[P.P_REF]
    w = p[P.P_BMIN].clone()  # device conductance starts at the lower bound
    up = torch.ones_like(w, dtype=torch.bool)
    gen = torch.Generator().manual_seed(seed)
    out = [w - ref]
    for k in range(2 * n_pulses):
        xi = torch.randn(w.shape, generator=gen) if noise else None
        w = device_step(w, up if k < n_pulses else ~up, p, sampled.gparams, xi)
        out.append(w - ref)
    return torch.stack(out).reshape(2 * n_pulses + 1, -1)


def device_figure(device_cfg_node, path, n_traces: int = 5, seed: int = 0):
    """Draw the pulse-response figure of ``device_cfg_node`` (DictConfig / dict / dataclass) to ``path``
    (PNG). Returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cfg = device_from_config(device_cfg_node)
    nom_cfg = nominal_config(cfg)
    nom = sample_device(nom_cfg, 1, 1, seed)
    states = cfg.num_states()
    n_pulses = int(min(max(1.3 * states, 10), 4000))

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    sampled = sample_device(cfg, n_traces, 1, seed)
    tr = pulse_traces(sampled, n_pulses, noise=True, seed=seed)
    ax.plot(tr.numpy(), lw=0.6, alpha=0.7)
    nominal_trace = pulse_traces(nom, n_pulses, noise=False).numpy()
    ax.plot(nominal_trace, color="k", lw=2.0, label="nominal (no variation)")
    ax.axvline(n_pulses, color="grey", ls=":", lw=0.8)
    ax.set_xlabel("pulse number (up, then down)")
    ax.set_ylabel("visible weight w")
    ax.set_title("pulse response")
    ax.legend(loc="lower center", fontsize=8)

    ax = axes[1]
    ref = nom.params[P.P_REF, 0, 0].item()
    lo, hi = nom.params[P.P_BMIN, 0, 0].item() - ref, nom.params[P.P_BMAX, 0, 0].item() - ref
    w = torch.linspace(lo, hi, 400, dtype=torch.float64).reshape(-1, 1)
    params = nom.params.expand(-1, w.shape[0], 1)
    ref_t = torch.full_like(w, ref)
    from analogtrain.devices.step import step_magnitudes

    up, dn = step_magnitudes(w + ref_t, params.double(), nom.gparams)
    ax.plot(w.flatten().numpy(), up.flatten().numpy(), label="up step", color="tab:blue")
    ax.plot(w.flatten().numpy(), dn.flatten().numpy(), label="down step", color="tab:red")
    sp = nom.symmetry_point().item()
    ax.axvline(sp, color="k", ls="--", lw=1.0, label=f"symmetry point w* = {sp:.4g}")
    ax.axhline(nom.dw, color="grey", ls=":", lw=0.8, label=f"granularity dw = {nom.dw:.3g}")
    ax.set_xlabel("visible weight w")
    ax.set_ylabel("step size (noise-free)")
    ax.set_title("step size vs weight (nominal device)")
    ax.legend(fontsize=8)

    ax = axes[2]
    arr = sample_device(cfg, 32, 32, seed)
    sps = arr.symmetry_point().flatten()
    lo_s, hi_s = float(sps.min()), float(sps.max())
    pad = max(1e-3 * (cfg.w_max - cfg.w_min), 0.0) if hi_s - lo_s < 1e-4 * (cfg.w_max - cfg.w_min) else 0.0
    ax.hist(sps.numpy(), bins=40, range=(lo_s - pad, hi_s + pad), color="tab:green", alpha=0.8)
    ax.axvline(sp, color="k", ls="--", lw=1.0)
    ax.set_xlabel("symmetry point w* (32×32 sampled devices)")
    ax.set_ylabel("count")
    ax.set_title(f"d2d spread: mean {sps.mean():.3g}, std {sps.std():.3g}")

    knobs = getattr(cfg, "applied_knobs", {}) or {}
    ktxt = (" | knobs " + ", ".join(f"{k}={v:g}" for k, v in knobs.items())) if knobs else ""
    fig.suptitle(
        f"device {cfg.name} ({cfg.family}): dw_min {cfg.dw_min:.4g}, ≈{states:.0f} states, "
        f"bounds [{cfg.w_min:g}, {cfg.w_max:g}], c2c {cfg.dw_min_std:g}{ktxt}",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
