"""IO periphery of an analog matrix-vector product (forward, backward and transfer reads).

Semantics: aihwkit's ``IOParameters`` / ``rpu_forward_backward_pass.cpp`` (``shared/reference/
aihwkit-semantics.md`` §4). Per sample (one row of ``x``) and per pass::

    if is_perfect:  y = out_scale · M x                                   (nothing else)
    α   = NM(x)           none → 1; abs_max → max|x| (capped at nm_thres > 0); max → max x;
                          constant → nm_thres (or 1)
    red = 1               (iterative bound management doubles it, forward only)
    s   = (1/α)/red                                        float32, exactly as the C++ evaluates it
    x'  = rint(x·s / inp_bin)·inp_bin                      DAC, half-to-even (or stochastic rounding)
    x'  = clip(x', ±inp_bound) + inp_noise·ξ;   x' < 0 → x'·(1 − inp_asymmetry)
    y'  = M x'  (+ weight noise: additive_constant w_noise·‖x'‖₂·ξ_i, pcm_read w_noise·√(Σ_j|M_ij|x'_j²)·ξ_i)
    y' < 0 → y'·(1 − out_asymmetry);   y' += out_noise·ξ
    y'  = rint(y'/out_bin)·out_bin                         ADC (or stochastic rounding)
    exceeded = any(y' > out_bound) or (bm_test_negative_bound and any(y' < −out_bound))
    y'  = clip(y', ±out_bound)
    BM iterative: while exceeded and not (red > max_bm_factor or red > max_bm_res/inp_bin):
                  red ← 2·red and redo the pass for that sample with fresh noise
    y   = y' · out_scale · α · red

Bins are relative to the full range: ``inp_bin = inp_res·2·inp_bound`` (1/63 by default),
``out_bin = out_res·2·out_bound`` (24/510); a resolution > 1 means a number of steps (bin = 2·bound/res),
≤ 0 switches the quantiser off. Because the ADC and the noise act in normalised units, the output noise
seen in real units is ``out_noise·α·red`` — with abs-max NM it scales with max|x| of that sample.

Not modelled (no ``IOConfig`` field): per-output fixed variations (``out_noise_std``, output
non-linearity, voltage offsets), IR drop, and the ``mv_type`` modes other than aihwkit's ``ONE_PASS``.

Random numbers come from the Philox contract (``analogtrain.ops.rng``) with the caller's seed and an
IO-call offset, so CPU and GPU draw the same noise. Counter layout of one IO call (``c3`` = offset)::

    stream   FWD_NOISE (forward, first pass), FWD_NOISE_BM (forward, bound-management repetitions),
             BWD_NOISE (backward), READ_NOISE (transfer reads)
    a        output index i (output noise, weight noise, output rounding) or input index j (input
             noise, input rounding)
    b        sample index inside the call (row of x)
    draw     kind + 16·(repetition − 1) on FWD_NOISE_BM: 0 output noise, 1 weight noise (the
             Box–Muller pair of draw 0), 2 input noise, 4 input rounding (uniform), 8 output rounding
"""

from __future__ import annotations

import functools

import torch

from analogtrain import ops
from analogtrain.ops.rng import Stream
from analogtrain.tiles.config import IOConfig

__all__ = ["analog_mvm", "forward_io", "backward_io", "read_io", "io_bins"]

# draw indices of one pass inside an (a, b, stream) sequence (see the module docstring)
_DRAW_OUT_NOISE = 0
_DRAW_W_NOISE = 1
_DRAW_INP_NOISE = 2
_DRAW_INP_ROUND = 4
_DRAW_OUT_ROUND = 8
_DRAWS_PER_PASS = 16

_F32 = torch.float32


@functools.lru_cache(maxsize=64)
def _f32(v: float) -> float:
    """``v`` rounded to float32 (as a Python float): the value a float32 tensor op uses for a scalar."""
    return float(torch.tensor(v, dtype=_F32))


@functools.lru_cache(maxsize=64)
def _bin(res: float, bound: float) -> float:
    """Quantiser bin width (float32 value as a Python float) relative to the full range ±bound."""
    if res <= 0:
        return 0.0
    r = 1.0 / res if res > 1.0 else res  # res > 1: number of steps
    # float32 arithmetic as the C++: bin = float32(res) * 2 (* bound, exact for bound = 1)
    return float(torch.tensor(r, dtype=_F32) * torch.tensor(2.0 * bound, dtype=_F32))


