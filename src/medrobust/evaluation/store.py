"""The results store of an evaluation run: one SQLite row per grid cell.

Each cell (model, weights, dataset, split, corruption, severity, seed, prompts, ...) is an
independent unit of work. Its probabilities and labels are written first (atomically, beside
the database), then its row is inserted in one transaction: a run killed at any moment
loses at most the cell in flight and never leaves a half-written row. Several processes may
share one store: a cell is claimed before it is computed, and SQLite's locking (WAL mode,
busy timeout) serialises the writes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._files import atomic_path

__all__ = ["CellKey", "ResultsStore", "StoreError"]

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

INFO_KINDS = ("dataset", "model", "suite")
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


class ResultsStore:
    """SQLite database ``results.sqlite`` plus ``predictions/<cell>.npz`` in a run folder."""

    def __init__(self, run_dir: str | Path, *, claim_timeout: float = 3600.0) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "results.sqlite"
        self.predictions_dir = self.run_dir / "predictions"
        self.claim_timeout = claim_timeout
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        try:
            self.predictions_dir.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA busy_timeout=60000")
            self._conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"cannot open the run database {self.path}: {exc}. It is not a medrobust results "
                "database or it is damaged; use another --run-dir (nothing was changed)."
            ) from exc
        except OSError as exc:
            raise StoreError(f"cannot create run folder {self.run_dir}: {exc}") from exc

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def is_done(self, key: CellKey) -> bool:
        row = self._conn.execute("SELECT 1 FROM cells WHERE cell_id = ?", (key.cell_id,)).fetchone()
        return row is not None

    def claim(self, key: CellKey) -> bool:
        """Reserve a cell for this process; False if it is done or another live process has it."""
        now = time.time()
        with self._transaction():
            if self.is_done(key):
                return False
            row = self._conn.execute(
                "SELECT owner, claimed_at FROM claims WHERE cell_id = ?", (key.cell_id,)
            ).fetchone()
            if row and row[0] != self.owner and now - row[1] < self.claim_timeout:
                return False
            self._conn.execute(
                "INSERT OR REPLACE INTO claims (cell_id, owner, claimed_at) VALUES (?, ?, ?)",
                (key.cell_id, self.owner, now),
            )
        return True

    def release(self, key: CellKey) -> None:
        self._conn.execute("DELETE FROM claims WHERE cell_id = ? AND owner = ?", (key.cell_id, self.owner))

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

    def rows(self, **filters: Any) -> list[dict[str, Any]]:
        """All finished cells as dicts, optionally filtered by column equality."""
        allowed = {"model", "dataset", "split", "corruption", "severity", "suite", "seed"}
        unknown = set(filters) - allowed
        if unknown:
            raise ValueError(f"cannot filter on {sorted(unknown)}; allowed: {sorted(allowed)}")
        where = " AND ".join(f"{k} = ?" for k in filters)
        sql = "SELECT * FROM cells" + (f" WHERE {where}" if where else "") + " ORDER BY model, dataset, corruption, severity"
        try:
            cursor = self._conn.execute(sql, tuple(filters.values()))
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot read the run database {self.path}: {exc}") from exc
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def set_info(self, kind: str, name: str, info: Mapping[str, Any]) -> None:
        """Record what a ``kind`` ('dataset', 'model' or 'suite') named ``name`` is, so that a
        report reads it from the run instead of guessing it from the name (meta table)."""
        if kind not in INFO_KINDS:
            raise ValueError(f"info kind must be one of {INFO_KINDS}, got {kind!r}")
        self._conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            (f"{kind}:{name}", json.dumps(dict(info), sort_keys=True, default=str)),
        )

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
