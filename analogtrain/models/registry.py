"""Model registry: ``@register_model(name, tiny=...)`` on ``builder(cfg_model, input_shape, num_outputs)``.

Every entry has a *tiny* variant (a dict of config overrides giving a model small enough for unit tests);
tests enumerate ``MODELS`` so a newly registered model is built, run forward/backward and trained the day
it is added. Each model also has ``conf/model/<name>.yaml`` and a ``<name>_schema`` dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from analogtrain.config.errors import ConfigError


@dataclass
class ModelEntry:
    name: str
    builder: Callable[..., torch.nn.Module]
    tiny: dict = field(default_factory=dict)  # config overrides of the tiny test variant


MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, tiny: dict | None = None):
    """Decorator registering ``builder(cfg, input_shape, num_outputs) -> nn.Module`` as ``model=<name>``.

    ``input_shape`` is the per-sample input shape from the data set ((C, H, W) or (F,)); the model adapts
    its first layer to it and its last layer to ``num_outputs``.
    """

    def deco(fn):
        MODELS[name] = ModelEntry(name, fn, dict(tiny or {}))
        return fn

    return deco


def build_model(cfg_model, input_shape: tuple[int, ...], num_outputs: int) -> torch.nn.Module:
    """Build ``cfg_model.name`` for data of ``input_shape`` with ``num_outputs`` outputs (uses the global
    torch RNG for initialisation: seed it with ``seeds["init"]`` first)."""
    import analogtrain.models  # noqa: F401  (registers the built-in models)

    name = cfg_model.name
    if name not in MODELS:
        raise ConfigError("model.name", f"'{name}' is unknown; choose one of {', '.join(sorted(MODELS))}")
    return MODELS[name].builder(cfg_model, tuple(input_shape), int(num_outputs))


def activation(name: str, key: str = "model.activation") -> torch.nn.Module:
    """``torch.nn`` module of an activation name (see ``schema.ACTIVATIONS``)."""
    table = {"sigmoid": torch.nn.Sigmoid, "relu": torch.nn.ReLU, "tanh": torch.nn.Tanh,
             "gelu": torch.nn.GELU, "identity": torch.nn.Identity}
    if name not in table:
        raise ConfigError(key, f"'{name}' is not allowed; choose one of {', '.join(table)}")
    return table[name]()
