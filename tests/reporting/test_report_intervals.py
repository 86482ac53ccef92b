"""Report intervals: summary.json's schema, point estimates equal to the tables, paired
differences and their significance marks, the relative-mCE guard and its coverage, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medrobust.evaluation.metrics import cell_metrics
from medrobust.evaluation.store import CellKey, ResultsStore
from medrobust.reporting import analyse, build_tables, collect_results, write_report
from medrobust.reporting.uncertainty import BootstrapSettings, bootstrap_results

N = 400
CORRUPTIONS = ("blur_a", "noise_b", "mild_c")
SEVERITIES = (1, 3, 5)


def _probs(rng: np.random.Generator, labels: np.ndarray, strength: float) -> np.ndarray:
    logits = rng.normal(size=(labels.size, 2))
    logits[np.arange(labels.size), labels] += strength
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def _build(run_dir: Path) -> Path:
    """base, a copy of base (same predictions), and a clearly better model, on one test set.

    mild_c barely hurts the baseline, so its relative CE must be left out by the guard.
    """
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, N)
    clean_base = _probs(rng, labels, 1.5)
    mild_base = clean_base.copy()  # 3 more mistakes: 0.75 %, under 5 images' worth (1.25 %)
    flip = np.flatnonzero(clean_base.argmax(1) == labels)[:3]
    mild_base[flip] = mild_base[flip][:, ::-1]
    with ResultsStore(run_dir) as store:
        for corruption, severity in [("clean", 0)] + [(c, s) for c in CORRUPTIONS
                                                      for s in SEVERITIES]:
            hurt = 0.0 if corruption in ("clean", "mild_c") else 0.3
            base = (clean_base if corruption == "clean" else mild_base if hurt == 0
                    else _probs(rng, labels, 1.5 - hurt * severity))
            better = _probs(rng, labels, 3.0 - hurt * severity)
            for model, probs in (("base", base), ("base-copy", base), ("better", better)):
                key = CellKey(model, "w", "breastmnist", "test", corruption, severity, 0,
                              "synthetic", {})
                store.add(key, cell_metrics(probs, labels, "binary"), probs, labels)
    return run_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("ci-run"))


@pytest.fixture(scope="module")
def summary(run: Path) -> dict:
    paths = write_report(run, baseline="base", bootstrap=BootstrapSettings(n_resamples=400))
    assert paths["summary"].name == "summary.json" and paths["headline"].is_file()
    return json.loads(paths["summary"].read_text())


def test_summary_json_has_the_issue_schema(summary: dict) -> None:
    assert summary["baseline"] == "base" and summary["error"] == "error"
    for model in ("base", "base-copy", "better"):
        m = summary["models"][model]
        for name in ("clean_error", "mce", "relative_mce", "relative_clean_error"):
            assert set(m[name]) >= {"value", "ci95"}
        assert m["coverage"] == {"cells": 3, "of": 3}
        assert m["n_images"] == N and isinstance(m["caveats"], list)
        lo, hi = m["clean_error"]["ci95"]
        assert lo <= m["clean_error"]["value"] <= hi
    assert set(summary["differences"]) == {"base-copy", "better"}
    assert summary["bootstrap"]["resamples"] == 400
    assert len(summary["cells"]) == 3 * (1 + len(CORRUPTIONS) * len(SEVERITIES))


def test_point_estimates_equal_the_tables(run: Path, summary: dict) -> None:
    results = collect_results(ResultsStore(run).rows())
    headline = build_tables(analyse(results, "base"))["headline"]
    for model in ("better", "base-copy"):
        m = summary["models"][model]
        assert m["mce"]["value"] == pytest.approx(headline.value(model, "mCE"))
        assert m["relative_clean_error"]["value"] == pytest.approx(
            headline.value(model, "Clean Error"))
        assert m["relative_mce"]["value"] == pytest.approx(headline.value(model, "Relative mCE"))
        assert m["clean_error"]["value"] == pytest.approx(
            100 * (1 - headline.value(model, "Clean acc.")))


def test_paired_differences_and_significance(summary: dict) -> None:
    copy = summary["differences"]["base-copy"]
    assert copy["clean_error"] == {"value": 0.0, "ci95": [0.0, 0.0],
                                   "significance": "not significant"}
    assert copy["mce"]["significance"] == "not significant"
    better = summary["differences"]["better"]
    assert better["clean_error"]["value"] < 0 and better["clean_error"]["ci95"][1] < 0
    assert better["clean_error"]["significance"] == "lower (better)"
    assert better["mce"]["significance"] == "lower (better)"


def test_relative_mce_guard_is_counted_in_its_coverage(summary: dict) -> None:
    rel = summary["models"]["better"]["relative_mce"]
    assert rel["coverage"]["cells"] == 2 and rel["coverage"]["of"] == 3
    (where, why), = rel["coverage"]["left_out"].items()
    assert where == "breastmnist: mild_c" and "below" in why


def test_guard_setting_and_bootstrap_off(run: Path) -> None:
    """With no floor beyond 1e-3 the mild corruption comes back; B = 0 gives no intervals."""
    results = collect_results(ResultsStore(run).rows())
    loose = bootstrap_results(results, run, "base",
                              BootstrapSettings(n_resamples=0, min_degradation_images=0))
    rel = loose.models["better"]
    assert rel.coverage["relative_mce"]["cells"] == 3
    assert rel.estimates["mce"].ci95 is None and rel.estimates["mce"].value is not None


def test_cells_on_different_images_get_no_intervals(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    with ResultsStore(tmp_path) as store:
        for model in ("a", "b"):
            labels = rng.integers(0, 2, 50)
            probs = _probs(rng, labels, 1.0)
            key = CellKey(model, "w", "breastmnist", "test", "clean", 0, 0, "s", {})
            store.add(key, cell_metrics(probs, labels, "binary"), probs, labels)
    unc = bootstrap_results(collect_results(ResultsStore(tmp_path).rows()), tmp_path, "a")
    assert any("different test images" in n for n in unc.notes)
    assert unc.models["a"].estimates["clean_error"].value is None


def test_cli_report_options(run: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "medrobust.cli", "report", str(run), "--baseline", "base",
           "--out", str(tmp_path / "r"), "--bootstrap", "50", "--error", "balanced"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    data = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert data["error"] == "balanced_error" and data["bootstrap"]["resamples"] == 50
    bad = subprocess.run([*cmd[:-4], "--bootstrap", "-1"], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "bootstrap" in bad.stderr


def test_cells_carry_diagnostics_and_chance(run: Path, summary: dict) -> None:
    cell = summary["cells"][0]
    assert len(cell["confusion"]) == 2 and sum(map(sum, cell["confusion"])) == N
    assert len(cell["recall"]) == 2 and isinstance(cell["flags"], list)
    unc = bootstrap_results(collect_results(ResultsStore(run).rows()), run, "base",
                            BootstrapSettings(n_resamples=0))
    counts = unc.class_counts["breastmnist"]
    assert sum(counts) == N and unc.chance("breastmnist") == max(counts) / N


def test_models_with_different_templates_are_flagged(tmp_path: Path) -> None:
    from medrobust.reporting.uncertainty import templates_table

    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 20)
    probs = _probs(rng, labels, 1.0)
    with ResultsStore(tmp_path) as store:
        for model, template in (("a", "a photo of {}."), ("b", "an image of {}.")):
            config = {"class_names": ["cat", "dog"],
                      "prompts": [[template.format("cat")], [template.format("dog")]]}
            key = CellKey(model, "w", "breastmnist", "test", "clean", 0, 0, "s", config)
            store.add(key, cell_metrics(probs, labels, "binary"), probs, labels)
    table, warnings = templates_table(collect_results(ResultsStore(tmp_path).rows()))
    assert table.value("a", "Text") == "a photo of {}."
    assert len(warnings) == 1 and "different prompt templates" in warnings[0]


def test_seed_groups_show_mean_spread_and_the_interval_of_the_mean(tmp_path: Path) -> None:
    from medrobust.reporting.uncertainty import seed_groups, seeds_table

    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 200)
    with ResultsStore(tmp_path) as store:
        for model, strength in (("base", 1.0), ("m+lora:a-seed-0", 1.5), ("m+lora:a-seed-1", 2.0),
                                ("m+lora:a-seed-2", 2.5)):
            probs = _probs(rng, labels, strength)
            key = CellKey(model, "w", "breastmnist", "test", "clean", 0, 0, "s", {})
            store.add(key, cell_metrics(probs, labels, "binary"), probs, labels)
    unc = bootstrap_results(collect_results(ResultsStore(tmp_path).rows()), tmp_path, "base",
                            BootstrapSettings(n_resamples=200))
    assert seed_groups(list(unc.models)) == {
        "m+lora:a": ["m+lora:a-seed-0", "m+lora:a-seed-1", "m+lora:a-seed-2"]}
    table = seeds_table(unc)
    errors = [unc.models[f"m+lora:a-seed-{s}"].estimates["clean_error"].value for s in range(3)]
    text = table.value("m+lora:a", "Clean error %: mean ± sd over seeds")
    assert text.startswith(f"{np.mean(errors):.1f} ± {np.std(errors, ddof=1):.1f}")
    assert table.value("m+lora:a", "Seeds") == 3
