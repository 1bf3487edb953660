"""Shared machinery of the Tiki-Taka family (tt, ttv2, cttv2, agad): two arrays, a schedule, transfers.

Semantics: ``shared/reference/aihwkit-semantics.md`` §3 (CPU reference schedule). A ``TransferRule``
owns two ``DeviceArray`` s — ``A`` (the fast array that receives the gradient pulses) and ``C`` (the
slow array that holds the weight) — plus everything its subclass keeps (buffer ``H``, choppers, EMAs,
running means) as registered buffers, so ``state_dict`` is a complete checkpoint.

Per mini-batch (x (B, I), d (B, O), optimizer lr)::

    every = ceil(transfer_every·B) if units_in_mbatch else round(transfer_every)   (vector units)
    cut the batch at the samples where the sample counter reaches a multiple of ``every``:
        pulsed update of A with the chunk (each sample its own update, ops contract)
        counter += chunk size
        if counter % every == 0: transfer (subclass: read slices of A, write C)

Batched schedule (``BATCHED_TRANSFERS``, on by default; rules with one slice per read: ttv2 with
``n_reads_per_transfer = 1``, cttv2, agad — not for transfer IO with input noise): the same loop, with
the same numbers, in a handful of calls per batch (``_update_batched``, ``ops.reference_chopped``) —
except in the aggregated update mode, where the batched op carries A's moments across its calls and
finishes elements only where reads observe them (same statistics, other random numbers).
Counter assignment (identical in both paths, the per-sample path defines it)::

    A update call c of the batch      pulsed_update at offset A.offset + c, samples b = 0.. inside the call
                                      (one call per chunk; per sample with auto_scale)
    read r of the batch               READ_NOISE at read_offset + r, sample index b = 0
    C write of read r                 buffered_transfer at C.offset + r (advanced whether or not it writes)
    in-chopper flip of read r         CHOPPER draw a = slice, b = reads count after the read (random mode)
    out-chopper flips after a sweep   CHOPPER draws a = row, b = sweeps before the increment, draw 1

None of them depends on A's values, so the batch is planned first, all A updates run in ONE op
(``ops.chopped_update_snapshots``, which copies the read slice after each transferring call), all reads
in ONE batched periphery pass and all buffer steps / C writes in ONE ``ops.buffered_transfer_seq``.

"Slices" are columns of A (``transfer_columns``, read with a one-hot forward read ``A e_j``) or rows
(read through the transpose). All per-slice bookkeeping below is written for a slice-major view:
``_slice(M, k)`` returns the (len(k), L) rows of the slice-major matrix (L = vector length of one slice).
"""

from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch

from analogtrain.config.errors import ConfigError
from analogtrain import ops
from analogtrain.ops import rng
from analogtrain.ops.rng import Stream
from analogtrain.tiles.array import DeviceArray, update_spec
from analogtrain.tiles.config import IOConfig, TileConfig, UpdateConfig, validate_io, validate_update
from analogtrain.tiles.seeds import derive_seed

from analogtrain.tiles.rule import PulseMeter, TileRule

__all__ = ["TransferRule", "TransferAlgorithm", "to_config", "merge_device", "resolve_devices",
           "validate_transfer_common", "lr_fast_tt", "lr_transfer"]

_MASK32 = 0xFFFFFFFF

# Run one-slice transfers through the batched schedule (``TransferRule._update_batched``): same numbers
# as the per-sample loop (tests/test_chopped_op.py), one op per batch instead of one per sample.
BATCHED_TRANSFERS = True


# ---------------------------------------------------------------------------------------------------
# config helpers
# ---------------------------------------------------------------------------------------------------


def to_config(cls, node) -> Any:
    """Build the dataclass ``cls`` (e.g. ``TTConfig``) from a DictConfig / dict / dataclass ``node``.

    Unknown keys raise ``ConfigError('algo.<key>')``; nested ``transfer_forward`` / ``transfer_update``
    become ``IOConfig`` / ``UpdateConfig``; device overrides stay plain dicts.
    """
    if isinstance(node, cls):
        return node
    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    elif is_dataclass(node):
        node = {f.name: getattr(node, f.name) for f in fields(node)}
    node = dict(node)
    names = {f.name for f in fields(cls)}
    for k in node:
        if k not in names:
            raise ConfigError(f"algo.{k}", f"unknown key for algo={getattr(cls, 'name', cls.__name__)}; "
                              f"allowed: {', '.join(sorted(names))}")
    kw = {}
    for k, v in node.items():
        if k == "transfer_forward" and not isinstance(v, IOConfig):
            v = _sub(IOConfig, v, "algo.transfer_forward")
        elif k == "transfer_update" and not isinstance(v, UpdateConfig):
            v = _sub(UpdateConfig, v, "algo.transfer_update")
        kw[k] = v
    return cls(**kw)


