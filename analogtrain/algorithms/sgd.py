"""``algo=sgd``: plain analog SGD (aihwkit ``SingleRPUConfig`` + ``AnalogSGD``, semantics §3.1).

Every Linear/Conv2d weight lives on one device array per tile; each optimizer step applies the pulsed
update of every sample of the mini-batch (tile batch = samples, or image patches for convolutions) with
``lr`` = the SGD lr of the tile's param group and the ``tile.update`` settings (BL, UM, UBLM) in the
``tile.update_mode`` (pulsed | mean_count | expected). On an asymmetric device this converges to a
biased point (the asymmetry "floor" that the TT family removes).
"""

from __future__ import annotations

from analogtrain.algorithms.analog import AnalogAlgorithm
from analogtrain.algorithms.base import register_algorithm
from analogtrain.tiles.rule import SGDRule, TileRule

__all__ = ["SGDAlgorithm"]


@register_algorithm("sgd")
class SGDAlgorithm(AnalogAlgorithm):
    """Analog SGD: one ``SGDRule`` (one device array) per tile."""

    @classmethod
    def validate(cls, cfg) -> None:
        _validate_sgd(cfg)
        super().validate(cfg)

    def make_rule(self, out_size: int, in_size: int, name: str, seeds: dict[str, int],
                  perfect_bias: bool = False) -> TileRule:
        return SGDRule(self.device_cfg, out_size, in_size, self.tile_cfg, seed_device=seeds["device"],
                       seed_pulse=seeds["pulse"], perfect_bias=perfect_bias)


def _validate_sgd(cfg) -> None:
    from analogtrain.algorithms.analog import cfg_get
    from analogtrain.config.errors import ConfigError

    a = cfg_get(cfg, "algo")
    mom = float(cfg_get(a, "digital_momentum", 0.0))
    if not 0.0 <= mom < 1.0:
        raise ConfigError("algo.digital_momentum",
                          f"{mom} is out of range: allowed 0 <= digital_momentum < 1")
    wd = float(cfg_get(a, "digital_weight_decay", 0.0))
    if wd < 0:
        raise ConfigError("algo.digital_weight_decay",
                          f"{wd} is out of range: allowed 0 <= digital_weight_decay")
