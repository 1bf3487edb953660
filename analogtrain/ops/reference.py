"""Pure-torch reference ops (the oracle of the compiled kernels in ``csrc/``, and their fallback).

``pulsed_update_ref`` implements the contract of ``analogtrain.ops.pulsed_update`` (see
``analogtrain/ops/__init__.py``) with aihwkit's semantics (``aihwkit-semantics.md`` §1). The C++/CUDA
kernels must reproduce it exactly; everything that matters for that is spelled out below.

Per call, the samples ``b = 0..B-1`` are applied **in batch order**, each as its own pulsed update:

1. Scales per sample (float64, aihwkit ``calculateBlAB`` + ``performUpdateManagement``)::

       lr_a = |lr|;  um = spec.um or spec.ublm;  g = spec.um_grad_scale;  BLd = spec.desired_bl
       if spec.fixed_bl or spec.ublm:   BL = BLd;  A = B = sqrt(lr_a/(dw·BL))
       elif dw·BLd < lr_a:              BL = max(ceil(lr_a/dw), 1);  A = B = 1
       else:                            BL = BLd;  A = B = sqrt(lr_a/(dw·BL))
       if um:
           x_max = max_j |x_j|;  d_max = max_i |d_i|;  if x_max == 0 or d_max == 0: skip the sample
           d_val = g·d_max;  k = lr_a·x_max·d_val/dw
           if spec.ublm: BL = min(ceil(k), BLd);  A = B = sqrt(lr_a/(dw·BL))
           if k > BLd:   d_val = d_val·BLd/k              # x saturates at exactly 1, large d clip
           A = A·sqrt(x_max/d_val);  B = B·sqrt(d_val/x_max)

2. Probabilities: ``p_x(j) = |x_j|·B`` (x uses **B**), ``p_d(i) = |d_i|·A`` (d uses **A**), computed in
   float64; if ``spec.res > 0``: ``p = res·rint(p/res)`` (``rint`` half-to-even; with ``sto_round``:
   ``rint(p/res + U − 0.5)``, U = uniform(seed, offset, Stream.PROB_ROUND, a=j (x) or i (d), b=b,
   draw=0 (x) or 1 (d))); finally rounded to float32. p > 1 fires in every slot (saturation).

3. Counts ``n_ij`` (>= 0) and signs:
   * MODE_PULSED: x-train slot k of column j fires iff
     ``uniform(seed, offset, Stream.X_TRAIN, a=j, b=b, draw=k) < p_x(j)`` (float32 compare); d-trains
     likewise with ``Stream.D_TRAIN``, a=i; ``n_ij = popcount(xbits_j & dbits_i)`` over the BL slots.
   * MODE_MEAN_COUNT: ``c_x = clip(rint(BL·p_x), 0, BL)``, ``c_d`` likewise,
     ``n_ij = rint((c_d / BL) · c_x)`` (float64, this order).
   * Sign: ``s_ij = sign(x_j)·sign(d_i)·sign(lr)·chop_in[j]·chop_out[i]``; s > 0 gives **down** pulses,
     s < 0 **up** pulses (all pulses of an element in one sample share the sign).

4. Pulses, per element, one at a time on ``w_dev = w_state + ref`` (float32; ``w_state`` is ``w_p`` with
   write noise, else ``w``): pulse number p (0-based within this sample) uses
   ``ξ = normal(seed, offset, Stream.PULSE_NOISE, a=i*I+j, b=b, draw=p)`` (not drawn when
   dw_min_std == 0), then ``devices.step.device_step`` (which clips after every pulse). After the
   sample, touched elements (n_ij > 0) store ``w_state = w_dev − ref``; with write noise the visible
   weight of touched elements is redrawn ``w = w_p + G_WRITE_NOISE·normal(seed, offset,
   Stream.WRITE_NOISE, a=i*I+j, b=b, draw=0)``.

4a. Aggregated pulses (``spec.aggregate``; MODE_PULSED and KIND_LINEAR devices only, ValueError
   otherwise). Steps 1-3 and the pulse counts returned are those of MODE_PULSED (same seed/offset, same
   counts); step 4 is replaced, vectorised over elements, by carrying the exact mean m and variance V of
   every element's conductance through all its pulses of the call (the per-pulse map is affine):
   ``m = w_dev, V = 0``; for each sample in batch order, elements with n_ij > 0 get
   ``(m, V) = devices.step.aggregate_moments(m, V, n_ij, up, ...)`` (a mean beyond a bound is clipped
   and its V reset to 0). After the last sample each touched element e = i*I+j draws ONE normal
   ``z = normal(seed, offset, Stream.PULSE_NOISE, a=e >> 2, b=0, draw=e & 3)`` (not drawn when
   dw_min_std == 0; e modulo 2**32 like every counter word; four consecutive elements share one Philox
   call — the cosine and sine of both word pairs, rng.normal's draws 0-3 —, so a vectorised kernel makes
   64 normals per 16-lane call; contract version 5): ``w_dev = clip(m + sqrt(V)·z, b_min, b_max)``,
   ``w_state = w_dev − ref``; with write noise the visible weight is redrawn once,
   ``w = w_p + G_WRITE_NOISE·normal(seed, offset, Stream.WRITE_NOISE, a=i*I+j, b=0, draw=0)`` (it is
   only read after the call, so one redraw has the distribution of the per-sample redraws). Exact in the first two moments (and noise-free devices
   exact up to float rounding); the shape is Gaussian and noisy excursions clip only at the end.
   With ``carry`` (an ``AggregateCarry``: the batched TT-family op) the moments start from and stay in
   the carry, and the finish happens when the carry's owner calls ``AggregateCarry.finish``.

5. MODE_EXPECTED (the theory papers' dynamic model, noise-free, vectorised over elements): with
   ``E[n_ij] = BL·min(p_x(j), 1)·min(p_d(i), 1)`` from the same scales (res applied as ``rint`` unless
   ``sto_round``, whose expectation is p itself), ``w_dev += E[n]·step_up(w_dev)`` for up elements and
   ``w_dev −= E[n]·step_down(w_dev)`` for down elements, then clipped. Without saturation
   ``E[n]·dw = |lr·x_j·d_i|``, so with Δ = −lr·x_j·d_i this is ``w += Δ·F(w) − |Δ|·G(w)`` with
   F = (q₊ + q₋)/2, G = (q₋ − q₊)/2, q± = step±/dw. With write noise, ``w = w_p`` afterwards.

Returns the per-element pulse count summed over the samples (float32; expected mode: the expectation).
"""

