"""Inputs shared by the kernel parity tests (the CPU kernel against the reference, the CUDA kernel, and the
CUDA kernels' CPU emulation), so that every backend is checked on the same cases.

* ``update_case``: a pulsed-update call (devices of ``UPDATE_DEVICES``), sparse x (30 % zeros);
* ``carry_case``: a batch of ``chopped_update_snapshots`` calls over nine samples (``STARTS``, ``LRS``) on
  the devices of ``CARRY_DEVICES``, with choppers per call.
"""

from __future__ import annotations

import torch

from analogtrain.devices import device_from_config, sample_device
from analogtrain.devices import params as P

UPDATE_DEVICES = ["softbounds", "linear_step", "constant_step", "expstep", "powstep", "softbounds_reference",
                  "powstep_reference", "reram_es", "reram_sb"]


def update_case(key, O=64, I=48, B=12, seed=0):
    """(sampled device, x (B, I), d (B, O), w0 (O, I)) of preset/family ``key``."""
    s = sample_device(device_from_config({"name": key}), O, I, 3)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, I, generator=g)
    x[torch.rand(B, I, generator=g) < 0.3] = 0
    d = torch.randn(B, O, generator=g) * 0.2
    w0 = (torch.rand(O, I, generator=g) - 0.5) * 0.2
    return s, x, d, w0


CARRY_DEVICES = {
    "softbounds_mult": {"name": "softbounds", "dw_min": 0.02, "dw_min_std": 0.3},
    "reram_sb": {"name": "reram_sb"},  # reference offsets, additive noise, write noise
    "linear_step_additive": {"name": "linear_step", "gamma_up": 0.4, "gamma_down": 0.2, "mult_noise": False},
    "constant_step_bounds": {"name": "constant_step", "dw_min": 0.01, "w_max": 0.1, "w_min": -0.1},
    "softbounds_write_noise": {"name": "softbounds", "dw_min": 0.02, "write_noise_std": 0.5},
}

# a schedule with every feature: an empty call that snapshots (twice the same slice in a row), a slice
# read twice, a call with lr 0, negative lrs, a first call that snapshots before anything else happened
STARTS = [0, 0, 2, 3, 3, 5, 6, 8, 9]
LRS = [0.3, 0.3, -0.2, 0.5, 0.1, 0.0, 0.4, -0.25]


def carry_case(dev_key, O, I, B=9, seed=0):
    """(sampled device, x (B, I), d (B, O), w0 (O, I) within the bounds, chop_in (C, I), chop_out (C, O))
    of ``CARRY_DEVICES[dev_key]`` for the C = len(LRS) calls."""
    C = len(LRS)
    s = sample_device(device_from_config(dict(CARRY_DEVICES[dev_key])), O, I, 11)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, I, generator=g)
    x[torch.rand(B, I, generator=g) < 0.2] = 0.0
    d = torch.randn(B, O, generator=g)
    lo, hi = s.params[P.P_BMIN] - s.params[P.P_REF], s.params[P.P_BMAX] - s.params[P.P_REF]
    w0 = lo + (hi - lo) * torch.rand(O, I, generator=g)
    ci = torch.where(torch.rand(C, I, generator=g) < 0.5, -1.0, 1.0)
    co = torch.where(torch.rand(C, O, generator=g) < 0.5, -1.0, 1.0)
    return s, x, d, w0, ci, co
