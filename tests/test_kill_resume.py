"""Crash safety, proven by killing: ``corrupt``, ``eval`` and ``adapt`` are killed with
SIGKILL at seeded random moments, resumed, and their outputs compared with an uninterrupted
run: the same files, byte for byte (timings excepted, see ``_normalise``), with nothing
missing, duplicated or left over (no temporary file of a killed process survives a resume).

Each command runs as a real child process of a fork server (tests/forkserver.py) that has
medrobust imported, so a start costs milliseconds and the kills land in the work.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
from contextlib import closing
from pathlib import Path

import torch
from safetensors.torch import load_file

KILLS = 3  # per command in the test suite; benchmarks/kill_campaign.py runs longer campaigns


def temporary_files(folder: Path) -> list[Path]:
    """Hidden files left in ``folder`` (every temporary file medrobust writes is hidden)."""
    return sorted(p for p in folder.rglob(".*") if p.is_file())


def kill_and_resume(server, argv, out: Path, logs: Path, seconds: float, seed: int, kills: int,
                    startup: float = 0.0):
    """Kill ``argv`` ``kills`` times at seeded random moments, resuming each time, then let it
    finish. Returns (kills that landed, temporary files seen after kills, final status).

    Each delay is drawn within the expected remaining run time: ``startup`` (a run with nothing
    left to do) plus the work not yet done, estimated from ``seconds`` (an uninterrupted run)
    less the working time of the runs killed so far, so that later kills still land (once one
    misses, the run is complete and no later kill can land)."""
    rng = random.Random(seed)
    landed, leftovers = 0, 0
    work = max(seconds - startup, 0.0)
    for i in range(kills):
        delay = rng.uniform(0.05, 0.95) * (startup + max(work, 0.1 * (seconds - startup)))
        status = server.run_killed(argv, logs / f"killed-{i}.log", delay)
        landed += status == -signal.SIGKILL
        work -= max(delay - startup, 0.0)
        leftovers += len(temporary_files(out)) if out.exists() else 0
    status, _ = server.run(argv, logs / "final.log")
    return landed, leftovers, status


def tree(folder: Path, ignore: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in ignore}


def _normalise_json(value):
    """Drop wall-clock timings (``seconds``), which differ between any two runs."""
    if isinstance(value, dict):
        return {k: _normalise_json(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_normalise_json(v) for v in value]
    return value


def _rows(db: Path) -> list[tuple]:
    # read-write and closed: a read-only connection to a WAL database creates -wal/-shm files
    # it cannot remove (they stayed in the reference folder of benchmarks/kill_campaign.py)
    with closing(sqlite3.connect(db)) as conn:
        names = [r[1] for r in conn.execute("PRAGMA table_info(cells)")]
        keep = [n for n in names if n not in ("seconds", "created_at")]
        rows = conn.execute(f"SELECT {', '.join(keep)} FROM cells ORDER BY cell_id").fetchall()
        claims = conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0]
    assert claims == 0, "claims left behind"
    return rows


def assert_same_outputs(reference: Path, resumed: Path, ignore: tuple[str, ...] = ()) -> None:
    """The same files with the same bytes (file names in ``ignore`` aside); the results
    database by rows, less timings."""
    a, b = tree(reference), tree(resumed, ignore)
    assert sorted(a) == sorted(b), f"files differ: {sorted(set(a) ^ set(b))}"
    for name in a:
        if name.endswith("results.sqlite"):
            assert _rows(reference / name) == _rows(resumed / name)
        elif name.endswith(".json"):
            assert _normalise_json(json.loads(a[name])) == _normalise_json(json.loads(b[name])), name
        elif name.endswith(".pt"):
            x = torch.load(reference / name, weights_only=True)
            y = torch.load(resumed / name, weights_only=True)
            x["history"], y["history"] = _normalise_json(x["history"]), _normalise_json(y["history"])
            assert repr(x) == repr(y), name
        else:
            assert a[name] == b[name], f"{name} differs"


def _campaign(forkserver, tmp_path, make_argv, seed, kills=KILLS):
    """Reference run, then a killed-and-resumed run; returns (landed kills, leftovers, logs)."""
    reference, resumed, logs = tmp_path / "reference", tmp_path / "resumed", tmp_path / "logs"
    logs.mkdir()
    status, _ = forkserver.run(make_argv(reference), logs / "reference.log")
    assert status == 0, (logs / "reference.log").read_text()
    # timed on a second run: the first also pays for reading libraries and data from disk
    status, seconds = forkserver.run(make_argv(tmp_path / "timing"), logs / "timing.log")
    assert status == 0, (logs / "timing.log").read_text()
    landed, leftovers, status = kill_and_resume(
        forkserver, make_argv(resumed), resumed, logs, seconds, seed, kills)
    assert status == 0, (logs / "final.log").read_text()
    assert temporary_files(resumed) == []
    assert_same_outputs(reference, resumed)
    return landed, leftovers, logs


def test_corrupt_killed_and_resumed_writes_the_same_files(forkserver, shared_data, tmp_path):
    def argv(out):
        return ["corrupt", "breastmnist", "--data-root", str(shared_data), "--out", str(out),
                "--corruptions", "pixelate,speckle_noise,motion_blur", "--severities", "1,3",
                "--batch-size", "32", "--quiet"]

    landed, _, _ = _campaign(forkserver, tmp_path, argv, seed=1)
    assert landed >= 1


def test_eval_killed_and_resumed_loses_no_cell(forkserver, shared_data, tmp_path):
    def argv(out):
        return ["eval", "--model", "medrobust-mini", "--dataset", "breastmnist",
                "--dataset", "retinamnist", "--data-root", str(shared_data), "--limit", "32",
                "--corruptions", "pixelate", "--severities", "1,3",
                "--batch-size", "16", "--run-dir", str(out), "--quiet"]

    landed, _, logs = _campaign(forkserver, tmp_path, argv, seed=2)
    assert landed >= 1
    assert "complete: 6 of 6 cells" in (logs / "final.log").read_text()


def test_adapt_killed_and_resumed_trains_the_same_adapter(forkserver, shared_data, tmp_path):
    def argv(out):
        return ["adapt", "--model", "medrobust-mini", "--dataset", "breastmnist",
                "--data-root", str(shared_data), "--shots", "8", "--epochs", "4",
                "--patience", "0", "--val-limit", "32", "--batch-size", "8", "--label", "kill-test",
                "--out", str(out),
                "--quiet"]

    landed, _, logs = _campaign(forkserver, tmp_path, argv, seed=3)
    assert landed >= 1
    assert load_file(str(tmp_path / "resumed" / "adapter_model.safetensors"))
    # this tiny run keeps the initial checkpoint: adapt says so and records it
    config = json.loads((tmp_path / "resumed" / "medrobust_adapter.json").read_text())
    assert config["validation"]["best_epoch"] == 0 and "initial checkpoint" in config["unchanged"]
    assert "warning: adaptation did nothing" in (logs / "final.log").read_text()
    from medrobust.adaptation import load_adapted_model

    notes = load_adapted_model(tmp_path / "resumed").info.notes  # what the report shows
    assert notes.startswith("adaptation did nothing: the initial checkpoint")
