"""``algo=cttv2``: chopped TTv2 (Rasch et al. 2023), aihwkit ``ChoppedTransferCompound`` (semantics §3.4).

Per vector update (sample), CPU reference semantics:

1. Pulsed update of A with lr_A; every coincidence's sign is multiplied by ``c_in[j]·c_out[i]``, so A
   stores the *chopped* gradient. With ``auto_scale`` the EMAs m_x, m_d of max|x|, max|d| are updated
   first (τ = (1 − auto_momentum)/B per sample) and ``lr_A = fast_lr·desired_BL·dw_A/(m_x·m_d)``.
2. When the sample counter hits a multiple of ``every`` (vector units; ``units_in_mbatch`` False by
   default; ``transfer_every < 0``: every = round(n_states(A)/n_columns·|transfer_every|)): column
   j = next column (sequential)::

       v   = A e_j + read noise                        stored (chopped) A, minus R when zero-shifted
       H_j = (no_buffer ? 0 : H_j) + c_in[j]·c_out·v·lr_scale      dimensionless, threshold 1
       lr_scale = |lr_t|/bg,  bg = buffer_granularity·dw_A·(auto_granularity/(n_columns·|transfer_every|))
       n   = clamp(trunc(H_j), ±BL_t);  forget: H_j ← momentum·H_j where n ≠ 0, else H_j −= (1−momentum)·n
       C[:, j] += n·step·dw_C  (one pulse per n ≠ 0 with the default transfer_update)
       in-chopper of column j flips: random with probability in_chop_prob; regular when
           (sweeps mod N) + 1 == N,  N = max(ceil(1/in_chop_prob), 2)
       after the last column: each out-chopper flips with probability out_chop_prob; sweeps += 1

3. W = C, or with gamma > 0: W = gamma·(c_out ⊗ c_in)⊙(A − R) + C (de-chopped A).
"""

from __future__ import annotations

import math

import torch

from analogtrain.algorithms.base import register_algorithm
from analogtrain.algorithms.schema import ChoppedTTv2Config
from analogtrain.algorithms.transfer import TransferAlgorithm, TransferRule, _range
from analogtrain.config.errors import ConfigError
from analogtrain import ops
from analogtrain.ops import rng
from analogtrain.ops.rng import Stream

__all__ = ["ChoppedRule", "ChoppedTTv2", "chopper_period", "buffer_granularity"]

_MASK32 = 0xFFFFFFFF


def chopper_period(p: float) -> int:
    """Regular-chopper half-period in sweeps (CPU): N = max(ceil(1/p), 2); 0 when p <= 0 (never)."""
    return max(int(math.ceil(1.0 / p)), 2) if p > 0 else 0


def buffer_granularity(buffer_gran: float, auto_gran: float, dw_a: float, n_slices: int,
                       transfer_every: float) -> float:
    """bg = buffer_granularity·dw_A, ×auto_granularity/(n_slices·|transfer_every|) if auto_granularity > 0
    (``buffer_granularity`` <= 0 counts as 1), aihwkit §3.4."""
    bg = (buffer_gran if buffer_gran > 0 else 1.0) * dw_a
    if auto_gran > 0:
        bg *= auto_gran / (n_slices * abs(transfer_every))
    return bg


