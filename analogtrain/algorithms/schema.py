"""Schemas of the ``algo`` config group; each algorithm module adds its dataclass here."""

from dataclasses import dataclass


@dataclass
class DigitalConfig:
    """``algo=digital``: floating-point SGD baseline."""

    name: str = "digital"
    momentum: float = 0.0  # SGD momentum
    weight_decay: float = 0.0  # L2 penalty


def register_configs(cs) -> None:
    cs.store(group="algo", name="digital_schema", node=DigitalConfig)
