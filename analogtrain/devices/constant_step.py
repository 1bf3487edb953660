"""ConstantStep (aihwkit ``ConstantStepDevice``, §2.4): the same step everywhere inside the bounds.

Per pulse (σ = dw_min_std, ξ ~ N(0, 1)), then clip to [b_min, b_max]::

    up:   w += scale_up   · (1 + σξ)
    down: w −= scale_down · (1 + σξ)

Symmetry point: none (every weight is a fixed point of an up/down pair when scale_up = scale_down; with
scale_up ≠ scale_down alternating pulses drift to the bound of the larger step).
``SampledDevice.symmetry_point`` returns 0 resp. that bound. Granularity = dw_min.

Knob ``asymmetry`` a (0..1) makes the step linear in w like soft bounds of strength a:
``up = scale_up·(1 − a·w/b_max)``, ``down = scale_down·(1 − a·w/b_min)`` (a = 0: constant step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from analogtrain.devices import params as P
from analogtrain.devices.base import PulsedDeviceConfig, SoftSlopes


@dataclass
class ConstantStepConfig(SoftSlopes, PulsedDeviceConfig):
    """``device=constant_step``: aihwkit ConstantStepDevice (no extra parameters)."""

    name: str = "constant_step"
    family: str = "constant_step"

    FAMILY: ClassVar[str] = "constant_step"
    KIND: ClassVar[int] = P.KIND_LINEAR
    DEFAULT_SLOPE: ClassVar[float] = 0.0  # a pure constant step unless the asymmetry knob sets a slope

    def fill_gparams(self, g) -> None:
        g[P.G_MULT_NOISE] = 1.0  # irrelevant with zero slopes; multiplicative when a > 0
