"""A synthetic evaluation run shared by the reporting tests, provided as fixtures.

The tests folder is not a package (see tests/corruptions/conftest.py), so the helpers come as
the ``grid`` fixture: its constants describe the run (2 models x 2 datasets x (clean + 2
corruptions x 5 severities), ``N`` seeded predictions per cell) and its functions build a
store of it, read its errors back, compute mCE by hand and make store-like rows.
``run`` is such a store, ``montage`` a small PNG and ``report`` the report of ``run``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from medrobust.evaluation.metrics import cell_metrics
from medrobust.evaluation.store import CellKey, ResultsStore
from medrobust.reporting import analyse, build_tables, collect_results, write_report
from medrobust.reporting.render import Table


class Grid:
    """The synthetic run and the helpers the reporting tests compute their expectations with."""

    MODELS = ("clip-vit-b16", "medclip-resnet50")
    DATASETS = (("breastmnist", 2), ("pneumoniamnist", 2))
    CORRUPTIONS = ("blur_a", "noise_b")
    SEVERITIES = (1, 2, 3, 4, 5)
    SUITE = "synthetic-suite"  # not a built-in suite: expected corruptions are those in the run
    N = 60

    @classmethod
    def cells(cls):
        for model in cls.MODELS:
            for dataset, k in cls.DATASETS:
                yield model, dataset, k, "clean", 0
                for c in cls.CORRUPTIONS:
                    for s in cls.SEVERITIES:
                        yield model, dataset, k, c, s

    @classmethod
    def build_store(cls, run_dir: Path, *, drop: set[tuple[str, str, str, int]] = frozenset(),
                    seed: int = 0) -> Path:
        """2 models x 2 datasets x (clean + 2 corruptions x 5 severities), seeded predictions."""
        rng = np.random.default_rng(seed)
        n = cls.N
        with ResultsStore(run_dir) as store:
            for model, dataset, k, corruption, severity in cls.cells():
                labels = rng.integers(0, k, n)
                logits = rng.normal(size=(n, k))
                logits[np.arange(n), labels] += 2.0 - 0.3 * severity - 0.2 * cls.MODELS.index(model)
                probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
                if (model, dataset, corruption, severity) in drop:  # after drawing: same stream
                    continue
                key = CellKey(model, f"w{cls.MODELS.index(model)}", dataset, "test", corruption,
                              severity, 0, cls.SUITE, {"prompt": "a photo of {}", "dataset": dataset})
                store.add(key, cell_metrics(probs, labels, "binary"), probs, labels, seconds=0.1)
        return run_dir

    @staticmethod
    def errors(run_dir: Path, error_type: str = "error") -> dict[tuple[str, str, str, int], float]:
        with ResultsStore(run_dir) as store:
            return {(r["model"], r["dataset"], r["corruption"], r["severity"]): r[error_type]
                    for r in store.rows()}

    @classmethod
    def hand_mce(cls, errors, model, baseline="clip-vit-b16", datasets=None):
        """mCE by hand: per dataset the mean over corruptions of sum_s E / sum_s E_baseline."""
        per_dataset = []
        for dataset, _ in cls.DATASETS:
            if datasets is not None and dataset not in datasets:
                continue
            ratios = []
            for c in cls.CORRUPTIONS:
                keys = [(dataset, c, s) for s in cls.SEVERITIES]
                if all((model, *k) in errors and (baseline, *k) in errors for k in keys):
                    ratios.append(sum(errors[(model, *k)] for k in keys)
                                  / sum(errors[(baseline, *k)] for k in keys))
            per_dataset.append(100 * sum(ratios) / len(ratios))
        return sum(per_dataset) / len(per_dataset)

    @staticmethod
    def table(run_dir: Path, baseline: str | None = "clip-vit-b16", **kwargs) -> dict[str, Table]:
        with ResultsStore(run_dir) as store:
            results = collect_results(store.rows(), **kwargs)
        return build_tables(analyse(results, baseline))

    @classmethod
    def row(cls, model, dataset, corruption, severity, error, split="test") -> dict[str, Any]:
        return {"model": model, "weights_hash": "h", "dataset": dataset, "split": split,
                "corruption": corruption, "severity": severity, "seed": 0, "suite": cls.SUITE,
                "config": "{}", "n": 10, "accuracy": 1 - error, "balanced_accuracy": 1 - error,
                "auc": None, "ece": None, "error": error, "balanced_error": error, "seconds": None}

    @classmethod
    def grid_rows(cls, clean, corrupted, split="test") -> list[dict[str, Any]]:
        """Rows of models 'base' and 'm' on one dataset 'd' and corruption 'c'."""
        rows = []
        for model in ("base", "m"):
            rows.append(cls.row(model, "d", "clean", 0, clean[model], split))
            rows += [cls.row(model, "d", "c", s, corrupted[model], split) for s in cls.SEVERITIES]
        return rows


@pytest.fixture(scope="session")
def grid() -> type[Grid]:
    return Grid


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Grid.build_store(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def montage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("montage") / "breast.png"
    Image.new("RGB", (40, 20), (200, 30, 30)).save(path)
    return path


@pytest.fixture(scope="module")
def report(run: Path, montage: Path) -> dict[str, Path]:
    return write_report(run, montage_images={"breastmnist samples": montage})
