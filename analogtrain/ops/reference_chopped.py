"""Batched A side of the TT-family transfer schedule: the torch twin of ``ops.chopped_update_snapshots``,
per-row-offset noise grids, and the batch of one-hot transfer reads done from snapshots.

Why: with ``transfer_every = 1`` a c-TTv2 / AGAD rule reads one column of A after every sample, so the
per-sample schedule (aihwkit-semantics.md §3.4–3.5, CPU) is "pulsed update of A with one sample, read
column j, buffer step, write C, flip the chopper" — 64 Python round trips per batch of 64. Everything
that decides *what* happens in that loop (which calls, which slices, the chopper sequence) depends only
on the schedule and on counter-based random draws, never on A's values, so a rule can plan the batch,
run all A updates in ONE op that snapshots the slice each read will see, read all snapshots in ONE
batched periphery pass, and then replay the cheap digital part (buffer, threshold, C write, choppers) in
order. Nothing changes in the numbers: every random number is drawn with the counters the per-sample
path uses:

* call c of the A updates is the per-sample path's c-th ``pulsed_update`` call: offset ``A.offset + c``,
  samples numbered b = 0.. inside the call, that call's lr and choppers;
* read r uses ``read_offset + r`` with sample index b = 0 (one one-hot read per ``DeviceArray.read``).

``chopped_update_snapshots_ref`` literally makes those calls (``pulsed_update_ref``); the C++ kernel
(``csrc/cpu_ops.cpp``) loops over the same calls in C++.

The aggregated mode (``tile.update_mode=aggregated``) is the exception to "nothing changes": there the op
carries every element's moments across the calls (``reference.AggregateCarry``) and finishes an element
only when a read observes it (before the snapshot of its slice) or after the last call — one normal per
element per read instead of per call (contract: ``ops.chopped_update_snapshots``). The C++ kernel does
it in one pass over all samples (``chopped_carry_raw``).
"""

from __future__ import annotations

import torch

from analogtrain import ops
from analogtrain.ops import rng as R
from analogtrain.ops.rng import Stream

__all__ = ["chopped_update_snapshots_ref", "grid_offsets_ref", "snapshot_reads", "snapshot_reads_supported",
           "buffered_transfer_seq_ref"]


@torch.no_grad()
def chopped_update_snapshots_ref(w, w_p, params, gparams, x, d, starts, offsets, lrs, chop_in, chop_out, snap,
                                 columns, dw, spec, seed, update_fn=None):
    """Torch twin of ``ops.chopped_update_snapshots`` (contract there): C ``pulsed_update_ref`` calls in
    order, each followed by the snapshot of slice ``snap[c]`` of ``w``. Returns (snaps (C, L) float32,
    call_pulses (C,) float64). ``update_fn`` replaces ``pulsed_update_ref`` (same signature; the dispatcher
    passes the CUDA kernel for CUDA tensors) except in the aggregated mode, whose moments are carried
    across the calls in an ``AggregateCarry``: each snapshot first finishes its slice with the snapshotting
    call's offset, and the rest is finished after the last call with its offset."""
    from analogtrain.ops.reference import pulsed_update_ref

    aggregate = bool(getattr(spec, "aggregate", False))
    carry = None
    if aggregate:  # moments carried across the calls: the torch twin of every backend (no update_fn)
        from analogtrain.ops.reference import AggregateCarry

        update_fn = pulsed_update_ref
        carry = AggregateCarry(w, w_p, params)
    update_fn = update_fn or pulsed_update_ref

    starts = [int(s) for s in torch.as_tensor(starts).tolist()]
    offsets = [int(o) for o in torch.as_tensor(offsets).tolist()]
    lrs = [float(v) for v in torch.as_tensor(lrs, dtype=torch.float64).tolist()]
    snap = [int(k) for k in torch.as_tensor(snap).tolist()]
    C = len(offsets)
    O, I = w.shape
    L = O if columns else I
    snaps = torch.zeros(C, L, dtype=torch.float32, device=w.device)
    sums = torch.zeros(C, dtype=torch.float64)
    for c in range(C):
        s0, s1 = starts[c], starts[c + 1]
        if s1 > s0:
            kw = {} if carry is None else {"carry": carry}
            p = update_fn(w, w_p, params, gparams, x[s0:s1], d[s0:s1], lrs[c], dw, spec, seed, offsets[c],
                          chop_in=None if chop_in is None else chop_in[c],
                          chop_out=None if chop_out is None else chop_out[c], **kw)
            sums[c] = float(p.sum())
        if snap[c] >= 0:
            if carry is not None:  # the read observes the slice: its elements are finished first
                mask = torch.zeros(O, I, dtype=torch.bool, device=w.device)
                if columns:
                    mask[:, snap[c]] = True
                else:
                    mask[snap[c], :] = True
                carry.finish(w, w_p, gparams, seed, offsets[c], mask.view(-1))
            snaps[c] = w[:, snap[c]] if columns else w[snap[c], :]
    if carry is not None and C > 0:
        carry.finish(w, w_p, gparams, seed, offsets[C - 1])
    return snaps, sums


