"""analyse: mCE, relative mCE, clean error ratios and coverage against hand computations from
the store rows; incomplete grids, a missing baseline, undefined ratios."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medrobust.reporting import analyse, build_tables, collect_results, write_report


def test_headline_baseline_is_100_and_mce_matches_hand_computation(grid, run: Path, report):
    errors = grid.errors(run)
    headline = grid.table(run)["headline"]
    assert headline.value("clip-vit-b16", "mCE") == pytest.approx(100.0)
    assert headline.value("clip-vit-b16", "Clean Error") == pytest.approx(100.0)
    expected = grid.hand_mce(errors, "medclip-resnet50")
    assert headline.value("medclip-resnet50", "mCE") == pytest.approx(expected, rel=1e-12)
    clean = np.mean([errors[("medclip-resnet50", d, "clean", 0)]
                     / errors[("clip-vit-b16", d, "clean", 0)] for d, _ in grid.DATASETS]) * 100
    assert headline.value("medclip-resnet50", "Clean Error") == pytest.approx(clean, rel=1e-12)
    assert headline.value("medclip-resnet50", "Coverage") == "4/4"

    page = report["html"].read_text()
    section = page[page.index('id="table-detail"'):]
    section = section[:section.index("</section>")]
    assert ">100.0<" in section and f">{expected:.1f}<" in section
    assert "clip-vit-b16 (= 100)" in section
    assert f"| {expected:.1f} |" in report["markdown"].read_text()


def test_relative_mce_and_accuracy_columns(grid, run: Path):
    errors = grid.errors(run)
    headline = grid.table(run)["headline"]
    per_dataset = []
    for d, _ in grid.DATASETS:
        ratios = []
        for c in grid.CORRUPTIONS:
            num = sum(errors[("medclip-resnet50", d, c, s)] - errors[("medclip-resnet50", d, "clean", 0)]
                      for s in grid.SEVERITIES)
            den = sum(errors[("clip-vit-b16", d, c, s)] - errors[("clip-vit-b16", d, "clean", 0)]
                      for s in grid.SEVERITIES)
            ratios.append(num / den)
        per_dataset.append(100 * np.mean(ratios))
    assert headline.value("medclip-resnet50", "Relative mCE") == pytest.approx(np.mean(per_dataset))
    corrupted = np.mean([1 - np.mean([errors[("medclip-resnet50", d, c, s)]
                                      for c in grid.CORRUPTIONS for s in grid.SEVERITIES])
                         for d, _ in grid.DATASETS])
    assert headline.value("medclip-resnet50", "Corrupted acc.") == pytest.approx(corrupted)


def test_incomplete_grid_is_flagged(grid, tmp_path: Path):
    run = grid.build_store(tmp_path / "run", drop={("medclip-resnet50", "breastmnist", "blur_a", 3)})
    errors = grid.errors(run)
    headline = grid.table(run)["headline"]
    assert headline.value("medclip-resnet50", "Coverage") == "3/4, incomplete"
    # the baseline's own mCE only covers what it has, complete here
    assert headline.value("clip-vit-b16", "Coverage") == "4/4"
    # breastmnist now averages noise_b only
    assert headline.value("medclip-resnet50", "mCE") == pytest.approx(
        grid.hand_mce(errors, "medclip-resnet50"))
    (row,) = [r for r in headline.rows if r[0].value == "medclip-resnet50"]
    assert "blur_a on breastmnist (severities [3] missing)" in row[-1].note

    paths = write_report(run, out_dir=tmp_path / "out")
    page = paths["html"].read_text()
    assert "3/4, incomplete" in page and "The grid is incomplete: 1 expected cell" in page
    assert "blur_a on breastmnist, severities [3] (medclip-resnet50)" in page


def test_missing_baseline_shows_absolute_errors(grid, run: Path, tmp_path: Path):
    errors = grid.errors(run)
    paths = write_report(run, out_dir=tmp_path, baseline="clip-rn50")
    page = paths["html"].read_text()
    assert "&#x27;clip-rn50&#x27; is not in this run" in page
    tables = grid.table(run, baseline="clip-rn50")
    headline = tables["headline"]
    assert "mCE" not in headline.columns and "corruption_ce" not in tables
    clean = np.mean([errors[("medclip-resnet50", d, "clean", 0)] for d, _ in grid.DATASETS])
    assert headline.value("medclip-resnet50", "Clean error") == pytest.approx(clean)
    assert headline.value("medclip-resnet50", "Coverage") == "4/4"


def test_balanced_error_type(grid, run: Path):
    errors = grid.errors(run, "balanced_error")
    headline = grid.table(run, error_type="balanced_error")["headline"]
    assert headline.value("medclip-resnet50", "mCE") == pytest.approx(
        grid.hand_mce(errors, "medclip-resnet50"))
    assert "Clean bal. acc." in headline.columns


def test_undefined_ratios_are_na_with_the_reason(grid):
    # the baseline is perfect on clean images and gets better under the corruption
    rows = grid.grid_rows({"base": 0.0, "m": 0.2}, {"base": 0.3, "m": 0.4})
    rows += [grid.row(m, "d", "c2", s, 0.0) for m in ("base", "m") for s in grid.SEVERITIES]
    results = collect_results(rows)
    headline = build_tables(analyse(results, "base"))["headline"]
    (row,) = [r for r in headline.rows if r[0].value == "m"]
    clean_error = row[headline.columns.index("Clean Error")]
    assert clean_error.value is None and "zero" in clean_error.note
    assert headline.text(clean_error, 1) == "n/a"
    mce = row[headline.columns.index("mCE")]
    assert mce.value == pytest.approx(400 / 3) and "c2" in mce.note  # c2: baseline error 0
    coverage = row[headline.columns.index("Coverage")]
    assert coverage.value == "1/2, incomplete" and "c2 on d (CE undefined)" in coverage.note
    markdown = headline.to_markdown()
    assert "n/a [1]" in markdown and "[1] Clean Error n/a - d: the baseline's clean error" in markdown


def test_baseline_gap_makes_the_other_model_incomplete(grid, tmp_path: Path):
    run = grid.build_store(tmp_path, drop={("clip-vit-b16", "pneumoniamnist", "noise_b", 5)})
    headline = grid.table(run)["headline"]
    assert headline.value("medclip-resnet50", "Coverage") == "3/4, incomplete"
    (row,) = [r for r in headline.rows if r[0].value == "medclip-resnet50"]
    assert "noise_b on pneumoniamnist (baseline: severities [5] missing)" in row[-1].note
