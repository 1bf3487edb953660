"""Base config of every pulsed device family: aihwkit ``PulsedDevice`` parameters plus the physics knobs.

Every field documents: meaning, unit / range, aihwkit's name (same unless noted), the default (aihwkit's
*Python* default, ``shared/reference/aihwkit-semantics.md`` §2.1) and where it comes from.

Units: "weight units" are those of the visible weight ``w`` (the conductance difference mapped to the
weight). ``dw_min`` is the nominal step size in weight units; the ``*_dtod`` spreads are relative
(dimensionless) unless stated otherwise.

Physics knobs (``Optional[float] = None``; ``None`` keeps the raw parameters). ``device_from_config``
resolves them into the raw parameters in the order dtod, asymmetry, c2c, skew, skew_std, n_states, then
clears them (so resolution is idempotent and
the resolved dataclass describes the device completely; the applied values are kept in
``cfg.applied_knobs``). Precise definitions (all checked by ``tests/test_devices_knobs.py``):

``dtod`` (factor >= 0)
    multiplies every device-to-device spread of the family (``dw_min_dtod``, ``up_down_dtod``,
    ``w_max_dtod``, ``w_min_dtod``, ``lifetime_dtod`` and the family's own ``*_dtod`` fields) except the
    symmetry-point spread, which has its own knob ``skew_std`` (``reference_std`` is not scaled).
    ``dtod=0`` gives identical devices.
``asymmetry`` (a >= 0, dimensionless)
    strength of the *state-dependent* up/down imbalance, i.e. the slope of ``G(w)/F(w)`` at the symmetry
    point in units of the half-range of the bounds (the theory papers' ``1/τ`` with τ measured in
    half-ranges). Linear families (``constant_step``, ``linear_step``, ``softbounds``,
    ``softbounds_reference``): the step shrinks linearly towards the bound it moves to, by the fraction a
    at the bound (``linear_step``: ``gamma_up = gamma_down = a``; ``softbounds*``: slopes multiplied by a,
    so a = 1 is aihwkit's soft bounds and a = 0 a constant-step device; ``constant_step``: becomes
    linear-step-like with γ = a). Range 0 <= a <= 1 there. Pow families: ``pow_gamma = a`` (same local
    slope 2γ/range of G/F at mid-range), a >= 0. Not defined for ``expstep`` (ConfigError).
    With equal up/down scales the symmetry point does not move with a (it stays where ``skew`` puts it).
``n_states`` (> 0)
    number of states ``(w_max − w_min)/granularity`` (aihwkit ``calcNumStates``), mapped to ``dw_min``
    through the family's granularity rule (§2.10): ``dw_min = (w_max − w_min)/(n_states·f)`` with f = 1
    (linear families), ``0.5**pow_gamma`` (pow families), the normalised down step at w = 0 (expstep).
``c2c`` (>= 0)
    cycle-to-cycle noise relative to the step: ``dw_min_std = c2c``.
``skew`` (weight units, strictly inside (w_min, w_max))
    offset of the (mean) visible-weight symmetry point. Reference families: ``reference_mean = −skew``
    (visible w = device − reference, so the visible symmetry point moves by +skew; with
    ``subtract_symmetry_point=True`` it is exactly ``skew``). Other families: replaces ``up_down`` by the
    one-sided imbalance that puts the *nominal* device's symmetry point exactly at ``skew``:
    ``q = step_up_shape(skew)/step_down_shape(skew)`` (noise-free response shapes at nominal bounds),
    ``up_down = 1 − q`` if q <= 1 (down step shrunk) else ``1/q − 1`` (up step shrunk). Needs a
    state-dependent response (asymmetry > 0 for constant_step).
``skew_std`` (weight units, >= 0)
    device-to-device spread of the symmetry point. Reference families: ``reference_std = skew_std``
    (exact). Other families: ``up_down_dtod = skew_std·h'(skew)/k`` with
    ``h(w) = ln step_down_shape(w) − ln step_up_shape(w)`` and ``k = 1/(1 + up_bias) + 1/(1 + down_bias)``
    (2 without a skew's one-sided bias) — the first-order spread of the symmetry point caused by
    ``up_down_dtod`` alone (bounds and gain spreads add to it; use ``dtod=0`` to isolate).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from analogtrain.config.errors import ConfigError
from analogtrain.devices import params as P


def bound_ratio(w: float, bound: float) -> float:
    """``w / bound`` (0 for a zero bound): where a weight sits relative to a nominal bound, as used by the
    linear-family shape functions ``1 − a·w/b``."""
    return w / bound if bound != 0 else 0.0


class SoftSlopes:
    """Mixin of the families whose steps are ``scale·(1 − a·w/b)`` with one slope factor ``a``: the
    ``asymmetry`` knob when set, else ``DEFAULT_SLOPE`` (constant_step 0: a constant step; softbounds 1:
    aihwkit's soft bounds). Put it before ``PulsedDeviceConfig`` in the bases."""

    DEFAULT_SLOPE: ClassVar[float] = 1.0

    def slope_factor(self) -> float:
        return self.DEFAULT_SLOPE if self.asymmetry is None else float(self.asymmetry)

    def nominal_shapes(self, w):
        a = self.slope_factor()
        return 1.0 - a * bound_ratio(w, self.w_max), 1.0 - a * bound_ratio(w, self.w_min)

    def apply_asymmetry(self, a, prefix):
        if not 0.0 <= a <= 1.0:
            raise ConfigError(f"{prefix}.asymmetry", f"{a} is out of range: allowed 0 <= asymmetry <= 1")
        return {"asymmetry": a}  # kept on the config: the sampler reads the slope factor from it

    def sample_family(self, ctx) -> None:
        """Slopes ``−a·scale/bound`` from the slope factor."""
        ctx.soft_slopes(self.slope_factor())

KNOBS = ("asymmetry", "skew", "skew_std", "n_states", "dtod", "c2c")


@dataclass
class PulsedDeviceConfig:
    """aihwkit ``PulsedDevice`` base parameters (§2.1, §2.2) shared by every family, plus the knobs."""

    # ``name``: registry name of this config (family or preset), selects the dataclass in
    # ``device_from_config``; ``family``: the device model (fixed per class, checked).
    name: str = "pulsed"
    family: str = "pulsed"

    # --- step size and its variations (aihwkit PulsedDevice) ---
    dw_min: float = 0.001  # nominal step size (weight units, > 0); aihwkit dw_min
    dw_min_dtod: float = 0.3  # d2d spread of the step "gain" (relative, >= 0)
    dw_min_dtod_log_normal: bool = False  # gain = exp(dw_min_dtod·ξ) instead of 1 + dw_min_dtod·ξ
    dw_min_std: float = 0.3  # cycle-to-cycle noise σ relative to the step (>= 0); per pulse
    up_down: float = 0.0  # one-sided systematic asymmetry in (−1, 1): > 0 shrinks only the DOWN step
    #   (scale_down = (gain − up_down − r)·dw_min), < 0 only the UP step (§2.2, checked in aihwkit)
    up_down_dtod: float = 0.01  # d2d spread r of the up/down balance (in units of dw_min, >= 0)

    # --- hard bounds (weight units); must bracket 0 ---
    w_max: float = 0.6  # mean upper bound b_max (>= 0)
    w_min: float = -0.6  # mean lower bound b_min (<= 0)
    w_max_dtod: float = 0.3  # relative d2d spread of b_max (>= 0)
    w_min_dtod: float = 0.3  # relative d2d spread of b_min (>= 0)
    enforce_consistency: bool = True  # |scales|, swap crossed bounds, b_max >= 0 >= b_min (§2.2;
    #   False: crossed bounds collapse to their midpoint, a dead device)

    # --- defects and decay ---
    corrupt_devices_prob: float = 0.0  # probability in [0, 1] that a device is stuck (scales 0)
    corrupt_devices_range: float = 0.1  # stuck value drawn uniformly in ±range ∩ [b_min, b_max] (>= 0)
    lifetime: float = 0.0  # decay time in mini-batches (0: off); w ← w·(1 − 1/L) once per mini-batch
    lifetime_dtod: float = 0.0  # relative d2d spread of the lifetime (>= 0)
    diffusion: float = 0.0  # random walk once per mini-batch: w ← clip(w + rate·ξ), rate = |diffusion·(1 +
    #   diffusion_dtod·ξ_d2d)| (weight units, >= 0; 0: off)
    diffusion_dtod: float = 0.0  # relative d2d spread of the diffusion rate (>= 0)
    reset: float = 0.0  # reset target b_reset = reset + reset_dtod·ξ_d2d (weight units; + the symmetry point
    #   with subtract_symmetry_point): where a reset (TT with_reset_prob) puts a device, what decay decays to
    reset_dtod: float = 0.0  # additive d2d spread of b_reset (weight units, >= 0)
    reset_std: float = 0.01  # cycle-to-cycle spread of a reset: w ← clip(b_reset + reset_std·ξ) (>= 0)

    # --- physics knobs (see module docstring; None = raw parameters) ---
    asymmetry: Optional[float] = None
    skew: Optional[float] = None
    skew_std: Optional[float] = None
    n_states: Optional[float] = None
    dtod: Optional[float] = None
    c2c: Optional[float] = None

    # ---------------------------------------------------------------- class-level behaviour
    FAMILY: ClassVar[str] = "pulsed"
    KIND: ClassVar[int] = P.KIND_LINEAR
    IS_REFERENCE: ClassVar[bool] = False  # has reference_mean/std (a visible offset)
    DTOD_FIELDS: ClassVar[tuple[str, ...]] = (
        "dw_min_dtod",
        "up_down_dtod",
        "w_max_dtod",
        "w_min_dtod",
        "lifetime_dtod",
    )
    DOC: ClassVar[str] = ""

    # -- family hooks (overridden) --
    def granularity_factor(self) -> float:
        """Nominal granularity / dw_min (§2.10)."""
        return 1.0

    def granularity(self) -> float:
        """Nominal granularity dw (aihwkit ``calcWeightGranularity``), used for BL/UM and thresholds."""
        g = self.dw_min * self.granularity_factor()
        return g if g > 0 else self.dw_min

    def num_states(self) -> float:
        return (self.w_max - self.w_min) / self.granularity()

    def nominal_shapes(self, w: float) -> tuple[float, float]:
        """Noise-free (up, down) step magnitudes of the *nominal* device at weight w, divided by the
        scales (scale_up = scale_down = dw_min): the response shapes q₊(w), q₋(w)."""
        raise NotImplementedError

    def apply_asymmetry(self, a: float, prefix: str) -> dict[str, Any]:
        """Raw-parameter changes for the asymmetry knob (may keep the knob for the sampler)."""
        raise ConfigError(f"{prefix}.asymmetry", f"is not defined for device family {self.FAMILY}")

    def write_noise(self) -> float:
        """Write-noise std in weight units (0: off)."""
        return float(getattr(self, "write_noise_std", 0.0)) * self.dw_min

    # -- validation --
    def validate(self, prefix: str = "device") -> None:
        """Range checks of raw parameters and knobs; raises ConfigError naming ``prefix.<key>``."""
        chk = _Checker(self, prefix)
        chk.positive("dw_min")
        for f in self.DTOD_FIELDS:
            chk.at_least(f, 0.0)
        chk.at_least("dw_min_std", 0.0)
        chk.open_interval("up_down", -1.0, 1.0)
        chk.at_least("w_max", 0.0)
        chk.at_most("w_min", 0.0)
        if not self.w_max > self.w_min:
            raise ConfigError(f"{prefix}.w_max", f"{self.w_max} must be > w_min={self.w_min}")
        chk.closed_interval("corrupt_devices_prob", 0.0, 1.0)
        chk.at_least("corrupt_devices_range", 0.0)
        chk.at_least("lifetime", 0.0)
        for k in ("diffusion", "diffusion_dtod", "reset_dtod", "reset_std"):
            chk.at_least(k, 0.0)
        if not math.isfinite(self.reset):
            raise ConfigError(f"{prefix}.reset", f"{self.reset} is out of range: allowed a finite number")
        for k in ("skew_std", "dtod", "c2c", "asymmetry"):
            chk.at_least(k, 0.0, optional=True)
        if self.n_states is not None and not self.n_states > 0:
            raise ConfigError(f"{prefix}.n_states", f"{self.n_states} is out of range: allowed n_states > 0")
        if self.skew is not None and not (self.w_min < self.skew < self.w_max):
            raise ConfigError(
                f"{prefix}.skew",
                f"{self.skew} is out of range: allowed w_min={self.w_min} < skew < w_max={self.w_max}",
            )
        self.validate_family(chk)

    def validate_family(self, chk: "_Checker") -> None:
        pass


class _Checker:
    """Small helper producing the one-line ConfigError messages."""

    def __init__(self, cfg, prefix: str):
        self.cfg = cfg
        self.prefix = prefix

    def _fail(self, key, cond_text):
        v = getattr(self.cfg, key)
        raise ConfigError(f"{self.prefix}.{key}", f"{v} is out of range: allowed {cond_text}")

    def positive(self, key):
        if not getattr(self.cfg, key) > 0:
            self._fail(key, f"{key} > 0")

    def at_least(self, key, lo, optional=False):
        v = getattr(self.cfg, key)
        if optional and v is None:
            return
        if not v >= lo:
            self._fail(key, f"{key} >= {lo}")

    def at_most(self, key, hi):
        if not getattr(self.cfg, key) <= hi:
            self._fail(key, f"{key} <= {hi}")

    def open_interval(self, key, lo, hi):
        if not lo < getattr(self.cfg, key) < hi:
            self._fail(key, f"{lo} < {key} < {hi}")

    def closed_interval(self, key, lo, hi, optional=False):
        v = getattr(self.cfg, key)
        if optional and v is None:
            return
        if not lo <= v <= hi:
            self._fail(key, f"{lo} <= {key} <= {hi}")


# ----------------------------------------------------------------------------------- knob resolution


def resolve_knobs(cfg: PulsedDeviceConfig, prefix: str = "device") -> PulsedDeviceConfig:
    """Map the physics knobs onto raw parameters (order: dtod, asymmetry, c2c, skew, skew_std, n_states;
    n_states last because the expstep granularity depends on up_down, which skew sets).

    Returns a new dataclass with every knob set to None (so calling it twice is a no-op) and the applied
    knob values in ``applied_knobs`` (a plain attribute, not a config field)."""
    applied = {k: getattr(cfg, k) for k in KNOBS if getattr(cfg, k) is not None}
    prev = dict(getattr(cfg, "applied_knobs", {}) or {})
    if not applied:
        return cfg
    c = dataclasses.replace(cfg, **{k: None for k in KNOBS})
    keep_asym = None

    if "dtod" in applied:
        f = applied["dtod"]
        c = dataclasses.replace(c, **{k: getattr(c, k) * f for k in c.DTOD_FIELDS})
    if "asymmetry" in applied:
        changes = c.apply_asymmetry(applied["asymmetry"], prefix)
        keep_asym = changes.pop("asymmetry", None)
        c = dataclasses.replace(c, **changes)
        if keep_asym is not None:
            # the sampler reads the slope factor from the field (softbounds*, constant_step)
            c = dataclasses.replace(c, asymmetry=keep_asym)
    if "c2c" in applied:
        c = dataclasses.replace(c, dw_min_std=applied["c2c"])
    if "skew" in applied or "skew_std" in applied:
        s = applied.get("skew")
        if c.IS_REFERENCE:
            if s is not None:
                c = dataclasses.replace(c, reference_mean=-s)
            if "skew_std" in applied:
                c = dataclasses.replace(c, reference_std=applied["skew_std"])
        else:
            s_eval = s if s is not None else _nominal_symmetry_point(c)
            if s is not None:
                qu, qd = c.nominal_shapes(s)
                if not (qu > 0 and qd > 0) or _is_flat(c):
                    raise ConfigError(
                        f"{prefix}.skew",
                        f"cannot place the symmetry point at {s} for family {c.FAMILY}: the response is "
                        "not state dependent there (set asymmetry > 0, or choose a reference family, "
                        "softbounds_reference or powstep_reference, whose skew is its reference offset)",
                    )
                q = qu / qd
                up_down = 1.0 - q if q <= 1.0 else 1.0 / q - 1.0
                c = dataclasses.replace(c, up_down=up_down)
            if "skew_std" in applied:
                hp = _dlog_ratio(c, s_eval)
                if not math.isfinite(hp) or hp <= 0:
                    raise ConfigError(
                        f"{prefix}.skew_std",
                        f"family {c.FAMILY} has no state-dependent symmetry point (set asymmetry > 0)",
                    )
                # w* solves ln(s_up/s_down) = h(w*), s_up = 1 + up_bias + r, s_down = 1 + down_bias − r
                # (sampling.py): δw* = δr·(1/(1 + up_bias) + 1/(1 + down_bias))/h'(w*), which is 2δr/h'
                # only without the one-sided bias that a skew sets
                k = 1.0 / (1.0 + min(c.up_down, 0.0)) + 1.0 / (1.0 - max(c.up_down, 0.0))
                c = dataclasses.replace(c, up_down_dtod=applied["skew_std"] * hp / k)
    if "n_states" in applied:
        f = c.granularity_factor()
        if not f > 0:
            f = 1.0
        c = dataclasses.replace(c, dw_min=(c.w_max - c.w_min) / (applied["n_states"] * f))
    c.validate(prefix)
    object.__setattr__(c, "applied_knobs", {**prev, **applied})
    return c


def _is_flat(c: PulsedDeviceConfig) -> bool:
    """True if the nominal response does not depend on w (constant step)."""
    lo, hi = 0.5 * c.w_min, 0.5 * c.w_max
    a0, b0 = c.nominal_shapes(lo)
    a1, b1 = c.nominal_shapes(hi)
    return abs(a0 - a1) < 1e-12 and abs(b0 - b1) < 1e-12


def _dlog_ratio(c: PulsedDeviceConfig, w: float) -> float:
    """h'(w) with h = ln q₋(w) − ln q₊(w), by a central difference."""
    eps = 1e-6 * (c.w_max - c.w_min)

    def h(v):
        qu, qd = c.nominal_shapes(v)
        return math.log(qd) - math.log(qu)

    try:
        return (h(w + eps) - h(w - eps)) / (2 * eps)
    except (ValueError, ZeroDivisionError):
        return float("nan")


def _nominal_symmetry_point(c: PulsedDeviceConfig) -> float:
    """Symmetry point of the nominal device (scale_up/down from up_down), by bisection."""
    up_bias = min(c.up_down, 0.0)
    down_bias = -max(c.up_down, 0.0)
    su, sd = 1.0 + up_bias, 1.0 + down_bias
    lo, hi = c.w_min, c.w_max

    def net(v):
        qu, qd = c.nominal_shapes(v)
        return su * qu - sd * qd

    if net(lo) <= 0:
        return lo
    if net(hi) >= 0:
        return hi
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if net(mid) > 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
