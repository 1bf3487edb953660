"""Drivers of the theory papers' synthetic experiments: tile rules driven directly, no trainer.

Used by ``scripts/theory_figures.py`` (figures) and ``tests/test_theory*.py``. Each driver takes a
rule built by :func:`build_rule` (any algorithm, any device, from plain dicts) and returns numbers:

* :func:`least_squares` — teacher-student least squares ``y = W* x + σ_y ξ`` (paper-claims §1.3 Fig. 1,
  §2 items 2-4): relative weight error ``‖W − W*‖²/‖W*‖²`` over time; its tail mean is the "floor".
* :func:`implicit_penalty` — diagonal quadratic ``f = ½L Σ(w − w*)²`` with gradient noise N(0, σ²)
  (paper-claims §2.1): long-run mean of analog SGD against ``w̄ = w*·Lτ/(Lτ + σ√(2/π))``.
* :func:`constant_gradient` — the toy of Rasch et al. 2023 Fig. 3: x = −X, d = αX + (1−α)Y.
* weight programming (Rasch et al. 2023 Fig. 4) = :func:`least_squares` without label noise towards a
  target Ŵ, scored by :func:`weight_error_std` (ε_w = std(W − Ŵ)).

The forward pass of these drivers is exact (digital ``W x`` with ``W = rule.effective_weight()``): the
experiments isolate the update physics, as the papers do.
"""

from __future__ import annotations

import math

import torch

from analogtrain.tiles.config import TileConfig, to_dataclass
from analogtrain.tiles.seeds import derive_seed

__all__ = ["build_rule", "least_squares", "implicit_penalty", "closed_form_mean", "constant_gradient",
           "weight_error_std", "ald_device"]


def ald_device(tau: float = 1.0, n_states: float | None = None, dw_min: float = 0.001, c2c: float = 0.0,
               **extra) -> dict:
    """The theory papers' asymmetric linear device (ALD) as a ``softbounds`` node: q± = 1 ∓ w/τ, i.e.
    bounds ±τ, symmetric steps, no device-to-device variation (dw_min = 2τ/n_states if given)."""
    if n_states is not None:
        dw_min = 2.0 * tau / n_states
    dev = {"name": "softbounds", "family": "softbounds", "w_max": tau, "w_min": -tau, "dw_min": dw_min,
           "dw_min_dtod": 0.0, "up_down": 0.0, "up_down_dtod": 0.0, "w_max_dtod": 0.0, "w_min_dtod": 0.0,
           "dw_min_std": c2c}
    dev.update(extra)
    return dev


def build_rule(algo: str, device: dict, out_size: int, in_size: int, *, algo_kw: dict | None = None,
               tile_kw: dict | None = None, seed: int = 0, name: str = "theory"):
    """A ``TileRule`` for ``algo`` (``sgd`` or a registered TT-family name) on ``device`` (dict node).

    ``algo_kw``: algo fields (as in ``conf/algo/<algo>.yaml``); ``tile_kw``: ``tile:`` node fields
    (e.g. ``{"update_mode": "expected"}``). Seeds of device sampling and pulses derive from ``seed``."""
    import analogtrain.algorithms  # noqa: F401  (registers every algorithm)
    from analogtrain.algorithms.base import ALGORITHMS
    from analogtrain.algorithms.transfer import merge_device, to_config, validate_transfer_common
    from analogtrain.devices import device_from_config

    tile = to_dataclass(TileConfig, dict(tile_kw or {}))
    seeds = {"device": derive_seed(seed, "device"), "pulse": derive_seed(seed, "pulse")}
    if algo == "sgd":
        from analogtrain.tiles.rule import SGDRule

        return SGDRule(device_from_config(dict(device)), out_size, in_size, tile,
                       seed_device=derive_seed(seeds["device"], name),
                       seed_pulse=derive_seed(seeds["pulse"], name))
    cls = ALGORITHMS[algo]
    a = to_config(cls.config_cls, {"name": algo, **(algo_kw or {})})
    validate_transfer_common(a)  # (as the runner's validation: the same errors in scripts and tests)
    cls.check(a)
    dev_a = device_from_config(merge_device(device, a.fast_device), prefix="algo.fast_device")
    dev_c = device_from_config(merge_device(device, a.device_c), prefix="algo.device_c")
    return cls.rule_cls(a, dev_a, dev_c, out_size, in_size, tile, name=name, seeds=seeds)


def _tail_mean(values: list[float], frac: float = 0.2) -> float:
    n = max(int(len(values) * frac), 1)
    return float(sum(values[-n:]) / n)


