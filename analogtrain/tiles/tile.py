"""``AnalogTile``: one crossbar tile in a torch graph — forward and backward through the IO periphery,
and the (x, d) cache that the analog optimizer hands to the tile's learning rule.

aihwkit wiring (semantics §6.6): the autograd function's forward is the analog read ``y = W x`` with the
forward periphery; its backward is the analog read ``g = Wᵀ d`` with the backward periphery and *stores*
``(x, d)`` (d = the exact incoming gradient, not the noisy backward output) for the pulsed update. No
weight gradient is ever formed: the weights are buffers, and the only Parameter of a tile is a scalar
``analog_ctx`` that makes autograd call the backward (also when x needs no gradient, e.g. the first
layer) and gives the optimizer a param group per tile whose lr LR schedulers can change.

Weight remapping (aihwkit ``MappingParameter.weight_scaling_omega``; ``tile.weight_scaling_omega`` > 0):
``set_weights(W)`` fixes a digital output scale α (buffer ``mapping_scales``, shape (O,)):
α = max|W| / omega over the tile (``weight_scaling_columnwise``: α_i = max_j |W_ij| / omega per output
row; α = 1 where the max is 0) and programs W_analog = W / α, so the largest weight sits at ±omega
device units. The effective weight is W_eff = diag(α) W_analog:

* forward   y = α ⊙ forward_io(W_analog, x)            (= W_eff x with perfect IO)
* backward  grad_x = backward_io(W_analog, α ⊙ d)      (= W_effᵀ d with perfect IO)
* update    the cached gradient is d / α: the rule moves W_analog by ΔW_analog ≈ −lr·(d/α)·xᵀ, so
            ΔW_eff = α ⊙ ΔW_analog ≈ −lr·d·xᵀ — the effective weight takes the same step as an
            unmapped tile (aihwkit divides d by the mapping scale before the pulsed update).
* ``get_weights()`` returns α ⊙ W_analog.

α is fixed after programming (never learned) and is saved in the state dict. It is a buffer only when
omega > 0, so with remapping off the tile (reads, updates, state-dict keys) is exactly as without it.
"""

from __future__ import annotations

import torch

from analogtrain.tiles.config import TileConfig, to_dataclass, validate_tile
from analogtrain.tiles.periphery import backward_io, forward_io
from analogtrain.tiles.rule import TileRule

__all__ = ["AnalogTile"]


class _AnalogMVM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, analog_ctx, tile):  # x: (B, I) -> (B, O)
        ctx.tile = tile
        ctx.save_for_backward(x)
        return tile.read_forward(x.detach())

    @staticmethod
    def backward(ctx, grad_y):  # grad_y: (B, O) -> (B, I)
        (x,) = ctx.saved_tensors
        tile = ctx.tile
        tile.cache_update(x.detach(), grad_y.detach())
        grad_x = tile.read_backward(grad_y.detach()) if ctx.needs_input_grad[0] else None
        return grad_x, None, None  # no gradient for analog_ctx: weight gradients are never formed


