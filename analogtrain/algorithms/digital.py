"""``algo=digital``: the floating-point baseline (plain torch SGD, no analog tiles)."""

from __future__ import annotations

import torch

from analogtrain.algorithms.base import Algorithm, register_algorithm


@register_algorithm("digital")
class DigitalSGD(Algorithm):
    """Floating-point SGD on an unchanged model; the reference point of every analog study."""

    is_analog = False

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def build_optimizer(self, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
        a = self.cfg.algo
        return torch.optim.SGD(
            model.parameters(), lr=lr, momentum=float(a.get("momentum", 0.0)),
            weight_decay=float(a.get("weight_decay", 0.0)),
        )
