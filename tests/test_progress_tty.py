"""Progress in a terminal: ``medrobust eval`` run under a pseudo-terminal 80 columns wide shows
its bar's counts, not only its label (a bar wider than the terminal is cut down to the label)."""

from __future__ import annotations

import fcntl
import os
import re
import struct
import subprocess
import sys
import termios
import time


def _run_in_pty(argv: list[str], columns: int = 80, timeout: float = 120.0) -> tuple[int, str]:
    """Run ``argv`` with stdin, stdout and stderr on a pseudo-terminal ``columns`` wide;
    returns (exit status, everything it wrote)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "xterm"}
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end of the terminal
                break
            if not data:
                break
            chunks.append(data)
        status = proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return status, b"".join(chunks).decode(errors="replace")


def test_eval_in_a_terminal_shows_progress_counts(shared_data, tmp_path):
    status, output = _run_in_pty(
        [sys.executable, "-m", "medrobust.cli", "eval", "--model", "medrobust-mini",
         "--dataset", "breastmnist", "--data-root", str(shared_data), "--limit", "16",
         "--corruptions", "pixelate", "--severities", "1", "--batch-size", "16",
         "--run-dir", str(tmp_path / "run")])
    assert status == 0, output
    assert "complete: 2 of 2 cells" in output
    # the bar's label, its counts and its unit, on one line of at most 80 columns
    lines = [line for part in output.split("\n") for line in part.split("\r")]
    bars = [line for line in lines if "1 model x 1 dataset(s)" in line]
    assert bars, output
    assert any(re.search(r"\b2/2\b.*cell", line) for line in bars), output
    assert all(len(line.rstrip()) <= 80 for line in bars), bars
