"""Split an evaluation grid across processes, GPUs and hosts.

A shard ``I/N`` (0 <= I < N) evaluates a deterministic 1/N of the grid's work items (a
dataset's cell, scored by every model), balanced by image count: every shard computes the same
partition from the same grid, so shards need no communication. Under ``torchrun`` the shard is
the process's rank (``RANK``/``WORLD_SIZE``, device ``cuda:LOCAL_RANK``); in a SLURM job array
it is the task's index in the array. Each shard writes its own store under the run folder
(``RUN/shards/shard-I-of-N``; SQLite is not safe across hosts on a network file system) and
:func:`medrobust.evaluation.merge.merge_run` combines them into ``RUN/results.sqlite``.
"""

from __future__ import annotations

import hashlib
import heapq
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SHARDS_DIR", "Shard", "grid_digest", "parse_shard", "partition", "shard_from_env"]

SHARDS_DIR = "shards"


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based), and the local rank of the process on its host
    (the GPU it uses) when a launcher gives one."""

    index: int
    count: int
    local_rank: int | None = None
    launcher: str = "cli"  # "cli", "torchrun" or "slurm-array"

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard must be I/N with 0 <= I < N, got {self.index}/{self.count}")

    @property
    def name(self) -> str:
        return f"shard-{self.index}-of-{self.count}"

    def store_dir(self, run_dir: str | Path) -> Path:
        """The folder of this shard's own results store."""
        return Path(run_dir) / SHARDS_DIR / self.name

    def device(self, device: str) -> str:
        """``cuda`` becomes ``cuda:LOCAL_RANK`` under a launcher that gives a local rank."""
        if device == "cuda" and self.local_rank is not None:
            return f"cuda:{self.local_rank}"
        return device


def parse_shard(text: str) -> Shard:
    """``"I/N"`` -> :class:`Shard` (0-based index)."""
    index, sep, count = text.partition("/")
    try:
        if not sep:
            raise ValueError
        return Shard(int(index), int(count))
    except ValueError:
        raise ValueError(f"--shard must be I/N with 0 <= I < N (e.g. 0/4), got {text!r}") from None


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ValueError(f"environment variable {name}={env[name]!r} is not an integer") from None


def shard_from_env(env: Mapping[str, str] | None = None) -> Shard | None:
    """The shard a launcher assigns this process, else None.

    torchrun (or any launcher setting ``RANK`` and ``WORLD_SIZE``): shard RANK of WORLD_SIZE,
    local rank ``LOCAL_RANK``. A SLURM job array: shard ``SLURM_ARRAY_TASK_ID -
    SLURM_ARRAY_TASK_MIN`` of ``SLURM_ARRAY_TASK_COUNT`` (``--array=0-7`` or ``1-8``).
    A single process (WORLD_SIZE 1, or an array of one task) is not sharded.
    """
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        count = _int(env, "WORLD_SIZE")
        if count <= 1:
            return None
        local = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else None
        return Shard(_int(env, "RANK"), count, local, "torchrun")
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        count = _int(env, "SLURM_ARRAY_TASK_COUNT")
        if count <= 1:
            return None
        first = _int(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
        local = _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else None
        return Shard(_int(env, "SLURM_ARRAY_TASK_ID") - first, count, local, "slurm-array")
    return None


def partition(weights: Sequence[int], count: int) -> list[int]:
    """The shard (0..count-1) of each item, balancing the summed weights.

    Greedy longest-processing-time: items by decreasing weight (ties by position) each go to
    the least loaded shard (ties to the lowest index), so the largest shard exceeds the mean
    by at most one item's weight. Deterministic: the same weights give the same partition in
    every process.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if any(w < 0 for w in weights):
        raise ValueError("weights must be >= 0")
    loads = [(0, shard) for shard in range(count)]
    out = [0] * len(weights)
    for item in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        load, shard = heapq.heappop(loads)
        out[item] = shard
        heapq.heappush(loads, (load + weights[item], shard))
    return out


def grid_digest(cell_ids: Iterable[str]) -> str:
    """SHA-256 of a grid's cell ids (order-free): equal iff two processes evaluate the same grid
    with the same configuration (models, weights, prompts, suite, seed, code version, ...)."""
    return hashlib.sha256("\n".join(sorted(cell_ids)).encode()).hexdigest()
