"""The run report: files, embedded images, headline numbers against hand computations from the
store rows, incomplete grids, a missing baseline, undefined ratios and bad input."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medrobust.evaluation.metrics import cell_metrics
from medrobust.evaluation.store import CellKey, ResultsStore
from medrobust.reporting import (
    analyse,
    build_tables,
    collect_results,
    plot_corruption_heatmap,
    write_report,
)
from medrobust.reporting.render import Table
from medrobust.reporting.tables import is_medclip

MODELS = ("clip-vit-b16", "medclip-resnet50")
DATASETS = (("breastmnist", 2), ("pneumoniamnist", 2))
CORRUPTIONS = ("blur_a", "noise_b")
SEVERITIES = (1, 2, 3, 4, 5)
SUITE = "synthetic-suite"  # not a built-in suite: expected corruptions are those in the run
N = 60


def _cells():
    for model in MODELS:
        for dataset, k in DATASETS:
            yield model, dataset, k, "clean", 0
            for c in CORRUPTIONS:
                for s in SEVERITIES:
                    yield model, dataset, k, c, s


def _build_store(run_dir: Path, *, drop: set[tuple[str, str, str, int]] = frozenset(),
                 seed: int = 0) -> Path:
    """2 models x 2 datasets x (clean + 2 corruptions x 5 severities), seeded predictions."""
    rng = np.random.default_rng(seed)
    with ResultsStore(run_dir) as store:
        for model, dataset, k, corruption, severity in _cells():
            labels = rng.integers(0, k, N)
            logits = rng.normal(size=(N, k))
            logits[np.arange(N), labels] += 2.0 - 0.3 * severity - 0.2 * MODELS.index(model)
            probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
            if (model, dataset, corruption, severity) in drop:  # after drawing: same stream
                continue
            key = CellKey(model, f"w{MODELS.index(model)}", dataset, "test", corruption, severity,
                          0, SUITE, {"prompt": "a photo of {}", "dataset": dataset})
            store.add(key, cell_metrics(probs, labels, "binary"), probs, labels, seconds=0.1)
    return run_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_store(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def montage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("montage") / "breast.png"
    Image.new("RGB", (40, 20), (200, 30, 30)).save(path)
    return path


@pytest.fixture(scope="module")
def report(run: Path, montage: Path) -> dict[str, Path]:
    return write_report(run, montage_images={"breastmnist samples": montage})


def _errors(run_dir: Path, error_type: str = "error") -> dict[tuple[str, str, str, int], float]:
    with ResultsStore(run_dir) as store:
        return {(r["model"], r["dataset"], r["corruption"], r["severity"]): r[error_type]
                for r in store.rows()}


def _hand_mce(errors, model, baseline="clip-vit-b16", datasets=None):
    """mCE by hand: per dataset the mean over corruptions of sum_s E / sum_s E_baseline."""
    per_dataset = []
    for dataset, _ in DATASETS:
        if datasets is not None and dataset not in datasets:
            continue
        ratios = []
        for c in CORRUPTIONS:
            keys = [(dataset, c, s) for s in SEVERITIES]
            if all((model, *k) in errors and (baseline, *k) in errors for k in keys):
                ratios.append(sum(errors[(model, *k)] for k in keys)
                              / sum(errors[(baseline, *k)] for k in keys))
        per_dataset.append(100 * sum(ratios) / len(ratios))
    return sum(per_dataset) / len(per_dataset)


def _table(run_dir: Path, baseline: str | None = "clip-vit-b16", **kwargs) -> dict[str, Table]:
    with ResultsStore(run_dir) as store:
        results = collect_results(store.rows(), **kwargs)
    return build_tables(analyse(results, baseline))


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


def test_headline_baseline_is_100_and_mce_matches_hand_computation(run: Path, report):
    errors = _errors(run)
    headline = _table(run)["headline"]
    assert headline.value("clip-vit-b16", "mCE") == pytest.approx(100.0)
    assert headline.value("clip-vit-b16", "Clean Error") == pytest.approx(100.0)
    expected = _hand_mce(errors, "medclip-resnet50")
    assert headline.value("medclip-resnet50", "mCE") == pytest.approx(expected, rel=1e-12)
    clean = np.mean([errors[("medclip-resnet50", d, "clean", 0)]
                     / errors[("clip-vit-b16", d, "clean", 0)] for d, _ in DATASETS]) * 100
    assert headline.value("medclip-resnet50", "Clean Error") == pytest.approx(clean, rel=1e-12)
    assert headline.value("medclip-resnet50", "Coverage") == "4/4"

    page = report["html"].read_text()
    section = page[page.index('id="table-headline"'):]
    section = section[:section.index("</section>")]
    assert ">100.0<" in section and f">{expected:.1f}<" in section
    assert "clip-vit-b16 = 100" in section
    assert f"| {expected:.1f} |" in report["markdown"].read_text()


def test_relative_mce_and_accuracy_columns(run: Path):
    errors = _errors(run)
    headline = _table(run)["headline"]
    per_dataset = []
    for d, _ in DATASETS:
        ratios = []
        for c in CORRUPTIONS:
            num = sum(errors[("medclip-resnet50", d, c, s)] - errors[("medclip-resnet50", d, "clean", 0)]
                      for s in SEVERITIES)
            den = sum(errors[("clip-vit-b16", d, c, s)] - errors[("clip-vit-b16", d, "clean", 0)]
                      for s in SEVERITIES)
            ratios.append(num / den)
        per_dataset.append(100 * np.mean(ratios))
    assert headline.value("medclip-resnet50", "Relative mCE") == pytest.approx(np.mean(per_dataset))
    corrupted = np.mean([1 - np.mean([errors[("medclip-resnet50", d, c, s)]
                                      for c in CORRUPTIONS for s in SEVERITIES])
                         for d, _ in DATASETS])
    assert headline.value("medclip-resnet50", "Corrupted acc.") == pytest.approx(corrupted)


def test_other_tables(run: Path):
    errors = _errors(run)
    tables = _table(run)
    ce = tables["corruption_ce"]
    want = np.mean([sum(errors[("medclip-resnet50", d, "blur_a", s)] for s in SEVERITIES)
                    / sum(errors[("clip-vit-b16", d, "blur_a", s)] for s in SEVERITIES)
                    for d, _ in DATASETS]) * 100
    assert ce.value("blur_a", "medclip-resnet50") == pytest.approx(want)
    assert ce.value("blur_a", "Datasets") == 2
    severity = tables["severity"]
    want = np.mean([np.mean([1 - errors[("clip-vit-b16", d, c, 3)] for c in CORRUPTIONS])
                    for d, _ in DATASETS])
    assert severity.value("clip-vit-b16", "Severity 3") == pytest.approx(want)
    modality = tables["modality"]  # modalities from the package's MedMNIST metadata
    mce = _hand_mce(errors, "medclip-resnet50", datasets={"breastmnist"})
    assert modality.value("breast ultrasound / medclip-resnet50", "mCE", key_columns=2) == (
        pytest.approx(mce))
    assert modality.value("chest X-ray / clip-vit-b16", "Datasets", key_columns=2) == (
        "pneumoniamnist")


def test_medclip_caveat_and_notes(report):
    page = report["html"].read_text()
    # the synthetic store records no model notes: the caveat is guessed from the name, and said so
    assert "users report its released weights behaving as if random" in page
    assert "guessed from the model name" in page
    assert "Modality of breastmnist, pneumoniamnist guessed from the dataset name" in page
    assert "1 − top-1 accuracy" in page and "Coverage: the grid is complete" in page
    assert is_medclip("medclip-resnet50") and is_medclip("MedCLIP-Swin")
    assert not is_medclip("biomedclip") and not is_medclip("robustmedclip-r8")


def test_incomplete_grid_is_flagged(tmp_path: Path):
    run = _build_store(tmp_path / "run", drop={("medclip-resnet50", "breastmnist", "blur_a", 3)})
    errors = _errors(run)
    headline = _table(run)["headline"]
    assert headline.value("medclip-resnet50", "Coverage") == "3/4, incomplete"
    # the baseline's own mCE only covers what it has, complete here
    assert headline.value("clip-vit-b16", "Coverage") == "4/4"
    # breastmnist now averages noise_b only
    assert headline.value("medclip-resnet50", "mCE") == pytest.approx(
        _hand_mce(errors, "medclip-resnet50"))
    (row,) = [r for r in headline.rows if r[0].value == "medclip-resnet50"]
    assert "blur_a on breastmnist (severities [3] missing)" in row[-1].note

    paths = write_report(run, out_dir=tmp_path / "out")
    page = paths["html"].read_text()
    assert "3/4, incomplete" in page and "The grid is incomplete: 1 expected cell" in page
    assert "blur_a on breastmnist, severities [3] (medclip-resnet50)" in page


def test_expected_corruptions_beyond_the_run_count_as_missing(run: Path):
    expected = {d: [*CORRUPTIONS, "never_run"] for d, _ in DATASETS}
    headline = _table(run, expected_corruptions=expected)["headline"]
    assert headline.value("medclip-resnet50", "Coverage") == "4/6, incomplete"
    assert headline.value("clip-vit-b16", "mCE") == pytest.approx(100.0)


def test_missing_baseline_shows_absolute_errors(run: Path, tmp_path: Path):
    errors = _errors(run)
    paths = write_report(run, out_dir=tmp_path, baseline="clip-rn50")
    page = paths["html"].read_text()
    assert "&#x27;clip-rn50&#x27; is not in this run" in page
    tables = _table(run, baseline="clip-rn50")
    headline = tables["headline"]
    assert "mCE" not in headline.columns and "corruption_ce" not in tables
    clean = np.mean([errors[("medclip-resnet50", d, "clean", 0)] for d, _ in DATASETS])
    assert headline.value("medclip-resnet50", "Clean error") == pytest.approx(clean)
    assert headline.value("medclip-resnet50", "Coverage") == "4/4"


def test_balanced_error_type(run: Path):
    errors = _errors(run, "balanced_error")
    headline = _table(run, error_type="balanced_error")["headline"]
    assert headline.value("medclip-resnet50", "mCE") == pytest.approx(
        _hand_mce(errors, "medclip-resnet50"))
    assert "Clean bal. acc." in headline.columns


def _row(model, dataset, corruption, severity, error, split="test"):
    return {"model": model, "weights_hash": "h", "dataset": dataset, "split": split,
            "corruption": corruption, "severity": severity, "seed": 0, "suite": SUITE,
            "config": "{}", "n": 10, "accuracy": 1 - error, "balanced_accuracy": 1 - error,
            "auc": None, "ece": None, "error": error, "balanced_error": error, "seconds": None}


def _grid_rows(clean, corrupted, split="test"):
    """Rows of models 'base' and 'm' on one dataset 'd' and corruption 'c'."""
    rows = []
    for model in ("base", "m"):
        rows.append(_row(model, "d", "clean", 0, clean[model], split))
        rows += [_row(model, "d", "c", s, corrupted[model], split) for s in SEVERITIES]
    return rows


def test_undefined_ratios_are_na_with_the_reason():
    # the baseline is perfect on clean images and gets better under the corruption
    rows = _grid_rows({"base": 0.0, "m": 0.2}, {"base": 0.3, "m": 0.4})
    rows += [_row(m, "d", "c2", s, 0.0) for m in ("base", "m") for s in SEVERITIES]
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


def test_split_choice_and_repeats():
    rows = _grid_rows({"base": 0.2, "m": 0.3}, {"base": 0.4, "m": 0.5})
    rows += _grid_rows({"base": 0.9, "m": 0.9}, {"base": 0.9, "m": 0.9}, split="val")
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


def test_modalities_mapping_and_unknown():
    rows = _grid_rows({"base": 0.2, "m": 0.3}, {"base": 0.4, "m": 0.5})
    assert collect_results(rows).benchmarks[0].modality == "unknown"
    results = collect_results(rows, modalities={"d": "dermatoscopy"})
    modality = build_tables(analyse(results, "base"))["modality"]
    assert modality.value("dermatoscopy / m", "mCE", key_columns=2) == pytest.approx(125.0)


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


def test_heatmap_with_missing_values(tmp_path: Path):
    path = plot_corruption_heatmap({"c1": {"a": 100.0, "b": None}, "c2": {"a": 90.0, "b": 120.0}},
                                   tmp_path / "h.png", label="CE", center=100.0)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.info["dpi"][0] == pytest.approx(120, abs=1)
    with pytest.raises(ValueError, match="no corruptions"):
        plot_corruption_heatmap({}, tmp_path / "e.png", label="CE")


def test_builtin_suite_sets_the_expected_corruptions():
    try:
        from medrobust.corruptions import get_suite

        expected = get_suite("medimeta-c").benchmark_corruptions
    except Exception as exc:  # the corruption package may be unavailable in a partial checkout
        pytest.skip(f"suites not importable: {exc}")
    rows = [{**r, "suite": "medimeta-c", "corruption": "brightness" if r["corruption"] == "c"
             else r["corruption"]}
            for r in _grid_rows({"base": 0.2, "m": 0.3}, {"base": 0.4, "m": 0.5})]
    results = collect_results(rows)
    assert results.benchmarks[0].corruptions == tuple(expected)
    headline = build_tables(analyse(results, "base"))["headline"]
    assert headline.value("m", "Coverage") == f"1/{len(expected)}, incomplete"
    assert math.isclose(headline.value("m", "mCE"), 125.0)


def test_clean_only_run_has_tables_but_no_figures(tmp_path: Path):
    rng = np.random.default_rng(3)
    with ResultsStore(tmp_path) as store:
        for model in MODELS:
            labels = rng.integers(0, 2, N)
            probs = rng.dirichlet((1.0, 1.0), N)
            key = CellKey(model, "w", "breastmnist", "test", "clean", 0, 0, SUITE, {})
            store.add(key, cell_metrics(probs, labels, "binary"), probs, labels)
    paths = write_report(tmp_path)
    assert set(paths) == {"markdown", "html"}
    page = paths["html"].read_text()
    assert "data:image/png" not in page and "0/0" in page


def test_baseline_gap_makes_the_other_model_incomplete(tmp_path: Path):
    run = _build_store(tmp_path, drop={("clip-vit-b16", "pneumoniamnist", "noise_b", 5)})
    headline = _table(run)["headline"]
    assert headline.value("medclip-resnet50", "Coverage") == "3/4, incomplete"
    (row,) = [r for r in headline.rows if r[0].value == "medclip-resnet50"]
    assert "noise_b on pneumoniamnist (baseline: severities [5] missing)" in row[-1].note


def test_configuration_is_listed_exactly(report):
    markdown = report["markdown"].read_text()
    section = markdown[markdown.index("## Configuration"):]
    summary = json.loads(section[section.index("```json") + 7:section.rindex("```")])
    assert summary == {
        "run": {"prompt": "a photo of {}"},
        "per model": {"clip-vit-b16": {"weights_hash": "w0"},
                      "medclip-resnet50": {"weights_hash": "w1"}},
        "per dataset": {d: {"dataset": d} for d, _ in DATASETS},
    }
    assert "&quot;prompt&quot;: &quot;a photo of {}&quot;" in report["html"].read_text()


def test_configuration_summary_levels():
    from medrobust.reporting.report import _config_summary

    rows = []
    for r in _grid_rows({"base": 0.2, "m": 0.3}, {"base": 0.4, "m": 0.5}):
        config = {"prompt": f"p-{r['model']}", "param": r["severity"] * 0.5, "fixed": 1}
        if r["model"] == "m" and r["severity"] == 2:
            config["odd"] = True
        rows.append({**r, "config": json.dumps(config)})
    summary = json.loads(_config_summary(collect_results(rows)))
    assert summary["run"] == {"fixed": 1, "weights_hash": "h"}
    assert summary["per model"] == {"base": {"prompt": "p-base"}, "m": {"prompt": "p-m"}}
    assert summary["per corruption"] == {
        "d / synthetic-suite / clean": {"param": 0.0},
        "d / synthetic-suite / c": {"param": {f"severity {s}": s * 0.5 for s in SEVERITIES}},
    }
    odd = summary["per model and corruption"]["m / d / synthetic-suite / c"]["odd"]
    assert odd == {f"severity {s}": s == 2 or "(not set)" for s in SEVERITIES}


def test_html_elements_are_balanced(tmp_path):
    """Every opened section is closed, so nothing after it is hidden in a collapsed block."""
    from html.parser import HTMLParser

    store_dir = tmp_path / "run"
    _build_store(store_dir)
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


def test_recorded_run_info_reaches_the_report(tmp_path: Path):
    """Modality, model notes and the suite's corruption list come from the run, not names."""
    run_dir = _build_store(tmp_path / "run")
    with ResultsStore(run_dir) as store:
        store.set_info("dataset", "breastmnist", {"modality": "recorded ultrasound"})
        store.set_info("dataset", "pneumoniamnist", {"modality": "recorded x-ray"})
        store.set_info("model", "clip-vit-b16", {"notes": "saw these classes in pretraining"})
        store.set_info("model", "medclip-resnet50", {"notes": ""})
        store.set_info("suite", f"{SUITE}/breastmnist",
                       {"benchmark_corruptions": [*CORRUPTIONS, "fog"]})
    paths = write_report(run_dir, tmp_path / "out")
    page = paths["markdown"].read_text()
    assert "clip-vit-b16: saw these classes in pretraining." in page
    assert "guessed from the model name" not in page  # recorded: the notes come from the run
    assert "recorded ultrasound" in page and "recorded x-ray" in page
    assert "guessed from the dataset name" not in page
    assert "fog" in page  # breastmnist's recorded list expects fog, which the run lacks
