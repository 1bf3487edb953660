"""The per-pulse device step: ONE torch function that the C++/CUDA header ``csrc/device_step.h`` mirrors.

All arithmetic is float32, in exactly the order written here (each line one rounding), so a C++ port
compiled with ``-ffp-contract=off`` reproduces the deterministic paths bit for bit (``exp``/``pow`` of
the exp/pow kinds may differ by an ulp between libm and torch). ``gparams`` (float64) are rounded to
float32 once before use. Equations per kind: see ``analogtrain.devices.params``.
"""

from __future__ import annotations

import torch

from analogtrain.devices import params as P

__all__ = ["device_step", "step_magnitudes"]


def _g32(gparams: torch.Tensor, idx: int) -> torch.Tensor:
    """One tile-wide scalar as a float32 0-d tensor (on gparams' device)."""
    return gparams[idx].to(torch.float32)


def device_step(
    w_dev: torch.Tensor,
    up: torch.Tensor,
    params: torch.Tensor,
    gparams: torch.Tensor,
    xi: torch.Tensor | None,
) -> torch.Tensor:
    """Apply ONE pulse to every element and clip: the response function of all device kinds.

    w_dev:   (*S) float32 device conductance (visible weight + reference offset)
    up:      (*S) bool, True = up pulse (+scale_up ...), False = down pulse
    params:  (NP, *S) float32 sampled parameters of these elements (layout ``devices.params``)
    gparams: (NG,) float64 tile-wide scalars
    xi:      (*S) float32 standard normals (cycle-to-cycle noise), or None for the noise-free step
    returns  (*S) float32 new w_dev, clipped to [b_min, b_max] (exp/pow kinds: unchanged, unclipped,
             where b_max − b_min <= 0, as aihwkit skips such devices)
    """
    kind = int(gparams[P.G_KIND].item())
    bmin = params[P.P_BMIN]
    bmax = params[P.P_BMAX]
    sc_up = params[P.P_SCALE_UP]
    sc_dn = params[P.P_SCALE_DOWN]
    sigma = _g32(gparams, P.G_DW_MIN_STD)
    if xi is None:
        noise = None
        fac = torch.ones_like(w_dev)  # (1 + σξ) with ξ = 0
    else:
        noise = sigma * xi  # σξ
        fac = 1.0 + noise  # (1 + σξ)

    if kind == P.KIND_LINEAR:
        s_up = params[P.P_SLOPE_UP]
        s_dn = params[P.P_SLOPE_DOWN]
        mult = bool(gparams[P.G_MULT_NOISE].item() != 0.0)
        if mult:
            d_up = (s_up * w_dev + sc_up) * fac  # (slope_up·w + scale_up)(1 + σξ)
            d_dn = (s_dn * w_dev + sc_dn) * fac
        else:
            d_up = s_up * w_dev + sc_up * fac  # slope_up·w + scale_up(1 + σξ)
            d_dn = s_dn * w_dev + sc_dn * fac
        new = torch.where(up, w_dev + d_up, w_dev - d_dn)
        return torch.minimum(torch.maximum(new, bmin), bmax)

    if kind == P.KIND_EXP:
        rng = bmax - bmin
        two_a = _g32(gparams, P.G_ES_A) * 2.0
        z = two_a * w_dev / rng + _g32(gparams, P.G_ES_B)  # z = 2a·w/(b_max − b_min) + b
        a_up, g_up = _g32(gparams, P.G_ES_A_UP), _g32(gparams, P.G_ES_GAMMA_UP)
        a_dn, g_dn = _g32(gparams, P.G_ES_A_DOWN), _g32(gparams, P.G_ES_GAMMA_DOWN)
        y_up = torch.clamp(1.0 - a_up * torch.exp(g_up * z), min=0.0)  # max(1 − A_up·exp(γ_up·z), 0)
        y_dn = torch.clamp(1.0 - a_dn * torch.exp(-g_dn * z), min=0.0)  # max(1 − A_dn·exp(−γ_dn·z), 0)
        std_add = _g32(gparams, P.G_ES_STD_ADD)
        std_slope = _g32(gparams, P.G_ES_STD_SLOPE)
        complex_noise = (noise is not None and float(sigma) > 0
                         and (float(std_add) != 0 or float(std_slope) != 0))
        if complex_noise:
            delta = torch.where(up, y_up * sc_up, -(y_dn * sc_dn))
            spread = (delta.abs() + std_add) + std_slope * w_dev.abs()
            new = (w_dev + delta) + sigma * spread * xi
        else:
            new = torch.where(up, w_dev + (y_up * fac) * sc_up, w_dev - (y_dn * fac) * sc_dn)
        new = torch.minimum(torch.maximum(new, bmin), bmax)
        return torch.where(rng > 0, new, w_dev)

    if kind == P.KIND_POW:
        rng = bmax - bmin
        safe = torch.where(rng > 0, rng, torch.ones_like(rng))
        base_up = (bmax - w_dev) / safe
        base_dn = (w_dev - bmin) / safe
        d_up = (sc_up * torch.pow(base_up.clamp(min=0.0), params[P.P_GAMMA_UP])) * fac
        d_dn = (sc_dn * torch.pow(base_dn.clamp(min=0.0), params[P.P_GAMMA_DOWN])) * fac
        new = torch.where(up, w_dev + d_up, w_dev - d_dn)
        new = torch.minimum(torch.maximum(new, bmin), bmax)
        return torch.where(rng != 0, new, w_dev)

    raise ValueError(f"unknown device kind {kind}")


