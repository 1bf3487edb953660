"""Counter-based random numbers (Philox4x32-10), the RNG contract shared by every tile op.

Why counter-based: a random number is a pure function of ``(seed, counter)``, so the pure-torch
reference (this module), the C++ CPU kernel and the CUDA kernel (``csrc/philox.h``) draw *the same*
numbers for the same seed and offset, whatever the thread layout. Kernels therefore hold no RNG state:
the tile owns an integer ``offset`` that advances by one per op call, and checkpoints capture it.

Counter layout (the contract; ``csrc/philox.h`` must match it word for word)::

    key     = (seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF)
    counter = (c0 = a,                          # usually an element index (row, column or flat)
               c1 = (stream << 24) | block,     # stream id (8 bit) and a 24-bit block index
               c2 = b,                          # usually the sample index inside the op call
               c3 = offset & 0xFFFFFFFF)        # the tile's op-call counter

One Philox call returns four 32-bit words ``r0..r3``. Draw ``k`` of a ``(a, b, stream)`` sequence uses
``block = k // 4`` and word ``k % 4``.

* uniform: ``u = ((r >> 8) + 0.5) * 2**-24``: a float32 in (0, 1), exactly representable, identical in
  C++ and torch.
* normal (Box–Muller in float64, rounded to float32): words (r0, r1) give normals k%4 = 0, 1 and
  (r2, r3) give k%4 = 2, 3:
  ``z0 = sqrt(-2 ln u0) cos(2π u1)``, ``z1 = sqrt(-2 ln u0) sin(2π u1)`` with u from the rule above
  evaluated in double precision.

Streams (8-bit ids; one per purpose so no two purposes ever share a number) are listed in ``Stream``.
"""

from __future__ import annotations

import enum
import math

import torch

__all__ = ["Stream", "philox4x32", "uniform", "normal", "uniform_words", "normal_words"]

_M0 = 0xD2511F53
_M1 = 0xCD9E8D57
_W0 = 0x9E3779B9
_W1 = 0xBB67AE85
_MASK32 = 0xFFFFFFFF


class Stream(enum.IntEnum):
    """Stream ids of the counter layout (``c1 >> 24``). Append only; never renumber."""

    X_TRAIN = 1  # pulse-train slots of the x (input) side, a = column j, b = sample, draw = slot
    D_TRAIN = 2  # pulse-train slots of the d (error) side, a = row i, b = sample, draw = slot
    PULSE_NOISE = 3  # cycle-to-cycle noise, a = flat element i*in+j, b = sample, draw = pulse number
    WRITE_NOISE = 4  # write-noise redraw, a = flat element, b = sample (draw 0)
    PROB_ROUND = 5  # stochastic rounding of pulse probabilities (sto_round), a = element, b = sample
    CHOPPER = 6  # chopper flips, a = column/row, b = read event
    TRANSFER_NOISE = 7  # reserved for fused transfer kernels
    DTOD = 8  # device-to-device sampling at construction, a = flat element, draw = parameter
    SET_NOISE = 9  # write noise redrawn for all elements by set_weights (b = 0) and after decay /
    #               diffusion (b = 1), a = flat element, offset = the array's pulsed-update counter then
    DIFFUSION = 10  # device diffusion once per mini-batch, a = flat element, offset = update counter
    RESET = 11  # device reset noise (TT with_reset_prob), a = flat element, b = the reset event
    FWD_NOISE = 16  # forward IO noise (output/input/weight noise), a = output index, b = sample
    BWD_NOISE = 17  # backward IO noise
    READ_NOISE = 18  # transfer reads of the TT family
    FWD_NOISE_BM = 19  # forward IO noise of bound-management repetitions (block = repetition)
    MISC = 32  # anything else (algorithms may use 32..255)


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """32x32 -> (hi, lo) 32-bit halves of the product, for ``a`` holding uint32 values (int64 tensor).

    The full product is < 2**64; int64 multiplication wraps modulo 2**64 (two's complement, on every
    torch backend), so ``p`` holds its exact 64 bits and the halves are two masks of it (3 tensor ops
    instead of 9 for a 16-bit split)."""
    p = a * m
    return (p >> 32) & _MASK32, p & _MASK32


