"""Tile ops: the only package that knows a compiled extension exists.

Every op has a pure-torch twin ``*_ref`` in ``analogtrain.ops.reference`` with the same signature and
the same RNG contract (``analogtrain.ops.rng``). ``set_backend`` / ``tile.backend`` picks between the
compiled kernel (``csrc/``, JIT-built on first use) and the reference.

Contract of the pulsed update (all ops mutate state tensors in place and hold no hidden state)::

    pulsed_update(w, w_p, params, gparams, x, d, lr, dw, spec, seed, offset,
                  chop_in=None, chop_out=None) -> pulses

    w        (O, I) float32   visible weights, updated in place
    w_p      (O, I) float32 or None   persistent weights when write noise is on (else None)
    params   (NP, O, I) float32       sampled device parameters (``analogtrain.devices.params``)
    gparams  (NG,) float64            tile-wide device scalars
    x        (B, I) float32           inputs of the B samples (B = batch or image patches)
    d        (B, O) float32           errors (gradient of the loss w.r.t. the tile output)
    lr       float                    pulse-count learning rate (sign used; |lr| for probabilities)
    dw       float                    nominal granularity of the device (for BL/UM), not per-device
    spec     UpdateSpec               BL/UM/UBLM settings and the update mode
    seed     int                      the tile's pulse seed (64 bit)
    offset   int                      the tile's op-call counter (the caller advances it by 1 per call)
    chop_in  (I,) float32 ±1 or None  input chopper: sign of coincidences of column j multiplied by it
    chop_out (O,) float32 ±1 or None  output chopper: sign of coincidences of row i multiplied by it
    returns  (O, I) float32           number of pulses applied per element in this call (summed over
                                      samples; ``expected`` mode: the expected count)

Semantics: aihwkit's (``shared/reference/aihwkit-semantics.md`` §1): every sample is its own update
with its own BL and UM/UBLM scaling, in batch order; sign(x)·sign(d)·sign(lr) > 0 gives a *down* pulse.
"""

from __future__ import annotations

from dataclasses import dataclass

MODE_PULSED = 0  # stochastic compressed pulse trains (the faithful simulation)
MODE_MEAN_COUNT = 1  # deterministic counts n_ij = rint(c_d(i)/BL * c_x(j)) (aihwkit MeanCount)
MODE_EXPECTED = 2  # expected increment per sample: w += Δ·F(w) − |Δ|·G(w), noise-free, Δ = −lr·x·d


@dataclass(frozen=True)
class UpdateSpec:
    """Scalars of one pulsed-update call (from ``UpdateConfig`` plus the tile's update mode)."""

    desired_bl: int = 31
    fixed_bl: bool = True
    ublm: bool = True  # update_bl_management
    um: bool = True  # update_management (forced on when ublm is on, as in aihwkit)
    um_grad_scale: float = 1.0
    res: float = 0.0
    sto_round: bool = False
    mode: int = MODE_PULSED
