"""Which exceptions are failures a user can cause, and the one line that tells them so.

The command line prints that line and exits 2 instead of a traceback (``MEDROBUST_DEBUG=1``
shows the traceback as well). Anything not recognised here is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import sqlite3

__all__ = ["DISK_FULL", "user_message"]

_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
DISK_FULL = (
    "the disk is full or a file-size limit was reached{where}: free space (or raise the "
    "limit, or choose another output folder) and rerun the same command; finished files are "
    "kept and the rest is redone"
)
_USER_ERRORS = (ValueError, KeyError, TypeError, OSError)


def _disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return True
    text = str(exc).lower()
    return isinstance(exc, sqlite3.Error) and ("disk is full" in text or "too large" in text)


def _chain(exc: BaseException) -> list[BaseException]:
    seen = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def user_message(exc: BaseException) -> str | None:
    """The one-line message for a failure a user can cause, or None for a bug."""
    for link in _chain(exc):
        if _disk_full(link):
            name = getattr(link, "filename", None)
            return DISK_FULL.format(where=f" while writing {name}" if name else "")
    if isinstance(exc, sqlite3.Error):
        return f"the run database cannot be used: {exc}"
    ours = type(exc).__module__.startswith("medrobust.")  # raised deliberately, for users
    if not ours and not isinstance(exc, _USER_ERRORS):
        return None
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    return " ".join(str(message).split()) or type(exc).__name__

