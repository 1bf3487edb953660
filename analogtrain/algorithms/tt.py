"""``algo=tt``: Tiki-Taka v1 (Gokmen & Haensch 2020), aihwkit ``TransferCompound`` (semantics §3.2).

A receives the gradient pulses with the fast lr; every ``transfer_every`` vector updates the next
``n_reads_per_transfer`` columns (rows) of A are read through the transfer periphery and written onto C
by a *stochastic pulsed* update with ``algo.transfer_update`` (default BL 31, UBLM, UM)::

    y = A e_j + read noise (ADC)                 (aihwkit reads with alpha = −1 and writes d = −y)
    C[:, j] += lr_t · y    stochastically: E[ΔC] ≈ lr_t·A[:, j], at most desired_bl pulses per element

so an element of C moves by at most ``desired_bl·dw_C`` per transfer. W = gamma·A + C.
"""

from __future__ import annotations

import torch

from analogtrain.algorithms.base import register_algorithm
from analogtrain.algorithms.schema import TTConfig
from analogtrain.algorithms.transfer import TransferAlgorithm, TransferRule, _range
from analogtrain.ops import rng
from analogtrain.ops.rng import Stream

__all__ = ["TTRule", "TikiTaka"]


class TTRule(TransferRule):
    """Tile rule of Tiki-Taka v1 (see the module docstring)."""

    @torch.no_grad()
    def _transfer(self, lr: float) -> None:
        k = self.next_slices(int(self.cfg.n_reads_per_transfer), bool(self.cfg.random_selection))
        y = self.read_slices(k)  # (n, L)
        self.write_slices(k, -y, self.transfer_lr(lr))  # C_slice −= lr_t·(−y)
        p = float(self.cfg.with_reset_prob)
        if p > 0:
            self._reset(k, p)

    def _reset(self, k: torch.Tensor, p: float) -> None:
        """aihwkit ``with_reset_prob`` (``TransferRPUDevice::readAndUpdate``: "with_reset_prob is COL-wise
        prob (elem device prob is 1)"): one draw per read column; if any is below ``p``, every device of
        the read columns ``k`` of A is reset (``resetCols`` with device probability 1), each to the device
        reset ``clip(b_reset + reset_std·ξ)`` (``SampledDevice.reset_values``, §2.3) shifted by A's
        resting value when A is zero-shifted by a reference (its symmetry point; else 0). Columns only
        (``validate_transfer_common``). With several columns per transfer aihwkit draws and resets between
        the columns' reads (a later read can see the reset); here every read comes first. The other
        devices keep their state (the persistent weight when A has write noise, which aihwkit's reset
        refuses). Draws: Philox at the transfer count, a = the column's position in ``k``."""
        t = int(self.transfers)
        A = self.A
        if p < 1.0:
            u = rng.uniform(int(self.seed_misc), t >> 32, Stream.MISC, torch.arange(len(k), dtype=torch.int64),
                            t & 0xFFFFFFFF, 1)
            if not bool((u < p).any()):
                return
        idx = torch.arange(A.w.numel(), dtype=torch.int64).reshape(A.w.shape)
        flat = self._slice(idx, k).reshape(-1)  # the devices of the read columns
        dev = A.sampled.reset_values(flat, int(self.seed_misc), t >> 32, t & 0xFFFFFFFF)
        target = self.a_rest().reshape(-1).cpu()[flat] + dev
        W = A.device_state().clone()
        W.view(-1)[flat.to(W.device)] = target.to(W.device, W.dtype)
        A.set_weights(W)


@register_algorithm("tt")
class TikiTaka(TransferAlgorithm):
    """``algo=tt``: Tiki-Taka v1 (two arrays, stochastic pulsed transfer of A onto C)."""

    config_cls = TTConfig
    rule_cls = TTRule

    @classmethod
    def check(cls, a) -> None:
        _range("algo.transfer_every", a.transfer_every, lo=0.0)
