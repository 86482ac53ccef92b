"""Small file helpers shared across packages: hashing and atomic writes.

Every file medrobust writes appears complete or not at all: it is written under a temporary
name in its destination folder and renamed onto the final name (``os.replace``, atomic on
POSIX and Windows) only when complete. ``atomic_path`` is that pattern, once.

A temporary name carries its writer's token (host, pid, process start time), so a later run
removes the leftovers of a killed process (``remove_orphans``) and never those of a live one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]

from ._process import current_owner, token_alive

__all__ = [
    "ORPHAN_MAX_AGE",
    "atomic_path",
    "commit_temp",
    "file_sha256",
    "fsync_dir",
    "make_temp",
    "remove_orphans",
    "temp_prefix",
    "write_bytes_atomic",
    "write_failure",
    "write_text_atomic",
]

_NEARLY_FULL = 16 << 20  # bytes free below which a failed write is put down to a full disk


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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=suffix)
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


# Temporary files carry their owner (host tag, pid, process start time) in their name, so a
# later run can tell the leftovers of a killed process from the files a live one is writing.
_TEMP_NAME = re.compile(r"^\..*\.(?P<token>[0-9a-f]{8}-\d+-\d*)\.[^/]*$")
ORPHAN_MAX_AGE = 24 * 3600.0  # seconds; another host's temporary files older than this are orphans


def temp_prefix(path: str | Path) -> str:
    """The name prefix of a temporary file for ``path``: hidden, with this process's token."""
    return f".{Path(path).name}.{current_owner().token}."


def remove_orphans(folder: str | Path, *, max_age: float = ORPHAN_MAX_AGE) -> list[Path]:
    """Delete the temporary files under ``folder`` whose writer is gone; returns them.

    A file of this host is an orphan when its process no longer runs (or its pid now belongs
    to a newer process); a file of another host when it is older than ``max_age`` seconds.
    Files of live processes, and every file not named by :func:`temp_prefix`, are kept.
    """
    removed = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    now = time.time()
    for path in root.rglob(".*"):
        match = _TEMP_NAME.match(path.name)
        if match is None or not path.is_file():
            continue
        alive = token_alive(match["token"])
        if alive is None:
            with contextlib.suppress(OSError):
                alive = now - path.stat().st_mtime < max_age
        if alive is False:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def write_failure(path: str | Path, exc: BaseException) -> OSError:
    """The OSError behind a failed write of ``path`` when a library hid it (``torch.save``
    and SQLite report a full disk as a generic error): ENOSPC when the disk is (nearly) full,
    EFBIG when a file-size limit (``ulimit -f``) is set, else EIO with the library's message."""
    path = Path(path)
    folder = next((p for p in (path.parent, *path.parents) if p.exists()), Path("."))
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(folder).free
        if free < _NEARLY_FULL:
            return OSError(errno.ENOSPC, f"no space left on the disk ({free} bytes free)", str(path))
    if resource is not None:
        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY:
            return OSError(errno.EFBIG, f"file size limit of {soft} bytes reached", str(path))
    return OSError(errno.EIO, f"write failed ({exc})", str(path))
