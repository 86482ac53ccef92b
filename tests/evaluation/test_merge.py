"""Sharded evaluation and merging: sharded + merged equals unsharded, byte for byte in the
predictions; merging is idempotent and refuses mixed grids; torchrun (2 CPU processes, gloo)
equals one process; a shard killed with SIGKILL resumes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medrobust.cli import main
from medrobust.data import load_medmnist
from medrobust.evaluation import GridSpec, ResultsStore, run_grid
from medrobust.evaluation.merge import MergeError, merge_run, read_shard_info
from medrobust.evaluation.sharding import Shard
from medrobust.models import create_model


@pytest.fixture(scope="module")
def tiny_clip():
    return create_model("clip-vit-b16", pretrained=False, tiny=True)


@pytest.fixture(scope="module")
def datasets(shared_data):
    breast = load_medmnist("breastmnist", root=shared_data, download=False).subset(range(12))
    pneumonia = load_medmnist("pneumoniamnist", root=shared_data, download=False).subset(range(20))
    return [breast, pneumonia]


def _spec(model, datasets, **kw):
    base = dict(models=[model], datasets=datasets, corruptions=["pixelate", "speckle_noise"],
                severities=(1, 4), batch_size=8)
    return GridSpec(**{**base, **kw})


def _results(run_dir: Path) -> dict[str, tuple[dict, bytes, bytes]]:
    """cell id -> (metrics, probabilities bytes, labels bytes)."""
    out = {}
    with ResultsStore(run_dir) as store:
        for row in store.rows():
            probs, labels = store.predictions(row)
            metrics = {k: row[k] for k in ("n", "accuracy", "balanced_accuracy", "auc", "ece")}
            out[row["cell_id"]] = (metrics, probs.tobytes(), labels.tobytes())
    return out


def test_sharded_and_merged_equals_unsharded(tiny_clip, datasets, tmp_path):
    run_grid(_spec(tiny_clip, datasets), tmp_path / "whole", progress=False)
    cells = []
    for index in range(3):
        shard = Shard(index, 3)
        summary = run_grid(_spec(tiny_clip, datasets), tmp_path / "sharded", progress=False, shard=shard)
        info = read_shard_info(shard.store_dir(tmp_path / "sharded"))
        assert summary.computed == len(info.cells) and info.shard == Shard(index, 3)
        cells.append(info.cells)
    assert sum(len(c) for c in cells) == 10 and len(set().union(*cells)) == 10  # disjoint, whole grid
    images = [sum(12 if c in _breast_ids(tmp_path) else 20 for c in part) for part in cells]
    assert max(images) - min(images) <= 20  # balanced by images, within one cell
    merged = merge_run(tmp_path / "sharded")
    assert merged.complete and merged.merged == 10 and merged.present == 0
    assert _results(tmp_path / "sharded") == _results(tmp_path / "whole")
    with ResultsStore(tmp_path / "sharded") as store:  # files are copies of the shards' own
        row = store.rows()[0]
        shard_files = list((tmp_path / "sharded" / "shards").glob(f"*/{row['predictions']}"))
        assert (tmp_path / "sharded" / row["predictions"]).read_bytes() == shard_files[0].read_bytes()
    again = merge_run(tmp_path / "sharded")
    assert (again.merged, again.present) == (0, 10)
    assert len(_results(tmp_path / "sharded")) == 10


def _breast_ids(tmp_path: Path) -> set[str]:
    with ResultsStore(tmp_path / "whole") as store:
        return {r["cell_id"] for r in store.rows(dataset="breastmnist")}


def test_partial_merge_reports_missing_shards_and_completes_later(tiny_clip, datasets, tmp_path):
    spec = _spec(tiny_clip, datasets[:1], corruptions=["pixelate"])
    run_grid(spec, tmp_path, progress=False, shard=Shard(0, 2))
    first = merge_run(tmp_path)
    assert not first.complete and first.missing == [1] and "shards 1 not started" in first.describe()
    run_grid(spec, tmp_path, progress=False, shard=Shard(1, 2))
    second = merge_run(tmp_path)
    assert second.complete and second.present == first.merged
    with ResultsStore(tmp_path) as store:
        assert len(store.rows()) == 3


def test_merge_refuses_shards_of_different_grids_and_writes_nothing(tiny_clip, datasets, tmp_path):
    run_grid(_spec(tiny_clip, datasets[:1], seed=0), tmp_path, progress=False, shard=Shard(0, 2))
    run_grid(_spec(tiny_clip, datasets[:1], seed=1), tmp_path, progress=False, shard=Shard(1, 2))
    with pytest.raises(MergeError, match="different grids"):
        merge_run(tmp_path)
    assert not (tmp_path / "results.sqlite").exists()


def test_a_shard_store_is_not_reused_for_another_grid(tiny_clip, datasets, tmp_path):
    run_grid(_spec(tiny_clip, datasets[:1], corruptions=[]), tmp_path, progress=False, shard=Shard(0, 2))
    with pytest.raises(MergeError, match="another grid"):
        run_grid(_spec(tiny_clip, datasets[:1], corruptions=[], seed=3), tmp_path, progress=False,
                 shard=Shard(0, 2))


def test_merge_without_shards_is_a_clear_error(tmp_path):
    with pytest.raises(MergeError, match="no shard stores"):
        merge_run(tmp_path)


# ----------------------------------------------------------------------------- as users run it

_GRID = ["--model", "medrobust-mini", "--dataset", "breastmnist", "--dataset", "pneumoniamnist",
         "--corruptions", "pixelate,speckle_noise", "--quiet"]


def _env(shared_data: Path) -> dict[str, str]:
    env = {**os.environ, "MEDROBUST_DATA": str(shared_data), "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
        env.pop(name, None)
    return env


def _eval(args: list[str], env: dict[str, str], launcher: list[str] | None = None) -> None:
    """``medrobust eval`` as a user runs it: a separate process (or several, with a launcher)."""
    command = [*(launcher or [sys.executable, "-m", "medrobust.cli"]), "eval", *_GRID, *args]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _eval_here(args: list[str], shared_data: Path) -> None:
    """The same in this process (cheaper: no interpreter start)."""
    assert main(["eval", *_GRID, "--data-root", str(shared_data), *args]) == 0


def test_torchrun_two_processes_equal_one_process(shared_data, tmp_path):
    grid = ["--severities", "1,3", "--limit", "16"]
    _eval_here([*grid, "--run-dir", str(tmp_path / "one")], shared_data)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "medrobust.cli"]
    _eval([*grid, "--run-dir", str(tmp_path / "two")], _env(shared_data), torchrun)
    assert sorted(p.name for p in (tmp_path / "two" / "shards").iterdir()) == [
        "shard-0-of-2", "shard-1-of-2"]
    one, two = _results(tmp_path / "one"), _results(tmp_path / "two")  # rank 0 merged: no extra step
    assert len(one) == 10 and two == one


def _rows(store_dir: Path) -> int:
    try:
        with sqlite3.connect(store_dir / "results.sqlite", timeout=10) as conn:
            return conn.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_a_killed_shard_resumes(shared_data, tmp_path):
    grid = ["--severities", "1-5", "--limit", "32", "--batch-size", "16"]
    run = tmp_path / "run"
    shard_dir = Shard(0, 2).store_dir(run)
    command = [sys.executable, "-m", "medrobust.cli", "eval", *_GRID, *grid, "--run-dir", str(run),
               "--shard", "0/2"]
    proc = subprocess.Popen(command, env=_env(shared_data), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while _rows(shard_dir) < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the shard finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert 1 <= _rows(shard_dir) < len(read_shard_info(shard_dir).cells)
    _eval_here([*grid, "--run-dir", str(run), "--shard", "0/2"], shared_data)
    _eval_here([*grid, "--run-dir", str(run), "--shard", "1/2"], shared_data)
    summary = merge_run(run)
    assert summary.complete and summary.merged == 22
    _eval_here([*grid, "--run-dir", str(tmp_path / "whole")], shared_data)
    assert _results(run) == _results(tmp_path / "whole")
    assert not list(run.rglob(".*.tmp-*"))  # no temporary file left behind
