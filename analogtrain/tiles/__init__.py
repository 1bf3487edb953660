"""Analog tiles: device arrays, learning rules, the IO periphery and the autograd tile.

* ``array.DeviceArray``   one crossbar array (conductances, device parameters, RNG counters)
* ``rule.TileRule``       per-tile learning rule (``SGDRule``: one array; the TT family builds on it)
* ``tile.AnalogTile``     forward/backward through the periphery, (x, d) cache for the update
* ``periphery``           DAC/ADC, noise and bound management of analog reads (aihwkit ``IOParameters``)
* ``config``              ``IOConfig`` / ``UpdateConfig`` / ``TileConfig`` schemas of the ``tile:`` node
"""

from analogtrain.tiles.array import DeviceArray, update_spec
from analogtrain.tiles.config import IOConfig, TileConfig, UpdateConfig
from analogtrain.tiles.rule import PulseMeter, SGDRule, TileRule
from analogtrain.tiles.seeds import derive_seed
from analogtrain.tiles.tile import AnalogTile

__all__ = ["AnalogTile", "DeviceArray", "IOConfig", "PulseMeter", "SGDRule", "TileConfig", "TileRule",
           "UpdateConfig", "derive_seed", "update_spec"]