from __future__ import annotations

import math

import torch

from analogtrain.devices import params as P
from analogtrain.devices.step import aggregate_finish, aggregate_moments, device_step, step_magnitudes
from analogtrain.ops import MODE_EXPECTED, MODE_MEAN_COUNT, MODE_PULSED, UpdateSpec
from analogtrain.ops import rng as R

__all__ = ["pulsed_update_ref", "device_step", "update_scales", "slot_uniforms"]


def update_scales(
    lr_abs: float, dw: float, x_max: float, d_max: float, spec: UpdateSpec
) -> tuple[int, float, float]:
    """(BL, A, B) of one sample (step 1 of the module docstring); BL = 0 means "no update"."""
    if lr_abs == 0.0:
        return 0, 0.0, 0.0
    bld = int(spec.desired_bl)
    if spec.fixed_bl or spec.ublm:
        bl = bld
        a = b = math.sqrt(lr_abs / (dw * bl))
    elif dw * bld < lr_abs:
        bl = max(int(math.ceil(lr_abs / dw)), 1)
        a = b = 1.0
    else:
        bl = bld
        a = b = math.sqrt(lr_abs / (dw * bl))
    if not (spec.um or spec.ublm):
        return bl, a, b
    if x_max == 0.0 or d_max == 0.0:
        return 0, 0.0, 0.0
    d_val = spec.um_grad_scale * d_max
    k = lr_abs * x_max * d_val / dw
    if spec.ublm:
        bl = min(int(math.ceil(k)), bld)
        a = b = math.sqrt(lr_abs / (dw * bl))
    if k > bld:
        d_val = d_val * bld / k
    a = a * math.sqrt(x_max / d_val)
    b = b * math.sqrt(d_val / x_max)
    return bl, a, b


def slot_uniforms(
    seed: int, offset: int, stream: int, n: int, b: int, n_slots: int, device=None
) -> torch.Tensor:
    """(n, n_slots) float32: ``uniform(seed, offset, stream, a=row, b=b, draw=slot)`` for all rows/slots,
    using all four Philox words per block (identical to ``rng.uniform`` element by element)."""
    n_blocks = (n_slots + 3) // 4
    a = torch.arange(n, dtype=torch.int64, device=device).unsqueeze(1)
    blk = torch.arange(n_blocks, dtype=torch.int64, device=device).unsqueeze(0)
    c0, c1, c2, c3 = R._counters(a, b, stream, blk, offset, device)
    words = torch.stack(R.philox4x32(c0, c1, c2, c3, seed), dim=-1)  # (n, n_blocks, 4)
    return R.uniform_words(words.reshape(n, n_blocks * 4)[:, :n_slots])


