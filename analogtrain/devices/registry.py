"""Registry of device configs and the one checked translation ``node -> validated dataclass``."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from analogtrain.config.errors import ConfigError
from analogtrain.devices.base import KNOBS, PulsedDeviceConfig, resolve_knobs
from analogtrain.devices.constant_step import ConstantStepConfig
from analogtrain.devices.expstep import ExpStepConfig
from analogtrain.devices.linear_step import LinearStepConfig
from analogtrain.devices.powstep import PowStepConfig, PowStepReferenceConfig
from analogtrain.devices.presets import PRESETS
from analogtrain.devices.softbounds import SoftBoundsConfig, SoftBoundsReferenceConfig

FAMILIES: dict[str, type] = {
    "constant_step": ConstantStepConfig,
    "linear_step": LinearStepConfig,
    "softbounds": SoftBoundsConfig,
    "softbounds_reference": SoftBoundsReferenceConfig,
    "expstep": ExpStepConfig,
    "powstep": PowStepConfig,
    "powstep_reference": PowStepReferenceConfig,
}

#: name (family or preset) -> config dataclass
DEVICES: dict[str, type] = {**FAMILIES, **PRESETS}

DEFAULT_DEVICE = "softbounds"


def _to_dict(node) -> dict[str, Any]:
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return {f.name: getattr(node, f.name) for f in dataclasses.fields(node)}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(node, DictConfig):
            return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    if isinstance(node, dict):
        return dict(node)
    raise ConfigError("device", f"expected a mapping or a device dataclass, got {type(node).__name__}")


def _type_ok(value, tp) -> tuple[bool, Any, str]:
    """(ok, converted value, description of the allowed type)."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[float]
        if value is None:
            return True, None, "a number or null"
        ok, v, _ = _type_ok(value, float)
        return ok, v, "a number or null"
    if tp is bool:
        return isinstance(value, bool), value, "true or false"
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return ok, value, "an integer"
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value, "a number"
    if tp is str:
        return isinstance(value, str), value, "a string"
    return True, value, ""


def device_from_config(node, prefix: str = "device") -> PulsedDeviceConfig:
    """DictConfig / dict / dataclass -> validated device dataclass with the physics knobs resolved.

    The dataclass is chosen by ``name`` (a key of ``DEVICES``; falls back to ``family``). Unknown keys,
    wrong types and out-of-range values raise ``ConfigError`` naming ``f"{prefix}.<key>"`` and what is
    allowed. Idempotent: a resolved dataclass comes back unchanged."""
    if isinstance(node, PulsedDeviceConfig):
        cls = type(node)
        data = _to_dict(node)
        applied = dict(getattr(node, "applied_knobs", {}) or {})
    else:
        data = _to_dict(node)
        applied = {}
        key = data.get("name") or data.get("family") or DEFAULT_DEVICE
        if key not in DEVICES:
            field = "name" if data.get("name") else "family"
            raise ConfigError(
                f"{prefix}.{field}",
                f"'{key}' is not a known device; choose one of {', '.join(sorted(DEVICES))}"
            )
        cls = DEVICES[key]
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in data.items():
        if k not in names:
            raise ConfigError(
                f"{prefix}.{k}",
                f"unknown key for device '{cls.name}' (family {cls.FAMILY}); "
                f"allowed keys: {', '.join(names)}",
            )
        ok, conv, allowed = _type_ok(v, hints[k])
        if not ok:
            raise ConfigError(f"{prefix}.{k}", f"{v!r} has the wrong type: allowed {allowed}")
        kwargs[k] = conv
    if "family" in kwargs and kwargs["family"] != cls.FAMILY:
        raise ConfigError(
            f"{prefix}.family",
            f"'{kwargs['family']}' does not match device '{kwargs.get('name', cls.name)}'; "
            f"allowed: {cls.FAMILY}",
        )
    cfg = cls(**kwargs)
    cfg.validate(prefix)
    if applied:
        object.__setattr__(cfg, "applied_knobs", applied)
    if any(getattr(cfg, k) is not None for k in KNOBS):
        cfg = resolve_knobs(cfg, prefix)
    return cfg
