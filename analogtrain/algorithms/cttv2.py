"""``algo=cttv2``: chopped TTv2 (Rasch et al. 2023), aihwkit ``ChoppedTransferCompound`` (semantics §3.4).

Per vector update (sample), CPU reference semantics:

1. Pulsed update of A with lr_A; every coincidence's sign is multiplied by ``c_in[j]·c_out[i]``, so A
   stores the *chopped* gradient. With ``auto_scale`` the EMAs m_x, m_d of max|x|, max|d| are updated
   first (τ = (1 − auto_momentum)/B per sample) and ``lr_A = fast_lr·desired_BL·dw_A/(m_x·m_d)`` (not
   divided while m_x or m_d is still 0).
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

Execution: this is the CPU *schedule* (C written right after each read), but it runs batched
(``TransferRule._update_batched``): the chopper sequence of a batch is planned first (flips are draws
indexed by read event / sweep, or the regular pattern — never by A), then one op applies all A updates
with their per-call choppers and snapshots each read column, one pass reads the snapshots, and one op
runs the buffer steps and C writes in read order. RNG counters (documented in ``algorithms/transfer.py``)
are those of the one-by-one loop, so both give bit-identical A, C, H, choppers and counters
(``tests/test_chopped_op.py``). In the aggregated update mode the batched op carries A's moments across
the batch and finishes an element only when a read observes it (``ops.chopped_update_snapshots``): one
normal per element per read instead of per sample, the same statistics, other random numbers than the
loop (``tests/test_chopped_carry.py``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from analogtrain.algorithms.base import register_algorithm
from analogtrain.algorithms.schema import ChoppedTTv2Config
from analogtrain.algorithms.transfer import TransferAlgorithm, TransferRule, _range, round_half_up
from analogtrain.config.errors import ConfigError
from analogtrain import ops
from analogtrain.ops import rng
from analogtrain.ops.rng import Stream

__all__ = ["ChoppedRule", "ChoppedTTv2", "ReadPlan", "chopper_period", "buffer_granularity"]

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


class ReadPlan:
    """The planned transfer reads of one batch (``ChoppedRule._plan_choppers``), per read r:
    ``flips[r]`` whether the slice's in-chopper flips after it (bool array (R,)), ``hits[r]`` the (L,)
    bool out-chopper flips after it (a read of the last slice, with out_chop_prob > 0) or None,
    ``sweeps[r]`` the sweep counter at it (int64 array (R,)), ``signs`` (R, L) its chopper sign
    c_in[j]·c_out, ``lr_a[r]`` A's fast lr at it (float64 array (R,), or R Nones when not planned).
    ``plan[r]`` is the tuple (flip, hit, sweeps, sign (L,), lr_a) of one read (the one-by-one path)."""

    __slots__ = ("flips", "hits", "sweeps", "signs", "lr_a")

    def __init__(self, flips: np.ndarray, hits: list, sweeps: np.ndarray, signs: torch.Tensor, lr_a):
        self.flips, self.hits, self.sweeps, self.signs, self.lr_a = flips, hits, sweeps, signs, lr_a

    def __getitem__(self, r: int) -> tuple:
        return self.flips[r], self.hits[r], self.sweeps[r], self.signs[r], self.lr_a[r]


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
            return max(round_half_up(n_states / self.n_slices * abs(te)), 1)
        return super().every(batch)

    def fast_lr(self, lr: float, m_x: float | None = None, m_d: float | None = None) -> float:
        """Pulse-count lr of A (§3.4); ``m_x``/``m_d``: the auto-scale EMAs (default: the buffers)."""
        a = self.cfg
        if a.fast_lr <= 0:
            return lr
        m_x = float(self.m_x) if m_x is None else m_x
        m_d = float(self.m_d) if m_d is None else m_d
        base = float(a.fast_lr)
        if a.auto_scale:  # (while either EMA is still 0 — no sample with a non-zero max yet — no division)
            base = self._auto_numerator()
            if m_x > 0 and m_d > 0:
                base = base / (m_x * m_d)
        return base * lr if a.scale_fast_lr else base

    def _auto_numerator(self) -> float:
        """The auto-scaled fast lr's numerator (fast_lr·BL)·dw_A: lr_A = numerator/(m_x·m_d) (float64, this
        operation order; ``_plan_calls`` hands it to ``ops.auto_scale_lrs``)."""
        return float(self.cfg.fast_lr) * self.spec.desired_bl * self.A.dw

    def buffer_scale(self, lr: float, lr_a: float | None = None) -> float:
        """lr_scale: H increment per unit of read signal (dimensionless H, threshold 1). ``lr_a``: A's
        fast lr at the read (default: from the EMA buffers now), used with ``correct_gradient_magnitudes``."""
        a = self.cfg
        bg = buffer_granularity(float(a.buffer_granularity), float(a.auto_granularity), self.A.dw,
                                self.n_slices, float(a.transfer_every))
        lr_t = abs(self.transfer_lr(lr))
        if a.correct_gradient_magnitudes:
            bg *= self.C.dw / self.A.dw
            return lr_t / (self.fast_lr(lr) if lr_a is None else lr_a) / bg
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
        """EMA of max|x| / max|d| (m float64 buffer); ``ops.auto_scale_lrs`` does the same for a batch."""
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

    def write_allowed(self, sweeps: int | None = None) -> bool:
        """Whether this read may write C (``sweeps``: the sweep of the read, default the buffer)."""
        return True

    def accumulation_scale(self, lr: float, sweeps: int | None = None, lr_a: float | None = None) -> float:
        """H increment per unit of signal of a read during sweep ``sweeps`` (default: the buffer) with A's
        fast lr ``lr_a`` at the read (default: the EMA buffers now)."""
        return self.buffer_scale(lr, lr_a)

    def planned_scales(self, lr: float, plan: ReadPlan) -> tuple[np.ndarray, np.ndarray]:
        """(lr_scales float64 (R,), writes bool (R,)) of the planned reads: ``accumulation_scale`` /
        ``write_allowed`` of each read's sweep (and fast lr, which only ``correct_gradient_magnitudes``
        uses), computed once per run of equal values (a conv layer reads thousands of times per batch,
        a sweep per n_slices reads) and repeated over the run. The base hooks ignore the sweep (c-TTv2:
        one run, or one per fast lr); a subclass that overrides either (AGAD) gets a run per sweep."""
        cgm = bool(self.cfg.correct_gradient_magnitudes)
        R = len(plan.sweeps)
        if R == 0:
            return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=bool)
        sw = np.asarray(plan.sweeps, dtype=np.int64)
        cls = type(self)
        base_hooks = ((cls.accumulation_scale, cls.write_allowed) == _SWEEP_FREE_HOOKS
                      and not {"accumulation_scale", "write_allowed"} & self.__dict__.keys())
        change = np.zeros(R - 1, dtype=bool) if base_hooks else sw[1:] != sw[:-1]
        if cgm:
            la = np.asarray(plan.lr_a, dtype=np.float64)
            change |= la[1:] != la[:-1]  # (a NaN starts a run at every read, as an unequal key would)
        first = np.concatenate(([0], np.flatnonzero(change) + 1))  # the first read of each run
        counts = np.diff(np.append(first, R))
        firsts = first.tolist()
        scales = [self.accumulation_scale(lr, int(sw[f]), float(la[f]) if cgm else None) for f in firsts]
        writes = [self.write_allowed(int(sw[f])) for f in firsts]
        return (np.repeat(np.asarray(scales, dtype=np.float64), counts),
                np.repeat(np.asarray(writes, dtype=bool), counts))

    def buffer_cap(self) -> float:
        return 0.0

    @torch.no_grad()
    def _transfer(self, lr: float) -> None:
        k = self.next_slices(1)
        v = self.read_slices(k)  # (1, L), read *before* the column's chopper may flip
        self._transfer_slice(lr, k, v)

    def _transfer_slice(self, lr: float, k: torch.Tensor, v: torch.Tensor, plan=None) -> None:
        """Steps b–f of one read: buffer, threshold, C write, chopper flips. k (1,), v (1, L) the read;
        ``plan`` = the read's entry of ``_plan_choppers`` (batched path): its in-flip, out-flip mask and
        A's fast lr at the read, decided in advance."""
        j = int(k[0])
        signal = self.reference_corrected(k, v)
        scale = self.accumulation_scale(lr, lr_a=None if plan is None else plan[4])
        self.buffered_transfer(j, signal[0], chop=self.read_sign(j), lr_scale=scale, thr=1.0,
                               write=self.write_allowed(), cap=self.buffer_cap())
        self.after_read(k, v)
        self._flip_in(j, None if plan is None else plan[0])
        if j == self.n_slices - 1:
            self._flip_out(None if plan is None else plan[1])
            self.sweeps += 1

    # --- batched schedule (TransferRule._update_batched): same numbers as the loop -------------------
    def batched_ok(self) -> bool:
        from analogtrain.ops.reference_chopped import snapshot_reads_supported

        return snapshot_reads_supported(self.cfg.transfer_forward)

    def _plan_calls(self, x, d, lr, chunks):
        """One call per chunk, or with auto_scale one call per sample with the EMAs moved before it (as
        ``_update_fast``); the EMA buffers and ``lr_a`` end where the per-sample path leaves them.
        The EMAs and lrs of the samples come from ``ops.auto_scale_lrs`` (``_ema`` / ``fast_lr`` in one
        loop, the same float64 operations in the same order; compiled where available: a conv layer plans
        one call per image patch, tens of thousands per batch)."""
        a = self.cfg
        if not (a.auto_scale and a.fast_lr > 0):
            starts, lrs, xfer = super()._plan_calls(x, d, lr, chunks)  # one fast lr for every chunk
            self.lr_a.fill_(lrs[0])
            return starts, lrs, xfer
        tau = (1.0 - float(a.auto_momentum)) / x.shape[0]
        num = self._auto_numerator()  # (also the lr while an EMA is 0: no division, as fast_lr)
        lrs, mx, md = ops.auto_scale_lrs(x.abs().amax(dim=1), d.abs().amax(dim=1), float(self.m_x),
                                         float(self.m_d), tau, num, num, lr, bool(a.scale_fast_lr))
        # the chunks cover the batch in order: one call per sample b = 0 .. B − 1, a read after the last
        # sample of each transferring chunk
        starts = np.arange(x.shape[0], dtype=np.int64)
        xfer = np.zeros(x.shape[0], dtype=bool)
        xfer[np.asarray(chunks.ends[:chunks.n_xfer], dtype=np.int64) - 1] = True
        self.m_x.fill_(mx)
        self.m_d.fill_(md)
        self.lr_a.fill_(lrs[-1])
        return starts, lrs, xfer

    def _plan_choppers(self, xfer, slices, lrs=None):
        """Chopper signs of every planned call and the flip decisions of every read: the flips are draws
        indexed by read event / sweep (or the regular pattern), never by A's values, so the whole
        sequence of the batch is known before the updates. Vectorised (a conv layer plans tens of
        thousands of reads per batch): the in-flip draws of all reads in one ``ops.uniform_counters``,
        the in-chopper rows of the calls from a running count of each entry's flips (``_flipped_rows``),
        the rare out-chopper flips by negating the tail rows of each flipped entry. ``lrs``: the fast lr
        of each planned call. Returns (chop_in (C, I), chop_out (C, O), ``ReadPlan`` of the reads)."""
        C, R = len(xfer), len(slices)
        js = np.asarray(slices, dtype=np.int64)
        call_of = np.flatnonzero(np.asarray(xfer, dtype=bool))  # the call after which read r happens
        # sweeps counts the reads of the last slice, after their flip decisions: the sweeps at read r are
        # the sweeps before the batch plus the last-slice reads before r
        is_last = js == self.n_slices - 1
        sweeps_at = int(self.sweeps) + np.cumsum(is_last, dtype=np.int64) - is_last
        reads0 = int(self.reads)
        events = np.arange(reads0 + 1, reads0 + R + 1, dtype=np.int64)  # the reads count after each read
        flips = self._in_flip_decisions(slices, events, sweeps_at)
        hits = [None] * R
        out_reads = np.flatnonzero(is_last).tolist() if float(self.cfg.out_chop_prob) > 0 else []
        for r in out_reads:
            hits[r] = self._flip_out_decision(int(sweeps_at[r]))
        # row c: the choppers during call c; row C: after the batch. A flip at the read after call c
        # negates its entries from row c + 1 on (×(−1): exact)
        ci = self._flipped_rows(self.c_in, C + 1, call_of[flips] + 1, js[flips])
        co = self.c_out.expand(C + 1, -1).clone()
        for r in out_reads:
            if bool(hits[r].any()):
                co[int(call_of[r]) + 1:, hits[r]] *= -1.0
        self._planned_end = (ci[C].clone(), co[C].clone())
        cr = torch.from_numpy(call_of).to(ci.device)
        signs = ci[cr, torch.from_numpy(js).to(ci.device)][:, None] * co[cr]  # c_in[j]·c_out
        lr_a = np.asarray(lrs, dtype=np.float64)[call_of] if lrs is not None else [None] * R
        plan = ReadPlan(flips, hits, sweeps_at, signs, lr_a)
        rows_in, rows_out = (ci[:C], co[:C]) if self.columns else (co[:C], ci[:C])
        return rows_in, rows_out, plan

    @staticmethod
    def _flipped_rows(c: torch.Tensor, n_rows: int, rows: np.ndarray, entries: np.ndarray) -> torch.Tensor:
        """(n_rows, len(c)): the chopper vector c in rows 0 .. n_rows − 1 when entry ``entries[f]`` flips
        from row ``rows[f]`` on (int arrays of equal length, repeats allowed): row t is c with each entry
        negated once per flip of it at a row <= t, i.e. negated where that count is odd (−x is exact, so
        this equals negating the rows block by block, flip by flip). The K flips cut the rows into K + 1
        runs of one chopper state each: the K + 1 states are built (K × len(c)) and gathered per row."""
        order = np.argsort(rows, kind="stable")
        r_sorted, e_sorted = rows[order], entries[order]
        K = len(r_sorted)
        flipped = np.zeros((K + 1, c.shape[0]), dtype=np.int32)  # state k: after the first k flips
        flipped[np.arange(1, K + 1), e_sorted] = 1
        odd = torch.from_numpy((np.cumsum(flipped, axis=0) & 1) == 1).to(c.device)
        states = torch.where(odd, -c, c)
        run = np.searchsorted(r_sorted, np.arange(n_rows), side="right")  # flips at rows <= t
        return states[torch.from_numpy(run).to(c.device)]

    def _in_flip_decisions(self, js, evs, sweeps) -> np.ndarray:
        """``_flip_in_decision`` of several reads as a bool array (R,) (slices js, read events evs, sweeps
        at the reads: int sequences or arrays of length R)."""
        p = float(self.cfg.in_chop_prob)
        if p <= 0 or len(js) == 0:
            return np.zeros(len(js), dtype=bool)
        if self.cfg.in_chop_random:
            ev = np.asarray(evs, dtype=np.int64)  # read events: counters far below 2^63
            u = ops.uniform_counters(int(self.seed_misc), ev >> 32, Stream.CHOPPER, js, ev & _MASK32, 0)
            return u < p
        n = chopper_period(p)
        return (np.asarray(sweeps, dtype=np.int64) % n) + 1 == n

    def _transfer_read(self, lr, v, plan):
        self._transfer_slice(lr, self.next_slices(1), v, plan)

    def batch_signals(self, k: torch.Tensor, v: torch.Tensor, flips: np.ndarray) -> torch.Tensor | None:
        """(R, L) what the R reads v (R, L) of slices k accumulate (``reference_corrected`` of each, in
        order), or None when that needs the one-by-one path; it also does the reads' ``after_read`` and
        the ``on_flip`` of the reads whose in-chopper flips (``flips[r]``), in read order, where they
        touch what later signals see. c-TTv2: the reads themselves (no hooks)."""
        return v

    def _transfers_batched(self, lr, v, k, plan):
        """Steps b–f of the R reads: buffers and C writes in ONE ``buffered_transfer_seq`` (chopper signs,
        lr scales and write permissions per read from the plan), then the planned chopper flips."""
        if self.transfer_spec.mode == ops.MODE_EXPECTED:
            return super()._transfers_batched(lr, v, k, plan)
        if "read_sign" in self.__dict__ or type(self).read_sign is not ChoppedRule.read_sign:
            # the planned signs are c_in[j]·c_out; an overridden read_sign hook needs the one-by-one path
            return super()._transfers_batched(lr, v, k, plan)
        signal = self.batch_signals(k, v, plan.flips)
        if signal is None:
            return super()._transfers_batched(lr, v, k, plan)
        scales, writes = self.planned_scales(lr, plan)
        self._seq_transfer(k, signal, chop=plan.signs, lr_scales=scales, writes=writes, thr=1.0,
                           cap=self.buffer_cap())
        # the planned flips, as the one-by-one path leaves them: choppers at their end-of-batch state
        # (_plan_choppers), the flip counter, the sweeps (on_flip: batch_signals marked them)
        ci_end, co_end = self._planned_end
        n_in = int(np.count_nonzero(plan.flips))
        n_out = sum(int(h.sum()) for h in plan.hits if h is not None)
        self.c_in.copy_(ci_end)
        self.c_out.copy_(co_end)
        self.flips += n_in + n_out
        self.sweeps += int((k == self.n_slices - 1).sum())
        self.slice_idx.fill_((int(k[-1]) + 1) % self.n_slices)

    # --- choppers -----------------------------------------------------------------------------------
    def _flip_in_decision(self, j: int, ev: int, sweeps: int) -> bool:
        """Whether the in-chopper of slice j flips at read event ``ev`` (the ``reads`` count after the
        read) during sweep ``sweeps``: random ``U(seed_misc, CHOPPER, a=j, b=ev) < p``, or regular."""
        p = float(self.cfg.in_chop_prob)
        if p <= 0:
            return False
        if self.cfg.in_chop_random:
            # one scalar draw per read: Python-int Philox (ops.uniform_scalar), same number as rng.uniform
            return ops.uniform_scalar(int(self.seed_misc), ev >> 32, Stream.CHOPPER, j, ev & _MASK32, 0) < p
        n = chopper_period(p)
        return (sweeps % n) + 1 == n

    def _flip_in(self, j: int, flip: bool | None = None) -> bool:
        """Flip the in-chopper of slice j if due (``flip``: decided in advance)."""
        p = float(self.cfg.in_chop_prob)
        if p <= 0:
            return False
        if flip is None:
            flip = self._flip_in_decision(j, int(self.reads), int(self.sweeps))
        if flip:
            self.c_in[j] = -self.c_in[j]
            self.flips += 1
            self.on_flip(j)
        return flip

    def on_flip(self, j: int) -> None:
        """Hook: the in-chopper of slice j just flipped (AGAD marks it)."""

    def _flip_out_decision(self, sw: int) -> torch.Tensor | None:
        """(L,) bool: out-choppers flipping at the end of sweep ``sw`` (None when out_chop_prob = 0)."""
        p = float(self.cfg.out_chop_prob)
        if p <= 0:
            return None
        rows = torch.arange(self.vec_len)
        u = rng.uniform(int(self.seed_misc), sw >> 32, Stream.CHOPPER, rows, sw & _MASK32, 1)
        return (u < p).to(self.c_out.device)

    def _flip_out(self, hit: torch.Tensor | None = None) -> None:
        p = float(self.cfg.out_chop_prob)
        if p <= 0:
            return
        if hit is None:
            hit = self._flip_out_decision(int(self.sweeps))
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


# the scale / write hooks as ChoppedRule defines them, which ignore the sweep (planned_scales: one run);
# captured here, so that a subclass, an instance attribute or a patched ChoppedRule takes the per-sweep
# runs
_SWEEP_FREE_HOOKS = (ChoppedRule.accumulation_scale, ChoppedRule.write_allowed)


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
