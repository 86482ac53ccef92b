"""A longer kill campaign than the test suite's: ``corrupt``, ``eval`` and ``adapt`` killed
with SIGKILL many times at seeded random moments and resumed, plus two ``eval`` processes
sharing one run folder of which one is killed. Counts kills tried and landed, temporary files
left by the killed processes, and cells/files lost or differing after the resume.

    python benchmarks/kill_campaign.py --data-root ../shared/data --kills 10 \
        --out benchmarks/results/kill_campaign.json

Uses the fork server and comparison helpers of tests/test_kill_resume.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from forkserver import ForkServer
from test_kill_resume import (
    assert_same_outputs,
    kill_and_resume,
    temporary_files,
)

COMMANDS = {
    "corrupt": lambda data, out: [
        "corrupt", "breastmnist", "--data-root", data, "--out", out, "--corruptions",
        "pixelate,speckle_noise,motion_blur,jpeg_compression", "--severities", "1,2,3,4,5",
        "--batch-size", "32",
        "--quiet"],
    "eval": lambda data, out: [
        "eval", "--model", "medrobust-mini", "--dataset", "breastmnist", "--dataset",
        "retinamnist", "--data-root", data, "--limit", "32", "--corruptions", "pixelate",
        "--severities", "1,2,3,4,5", "--batch-size", "16", "--run-dir", out, "--quiet"],
    "adapt": lambda data, out: [
        "adapt", "--model", "medrobust-mini", "--dataset", "breastmnist", "--data-root", data,
        "--shots", "8", "--epochs", "4", "--patience", "0", "--val-limit", "32",
        "--batch-size", "8", "--label", "kill-test", "--out", out, "--quiet"],
}


_WAL = ("results.sqlite-wal", "results.sqlite-shm")


def _check(reference: Path, resumed: Path, ignore: tuple[str, ...] = ()) -> str | None:
    try:
        assert temporary_files(resumed) == [], f"temporary files left: {temporary_files(resumed)}"
        assert_same_outputs(reference, resumed, ignore)
    except AssertionError as exc:
        return str(exc).splitlines()[0]
    return None


def campaign(server: ForkServer, name: str, data: str, work: Path, kills: int, seed: int) -> dict:
    make = COMMANDS[name]
    logs = work / "logs"
    logs.mkdir(parents=True)
    server.run(make(data, str(work / "reference")), logs / "reference.log")
    status, seconds = server.run(make(data, str(work / "timing")), logs / "timing.log")
    assert status == 0, (logs / "timing.log").read_text()
    # a run with nothing left to do: the start-up part of every resumed run
    status, startup = server.run(make(data, str(work / "timing")), logs / "startup.log")
    startup = min(startup, seconds) if status == 0 else 0.0
    landed, leftovers, status = kill_and_resume(
        server, make(data, str(work / "resumed")), work / "resumed", logs, seconds, seed, kills,
        startup)
    problem = _check(work / "reference", work / "resumed") if status == 0 else "final run failed"
    return {"command": name, "kills_tried": kills, "kills_landed": landed,
            "uninterrupted_seconds": round(seconds, 2), "startup_seconds": round(startup, 2),
            "temporary_files_after_kills": leftovers,
            "final_status": status, "lost_or_differing": problem}


def _has_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` (Linux) has ``path`` open: an eval's store is open until its end."""
    try:
        links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
    except OSError:  # ended, or the descriptor closed while being read
        return False
    return str(path.resolve()) in links


def shared_run(server: ForkServer, data: str, work: Path, rounds: int, seed: int) -> dict:
    """Two evals on one run folder; one is killed at a random moment; the other must finish
    the whole grid (it waits for the killed one's cells and takes them over).

    SQLite removes ``-wal``/``-shm`` when the last connection closes; a process killed while
    it is the last one open leaves them (they are replayed on the next open). They are left out
    of the file comparison and counted by whether the survivor had the store open when the
    kill landed; the rows are compared in every round."""
    rng = random.Random(seed)
    make = COMMANDS["eval"]
    logs = work / "logs"
    logs.mkdir(parents=True)
    server.run(make(data, str(work / "reference")), logs / "reference.log")
    started = time.perf_counter()  # both processes uninterrupted: the window for the kills
    pids = [server.start(make(data, str(work / "timing")), logs / f"timing-{i}.log") for i in (0, 1)]
    assert [server.wait(pid) for pid in pids] == [0, 0], "uninterrupted shared run failed"
    seconds = time.perf_counter() - started
    failures, landed, wal_left = [], 0, {False: 0, True: 0}
    for i in range(rounds):
        run = work / f"shared-{i}"
        victim = server.start(make(data, str(run)), logs / f"victim-{i}.log")
        survivor = server.start(make(data, str(run)), logs / f"survivor-{i}.log")
        time.sleep(rng.uniform(0.05, 0.95) * seconds)
        survivor_closed = not _has_open(survivor, run / "results.sqlite")
        signal_status = server.kill_and_wait(victim)
        landed += signal_status == -signal.SIGKILL
        status = server.wait(survivor)
        wal = [name for name in _WAL if (run / name).exists()]
        wal_left[survivor_closed] += bool(wal) and signal_status == -signal.SIGKILL
        problem = _check(work / "reference", run, _WAL) if status == 0 else f"survivor exit {status}"
        if problem:
            failures.append(problem)
        shutil.rmtree(run)
    return {"command": "eval, two processes, one killed", "kills_tried": rounds,
            "kills_landed": landed, "wal_left_survivor_had_store_open_at_kill": wal_left[False],
            "wal_left_survivor_had_no_store_open_at_kill": wal_left[True],
            "uninterrupted_seconds": round(seconds, 2), "failures": failures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--kills", type=int, default=10, help="kills per command")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON file for the results")
    args = parser.parse_args()
    server = ForkServer()
    results = []
    with tempfile.TemporaryDirectory(prefix="kill-campaign-") as tmp:
        for i, name in enumerate(COMMANDS):
            results.append(campaign(server, name, args.data_root, Path(tmp) / name, args.kills,
                                    args.seed + i))
            print(json.dumps(results[-1]), flush=True)
        results.append(shared_run(server, args.data_root, Path(tmp) / "shared", args.kills,
                                  args.seed + 10))
        print(json.dumps(results[-1]), flush=True)
    server.close()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
