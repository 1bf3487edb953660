"""Tensor layout of sampled device parameters: the one contract between devices, tiles and kernels.

A device family turns its config into two tensors (see ``analogtrain.devices.sample_device``):

* ``params``: float32, shape ``(NP, out, in)``, one plane per per-element (device-to-device sampled)
  quantity below. Planes that a family does not use are filled with the neutral value noted.
* ``gparams``: float64, shape ``(NG,)``, tile-wide scalars (no device-to-device variation).

The C++/CUDA header ``csrc/device_step.h`` mirrors these indices; change both or neither.

Every pulse acts on the *device* conductance ``w_dev = w + ref`` (``ref`` is the reference offset of the
``*_reference`` families, 0 otherwise), is clipped to ``[b_min, b_max]`` and stored back as
``w = w_dev - ref``. The per-pulse step of each kind (σ = dw_min_std, ξ ~ N(0, 1)):

KIND_LINEAR (constant_step, linear_step, softbounds, softbounds_reference)::

    mult noise:  up:   w_dev += (slope_up  * w_dev + scale_up)  * (1 + σξ)
                 down: w_dev -= (slope_down* w_dev + scale_down)* (1 + σξ)
    add noise:   up:   w_dev +=  slope_up  * w_dev + scale_up  * (1 + σξ)
                 down: w_dev -=  slope_down* w_dev + scale_down* (1 + σξ)

    (constant_step: slopes 0; softbounds: slope_up = -scale_up/b_max, slope_down = -scale_down/b_min)

KIND_EXP (expstep; tile-wide A, γ, a, b in gparams)::

    z = 2 a w_dev / (b_max - b_min) + b          (skip the pulse entirely if b_max - b_min <= 0)
    y_up = max(1 - A_up exp(γ_up z), 0);  y_down = max(1 - A_down exp(-γ_down z), 0)
    simple noise:  up: w_dev += y_up (1 + σξ) scale_up;   down: w_dev -= y_down (1 + σξ) scale_down
    complex noise (σ > 0 and (std_add != 0 or std_slope != 0)):
        Δ = +y_up scale_up or -y_down scale_down;  w_dev += Δ + σ (|Δ| + std_add + std_slope |w_dev|) ξ

KIND_POW (powstep, powstep_reference; per-element exponents)::

    range = b_max - b_min  (skip if 0)
    up:   w_dev += scale_up   * ((b_max - w_dev)/range)^gamma_up   * (1 + σξ)
    down: w_dev -= scale_down * ((w_dev - b_min)/range)^gamma_down * (1 + σξ)

Write noise (``G_WRITE_NOISE`` > 0, the std in weight units = write_noise_std * dw_min): pulses act on
a persistent weight ``w_p``; after the pulses of one sample on a touched element the visible weight is
redrawn as ``w = w_p + G_WRITE_NOISE * ξ``.
"""

from __future__ import annotations

# --- per-element planes of ``params`` (neutral value in brackets) ---
P_BMIN = 0  # lower bound b_min of the device conductance (< 0)
P_BMAX = 1  # upper bound b_max (> 0)
P_SCALE_UP = 2  # up-step size scale_up (weight units)
P_SCALE_DOWN = 3  # down-step size scale_down (weight units, positive)
P_SLOPE_UP = 4  # KIND_LINEAR slope of the up step [0]
P_SLOPE_DOWN = 5  # KIND_LINEAR slope of the down step [0]
P_GAMMA_UP = 6  # KIND_POW exponent of the up step [1]
P_GAMMA_DOWN = 7  # KIND_POW exponent of the down step [1]
P_REF = 8  # reference offset: visible w = w_dev - ref [0]
NP = 9

# --- tile-wide scalars of ``gparams`` ---
G_KIND = 0  # one of the KIND_* ids below
G_DW_MIN_STD = 1  # σ: cycle-to-cycle noise relative to the step
G_MULT_NOISE = 2  # 1.0: multiplicative noise, 0.0: additive (KIND_LINEAR only)
G_WRITE_NOISE = 3  # write-noise std in weight units (0: off)
G_ES_A_UP = 4
G_ES_A_DOWN = 5
G_ES_GAMMA_UP = 6
G_ES_GAMMA_DOWN = 7
G_ES_A = 8
G_ES_B = 9
G_ES_STD_ADD = 10
G_ES_STD_SLOPE = 11
NG = 12

KIND_LINEAR = 0
KIND_EXP = 1
KIND_POW = 2
