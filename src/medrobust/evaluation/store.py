"""The results store of an evaluation run: one SQLite row per grid cell.

Each cell (model, weights, dataset, split, corruption, severity, seed, prompts, ...) is an
independent unit of work. Its probabilities and labels are written first (atomically, beside
the database), then its row is inserted in one transaction: a run killed at any moment
loses at most the cell in flight and never leaves a half-written row. Several processes may
share one store: a cell is claimed before it is computed, and SQLite's locking (WAL mode,
busy timeout) serialises the writes.

A claim names its owner (host, pid, process start time). A claim whose owner is dead is taken
over at once: on the same host the process is gone (or its pid now belongs to a newer
process); on another host its heartbeat, which the owner refreshes while it computes
(:meth:`ResultsStore.heartbeat`), is older than ``claim_timeout`` seconds.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .._files import atomic_path, remove_orphans, write_failure
from .._process import Owner, current_owner

__all__ = ["CellKey", "ResultsStore", "StoreError"]

_F = TypeVar("_F", bound=Callable[..., Any])

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    cell_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    weights_hash TEXT NOT NULL,
    dataset TEXT NOT NULL,
    split TEXT NOT NULL,
    corruption TEXT NOT NULL,
    severity INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    suite TEXT NOT NULL,
    config TEXT NOT NULL,
    n INTEGER NOT NULL,
    accuracy REAL,
    balanced_accuracy REAL,
    auc REAL,
    ece REAL,
    error REAL,
    balanced_error REAL,
    predictions TEXT NOT NULL,
    seconds REAL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (
    cell_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    claimed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

INFO_KINDS = ("dataset", "model", "suite", "engine")
_REQUIRED_COLUMNS = {
    "cells": {"cell_id", "model", "weights_hash", "dataset", "split", "corruption", "severity",
              "seed", "suite", "config", "n", "predictions"},
    "claims": {"cell_id", "owner", "claimed_at"},
}
CLAIM_TIMEOUT = 300.0  # seconds without a heartbeat after which another host's claim is stale
METRIC_COLUMNS = ("accuracy", "balanced_accuracy", "auc", "ece", "error", "balanced_error")


class StoreError(RuntimeError):
    """The run database cannot be opened or read."""


@dataclass(frozen=True)
class CellKey:
    """Everything that determines a cell's result."""

    model: str
    weights_hash: str
    dataset: str
    split: str
    corruption: str  # "clean" for the clean cell
    severity: int  # 0 for the clean cell
    seed: int
    suite: str
    config: Mapping[str, Any]  # prompts, preprocessing, source of images, code version, ...

    @property
    def cell_id(self) -> str:
        payload = json.dumps(
            [self.model, self.weights_hash, self.dataset, self.split, self.corruption,
             self.severity, self.seed, self.suite, self.config],
            sort_keys=True, default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _translated(doing: str) -> Callable[[_F], _F]:
    """Turn a SQLite failure inside a store method into a clear error (see ``_error``)."""

    def wrap(method: _F) -> _F:
        @functools.wraps(method)
        def run(self: ResultsStore, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except sqlite3.Error as exc:
                raise self._error(exc, doing) from exc

        return run  # type: ignore[return-value]

    return wrap


class ResultsStore:
    """SQLite database ``results.sqlite`` plus ``predictions/<cell>.npz`` in a run folder."""

    def __init__(
        self, run_dir: str | Path, *, claim_timeout: float = CLAIM_TIMEOUT, readonly: bool = False
    ) -> None:
        """Open (or create) the run's store; ``readonly`` opens an existing one for reading
        only, which needs no write access to the folder (a shared or archived run)."""
        if not claim_timeout > 0:
            raise ValueError(f"claim_timeout must be > 0 seconds, got {claim_timeout}")
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "results.sqlite"
        self.predictions_dir = self.run_dir / "predictions"
        self.claim_timeout = claim_timeout
        self.readonly = readonly
        self.owner = str(current_owner())
        try:
            self._conn = self._open_readonly() if readonly else self._open_writable()
            self._check_schema(allow_empty=False)
        except sqlite3.DatabaseError as exc:
            raise self._error(exc, "open") from exc
        except OSError as exc:
            raise StoreError(f"cannot create run folder {self.run_dir}: {exc}") from exc

    def _open_writable(self) -> sqlite3.Connection:
        self.predictions_dir.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        self._conn = conn
        self._check_schema()  # before anything is written to a file that may be foreign
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=60000")
        conn.executescript(_SCHEMA)
        remove_orphans(self.run_dir)  # temporary files of killed processes
        return conn

    def _open_readonly(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise StoreError(
                f"{self.run_dir} holds no evaluation results ({self.path.name} is missing): "
                f"run `medrobust eval ... --run-dir {self.run_dir}` first"
            )
        uri = self.path.resolve().as_uri()
        try:
            conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None)
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError:  # a WAL database in a read-only folder
            conn = sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)
        return conn

    def _check_schema(self, allow_empty: bool = True) -> None:
        """Refuse a SQLite file that is not a results store (another program's database);
        a new, empty one passes when ``allow_empty``."""
        tables = self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        if allow_empty and not tables:
            return
        for table, needed in _REQUIRED_COLUMNS.items():
            found = {row[1] for row in self._conn.execute(f"PRAGMA table_info({table})")}
            if not needed <= found:
                raise StoreError(
                    f"{self.path} is not a medrobust results database (its table {table!r} "
                    f"lacks {', '.join(sorted(needed - found))}); use another --run-dir "
                    "(nothing was changed)"
                )

    def _error(self, exc: sqlite3.Error, doing: str) -> Exception:
        """A clear error for a failed SQLite call: storage problems say so, damage says so."""
        name = getattr(exc, "sqlite_errorname", "")
        if name.startswith(("SQLITE_IOERR", "SQLITE_FULL")):
            return write_failure(self.path, exc)
        if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM")):
            return StoreError(
                f"cannot {doing} the run database {self.path}: {exc}; the folder must be "
                "writable (report reads a run without writing: medrobust report RUN --out DIR)"
            )
        return StoreError(
            f"cannot {doing} the run database {self.path}: {exc}. It is not a medrobust results "
            "database or it is damaged; use another --run-dir (nothing was changed)."
        )

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @_translated("read")
    def is_done(self, key: CellKey) -> bool:
        row = self._conn.execute("SELECT 1 FROM cells WHERE cell_id = ?", (key.cell_id,)).fetchone()
        return row is not None

    @_translated("write")
    def claim(self, key: CellKey) -> bool:
        """Reserve a cell for this process; False if it is done or another live process has it.

        A claim of a dead owner is taken over (see the module's docstring)."""
        now = time.time()
        with self._transaction():
            if self.is_done(key):
                return False
            row = self._conn.execute(
                "SELECT owner, claimed_at FROM claims WHERE cell_id = ?", (key.cell_id,)
            ).fetchone()
            if row and row[0] != self.owner and self._claim_alive(row[0], row[1], now):
                return False
            self._conn.execute(
                "INSERT OR REPLACE INTO claims (cell_id, owner, claimed_at) VALUES (?, ?, ?)",
                (key.cell_id, self.owner, now),
            )
        return True

    @_translated("read")
    def holder(self, key: CellKey) -> str | None:
        """The live owner (``host:pid:start``) of an unfinished cell's claim, else None."""
        row = self._conn.execute(
            "SELECT owner, claimed_at FROM claims WHERE cell_id = ?", (key.cell_id,)
        ).fetchone()
        if row and row[0] != self.owner and self._claim_alive(row[0], row[1], time.time()):
            return row[0]
        return None

    def _claim_alive(self, owner: str, heartbeat: float, now: float) -> bool:
        """Whether a claim's owner still works on it: its process on this host, else its
        heartbeat."""
        parsed = Owner.parse(owner)
        alive = parsed.alive() if parsed is not None else None
        if alive is None:
            return now - heartbeat < self.claim_timeout
        return alive

    @contextmanager
    def heartbeat(self, interval: float | None = None) -> Iterator[None]:
        """Refresh this process's claims every ``interval`` seconds (default: a quarter of
        ``claim_timeout``, at most 30 s) while the block runs, so other hosts see it alive."""
        every = interval if interval is not None else min(30.0, self.claim_timeout / 4)
        stop = threading.Event()

        def beat() -> None:
            conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            try:
                while not stop.wait(every):
                    try:
                        conn.execute("UPDATE claims SET claimed_at = ? WHERE owner = ?",
                                     (time.time(), self.owner))
                    except sqlite3.Error:  # busy or full: the next beat tries again
                        continue
            finally:
                conn.close()

        thread = threading.Thread(target=beat, name="medrobust-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    @_translated("write")
    def release(self, key: CellKey) -> None:
        self._conn.execute("DELETE FROM claims WHERE cell_id = ? AND owner = ?", (key.cell_id, self.owner))

    @_translated("write")
    def add(
        self,
        key: CellKey,
        metrics: Mapping[str, Any],
        probabilities: np.ndarray,
        labels: np.ndarray,
        *,
        seconds: float | None = None,
    ) -> None:
        """Record a finished cell: predictions file first, then the row, atomically."""
        rel = Path("predictions") / f"{key.cell_id}.npz"
        final = self.run_dir / rel
        with atomic_path(final, suffix=".npz") as tmp:
            np.savez_compressed(tmp, probabilities=np.asarray(probabilities, np.float32),
                                labels=np.asarray(labels))
        values = [metrics.get(c) for c in METRIC_COLUMNS]
        values = [None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v) for v in values]
        with self._transaction():
            self._conn.execute(
                f"INSERT OR REPLACE INTO cells (cell_id, model, weights_hash, dataset, split, corruption,"
                f" severity, seed, suite, config, n, {', '.join(METRIC_COLUMNS)}, predictions, seconds,"
                f" created_at) VALUES ({', '.join('?' * (14 + len(METRIC_COLUMNS)))})",
                (key.cell_id, key.model, key.weights_hash, key.dataset, key.split, key.corruption,
                 key.severity, key.seed, key.suite, json.dumps(key.config, sort_keys=True, default=str),
                 int(metrics.get("n", len(labels))), *values, str(rel), seconds,
                 time.strftime("%Y-%m-%dT%H:%M:%S%z")),
            )
            self._conn.execute("DELETE FROM claims WHERE cell_id = ?", (key.cell_id,))

    @_translated("read")
    def rows(self, **filters: Any) -> list[dict[str, Any]]:
        """All finished cells as dicts, optionally filtered by column equality."""
        allowed = {"model", "dataset", "split", "corruption", "severity", "suite", "seed"}
        unknown = set(filters) - allowed
        if unknown:
            raise ValueError(f"cannot filter on {sorted(unknown)}; allowed: {sorted(allowed)}")
        where = " AND ".join(f"{k} = ?" for k in filters)
        sql = "SELECT * FROM cells" + (f" WHERE {where}" if where else "") + " ORDER BY model, dataset, corruption, severity"
        cursor = self._conn.execute(sql, tuple(filters.values()))
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    @_translated("write")
    def set_info(self, kind: str, name: str, info: Mapping[str, Any]) -> None:
        """Record what a ``kind`` ('dataset', 'model', 'suite' or 'engine': how one invocation
        ran the models) named ``name`` is, so that a report reads it from the run instead of
        guessing it from the name (meta table)."""
        if kind not in INFO_KINDS:
            raise ValueError(f"info kind must be one of {INFO_KINDS}, got {kind!r}")
        self._conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            (f"{kind}:{name}", json.dumps(dict(info), sort_keys=True, default=str)),
        )

    @_translated("read")
    def info(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``{kind: {name: info}}`` recorded with ``set_info``; empty kinds for older runs."""
        out: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in INFO_KINDS}
        try:
            rows = self._conn.execute("SELECT key, value FROM meta").fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot read the run database {self.path}: {exc}") from exc
        for key, value in rows:
            kind, _, name = str(key).partition(":")
            if kind in out and name:
                out[kind][name] = json.loads(value)
        return out

    def has_cell(self, cell_id: str) -> bool:
        """Whether a finished row with this id is in the store."""
        return self._conn.execute("SELECT 1 FROM cells WHERE cell_id = ?", (cell_id,)).fetchone() is not None

    def meta(self) -> dict[str, str]:
        """The run's key/value notes (e.g. which shard of which grid this store holds)."""
        return dict(self._conn.execute("SELECT key, value FROM meta").fetchall())

    def set_meta(self, values: Mapping[str, str]) -> None:
        with self._transaction():
            self._conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                   list(values.items()))

    def import_row(self, row: Mapping[str, Any]) -> bool:
        """Insert a finished row read from another store (its predictions file must already be
        in this run folder at ``row['predictions']``); False if the cell is already here."""
        columns = [c for c in self._columns() if c in row]
        with self._transaction():
            cursor = self._conn.execute(
                f"INSERT OR IGNORE INTO cells ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                [row[c] for c in columns],
            )
        return cursor.rowcount == 1

    def _columns(self) -> list[str]:
        return [r[1] for r in self._conn.execute("PRAGMA table_info(cells)").fetchall()]

    def predictions(self, row: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The saved probabilities and labels of a cell, to recompute any metric."""
        with np.load(self.run_dir / row["predictions"], allow_pickle=False) as f:
            return f["probabilities"], f["labels"]

    def export(self, path: str | Path) -> Path:
        """Write all rows to ``.csv`` or ``.parquet`` (needs pandas + pyarrow) atomically."""
        path = Path(path)
        rows = self.rows()
        if path.suffix not in (".csv", ".parquet"):
            raise ValueError(f"export to .csv or .parquet, not {path.suffix!r}")
        with atomic_path(path) as tmp:
            if path.suffix == ".csv":
                with tmp.open("w", newline="") as fh:
                    columns = list(rows[0]) if rows else ["cell_id"]
                    writer = csv.DictWriter(fh, fieldnames=columns)
                    writer.writeheader()
                    writer.writerows(rows)
            else:
                try:
                    import pandas as pd
                except ImportError as exc:
                    raise ValueError("Parquet export needs pandas and pyarrow: pip install pandas pyarrow") from exc
                pd.DataFrame(rows).to_parquet(tmp)
        return path

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error (writers queue on the lock)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
