"""Results store: atomic cells, resume, claims across processes, export, unreadable databases."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from medrobust._process import Owner, _start_token, current_owner
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


def _claim_as(store, key, owner, heartbeat):
    """Record a claim by ``owner`` (as another process would) with its last heartbeat."""
    store._conn.execute(
        "INSERT OR REPLACE INTO claims (cell_id, owner, claimed_at) VALUES (?, ?, ?)",
        (key.cell_id, str(owner), heartbeat),
    )


def test_a_live_owners_claim_holds_and_a_dead_owners_is_taken_over_at_once(tmp_path):
    """A real other process on this host: its claim holds while it runs and is taken over
    the moment it dies, without waiting for any timeout."""
    key = _key("gaussian_noise", 1)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = Owner(current_owner().host, other.pid, _start_token(other.pid))
        with ResultsStore(tmp_path, claim_timeout=3600) as store:
            _claim_as(store, key, owner, time.time())
            assert not store.claim(key) and store.holder(key) == str(owner)
            other.kill()
            other.wait()
            assert store.holder(key) is None and store.claim(key)
    finally:
        other.kill()
        other.wait()


def test_a_reused_pid_is_not_the_owner(tmp_path):
    """The claim records the owner's start time: a live process with that pid but another
    start time (the pid was reused) does not hold the claim."""
    key = _key("pixelate", 2)
    me = current_owner()
    with ResultsStore(tmp_path, claim_timeout=3600) as store:
        _claim_as(store, key, Owner(me.host, os.getpid(), "1"), time.time())
        assert store.claim(key)


def test_another_hosts_claim_lasts_while_its_heartbeat_is_fresh(tmp_path):
    key = _key("speckle_noise", 3)
    with ResultsStore(tmp_path, claim_timeout=60) as store:
        _claim_as(store, key, Owner("elsewhere", 4242, "77"), time.time() - 30)
        assert not store.claim(key)
        _claim_as(store, key, Owner("elsewhere", 4242, "77"), time.time() - 61)
        assert store.claim(key)


def test_the_heartbeat_refreshes_this_processs_claims(tmp_path):
    key = _key("motion_blur", 1)
    with ResultsStore(tmp_path) as store:
        assert store.claim(key)
        store._conn.execute("UPDATE claims SET claimed_at = 0")
        with store.heartbeat(interval=0.05):
            time.sleep(0.5)
        (beat,) = store._conn.execute("SELECT claimed_at FROM claims").fetchone()
        assert time.time() - beat < 5


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
        assert store.info() == {"dataset": {}, "model": {}, "suite": {}, "engine": {}}
        store.set_info("dataset", "breastmnist", {"modality": "breast ultrasound"})
        store.set_info("model", "m", {"notes": "saw these classes"})
        store.set_info("model", "m", {"notes": "replaced"})
        with pytest.raises(ValueError, match="info kind"):
            store.set_info("run", "x", {})
    with ResultsStore(tmp_path) as store:
        assert store.info() == {"dataset": {"breastmnist": {"modality": "breast ultrasound"}},
                                "model": {"m": {"notes": "replaced"}}, "suite": {}, "engine": {}}