def _sub(cls, v, prefix):
    if is_dataclass(v):
        return v
    names = {f.name for f in fields(cls)}
    for k in v:
        if k not in names:
            raise ConfigError(f"{prefix}.{k}", f"unknown key; allowed: {', '.join(sorted(names))}")
    return cls(**dict(v))


def merge_device(main, override):
    """The device node of A or C: ``override`` (dict) merged over the main ``device`` node.

    An override that names another ``family`` replaces the main node (its own schema defaults apply)."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(main, DictConfig):
        main = OmegaConf.to_container(main, resolve=True)
    elif is_dataclass(main):
        main = {f.name: getattr(main, f.name) for f in fields(main)}
    if override is None:
        return main
    if isinstance(override, DictConfig):
        override = OmegaConf.to_container(override, resolve=True)
    override = dict(override)
    for key in ("family", "name"):  # another device model or preset: the override stands alone
        if override.get(key) is not None and override[key] != main.get(key):
            return override
    out = dict(main)
    out.update(override)
    return out


def _range(key, v, lo=None, hi=None, lo_open=False, hi_open=False):
    too_low = lo is not None and (v <= lo if lo_open else v < lo)
    too_high = hi is not None and (v >= hi if hi_open else v > hi)
    if too_low or too_high:
        lo_s = "" if lo is None else f"{lo} {'<' if lo_open else '<='} "
        hi_s = "" if hi is None else f" {'<' if hi_open else '<='} {hi}"
        raise ConfigError(key, f"{v} is out of range: allowed {lo_s}{key.split('.')[-1]}{hi_s}")


def validate_transfer_common(a) -> None:
    """Range checks shared by all TT-family configs (``a`` = the algo dataclass); names ``algo.<key>``."""
    _range("algo.gamma", a.gamma, lo=0.0)
    _range("algo.n_reads_per_transfer", a.n_reads_per_transfer, lo=1)
    _range("algo.with_reset_prob", a.with_reset_prob, lo=0.0, hi=1.0)
    if a.with_reset_prob > 0 and not a.transfer_columns:  # (aihwkit skips the reset of rows silently)
        raise ConfigError("algo.with_reset_prob", f"{a.with_reset_prob}: the reset acts on read columns "
                          "(aihwkit resetCols); set algo.transfer_columns=true or with_reset_prob=0")
    te = float(a.transfer_every)
    if not a.units_in_mbatch and 0 < te < 0.5:  # (round_half_up(te) = 0 would disable the transfers)
        raise ConfigError("algo.transfer_every", f"{te} vector updates rounds to 0 (no transfers): allowed 0 "
                          "(off) or >= 0.5, or count in mini-batches with units_in_mbatch=true")
    _range("algo.transfer_lr", a.transfer_lr, lo=0.0, lo_open=True)
    _range("algo.reference_std", a.reference_std, lo=0.0)
    validate_io(a.transfer_forward, "algo.transfer_forward")
    validate_update(a.transfer_update, "algo.transfer_update")
    for key in ("fast_device", "device_c"):
        v = getattr(a, key)
        if v is not None and not isinstance(v, dict):
            raise ConfigError(f"algo.{key}", "must be a mapping of device keys (or null)")


def round_half_up(v: float) -> int:
    """aihwkit's ``(int) roundf(v)`` for v >= 0: halves away from zero (Python's ``round`` takes them to
    the even neighbour: 2.5 -> 2)."""
    return int(math.floor(v + 0.5))


def lr_fast_tt(fast_lr: float, scale: bool, lr: float) -> float:
    """Pulse-count lr of A (§3.2): fast_lr·lr if scaled, fast_lr if not, lr if fast_lr <= 0."""
    if fast_lr <= 0:
        return lr
    return fast_lr * lr if scale else fast_lr


def lr_transfer(transfer_lr: float, scale: bool, lr: float) -> float:
    """Transfer lr (§3.2): transfer_lr·lr if ``scale_transfer_lr`` else transfer_lr."""
    return transfer_lr * lr if scale else transfer_lr


# ---------------------------------------------------------------------------------------------------
# the rule
# ---------------------------------------------------------------------------------------------------


def _scalar(v, dtype=torch.int64) -> torch.Tensor:
    return torch.tensor(v, dtype=dtype)


def _sequential_sum(acc: float, values: np.ndarray) -> float:
    """acc + values[0] + values[1] + ... in float64, left to right (``np.add.accumulate`` adds in order,
    unlike ``np.sum``'s pairwise summation): the pulse statistics of a batch of calls end exactly where
    the same calls made one by one leave them."""
    if values.size == 0:
        return acc
    return float(np.add.accumulate(np.concatenate(([acc], values)))[-1])


class Chunks:
    """The pulsed-update chunks of one batch on the batched schedule: chunk c covers samples
    ``starts[c] .. ends[c] − 1``, and ``xfer[c]`` says whether a transfer read follows it (the sample
    counter hits a multiple of ``every`` at its end; only the last chunk of a batch may not). Plain lists,
    built with C-level list operations: a conv layer with ``transfer_every`` 1 has one chunk per image
    patch, tens of thousands per batch."""

    __slots__ = ("starts", "ends", "xfer", "n_xfer")

    def __init__(self, starts: list, ends: list, xfer: list, n_xfer: int):
        self.starts, self.ends, self.xfer, self.n_xfer = starts, ends, xfer, n_xfer

    @classmethod
    def of_batch(cls, s0: int, every: int, m: int) -> Chunks:
        """The chunks of a batch of ``m`` samples when ``s0`` samples were seen before it (every > 0)."""
        ends = list(range(every - s0 % every, m + 1, every))  # the transferring chunks end here
        n_xfer = len(ends)
        if not ends or ends[-1] != m:
            ends.append(m)  # the batch's tail: no read after it
        return cls([0] + ends[:-1], ends, [True] * n_xfer + [False] * (len(ends) - n_xfer), n_xfer)


class TransferRule(TileRule):
    """Base of the TT-family tile rules: arrays A and C, the per-sample transfer schedule, reads/writes.

    Arguments:
        cfg: the algo dataclass (``TTConfig`` or a subclass).
        dev_a, dev_c: device config dataclasses of A and C (``devices.device_from_config``).
        out_size, in_size: O × I of the tile.
        tile_cfg: the ``tile:`` node (``TileConfig``): ``tile.update``/``tile.update_mode`` give the
            ``UpdateSpec`` of the gradient update of A (``self.spec``); the writes onto C use
            ``algo.transfer_update`` in the same update mode (``self.transfer_spec``).
        name: layer/tile name (part of every derived seed).
        seeds: ``{"device": int, "pulse": int, ...}`` from the runner.

    Buffers (all in ``state_dict``): ``samples`` (vector updates seen), ``slice_idx`` (next slice),
    ``transfers`` (transfer events), ``reads`` (slices read), ``pulses_a`` / ``pulses_c`` (totals),
    ``ref`` (O, I) digital reference of A (or empty), ``sp_c`` (O, I) symmetry point of C, and the
    sub-modules ``A``, ``C`` (arrays with their RNG offsets), ``meter_a``, ``meter_c``.
    """

    SUM_STATS = ("pulses_per_update", "a_pulses_per_update", "c_pulses_per_update")

    def __init__(self, cfg, dev_a, dev_c, out_size: int, in_size: int, tile_cfg: TileConfig | None = None, *,
                 name: str = "tile", seeds: dict | None = None):
        super().__init__(out_size, in_size, tile_cfg)
        self.cfg = cfg
        seeds = seeds or {}
        self.transfer_spec = update_spec(cfg.transfer_update, self.tile_cfg.update_mode, prefix="algo")
        # pulse_type none / none_with_device is analog SGD's floating-point update (aihwkit §1.3): a transfer
        # compound's A gets the gradient and C the transfers as device pulses, which it would skip
        for key, spec, pt in (
                ("tile.update.pulse_type", self.spec, self.tile_cfg.update.pulse_type),
                ("algo.transfer_update.pulse_type", self.transfer_spec, cfg.transfer_update.pulse_type)):
            if spec is None:
                raise ConfigError(key, f"'{pt}' (a floating-point update without pulses) works with algo=sgd "
                                  "only; the transfer algorithms need pulses: stochastic_compressed or "
                                  "mean_count")
        backend = self.tile_cfg.backend
        sd, sp = int(seeds.get("device", 0)), int(seeds.get("pulse", 0))
        self.A = DeviceArray(dev_a, out_size, in_size, derive_seed(sd, name, "A"), derive_seed(sp, name, "A"),
                             backend=backend)
        self.C = DeviceArray(dev_c, out_size, in_size, derive_seed(sd, name, "C"), derive_seed(sp, name, "C"),
                             backend=backend)
        self.meter_a, self.meter_c = PulseMeter(), PulseMeter()
        # Philox key of the rule's own draws (choppers, random selection, resets): a buffer, so a resumed
        # checkpoint keeps drawing the same numbers whatever seeds the new process was given
        self.register_buffer("seed_misc", _scalar(derive_seed(sp, name, "transfer")))
        self.columns = bool(cfg.transfer_columns)
        self.n_slices = self.in_size if self.columns else self.out_size
        self.vec_len = self.out_size if self.columns else self.in_size
        self.gamma = float(cfg.gamma)
        for key in ("samples", "slice_idx", "transfers", "reads"):
            self.register_buffer(key, _scalar(0))
        self.register_buffer("pulses_a", _scalar(0.0, torch.float64))
        self.register_buffer("pulses_c", _scalar(0.0, torch.float64))
        self.register_buffer("sp_c", self.C.sampled.symmetry_point().to(torch.float32).clone())
        if cfg.subtract_symmetry_point:
            # digital reference array R = sp(A) + N(μ_r, σ_r) (paper 2303.04721: r = w* + ξ); A starts at
            # its symmetry point, where a device pulsed up and down settles.
            sp_a = self.A.sampled.symmetry_point().to(torch.float32)
            n = out_size * in_size
            xi = rng.normal(derive_seed(sd, name, "ref"), 0, Stream.DTOD, torch.arange(n), 0, 0).view_as(sp_a)
            self.register_buffer("ref", sp_a + float(cfg.reference_mean) + float(cfg.reference_std) * xi)
            self.A.set_weights(sp_a)
        else:
            self.register_buffer("ref", torch.zeros(0))

    # --- views -------------------------------------------------------------------------------------
    def _sm(self, M: torch.Tensor) -> torch.Tensor:
        """Slice-major view of an (O, I) matrix: (n_slices, L)."""
        return M.t() if self.columns else M

    def _slice(self, M: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """(len(k), L) copy of slices ``k`` of the (O, I) matrix ``M``."""
        return self._sm(M)[k].clone()

    def _set_slice(self, M: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self._sm(M)[k] = v

    def a_visible(self) -> torch.Tensor:
        """(O, I) A as the transfer sees it: A − R with a reference array, else A."""
        return self.A.w - self.ref if self.ref.numel() else self.A.w

    # --- TileRule contract ------------------------------------------------------------------------
    def effective_weight(self) -> torch.Tensor:
        """(O, I) W = gamma·(A − R) + C (W = C when gamma = 0, "fully hidden")."""
        if self.gamma == 0.0:
            return self.C.w.detach()
        return (self.gamma * self.a_visible() + self.C.w).detach()

    @torch.no_grad()
    def set_weights(self, W: torch.Tensor) -> None:
        """aihwkit ``set_weights``: A back to 0 (its symmetry point with a reference array), C ← W."""
        self.A.set_weights(self.a_rest())
        self.C.set_weights(W)

    def a_rest(self) -> torch.Tensor:
        """(O, I) resting value of A: its symmetry point when zero-shifted by a reference, else 0."""
        if self.ref.numel():
            return self.A.sampled.symmetry_point().to(torch.float32)
        return torch.zeros_like(self.A.w)

    def every(self, batch: int) -> int:
        """Transfer period in vector updates for a mini-batch of ``batch`` samples (0: never)."""
        te = float(self.cfg.transfer_every)
        if te == 0:
            return 0
        if self.cfg.units_in_mbatch:
            # ceil(te·m) of the decimal te the config wrote (0.07·100 is 7.000000000000001 in floats)
            return max(math.ceil(Fraction(repr(te)) * batch), 1)
        return max(round_half_up(te), 1)

    @torch.no_grad()
    def update(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> None:
        """One mini-batch: x (B, I), d (B, O), optimizer lr. Pulsed updates of A in chunks that end where
        the sample counter hits a multiple of ``every``, each followed by a transfer (CPU semantics).

        Rules whose transfer reads one slice (``batched_ok``) run the same schedule through
        ``_update_batched`` (one op for all A updates, one batched read, then the digital part in order):
        bit-identical results, far fewer Python round trips."""
        m = x.shape[0]
        if m == 0:
            return
        every = self.every(m)
        if every > 0 and BATCHED_TRANSFERS and self.batched_ok():
            self._update_batched(x, d, lr, every)
            return
        s = 0
        while s < m:
            n = m - s
            if every > 0:
                n = min(every - int(self.samples) % every, n)
            self._update_fast(x[s:s + n], d[s:s + n], lr, m)
            self.samples += n
            s += n
            if every > 0 and int(self.samples) % every == 0:
                self._transfer(lr)
                self.transfers += 1

    # --- the batched schedule (same numbers as the loop above) --------------------------------------
    def batched_ok(self) -> bool:
        """Whether this rule's transfers can run through ``_update_batched``: subclasses that read ONE slice
        per transfer and implement ``_transfer_read`` say yes; the read IO must allow snapshot reads."""
        return False

    def _plan_calls(self, x: torch.Tensor, d: torch.Tensor, lr: float, chunks: Chunks) -> tuple:
        """The pulsed-update calls of A the per-sample path makes for ``chunks``: returns (starts, lrs,
        transfer_after), one entry per call (lists or numpy arrays); here one call per chunk with
        ``fast_lr(lr)``."""
        lr_a = self.fast_lr(lr)
        return chunks.starts, [lr_a] * len(chunks.starts), chunks.xfer

    def _plan_choppers(self, xfer, slices, lrs=None) -> tuple:
        """(chop_in (C, I) or None, chop_out (C, O) or None, per-transfer plan) of the planned calls
        (``xfer``: (C,) whether a read follows each; ``slices``: the R slices read; ``lrs``: the calls'
        fast lrs)."""
        return None, None, [None] * len(slices)

    def _transfer_read(self, lr: float, v: torch.Tensor, plan) -> None:
        """Transfer the next slice whose read ``v`` (1, L) was already made (batched path)."""
        raise NotImplementedError

    @torch.no_grad()
    def _update_batched(self, x: torch.Tensor, d: torch.Tensor, lr: float, every: int) -> None:
        """``update`` for one-slice transfers, bit for bit (``ops.reference_chopped`` explains why it can).

        1. plan: cut the batch where the sample counter hits a multiple of ``every`` (as ``update``), the
           pulsed-update calls (``_plan_calls``), the slices read (sequential from ``slice_idx``) and the
           chopper state of every call (``_plan_choppers``: chopper flips are schedule-indexed draws);
        2. ONE ``ops.chopped_update_snapshots``: all A updates with the per-sample path's counters (call c
           at ``A.offset + c``) and a snapshot of the slice read after each transferring call (aggregated
           mode: A's moments carried across the calls, finished only where a read observes them);
        3. ONE batched read of the snapshots (``snapshot_reads``: read r at ``read_offset + r``);
        4. the transfers in order (``_transfer_read``: buffer, threshold, C write, choppers)."""
        from analogtrain.ops.reference_chopped import snapshot_reads

        m = x.shape[0]
        x_in, d_in = x, d  # the planning sees what the per-sample path sees (auto-scale EMAs)
        x = x.detach().to(self.A.w.device, torch.float32).contiguous()
        d = d.detach().to(self.A.w.device, torch.float32).contiguous()
        # chunks end where the sample counter hits a multiple of ``every`` (and at the batch's end)
        chunks = Chunks.of_batch(int(self.samples), every, m)
        starts, lrs, xfer = self._plan_calls(x_in, d_in, lr, chunks)
        C = len(starts)
        xfer = np.asarray(xfer, dtype=bool)
        n_read = int(np.count_nonzero(xfer))
        # the slices read, in sequence from slice_idx (a conv layer reads thousands per batch: built in numpy)
        slices = (np.arange(n_read, dtype=np.int64) + int(self.slice_idx)) % self.n_slices
        k = torch.from_numpy(slices)
        xfer_t = torch.from_numpy(xfer)
        snap_t = torch.full((C,), -1, dtype=torch.int64)
        snap_t[xfer_t] = k
        chop_in, chop_out, plan = self._plan_choppers(xfer, slices, lrs)
        A = self.A
        snaps, sums = ops.chopped_update_snapshots(
            A.w, A.w_p if A.has_write_noise else None, A.params, A.gparams, x, d, np.append(starts, m),
            torch.arange(C, dtype=torch.int64) + int(A.offset), lrs, chop_in, chop_out, snap_t, self.columns,
            A.dw, self.spec, int(A.seed))
        A.offset += C
        # pulse statistics exactly as C separate record_a calls (float64 sums in call order)
        per_call = sums.detach().cpu().numpy().astype(np.float64)
        self.pulses_a.fill_(_sequential_sum(float(self.pulses_a), per_call))
        self.meter_a.pulses.fill_(_sequential_sum(float(self.meter_a.pulses), per_call))
        self.meter_a.calls += C
        self.meter_a.samples += m
        self.meter_a.elements.fill_(A.w.numel())
        self.samples += m
        if n_read == 0:
            return
        idx = xfer_t.nonzero().view(-1)
        offs = torch.arange(n_read, dtype=torch.int64) + int(A.read_offset)
        v = snapshot_reads(snaps[idx.to(snaps.device)], k, self.n_slices, self.cfg.transfer_forward,
                           seed=int(A.seed), offsets=offs)
        A.read_offset += n_read
        self.reads += n_read
        if self.ref.numel():
            v = v - self._sm(self.ref)[k.to(self.ref.device)]
        self._transfers_batched(lr, v, k, plan)
        self.transfers += n_read

    def _transfers_batched(self, lr: float, v: torch.Tensor, k: torch.Tensor, plan: list) -> None:
        """The transfers of a batch whose reads v (R, L) of slices k (R,) are done: one by one through
        ``_transfer_read`` here; subclasses hand them to ``ops.buffered_transfer_seq`` in one call."""
        for r in range(v.shape[0]):
            self._transfer_read(lr, v[r:r + 1], plan[r])

    def _seq_transfer(self, k: torch.Tensor, signal: torch.Tensor, *, chop, lr_scales: list, writes: list,
                      thr: float, cap: float = 0.0) -> torch.Tensor:
        """R consecutive ``buffered_transfer`` calls (slices k (R,), signals (R, L), chop (R, L) or None)
        as ONE ``ops.buffered_transfer_seq``: C's counter advances by R, the pulse statistics as R calls.
        Integer update modes only (the statistics use slice sums). Returns n (R, L)."""
        a = self.cfg
        C = self.C
        R_ = signal.shape[0]
        off0 = int(C.offset)
        n, pulses = ops.buffered_transfer_seq(
            self.H, signal, k, chop=chop, lr_scales=lr_scales, writes=writes, thr=thr,
            bl=int(a.transfer_update.desired_bl), momentum=float(a.momentum), forget=bool(a.forget_buffer), w=C.w,
            w_p=C.w_p if C.has_write_noise else None, params=C.params, gparams=C.gparams, lr=float(a.step) * C.dw,
            dw=C.dw, spec=self.transfer_spec, seed=int(C.seed), offsets=torch.arange(R_, dtype=torch.int64) + off0,
            columns=self.columns, no_buffer=bool(getattr(a, "no_buffer", False)), cap=cap)
        C.offset += R_
        wrote = (n != 0).any(dim=1) & torch.as_tensor(writes, dtype=torch.bool, device=n.device)
        if bool(wrote.any()):
            # integer counts: exact, as R separate slice sums
            tots = pulses.sum(dim=1)[wrote].cpu().numpy().astype(np.float64)
            self.pulses_c.fill_(_sequential_sum(float(self.pulses_c), tots))
            mc = self.meter_c
            mc.pulses.fill_(_sequential_sum(float(mc.pulses), tots))
            mc.calls += len(tots)
            mc.samples += len(tots)
            mc.elements.fill_(C.w.numel())
        return n

    # --- pieces for subclasses --------------------------------------------------------------------
    def fast_lr(self, lr: float) -> float:
        return lr_fast_tt(float(self.cfg.fast_lr), bool(self.cfg.scale_fast_lr), lr)

    def transfer_lr(self, lr: float) -> float:
        return lr_transfer(float(self.cfg.transfer_lr), bool(self.cfg.scale_transfer_lr), lr)

    def chop_args(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(chop_in (I,), chop_out (O,)) for the pulsed update of A; no choppers in the base class."""
        return None, None

    def _update_fast(self, x: torch.Tensor, d: torch.Tensor, lr: float, batch: int) -> None:
        """Pulsed update of A with one chunk of samples (x (n, I), d (n, O))."""
        ci, co = self.chop_args()
        self.record_a(self.A.update(x, d, self.fast_lr(lr), self.spec, chop_in=ci, chop_out=co), x.shape[0])

    def record_a(self, pulses: torch.Tensor, n_samples: int) -> None:
        self.pulses_a += float(pulses.sum())
        self.meter_a.add(pulses, n_samples)

    def _transfer(self, lr: float) -> None:
        raise NotImplementedError

    def next_slices(self, n: int, random_start: bool = False) -> torch.Tensor:
        """Indices of the next ``n`` slices (sequential from ``slice_idx``, or from a random start), at most
        all ``n_slices`` once (aihwkit ``MIN(n_reads_per_transfer, in_size)``); advances ``slice_idx``
        past them."""
        n = min(int(n), self.n_slices)
        start = int(self.slice_idx)
        if random_start:
            u = ops.uniform_scalar(int(self.seed_misc), int(self.transfers) >> 32, Stream.MISC, 0,
                                   int(self.transfers) & _MASK32, 0)  # = rng.uniform, Python ints
            start = min(int(u * self.n_slices), self.n_slices - 1)
        k = (torch.arange(n, dtype=torch.int64) + start) % self.n_slices
        self.slice_idx.fill_((start + n) % self.n_slices)
        return k

    def read_slices(self, k: torch.Tensor) -> torch.Tensor:
        """Noisy transfer read of slices ``k`` of A through ``algo.transfer_forward`` (NM/BM off):
        returns (len(k), L); minus the reference array R when A is zero-shifted."""
        e = torch.zeros(len(k), self.n_slices, dtype=torch.float32)
        e[torch.arange(len(k)), k] = 1.0
        v = self.A.read(e, self.cfg.transfer_forward, transposed=not self.columns)
        self.reads += len(k)
        if self.ref.numel():
            v = v - self._slice(self.ref, k)
        return v

    def write_slices(self, k: torch.Tensor, v: torch.Tensor, lr: float) -> None:
        """Pulsed update of C on slices ``k``: ``C_slice(k) ← C_slice(k) − lr·v`` (v (len(k), L)) with
        one-hot vectors on the slice side and ``algo.transfer_update``; one op call, one sample per slice."""
        e = torch.zeros(len(k), self.n_slices, dtype=torch.float32)
        e[torch.arange(len(k)), k] = 1.0
        if self.columns:  # C[:, k] −= lr·v: x = e_k, d = v
            pulses = self.C.update(e, v, lr, self.transfer_spec)
        else:  # C[k, :] −= lr·v: x = v, d = e_k
            pulses = self.C.update(v, e, lr, self.transfer_spec)
        self.pulses_c += float(pulses.sum())
        self.meter_c.add(pulses, len(k))

    def buffered_transfer(self, k: int, v: torch.Tensor, *, chop: torch.Tensor | None, lr_scale: float,
                          thr: float, write: bool = True, cap: float = 0.0) -> torch.Tensor:
        """Buffer + threshold + write of ONE slice ``k`` through the fused op ``ops.buffered_transfer``
        (compiled kernel or its torch twin): ``H_k += chop·v·lr_scale``, ``n = clamp(trunc(H_k/thr), ±BL_t)``,
        forget/subtract, then (if ``write`` and any n ≠ 0) the pulsed write ``C_k += n·step·dw_C``.
        v, chop: (L,). Returns n (L,). C's RNG offset advances by one per call (op contract)."""
        a = self.cfg
        C = self.C
        n, pulses = ops.buffered_transfer(
            self.H, v.reshape(-1), int(k), lr_scale=lr_scale, thr=thr, bl=int(a.transfer_update.desired_bl),
            momentum=float(a.momentum), forget=bool(a.forget_buffer), w=C.w,
            w_p=C.w_p if C.has_write_noise else None, params=C.params, gparams=C.gparams,
            lr=float(a.step) * C.dw, dw=C.dw, spec=self.transfer_spec, seed=int(C.seed), offset=int(C.offset),
            chop=chop, columns=self.columns, write=write, no_buffer=bool(getattr(a, "no_buffer", False)),
            cap=cap)
        C.offset += 1
        if write and bool((n != 0).any()):
            tot = pulses.sum()
            self.pulses_c += float(tot)
            if self.transfer_spec.mode == ops.MODE_EXPECTED:  # fractional counts: sum the (O, I) map as before
                full = torch.zeros_like(C.w)
                self._set_slice(full, torch.tensor([int(k)]), pulses.reshape(1, -1))
                self.meter_c.add(full, 1)
            else:  # integer counts: the slice's sum IS the map's sum (exact), no (O, I) map per read
                mc = self.meter_c
                mc.pulses += tot.to(torch.float64)
                mc.calls += 1
                mc.samples += 1
                mc.elements.fill_(C.w.numel())
        return n

    # --- metrics ----------------------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        """Counters and state statistics of this tile (logged as ``tile/<layer>/<stat>``)."""
        samples = max(int(self.samples), 1)
        out = self.meter_a.stats("a_")
        out.update(self.meter_c.stats("c_"))
        out.update({
            "transfers": float(self.transfers),
            "reads": float(self.reads),
            "pulses_a": float(self.pulses_a),
            "pulses_c": float(self.pulses_c),
            "pulses_a_per_sample": float(self.pulses_a) / samples,
            "pulses_c_per_sample": float(self.pulses_c) / samples,
            "c_sp_distance": float((self.C.w - self.sp_c).abs().mean()),
            "a_abs_mean": float(self.a_visible().abs().mean()),
            "frac_at_bounds_c": self.C.frac_at_bounds(),
        })
        return out


# ---------------------------------------------------------------------------------------------------
# the algorithm (trainer side): config -> one rule per tile
# ---------------------------------------------------------------------------------------------------

from analogtrain.algorithms.analog import AnalogAlgorithm  # noqa: E402


class TransferAlgorithm(AnalogAlgorithm):
    """Base of ``algo=tt|ttv2|cttv2|agad``: ``make_rule`` builds the family's ``TransferRule`` per tile.

    Subclasses set ``config_cls`` (the schema dataclass) and ``rule_cls``; ``validate`` runs the shared
    range checks plus the subclass's ``check(a)`` and resolves the A/C device overrides.
    """

    config_cls: type = None  # type: ignore[assignment]
    rule_cls: type = None  # type: ignore[assignment]

    def algo_config(self):
        if getattr(self, "_algo_cfg", None) is None:
            self._algo_cfg = to_config(self.config_cls, self.cfg.algo)
        return self._algo_cfg

    def device_configs(self):
        """(dev_a, dev_c) resolved device dataclasses (main ``device`` node + ``algo`` overrides)."""
        return resolve_devices(self.cfg, self.algo_config())

    def make_rule(self, out_size: int, in_size: int, name: str, seeds: dict | None = None):
        dev_a, dev_c = self.device_configs()
        return self.rule_cls(self.algo_config(), dev_a, dev_c, out_size, in_size, self.tile_cfg,
                             name=name, seeds=seeds if seeds is not None else self.tile_seeds(name))

    @classmethod
    def check(cls, a) -> None:
        """Family-specific range checks of the algo dataclass ``a`` (ConfigError naming algo.<key>)."""

    @classmethod
    def validate(cls, cfg) -> None:
        super().validate(cfg)  # tile node and main device
        a = to_config(cls.config_cls, cfg.algo)
        validate_transfer_common(a)
        cls.check(a)
        resolve_devices(cfg, a)


def resolve_devices(cfg, a):
    """Device dataclasses of A and C: ``cfg.device`` with ``algo.fast_device`` / ``algo.device_c``."""
    from analogtrain.devices import device_from_config

    main = cfg.device
    dev_a = device_from_config(merge_device(main, a.fast_device),
                               prefix="algo.fast_device" if a.fast_device else "device")
    dev_c = device_from_config(merge_device(main, a.device_c),
                               prefix="algo.device_c" if a.device_c else "device")
    return dev_a, dev_c