def philox4x32(c0, c1, c2, c3, seed: int, rounds: int = 10):
    """Philox4x32 with ``rounds`` rounds. Counter words are int64 tensors holding uint32 values
    (broadcastable); returns four int64 tensors of uint32 values."""
    k0 = seed & _MASK32
    k1 = (seed >> 32) & _MASK32
    for r in range(rounds):
        hi0, lo0 = _mulhilo(c0, _M0)
        hi1, lo1 = _mulhilo(c2, _M1)
        if r == 0:  # from round 1 on every word is already < 2**32: the XORs need no mask
            c0, c1, c2, c3 = (hi1 ^ c1 ^ k0) & _MASK32, lo1, (hi0 ^ c3 ^ k1) & _MASK32, lo0
        else:
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        if r < rounds - 1:
            k0 = (k0 + _W0) & _MASK32
            k1 = (k1 + _W1) & _MASK32
    return c0, c1, c2, c3


def _counters(a, b, stream: int, block, offset: int, device):
    def as_t(v):
        return torch.as_tensor(v, dtype=torch.int64, device=device)

    a_t = as_t(a) & _MASK32
    b_t = as_t(b) & _MASK32
    c1 = ((int(stream) & 0xFF) << 24) | (as_t(block) & 0xFFFFFF)
    c3 = torch.full((), int(offset) & _MASK32, dtype=torch.int64, device=device)
    return torch.broadcast_tensors(a_t, c1, b_t, c3)


def _blocks(seed: int, offset: int, stream: int, a, b, block, device):
    """The four words of the Philox calls at counters (a, stream/block, b, offset), broadcast."""
    c0, c1, c2, c3 = _counters(a, b, stream, block, offset, device)
    return philox4x32(c0, c1, c2, c3, seed)


def uniform_words(words: torch.Tensor) -> torch.Tensor:
    """uint32 words (int64 tensor) -> float32 uniforms in (0, 1), top 24 bits plus half a bin."""
    return (((words >> 8).to(torch.float64) + 0.5) * (2.0**-24)).to(torch.float32)


def normal_words(w_first: torch.Tensor, w_second: torch.Tensor, use_sin: bool) -> torch.Tensor:
    """Box–Muller of two words, in float64, rounded to float32."""
    u0 = ((w_first >> 8).to(torch.float64) + 0.5) * (2.0**-24)
    u1 = ((w_second >> 8).to(torch.float64) + 0.5) * (2.0**-24)
    rad = torch.sqrt(-2.0 * torch.log(u0))
    ang = 2.0 * math.pi * u1
    return (rad * (torch.sin(ang) if use_sin else torch.cos(ang))).to(torch.float32)


def _scalar_draw(draw) -> int | None:
    """``draw`` as a Python int when it is one number (int or one-element tensor), else None."""
    if isinstance(draw, int):
        return draw
    if isinstance(draw, torch.Tensor) and draw.numel() == 1 and draw.dim() == 0:
        return int(draw)
    return None


def uniform(seed: int, offset: int, stream: int, a, b, draw, device=None) -> torch.Tensor:
    """Uniform(0,1) float32 numbers for broadcastable index tensors ``a``, ``b`` and ``draw``.

    ``draw`` is the position inside the ``(a, b, stream)`` sequence (e.g. the pulse slot)."""
    k = _scalar_draw(draw)
    if k is not None:  # one word of every Philox output (the same numbers as the general path)
        return uniform_words(_blocks(seed, offset, stream, a, b, k >> 2, device)[k & 3])
    draw_t = torch.as_tensor(draw, dtype=torch.int64, device=device)
    r = _blocks(seed, offset, stream, a, b, draw_t >> 2, device)
    sel = (draw_t & 3).expand_as(r[0])
    words = torch.where(sel == 0, r[0], torch.where(sel == 1, r[1], torch.where(sel == 2, r[2], r[3])))
    return uniform_words(words)


def normal(seed: int, offset: int, stream: int, a, b, draw, device=None) -> torch.Tensor:
    """Standard-normal float32 numbers for broadcastable index tensors (see module docstring)."""
    k = _scalar_draw(draw)
    if k is not None:  # only the Box–Muller branch that is asked for (the same numbers)
        r = _blocks(seed, offset, stream, a, b, k >> 2, device)
        first, second = (r[0], r[1]) if (k & 3) < 2 else (r[2], r[3])
        return normal_words(first, second, use_sin=bool(k & 1))
    draw_t = torch.as_tensor(draw, dtype=torch.int64, device=device)
    r = _blocks(seed, offset, stream, a, b, draw_t >> 2, device)
    k = (draw_t & 3).expand_as(r[0])
    z0 = normal_words(r[0], r[1], use_sin=False)
    z1 = normal_words(r[0], r[1], use_sin=True)
    z2 = normal_words(r[2], r[3], use_sin=False)
    z3 = normal_words(r[2], r[3], use_sin=True)
    return torch.where(k == 0, z0, torch.where(k == 1, z1, torch.where(k == 2, z2, z3)))
