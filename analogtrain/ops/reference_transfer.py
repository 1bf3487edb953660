"""Pure-torch twin of the fused TT-family transfer op ``analogtrain.ops.buffered_transfer``.

It defines the semantics the compiled kernel (``csrc/cpu_ops.cpp``, ``csrc/cuda_kernels.cu``) must
reproduce exactly. One call transfers ONE slice k (column k with ``columns``, else row k) of the fast
array A into the slow array C through the digital buffer H (aihwkit-semantics.md §3.3–3.5). The read
``v = A e_k`` (+ read noise, − reference / − AGAD's past mean P) is done by the caller in torch.

All arithmetic is float32, in this order (every line one rounding; scalars rounded to float32 first)::

    signal = chop ⊙ v            (v when chop is None)          chop = c_in[k]·c_out  (c-TTv2 / AGAD)
    H_k    = (no_buffer ? 0 : H_k) + signal · lr_scale
    n      = clamp(trunc(H_k / thr), −bl, bl)
    forget:      H_k = where(n ≠ 0, momentum · H_k, H_k)
    no forget:   H_k = H_k − ((1 − momentum) · n) · thr
    cap > 0:     H_k = clamp(H_k, −cap·bl, cap·bl)            (AGAD buffer_cap without forget)
    if write and any n ≠ 0:
        pulsed update of C (``pulsed_update`` contract, ONE sample b = 0, counter ``offset``):
            columns: x = e_k (I,), d = −n (O,)     rows: x = −n (I,), d = e_k (O,)
            lr = step·dw_C (> 0), spec = transfer_update (BL = 1, no UM by default: A = B = sqrt(step),
            so every non-zero n gives exactly one pulse of sign(n) on C[:, k] with its own c2c noise)
    return n, pulses (the write's pulse counts on slice k; zeros without a write)

Units (which the caller picks through ``lr_scale`` / ``thr``):

* TTv2 (``BufferedTransferCompound``, §3.3): H in weight units, ``lr_scale = |lr_t|`` and
  ``thr = thres_scale·dw_C`` (granularity of the *to* device).
* c-TTv2 / AGAD (``ChoppedTransferCompound`` / ``DynamicTransferCompound``, §3.4–3.5): H dimensionless,
  ``lr_scale = |lr_t|/bg`` with ``bg = buffer_granularity·dw_A·[auto_granularity/(n_slices·|every|)]``
  and ``thr = 1``.
"""

from __future__ import annotations

import torch

from analogtrain.ops import UpdateSpec

__all__ = ["buffered_transfer_ref", "buffer_threshold_ref"]


def _f32(v: float, device) -> torch.Tensor:
    return torch.tensor(float(v), dtype=torch.float32, device=device)


def buffer_threshold_ref(h_k: torch.Tensor, v: torch.Tensor, chop: torch.Tensor | None, lr_scale: float,
                         thr: float, bl: int, momentum: float, forget: bool, no_buffer: bool = False,
                         cap: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The buffer arithmetic of one slice: h_k, v, chop (L,) float32 -> (n, new h_k), both (L,) float32."""
    dev = v.device
    v = v.to(torch.float32)
    signal = v if chop is None else chop.to(device=dev, dtype=torch.float32) * v
    inc = signal * _f32(lr_scale, dev)
    h = inc if no_buffer else h_k.to(torch.float32) + inc
    blf = _f32(bl, dev)
    n = torch.trunc(h / _f32(thr, dev))
    n = torch.minimum(torch.maximum(n, -blf), blf)
    if forget:
        h = torch.where(n != 0, _f32(momentum, dev) * h, h)
    else:
        h = h - (_f32(1.0 - momentum, dev) * n) * _f32(thr, dev)
    if cap > 0:
        c = _f32(cap * bl, dev)
        h = torch.minimum(torch.maximum(h, -c), c)
    return n, h


@torch.no_grad()
def buffered_transfer_ref(h: torch.Tensor, v: torch.Tensor, k: int, *, lr_scale: float, thr: float, bl: int,
                          momentum: float, forget: bool, w: torch.Tensor, w_p: torch.Tensor | None,
                          params: torch.Tensor, gparams: torch.Tensor, lr: float, dw: float, spec: UpdateSpec,
                          seed: int, offset: int, chop: torch.Tensor | None = None, columns: bool = True,
                          write: bool = True, no_buffer: bool = False, cap: float = 0.0
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Transfer slice ``k``: H (O, I) and C's ``w``/``w_p`` updated in place; returns ``(n, pulses)``, both
    (L,) float32 (module docstring). ``lr``/``dw``/``spec``/``seed``/``offset`` are those of C's write (lr = step·dw_C)."""
    from analogtrain.ops.reference import pulsed_update_ref

    O, I = h.shape
    view = h[:, k] if columns else h[k, :]
    n, new = buffer_threshold_ref(view, v.reshape(-1), chop if chop is None else chop.reshape(-1), lr_scale,
                                  thr, bl, momentum, forget, no_buffer, cap)
    view.copy_(new)
    pulses = torch.zeros_like(n)
    if write and bool((n != 0).any()):
        e = torch.zeros(1, I if columns else O, dtype=torch.float32, device=h.device)
        e[0, k] = 1.0
        minus_n = (-n).unsqueeze(0)
        x, d = (e, minus_n) if columns else (minus_n, e)
        counts = pulsed_update_ref(w, w_p, params, gparams, x, d, lr, dw, spec, seed, offset)
        pulses = counts[:, k].clone() if columns else counts[k, :].clone()
    return n, pulses
