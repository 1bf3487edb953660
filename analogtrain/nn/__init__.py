"""Analog layers and model conversion.

* ``AnalogLinear``, ``AnalogConv2d``: drop-in replacements of ``nn.Linear`` / ``nn.Conv2d`` whose weights
  live in analog tiles (split over several tiles when larger than ``tile.max_input/output_size``).
* ``convert_to_analog(model, tile_cfg, rule_factory, ...)``: swap every Linear/Conv2d of any model.
"""

from analogtrain.nn.convert import analog_layers, analog_tiles, convert_to_analog, is_kept_digital
from analogtrain.nn.layers import AnalogConv2d, AnalogLayer, AnalogLinear
from analogtrain.nn.matrix import AnalogMatrix, split_sizes

__all__ = ["AnalogConv2d", "AnalogLayer", "AnalogLinear", "AnalogMatrix", "analog_layers", "analog_tiles",
           "convert_to_analog", "is_kept_digital", "split_sizes"]