class AnalogTile(torch.nn.Module):
    """A tile: ``rule`` (its weight state and learning rule) read through ``tile_cfg``'s periphery.

    ``io_seed``: Philox key of the IO noise (forward/backward offsets are buffers, +1 per read).
    Every input, an analog bias column included, is read through the periphery (aihwkit's
    ``perfect_bias`` is a property of that column's devices, ``sample_device(perfect_bias=True)``).
    """

    def __init__(self, rule: TileRule, tile_cfg: TileConfig | None = None, io_seed: int = 0):
        super().__init__()
        cfg = to_dataclass(TileConfig, tile_cfg) if tile_cfg is not None else TileConfig()
        validate_tile(cfg)
        self.tile_cfg = cfg
        self.rule = rule
        self.out_size, self.in_size = rule.out_size, rule.in_size
        self.analog_ctx = torch.nn.Parameter(torch.zeros(()), requires_grad=True)
        self.register_buffer("io_seed", torch.tensor(int(io_seed) & 0x7FFFFFFFFFFFFFFF, dtype=torch.int64))
        self.register_buffer("fwd_offset", torch.zeros((), dtype=torch.int64))
        self.register_buffer("bwd_offset", torch.zeros((), dtype=torch.int64))
        self._cache: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.weight_scaling_omega = float(cfg.weight_scaling_omega)
        self.weight_scaling_columnwise = bool(cfg.weight_scaling_columnwise)
        if self.remapped:  # α per output (a scalar tile scale is stored broadcast to (O,))
            self.register_buffer("mapping_scales", torch.ones(self.out_size, dtype=torch.float32))

    @property
    def remapped(self) -> bool:
        """True when weight remapping (``tile.weight_scaling_omega`` > 0) is on."""
        return self.weight_scaling_omega > 0.0

    # --- reads ----------------------------------------------------------------------------------
    def read_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Forward read with the forward periphery: x (B, I) -> y (B, O). Never records a graph."""
        if torch.is_grad_enabled():  # (inside the autograd function grad mode is already off)
            with torch.no_grad():
                return self._read_forward(x)
        return self._read_forward(x)

    def _read_forward(self, x: torch.Tensor) -> torch.Tensor:
        W = self.rule.effective_weight()
        io, seed, off = self.tile_cfg.forward, int(self.io_seed), int(self.fwd_offset)
        y = forward_io(W, x, io, seed=seed, offset=off)
        if self.remapped:
            y = y * self.mapping_scales.to(device=y.device, dtype=y.dtype)
        self.fwd_offset.add_(1)  # in place: no Module.__setattr__ round trip
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def read_backward(self, d: torch.Tensor) -> torch.Tensor:
        """Backward read with the backward periphery (no bound management): d (B, O) -> (B, I)."""
        if torch.is_grad_enabled():  # (the autograd engine runs backward with grad mode off)
            with torch.no_grad():
                return self._read_backward(d)
        return self._read_backward(d)

    def _read_backward(self, d: torch.Tensor) -> torch.Tensor:
        W = self.rule.effective_weight()
        if self.remapped:  # W_effᵀ d = W_analogᵀ (α ⊙ d)
            d = d * self.mapping_scales.to(device=d.device, dtype=d.dtype)
        io, seed, off = self.tile_cfg.backward, int(self.io_seed), int(self.bwd_offset)
        g = backward_io(W, d, io, seed=seed, offset=off)
        self.bwd_offset.add_(1)
        return g if g.dtype == d.dtype else g.to(d.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, I) -> (B, O) through the analog tile (autograd: backward read + (x, d) caching)."""
        if x.dim() != 2 or x.shape[1] != self.in_size:
            raise ValueError(f"AnalogTile expects x of shape (B, {self.in_size}), got {tuple(x.shape)}")
        if torch.is_grad_enabled() and (x.requires_grad or self.analog_ctx.requires_grad):
            return _AnalogMVM.apply(x, self.analog_ctx, self)
        return self.read_forward(x)

    # --- update -----------------------------------------------------------------------------------
    def cache_update(self, x: torch.Tensor, d: torch.Tensor) -> None:
        """Store one backward's inputs x (B, I) and exact gradients d (B, O) for the next update
        (with remapping, d / α: see the module docstring)."""
        if self.remapped:
            d = d / self.mapping_scales.to(device=d.device, dtype=d.dtype)
        self._cache.append((x, d))

    @property
    def has_cache(self) -> bool:
        return bool(self._cache)

    def clear_cache(self) -> None:
        self._cache.clear()

    @torch.no_grad()
    def apply_update(self, lr: float) -> None:
        """Concatenate all cached (x, d) along the batch axis and call ``rule.update`` once (aihwkit
        ``AnalogSGD``); lr = 0 drops the data. Clears the cache."""
        if not self._cache:
            return
        if lr != 0:
            xs, ds = zip(*self._cache)
            x = xs[0] if len(xs) == 1 else torch.cat(xs, 0)
            d = ds[0] if len(ds) == 1 else torch.cat(ds, 0)
            self.rule.update(x, d, float(lr))
            for arr in self._arrays:  # decay (device lifetime) once per mini-batch, as aihwkit
                arr.post_update_step()
        self._cache.clear()

    @property
    def _arrays(self):
        """The rule's DeviceArrays (looked up once per rule: a module walk on every update cost ~10 µs)."""
        from analogtrain.tiles.array import DeviceArray

        cached = self.__dict__.get("_arrays_of_rule")
        if cached is None or cached[0] is not self.rule:
            cached = (self.rule, [m for m in self.rule.modules() if isinstance(m, DeviceArray)])
            self.__dict__["_arrays_of_rule"] = cached
        return cached[1]

    # --- weights ----------------------------------------------------------------------------------
    def get_weights(self) -> torch.Tensor:
        """The effective weight (O, I): the rule's weight, times α per row with remapping."""
        W = self.rule.get_weights()
        if self.remapped:
            W = W * self.mapping_scales.to(device=W.device, dtype=W.dtype)[:, None]
        return W

    @torch.no_grad()
    def set_weights(self, W: torch.Tensor) -> None:
        """Program W (O, I) (clipped to the device bounds by the rule). With remapping, first fix
        α = max|W| / omega (per row if columnwise; 1 where the max is 0) and program W / α."""
        if not self.remapped:
            self.rule.set_weights(W)
            return
        W = W.detach().to(torch.float32).reshape(self.out_size, self.in_size)
        absmax = W.abs().amax(dim=1) if self.weight_scaling_columnwise else W.abs().max().expand(
            self.out_size)
        alpha = absmax / self.weight_scaling_omega
        alpha = torch.where(absmax > 0, alpha, torch.ones_like(alpha))
        self.mapping_scales.copy_(alpha)
        self.rule.set_weights(W / alpha[:, None])

    def extra_repr(self) -> str:
        s = f"out={self.out_size}, in={self.in_size}"
        if self.remapped:
            s += (f", weight_scaling_omega={self.weight_scaling_omega}, "
                  f"columnwise={self.weight_scaling_columnwise}")
        return s