class ChoppedRule(TransferRule):
    """Tile rule of c-TTv2 (module docstring). Extra buffers: ``H`` (O, I) dimensionless buffer,
    ``c_in`` (n_slices,) and ``c_out`` (L,) chopper signs ±1, ``m_x``/``m_d`` auto-scale EMAs,
    ``sweeps`` (full sweeps over the slices, aihwkit's transfer counter), ``flips`` (chopper flips),
    ``lr_a`` (last fast lr)."""

    def __init__(self, cfg, *args, **kwargs):
        super().__init__(cfg, *args, **kwargs)
        self.register_buffer("H", torch.zeros(self.out_size, self.in_size, dtype=torch.float32))
        self.register_buffer("c_in", torch.ones(self.n_slices, dtype=torch.float32))
        self.register_buffer("c_out", torch.ones(self.vec_len, dtype=torch.float32))
        self.register_buffer("m_x", torch.zeros((), dtype=torch.float64))
        self.register_buffer("m_d", torch.zeros((), dtype=torch.float64))
        self.register_buffer("sweeps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("flips", torch.zeros((), dtype=torch.int64))
        self.register_buffer("lr_a", torch.zeros((), dtype=torch.float64))

    # --- schedule and learning rates ---------------------------------------------------------------
    def every(self, batch: int) -> int:
        te = float(self.cfg.transfer_every)
        if te < 0:  # "auto": |te| reads per state of A over a whole sweep
            n_states = (self.A.w_max - self.A.w_min) / self.A.dw
            return max(int(round(n_states / self.n_slices * abs(te))), 1)
        return super().every(batch)

    def fast_lr(self, lr: float) -> float:
        a = self.cfg
        if a.fast_lr <= 0:
            return lr
        base = float(a.fast_lr)
        if a.auto_scale and float(self.m_x) > 0 and float(self.m_d) > 0:
            base = base * self.spec.desired_bl * self.A.dw / (float(self.m_x) * float(self.m_d))
        return base * lr if a.scale_fast_lr else base

    def buffer_scale(self, lr: float) -> float:
        """lr_scale: H increment per unit of read signal (dimensionless H, threshold 1)."""
        a = self.cfg
        bg = buffer_granularity(float(a.buffer_granularity), float(a.auto_granularity), self.A.dw,
                                self.n_slices, float(a.transfer_every))
        lr_t = abs(self.transfer_lr(lr))
        if a.correct_gradient_magnitudes:
            bg *= self.C.dw / self.A.dw
            return lr_t / self.fast_lr(lr) / bg
        return lr_t / bg

    def chop_args(self):
        return (self.c_in, self.c_out) if self.columns else (self.c_out, self.c_in)

    def chop_matrix(self) -> torch.Tensor:
        """(O, I) chopper sign of every element, c_out[i]·c_in[j] (for columns)."""
        ci, co = self.chop_args()
        return co[:, None] * ci[None, :]

    def effective_weight(self) -> torch.Tensor:
        if self.gamma == 0.0:
            return self.C.w.detach()
        return (self.gamma * self.chop_matrix() * self.a_visible() + self.C.w).detach()

    @staticmethod
    def _ema(m: torch.Tensor, new: float, tau: float) -> None:
        if float(m) <= 0:
            m.fill_(new)
        elif new > 0:
            m.mul_(1.0 - tau).add_(tau * new)

    def _update_fast(self, x: torch.Tensor, d: torch.Tensor, lr: float, batch: int) -> None:
        a = self.cfg
        ci, co = self.chop_args()
        if not (a.auto_scale and a.fast_lr > 0):
            lr_a = self.fast_lr(lr)
            self.lr_a.fill_(lr_a)
            self.record_a(self.A.update(x, d, lr_a, self.spec, chop_in=ci, chop_out=co), x.shape[0])
            return
        tau = (1.0 - float(a.auto_momentum)) / batch
        xm, dm = x.abs().amax(dim=1).tolist(), d.abs().amax(dim=1).tolist()
        for b in range(x.shape[0]):  # the EMAs move before each sample's pulses (CPU semantics)
            self._ema(self.m_x, xm[b], tau)
            self._ema(self.m_d, dm[b], tau)
            lr_a = self.fast_lr(lr)
            self.lr_a.fill_(lr_a)
            self.record_a(self.A.update(x[b:b + 1], d[b:b + 1], lr_a, self.spec, chop_in=ci, chop_out=co), 1)

    # --- transfer ----------------------------------------------------------------------------------
    def read_sign(self, j: int) -> torch.Tensor:
        """(L,) chopper sign of every entry of slice j at read time, c_in[j]·c_out."""
        return self.c_in[j] * self.c_out

    def reference_corrected(self, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """What is accumulated before the chopper sign: the read itself (AGAD: minus its past mean P)."""
        return v

    def after_read(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Hook after the buffer update of slice k (AGAD: running mean)."""

    def write_allowed(self) -> bool:
        return True

    def accumulation_scale(self, lr: float) -> float:
        return self.buffer_scale(lr)

    def buffer_cap(self) -> float:
        return 0.0

    @torch.no_grad()
    def _transfer(self, lr: float) -> None:
        k = self.next_slices(1)
        j = int(k[0])
        v = self.read_slices(k)  # (1, L), read *before* the column's chopper may flip
        signal = self.reference_corrected(k, v)
        self.buffered_transfer(j, signal[0], chop=self.read_sign(j), lr_scale=self.accumulation_scale(lr),
                               thr=1.0, write=self.write_allowed(), cap=self.buffer_cap())
        self.after_read(k, v)
        self._flip_in(j)
        if j == self.n_slices - 1:
            self._flip_out()
            self.sweeps += 1

    def _flip_in(self, j: int) -> bool:
        p = float(self.cfg.in_chop_prob)
        if p <= 0:
            return False
        if self.cfg.in_chop_random:
            ev = int(self.reads)
            # one scalar draw per read: Python-int Philox (ops.uniform_scalar), same number as rng.uniform
            flip = ops.uniform_scalar(int(self.seed_misc), ev >> 32, Stream.CHOPPER, j, ev & _MASK32, 0) < p
        else:
            n = chopper_period(p)
            flip = (int(self.sweeps) % n) + 1 == n
        if flip:
            self.c_in[j] = -self.c_in[j]
            self.flips += 1
            self.on_flip(j)
        return flip

    def on_flip(self, j: int) -> None:
        """Hook: the in-chopper of slice j just flipped (AGAD marks it)."""

    def _flip_out(self) -> None:
        p = float(self.cfg.out_chop_prob)
        if p <= 0:
            return
        sw = int(self.sweeps)
        rows = torch.arange(self.vec_len)
        u = rng.uniform(int(self.seed_misc), sw >> 32, Stream.CHOPPER, rows, sw & _MASK32, 1)
        hit = u < p
        self.c_out[hit] = -self.c_out[hit]
        self.flips += int(hit.sum())

    def metrics(self) -> dict[str, float]:
        out = super().metrics()
        out.update({
            "buffer_fill": float(self.H.abs().mean()),  # threshold is 1 (dimensionless H)
            "chopper_flips": float(self.flips),
            "lr_a": float(self.lr_a),
            "m_x": float(self.m_x),
            "m_d": float(self.m_d),
        })
        return out


def check_chopped(a) -> None:
    """Range checks of the chopped family (c-TTv2 and AGAD)."""
    _range("algo.in_chop_prob", a.in_chop_prob, lo=0.0, hi=1.0)
    _range("algo.out_chop_prob", a.out_chop_prob, lo=0.0, hi=1.0)
    _range("algo.auto_granularity", a.auto_granularity, lo=0.0)
    _range("algo.step", a.step, lo=0.0, lo_open=True)
    _range("algo.momentum", a.momentum, lo=0.0, hi=1.0, hi_open=True)
    _range("algo.auto_momentum", a.auto_momentum, lo=0.0, hi=1.0, hi_open=True)
    if a.n_reads_per_transfer != 1:
        raise ConfigError("algo.n_reads_per_transfer", f"{a.n_reads_per_transfer}: must be 1 for the chopped "
                          "family (one column per read, aihwkit restriction)")
    if a.random_selection:
        raise ConfigError("algo.random_selection", "must be false for the chopped family")
    if a.with_reset_prob != 0:
        raise ConfigError("algo.with_reset_prob", "must be 0 for the chopped family")
    if a.transfer_every < 0 and a.units_in_mbatch:
        raise ConfigError("algo.transfer_every", "auto (< 0) needs algo.units_in_mbatch=false")
    if a.transfer_every == 0 and a.auto_granularity > 0:
        raise ConfigError("algo.auto_granularity", "needs algo.transfer_every != 0")


@register_algorithm("cttv2")
class ChoppedTTv2(TransferAlgorithm):
    """``algo=cttv2``: chopped TTv2 (c-TTv2); with in_chop_prob = 0 it is aihwkit's "TTv2" preset."""

    config_cls = ChoppedTTv2Config
    rule_cls = ChoppedRule

    @classmethod
    def check(cls, a) -> None:
        check_chopped(a)
