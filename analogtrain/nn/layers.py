"""Analog drop-in replacements of ``nn.Linear`` and ``nn.Conv2d`` (aihwkit ``AnalogLinear``/``AnalogConv2d``).

The weight lives in analog tiles (``AnalogMatrix``); only the bias (``digital_bias=True``, the default)
and nothing else is a torch Parameter, updated exactly by the wrapped digital optimizer. Each tile's
scalar ``analog_ctx`` parameter carries no gradient; the analog optimizer (``AnalogSGD``) hands each
tile's cached (x, d) to its learning rule.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from analogtrain.nn.matrix import AnalogMatrix, RuleFactory
from analogtrain.tiles.config import TileConfig, to_dataclass

__all__ = ["AnalogLayer", "AnalogLinear", "AnalogConv2d"]


class AnalogLayer(torch.nn.Module):
    """Common base: ``matrices`` (one ``AnalogMatrix`` per conv group), digital ``bias`` or None."""

    matrices: torch.nn.ModuleList
    analog_name: str = ""

    def tiles(self):
        for m in self.matrices:
            yield from m.tiles

    def metrics(self) -> dict[str, float]:
        """Per-layer statistics (see ``AnalogMatrix.metrics``), combined over conv groups."""
        if len(self.matrices) == 1:
            return self.matrices[0].metrics()
        parts = [m.metrics() for m in self.matrices]
        sizes = [m.out_size * m.in_size for m in self.matrices]
        sum_stats = set(self.matrices[0].tiles[0].rule.SUM_STATS)
        out = {}
        for key in parts[0]:
            vals = [p.get(key, 0.0) for p in parts]
            out[key] = sum(vals) if key in sum_stats else sum(v * n for v, n in zip(vals, sizes)) / sum(sizes)
        W = self.weight
        out["w_mean"], out["w_std"] = float(W.mean()), float(W.std(unbiased=False))
        return out


class AnalogLinear(AnalogLayer):
    """y = W x + b with W in analog tiles. x: (..., in_features) -> (..., out_features).

    ``rule_factory(o, i, tile_name)`` builds each tile's learning rule; ``name`` prefixes the tile names
    (and thereby the per-tile seeds); ``io_seed`` keys the IO noise.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, tile_cfg=None,
                 rule_factory: RuleFactory, name: str = "linear", io_seed: int = 0):
        super().__init__()
        cfg = to_dataclass(TileConfig, tile_cfg) if tile_cfg is not None else TileConfig()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.digital_bias = bool(cfg.digital_bias)
        analog_bias = bias and not self.digital_bias
        self.analog_name = name
        self.matrices = torch.nn.ModuleList([AnalogMatrix(
            self.out_features, self.in_features, cfg, rule_factory, name=name, io_seed=io_seed,
            analog_bias=analog_bias)])
        self.has_bias = bool(bias)
        self.bias = torch.nn.Parameter(torch.zeros(self.out_features)) if bias and self.digital_bias else None

    @property
    def weight(self) -> torch.Tensor:
        """Current analog weight (out, in) — a detached copy; write with ``set_weights``."""
        return self.matrices[0].get_weights()[0]

    def get_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        W, b = self.matrices[0].get_weights()
        if self.bias is not None:
            b = self.bias.detach().clone()
        return W, b

    @torch.no_grad()
    def set_weights(self, W: torch.Tensor, b: torch.Tensor | None = None) -> None:
        self.matrices[0].set_weights(W, b if not self.digital_bias else None)
        if self.bias is not None and b is not None:
            self.bias.copy_(b.detach().reshape(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # (B, in): the tile batch already
            y = self.matrices[0](x)
        else:
            lead = x.shape[:-1]
            y = self.matrices[0](x.reshape(-1, self.in_features))
            y = y.reshape(*lead, self.out_features)
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        m = self.matrices[0]
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={'digital' if self.bias is not None else ('analog' if m.analog_bias else 'none')}, "
                f"tiles={len(m.out_splits)}x{len(m.in_splits)}")


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class AnalogConv2d(AnalogLayer):
    """2-D convolution with the kernel in analog tiles, computed by ``unfold`` (im2col): every output
    position of every image is one tile sample, so the tile batch is N·H_out·W_out (aihwkit, §1.5/§6.6).

    Weight layout per group g: ``W_g (C_out/g, C_in/g·kh·kw)`` = ``conv.weight[g-th block].reshape``,
    which is the order of ``F.unfold``'s patch vectors. x: (N, C_in, H, W) -> (N, C_out, H_out, W_out).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", *, tile_cfg=None,
                 rule_factory: RuleFactory, name: str = "conv", io_seed: int = 0):
        super().__init__()
        cfg = to_dataclass(TileConfig, tile_cfg) if tile_cfg is not None else TileConfig()
        if in_channels % groups or out_channels % groups:
            raise ValueError("in_channels and out_channels must be divisible by groups")
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.padding_mode = padding_mode
        if isinstance(self.padding, str) and self.padding == "same" and self.stride != (1, 1):
            raise ValueError("padding='same' needs stride 1")
        self.digital_bias = bool(cfg.digital_bias)
        analog_bias = bias and not self.digital_bias
        self.analog_name = name
        kh, kw = self.kernel_size
        k_in = self.in_channels // groups * kh * kw
        o_g = self.out_channels // groups
        mats = []
        for g in range(groups):
            gname = name if groups == 1 else f"{name}/g{g}"
            mats.append(AnalogMatrix(o_g, k_in, cfg, rule_factory, name=gname, io_seed=io_seed,
                                     analog_bias=analog_bias))
        self.matrices = torch.nn.ModuleList(mats)
        self.has_bias = bool(bias)
        self.bias = torch.nn.Parameter(torch.zeros(self.out_channels)) if bias and self.digital_bias else None

    # --- weights ----------------------------------------------------------------------------------
    @property
    def weight(self) -> torch.Tensor:
        """Current analog kernel (C_out, C_in/g, kh, kw) — a detached copy; write with ``set_weights``."""
        return self.get_weights()[0]

    def get_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        Ws, bs = zip(*(m.get_weights() for m in self.matrices))
        W = torch.cat(Ws, 0).reshape(self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        if self.bias is not None:
            b = self.bias.detach().clone()
        elif bs[0] is not None:
            b = torch.cat(bs, 0)
        else:
            b = None
        return W, b

    @torch.no_grad()
    def set_weights(self, W: torch.Tensor, b: torch.Tensor | None = None) -> None:
        o_g = self.out_channels // self.groups
        W = W.detach().reshape(self.out_channels, -1)
        for g, m in enumerate(self.matrices):
            bg = None if (b is None or self.digital_bias) else b[g * o_g:(g + 1) * o_g]
            m.set_weights(W[g * o_g:(g + 1) * o_g], bg)
        if self.bias is not None and b is not None:
            self.bias.copy_(b.detach().reshape(-1))

    # --- forward ----------------------------------------------------------------------------------
    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Explicit padding for string paddings and non-zero padding modes; returns (x, unfold padding)."""
        kh, kw = self.kernel_size
        dh, dw = self.dilation
        if isinstance(self.padding, str):
            if self.padding == "valid":
                return x, (0, 0)
            th, tw = dh * (kh - 1), dw * (kw - 1)  # 'same': total padding, the extra pixel at the end
            return F.pad(x, (tw // 2, tw - tw // 2, th // 2, th - th // 2),
                         mode="constant" if self.padding_mode == "zeros" else self.padding_mode), (0, 0)
        ph, pw = self.padding
        if self.padding_mode == "zeros" or (ph == 0 and pw == 0):
            return x, (ph, pw)
        return F.pad(x, (pw, pw, ph, ph), mode=self.padding_mode), (0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        x, pad = self._pad(x)
        N, _, H, Wd = x.shape
        kh, kw = self.kernel_size
        (sh, sw), (dh, dw) = self.stride, self.dilation
        h_out = math.floor((H + 2 * pad[0] - dh * (kh - 1) - 1) / sh + 1)
        w_out = math.floor((Wd + 2 * pad[1] - dw * (kw - 1) - 1) / sw + 1)
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=pad, stride=self.stride)
        L = cols.shape[-1]
        cols = cols.transpose(1, 2).reshape(N * L, -1)  # (N·L, C_in·kh·kw): one tile sample per patch
        k_in = cols.shape[1] // self.groups
        outs = [m(cols[:, g * k_in:(g + 1) * k_in]) for g, m in enumerate(self.matrices)]
        y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)  # (N·L, C_out)
        y = y.reshape(N, L, self.out_channels).transpose(1, 2).reshape(N, self.out_channels, h_out, w_out)
        if self.bias is not None:
            y = y + self.bias[None, :, None, None]
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        bias = "digital" if self.bias is not None else ("analog" if self.matrices[0].analog_bias else "none")
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}, bias={bias}")