def io_bins(io: IOConfig) -> tuple[float, float]:
    """(inp_bin, out_bin) of an IO config; 0.0 where the quantiser is off or the range unbounded."""
    out_bin = _bin(float(io.out_res), float(io.out_bound)) if io.out_bound > 0 else 0.0
    return _bin(float(io.inp_res), float(io.inp_bound)), out_bin


@functools.lru_cache(maxsize=16)
def _rows(n: int, device: torch.device) -> torch.Tensor:
    """arange(n) int64 on ``device``: the sample indices of a pass over the whole batch (read-only)."""
    return torch.arange(n, dtype=torch.int64, device=device)


class _Draws:
    """Philox draws for one IO call: fixed seed, offset and stream; ``b`` = sample indices in the call
    (row numbers < B, so they are their own 32-bit counter word).

    The grids come from ``analogtrain.ops.random_grid``: the compiled CPU kernel when it is active
    (same numbers as ``analogtrain.ops.rng``: uniforms exactly, normals up to a float ulp with
    probability ~1e-8), else the torch emulation of ``rng`` (reference backend, CUDA tensors). Each
    grid is a fresh tensor (callers scale it in place)."""

    __slots__ = ("seed", "offset", "stream", "device")

    def __init__(self, seed: int, offset: int, stream: int, device):
        self.seed, self.offset, self.stream, self.device = int(seed), int(offset), int(stream), device

    def normal(self, n_a: int, b_idx: torch.Tensor, draw: int) -> torch.Tensor:
        """(len(b_idx), n_a) standard normals (Box–Muller of words (r0,r1) or (r2,r3))."""
        return ops.random_grid(self.seed, self.offset, self.stream, n_a, b_idx, draw, normal=True, device=self.device)

    def uniform(self, n_a: int, b_idx: torch.Tensor, draw: int) -> torch.Tensor:
        """(len(b_idx), n_a) uniforms in (0, 1)."""
        return ops.random_grid(self.seed, self.offset, self.stream, n_a, b_idx, draw, normal=False, device=self.device)


def _quantise_(v: torch.Tensor, bin_: float, sto: bool, draws: _Draws, b_idx, draw: int) -> torch.Tensor:
    """In place: v ← rint(v/bin)·bin (half-to-even), or stochastic rounding floor(v/bin + u)·bin.

    The same float32 operations, in the same order, as the out-of-place ``q = v / bin; ...; q * bin``
    (an in-place op rounds exactly as its out-of-place twin), without a temporary per step."""
    if bin_ <= 0:
        return v
    v.div_(bin_)
    if sto:
        v.add_(draws.uniform(v.shape[1], b_idx, draw)).floor_()
    else:
        v.round_()  # torch.round rounds half to even, like rintf
    return v.mul_(bin_)