def grid_offsets_ref(seed: int, offsets: torch.Tensor, stream: int, n_a: int, b_idx: torch.Tensor, draw: int,
                     normal: bool) -> torch.Tensor:
    """(len(b_idx), n_a): ``rng.normal`` / ``rng.uniform`` of ``(seed, offsets[q], stream, a, b_idx[q], draw)``
    — the torch emulation of Philox with the counter word c3 varying per row."""
    dev = b_idx.device
    a = torch.arange(int(n_a), dtype=torch.int64, device=dev)[None, :]
    b = (b_idx.to(torch.int64) & 0xFFFFFFFF)[:, None]
    c3 = (offsets.to(device=dev, dtype=torch.int64) & 0xFFFFFFFF)[:, None]
    c1 = torch.tensor(((int(stream) & 0xFF) << 24) | ((int(draw) >> 2) & 0xFFFFFF), dtype=torch.int64, device=dev)
    c0, c1, c2, c3 = torch.broadcast_tensors(a, c1, b, c3)
    r = R.philox4x32(c0, c1, c2, c3, int(seed))
    k = int(draw) & 3
    if not normal:
        return R.uniform_words(r[k])
    first, second = (r[0], r[1]) if k < 2 else (r[2], r[3])
    return R.normal_words(first, second, use_sin=bool(k & 1))


def snapshot_reads_supported(io) -> bool:
    """Whether ``snapshot_reads`` reproduces ``DeviceArray.read`` exactly for this transfer IO: a one-hot
    read sees only the read slice unless input noise makes the whole input vector non-zero."""
    return bool(io.is_perfect) or float(io.inp_noise) == 0.0


