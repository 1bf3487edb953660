"""Per-tile learning rules: what a tile's weight *is* and how a mini-batch's (x, d) changes it.

``TileRule`` is the contract between ``AnalogTile`` (forward/backward through the periphery) and the
training algorithm (sgd: one array; the TT family: arrays A, C, digital buffers, choppers, ...):

* ``effective_weight() -> (O, I)``: the weight the forward and backward reads see.
* ``set_weights(W)``: program a weight (e.g. from a digital model), clipped to the device bounds.
* ``update(x (B, I), d (B, O), lr)``: one optimizer step's worth of samples, applied in batch order.
* ``metrics() -> dict[str, float]``: statistics since the last call (logged as ``tile/<layer>/<stat>``).
  Stats listed in ``SUM_STATS`` are summed over the tiles of a layer, all others averaged weighted by the
  tile's element count (``AnalogAlgorithm.metrics``).

All state lives in buffers/sub-modules so that ``state_dict`` captures it.
"""

from __future__ import annotations

import torch

from analogtrain.tiles.array import DeviceArray, update_spec
from analogtrain.tiles.config import TileConfig, to_dataclass

__all__ = ["TileRule", "SGDRule", "PulseMeter"]


class PulseMeter(torch.nn.Module):
    """Counts pulses of one array between two ``stats()`` calls (buffers, so resume is exact)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("pulses", torch.zeros((), dtype=torch.float64))
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))
        self.register_buffer("samples", torch.zeros((), dtype=torch.int64))
        self.register_buffer("elements", torch.zeros((), dtype=torch.int64))
        self.register_buffer("last", torch.zeros(2, dtype=torch.float64))  # last reported values

    @torch.no_grad()
    def add(self, pulses: torch.Tensor, n_samples: int) -> None:
        """Record one update call: ``pulses`` (O, I) summed over its ``n_samples`` samples."""
        # in place (a float32 sum accumulated in float64): no Module.__setattr__ round trip per update
        self.pulses.add_(pulses.sum())
        self.calls.add_(1)
        self.samples.add_(int(n_samples))
        self.elements.fill_(pulses.numel())

    @torch.no_grad()
    def stats(self, prefix: str = "") -> dict[str, float]:
        """``pulses_per_update``: mean total pulses (all elements and samples) per update call;
        ``pulses_per_weight_sample``: mean pulses per element per sample. Resets the counters; without
        new calls since the last report the previous values are repeated."""
        if int(self.calls) > 0:
            self.last[0] = self.pulses / self.calls
            self.last[1] = self.pulses / max(int(self.samples) * int(self.elements), 1)
            self.pulses.zero_()
            self.calls.zero_()
            self.samples.zero_()
        return {f"{prefix}pulses_per_update": float(self.last[0]),
                f"{prefix}pulses_per_weight_sample": float(self.last[1])}


class TileRule(torch.nn.Module):
    """Base class of learning rules (see the module docstring). Subclasses set ``out_size``/``in_size``."""

    SUM_STATS: tuple[str, ...] = ("pulses_per_update",)

    def __init__(self, out_size: int, in_size: int, tile_cfg: TileConfig | None = None):
        super().__init__()
        self.out_size, self.in_size = int(out_size), int(in_size)
        self.tile_cfg = to_dataclass(TileConfig, tile_cfg) if tile_cfg is not None else TileConfig()
        self.spec = update_spec(self.tile_cfg.update, self.tile_cfg.update_mode)

    def effective_weight(self) -> torch.Tensor:
        """(O, I) weight used by the forward and backward reads (not a copy; do not modify)."""
        raise NotImplementedError

    def get_weights(self) -> torch.Tensor:
        return self.effective_weight().detach().clone()

    def set_weights(self, W: torch.Tensor) -> None:
        raise NotImplementedError

    def update(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> None:
        raise NotImplementedError

    def metrics(self) -> dict[str, float]:
        W = self.effective_weight()
        return {"w_mean": float(W.mean()), "w_std": float(W.std(unbiased=False))}


class SGDRule(TileRule):
    """Plain analog SGD (aihwkit ``SingleRPUConfig`` + ``AnalogSGD``, semantics §3.1): one array; each
    step applies the pulsed update of every sample with lr = the optimizer group's lr."""

    def __init__(self, device_cfg, out_size: int, in_size: int, tile_cfg: TileConfig | None = None,
                 seed_device: int = 0, seed_pulse: int = 1, perfect_bias: bool = False):
        super().__init__(out_size, in_size, tile_cfg)
        self.array = DeviceArray(device_cfg, out_size, in_size, seed_device, seed_pulse,
                                 backend=self.tile_cfg.backend, perfect_bias=perfect_bias)
        self.meter = PulseMeter()

    def effective_weight(self) -> torch.Tensor:
        return self.array.w

    def set_weights(self, W: torch.Tensor) -> None:
        self.array.set_weights(W)

    @torch.no_grad()
    def update(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> None:
        """The pulsed update of every sample (x (B, I), d (B, O)), or with ``tile.update.pulse_type``
        none / none_with_device aihwkit's floating-point update (``DeviceArray.float_update``)."""
        if lr == 0 or x.shape[0] == 0:
            return
        if self.spec is None:  # (update_spec: pulse_type none / none_with_device)
            self.array.float_update(x, d, lr, clip=self.tile_cfg.update.pulse_type == "none_with_device")
            return
        pulses = self.array.update(x, d, lr, self.spec)
        self.meter.add(pulses, x.shape[0])

    def metrics(self) -> dict[str, float]:
        out = self.meter.stats()
        out["frac_at_bounds"] = self.array.frac_at_bounds()
        out.update(super().metrics())
        return out
