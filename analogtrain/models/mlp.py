"""``model=mlp`` and ``model=linear``: fully connected networks (the analog-training papers' MLPs)."""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from analogtrain.models.registry import activation, register_model


class MLP(nn.Module):
    """Flatten -> [Linear -> act] * len(hidden) -> Linear -> out_act.

    x: (B, *input_shape) -> (B, num_outputs). Layers are named ``fc1, fc2, ..., out`` so per-layer tile
    metrics read ``tile/fc1/...``.
    """

    def __init__(self, in_features: int, hidden_sizes: list[int], num_outputs: int, act: str = "sigmoid",
                 bias: bool = True, out_act: str = "identity"):
        super().__init__()
        self.flatten = nn.Flatten()
        layers: list[tuple[str, nn.Module]] = []
        prev = in_features
        for i, h in enumerate(hidden_sizes, start=1):
            layers.append((f"fc{i}", nn.Linear(prev, int(h), bias=bias)))
            layers.append((f"act{i}", activation(act)))
            prev = int(h)
        layers.append(("out", nn.Linear(prev, num_outputs, bias=bias)))
        layers.append(("out_act", activation(out_act, "model.out_activation")))
        self.layers = nn.Sequential(OrderedDict(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.flatten(x))


@register_model("mlp", tiny={"hidden_sizes": [16]})
def build_mlp(cfg, input_shape, num_outputs) -> nn.Module:
    return MLP(math.prod(input_shape), list(cfg.hidden_sizes), num_outputs, cfg.activation, cfg.bias,
               cfg.get("out_activation", "identity"))


@register_model("linear")
def build_linear(cfg, input_shape, num_outputs) -> nn.Module:
    """A single layer ``out``: y = W x (+ b); W: (num_outputs, prod(input_shape))."""
    return MLP(math.prod(input_shape), [], num_outputs, "identity", cfg.bias)