@torch.no_grad()
def snapshot_reads(snaps: torch.Tensor, k: torch.Tensor, n_slices: int, io, *, seed: int,
                   offsets: torch.Tensor) -> torch.Tensor:
    """R one-hot transfer reads at once: row r equals ``DeviceArray.read(e_{k[r]}, io)`` (through
    ``tiles.periphery.read_io``: NM and BM off) made when the read slice of the array held ``snaps[r]``
    and ``read_offset`` was ``offsets[r]``.

    snaps (R, L) float32 slice values, k (R,) slice indices, n_slices = length of the one-hot input;
    returns (R, L) float32. The same float32 operations as ``periphery.analog_mvm`` run element-wise on
    the (R, ·) tensors (the input side on one row for all reads unless the DAC rounds stochastically:
    every read's input is the same one-hot vector up to the position of its 1); the matrix product
    ``v @ M.t()`` of a one-hot ``v`` is ``v[k]·M[:, k]`` exactly (every other product is an exact
    zero), and the IO noise comes from ``ops.random_grid_offsets`` with b = 0 and offset ``offsets[r]``
    — the numbers the per-read call draws on the same backend.
    Requires ``snapshot_reads_supported(io)``."""
    from analogtrain.tiles.periphery import io_bins

    if not snapshot_reads_supported(io):
        raise ValueError("snapshot_reads: input noise needs the whole array (use DeviceArray.read)")
    Rn, L = snaps.shape
    dev = snaps.device
    f32 = torch.float32
    if io.is_perfect:
        return io.out_scale * snaps.to(f32)
    inp_bin, out_bin = io_bins(io)
    # Every read's input is e_k with noise management off (scale 1), so the input periphery (quantiser,
    # bound, asymmetry) maps it to the same vector up to where its one non-zero sits, the zeros staying
    # exact zeros: one row stands for all R (bit for bit, the additive w-noise norm included). Stochastic
    # input rounding draws a number per element and read, so then all R rows go through.
    per_read_input = inp_bin > 0 and bool(io.inp_sto_round)
    n_in = Rn if per_read_input else 1
    x = torch.zeros(n_in, int(n_slices), dtype=f32, device=dev)
    rows = torch.arange(n_in, device=dev)
    hot = k.to(dev) if per_read_input else torch.zeros(1, dtype=torch.int64, device=dev)
    x[rows, hot] = 1.0
    b0 = torch.zeros(Rn, dtype=torch.int64)

    def normal(n_a, draw):
        return ops.random_grid_offsets(seed, offsets, Stream.READ_NOISE, n_a, b0, draw, normal=True, device=dev)

    def uniform(n_a, draw):
        return ops.random_grid_offsets(seed, offsets, Stream.READ_NOISE, n_a, b0, draw, normal=False, device=dev)

    def quantise(v, bin_, sto, draw):
        if bin_ <= 0:
            return v
        q = v / bin_
        if sto:
            q = torch.floor(q + uniform(v.shape[1], draw))
        else:
            q = torch.round(q)
        return q * bin_

    ob = float(io.out_bound)
    alpha = torch.ones(n_in, dtype=f32, device=dev)  # noise management off
    red = torch.ones(n_in, dtype=f32, device=dev)
    s = (1.0 / alpha) / red
    v = x * s[:, None]
    v = quantise(v, inp_bin, io.inp_sto_round, 4)
    v = v.clamp(-io.inp_bound, io.inp_bound)
    if io.inp_asymmetry != 0:
        v = torch.where(v < 0, v * (1.0 - io.inp_asymmetry), v)
    q = v[rows, hot]  # the only non-zero input of each read (one value for all when n_in = 1)
    y = q[:, None] * snaps.to(f32)  # = v @ M.t() for a one-hot v
    if io.w_noise > 0 and io.w_noise_type != "none":
        if io.w_noise_type == "additive_constant":
            amp = io.w_noise * v.norm(dim=1, keepdim=True)
        else:  # pcm_read: (v·v) @ |M|ᵀ of a one-hot v
            amp = io.w_noise * torch.sqrt((q * q)[:, None] * snaps.to(f32).abs())
        y = y + amp * normal(L, 1)
    if io.out_asymmetry != 0:
        y = torch.where(y < 0, y * (1.0 - io.out_asymmetry), y)
    if io.out_noise > 0:
        y = y + io.out_noise * normal(L, 0)
    y = quantise(y, out_bin, io.out_sto_round, 8)
    if ob > 0:
        y = y.clamp(-ob, ob)
    return y * io.out_scale * alpha[:, None] * red[:, None]


@torch.no_grad()
def buffered_transfer_seq_ref(h, v, ks, *, chop, lr_scales, writes, offsets, backend=None, **kw):
    """Twin of ``ops.buffered_transfer_seq``: the R ``buffered_transfer`` calls in order (each through the
    dispatcher with ``backend``: the torch twin on the reference backend, the kernel on CUDA)."""
    R_, L = v.shape
    n_all = torch.zeros(R_, L, dtype=torch.float32, device=v.device)
    p_all = torch.zeros(R_, L, dtype=torch.float32, device=v.device)
    ks = [int(k) for k in torch.as_tensor(ks).tolist()]
    offsets = [int(o) for o in torch.as_tensor(offsets).tolist()]
    lr_scales = [float(s) for s in torch.as_tensor(lr_scales, dtype=torch.float64).tolist()]
    writes = [bool(b) for b in torch.as_tensor(writes).tolist()]
    for r in range(R_):
        n, p = ops.buffered_transfer(h, v[r], ks[r], lr_scale=lr_scales[r], offset=offsets[r], write=writes[r],
                                     chop=None if chop is None else chop[r], backend=backend, **kw)
        n_all[r] = n
        p_all[r] = p
    return n_all, p_all
