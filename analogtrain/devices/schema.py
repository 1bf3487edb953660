"""STUB (to be replaced by the devices owner): registers the ``device`` config-group schemas."""

from dataclasses import dataclass


@dataclass
class SoftBoundsSchemaStub:
    family: str = "softbounds"
    dw_min: float = 0.001
    w_max: float = 0.6
    w_min: float = -0.6


def register_configs(cs) -> None:
    cs.store(group="device", name="softbounds_schema", node=SoftBoundsSchemaStub)
