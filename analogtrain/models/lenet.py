"""``model=lenet``: LeNet-5 (LeCun et al. 1998), sized to the input.

28x28 (k=5, first conv padded by 2): 28 -conv-> 28 -pool-> 14 -conv-> 10 -pool-> 5   => 16*5*5 = 400
32x32 (k=5, no padding):             32 -conv-> 28 -pool-> 14 -conv-> 10 -pool-> 5   => 400
8x8   (k=3, padding 1):               8 -conv->  8 -pool->  4 -conv->  4 -pool-> 2   => 16*2*2 = 64
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from analogtrain.config.errors import ConfigError
from analogtrain.models.registry import activation, register_model


class LeNet5(nn.Module):
    """x: (B, C, H, W) -> (B, num_outputs). Layers ``conv1, conv2, fc1, fc2, ..., out``."""

    def __init__(self, input_shape, num_outputs: int, channels=(6, 16), fc_sizes=(120, 84), kernel_size=None,
                 act: str = "tanh", bias: bool = True):
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError("model.name", f"lenet needs image inputs (C, H, W), got shape {tuple(input_shape)}; "
                              "use model=mlp for vector data")
        if len(channels) != 2:
            raise ConfigError("model.channels", f"needs exactly 2 values (conv1, conv2), got {list(channels)}")
        c, h, w = input_shape
        small = min(h, w) < 16
        k = int(kernel_size) if kernel_size else (3 if small else 5)
        # classic padding: 28x28 MNIST padded to 32 by conv1; small inputs keep their size in both convs
        pad1 = k // 2 if (small or min(h, w) < 32) else 0
        pad2 = k // 2 if small else 0
        self.features = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(c, channels[0], k, padding=pad1, bias=bias), act1=activation(act), pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(channels[0], channels[1], k, padding=pad2, bias=bias), act2=activation(act),
            pool2=nn.MaxPool2d(2),
        ))
        with torch.no_grad():
            n_flat = self.features(torch.zeros(1, c, h, w)).numel()
        if n_flat == 0:
            raise ConfigError("model.kernel_size", f"{k} is too large for {h}x{w} inputs")
        fcs: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
        prev = n_flat
        for i, s in enumerate(fc_sizes, start=1):
            fcs += [(f"fc{i}", nn.Linear(prev, int(s), bias=bias)), (f"fact{i}", activation(act))]
            prev = int(s)
        fcs.append(("out", nn.Linear(prev, num_outputs, bias=bias)))
        self.classifier = nn.Sequential(OrderedDict(fcs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("lenet", tiny={"channels": [2, 4], "fc_sizes": [8]})
def build_lenet(cfg, input_shape, num_outputs) -> nn.Module:
    return LeNet5(input_shape, num_outputs, list(cfg.channels), list(cfg.fc_sizes), cfg.kernel_size, cfg.activation,
                  cfg.bias)
