"""ExpStep (aihwkit ``ExpStepDevice``, §2.8): exponentially state-dependent steps (ReRAM fits).

Tile-wide A_up, A_down, γ_up, γ_down, a, b (no d2d variation of these). Per pulse (skipped entirely,
without clip, if b_max − b_min <= 0)::

    z      = 2·a·w/(b_max − b_min) + b
    y_up   = max(1 − A_up  ·exp( γ_up  ·z), 0)
    y_down = max(1 − A_down·exp(−γ_down·z), 0)
    simple noise:  up: w += y_up·(1 + σξ)·scale_up      down: w −= y_down·(1 + σξ)·scale_down
    complex noise (σ > 0 and (dw_min_std_add ≠ 0 or dw_min_std_slope ≠ 0)):
        Δ = +y_up·scale_up or −y_down·scale_down
        w += Δ + σ·(|Δ| + dw_min_std_add + dw_min_std_slope·|w|)·ξ
    clip to [b_min, b_max]

Symmetry point: the root of ``scale_up·y_up(w) = scale_down·y_down(w)`` (solved numerically per device).
Granularity (nominal, aihwkit's code): the *down* step at w = 0 with the parameter bounds,
``dw_min·(1 − max(up_down, 0))·y_down(z = b)`` (falls back to dw_min if <= 0).
The ``asymmetry`` knob is not defined for this family (set A_*/gamma_* directly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from analogtrain.devices import params as P
from analogtrain.devices.base import PulsedDeviceConfig


@dataclass
class ExpStepConfig(PulsedDeviceConfig):
    """``device=expstep``: aihwkit ExpStepDevice."""

    name: str = "expstep"
    family: str = "expstep"
    A_up: float = 0.00081  # amplitude of the up-step exponential (aihwkit A_up; C++ es_A_up)
    A_down: float = 0.36833  # amplitude of the down-step exponential (es_A_down)
    gamma_up: float = 12.44625  # exponent rate of the up step (es_gamma_up)
    gamma_down: float = 12.78785  # exponent rate of the down step (es_gamma_down)
    a: float = 0.244  # z-scale of the weight (es_a): z = 2·a·w/(b_max − b_min) + b
    b: float = 0.2425  # z-offset (es_b)
    dw_min_std_add: float = 0.0  # additive part of the complex c2c noise (weight units, >= 0)
    dw_min_std_slope: float = 0.0  # |w|-proportional part of the complex c2c noise (>= 0)
    write_noise_std: float = 0.0  # write noise std in units of dw_min (>= 0; 0 = off), §2.3
    apply_write_noise_on_set: bool = True  # redraw write noise after set_weights

    FAMILY: ClassVar[str] = "expstep"
    KIND: ClassVar[int] = P.KIND_EXP

    def validate_family(self, chk) -> None:
        chk.at_least("write_noise_std", 0.0)
        chk.at_least("dw_min_std_add", 0.0)
        chk.at_least("dw_min_std_slope", 0.0)

    def _y(self, z: float) -> tuple[float, float]:
        y_up = max(1.0 - self.A_up * math.exp(self.gamma_up * z), 0.0)
        y_dn = max(1.0 - self.A_down * math.exp(-self.gamma_down * z), 0.0)
        return y_up, y_dn

    def granularity_factor(self) -> float:
        _, y_dn = self._y(self.b)  # z = b at w = 0; aihwkit averages the down step with itself
        return (1.0 - max(self.up_down, 0.0)) * y_dn

    def nominal_shapes(self, w):
        z = 2.0 * self.a * w / (self.w_max - self.w_min) + self.b
        return self._y(z)

    def sample_family(self, ctx) -> None:
        pass  # no per-device parameters beyond the base

    def fill_gparams(self, g) -> None:
        g[P.G_ES_A_UP] = self.A_up
        g[P.G_ES_A_DOWN] = self.A_down
        g[P.G_ES_GAMMA_UP] = self.gamma_up
        g[P.G_ES_GAMMA_DOWN] = self.gamma_down
        g[P.G_ES_A] = self.a
        g[P.G_ES_B] = self.b
        g[P.G_ES_STD_ADD] = self.dw_min_std_add
        g[P.G_ES_STD_SLOPE] = self.dw_min_std_slope
