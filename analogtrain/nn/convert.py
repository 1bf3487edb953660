"""``convert_to_analog``: swap every ``nn.Linear`` / ``nn.Conv2d`` of any model (timm models included)
for its analog counterpart, programmed with the digital weights."""

from __future__ import annotations

import fnmatch
import logging
from typing import Iterable, Iterator

import torch

from analogtrain.config.errors import ConfigError
from analogtrain.nn.layers import AnalogConv2d, AnalogLayer, AnalogLinear
from analogtrain.nn.matrix import RuleFactory
from analogtrain.tiles.config import TileConfig, to_dataclass, validate_tile
from analogtrain.tiles.tile import AnalogTile

__all__ = ["convert_to_analog", "analog_layers", "analog_tiles", "is_kept_digital"]

log = logging.getLogger(__name__)


def is_kept_digital(name: str, patterns: Iterable[str]) -> bool:
    """True if the dotted module ``name`` or one of its parents matches a glob in ``patterns``
    (``"head"`` keeps ``head`` and ``head.fc``; ``"patch_embed.*"``, ``"*.attn.proj"`` work as globs).
    Also ``init.exclude``'s match of state-dict keys (``engine/transfer.py``)."""
    parts = name.split(".")
    prefixes = [".".join(parts[: k + 1]) for k in range(len(parts))]
    return any(fnmatch.fnmatchcase(p, pat) for pat in patterns for p in prefixes)


def convert_to_analog(model: torch.nn.Module, tile_cfg, rule_factory: RuleFactory, *, io_seed: int = 0,
                      keep_digital: Iterable[str] = ()) -> torch.nn.Module:
    """Replace (in place) each ``nn.Linear`` and ``nn.Conv2d`` of ``model`` by ``AnalogLinear`` /
    ``AnalogConv2d`` and program the tiles with the digital weights (clipped to the device bounds).

    ``rule_factory(out_size, in_size, tile_name) -> TileRule`` builds each tile's rule; tile names are
    ``"<module name>/tile<k>"`` (``"<name>/g<g>/tile<k>"`` per group of a grouped conv).
    ``keep_digital``: glob patterns of module names left digital. Linear layers inside
    ``nn.MultiheadAttention`` stay digital (torch reads their ``weight`` directly). Returns ``model``.
    """
    cfg = to_dataclass(TileConfig, tile_cfg) if tile_cfg is not None else TileConfig()
    validate_tile(cfg)
    patterns = list(keep_digital or ())
    layers = [n for n, m in model.named_modules() if n and isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    for pat in patterns:  # a typo must not leave the layer analog without a word
        if not any(is_kept_digital(n, [pat]) for n in layers):
            more = " ..." if len(layers) > 8 else ""
            raise ConfigError("model.keep_digital", f"'{pat}' matches no Linear/Conv2d layer (nor a module "
                              f"holding one); layers: {', '.join(layers[:8])}{more}")
    # collect first: replacing while iterating named_modules would visit the new modules
    targets = []
    for name, module in model.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) or not name:
            continue
        if is_kept_digital(name, patterns):
            log.info("keeping %s digital (keep_digital)", name)
            continue
        parent_name = name.rsplit(".", 1)[0] if "." in name else ""
        if isinstance(model.get_submodule(parent_name), torch.nn.MultiheadAttention):
            log.warning("keeping %s digital: nn.MultiheadAttention reads its weights directly", name)
            continue
        targets.append((name, module))
    if isinstance(model, (torch.nn.Linear, torch.nn.Conv2d)):
        raise ValueError("convert_to_analog needs a container model; wrap a bare layer in nn.Sequential")

    for name, module in targets:
        new = _analog_twin(module, cfg, rule_factory, name, io_seed)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    return model


@torch.no_grad()
def _analog_twin(module, cfg: TileConfig, rule_factory: RuleFactory, name: str, io_seed: int) -> AnalogLayer:
    dev = module.weight.device
    has_bias = module.bias is not None
    if isinstance(module, torch.nn.Linear):
        new = AnalogLinear(module.in_features, module.out_features, has_bias, tile_cfg=cfg,
                           rule_factory=rule_factory, name=name, io_seed=io_seed)
    else:
        new = AnalogConv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                           module.padding, module.dilation, module.groups, has_bias, module.padding_mode,
                           tile_cfg=cfg, rule_factory=rule_factory, name=name, io_seed=io_seed)
    new.to(dev)
    new.set_weights(module.weight.detach().float(), module.bias.detach().float() if has_bias else None)
    new.train(module.training)
    return new


def analog_layers(model: torch.nn.Module) -> Iterator[tuple[str, AnalogLayer]]:
    """(name, layer) of every analog layer of ``model``."""
    for name, m in model.named_modules():
        if isinstance(m, AnalogLayer):
            yield name, m


def analog_tiles(model: torch.nn.Module) -> Iterator[tuple[str, AnalogTile]]:
    """(module name, tile) of every ``AnalogTile`` of ``model``."""
    for name, m in model.named_modules():
        if isinstance(m, AnalogTile):
            yield name, m
