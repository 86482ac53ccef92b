"""write_report: files, embedded images, caveats, the configuration summary, recorded run
info, balanced HTML and bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medrobust.evaluation.metrics import cell_metrics
from medrobust.evaluation.store import CellKey, ResultsStore
from medrobust.reporting import collect_results, write_report


def test_report_files_and_embedded_images(run: Path, report: dict[str, Path]):
    assert report["html"] == run / "report" / "report.html"
    for key in ("markdown", "html", "accuracy_vs_severity", "corruption_heatmap"):
        assert report[key].is_file() and report[key].stat().st_size > 0
    for key in ("accuracy_vs_severity", "corruption_heatmap"):
        with Image.open(report[key]) as image:
            assert image.format == "PNG" and image.width > 300
    page = report["html"].read_text()
    # two plots and the montage, all inline; nothing fetched from elsewhere
    assert page.count('src="data:image/png;base64,') == 3
    assert not re.search(r'(src|href)="(https?:|file:|/)', page)
    assert "<script" not in page
    markdown = report["markdown"].read_text()
    assert "](accuracy_vs_severity.png)" in markdown and "](corruption_heatmap.png)" in markdown
    assert "breast.png)" in markdown
    assert not list(report["html"].parent.glob(".*tmp*")), "temporary files left behind"


def test_medclip_caveat_and_notes(report):
    page = report["html"].read_text()
    # the synthetic store records no model notes: the caveat is guessed from the name, and said so
    assert "users report its released weights behaving as if random" in page
    assert "guessed from the model name" in page
    assert "Modality of breastmnist, pneumoniamnist guessed from the dataset name" in page
    assert "1 − top-1 accuracy" in page and "Coverage: the grid is complete" in page


def test_caveats_join_into_one_sentence():
    from medrobust.reporting.report import join_caveats

    notes = ["LoRA adapter of clip trained on breastmnist, seed 0.", "evaluated with --allow-overlap"]
    assert join_caveats(notes) == (
        "LoRA adapter of clip trained on breastmnist, seed 0; evaluated with --allow-overlap."
    )
    assert join_caveats([]) is None


def test_bad_run_folders(tmp_path: Path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        write_report(missing)
    (tmp_path / "folder").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "folder" / "results.sqlite"))):
        write_report(tmp_path / "folder")
    ResultsStore(tmp_path / "empty").close()
    with pytest.raises(ValueError, match="no finished cells"):
        write_report(tmp_path / "empty")
    assert not (tmp_path / "empty" / "report").exists()


def test_bad_arguments(run: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="error_type must be one of"):
        write_report(run, out_dir=tmp_path, error_type="top5")
    with pytest.raises(FileNotFoundError, match="montage image 'x' not found"):
        write_report(run, out_dir=tmp_path, montage_images={"x": tmp_path / "absent.png"})
    (tmp_path / "fake.png").write_text("not a png")
    with pytest.raises(ValueError, match="not a PNG"):
        write_report(run, out_dir=tmp_path, montage_images={"x": tmp_path / "fake.png"})


def test_clean_only_run_has_tables_but_no_figures(grid, tmp_path: Path):
    rng = np.random.default_rng(3)
    with ResultsStore(tmp_path) as store:
        for model in grid.MODELS:
            labels = rng.integers(0, 2, grid.N)
            probs = rng.dirichlet((1.0, 1.0), grid.N)
            key = CellKey(model, "w", "breastmnist", "test", "clean", 0, 0, grid.SUITE, {})
            store.add(key, cell_metrics(probs, labels, "binary"), probs, labels)
    paths = write_report(tmp_path)
    assert set(paths) == {"markdown", "html", "summary", "headline"}
    page = paths["html"].read_text()
    assert "data:image/png" not in page and "0/0" in page


def test_configuration_is_listed_exactly(grid, report):
    markdown = report["markdown"].read_text()
    section = markdown[markdown.index("## Configuration"):]
    summary = json.loads(section[section.index("```json") + 7:section.rindex("```")])
    assert summary == {
        "run": {"prompt": "a photo of {}"},
        "per model": {"clip-vit-b16": {"weights_hash": "w0"},
                      "medclip-resnet50": {"weights_hash": "w1"}},
        "per dataset": {d: {"dataset": d} for d, _ in grid.DATASETS},
    }
    assert "&quot;prompt&quot;: &quot;a photo of {}&quot;" in report["html"].read_text()


def test_configuration_summary_levels(grid):
    from medrobust.reporting.report import _config_summary

    rows = []
    for r in grid.grid_rows({"base": 0.2, "m": 0.3}, {"base": 0.4, "m": 0.5}):
        config = {"prompt": f"p-{r['model']}", "param": r["severity"] * 0.5, "fixed": 1}
        if r["model"] == "m" and r["severity"] == 2:
            config["odd"] = True
        rows.append({**r, "config": json.dumps(config)})
    summary = json.loads(_config_summary(collect_results(rows)))
    assert summary["run"] == {"fixed": 1, "weights_hash": "h"}
    assert summary["per model"] == {"base": {"prompt": "p-base"}, "m": {"prompt": "p-m"}}
    assert summary["per corruption"] == {
        "d / synthetic-suite / clean": {"param": 0.0},
        "d / synthetic-suite / c": {"param": {f"severity {s}": s * 0.5 for s in grid.SEVERITIES}},
    }
    odd = summary["per model and corruption"]["m / d / synthetic-suite / c"]["odd"]
    assert odd == {f"severity {s}": s == 2 or "(not set)" for s in grid.SEVERITIES}


def test_html_elements_are_balanced(grid, tmp_path):
    """Every opened section is closed, so nothing after it is hidden in a collapsed block."""
    from html.parser import HTMLParser

    store_dir = tmp_path / "run"
    grid.build_store(store_dir)
    html = write_report(store_dir)["html"].read_text()
    assert html.count("<details") == html.count("</details>")

    class Depth(HTMLParser):
        def __init__(self):
            super().__init__()
            self.stack = []

        def handle_starttag(self, tag, attrs):
            if tag in {"details", "section", "table", "div", "pre"}:
                self.stack.append(tag)

        def handle_endtag(self, tag):
            if tag in {"details", "section", "table", "div", "pre"}:
                assert self.stack and self.stack[-1] == tag, (tag, self.stack[-3:])
                self.stack.pop()

    parser = Depth()
    parser.feed(html)
    assert parser.stack == []


def test_recorded_run_info_reaches_the_report(grid, tmp_path: Path):
    """Modality, model notes and the suite's corruption list come from the run, not names."""
    run_dir = grid.build_store(tmp_path / "run")
    with ResultsStore(run_dir) as store:
        store.set_info("dataset", "breastmnist", {"modality": "recorded ultrasound"})
        store.set_info("dataset", "pneumoniamnist", {"modality": "recorded x-ray"})
        store.set_info("model", "clip-vit-b16", {"notes": "saw these classes in pretraining"})
        store.set_info("model", "medclip-resnet50", {"notes": ""})
        store.set_info("suite", f"{grid.SUITE}/breastmnist",
                       {"benchmark_corruptions": [*grid.CORRUPTIONS, "fog"]})
    paths = write_report(run_dir, tmp_path / "out")
    page = paths["markdown"].read_text()
    assert "clip-vit-b16: saw these classes in pretraining." in page
    assert "guessed from the model name" not in page  # recorded: the notes come from the run
    assert "recorded ultrasound" in page and "recorded x-ray" in page
    assert "guessed from the dataset name" not in page
    assert "fog" in page  # breastmnist's recorded list expects fog, which the run lacks
