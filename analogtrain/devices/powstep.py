"""PowStep and PowStepReference (aihwkit ``PowStepDevice`` / ``PowStepReferenceDevice``, §2.9).

Sampling per device: ``gain = 1 + pow_gamma_dtod·ξ``, ``r = pow_up_down_dtod·ξ``,
``γ_up = (min(β, 0) + gain + r)·pow_gamma``, ``γ_down = (−max(β, 0) + gain − r)·pow_gamma`` with
``β = pow_up_down`` (one-sided like up_down), ``|·|`` if enforce_consistency.

Per pulse on ``w_dev`` (skip if range = b_max − b_min == 0), then clip::

    up:   w_dev += scale_up   · ((b_max − w_dev)/range)^γ_up   · (1 + σξ)
    down: w_dev −= scale_down · ((w_dev − b_min)/range)^γ_down · (1 + σξ)

Symmetry point: root of ``scale_up·((b_max − w)/range)^γ_up = scale_down·((w − b_min)/range)^γ_down``;
for γ_up = γ_down = γ: ``w* = (b_max + ρ·b_min)/(1 + ρ)`` with ``ρ = (scale_down/scale_up)^(1/γ)``
(mid-range for a symmetric device). Granularity (nominal) = ``dw_min·0.5^pow_gamma``.

PowStepReference: visible ``w = w_dev − ref``, ``ref = reference_mean + reference_std·ξ``; with
``subtract_symmetry_point`` (devices with b_max > 0 > b_min) the device's symmetry point is estimated as
aihwkit does, by iterating noise-free ``sp ← sp − step_down(sp) + step_up(sp)`` from sp = 0 for
``n_estimation_steps`` steps (if <= 0: ``min(round(10·range/min(scale_up, scale_down)), 10000)``;
we stop early once no element moves by more than 1e-12), and added to ``ref``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from analogtrain.config.errors import ConfigError
from analogtrain.devices import params as P
from analogtrain.devices.base import PulsedDeviceConfig


@dataclass
class PowStepConfig(PulsedDeviceConfig):
    """``device=powstep``: aihwkit PowStepDevice."""

    name: str = "powstep"
    family: str = "powstep"
    pow_gamma: float = 1.0  # exponent γ of the response (>= 0; 0 = constant step)
    pow_gamma_dtod: float = 0.1  # relative d2d spread of γ (>= 0)
    pow_up_down: float = 0.0  # one-sided exponent asymmetry β in (−1, 1): > 0 lowers γ_down
    pow_up_down_dtod: float = 0.0  # d2d spread of the exponent asymmetry (>= 0)
    write_noise_std: float = 0.0  # write noise std in units of dw_min (>= 0; 0 = off), §2.3
    apply_write_noise_on_set: bool = True  # redraw write noise after set_weights

    FAMILY: ClassVar[str] = "powstep"
    KIND: ClassVar[int] = P.KIND_POW
    DTOD_FIELDS: ClassVar[tuple[str, ...]] = (
        *PulsedDeviceConfig.DTOD_FIELDS, "pow_gamma_dtod", "pow_up_down_dtod")

    def validate_family(self, chk) -> None:
        chk.at_least("pow_gamma", 0.0)
        chk.open_interval("pow_up_down", -1.0, 1.0)
        if hasattr(self, "write_noise_std"):
            chk.at_least("write_noise_std", 0.0)

    def granularity_factor(self) -> float:
        return 0.5**self.pow_gamma

    def nominal_shapes(self, w):
        rng = self.w_max - self.w_min
        beta = self.pow_up_down
        g_up = (1.0 + min(beta, 0.0)) * self.pow_gamma
        g_dn = (1.0 - max(beta, 0.0)) * self.pow_gamma
        return max((self.w_max - w) / rng, 0.0) ** g_up, max((w - self.w_min) / rng, 0.0) ** g_dn

    def apply_asymmetry(self, a, prefix):
        if not a >= 0.0:
            raise ConfigError(f"{prefix}.asymmetry", f"{a} is out of range: allowed asymmetry >= 0")
        return {"pow_gamma": a}

    def sample_family(self, ctx) -> None:
        gain = 1.0 + self.pow_gamma_dtod * ctx.xi(4)
        r = self.pow_up_down_dtod * ctx.xi(5)
        beta = self.pow_up_down
        g_up = (min(beta, 0.0) + gain + r) * self.pow_gamma
        g_dn = (-max(beta, 0.0) + gain - r) * self.pow_gamma
        if self.enforce_consistency:
            g_up, g_dn = g_up.abs(), g_dn.abs()
        ctx.gamma_up = g_up
        ctx.gamma_down = g_dn

    def fill_gparams(self, g) -> None:
        pass


@dataclass
class PowStepReferenceConfig(PowStepConfig):
    """``device=powstep_reference``: aihwkit PowStepReferenceDevice (no write noise in aihwkit)."""

    name: str = "powstep_reference"
    family: str = "powstep_reference"
    reference_mean: float = 0.0  # mean reference offset (weight units); visible w = w_dev − ref
    reference_std: float = 0.0  # d2d std of the reference offset (weight units, >= 0)
    subtract_symmetry_point: bool = False  # add each device's (estimated) symmetry point to its reference
    n_estimation_steps: int = -1  # iterations of the symmetry-point estimate (<= 0: automatic)

    FAMILY: ClassVar[str] = "powstep_reference"
    IS_REFERENCE: ClassVar[bool] = True

    def validate_family(self, chk) -> None:
        super().validate_family(chk)
        chk.at_least("reference_std", 0.0)
        if self.write_noise_std != 0.0:
            raise ConfigError(
                f"{chk.prefix}.write_noise_std",
                f"{self.write_noise_std}: powstep_reference has no write noise in aihwkit; allowed 0",
            )

    def sample_family(self, ctx) -> None:
        super().sample_family(ctx)
        ref = self.reference_mean + self.reference_std * ctx.xi(6)
        if self.subtract_symmetry_point:
            ok = (ctx.bmax > 0) & (ctx.bmin < 0)
            sp = estimate_pow_symmetry_point(
                ctx.bmin, ctx.bmax, ctx.scale_up, ctx.scale_down, ctx.gamma_up, ctx.gamma_down,
                self.n_estimation_steps,
            )
            ctx.sp = torch.where(ok, sp, torch.zeros_like(sp))
            ref = ref + ctx.sp
        ctx.ref = ref


def estimate_pow_symmetry_point(bmin, bmax, su, sd, g_up, g_dn, n_steps: int) -> torch.Tensor:
    """aihwkit's noise-free fixed-point iteration for the PowStep symmetry point (float64, per element)."""
    rng = bmax - bmin
    safe = torch.where(rng != 0, rng, torch.ones_like(rng))
    if n_steps <= 0:
        m = torch.minimum(su.abs(), sd.abs())
        safe_m = torch.where(m > 0, m, torch.ones_like(m))
        est = torch.where(m > 0, torch.round(10.0 * rng / safe_m), torch.zeros_like(m))
        n_steps = int(min(est.max().item() if est.numel() else 0, 10000))
    sp = torch.zeros_like(bmin)
    for _ in range(n_steps):
        dn = sd * torch.pow(((sp - bmin) / safe).clamp(min=0.0), g_dn)
        up = su * torch.pow(((bmax - sp) / safe).clamp(min=0.0), g_up)
        new = sp - dn + up
        if torch.max((new - sp).abs()).item() <= 1e-12:
            sp = new
            break
        sp = new
    return sp

