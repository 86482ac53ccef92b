"""Who owns a piece of work, and whether that owner still runs.

A claim on a grid cell and a temporary file both name their owner: the host, the process id
and the process's start time. The start time guards against pid reuse (a new process that
got a dead owner's pid is not that owner). On the same host an owner is alive while its
process runs (a zombie, killed but not yet reaped, counts as dead); on another host this
cannot be checked, and callers use a heartbeat or the file's age instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from dataclasses import dataclass
from functools import cache

__all__ = ["Owner", "current_owner", "host_tag", "token_alive"]


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a Linux process, None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            text = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # the command name may hold spaces
    return fields[0], fields[19]


def _start_token(pid: int) -> str:
    """The process's start time as a string ('' where the platform does not tell)."""
    stat = _proc_stat(pid)
    return stat[1] if stat else ""


def _pid_alive(pid: int, started: str) -> bool:
    """True while process ``pid`` (started at ``started``, if known) runs on this host."""
    if os.path.isdir("/proc/self"):
        stat = _proc_stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            return False
        return not started or stat[1] == started
    if os.name != "posix":  # os.kill(pid, 0) is not a probe on Windows: assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@cache
def _host() -> str:
    return socket.gethostname()


def host_tag(host: str) -> str:
    """A short, file-name-safe tag of a host name."""
    return hashlib.sha256(host.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Owner:
    """A process on a host: ``host:pid:start`` as text (start '' where unknown)."""

    host: str
    pid: int
    started: str = ""

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.started}"

    @property
    def token(self) -> str:
        """File-name-safe form for temporary files: ``<host tag>-<pid>-<start>``."""
        return f"{host_tag(self.host)}-{self.pid}-{self.started}"

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        """The owner written by ``str(owner)`` (or the older ``host:pid``); None if malformed."""
        parts = text.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1].isdigit():
            return None
        return cls(parts[0], int(parts[1]), parts[2] if len(parts) == 3 else "")

    @property
    def local(self) -> bool:
        """True when the owner runs (or ran) on this host."""
        return self.host == _host()

    def alive(self) -> bool | None:
        """True/False on this host; None (unknown) for another host."""
        if not self.local:
            return None
        return _pid_alive(self.pid, self.started)


def current_owner() -> Owner:
    """This process (computed per call: a forked child is a new owner)."""
    pid = os.getpid()
    return Owner(_host(), pid, _start_token(pid))


def token_alive(token: str) -> bool | None:
    """Whether the owner of a temporary file's token runs: True/False on this host, None for
    another host or a token that is not ours to judge."""
    host, sep, rest = token.partition("-")
    pid_text, sep2, started = rest.partition("-")
    if not sep or not sep2 or not pid_text.isdigit():
        return None
    if host != host_tag(_host()):
        return None
    with contextlib.suppress(ValueError):
        return _pid_alive(int(pid_text), started)
    return None