def least_squares(rule, w_star: torch.Tensor, *, steps: int, batch: int = 1, lr: float = 0.1,
                  noise_std: float = 0.1, seed: int = 0, n_points: int = 50, tail: float = 0.2) -> dict:
    """Teacher-student least squares on one tile. Per step: x (B, I) ~ N(0, 1), y = W* x + noise_std·ξ,
    d = (W x − y)/B (gradient of the mean-reduced ½‖·‖² loss w.r.t. the output), ``rule.update(x, d, lr)``.

    Returns ``{"steps", "error", "floor", "bias", "w_avg"}``: the relative weight error
    ``‖W − W*‖²_F / ‖W*‖²_F`` at ``n_points`` evenly spaced steps, its mean over the last ``tail``
    fraction of the run (``floor``: bias² + the lr-proportional fluctuation), and the relative error of
    the weight *averaged* over that tail (``bias``: the systematic part, e.g. analog SGD's implicit
    penalty, which no learning rate removes)."""
    g = torch.Generator().manual_seed(int(seed))
    out_size, in_size = w_star.shape
    norm = float((w_star ** 2).sum())
    rec_every = max(steps // n_points, 1)
    tail_start = steps - int(steps * tail)
    w_sum = torch.zeros_like(w_star, dtype=torch.float64)
    xs, errs = [], []
    for t in range(1, steps + 1):
        x = torch.randn(batch, in_size, generator=g)
        y = x @ w_star.t() + noise_std * torch.randn(batch, out_size, generator=g)
        d = (x @ rule.effective_weight().t() - y) / batch
        rule.update(x, d, lr)
        if t > tail_start:
            w_sum += rule.effective_weight().double()
        if t % rec_every == 0:
            xs.append(t)
            errs.append(float(((rule.effective_weight() - w_star) ** 2).sum()) / norm)
    w_avg = (w_sum / max(steps - tail_start, 1)).float()
    bias = float(((w_avg - w_star) ** 2).sum()) / norm
    return {"steps": xs, "error": errs, "floor": _tail_mean(errs, tail), "bias": bias, "w_avg": w_avg}


def closed_form_mean(w_star, L: float, tau: float, sigma: float, w_sym: float = 0.0):
    """paper-claims §2.1: long-run mean of analog SGD on f = ½L(w − w*)² with N(0, σ²) gradient noise on an
    ALD with asymmetry τ and symmetry point w◇: w̄ = (Lτ w* + Σ w◇)/(Lτ + Σ), Σ = E|ε| = σ√(2/π)."""
    big_sigma = sigma * math.sqrt(2.0 / math.pi)
    return (L * tau * w_star + big_sigma * w_sym) / (L * tau + big_sigma)


def implicit_penalty(rule, w_star: torch.Tensor, *, L: float = 1.0, sigma: float = 0.5, lr: float = 0.01,
                     burn_in: int = 1000, steps: int = 4000, seed: int = 0) -> torch.Tensor:
    """Analog SGD on the diagonal quadratic, one weight per element of a (O, 1) tile: each step feeds
    x = [1], d = L(w − w*) + σξ (the noisy gradient of every element at once). Returns the time-averaged
    weight after ``burn_in`` steps, (O,)."""
    g = torch.Generator().manual_seed(int(seed))
    ws = w_star.reshape(-1, 1)
    x = torch.ones(1, 1)
    acc = torch.zeros_like(ws, dtype=torch.float64)
    for t in range(burn_in + steps):
        w = rule.effective_weight()
        d = (L * (w - ws) + sigma * torch.randn(ws.shape, generator=g)).t()  # (1, O)
        rule.update(x, d, lr)
        if t >= burn_in:
            acc += rule.effective_weight().double()
    return (acc / steps).reshape(-1).float()


def constant_gradient(rule, *, steps: int, alpha: float = 0.4, lr: float = 0.1, batch: int = 1,
                      seed: int = 0, n_points: int = 50) -> dict:
    """Rasch et al. 2023 Fig. 3 toy: x = −X, d = αX + (1 − α)Y with X, Y ~ N(0, 1) (n × n tile), so the
    expected gradient E[d xᵀ] = −α·I: the diagonal should grow (W ← W − lr·d xᵀ) and the off-diagonal stay
    at 0. Returns the mean diagonal and the mean |off-diagonal| over time."""
    g = torch.Generator().manual_seed(int(seed))
    n = rule.in_size
    eye = torch.eye(n, dtype=torch.bool)
    xs, diag, off = [], [], []
    rec_every = max(steps // n_points, 1)
    for t in range(1, steps + 1):
        X = torch.randn(batch, n, generator=g)
        Y = torch.randn(batch, n, generator=g)
        rule.update(-X, alpha * X + (1 - alpha) * Y, lr)
        if t % rec_every == 0:
            W = rule.effective_weight()
            xs.append(t)
            diag.append(float(W[eye].mean()))
            off.append(float(W[~eye].abs().mean()))
    return {"steps": xs, "diag": diag, "off": off}


def weight_error_std(rule, w_target: torch.Tensor) -> float:
    """ε_w = std(W − Ŵ) (weight units; the paper's normalised range is [−1, 1])."""
    return float((rule.effective_weight() - w_target).std(unbiased=False))
