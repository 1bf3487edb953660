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


def _bin(res: float, bound: float) -> float:
    """Quantiser bin width (float32 value as a Python float) relative to the full range ±bound."""
    if res <= 0:
        return 0.0
    r = 1.0 / res if res > 1.0 else res  # res > 1: number of steps
    # float32 arithmetic as the C++: bin = float32(res) * 2 (* bound, exact for bound = 1)
    return float(torch.tensor(r, dtype=_F32) * torch.tensor(2.0 * bound, dtype=_F32))


def io_bins(io: IOConfig) -> tuple[float, float]:
    """(inp_bin, out_bin) of an IO config; 0.0 where the quantiser is off or the range unbounded."""
    out_bin = _bin(io.out_res, io.out_bound) if io.out_bound > 0 else 0.0
    return _bin(io.inp_res, io.inp_bound), out_bin


class _Draws:
    """Philox draws for one IO call: fixed seed, offset and stream; ``b`` = global sample indices.

    The grids come from ``analogtrain.ops.random_grid``: the compiled CPU kernel when it is active
    (same numbers as ``analogtrain.ops.rng``: uniforms exactly, normals up to a float ulp with
    probability ~1e-8), else the torch emulation of ``rng`` (reference backend, CUDA tensors)."""

    def __init__(self, seed: int, offset: int, stream: int, device):
        self.seed, self.offset, self.stream, self.device = int(seed), int(offset), int(stream), device

    def normal(self, n_a: int, b_idx: torch.Tensor, draw: int) -> torch.Tensor:
        """(len(b_idx), n_a) standard normals (Box–Muller of words (r0,r1) or (r2,r3))."""
        return ops.random_grid(self.seed, self.offset, self.stream, n_a, b_idx & 0xFFFFFFFF, draw, normal=True,
                               device=self.device)

    def uniform(self, n_a: int, b_idx: torch.Tensor, draw: int) -> torch.Tensor:
        """(len(b_idx), n_a) uniforms in (0, 1)."""
        return ops.random_grid(self.seed, self.offset, self.stream, n_a, b_idx & 0xFFFFFFFF, draw, normal=False,
                               device=self.device)


def _quantise(v: torch.Tensor, bin_: float, sto: bool, draws: _Draws | None, b_idx, draw: int):
    """rint(v/bin)·bin (half-to-even), or stochastic rounding floor(v/bin + u)·bin."""
    if bin_ <= 0:
        return v
    q = v / bin_
    if sto:
        q = torch.floor(q + draws.uniform(v.shape[1], b_idx, draw))
    else:
        q = torch.round(q)  # torch.round rounds half to even, like rintf
    return q * bin_


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
    """
    in_dtype = x.dtype
    M = (W.t() if transposed else W).to(_F32)  # (n_out, n_in)
    x = x.to(_F32)
    if io.is_perfect:
        return (io.out_scale * (x @ M.t())).to(in_dtype)

    nm = io.noise_management if noise_management is None else noise_management
    bm = io.bound_management if bound_management is None else bound_management
    B, n_out = x.shape[0], M.shape[0]
    dev = x.device

    # --- noise management: α per sample -------------------------------------------------------
    if nm == "abs_max":
        alpha = x.abs().amax(dim=1) if x.shape[1] else torch.zeros(B, dtype=_F32, device=dev)
        if io.nm_thres > 0:
            alpha = alpha.clamp(max=io.nm_thres)
    elif nm == "max":
        alpha = x.amax(dim=1)
    elif nm == "constant":
        alpha = torch.full((B,), io.nm_thres if io.nm_thres > 0 else 1.0, dtype=_F32, device=dev)
    elif nm == "none":
        alpha = torch.ones(B, dtype=_F32, device=dev)
    else:
        raise ValueError(f"unknown noise_management '{nm}'")
    # a sample with α <= 0 under NM gives exactly 0 unless input noise would make it non-zero
    zero = torch.zeros(B, dtype=torch.bool, device=dev)
    if nm != "none" and io.inp_noise == 0:
        zero = alpha <= 0
    alpha = torch.where(alpha > 0, alpha, torch.ones_like(alpha))

    inp_bin, out_bin = io_bins(io)
    ob = float(io.out_bound)
    max_red_res = io.max_bm_res / inp_bin if inp_bin > 0 else float("inf")
    first = _Draws(seed, offset, stream, dev)
    rep_draws = _Draws(seed, offset, bm_stream, dev)
    need_abs_M = io.w_noise > 0 and io.w_noise_type == "pcm_read"
    abs_M = M.abs() if need_abs_M else None

    def one_pass(idx: torch.Tensor, red: torch.Tensor, rep: int):
        draws = first if rep == 0 else rep_draws
        base = 0 if rep == 0 else _DRAWS_PER_PASS * (rep - 1)
        s = (1.0 / alpha[idx]) / red  # float32, (1/α)/red as the C++ does
        v = x[idx] * s[:, None]
        v = _quantise(v, inp_bin, io.inp_sto_round, draws, idx, base + _DRAW_INP_ROUND)
        v = v.clamp(-io.inp_bound, io.inp_bound)
        if io.inp_noise > 0:
            v = v + io.inp_noise * draws.normal(v.shape[1], idx, base + _DRAW_INP_NOISE)
        if io.inp_asymmetry != 0:
            v = torch.where(v < 0, v * (1.0 - io.inp_asymmetry), v)
        y = v @ M.t()
        if io.w_noise > 0 and io.w_noise_type != "none":
            if io.w_noise_type == "additive_constant":
                amp = io.w_noise * v.norm(dim=1, keepdim=True)
            else:  # pcm_read: read noise of each device ∝ sqrt(|w|), summed in quadrature
                amp = io.w_noise * torch.sqrt((v * v) @ abs_M.t())
            y = y + amp * draws.normal(n_out, idx, base + _DRAW_W_NOISE)
        if io.out_asymmetry != 0:
            y = torch.where(y < 0, y * (1.0 - io.out_asymmetry), y)
        if io.out_noise > 0:
            y = y + io.out_noise * draws.normal(n_out, idx, base + _DRAW_OUT_NOISE)
        y = _quantise(y, out_bin, io.out_sto_round, draws, idx, base + _DRAW_OUT_ROUND)
        if ob > 0:
            exceeded = (y > ob).any(dim=1)
            if io.bm_test_negative_bound:
                exceeded |= (y < -ob).any(dim=1)
            y = y.clamp(-ob, ob)
        else:
            exceeded = torch.zeros(y.shape[0], dtype=torch.bool, device=dev)
        return y, exceeded

    y = torch.zeros(B, n_out, dtype=_F32, device=dev)
    red = torch.ones(B, dtype=_F32, device=dev)
    idx = torch.nonzero(~zero).flatten()
    rep = 0
    while idx.numel():
        r = red[idx]
        y_idx, exceeded = one_pass(idx, r, rep)
        y[idx] = y_idx * io.out_scale * alpha[idx][:, None] * r[:, None]
        if bm != "iterative":
            break
        # the last pass is accepted even if it still clips: stop once red passed either limit
        retry = exceeded & ~((r > io.max_bm_factor) | (r > max_red_res))
        idx = idx[retry]
        red[idx] = red[idx] * 2.0
        rep += 1
    return y.to(in_dtype)


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