def step_magnitudes(w_dev: torch.Tensor, params: torch.Tensor, gparams: torch.Tensor):
    """Noise-free (up, down) step magnitudes at device conductance ``w_dev`` *without* clipping.

    Returns two (*S) tensors ``(step_up, step_down)`` (>= 0 for consistent devices): the response
    functions q₊(w)·dw and q₋(w)·dw of the theory papers, used by the ``expected`` update mode, the
    symmetry-point solver and the plots. Computed in the dtype of ``w_dev`` (float64 for analysis)."""
    dt = w_dev.dtype
    p = params.to(dt)
    kind = int(gparams[P.G_KIND].item())
    bmin, bmax = p[P.P_BMIN], p[P.P_BMAX]
    sc_up, sc_dn = p[P.P_SCALE_UP], p[P.P_SCALE_DOWN]
    if kind == P.KIND_LINEAR:
        return p[P.P_SLOPE_UP] * w_dev + sc_up, p[P.P_SLOPE_DOWN] * w_dev + sc_dn
    g = gparams.to(dt)
    rng = bmax - bmin
    if kind == P.KIND_EXP:
        ok = rng > 0
        z = 2.0 * g[P.G_ES_A] * w_dev / torch.where(ok, rng, torch.ones_like(rng)) + g[P.G_ES_B]
        y_up = torch.clamp(1.0 - g[P.G_ES_A_UP] * torch.exp(g[P.G_ES_GAMMA_UP] * z), min=0.0)
        y_dn = torch.clamp(1.0 - g[P.G_ES_A_DOWN] * torch.exp(-g[P.G_ES_GAMMA_DOWN] * z), min=0.0)
        zero = torch.zeros_like(w_dev)
        return torch.where(ok, y_up * sc_up, zero), torch.where(ok, y_dn * sc_dn, zero)
    if kind == P.KIND_POW:
        ok = rng != 0
        safe = torch.where(ok, rng, torch.ones_like(rng))
        up = sc_up * torch.pow(((bmax - w_dev) / safe).clamp(min=0.0), p[P.P_GAMMA_UP])
        dn = sc_dn * torch.pow(((w_dev - bmin) / safe).clamp(min=0.0), p[P.P_GAMMA_DOWN])
        zero = torch.zeros_like(w_dev)
        return torch.where(ok, up, zero), torch.where(ok, dn, zero)
    raise ValueError(f"unknown device kind {kind}")
