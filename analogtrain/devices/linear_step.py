"""LinearStep (aihwkit ``LinearStepDevice``, §2.5): a step that changes linearly with the weight.

Sampling per device: ``γ_u = gamma_up + gamma_up_dtod·ξ``, ``γ_d = gamma_down + gamma_down_dtod·ξ``
(absolute values unless ``allow_increasing``); reference bounds ``w_ref_up = w_max`` (the parameter, if
``mean_bound_reference``) or the device's b_max, ``w_ref_down`` likewise;
``slope_up = −γ_u·scale_up/w_ref_up``, ``slope_down = −γ_d·scale_down/w_ref_down``.

Per pulse, then clip to [b_min, b_max]::

    mult_noise: up:   w += (slope_up·w + scale_up)(1 + σξ)
                down: w −= (slope_down·w + scale_down)(1 + σξ)
    additive:   up:   w +=  slope_up·w + scale_up(1 + σξ)
                down: w −=  slope_down·w + scale_down(1 + σξ)

i.e. up step ``scale_up·(1 − γ_u·w/w_ref_up)``, down step ``scale_down·(1 − γ_d·w/w_ref_down)``.
Symmetry point (equal up and down steps): ``w* = (scale_up − scale_down)/(slope_down − slope_up)``
(written with the signed slopes above as stored in ``params``). Granularity = dw_min.
Not supported: aihwkit's ``reverse_up/reverse_down/reverse_offset`` (unknown keys here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from analogtrain.devices import params as P
from analogtrain.devices.base import PulsedDeviceConfig, bound_ratio


@dataclass
class LinearStepConfig(PulsedDeviceConfig):
    """``device=linear_step``: aihwkit LinearStepDevice."""

    name: str = "linear_step"
    family: str = "linear_step"
    gamma_up: float = 0.0  # relative decrease of the up step at w = w_max (C++ ls_decrease_up)
    gamma_down: float = 0.0  # relative decrease of the down step at w = w_min (aihwkit gamma_down)
    gamma_up_dtod: float = 0.05  # d2d spread of gamma_up (absolute, >= 0)
    gamma_down_dtod: float = 0.05  # d2d spread of gamma_down (absolute, >= 0)
    allow_increasing: bool = False  # keep negative γ (step growing towards the bound); else |γ|
    mean_bound_reference: bool = True  # slopes relative to the parameter bounds (True) or the device's
    mult_noise: bool = True  # c2c noise multiplies the whole step (True) or only its constant part
    write_noise_std: float = 0.0  # write noise std in units of dw_min (>= 0; 0 = off), §2.3
    apply_write_noise_on_set: bool = True  # redraw write noise after set_weights

    FAMILY: ClassVar[str] = "linear_step"
    KIND: ClassVar[int] = P.KIND_LINEAR
    DTOD_FIELDS: ClassVar[tuple[str, ...]] = (
        *PulsedDeviceConfig.DTOD_FIELDS, "gamma_up_dtod", "gamma_down_dtod")

    def validate_family(self, chk) -> None:
        chk.at_least("write_noise_std", 0.0)
        if not self.allow_increasing:
            chk.closed_interval("gamma_up", -1.0, 1.0)
            chk.closed_interval("gamma_down", -1.0, 1.0)

    def nominal_shapes(self, w):
        return 1.0 - self.gamma_up * bound_ratio(w, self.w_max), 1.0 - self.gamma_down * bound_ratio(w, self.w_min)

    def apply_asymmetry(self, a, prefix):
        from analogtrain.config.errors import ConfigError

        if not 0.0 <= a <= 1.0:
            raise ConfigError(f"{prefix}.asymmetry", f"{a} is out of range: allowed 0 <= asymmetry <= 1")
        return {"gamma_up": a, "gamma_down": a}

    def sample_family(self, ctx) -> None:
        g_u = self.gamma_up + self.gamma_up_dtod * ctx.xi(4)
        g_d = self.gamma_down + self.gamma_down_dtod * ctx.xi(5)
        if not self.allow_increasing:
            g_u, g_d = g_u.abs(), g_d.abs()
        ref_up = ctx.full(self.w_max) if self.mean_bound_reference else ctx.bmax
        ref_dn = ctx.full(self.w_min) if self.mean_bound_reference else ctx.bmin
        ctx.slope_up = ctx.safe_div(-g_u * ctx.scale_up, ref_up)
        ctx.slope_down = ctx.safe_div(-g_d * ctx.scale_down, ref_dn)

    def fill_gparams(self, g) -> None:
        g[P.G_MULT_NOISE] = 1.0 if self.mult_noise else 0.0
