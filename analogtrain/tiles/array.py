"""One crossbar array of resistive devices: its conductance state, device parameters and RNG counters.

A ``DeviceArray`` owns, as module buffers (so ``state_dict`` is a complete checkpoint):

==============  ===========================  ==================================================
``w``           (O, I) float32               visible weights (device conductance − reference)
``w_p``         (O, I) float32 or (0,)       persistent weights when the device has write noise
``params``      (NP, O, I) float32           sampled device parameters (``devices/params.py``)
``gparams``     (NG,) float64                tile-wide device scalars
``seed``        () int64                     pulse seed of this array (Philox key)
``offset``      () int64                     pulsed-update call counter (Philox ``c3``), +1 per update
``read_offset`` () int64                     transfer-read call counter, +1 per ``read``
==============  ===========================  ==================================================

The update goes through ``analogtrain.ops.pulsed_update`` (compiled kernel or torch reference).
"""

from __future__ import annotations

import torch

from analogtrain import ops
from analogtrain.config.errors import ConfigError
from analogtrain.devices import params as P
from analogtrain.ops import MODE_EXPECTED, MODE_MEAN_COUNT, MODE_PULSED, UpdateSpec
from analogtrain.ops import rng
from analogtrain.tiles.config import IOConfig, UpdateConfig
from analogtrain.tiles.periphery import read_io

__all__ = ["DeviceArray", "update_spec"]

_MODES = {"pulsed": MODE_PULSED, "mean_count": MODE_MEAN_COUNT, "expected": MODE_EXPECTED,
          "aggregated": MODE_PULSED}  # aggregated = MODE_PULSED with UpdateSpec.aggregate


def update_spec(update: UpdateConfig, update_mode: str = "pulsed", prefix: str = "tile") -> UpdateSpec | None:
    """Translate ``tile.update`` + ``tile.update_mode`` into the op's ``UpdateSpec``.

    ``update_mode=pulsed`` follows ``update.pulse_type``: ``stochastic_compressed`` → pulsed,
    ``mean_count`` → deterministic counts; ``none`` / ``none_with_device`` → ``None``: no pulsed update,
    the rule applies aihwkit's floating-point update instead (``DeviceArray.float_update``: no bounds for
    ``none``, e.g. aihwkit's ``InferenceRPUConfig`` training; the device bounds for ``none_with_device``).
    ``update_mode=mean_count|expected`` override the pulse type. ``update_mode=aggregated`` is pulsed with
    ``aggregate=True`` (same pulse-type logic; it needs stochastic pulse trains, so ``pulse_type:
    mean_count`` is a ConfigError naming ``{prefix}.update_mode``). Whether the device supports it
    (KIND_LINEAR) is checked where the device is known (``config.validate.check_update_mode_device``).
    UM is forced on under UBLM (aihwkit).
    """
    if update_mode not in _MODES:
        raise ConfigError(f"{prefix}.update_mode", f"'{update_mode}' is not allowed; choose one of "
                          f"{', '.join(_MODES)}")
    mode = _MODES[update_mode]
    aggregate = update_mode == "aggregated"
    if update_mode in ("pulsed", "aggregated"):
        pt = update.pulse_type
        if pt in ("none", "none_with_device"):
            return None
        if pt == "mean_count":
            if aggregate:
                raise ConfigError(f"{prefix}.update_mode", "'aggregated' aggregates stochastic pulse trains "
                                  "and needs update.pulse_type=stochastic_compressed (got mean_count); "
                                  "choose update_mode pulsed or mean_count for deterministic counts")
            mode = MODE_MEAN_COUNT
        elif pt != "stochastic_compressed":
            raise ConfigError(f"{prefix}.update.pulse_type", f"'{pt}' is not implemented; choose one of "
                              "stochastic_compressed, mean_count, none, none_with_device")
    ublm = bool(update.update_bl_management)
    return UpdateSpec(
        desired_bl=int(update.desired_bl), fixed_bl=bool(update.fixed_bl), ublm=ublm,
        um=bool(update.update_management) or ublm, um_grad_scale=float(update.um_grad_scale),
        res=float(update.res), sto_round=bool(update.sto_round), mode=mode, aggregate=aggregate,
    )


