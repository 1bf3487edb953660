"""``algo=ttv2``: TTv2 (Gokmen 2021), aihwkit ``BufferedTransferCompound`` (semantics §3.3).

Transfer of column (row) j, per read::

    y      = A e_j + read noise                      (minus the reference R when A is zero-shifted)
    thr    = thres_scale · dw_C                      weight units, granularity of the *to* device C
    H[:,j] += y · |lr_t|                             lr_t = transfer_lr (· SGD lr if scale_transfer_lr)
    n      = clamp(trunc(H[:,j] / thr), −BL_t, BL_t)
    forget_buffer: H[:,j] ← momentum · H[:,j] where n ≠ 0      else: H[:,j] −= (1 − momentum)·n·thr
    C[:,j] += n · step · dw_C   as a pulsed update (x = e_j, d = −n, lr = step·dw_C, transfer_update);
                                with the default BL_t = 1 and no UM: one pulse of sign(n) per n ≠ 0

Note: aihwkit's *TTv2 presets* are ``ChoppedTransferCompound`` with chopper probability 0 (see
``conf/algo/ttv2_reram_sb.yaml``); ``algo=ttv2`` is the ``BufferedTransferCompound`` class itself.
"""

from __future__ import annotations

import torch

from analogtrain.algorithms.base import register_algorithm
from analogtrain.algorithms.schema import TTv2Config
from analogtrain import ops
from analogtrain.algorithms.transfer import TransferAlgorithm, TransferRule, _range

__all__ = ["TTv2Rule", "TTv2", "buffer_step"]


def buffer_step(h: torch.Tensor, thr: float, bl: int, momentum: float, forget: bool):
    """Threshold a buffer: returns (n, h_new). ``n = clamp(trunc(h/thr), ±bl)``; where n ≠ 0 the buffer
    keeps ``momentum·h`` (forget) or loses ``(1 − momentum)·n·thr`` (no forget). Shared by TTv2 (thr in
    weight units) when several slices are transferred at once; single slices go through the fused op
    ``ops.buffered_transfer`` (same arithmetic, the kernel engineer's twin ``buffer_threshold_ref``)."""
    n = torch.clamp(torch.trunc(h / thr), -bl, bl)
    if forget:
        h = torch.where(n != 0, momentum * h, h)
    else:
        h = h - (1.0 - momentum) * n * thr
    return n, h


class TTv2Rule(TransferRule):
    """Tile rule of TTv2 (see the module docstring). Extra buffer: ``H`` (O, I) float32, weight units."""

    def __init__(self, cfg, *args, **kwargs):
        super().__init__(cfg, *args, **kwargs)
        self.register_buffer("H", torch.zeros(self.out_size, self.in_size, dtype=torch.float32))

    def threshold(self) -> float:
        return float(self.cfg.thres_scale) * self.C.dw

    @torch.no_grad()
    def _transfer(self, lr: float) -> None:
        k = self.next_slices(int(self.cfg.n_reads_per_transfer))
        y = self.read_slices(k)
        thr = self.threshold()
        if len(k) == 1:  # the fused op (compiled where available)
            self.buffered_transfer(int(k[0]), y[0], chop=None, lr_scale=abs(self.transfer_lr(lr)), thr=thr)
            return
        # several slices per transfer: same arithmetic, one batched write (one sample per slice)
        h = self._slice(self.H, k) + y * abs(self.transfer_lr(lr))
        n, h = buffer_step(h, thr, int(self.cfg.transfer_update.desired_bl), float(self.cfg.momentum),
                           bool(self.cfg.forget_buffer))
        self._set_slice(self.H, k, h)
        if bool((n != 0).any()):
            self.write_slices(k, -n, float(self.cfg.step) * self.C.dw)

    # --- batched schedule (TransferRule._update_batched) for one read per transfer ------------------
    def batched_ok(self) -> bool:
        from analogtrain.ops.reference_chopped import snapshot_reads_supported

        return int(self.cfg.n_reads_per_transfer) == 1 and snapshot_reads_supported(self.cfg.transfer_forward)

    def _transfers_batched(self, lr, v, k, plan):
        if self.transfer_spec.mode == ops.MODE_EXPECTED:
            return super()._transfers_batched(lr, v, k, plan)
        R_ = v.shape[0]
        self._seq_transfer(k, v, chop=None, lr_scales=[abs(self.transfer_lr(lr))] * R_, writes=[True] * R_,
                           thr=self.threshold())
        self.slice_idx.fill_((int(k[-1]) + 1) % self.n_slices)

    def _transfer_read(self, lr: float, v: torch.Tensor, plan) -> None:
        k = self.next_slices(1)
        self.buffered_transfer(int(k[0]), v[0], chop=None, lr_scale=abs(self.transfer_lr(lr)), thr=self.threshold())

    def metrics(self) -> dict[str, float]:
        out = super().metrics()
        out["buffer_fill"] = float(self.H.abs().mean()) / self.threshold()  # mean |H| / threshold
        return out


@register_algorithm("ttv2")
class TTv2(TransferAlgorithm):
    """``algo=ttv2``: buffered transfer (digital H with weight-unit threshold thres_scale·dw_C)."""

    config_cls = TTv2Config
    rule_cls = TTv2Rule

    @classmethod
    def check(cls, a) -> None:
        _range("algo.transfer_every", a.transfer_every, lo=0.0)
        _range("algo.thres_scale", a.thres_scale, lo=0.0, lo_open=True)
        _range("algo.step", a.step, lo=0.0, lo_open=True)
        _range("algo.momentum", a.momentum, lo=0.0, hi=1.0, hi_open=True)
        from analogtrain.config.errors import ConfigError

        if a.with_reset_prob != 0:
            raise ConfigError("algo.with_reset_prob", "must be 0 for ttv2 (aihwkit forces it)")
        if a.random_selection:
            raise ConfigError("algo.random_selection", "must be false for ttv2 (aihwkit forces it)")
