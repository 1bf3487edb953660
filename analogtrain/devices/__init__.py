"""Resistive device models: response functions, device-to-device sampling, presets and physics knobs.

Public API (contract, see team BRIEF "Devices API")::

    DEVICES: dict[str, type]                      # name (family or preset) -> config dataclass
    device_from_config(node, prefix="device")     # -> validated dataclass, knobs resolved (ConfigError)
    sample_device(cfg, out_size, in_size, seed)   # -> SampledDevice (params (NP,O,I), gparams (NG,))
    SampledDevice.symmetry_point() / .step_up(w) / .step_down(w)
    device_step(w_dev, up, params, gparams, xi)   # the per-pulse response (mirrored by csrc/)

One module per family (``constant_step``, ``linear_step``, ``softbounds`` (+ reference), ``expstep``,
``powstep`` (+ reference)); ``presets`` holds the literature presets; ``base`` the shared parameters
and the knob definitions; ``params`` the tensor layout.
"""

from analogtrain.devices.base import KNOBS, PulsedDeviceConfig, resolve_knobs
from analogtrain.devices.registry import DEFAULT_DEVICE, DEVICES, FAMILIES, device_from_config
from analogtrain.devices.sampling import SampledDevice, sample_device, symmetry_point
from analogtrain.devices.step import device_step, step_magnitudes

DeviceConfig = PulsedDeviceConfig

__all__ = [
    "DEVICES",
    "FAMILIES",
    "DEFAULT_DEVICE",
    "KNOBS",
    "DeviceConfig",
    "PulsedDeviceConfig",
    "SampledDevice",
    "device_from_config",
    "device_step",
    "resolve_knobs",
    "sample_device",
    "step_magnitudes",
    "symmetry_point",
]
