"""Small file helpers shared across packages: hashing and atomic writes.

Every file medrobust writes appears complete or not at all: it is written under a temporary
name in its destination folder and renamed onto the final name (``os.replace``, atomic on
POSIX and Windows) only when complete. ``atomic_path`` is that pattern, once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "atomic_path",
    "commit_temp",
    "file_sha256",
    "fsync_dir",
    "make_temp",
    "write_bytes_atomic",
    "write_text_atomic",
]


def file_sha256(path: str | Path, block: int = 1 << 22) -> str:
    """SHA-256 hex digest of a file, read in blocks (bounded memory)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(folder: Path) -> None:
    """Persist a rename (POSIX); silently skipped where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def make_temp(path: Path, suffix: str = ".tmp") -> tuple[int, Path]:
    """An open descriptor and the name of a new hidden temporary file beside ``path``.

    ``suffix`` lets writers that infer a format from the name (``np.savez``) see it.
    The file is made world-readable like an ordinary file (``mkstemp`` makes it 0600).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.chmod(tmp, 0o644)
    return fd, Path(tmp)


def commit_temp(tmp: Path, path: Path) -> None:
    """Move the finished temporary file ``tmp`` onto ``path`` and persist the rename."""
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path``, moved onto it when the block succeeds.

    On any error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp = make_temp(path, suffix)
    os.close(fd)
    try:
        yield tmp
        commit_temp(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(data: bytes, path: str | Path) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    return write_bytes_atomic(text.encode("utf-8"), path)
