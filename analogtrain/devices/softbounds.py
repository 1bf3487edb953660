"""SoftBounds and SoftBoundsReference (aihwkit ``SoftBoundsDevice`` §2.6, ``SoftBoundsReferenceDevice``
§2.7): the step shrinks linearly to zero at the bound it moves towards.

Per pulse on the device conductance ``w_dev`` (= visible w + reference offset ``ref``; ``ref`` = 0 for
``softbounds``), then clip ``w_dev`` to [b_min, b_max] and store ``w = w_dev − ref``::

    mult_noise: up:   w_dev += scale_up  ·(1 − a·w_dev/b_max)·(1 + σξ)
                down: w_dev −= scale_down·(1 − a·w_dev/b_min)·(1 + σξ)        (b_min < 0)
    additive:   up:   w_dev += scale_up  ·(1 − a·w_dev/b_max + σξ)     down likewise

with a = 1 (aihwkit) unless the ``asymmetry`` knob sets it (a = 0: constant step). Symmetry point of the
device (equal up and down steps)::

    w*_dev = (scale_up − scale_down) / (a·(scale_up/b_max − scale_down/b_min))

and of the visible weight ``w* = w*_dev − ref``. With the nominal device of ``softbounds`` (±0.6, no
up_down) w* = 0; ``up_down = u > 0`` gives w* = 0.6·u/(2 − u) (one-sided asymmetry).

SoftBoundsReference sampling after the base (only for devices with b_max > 0 > b_min):
``slope_down = (scale_down/|b_min|)·|1 + slope_down_dtod·ξ|``, ``b_min ← −scale_down/slope_down``;
``slope_up = (scale_up/b_max)·|1 + slope_up_dtod·ξ|``, ``b_max ← scale_up/slope_up``;
``ref = reference_mean + reference_std·ξ`` (+ the device's own w*_dev if ``subtract_symmetry_point``).
Granularity = dw_min for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from analogtrain.devices import params as P
from analogtrain.devices.base import PulsedDeviceConfig, SoftSlopes


@dataclass
class SoftBoundsConfig(SoftSlopes, PulsedDeviceConfig):
    """``device=softbounds`` (the product default): aihwkit SoftBoundsDevice, dw_min 0.001, bounds ±0.6."""

    name: str = "softbounds"
    family: str = "softbounds"
    mult_noise: bool = True  # c2c noise multiplies the whole state-dependent step (aihwkit default True)
    write_noise_std: float = 0.0  # write noise std in units of dw_min (>= 0; 0 = off), §2.3
    apply_write_noise_on_set: bool = True  # redraw write noise after set_weights

    FAMILY: ClassVar[str] = "softbounds"
    KIND: ClassVar[int] = P.KIND_LINEAR

    def validate_family(self, chk) -> None:
        chk.at_least("write_noise_std", 0.0)

    def fill_gparams(self, g) -> None:
        g[P.G_MULT_NOISE] = 1.0 if self.mult_noise else 0.0


@dataclass
class SoftBoundsReferenceConfig(SoftBoundsConfig):
    """``device=softbounds_reference``: aihwkit SoftBoundsReferenceDevice — soft bounds whose visible
    weight is the device conductance minus a fixed per-device reference (symmetry point shifted)."""

    name: str = "softbounds_reference"
    family: str = "softbounds_reference"
    mult_noise: bool = False  # NOTE aihwkit default differs from SoftBounds: additive c2c noise
    slope_up_dtod: float = 0.0  # relative d2d spread of the up slope (>= 0), moves b_max
    slope_down_dtod: float = 0.0  # relative d2d spread of the down slope (>= 0), moves b_min
    reference_mean: float = 0.0  # mean reference offset (weight units); visible w = w_dev − ref
    reference_std: float = 0.0  # d2d std of the reference offset (weight units, >= 0)
    subtract_symmetry_point: bool = False  # add each device's own symmetry point to its reference

    FAMILY: ClassVar[str] = "softbounds_reference"
    IS_REFERENCE: ClassVar[bool] = True
    DTOD_FIELDS: ClassVar[tuple[str, ...]] = (
        *PulsedDeviceConfig.DTOD_FIELDS, "slope_up_dtod", "slope_down_dtod")

    def validate_family(self, chk) -> None:
        chk.at_least("write_noise_std", 0.0)
        chk.at_least("reference_std", 0.0)

    def sample_family(self, ctx) -> None:
        a = self.slope_factor()
        ok = (ctx.bmax > 0) & (ctx.bmin < 0)
        one = ctx.full(1.0)
        s_dn = ctx.safe_div(ctx.scale_down, ctx.bmin.abs()) * (one + self.slope_down_dtod * ctx.xi(4)).abs()
        s_up = ctx.safe_div(ctx.scale_up, ctx.bmax) * (one + self.slope_up_dtod * ctx.xi(5)).abs()
        new_bmin = -ctx.safe_div(ctx.scale_down, s_dn)
        new_bmax = ctx.safe_div(ctx.scale_up, s_up)
        # devices whose step is zero keep their bounds (0/0 guard); others get the bounds implied by the slope
        ctx.bmin = ctx.where(ok & (s_dn > 0), new_bmin, ctx.bmin)
        ctx.bmax = ctx.where(ok & (s_up > 0), new_bmax, ctx.bmax)
        zero = ctx.full(0.0)
        # stored signs (params.py): up += slope_up·w + scale_up, down −= slope_down·w + scale_down
        ctx.slope_up = ctx.where(ok, -a * s_up, zero)
        ctx.slope_down = ctx.where(ok, a * s_dn, zero)
        ref = self.reference_mean + self.reference_std * ctx.xi(6)
        if self.subtract_symmetry_point:
            den = ctx.slope_down - ctx.slope_up
            sp = ctx.safe_div(ctx.scale_up - ctx.scale_down, den)
            ctx.sp = ctx.where(ok, sp, zero)
            ref = ref + ctx.sp
        ctx.ref = ref