class DeviceArray(torch.nn.Module):
    """One crossbar array with device-to-device variation sampled once from ``seed_device``.

    ``device_cfg``: a device config dataclass (``analogtrain.devices.device_from_config``);
    ``out_size``/``in_size``: O rows (outputs) × I columns (inputs). Weights start at 0 (visible).
    ``backend`` is recorded for information; the op dispatch (``analogtrain.ops``) chooses the kernel.
    ``perfect_bias``: the last column is aihwkit's ``perfect_bias`` analog-bias column.
    """

    def __init__(self, device_cfg, out_size: int, in_size: int, seed_device: int, seed_pulse: int,
                 backend: str = "auto", perfect_bias: bool = False):
        super().__init__()
        from analogtrain.devices import sample_device  # devices package imports nothing from tiles

        self.out_size, self.in_size, self.backend = int(out_size), int(in_size), backend
        self.device_cfg = device_cfg
        # perfect_bias: the last column is an ideal analog-bias column (sampled so by the devices)
        s = (sample_device(device_cfg, self.out_size, self.in_size, int(seed_device), perfect_bias=True)
             if perfect_bias else sample_device(device_cfg, self.out_size, self.in_size, int(seed_device)))
        self.sampled = s
        self.dw = float(s.dw)
        self.w_min, self.w_max = float(s.w_min), float(s.w_max)
        self.register_buffer("w", torch.zeros(self.out_size, self.in_size, dtype=torch.float32))
        self.register_buffer("w_p", torch.zeros(self.out_size, self.in_size, dtype=torch.float32)
                             if s.write_noise else torch.zeros(0, dtype=torch.float32))
        self.register_buffer("params", s.params.to(torch.float32).contiguous())
        self.register_buffer("gparams", s.gparams.to(torch.float64).contiguous())
        self.register_buffer("seed", torch.tensor(int(seed_pulse) & 0x7FFFFFFFFFFFFFFF, dtype=torch.int64))
        self.register_buffer("offset", torch.zeros((), dtype=torch.int64))
        self.register_buffer("read_offset", torch.zeros((), dtype=torch.int64))

    # --- state --------------------------------------------------------------------------------
    @property
    def has_write_noise(self) -> bool:
        return self.w_p.numel() > 0

    @property
    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-element bounds of the *visible* weight: (b_min − ref, b_max − ref), each (O, I)."""
        ref = self.params[P.P_REF]
        return self.params[P.P_BMIN] - ref, self.params[P.P_BMAX] - ref

    def device_state(self) -> torch.Tensor:
        """The device's own state (persistent ``w_p`` with write noise, else ``w``), visible units."""
        return self.w_p if self.has_write_noise else self.w

    def get_weights(self) -> torch.Tensor:
        """(O, I) copy of the visible weights."""
        return self.w.detach().clone()

    @torch.no_grad()
    def set_weights(self, W: torch.Tensor) -> None:
        """Program ``W`` (O, I), clipped element-wise to the device bounds [b_min, b_max]. As aihwkit's
        base class (semantics §2.7), and as ``apply_decay``, the clip acts on the visible weight and ignores
        a reference offset: on a device with ref ≠ 0 the programmed state W + ref may lie outside the
        bounds until its next pulse clips it (``bounds`` gives the state's own limits, b − ref). With
        write noise and the device's ``apply_write_noise_on_set`` (aihwkit default), the persistent weight
        is the clipped ``W`` and the visible weight gets a fresh write-noise draw around it (§2.3)."""
        lo, hi = self.params[P.P_BMIN], self.params[P.P_BMAX]
        W = W.detach().to(self.w.device, torch.float32).reshape(self.out_size, self.in_size)
        W = torch.minimum(torch.maximum(W, lo), hi)
        self.w.copy_(W)
        if self.has_write_noise:
            self.w_p.copy_(W)
            if getattr(self.sampled, "apply_write_noise_on_set", True):
                self._redraw_write_noise(b=0)

    def _redraw_write_noise(self, b: int) -> None:
        """Visible weight = persistent weight + write_noise_std·dw_min·ξ for every element (Philox stream
        SET_NOISE, a = flat element, b = 0 for set_weights / 1 after decay, offset = update counter)."""
        idx = torch.arange(self.w.numel(), dtype=torch.int64, device=self.w.device)
        z = rng.normal(int(self.seed), int(self.offset), rng.Stream.SET_NOISE, idx, b, 0, device=self.w.device)
        self.w.copy_(self.w_p + float(self.sampled.write_noise_std) * z.reshape(self.w.shape))

    @torch.no_grad()
    def post_update_step(self) -> None:
        """Once per mini-batch after the update (aihwkit ``post_update_step``): decay towards the reset
        target with the device lifetime (``w ← (w − b_reset)·(1 − 1/L) + b_reset``, clipped; devices with
        ``lifetime > 0``, e.g. the capacitor preset), then diffusion (``w ← clip(w + rate·ξ)``; devices
        with ``diffusion > 0``, ξ drawn at this array's update counter). Both act on the persistent weight
        when there is write noise, whose visible weight is then redrawn for all elements."""
        s = self.sampled
        decay = getattr(s, "decay_scale", None) is not None
        diffusion = getattr(s, "diffusion_rate", None) is not None
        if not (decay or diffusion):
            return
        if decay:
            s.apply_decay(self.device_state())
        if diffusion:
            s.apply_diffusion(self.device_state(), int(self.seed), int(self.offset))
        if self.has_write_noise:
            self._redraw_write_noise(b=1)

    def frac_at_bounds(self, tol: float = 0.1) -> float:
        """Fraction of devices within ``tol·dw`` of b_min or b_max (saturated; soft bounds approach them
        asymptotically, so a device this close moves by ≲ tol of a nominal step towards the bound)."""
        lo, hi = self.bounds
        w = self.device_state()
        margin = tol * self.dw
        return float(((w >= hi - margin) | (w <= lo + margin)).float().mean()) if w.numel() else 0.0

    # --- operations ---------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, x: torch.Tensor, d: torch.Tensor, lr: float, spec: UpdateSpec,
               chop_in: torch.Tensor | None = None, chop_out: torch.Tensor | None = None) -> torch.Tensor:
        """Pulsed update with x (B, I), d (B, O) (aihwkit sign: positive x·d·lr → down pulses, so the
        weight moves along −lr·x·d). Returns the pulses per element (O, I); advances ``offset`` by 1."""
        if spec.aggregate and getattr(type(self.device_cfg), "KIND", P.KIND_LINEAR) != P.KIND_LINEAR:
            from analogtrain.config.validate import check_update_mode_device

            check_update_mode_device("aggregated", self.device_cfg)  # ConfigError naming tile.update_mode
        x = x.detach().to(self.w.device, torch.float32).contiguous()
        d = d.detach().to(self.w.device, torch.float32).contiguous()
        pulses = ops.pulsed_update(
            self.w, self.w_p if self.has_write_noise else None, self.params, self.gparams, x, d,
            float(lr), self.dw, spec, int(self.seed), int(self.offset), chop_in=chop_in, chop_out=chop_out,
        )
        self.offset.add_(1)  # in place: no Module.__setattr__ round trip
        return pulses

    @torch.no_grad()
    def float_update(self, x: torch.Tensor, d: torch.Tensor, lr: float, clip: bool) -> None:
        """aihwkit's floating-point update (``pulse_type`` none / none_with_device, semantics §1.3):
        W ← W − lr·dᵀx, x (B, I), d (B, O), one float32 GEMM over the batch, no pulses, no device response
        or noise; ``clip`` (none_with_device): then clipped to the device bounds [b_min, b_max] as
        ``set_weights`` clips. With write noise the persistent weight takes the same step (so that
        ``post_update_step``'s redraw around it keeps the update). The counters do not move."""
        x = x.detach().to(self.w.device, torch.float32)
        d = d.detach().to(self.w.device, torch.float32)
        for t in (self.w, self.w_p) if self.has_write_noise else (self.w,):
            t.addmm_(d.t(), x, alpha=-float(lr))
            if clip:
                torch.minimum(torch.maximum(t, self.params[P.P_BMIN]), self.params[P.P_BMAX], out=t)

    @torch.no_grad()
    def read(self, x: torch.Tensor, io: IOConfig, transposed: bool = False) -> torch.Tensor:
        """Transfer read through ``io`` with NM/BM forced off: x (B, I) -> (B, O), or ``transposed``
        x (B, O) -> (B, I). Noise from Stream.READ_NOISE at ``read_offset`` (advanced by 1)."""
        y = read_io(self.w, x.to(torch.float32), io, seed=int(self.seed), offset=int(self.read_offset),
                    transposed=transposed)
        self.read_offset.add_(1)
        return y

    def extra_repr(self) -> str:
        return f"out={self.out_size}, in={self.in_size}, dw={self.dw:.3g}, write_noise={self.has_write_noise}"
