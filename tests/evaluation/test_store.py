"""Results store: atomic cells, resume, claims across processes, export, unreadable databases."""

from __future__ import annotations

import csv
import multiprocessing as mp

import numpy as np
import pytest

from medrobust.evaluation.store import CellKey, ResultsStore, StoreError


def _key(corruption="clean", severity=0, model="m"):
    return CellKey(
        model,
        "abc",
        "breastmnist",
        "test",
        corruption,
        severity,
        0,
        "medmnist-c",
        {"prompts": ["a {}"]},
    )


def _metrics():
    return {
        "accuracy": 0.5,
        "balanced_accuracy": 0.5,
        "auc": float("nan"),
        "ece": 0.1,
        "error": 0.5,
        "balanced_error": 0.5,
        "n": 4,
    }


def test_add_then_done_and_predictions_round_trip(tmp_path):
    probs = np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5], [0.9, 0.1]])
    labels = np.array([1, 0, 1, 0])
    with ResultsStore(tmp_path) as store:
        key = _key()
        assert not store.is_done(key) and store.claim(key)
        store.add(key, _metrics(), probs, labels, seconds=0.1)
        assert store.is_done(key) and not store.claim(key)
        (row,) = store.rows()
        assert row["accuracy"] == 0.5 and row["auc"] is None and row["corruption"] == "clean"
        p, y = store.predictions(row)
        np.testing.assert_allclose(p, probs, rtol=1e-6)
        np.testing.assert_array_equal(y, labels)
    with ResultsStore(tmp_path) as again:
        assert again.is_done(_key()) and len(again.rows()) == 1


def test_config_changes_the_cell(tmp_path):
    a = _key()
    b = CellKey(
        *[
            getattr(a, f)
            for f in (
                "model",
                "weights_hash",
                "dataset",
                "split",
                "corruption",
                "severity",
                "seed",
                "suite",
            )
        ],
        {"prompts": ["b {}"]},
    )
    assert a.cell_id != b.cell_id


def _claim_in_child(run_dir, queue):
    with ResultsStore(run_dir) as store:
        queue.put(store.claim(_key("gaussian_noise", 1)))


def test_a_claimed_cell_is_not_taken_by_another_process(tmp_path):
    with ResultsStore(tmp_path) as store:
        assert store.claim(_key("gaussian_noise", 1))
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=_claim_in_child, args=(tmp_path, queue))
        proc.start()
        proc.join(60)
        assert queue.get(timeout=5) is False


def test_export_csv(tmp_path):
    with ResultsStore(tmp_path) as store:
        store.add(_key(), _metrics(), np.eye(2), np.array([0, 1]))
        store.add(_key("pixelate", 3), _metrics(), np.eye(2), np.array([0, 1]))
        out = store.export(tmp_path / "cells.csv")
    rows = list(csv.DictReader(out.open()))
    assert [r["corruption"] for r in rows] == ["clean", "pixelate"]
    with ResultsStore(tmp_path) as store, pytest.raises(ValueError, match="csv"):
        store.export(tmp_path / "cells.xlsx")


def test_unreadable_database_is_a_clear_error_and_untouched(tmp_path):
    db = tmp_path / "results.sqlite"
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a medrobust results database"):
        ResultsStore(tmp_path)
    assert db.read_bytes() == b"this is not sqlite" * 100


def test_info_round_trip_and_old_runs_have_none(tmp_path):
    with ResultsStore(tmp_path) as store:
        assert store.info() == {"dataset": {}, "model": {}, "suite": {}}
        store.set_info("dataset", "breastmnist", {"modality": "breast ultrasound"})
        store.set_info("model", "m", {"notes": "saw these classes"})
        store.set_info("model", "m", {"notes": "replaced"})
        with pytest.raises(ValueError, match="info kind"):
            store.set_info("run", "x", {})
    with ResultsStore(tmp_path) as store:
        assert store.info() == {"dataset": {"breastmnist": {"modality": "breast ultrasound"}},
                                "model": {"m": {"notes": "replaced"}}, "suite": {}}
