"""collect_results: one split, repeats averaged, modalities, a dataset's expected corruptions
(from the caller, its built-in suite, or the run)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from medrobust.reporting import analyse, build_tables, collect_results


def test_split_choice_and_repeats(grid):
    rows = grid.grid_rows({"base": 0.2, "m": 0.3}, {"base": 0.4, "m": 0.5})
    rows += grid.grid_rows({"base": 0.9, "m": 0.9}, {"base": 0.9, "m": 0.9}, split="val")
    results = collect_results(rows)
    assert results.split == "test" and any("splits test, val" in n for n in results.notes)
    headline = build_tables(analyse(results, "base"))["headline"]
    assert headline.value("m", "mCE") == pytest.approx(125.0)
    assert collect_results(rows, split="val").split == "val"
    with pytest.raises(ValueError, match="no cells of split 'train'"):
        collect_results(rows, split="train")
    seeds = rows[:12] + [{**r, "seed": 1, "error": 0.6} for r in rows[:12] if r["model"] == "m"]
    results = collect_results(seeds)
    m = results.benchmarks[0]
    assert results.cell("m", m, "c", 1).error == pytest.approx(0.55)
    assert results.cell("m", m, "c", 1).repeats == 2
    assert any("averaged" in n for n in results.notes)


def test_modalities_mapping_and_unknown(grid):
    rows = grid.grid_rows({"base": 0.2, "m": 0.3}, {"base": 0.4, "m": 0.5})
    assert collect_results(rows).benchmarks[0].modality == "unknown"
    results = collect_results(rows, modalities={"d": "dermatoscopy"})
    modality = build_tables(analyse(results, "base"))["modality"]
    assert modality.value("dermatoscopy / m", "mCE", key_columns=2) == pytest.approx(125.0)


def test_builtin_suite_sets_the_expected_corruptions(grid):
    try:
        from medrobust.corruptions import get_suite

        expected = get_suite("medimeta-c").benchmark_corruptions
    except Exception as exc:  # the corruption package may be unavailable in a partial checkout
        pytest.skip(f"suites not importable: {exc}")
    rows = [{**r, "suite": "medimeta-c", "corruption": "brightness" if r["corruption"] == "c"
             else r["corruption"]}
            for r in grid.grid_rows({"base": 0.2, "m": 0.3}, {"base": 0.4, "m": 0.5})]
    results = collect_results(rows)
    assert results.benchmarks[0].corruptions == tuple(expected)
    headline = build_tables(analyse(results, "base"))["headline"]
    assert headline.value("m", "Coverage") == f"1/{len(expected)}, incomplete"
    assert math.isclose(headline.value("m", "mCE"), 125.0)


def test_expected_corruptions_beyond_the_run_count_as_missing(grid, run: Path):
    expected = {d: [*grid.CORRUPTIONS, "never_run"] for d, _ in grid.DATASETS}
    headline = grid.table(run, expected_corruptions=expected)["headline"]
    assert headline.value("medclip-resnet50", "Coverage") == "4/6, incomplete"
    assert headline.value("clip-vit-b16", "mCE") == pytest.approx(100.0)