def _noise_management(x: torch.Tensor, io: IOConfig, nm: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(α (B, 1) float32 or None for α ≡ 1, zero (B,) bool or None): the NM scale of each sample with
    α <= 0 replaced by 1, and — when NM is on and there is no input noise — which samples have α <= 0
    and therefore read exactly 0 (None when there is none: the common case, decided with one test)."""
    B = x.shape[0]
    if nm == "none":
        return None, None
    if nm == "constant":  # α = nm_thres (or 1) > 0 for every sample: never a zero sample
        return torch.full((B, 1), io.nm_thres if io.nm_thres > 0 else 1.0, dtype=_F32, device=x.device), None
    if nm == "abs_max":
        if x.shape[1]:
            alpha = x.abs().amax(dim=1, keepdim=True)
        else:
            alpha = torch.zeros(B, 1, dtype=_F32, device=x.device)
        if io.nm_thres > 0:
            alpha = alpha.clamp(max=io.nm_thres)
    elif nm == "max":
        alpha = x.amax(dim=1, keepdim=True)
    else:
        raise ValueError(f"unknown noise_management '{nm}'")
    if B == 0 or float(alpha.amin()) > 0:  # every α > 0 (amin propagates NaN: NaN > 0 is False)
        return alpha, None
    # some α <= 0 (or NaN: not "zero", read with α = 1)
    zero = (alpha <= 0).flatten() if io.inp_noise == 0 else None
    return torch.where(alpha > 0, alpha, torch.ones_like(alpha)), zero


def _input_args(io: IOConfig, inp_bin: float) -> dict:
    """The DAC / input-noise arguments of ``ops.io_input`` for ``io``."""
    return {"bin": inp_bin, "sto": io.inp_sto_round, "bound": io.inp_bound, "noise": io.inp_noise,
            "asym": io.inp_asymmetry}


def analog_mvm(
    W: torch.Tensor,
    x: torch.Tensor,
    io: IOConfig,
    *,
    seed: int,
    offset: int,
    stream: int = Stream.FWD_NOISE,
    bm_stream: int = Stream.FWD_NOISE_BM,
    transposed: bool = False,
    noise_management: str | None = None,
    bound_management: str | None = None,
) -> torch.Tensor:
    """One analog MVM through the periphery ``io`` (see the module docstring for the algorithm).

    W: (O, I) the tile's weight; x: (B, I) -> y: (B, O), or with ``transposed`` x: (B, O) -> y: (B, I)
    (the backward pass reads the same array through its transpose). ``noise_management`` /
    ``bound_management`` override the config (the backward pass forces BM off, transfer reads force
    both off). Works without autograd (call under ``torch.no_grad`` or on detached tensors).

    Speed (this is the hot path of every training step; a torch op costs a few µs of dispatch, more when
    the pulsed update has just flushed the caches): the first pass runs on the whole batch without
    gathering rows unless a sample is skipped, every elementwise step works in place on the pass's own
    buffer, steps that are exact identities are skipped (×1 and /1 for α ≡ 1, red = 1 and out_scale = 1;
    the output clip when no entry exceeds the bound), and the bound-management bookkeeping runs only when
    some sample clipped. Every remaining float32 operation is the one of the formula in the module
    docstring, in the same order, so the result is bit-for-bit that of the plain evaluation
    (``tests/test_io_speed_invariance.py`` checks this against a straightforward implementation).
    With the compiled CPU kernel (``ops.io_fused``) the steps before and after the matrix product run
    as two fused ops, one pass over each row instead of one torch op and one tensor pass per step:
    ``ops.io_input`` (NM scales — abs_max / max, when every α > 0 —, DAC, clip, input noise and
    asymmetry) and ``ops.io_output_`` (weight noise, asymmetry, output noise, ADC, bound test, clip,
    denormalisation), with the same float32 operations in the same order (the same test, both backends).
    """
    in_dtype = x.dtype
    M = W.t() if transposed else W  # (n_out, n_in)
    if M.dtype != _F32:
        M = M.to(_F32)
    if x.dtype != _F32:
        x = x.to(_F32)
    Mt = M.t()  # (n_in, n_out): y = v @ Mt
    if io.is_perfect:
        y = x @ Mt
        if io.out_scale != 1.0:
            y = io.out_scale * y
        return y if in_dtype == _F32 else y.to(in_dtype)

    nm = io.noise_management if noise_management is None else noise_management
    iterative = (io.bound_management if bound_management is None else bound_management) == "iterative"
    B, n_out = x.shape[0], M.shape[0]
    dev = x.device
    fused = ops.io_fused(dev)
    inp_bin, out_bin = io_bins(io)
    v0 = None  # the first pass's DAC inputs, when io_input computed them with the NM scales
    if fused and nm in ("abs_max", "max") and B and x.shape[1]:
        all_rows = _rows(B, dev)
        v0, alpha = ops.io_input(x, None, nm=nm, nm_thres=io.nm_thres, **_input_args(io, inp_bin),
                                 seed=seed, offset=offset, stream=stream, b_idx=all_rows,
                                 round_draw=_DRAW_INP_ROUND, noise_draw=_DRAW_INP_NOISE)
        zero = None
        if alpha is None:  # some α <= 0 or NaN: the general path
            v0 = None
            alpha, zero = _noise_management(x, io, nm)
    else:
        alpha, zero = _noise_management(x, io, nm)  # (B, 1) or None (≡ 1); (B,) bool or None
    if B == 0:
        return torch.zeros(0, n_out, dtype=in_dtype, device=dev)

    ob = float(io.out_bound)
    ob32 = _f32(ob) if ob > 0 else 0.0  # the bound as the float32 comparisons and the clip see it
    first = _Draws(seed, offset, stream, dev)
    rep_draws = _Draws(seed, offset, bm_stream, dev)
    w_noise_type = io.w_noise_type if io.w_noise > 0 else "none"
    abs_Mt = Mt.abs() if w_noise_type == "pcm_read" else None
    # bound test of a pass whose outputs may trigger a repetition: 2 = |y| > ob, 1 = y > ob, 0 = none
    test = (2 if io.bm_test_negative_bound else 1) if (iterative and ob > 0) else 0

    def w_noise_amp(v: torch.Tensor) -> torch.Tensor | None:
        """(n, 1) amplitude of the weight (read) noise of the pass with DAC inputs v, or None."""
        if w_noise_type == "none":
            return None
        if w_noise_type == "additive_constant":
            return io.w_noise * v.norm(dim=1, keepdim=True)
        return io.w_noise * torch.sqrt((v * v) @ abs_Mt)  # pcm_read: device noise ∝ sqrt(|w|), in quadrature

    def one_pass(xs: torch.Tensor, s: torch.Tensor | None, idx: torch.Tensor, rep: int) -> torch.Tensor:
        """One read of the rows ``xs`` (sample indices ``idx``) with input scale ``s`` = (1/α)/red per row
        ((n, 1); None: 1): the normalised, quantised output (n, n_out), not yet clipped to ±out_bound."""
        draws = first if rep == 0 else rep_draws
        base = 0 if rep == 0 else _DRAWS_PER_PASS * (rep - 1)
        v = xs * s if s is not None else xs.clone()  # x·1 = x exactly
        _quantise_(v, inp_bin, io.inp_sto_round, draws, idx, base + _DRAW_INP_ROUND)
        v.clamp_(-io.inp_bound, io.inp_bound)
        if io.inp_noise > 0:  # v + (σ·ξ): the product is rounded first (no fused multiply-add)
            v.add_(draws.normal(v.shape[1], idx, base + _DRAW_INP_NOISE).mul_(io.inp_noise))
        if io.inp_asymmetry != 0:
            v = torch.where(v < 0, v * (1.0 - io.inp_asymmetry), v)
        y = v @ Mt
        amp = w_noise_amp(v)
        if amp is not None:
            y.add_(draws.normal(n_out, idx, base + _DRAW_W_NOISE).mul_(amp))  # y + amp·ξ (ξ·amp = amp·ξ)
        if io.out_asymmetry != 0:
            y = torch.where(y < 0, y * (1.0 - io.out_asymmetry), y)
        if io.out_noise > 0:
            y.add_(draws.normal(n_out, idx, base + _DRAW_OUT_NOISE).mul_(io.out_noise))
        return _quantise_(y, out_bin, io.out_sto_round, draws, idx, base + _DRAW_OUT_ROUND)

    def exceeded_rows(y: torch.Tensor) -> torch.Tensor:
        """(n,) bool: any(y > ob) or (test 2 and any(y < −ob)) per row, before the clip
        (|y| > ob ⟺ y > ob or y < −ob; NaN compares False either way)."""
        return ((y.abs() if test == 2 else y) > ob).any(dim=1)

    def denormalise_(y: torch.Tensor, a: torch.Tensor | None, r: torch.Tensor | None) -> torch.Tensor:
        """In place: y ← y·out_scale·α·red (left to right; the ×1 steps are exact and skipped)."""
        if io.out_scale != 1.0:
            y.mul_(io.out_scale)
        if a is not None:
            y.mul_(a)
        if r is not None:
            y.mul_(r)
        return y

    def read_torch(xs, s, idx, rep, a, r):
        """``read`` with torch ops: ``one_pass``, then the bound test, the clip and the denormalisation.
        One reduction decides the common case: nothing beyond ±ob → no clip (an identity), no test."""
        y = one_pass(xs, s, idx, rep)
        exceeded = None
        if ob > 0 and not test:
            y.clamp_(-ob, ob)
        elif ob > 0:
            lo, hi = (float(t) for t in torch.aminmax(y))
            if lo != lo or hi != hi:  # NaN somewhere: the element-wise test and clip, as written
                exceeded = exceeded_rows(y)
                y.clamp_(-ob, ob)
            elif hi > ob32 or lo < -ob32:
                if hi > ob32 or (test == 2 and lo < -ob32):
                    exceeded = exceeded_rows(y)
                y.clamp_(-ob, ob)
        return denormalise_(y, a, r), exceeded

    def read_fused(xs, s, idx, rep, a, r, v=None):
        """``read`` with the compiled CPU kernel: the steps before and after ``v @ Mt`` as two fused ops
        (``ops.io_input`` / ``ops.io_output_``, the same float32 operations in the same order); ``v``:
        the pass's DAC inputs when ``io_input`` already made them (with the NM scales)."""
        strm = stream if rep == 0 else bm_stream
        base = 0 if rep == 0 else _DRAWS_PER_PASS * (rep - 1)
        if v is None:
            v, _ = ops.io_input(xs, s, **_input_args(io, inp_bin), seed=seed, offset=offset, stream=strm,
                                b_idx=idx, round_draw=base + _DRAW_INP_ROUND,
                                noise_draw=base + _DRAW_INP_NOISE)
        y = v @ Mt
        exceeded, n_exceeded = ops.io_output_(
            y, amp=w_noise_amp(v), asym=io.out_asymmetry, noise=io.out_noise, bin=out_bin,
            sto=io.out_sto_round, bound=ob if ob > 0 else 0.0, test=test, scale=io.out_scale, alpha=a, red=r,
            seed=seed, offset=offset, stream=strm, b_idx=idx, w_draw=base + _DRAW_W_NOISE,
            noise_draw=base + _DRAW_OUT_NOISE, round_draw=base + _DRAW_OUT_ROUND)
        return y, (exceeded if n_exceeded else None)

    # read(xs, s, idx, rep, a, r) -> (y, exceeded): one pass over the rows xs (samples idx, repetition rep,
    # input scale s), clipped to ±ob and denormalised by out_scale·a·r; exceeded (n,) bool: the rows whose
    # output passed the bound before the clip (bound test on), or None when there is none
    read = read_fused if fused else read_torch

    # --- first pass: every sample that reads (all of them unless some are exactly zero) -------------
    if zero is not None and bool(zero.any()):
        idx = torch.nonzero(~zero).flatten()
        y = torch.zeros(B, n_out, dtype=_F32, device=dev)
        if idx.numel() == 0:
            return y if in_dtype == _F32 else y.to(in_dtype)
        a = alpha[idx]
        y[idx], exceeded = read(x[idx], torch.reciprocal(a), idx, 0, a, None)  # 1/α (= (1/α)/red, red = 1)
    elif v0 is not None:  # the fused first pass whose DAC inputs io_input made with the NM scales
        idx = all_rows
        y, exceeded = read_fused(x, None, idx, 0, alpha, None, v=v0)
    else:
        idx = _rows(B, dev)
        a = alpha
        y, exceeded = read(x, None if a is None else torch.reciprocal(a), idx, 0, a, None)
    if exceeded is None:
        return y if in_dtype == _F32 else y.to(in_dtype)

    # --- iterative bound management: repeat the samples that clipped with red doubled --------------
    max_red_res = io.max_bm_res / inp_bin if inp_bin > 0 else float("inf")
    ones = torch.ones(B, 1, dtype=_F32, device=dev)
    alpha = ones if alpha is None else alpha
    red = ones.clone()
    rep = 0
    while exceeded is not None:
        r = red[idx]
        # the last pass is accepted even if it still clips: stop once red passed either limit
        retry = exceeded & ~((r > io.max_bm_factor) | (r > max_red_res)).flatten()
        idx = idx[retry]
        if not idx.numel():
            break
        red[idx] = red[idx] * 2.0
        rep += 1
        r = red[idx]
        a = alpha[idx]
        y[idx], exceeded = read(x[idx], torch.reciprocal(a) / r, idx, rep, a, r)  # s = (1/α)/red
    return y if in_dtype == _F32 else y.to(in_dtype)


def forward_io(W, x, io: IOConfig, *, seed: int, offset: int) -> torch.Tensor:
    """Forward read ``y = W x`` through ``io``: x (B, I) -> (B, O), with its NM and BM."""
    return analog_mvm(W, x, io, seed=seed, offset=offset, stream=Stream.FWD_NOISE)


def backward_io(W, d, io: IOConfig, *, seed: int, offset: int) -> torch.Tensor:
    """Backward read ``g = Wᵀ d`` through ``io``: d (B, O) -> (B, I); NM on d, bound management off."""
    return analog_mvm(W, d, io, seed=seed, offset=offset, stream=Stream.BWD_NOISE, transposed=True,
                      bound_management="none")


def read_io(W, x, io: IOConfig, *, seed: int, offset: int, transposed: bool = False) -> torch.Tensor:
    """Transfer read (TT family): ``io`` with noise and bound management forced off (§3.0, §4.4).

    x (B, I) -> (B, O) (column reads with one-hot x), or ``transposed`` x (B, O) -> (B, I) (row reads)."""
    return analog_mvm(W, x, io, seed=seed, offset=offset, stream=Stream.READ_NOISE, transposed=transposed,
                      noise_management="none", bound_management="none")
