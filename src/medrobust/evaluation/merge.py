"""Combine the stores of a sharded evaluation into the run's ``results.sqlite``.

Each shard (see :mod:`medrobust.evaluation.sharding`) records in its own store which grid it
belongs to (a digest of every cell id of the whole grid), how many shards there are and which
cells are its own. Merging copies every finished row, and its predictions file, into
``RUN/results.sqlite`` and ``RUN/predictions``: predictions first, then the row, so a merge
killed at any point leaves no row without its file, and running it again finishes the job.
Rows already present are left alone, so merging is idempotent and never duplicates a cell.
Stores of different grids or shard counts are refused before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .sharding import SHARDS_DIR, Shard
from .store import ResultsStore

__all__ = [
    "MergeError", "MergeSummary", "ShardInfo", "merge_run", "merge_when_done", "read_shard_info",
    "write_shard_info",
]

_GRID, _INDEX, _COUNT, _CELLS = "shard:grid", "shard:index", "shard:count", "shard:cells"


class MergeError(ValueError):
    """The shard stores cannot be merged (none found, or they belong to different grids)."""


@dataclass(frozen=True)
class ShardInfo:
    """What a shard store holds: its place in the grid and the cells assigned to it."""

    path: Path
    grid: str
    shard: Shard
    cells: frozenset[str]


@dataclass
class MergeSummary:
    """What a merge copied, and how much of the grid the shards have finished."""

    count: int  # shards the grid is split into
    shards: int = 0  # shard stores found
    merged: int = 0  # rows copied by this merge
    present: int = 0  # rows the run's store already held
    assigned: int = 0  # cells assigned to the shards found
    done: int = 0  # of those, cells finished
    missing: list[int] = field(default_factory=list)  # shards with no store yet

    @property
    def complete(self) -> bool:
        """Every shard exists and has finished every cell assigned to it."""
        return not self.missing and self.done == self.assigned

    def describe(self) -> str:
        state = "complete" if self.complete else (
            f"incomplete: {self.done}/{self.assigned} cells done"
            + (f", shards {', '.join(map(str, self.missing))} not started" if self.missing else "")
        )
        return (f"merged {self.merged} new cells ({self.present} already present) from "
                f"{self.shards}/{self.count} shards; grid {state}")


def write_shard_info(store: ResultsStore, grid: str, shard: Shard, cells: list[str]) -> None:
    """Record in a shard's store which grid and shard it holds; refuse a store of another grid."""
    meta = store.meta()
    if _GRID in meta and (meta[_GRID], meta.get(_COUNT)) != (grid, str(shard.count)):
        raise MergeError(
            f"{store.run_dir} holds shard results of another grid or shard count; merge them "
            f"(`medrobust merge {store.run_dir.parents[1]}`) and delete {store.run_dir}, or use "
            "another --run-dir"
        )
    store.set_meta({_GRID: grid, _INDEX: str(shard.index), _COUNT: str(shard.count),
                    _CELLS: json.dumps(sorted(cells))})


def read_shard_info(path: Path) -> ShardInfo:
    """The shard notes of the store in folder ``path``."""
    with ResultsStore(path) as store:
        meta = store.meta()
    try:
        shard = Shard(int(meta[_INDEX]), int(meta[_COUNT]))
        return ShardInfo(path, meta[_GRID], shard, frozenset(json.loads(meta[_CELLS])))
    except (KeyError, ValueError) as exc:
        raise MergeError(f"{path} is not a shard store of medrobust eval --shard ({exc})") from None


def _shard_dirs(run_dir: Path) -> list[Path]:
    root = run_dir / SHARDS_DIR
    return sorted(p for p in root.glob("shard-*-of-*") if (p / "results.sqlite").is_file())


def _check_same_grid(infos: list[ShardInfo]) -> None:
    kinds = {(i.grid, i.shard.count) for i in infos}
    if len(kinds) > 1:
        listing = "; ".join(f"{i.path.name}: grid {i.grid[:12]}, {i.shard.count} shards" for i in infos)
        raise MergeError(f"shard stores of different grids or shard counts, refusing to merge "
                         f"({listing}); move the ones that do not belong elsewhere")


def _copy_file(source: Path, target: Path) -> None:
    """Copy atomically (temporary name, then rename): a reader never sees half a file."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def merge_run(run_dir: str | Path) -> MergeSummary:
    """Merge every shard store of ``run_dir`` into ``run_dir/results.sqlite``; idempotent."""
    run_dir = Path(run_dir)
    dirs = _shard_dirs(run_dir)
    if not dirs:
        raise MergeError(f"no shard stores in {run_dir / SHARDS_DIR}: nothing to merge "
                         "(they are written by `medrobust eval --shard I/N --run-dir RUN`)")
    infos = [read_shard_info(d) for d in dirs]
    _check_same_grid(infos)
    count = infos[0].shard.count
    summary = MergeSummary(count, shards=len(infos))
    summary.missing = sorted(set(range(count)) - {i.shard.index for i in infos})
    with ResultsStore(run_dir) as target:
        for info in infos:
            with ResultsStore(info.path) as source:
                rows = source.rows()
                notes = {k: v for k, v in source.meta().items() if not k.startswith("shard:")}
            if notes:
                target.set_meta(notes)
            summary.assigned += len(info.cells)
            summary.done += len(info.cells & {r["cell_id"] for r in rows})
            for row in rows:
                if target.has_cell(row["cell_id"]):
                    summary.present += 1
                    continue
                _copy_file(info.path / row["predictions"], run_dir / row["predictions"])
                summary.merged += target.import_row(row)
    return summary


def merge_when_done(run_dir: str | Path, shard: Shard | None) -> MergeSummary | None:
    """Under torchrun, wait for every rank's shard and let rank 0 merge them (the others wait
    for the merge too), so ``RUN/results.sqlite`` holds the whole grid when the job ends.

    Shards of other launchers (a SLURM array's tasks are separate jobs) are merged by
    :func:`merge_run` afterwards (``medrobust merge RUN``); None is returned for them.
    A rank that fails ends the torchrun job, and the merge of a rerun picks up from there.
    """
    if shard is None or shard.launcher != "torchrun":
        return None
    from datetime import timedelta

    from .._distributed import process_group

    summary = None
    # ranks finish their shards at different times: the barrier waits as long as a grid may take
    with process_group("gloo", timeout=timedelta(days=7)) as group:
        group.barrier()
        if group.main:
            summary = merge_run(run_dir)
        group.barrier()
    return summary