def _probabilities(v: torch.Tensor, scale: float, spec: UpdateSpec, seed, offset, b, draw, expected=False):
    """float32 pulse probabilities |v|·scale with the ``res``/``sto_round`` discretisation (step 2)."""
    p = v.abs().to(torch.float64) * scale
    if spec.res > 0:
        q = p / spec.res
        if spec.sto_round and not expected:
            idx = torch.arange(v.numel(), dtype=torch.int64, device=v.device)
            u = R.uniform(seed, offset, R.Stream.PROB_ROUND, idx, b, draw, device=v.device).to(torch.float64)
            q = q + u - 0.5
        if not (spec.sto_round and expected):
            p = spec.res * torch.round(q)  # torch.round: half to even, like rint
    return p.to(torch.float32)


def _apply_pulses(w_dev, n, up, params, gparams, seed, offset, b, gidx):
    """Apply n[e] single pulses to each element e of ``w_dev`` (M,) in place, one pulse index at a time.

    n (M,) int64 counts, up (M,) bool, params (NP, M), gidx (M,) flat element indices i*I+j (the noise
    counter a). The noise of pulse p is ``rng.normal(seed, offset, PULSE_NOISE, gidx, b, p)``; one Philox
    call serves the four pulses of a block (p = 4m..4m+3), exactly as ``rng.normal`` computes them."""
    sigma = float(gparams[P.G_DW_MIN_STD].item())
    n_max = int(n.max().item()) if n.numel() else 0
    for m in range((n_max + 3) // 4):
        blk_idx = torch.nonzero(n > 4 * m, as_tuple=True)[0]  # elements with a pulse in this block
        words = None
        if sigma != 0.0:
            c = R._counters(gidx[blk_idx], b, R.Stream.PULSE_NOISE, m, offset, w_dev.device)
            words = R.philox4x32(*c, seed)
        for p in range(4 * m, min(4 * m + 4, n_max)):
            sel = n[blk_idx] > p
            idx = blk_idx[sel]
            xi = None
            if words is not None:
                k = p & 3
                first, second = (words[0], words[1]) if k < 2 else (words[2], words[3])
                xi = R.normal_words(first[sel], second[sel], use_sin=bool(k & 1))
            w_dev[idx] = device_step(w_dev[idx], up[idx], params[:, idx], gparams, xi)


@torch.no_grad()
def pulsed_update_ref(
    w: torch.Tensor,
    w_p: torch.Tensor | None,
    params: torch.Tensor,
    gparams: torch.Tensor,
    x: torch.Tensor,
    d: torch.Tensor,
    lr: float,
    dw: float,
    spec: UpdateSpec,
    seed: int,
    offset: int,
    chop_in: torch.Tensor | None = None,
    chop_out: torch.Tensor | None = None,
    carry: "AggregateCarry | None" = None,
) -> torch.Tensor:
    """Pulsed outer-product update ``W ← W − lr·Σ_b d_b x_bᵀ`` through the devices (module docstring).

    w (O, I) float32 and w_p (O, I) or None are updated in place; params (NP, O, I); gparams (NG,);
    x (B, I); d (B, O); chop_in (I,) / chop_out (O,) ±1 or None. Returns (O, I) float32 pulse counts.
    ``carry`` (aggregated mode only): the moments continue from, and stay in, this carry instead of being
    finished at the end of the call (``AggregateCarry``; w and w_p are then left untouched)."""
    O, I = w.shape
    dev = w.device
    pulses = torch.zeros(O, I, dtype=torch.float32, device=dev)
    lr = float(lr)
    mode = int(spec.mode)
    aggregate = bool(getattr(spec, "aggregate", False))
    if aggregate:
        if mode != MODE_PULSED:
            raise ValueError(f"aggregate (aggregated pulses) needs mode MODE_PULSED, got mode {mode}")
        kind = int(gparams[P.G_KIND].item())
        if kind != P.KIND_LINEAR:
            raise ValueError("aggregate (aggregated pulses) needs a linear-step family device "
                             f"(constant_step, linear_step, softbounds; KIND_LINEAR), got device kind {kind}")
    if lr == 0.0 or x.shape[0] == 0:
        return pulses
    if not dw > 0:
        raise ValueError(f"dw must be > 0, got {dw}")
    lr_abs = abs(lr)
    x = x.to(device=dev, dtype=torch.float32)
    d = d.to(device=dev, dtype=torch.float32)
    params = params.to(dev)
    gparams_dev = gparams  # scalars are read with .item(); kept on their own device
    flat_params = params.reshape(params.shape[0], O * I)
    ref = flat_params[P.P_REF]
    state = w_p if w_p is not None else w
    state_flat = state.view(-1)
    w_flat = w.view(-1)
    wn_std = float(gparams[P.G_WRITE_NOISE].item())
    all_idx = torch.arange(O * I, dtype=torch.int64, device=dev)

    sign_lr = 1.0 if lr > 0 else -1.0
    if carry is not None and not aggregate:
        raise ValueError("carry needs the aggregated mode (spec.aggregate)")
    if aggregate:  # step 4a: moments of every element's conductance through the call
        if carry is None:
            agg_m = state_flat + ref
            agg_v = torch.zeros_like(agg_m)
            agg_touched = torch.zeros(O * I, dtype=torch.bool, device=dev)
        else:
            agg_m, agg_v, agg_touched = carry.m, carry.v, carry.touched
    cin = None if chop_in is None else chop_in.to(device=dev, dtype=torch.float32)
    cout = None if chop_out is None else chop_out.to(device=dev, dtype=torch.float32)

    for b in range(x.shape[0]):
        xb, db = x[b], d[b]
        x_max = float(xb.abs().max().item()) if I else 0.0
        d_max = float(db.abs().max().item()) if O else 0.0
        bl, a_sc, b_sc = update_scales(lr_abs, dw, x_max, d_max, spec)
        if bl == 0:
            continue
        px = _probabilities(xb, b_sc, spec, seed, offset, b, 0, expected=mode == MODE_EXPECTED)  # x uses B
        pd = _probabilities(db, a_sc, spec, seed, offset, b, 1, expected=mode == MODE_EXPECTED)  # d uses A

        sx = torch.sign(xb) * sign_lr
        sd = torch.sign(db)
        if cin is not None:
            sx = sx * cin
        if cout is not None:
            sd = sd * cout
        s = torch.outer(sd, sx)  # (O, I) coincidence sign: > 0 -> down, < 0 -> up
        up = (s < 0).view(-1)

        if mode == MODE_EXPECTED:
            en = bl * torch.outer(pd.clamp(max=1.0), px.clamp(max=1.0))  # E[n_ij] with saturation
            en = torch.where(s != 0, en, torch.zeros_like(en)).view(-1)
            w_dev = state_flat + ref
            st_up, st_dn = step_magnitudes(w_dev, flat_params, gparams_dev)
            new = torch.where(up, w_dev + en * st_up, w_dev - en * st_dn)
            new = torch.minimum(torch.maximum(new, flat_params[P.P_BMIN]), flat_params[P.P_BMAX])
            if int(gparams[P.G_KIND].item()) != P.KIND_LINEAR:  # exp/pow skip devices with empty range
                rng = flat_params[P.P_BMAX] - flat_params[P.P_BMIN]
                new = torch.where(rng > 0, new, w_dev)
            touched = en > 0
            state_flat[touched] = new[touched] - ref[touched]
            if w_p is not None:
                w_flat[touched] = state_flat[touched]
            pulses += en.view(O, I)
            continue

        if mode == MODE_PULSED:
            ux = slot_uniforms(seed, offset, R.Stream.X_TRAIN, I, b, bl, device=dev)  # (I, BL)
            ud = slot_uniforms(seed, offset, R.Stream.D_TRAIN, O, b, bl, device=dev)  # (O, BL)
            xbits = (ux < px.unsqueeze(1)).to(torch.float32)
            dbits = (ud < pd.unsqueeze(1)).to(torch.float32)
            n = dbits @ xbits.T  # (O, I) popcount of coincidences (exact small integers)
        elif mode == MODE_MEAN_COUNT:
            cx = torch.clamp(torch.round(bl * px.to(torch.float64)), 0, bl)
            cd = torch.clamp(torch.round(bl * pd.to(torch.float64)), 0, bl)
            n = torch.round(torch.outer(cd / bl, cx)).to(torch.float32)
        else:
            raise ValueError(f"unknown update mode {mode}")
        n = torch.where(s != 0, n, torch.zeros_like(n)).view(-1)
        touched = n > 0
        if not bool(touched.any()):
            continue
        idx = all_idx[touched]
        if aggregate:
            agg_m[idx], agg_v[idx] = aggregate_moments(agg_m[idx], agg_v[idx], n[idx], up[idx],
                                                       flat_params[:, idx], gparams)
            agg_touched[idx] = True
            pulses += n.view(O, I)
            continue
        w_dev = state_flat[idx] + ref[idx]
        _apply_pulses(
            w_dev, n[idx].to(torch.int64), up[idx], flat_params[:, idx], gparams, seed, offset, b, idx
        )
        state_flat[idx] = w_dev - ref[idx]
        if w_p is not None:
            if wn_std > 0:
                xi = R.normal(seed, offset, R.Stream.WRITE_NOISE, idx, b, 0, device=dev)
                w_flat[idx] = state_flat[idx] + torch.tensor(wn_std, dtype=torch.float32, device=dev) * xi
            else:
                w_flat[idx] = state_flat[idx]
        pulses += n.view(O, I)
    if aggregate and carry is None and bool(agg_touched.any()):  # one draw per touched element at the end
        _finish_elements(w, w_p, flat_params, gparams, agg_m, agg_v, all_idx[agg_touched], seed, offset)
    return pulses


def _finish_elements(w, w_p, flat_params, gparams, agg_m, agg_v, idx, seed, offset) -> None:
    """Step 4a's finish of the elements ``idx`` (flat, int64) from their moments: one normal each,
    ``normal(seed, offset, PULSE_NOISE, a = e >> 2, b = 0, draw = e & 3)``, clip, store the state and
    the visible weight (write noise: ``WRITE_NOISE`` at (offset, a = e, b = 0, draw 0))."""
    dev = w.device
    state_flat = (w_p if w_p is not None else w).view(-1)
    ref = flat_params[P.P_REF]
    z = None
    if float(gparams[P.G_DW_MIN_STD].item()) != 0.0:
        e32 = idx & 0xFFFFFFFF  # the kernels' uint32 flat index
        z = R.normal(seed, offset, R.Stream.PULSE_NOISE, e32 >> 2, 0, e32 & 3, device=dev)
    state_flat[idx] = aggregate_finish(agg_m[idx], agg_v[idx], flat_params[:, idx], gparams, z) - ref[idx]
    if w_p is not None:
        w_flat = w.view(-1)
        wn_std = float(gparams[P.G_WRITE_NOISE].item())
        if wn_std > 0:
            xi = R.normal(seed, offset, R.Stream.WRITE_NOISE, idx, 0, 0, device=dev)
            w_flat[idx] = state_flat[idx] + torch.tensor(wn_std, dtype=torch.float32, device=dev) * xi
        else:
            w_flat[idx] = state_flat[idx]


class AggregateCarry:
    """Moments of an (O, I) tile carried across several aggregated ``pulsed_update_ref`` calls (the
    batched TT-family schedule, ``reference_chopped.chopped_update_snapshots_ref``): an element is
    finished — one normal, clip, store — only when ``finish`` is called for it, not at every call's end.

    m, v      (O·I,) float32 mean and variance of each element's conductance (w_dev = state + ref)
    touched   (O·I,) bool: pulsed since its last finish (only these are finished and drawn)
    Untouched elements keep m = state + ref, v = 0, so the tile's memory is their exact value."""

    def __init__(self, w: torch.Tensor, w_p: torch.Tensor | None, params: torch.Tensor):
        O, I = w.shape
        self.flat_params = params.to(w.device).reshape(params.shape[0], O * I)
        state = (w_p if w_p is not None else w).reshape(-1)
        self.m = state + self.flat_params[P.P_REF]
        self.v = torch.zeros_like(self.m)
        self.touched = torch.zeros(O * I, dtype=torch.bool, device=w.device)

    @torch.no_grad()
    def finish(self, w, w_p, gparams, seed: int, offset: int, mask: torch.Tensor | None = None) -> None:
        """Finish the touched elements (of ``mask``, (O·I,) bool; all when None) with the draws of op-call
        counter ``offset``; they restart from their stored value (m = state + ref, v = 0)."""
        sel = self.touched if mask is None else self.touched & mask
        if not bool(sel.any()):
            return
        idx = torch.nonzero(sel).view(-1)
        _finish_elements(w, w_p, self.flat_params, gparams, self.m, self.v, idx, seed, offset)
        state_flat = (w_p if w_p is not None else w).view(-1)
        self.m[idx] = state_flat[idx] + self.flat_params[P.P_REF][idx]
        self.v[idx] = 0.0
        self.touched[idx] = False
