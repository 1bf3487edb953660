"""Shared machinery of the analog algorithms: model conversion, per-tile seeds, the analog optimizer
(``AnalogSGD``) and per-layer metrics.

A concrete algorithm subclasses ``AnalogAlgorithm`` and implements ``make_rule(out, in, name, seeds)``
(``sgd``: one array; the TT family: A, C, buffers...). Everything else — converting every Linear/Conv2d,
seeding, the optimizer and metrics — is here.
"""

from __future__ import annotations

import inspect

import torch

from analogtrain.algorithms.base import Algorithm
from analogtrain.config.errors import ConfigError
from analogtrain.nn.convert import analog_layers, analog_tiles, convert_to_analog
from analogtrain.tiles.config import TileConfig, to_dataclass, validate_tile
from analogtrain.tiles.rule import TileRule
from analogtrain.tiles.seeds import derive_seed
from analogtrain.tiles.tile import AnalogTile

__all__ = ["AnalogAlgorithm", "AnalogSGD", "cfg_get"]


def cfg_get(node, key: str, default=None):
    """``node.key`` for DictConfig / dict / dataclass nodes, ``default`` when absent or None."""
    if node is None:
        return default
    if isinstance(node, dict):
        v = node.get(key, default)
    elif hasattr(node, "get") and not hasattr(node, "__dataclass_fields__"):
        v = node.get(key, default)
    else:
        v = getattr(node, key, default)
    return default if v is None else v


class AnalogSGD(torch.optim.SGD):
    """aihwkit ``AnalogSGD`` (§6.6): torch SGD for the digital parameters, then the pulsed update of every
    analog tile with the lr of its own param group (so LR schedulers act on it).

    Param groups: group 0 = all digital parameters (momentum/weight decay apply only there); then one
    group per tile holding the tile's ``analog_ctx`` (key ``"analog_tile"`` = the tile's module name).
    ``step()``: digital SGD step; then for each tile with cached data, all cached x (B_k, I) and
    d (B_k, O) are concatenated along the batch axis and ``rule.update(x, d, group_lr)`` is called once;
    caches are cleared (lr = 0 drops them). No weight gradients exist for analog tiles.
    """

    def __init__(self, model: torch.nn.Module, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 **sgd_kwargs):
        tiles = list(analog_tiles(model))
        ctx_ids = {id(t.analog_ctx) for _, t in tiles}
        digital = [p for p in model.parameters() if id(p) not in ctx_ids and p.requires_grad]
        groups = []
        if digital:
            groups.append({"params": digital})
        for name, tile in tiles:
            groups.append({"params": [tile.analog_ctx], "analog_tile": name, "momentum": 0.0,
                           "weight_decay": 0.0})
        if not groups:
            raise ValueError("AnalogSGD got a model without parameters")
        super().__init__(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, **sgd_kwargs)
        self._tiles: dict[int, AnalogTile] = {id(t.analog_ctx): t for _, t in tiles}

    def analog_groups(self):
        """(group, tile) for every analog param group."""
        for group in self.param_groups:
            if group.get("analog_tile") is not None:
                yield group, self._tiles[id(group["params"][0])]

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)  # analog_ctx has no grad: SGD skips it
        for group, tile in self.analog_groups():
            tile.apply_update(float(group["lr"]))
        return loss


class AnalogAlgorithm(Algorithm):
    """Base of the analog algorithms (``sgd``, ``tt``, ``ttv2``, ``cttv2``, ``agad``).

    * ``prepare(model)``: ``convert_to_analog`` with ``make_rule``; per-tile seeds are derived from
      ``seeds["device"]`` / ``seeds["pulse"]`` and the tile name ``"<layer>/tile<k>"`` (so adding a layer
      never changes another layer's devices), the IO noise from ``seeds["pulse"]``.
      Layers matching ``cfg.model.keep_digital`` (glob patterns, optional) stay digital.
    * ``build_optimizer``: ``AnalogSGD`` (digital params: ``algo.digital_momentum``/``digital_weight_decay``
      when the algo schema has them, else plain SGD).
    * ``metrics(model)``: ``tile/<layer>/<stat>`` from every analog layer (see ``AnalogMatrix.metrics``).
    """

    is_analog = True

    def __init__(self, cfg, seeds: dict[str, int] | None = None):
        super().__init__(cfg, seeds)
        self.tile_cfg = to_dataclass(TileConfig, cfg_get(cfg, "tile")) if cfg_get(cfg, "tile") is not None \
            else TileConfig()
        self._device_cfg = None

    # --- configuration ----------------------------------------------------------------------------
    @classmethod
    def validate(cls, cfg) -> None:
        tile = cfg_get(cfg, "tile")
        if tile is not None:
            tile = to_dataclass(TileConfig, tile)  # (on a DictConfig, .update is Mapping.update)
            validate_tile(tile, "tile")
            from analogtrain.tiles.array import update_spec

            update_spec(tile.update, tile.update_mode, "tile")
        from analogtrain.devices import device_from_config

        device_from_config(cfg_get(cfg, "device"), prefix="device")

    @property
    def device_cfg(self):
        """The validated main device config (``device_from_config(cfg.device)``)."""
        if self._device_cfg is None:
            from analogtrain.devices import device_from_config

            node = cfg_get(self.cfg, "device")
            if node is None:
                raise ConfigError("device", "an analog algorithm needs a device (e.g. device=softbounds)")
            self._device_cfg = device_from_config(node, prefix="device")
        return self._device_cfg

    def tile_seeds(self, name: str) -> dict[str, int]:
        """Seeds of the tile called ``name``: ``{"device": ..., "pulse": ...}`` (63-bit)."""
        return {"device": derive_seed(self.seeds.get("device", 0), "device", name),
                "pulse": derive_seed(self.seeds.get("pulse", 1), "pulse", name)}

    def keep_digital(self) -> list[str]:
        return list(cfg_get(cfg_get(self.cfg, "model"), "keep_digital", []) or [])

    # --- contract -----------------------------------------------------------------------------------
    def make_rule(self, out_size: int, in_size: int, name: str, seeds: dict[str, int]) -> TileRule:
        """The learning rule of one tile (out_size × in_size); ``seeds`` from ``tile_seeds(name)``."""
        raise NotImplementedError

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        from analogtrain import ops

        if hasattr(ops, "set_backend"):  # the kernel engineer's dispatch (tile.backend)
            ops.set_backend(self.tile_cfg.backend)

        takes_pb = "perfect_bias" in inspect.signature(self.make_rule).parameters

        def factory(out_size: int, in_size: int, name: str, perfect_bias: bool = False) -> TileRule:
            if perfect_bias and takes_pb:  # ideal analog-bias column (tile.analog_bias_perfect)
                return self.make_rule(out_size, in_size, name, self.tile_seeds(name), perfect_bias=True)
            return self.make_rule(out_size, in_size, name, self.tile_seeds(name))

        io_seed = derive_seed(self.seeds.get("pulse", 1), "io")
        return convert_to_analog(model, self.tile_cfg, factory, io_seed=io_seed,
                                 keep_digital=self.keep_digital())

    def build_optimizer(self, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
        a = cfg_get(self.cfg, "algo")
        return AnalogSGD(model, lr=lr, momentum=float(cfg_get(a, "digital_momentum", 0.0)),
                         weight_decay=float(cfg_get(a, "digital_weight_decay", 0.0)))

    def metrics(self, model: torch.nn.Module) -> dict[str, float]:
        out = {}
        for name, layer in analog_layers(model):
            for k, v in layer.metrics().items():
                out[f"tile/{name}/{k}"] = float(v)
        return out
