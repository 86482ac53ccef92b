"""A per-user cache of arrays that are slow to build and fully determined by a key.

Used for tables that every run would otherwise rebuild (e.g. the exact noise tables: 0.1-0.5 s
each, 20 per MedMNIST-C dataset). Entries live in ``$MEDROBUST_CACHE`` (``off`` disables the
cache), else ``<user cache>/medrobust/arrays``. An entry's name is the SHA-256 of its key, so a
key that includes everything the array depends on (code, library versions, parameters) never
returns a stale array. The cache is an optimisation only: an unreadable, damaged or unwritable
entry is rebuilt (or simply not stored), never an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CACHE_ENV", "cache_dir", "cached_array"]

CACHE_ENV = "MEDROBUST_CACHE"


def cache_dir() -> Path | None:
    """The folder of cached arrays, or None when ``$MEDROBUST_CACHE`` is ``off``."""
    value = os.environ.get(CACHE_ENV, "")
    if value.lower() == "off":
        return None
    if value:
        return Path(value).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("medrobust")) / "arrays"


def _entry_path(folder: Path, name: str, key: Any) -> Path:
    digest = hashlib.sha256(json.dumps([name, key], sort_keys=True).encode()).hexdigest()[:32]
    return folder / f"{name}-{digest}.npy"


def _load(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if array.shape != shape or array.dtype != dtype:
        return None
    return array


def _store(path: Path, array: np.ndarray) -> None:
    """Write-temp-fsync-rename, so readers see a whole entry or none; failures are ignored."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as fh:
            np.save(fh, array, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def cached_array(
    name: str,
    key: Any,
    build: Callable[[], np.ndarray],
    *,
    shape: tuple[int, ...],
    dtype: Any,
) -> np.ndarray:
    """``build()``, or the stored result of an earlier call with the same ``name`` and ``key``.

    ``key`` must be JSON-serialisable and determine the array completely; ``shape`` and
    ``dtype`` are what ``build`` returns, and an entry that differs is rebuilt.
    """
    dtype = np.dtype(dtype)
    folder = cache_dir()
    path = None if folder is None else _entry_path(folder, name, key)
    if path is not None and path.is_file():
        array = _load(path, shape, dtype)
        if array is not None:
            return array
    array = np.asarray(build())
    if array.shape != shape or array.dtype != dtype:
        raise ValueError(f"cached array {name!r}: built {array.shape} {array.dtype}, expected {shape} {dtype}")
    if path is not None:
        _store(path, array)
    return array
