"""A fork server for tests that kill ``medrobust`` commands: imports medrobust (and torch)
once, then forks one real child process per command, so each start costs milliseconds
instead of the seconds an import takes on a busy machine.

Protocol, one JSON object per line on stdin, one answer per line on stdout:

- ``{"op": "run", "argv": [...], "log": PATH}`` forks a child that runs
  ``medrobust.cli.main(argv)`` with stdout and stderr written to ``PATH``; answers
  ``{"pid": PID}``. Optional: ``"env"`` (variables to set, null to unset), ``"cwd"``, and
  ``"fsize"`` (RLIMIT_FSIZE in bytes: writes past it fail with EFBIG, as on a full disk) and
  ``"uid"`` (run as that user; the server must run as root).
- ``{"op": "wait", "pid": PID}`` reaps that child; answers ``{"status": CODE}`` (the exit
  code, or minus the signal number that ended it).

Nothing has run on torch before a fork (imports only), so the children start clean.
:class:`ForkServer` is the client the tests use (the ``forkserver`` fixture).
"""

from __future__ import annotations

# Children may drop to another user (``uid``) who cannot read the interpreter's standard
# library (here under /root): import what they load lazily while still root. zipfile
# decodes npz member names with cp437.
import encodings.cp437  # noqa: F401
import json
import os
import resource
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import medrobust.adaptation
import medrobust.cli
import medrobust.corruptions.generate
import medrobust.evaluation.runner
import medrobust.reporting  # imported once, before any fork


def _child(request: dict) -> None:
    fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    for key, value in request.get("env", {}).items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if request.get("cwd"):
        os.chdir(request["cwd"])
    if request.get("uid") is not None:  # run as another user (tests that need no root rights)
        os.setgid(request["uid"])
        os.setuid(request["uid"])
    if request.get("fsize"):  # Python ignores SIGXFSZ, so a write past it raises EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (request["fsize"], request["fsize"]))
    code = 1
    try:
        code = medrobust.cli.main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 99
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class ForkServer:
    """Starts medrobust commands as children of tests/forkserver.py and kills them."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, env={**os.environ, "MEDROBUST_OFFLINE": "1"},
        )

    def _ask(self, request: dict) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def start(self, argv: list[str], log: Path, **options) -> int:
        """Fork a child running ``medrobust argv``; options: env, cwd, fsize (forkserver.py)."""
        return self._ask({"op": "run", "argv": argv, "log": str(log), **options})["pid"]

    def wait(self, pid: int) -> int:
        return self._ask({"op": "wait", "pid": pid})["status"]

    def run(self, argv: list[str], log: Path, **options) -> tuple[int, float]:
        started = time.perf_counter()
        status = self.wait(self.start(argv, log, **options))
        return status, time.perf_counter() - started

    def run_killed(self, argv: list[str], log: Path, delay: float) -> int:
        """Start, SIGKILL after ``delay`` seconds (if still running); the exit status."""
        pid = self.start(argv, log)
        time.sleep(delay)
        return self.kill_and_wait(pid)

    def kill_and_wait(self, pid: int) -> int:
        os.kill(pid, signal.SIGKILL)  # a child that already ended is a zombie until the wait
        return self.wait(pid)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "run":
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                _child(request)
            answer = {"pid": pid}
        else:
            _, status = os.waitpid(request["pid"], 0)
            answer = {"status": os.waitstatus_to_exitcode(status)}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
