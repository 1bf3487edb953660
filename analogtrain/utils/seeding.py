"""One user ``seed`` -> independent seeds per purpose, and global RNG state capture for checkpoints.

Streams: ``data`` (splits, shuffling, augmentation), ``init`` (weight initialisation), ``device``
(device-to-device variation sampled once per tile), ``pulse`` (stochastic pulse trains, cycle-to-cycle
noise, IO noise). They are independent so that e.g. changing the device does not change the data order,
and two algorithms with the same ``seed`` see the same data and initial weights.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

SEED_STREAMS = ("data", "init", "device", "pulse")


def derive_seed(seed: int, stream: str) -> int:
    """A 63-bit seed from ``(seed, stream)`` via BLAKE2b: stable across processes and machines."""
    h = hashlib.blake2b(f"analogtrain:{int(seed)}:{stream}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") & 0x7FFFFFFFFFFFFFFF


def derive_seeds(seed: int) -> dict[str, int]:
    """``{"data": .., "init": .., "device": .., "pulse": ..}`` handed to data, model and algorithm."""
    return {name: derive_seed(seed, name) for name in SEED_STREAMS}


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch global generators (used for anything without its own generator)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Global RNG states for a checkpoint."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
