"""``algo=agad``: AGAD (Rasch et al. 2023), aihwkit ``DynamicTransferCompound`` (semantics §3.5).

As c-TTv2, but the reference of the read is digital and dynamic. Per read of column j (CPU)::

    N = max(ceil(1/in_chop_prob), 2)        reads of a column per chopper half-period (regular mode)
    β = min(tail_weightening / N, 1)        EMA weight of the running mean
    s = (sweeps mod N) + 1                  position inside the period
    v = A e_j + read noise                  raw read of the stored (chopped) A, NOT sign-corrected
    if column j's chopper switched at its previous read:  P[:,j] ← M[:,j]      (M is not reset)
    Δ = (v − P[:,j]) · c_in[j]·c_out        H += Δ·lr_scale (/min(s, 1/dw_A) with the experimental flag)
    threshold / forget as c-TTv2; without forget and buffer_cap > 0: |H| <= buffer_cap·BL_t
    M[:,j] ← (1 − β)·M[:,j] + β·v
    write to C only if sweeps > N (warm-up: H is still thresholded, only the C write is suppressed)
    chopper of column j switches (s == N regular, U < p random); mark it switched

So P is the tail-weighted mean of the reads of the previous half-period and the transferred signal is
the signed deviation of the current reads from it: a constant offset of A (reference error, symmetry
point) cancels without any reference array.
"""

from __future__ import annotations

import torch

from analogtrain import ops
from analogtrain.algorithms.base import register_algorithm
from analogtrain.algorithms.cttv2 import ChoppedRule, check_chopped, chopper_period
from analogtrain.algorithms.schema import AGADConfig
from analogtrain.algorithms.transfer import TransferAlgorithm, _range
from analogtrain.config.errors import ConfigError

__all__ = ["AGADRule", "AGAD"]


class AGADRule(ChoppedRule):
    """Tile rule of AGAD (module docstring). Extra buffers: ``M`` running mean, ``P`` past mean (O, I),
    ``switched`` (n_slices,) bool."""

    def __init__(self, cfg, *args, **kwargs):
        super().__init__(cfg, *args, **kwargs)
        self.register_buffer("M", torch.zeros(self.out_size, self.in_size, dtype=torch.float32))
        self.register_buffer("P", torch.zeros(self.out_size, self.in_size, dtype=torch.float32))
        self.register_buffer("switched", torch.zeros(self.n_slices, dtype=torch.bool))
        self.period = chopper_period(float(cfg.in_chop_prob))
        self.beta = min(float(cfg.tail_weightening) / self.period, 1.0)

    def reference_corrected(self, k, v):
        j = int(k[0])
        if bool(self.switched[j]):  # first read after a switch: the past mean becomes the reference
            self._set_slice(self.P, k, self._slice(self.M, k))
            self.switched[j] = False
        return v - self._slice(self.P, k)

    def accumulation_scale(self, lr: float, sweeps: int | None = None, lr_a: float | None = None) -> float:
        scale = self.buffer_scale(lr, lr_a)
        if self.cfg.experimental_correct_accumulation:
            s = (int(self.sweeps) if sweeps is None else sweeps) % self.period + 1
            scale /= min(s, 1.0 / self.A.dw)
        return scale

    def buffer_cap(self) -> float:
        return 0.0 if self.cfg.forget_buffer else float(self.cfg.buffer_cap)

    def after_read(self, k, v):
        self._set_slice(self.M, k, (1.0 - self.beta) * self._slice(self.M, k) + self.beta * v)

    def write_allowed(self, sweeps: int | None = None) -> bool:
        return (int(self.sweeps) if sweeps is None else sweeps) > self.period  # warm-up of N sweeps

    def batch_signals(self, k, v, flips):
        """Vectorised ``reference_corrected`` + ``after_read`` + ``on_flip`` of the R reads (k (R,) slices,
        v (R, L) reads, flips (R,) bool), in rounds of n_slices consecutive reads. Slices are read in
        sequence, so every round visits the same cyclic order k[0], k[0] + 1, ... (the last one maybe a
        prefix of it) and each slice once: M, P and the switched flags are gathered into that order once,
        and a round is then a few whole-block operations (``ops.agad_signals``: compiled, read by read;
        ``_rounds``: torch). Per round, as the one-by-one path per read: a slice switched at its previous
        read takes P ← M, the signal is v − P, M ← (1 − β)·M + β·v (the same float32 operations), then the
        slices whose chopper flips are marked switched for the next round."""
        R, n = v.shape[0], self.n_slices
        dev = self.switched.device
        order = k[:min(R, n)].to(dev)  # the slices of a round, in read order
        Psm, Msm = self._sm(self.P), self._sm(self.M)
        Pr, Mr, sr = Psm[order], Msm[order], self.switched[order]  # (copies, in round order)
        out = ops.agad_signals(v, Mr, Pr, sr, flips, self.beta)  # the compiled loop, read by read
        if out is None:
            out = self._rounds(v, Mr, Pr, sr, flips)
        Psm[order] = Pr
        Msm[order] = Mr
        self.switched[order] = sr
        return out

    def _rounds(self, v, Mr, Pr, sr, flips):
        """The torch twin of ``ops.agad_signals``: the rounds as whole-block operations (see
        ``batch_signals``); updates Mr, Pr, sr in place, returns the signals (R, L)."""
        R, n = v.shape[0], self.n_slices
        dev = sr.device
        nr = (R + n - 1) // n
        fl = torch.zeros(nr * n, dtype=torch.bool, device=dev)
        fl[:R] = torch.as_tensor(flips, dtype=torch.bool)
        fl = fl.view(nr, n)
        # whether a round starts with switched slices: the flags before the batch, then the last round's flips
        switched_at = [bool(sr.any())] + fl[:-1].any(dim=1).tolist()
        bv = self.beta * v  # β·v of every read
        keep = 1.0 - self.beta
        out = torch.empty_like(v)
        for t in range(nr):
            r0 = t * n
            r1 = min(r0 + n, R)
            ln = r1 - r0
            if switched_at[t]:
                Pr[:ln] = torch.where(sr[:ln, None], Mr[:ln], Pr[:ln])
            torch.sub(v[r0:r1], Pr[:ln], out=out[r0:r1])
            torch.add(keep * Mr[:ln], bv[r0:r1], out=Mr[:ln])
            sr[:ln] = fl[t, :ln]
        return out

    def on_flip(self, j: int) -> None:
        self.switched[j] = True


@register_algorithm("agad")
class AGAD(TransferAlgorithm):
    """``algo=agad``: dynamic-reference transfer (no reference array needed)."""

    config_cls = AGADConfig
    rule_cls = AGADRule

    @classmethod
    def check(cls, a) -> None:
        check_chopped(a)
        if a.in_chop_prob <= 0:
            raise ConfigError("algo.in_chop_prob", f"{a.in_chop_prob}: agad needs 0 < in_chop_prob <= 1")
        if not 0 < a.auto_momentum < 1:
            raise ConfigError("algo.auto_momentum", f"{a.auto_momentum}: agad needs 0 < auto_momentum < 1")
        _range("algo.tail_weightening", a.tail_weightening, lo=0.0, lo_open=True)
        _range("algo.buffer_cap", a.buffer_cap, lo=0.0)
