"""The contract between the trainer and a training algorithm (digital, sgd, tt, ttv2, cttv2, agad).

The trainer knows nothing about analog hardware. It calls, in this order::

    algo = build_algorithm(cfg)                        # registry lookup by cfg.algo.name
    model = algo.prepare(model)                        # e.g. convert_to_analog + attach tile rules
    opt = algo.build_optimizer(model, lr=cfg.trainer.lr)   # torch.optim.Optimizer subclass
    ... per step: opt.zero_grad(); loss.backward(); opt.step()   (analog tiles update inside step())
    algo.metrics(model) -> {"tile/<layer>/<stat>": float, ...}   (logged per epoch / log interval)

* ``build_optimizer`` returns a real ``torch.optim.Optimizer`` so LR schedulers act on its
  ``param_groups``; its ``step()`` first steps the digital parameters with SGD and then runs the pulsed
  updates of every analog tile with the current group lr (aihwkit ``AnalogSGD`` semantics).
* All algorithm state lives in module buffers (tile arrays, buffers, choppers, counters, RNG offsets)
  or in the optimizer state, so ``model.state_dict()`` + ``opt.state_dict()`` is a complete checkpoint.
"""

from __future__ import annotations

from typing import Callable

import torch

ALGORITHMS: dict[str, Callable] = {}


def register_algorithm(name: str):
    """Class decorator: make an ``Algorithm`` subclass available as ``algo=<name>``."""

    def deco(cls):
        ALGORITHMS[name] = cls
        cls.name = name
        return cls

    return deco


class Algorithm:
    """Base class. Subclasses get the composed config (``cfg`` = whole run config) and the seeds."""

    name = "base"
    is_analog = True

    def __init__(self, cfg, seeds: dict[str, int] | None = None):
        self.cfg = cfg
        self.seeds = dict(seeds or {})

    @classmethod
    def validate(cls, cfg) -> None:
        """Cross-field checks of ``cfg.algo`` (and what it needs of ``cfg.device``/``cfg.tile``).
        Raise ``ConfigError`` naming the key; called by ``run.train`` before any work."""

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        raise NotImplementedError

    def build_optimizer(self, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
        raise NotImplementedError

    def metrics(self, model: torch.nn.Module) -> dict[str, float]:
        return {}


def build_algorithm(cfg, seeds: dict[str, int] | None = None) -> Algorithm:
    """Instantiate the algorithm named by ``cfg.algo.name`` (imports the registry modules)."""
    import analogtrain.algorithms  # noqa: F401  (registers every algorithm)
    from analogtrain.config.errors import ConfigError

    name = cfg.algo.name
    if name not in ALGORITHMS:
        raise ConfigError("algo.name", f"'{name}' is unknown; choose one of {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name](cfg, seeds)
