"""Seed derivation: every random stream in medrobust is keyed from a user seed here.

Two forms, both stable across processes, platforms and Python versions (no ``hash()``):

* ``derive_seed(seed, name, level, index)``: a 63-bit integer seed, for torch generators
  (one per image of a corruption, one per epoch and purpose in adaptation);
* ``seed_words(seed, key, index)``: entropy words for ``numpy.random.default_rng`` (one
  stream per class of a few-shot sample).
"""

from __future__ import annotations

import hashlib
import zlib
from typing import Any

import numpy as np

__all__ = ["check_seed", "derive_seed", "seed_words"]

_SEED_MASK = (1 << 63) - 1


def check_seed(seed: Any) -> int:
    """``seed`` as an int when it is a non-negative integer; anything else is a clear error."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def derive_seed(seed: int, name: str, level: int, index: int) -> int:
    """A 63-bit seed for stream ``index`` of ``(name, level)`` (e.g. corruption, severity, image)."""
    key = f"{int(seed)}/{name}/{int(level)}/{int(index)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & _SEED_MASK


def seed_words(seed: int, key: str, index: int) -> list[int]:
    """``[seed, crc32(key), index]``: entropy for ``numpy.random.default_rng``."""
    return [check_seed(seed), zlib.crc32(key.encode("utf-8")), int(index)]
