"""``AnalogMatrix``: one logical weight matrix (out × in) mapped onto a grid of analog tiles.

When the matrix exceeds ``tile.max_input_size`` / ``tile.max_output_size`` it is split along each axis
into ``ceil(size/max)`` nearly equal parts (``base + (i < extra)``, aihwkit ``TileModuleArray``, §6.6);
tile (r, c) holds output block r × input block c. The outputs of the input blocks are summed in digital
(each tile has its own NM/BM/noise), the output blocks are concatenated.

With an analog bias the matrix has one more input, fed with 1 (the bias column is the last input of the
last input block, read through the periphery like any input; ``analog_bias_perfect`` gives its devices
aihwkit's ``perfect_bias`` parameters: ideal scales and bounds ×100).
"""

from __future__ import annotations

from typing import Callable

import torch

from analogtrain.tiles.config import TileConfig
from analogtrain.tiles.rule import TileRule
from analogtrain.tiles.seeds import derive_seed
from analogtrain.tiles.tile import AnalogTile

__all__ = ["AnalogMatrix", "split_sizes", "RuleFactory"]

# rule_factory(out_size, in_size, tile_name) -> TileRule; the tile holding a perfect analog-bias column
# is built with rule_factory(out_size, in_size, tile_name, perfect_bias=True)
RuleFactory = Callable[[int, int, str], TileRule]


def split_sizes(size: int, max_size: int) -> list[int]:
    """Nearly equal parts of ``size`` with at most ``max_size`` each (``max_size <= 0``: no split)."""
    if max_size <= 0 or size <= max_size:
        return [size]
    n = -(-size // max_size)
    base, extra = divmod(size, n)
    return [base + (1 if i < extra else 0) for i in range(n)]


class AnalogMatrix(torch.nn.Module):
    """y = W x (+ b·1 for an analog bias) over a grid of ``AnalogTile``s.

    ``rule_factory(o, i, tile_name)`` builds the learning rule (and samples the devices) of each tile;
    ``tile_name = f"{name}/tile{k}"`` with k the row-major tile index (used for per-tile seeds);
    the IO noise seed of tile k is ``derive_seed(io_seed, tile_name, "io")``.
    """

    def __init__(self, out_size: int, in_size: int, tile_cfg: TileConfig, rule_factory: RuleFactory,
                 name: str = "matrix", io_seed: int = 0, analog_bias: bool = False,
                 tile_index_start: int = 0):
        super().__init__()
        self.out_size, self.in_size, self.analog_bias = int(out_size), int(in_size), bool(analog_bias)
        n_in = self.in_size + (1 if self.analog_bias else 0)
        self.out_splits = split_sizes(self.out_size, tile_cfg.max_output_size)
        self.in_splits = split_sizes(n_in, tile_cfg.max_input_size)
        self.name = name
        tiles = []
        k = tile_index_start
        for r, o in enumerate(self.out_splits):
            for c, i in enumerate(self.in_splits):
                tname = f"{name}/tile{k}"
                last_col = c == len(self.in_splits) - 1
                perfect = self.analog_bias and last_col and bool(tile_cfg.analog_bias_perfect)
                # only the perfect-bias tile gets the keyword (plain factories need not accept it)
                rule = rule_factory(o, i, tname, perfect_bias=True) if perfect else rule_factory(o, i, tname)
                tiles.append(AnalogTile(rule, tile_cfg, io_seed=derive_seed(io_seed, tname, "io")))
                k += 1
        self.tiles = torch.nn.ModuleList(tiles)
        self.n_tiles = k - tile_index_start

    def _blocks(self):
        """Yield (tile, out_slice, in_slice) over the grid (input slices index the augmented input)."""
        k, o0 = 0, 0
        for o in self.out_splits:
            i0 = 0
            for i in self.in_splits:
                yield self.tiles[k], slice(o0, o0 + o), slice(i0, i0 + i)
                k += 1
                i0 += i
            o0 += o

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in) -> (B, out)."""
        if self.n_tiles == 1 and not self.analog_bias:  # one tile reads x as it is (no slice, no sum)
            return self.tiles[0](x)
        if self.analog_bias:
            x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)
        n_in_blocks = len(self.in_splits)
        outs, acc = [], None
        for k, (tile, _, isl) in enumerate(self._blocks()):
            y = tile(x[:, isl])
            acc = y if acc is None else acc + y  # input blocks summed in digital
            if (k + 1) % n_in_blocks == 0:
                outs.append(acc)
                acc = None
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

    def get_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W (out, in), b (out,) or None for a digital bias) assembled from the tiles."""
        n_in = self.in_size + (1 if self.analog_bias else 0)
        full = torch.zeros(self.out_size, n_in, dtype=torch.float32,
                           device=self.tiles[0].rule.effective_weight().device)
        for tile, osl, isl in self._blocks():
            full[osl, isl] = tile.get_weights()
        if self.analog_bias:
            return full[:, :-1].clone(), full[:, -1].clone()
        return full, None

    @torch.no_grad()
    def set_weights(self, W: torch.Tensor, b: torch.Tensor | None = None) -> None:
        """Program W (out, in) (and the analog bias b (out,)), each tile clipped to its device bounds."""
        W = W.detach().to(torch.float32).reshape(self.out_size, self.in_size)
        if self.analog_bias:
            b = torch.zeros(self.out_size) if b is None else b.detach().to(torch.float32).reshape(-1)
            W = torch.cat([W, b.to(W.device)[:, None]], dim=1)
        for tile, osl, isl in self._blocks():
            tile.set_weights(W[osl, isl])

    def metrics(self) -> dict[str, float]:
        """Aggregate of the tiles' ``rule.metrics()``: stats in ``rule.SUM_STATS`` summed, the rest
        averaged weighted by tile size; ``w_mean``/``w_std`` over the whole matrix."""
        acc: dict[str, float] = {}
        weights: dict[str, float] = {}
        for tile in self.tiles:
            n = tile.out_size * tile.in_size
            for key, v in tile.rule.metrics().items():
                if key in tile.rule.SUM_STATS:
                    acc[key] = acc.get(key, 0.0) + v
                else:
                    acc[key] = acc.get(key, 0.0) + v * n
                    weights[key] = weights.get(key, 0.0) + n
        out = {k: (v / weights[k] if k in weights else v) for k, v in acc.items()}
        W, b = self.get_weights()
        full = W if b is None else torch.cat([W, b[:, None]], dim=1)
        out["w_mean"] = float(full.mean())
        out["w_std"] = float(full.std(unbiased=False))
        return out
