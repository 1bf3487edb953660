"""Registers the ``device`` config-group schemas: ``<name>_schema`` for every family and preset."""

from __future__ import annotations

from analogtrain.devices.registry import DEVICES


def register_configs(cs) -> None:
    """Store one structured-config node per device (``conf/device/<name>.yaml`` builds on it)."""
    for name, cls in DEVICES.items():
        cs.store(group="device", name=f"{name}_schema", node=cls)
