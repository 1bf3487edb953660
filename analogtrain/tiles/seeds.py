"""Deterministic per-tile seeds: ``derive_seed(base, "fc1", 0, "A")``.

Python's ``hash()`` of a string changes between processes, so seeds are derived with BLAKE2b over the
decimal base seed and the name parts: the same (base, parts) gives the same 63-bit seed on every machine
and in every process (checkpoints and sweeps rely on that).
"""

from __future__ import annotations

import hashlib

__all__ = ["derive_seed"]


def derive_seed(base: int, *parts) -> int:
    """A 63-bit non-negative seed from ``base`` and any printable ``parts`` (layer name, tile index...)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(str(int(base)).encode())
    for p in parts:
        h.update(b"\x1f")
        h.update(str(p).encode())
    return int.from_bytes(h.digest(), "little") & 0x7FFFFFFFFFFFFFFF
