"""The report of an evaluation run: ``report.md`` and a self-contained ``report.html``.

Everything comes from the run's results store (``<run>/results.sqlite``): a run summary with
the exact configurations, the headline table (Clean Error and mCE with a baseline model = 100),
per-modality, per-corruption and per-severity tables, two figures, optional sample montages
and notes (error definition, baseline, coverage, caveats). The HTML embeds its images as
base64 data URIs and needs no network, script or other file. All files are written through a
temporary file and a rename, so a crash never leaves half a report.
"""

from __future__ import annotations

import base64
import html
import json
import os
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from .._files import temp_prefix, write_text_atomic
from ..evaluation.robustness import MIN_DENOMINATOR, check_error_type
from ..evaluation.store import ResultsStore
from ..severity import CLEAN
from .analysis import Analysis, analyse
from .plots import plot_accuracy_vs_severity, plot_corruption_heatmap
from .render import Cell, Table
from .results import RunResults, collect_results, mean_defined
from .run_info import RunInfo, engine_notes, engine_summary, model_notes
from .tables import (
    ERROR_DEFINITIONS,
    accuracy_curves,
    build_tables,
    corruption_matrix,
    curve_datasets,
)
from .uncertainty import (
    BootstrapSettings,
    Uncertainty,
    bootstrap_results,
    flags_table,
    headline_table,
    published_table,
    seeds_table,
    summary_json,
    templates_table,
)

__all__ = ["write_report"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 color:#1f2328;max-width:1180px;margin:2rem auto;padding:0 1.5rem;line-height:1.45}
h1{font-size:1.7rem;border-bottom:2px solid #d0d7de;padding-bottom:.3rem;margin-bottom:.3rem}
h2{font-size:1.3rem;margin-top:2.4rem;border-bottom:1px solid #d0d7de;padding-bottom:.2rem}
h3{font-size:1.05rem;margin:1.6rem 0 .2rem}
.sub{color:#57606a;margin-top:0}
table{border-collapse:collapse;font-size:.86rem;font-variant-numeric:tabular-nums}
th,td{padding:.28rem .6rem;border-bottom:1px solid #e5e7eb;vertical-align:top}
th{background:#f6f8fa;text-align:left;border-bottom:2px solid #d0d7de}
th.num{text-align:right}
td.num{text-align:right;white-space:nowrap}
td.short{white-space:nowrap}
table.summary th{white-space:nowrap;width:1%}
td.na{color:#8c959f}
td.warn{color:#9a6700;font-weight:600}
tbody tr:nth-child(even){background:#fafbfc}
.scroll{overflow-x:auto}
.desc{color:#57606a;margin:.1rem 0 .6rem;font-size:.9rem}
.footnotes,.note{font-size:.8rem;color:#57606a;margin:.4rem 0}
.footnotes li{margin:.1rem 0}
sup{color:#0969da;margin-left:1px;line-height:0;font-size:.72em}
.callout{border-left:4px solid #bf8700;background:#fff8c5;padding:.5rem 1rem;margin:1rem 0}
.callout ul{margin:.2rem 0;padding-left:1.2rem}
figure{margin:1rem 0 1.6rem}
figure img{max-width:100%;height:auto;border:1px solid #eaeef2}
figcaption{color:#57606a;font-size:.88rem;margin-top:.3rem}
pre{background:#f6f8fa;padding:.7rem;overflow:auto;font-size:.78rem;border-radius:4px}
details{margin:.4rem 0}
summary{cursor:pointer;color:#0969da}
"""


def _check_montages(montage_images: Mapping[str, str | Path] | None) -> dict[str, Path]:
    if montage_images is None:
        return {}
    if not isinstance(montage_images, Mapping):
        raise TypeError("montage_images must map a title to a PNG path, "
                        f"not {type(montage_images).__name__}")
    out = {}
    for title, path in montage_images.items():
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"montage image {title!r} not found: {p}")
        with p.open("rb") as fh:
            if fh.read(8) != _PNG_MAGIC:
                raise ValueError(f"montage image {title!r} is not a PNG file: {p}")
        out[str(title)] = p
    return out


def _load_run(run_dir: Path) -> tuple[list[dict], RunInfo]:
    database = run_dir / "results.sqlite"
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    if not database.is_file():
        raise FileNotFoundError(
            f"no results database {database}: {run_dir} is not a medrobust run folder "
            "(evaluate models into it first)")
    with ResultsStore(run_dir, readonly=True) as store:
        rows, info = store.rows(), RunInfo.from_store(store.info())
    if not rows:
        raise ValueError(f"the run database {database} has no finished cells yet; "
                         "nothing to report (evaluate models into the run first)")
    return rows, info


def _missing_cells(results: RunResults) -> tuple[int, list[str]]:
    """How many cells of the expected grid the run lacks, and which (grouped by model)."""
    count = 0
    gaps: dict[str, list[str]] = {}
    for b in results.benchmarks:
        for m in results.models:
            if results.cell(m, b, CLEAN, 0) is None:
                count += 1
                gaps.setdefault(f"clean on {b.label}", []).append(m)
            for c in b.corruptions + b.held_out:
                absent = [s for s in b.severities if results.cell(m, b, c, s) is None]
                if absent:
                    count += len(absent)
                    levels = ("" if len(absent) == len(b.severities)
                              else f", severities {absent}")
                    gaps.setdefault(f"{c} on {b.label}{levels}", []).append(m)
    where = [
        f"{gap} ({'all models' if len(models) == len(results.models) else ', '.join(models)})"
        for gap, models in gaps.items()
    ]
    return count, where


def _severity_text(severities: Sequence[int]) -> str:
    s = list(severities)
    if not s:
        return "none"
    if s == list(range(s[0], s[-1] + 1)) and len(s) > 2:
        return f"{s[0]}-{s[-1]}"
    return ", ".join(map(str, s))


def _datasets_table(results: RunResults) -> Table:
    rows = []
    for b in results.benchmarks:
        sizes = [c.n for m in results.models if (c := results.cell(m, b, CLEAN, 0))]
        rows.append((
            Cell(b.label), Cell(b.modality), Cell(b.suite),
            Cell(f"{len(b.corruptions)}: {', '.join(b.corruptions)}" if b.corruptions else "0",
                 f"expected corruptions: {b.source}"),
            Cell(", ".join(b.held_out) or "-"), Cell(_severity_text(b.severities)),
            Cell(max(sizes) if sizes else None),
        ))
    return Table(
        "datasets", "Datasets",
        "Each dataset with its suite, the corruptions an mCE over it covers, the severities "
        "evaluated and the number of images.",
        ("Dataset", "Modality", "Suite", "Benchmark corruptions", "Held out", "Severities",
         "Images"),
        tuple(rows), ("", "", "", "", "", "", "d"),
    )


def _summary_items(
    results: RunResults, analysis: Analysis, run_dir: Path, info: RunInfo
) -> list[tuple[str, str]]:
    count, _ = _missing_cells(results)
    cells = (f"{results.n_used} finished cells used ({results.n_rows} in the database); a "
             f"complete grid has {results.expected_cells()}: "
             + (f"{count} missing" if count else "complete"))
    models = ", ".join(f"{m} (weights {results.weights[m][:12]})" for m in results.models)
    suites = sorted({b.suite for b in results.benchmarks})
    baseline = (analysis.baseline if analysis.baseline else
                f"{analysis.requested_baseline} - not in this run, absolute errors only")
    return [
        ("Run folder", str(run_dir)),
        ("Split", results.split),
        ("Models", models),
        ("Datasets", ", ".join(f"{b.label} ({b.modality})" for b in results.benchmarks)),
        ("Suites", ", ".join(suites)),
        ("Cells", cells),
        ("Error", ERROR_DEFINITIONS[results.error_type]),
        ("Baseline", baseline),
        ("Compute time", f"{results.seconds / 60:.1f} min in total over the cells"),
        ("Engine", engine_summary(info)),
        ("Generated", f"{time.strftime('%Y-%m-%d %H:%M:%S')} by medrobust {__version__}"),
    ]


def _warnings(results: RunResults, analysis: Analysis, info: RunInfo) -> list[str]:
    out = []
    if analysis.baseline is None and analysis.requested_baseline is not None:
        out.append(f"The baseline model {analysis.requested_baseline!r} is not in this run "
                   f"(models: {', '.join(results.models)}): no ratios (Clean Error, mCE) can be "
                   "computed; the tables show absolute errors.")
    count, _ = _missing_cells(results)
    if count:
        out.append(f"The grid is incomplete: {count} expected cell(s) are missing, so some "
                   "summaries cover fewer corruptions or datasets (see Coverage).")
    out += model_notes(results.models, info)
    return out


def _notes(results: RunResults, analysis: Analysis, info: RunInfo) -> list[str]:
    notes = [
        f"Error: {ERROR_DEFINITIONS[results.error_type]}; the {results.accuracy_name} columns "
        "show 1 - error. AUC is the ROC-AUC (one-vs-rest macro for more than two classes); ECE "
        "the expected calibration error of the top label.",
    ]
    if analysis.baseline:
        notes.append(
            f"Baseline: {analysis.baseline} = 100. Clean Error = E_clean / E_clean(baseline) x "
            "100; CE(c) = sum over severities of E(c, s) / the same sum for the baseline; mCE = "
            "mean over the suite's benchmark corruptions of CE x 100; relative mCE uses E(c, s) - "
            "E_clean on both sides. Each is computed per dataset and then averaged over datasets "
            "with equal weight.")
        notes.append(
            f"A ratio whose baseline denominator is below {MIN_DENOMINATOR:g} (zero, near zero or "
            "negative, as relative CE often is) is undefined: shown as n/a with the reason in a "
            "footnote and left out of the mean, never as a huge or sign-flipped number.")
    else:
        notes.append(
            f"Baseline: {analysis.requested_baseline!r} is not in this run, so only absolute "
            f"errors are shown; rerun the report with baseline set to one of "
            f"{', '.join(results.models)} for ratios.")
    count, where = _missing_cells(results)
    coverage = ("Coverage: the grid is complete." if not count else
                f"Coverage: {count} expected cell(s) missing: " + "; ".join(where[:25])
                + (f"; and {len(where) - 25} more" if len(where) > 25 else "") + ".")
    notes.append(coverage + " Every summary states how many (dataset, corruption) pairs it "
                 "covers; a corruption counts only with all its severities.")
    notes += model_notes(results.models, info)
    guessed = info.guessed([b.dataset for b in results.benchmarks])
    if guessed:
        notes.append(f"Modality of {', '.join(sorted(set(guessed)))} guessed from the dataset name: "
                     "the run did not record it (evaluated before modalities were stored).")
    notes += engine_notes(info)
    notes += list(results.notes)
    return notes


_CONFIG_LEVELS = (
    ("run", ()),
    ("per model", ("model",)),
    ("per dataset", ("dataset",)),
    ("per model and dataset", ("model", "dataset")),
    ("per corruption", ("dataset", "suite", "corruption", "severity")),
    ("per model and corruption", ("model", "dataset", "suite", "corruption", "severity")),
    ("per cell", ("model", "dataset", "suite", "corruption", "severity", "seed")),
)
_NOT_SET = "(not set)"


def _same(values: list[Any]) -> bool:
    return len({json.dumps(v, sort_keys=True, default=str) for v in values}) == 1


def _config_summary(results: RunResults) -> str:
    """The exact configuration of every cell as one compact JSON text.

    Each setting is listed at the coarsest level that determines it (the whole run, a model, a
    dataset, a model on a dataset, a corruption cell, ...), so nothing is dropped and nothing
    is repeated; values that differ only by severity are listed per severity.
    """
    records = results.configs
    keys = sorted({k for r in records for k in r["config"]})
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for key in keys:
        for level, fields in _CONFIG_LEVELS:
            groups: dict[tuple, list[Any]] = defaultdict(list)
            for r in records:
                groups[tuple(r[f] for f in fields)].append(r["config"].get(key, _NOT_SET))
            if all(_same(v) for v in groups.values()) or level == "per cell":
                break
        section = out.setdefault(level, {})
        for coords, values in groups.items():
            value = values[0] if _same(values) else values
            if "severity" in fields and level != "per cell":
                where, severity = " / ".join(map(str, coords[:-1])), coords[-1]
                entry = section.setdefault(where or "all", {})
                entry.setdefault(key, {})[f"severity {severity}"] = value
            else:
                section.setdefault(" / ".join(map(str, coords)) or "all", {})[key] = value
    for level in ("per corruption", "per model and corruption"):  # equal at every severity:
        for entry in out.get(level, {}).values():                 # shown once
            for key, by_severity in entry.items():
                if _same(list(by_severity.values())):
                    entry[key] = next(iter(by_severity.values()))
    for section in out.values():  # a setting absent from a whole group is not listed there
        for where in list(section):
            section[where] = {k: v for k, v in section[where].items() if v != _NOT_SET}
            if not section[where]:
                del section[where]
    if "run" in out:
        out["run"] = out["run"].get("all", {})
    order = [level for level, _ in _CONFIG_LEVELS if level in out]
    return json.dumps({level: out[level] for level in order}, indent=2, default=str)


def _figures(analysis: Analysis, out: Path, unc: Uncertainty) -> list[tuple[str, Path, str]]:
    """Write the plots that have data; (title, path, caption) of each."""
    r = analysis.results
    figures = []
    severities, curves = accuracy_curves(analysis)
    chance = {key: mean_defined(unc.chance(d) for d in datasets)
              for key, datasets in curve_datasets(analysis).items()}
    if any(v is not None for per in curves.values() for p in per.values() for v in p[1:]):
        path = plot_accuracy_vs_severity(
            curves, severities, out / "accuracy_vs_severity.png", ylabel=r.accuracy_name,
            chance=chance)
        guess = ("1 / number of classes" if r.error_type == "balanced_error"
                 else "the majority class's share")
        figures.append((
            "Accuracy versus severity", path,
            f"{r.accuracy_name.capitalize()} per corruption and severity (clean = severity 0), "
            "mean over the datasets with that corruption; dotted: chance, the "
            f"{r.accuracy_name} of a constant guess ({guess})."))
    label, matrix = corruption_matrix(analysis)
    if any(v is not None for row in matrix.values() for v in row.values()):
        path = plot_corruption_heatmap(
            matrix, out / "corruption_heatmap.png", label=label,
            center=100.0 if analysis.baseline else None, percent=analysis.baseline is None)
        what = (f"CE with {analysis.baseline} = 100 (below 100: more robust than the baseline)"
                if analysis.baseline else "Mean error over severities")
        figures.append(("Corruption x model", path,
                        f"{what}, mean over the datasets with that corruption."))
    return figures


@dataclass(frozen=True)
class _Content:
    """Everything the report shows, rendered by :func:`_markdown` and :func:`_html`."""

    title: str
    warnings: list[str]
    summary: list[tuple[str, str]]
    datasets: Table
    configuration: str
    headline: Table
    results: list[Table]
    figures: list[tuple[str, Path, str]]
    montages: dict[str, Path]
    notes: list[str]


def _markdown(c: _Content, out: Path) -> str:
    lines = [f"# {c.title}", ""]
    if c.warnings:
        lines += [f"> **Read first:** {w}  " for w in c.warnings] + [""]
    lines += ["## Run summary", ""] + [f"- **{k}:** {v}" for k, v in c.summary] + [""]
    lines.append(c.datasets.to_markdown())
    lines += ["## Headline", "", c.headline.to_markdown(), "## Results", ""]
    lines += [t.to_markdown() for t in c.results]
    if c.figures:
        lines += ["## Figures", ""]
        for name, path, caption in c.figures:
            lines += [f"### {name}", "", f"![{name}]({path.name})", "", f"*{caption}*", ""]
    if c.montages:
        lines += ["## Sample montages", ""]
        for name, path in c.montages.items():
            rel = Path(os.path.relpath(path.resolve(), out.resolve())).as_posix()
            lines += [f"### {name}", "", f"![{name}]({rel})", ""]
    lines += ["## Notes", ""] + [f"- {n}" for n in c.notes] + ["", "## Configuration", ""]
    lines += ["Each setting at the coarsest level that determines it.", "", "```json",
              c.configuration, "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _figure_html(name: str, path: Path, caption: str) -> str:
    e = html.escape
    return (f'<h3>{e(name)}</h3><figure><img src="{_data_uri(path)}" alt="{e(name)}">'
            + (f"<figcaption>{e(caption)}</figcaption>" if caption else "") + "</figure>")


def _html(c: _Content) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(c.title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
        f"<h1>{e(c.title)}</h1>",
    ]
    if c.warnings:
        parts.append('<div class="callout"><strong>Read first</strong><ul>'
                     + "".join(f"<li>{e(w)}</li>" for w in c.warnings) + "</ul></div>")
    parts.append("<h2>Run summary</h2>")
    parts.append('<div class="scroll"><table class="summary"><tbody>' + "".join(
        f'<tr><th scope="row">{e(k)}</th><td>{e(v)}</td></tr>' for k, v in c.summary)
        + "</tbody></table></div>")
    parts.append(c.datasets.to_html())
    parts.append("<details><summary>Exact configuration (each setting at the coarsest level "
                 f"that determines it)</summary><pre>{e(c.configuration)}</pre></details>")
    parts += ["<h2>Headline</h2>", c.headline.to_html(), "<h2>Results</h2>"]
    parts += [t.to_html() for t in c.results]
    if c.figures:
        parts.append("<h2>Figures</h2>")
        parts += [_figure_html(*f) for f in c.figures]
    if c.montages:
        parts.append("<h2>Sample montages</h2>")
        parts += [_figure_html(name, path, "") for name, path in c.montages.items()]
    parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in c.notes) + "</ul>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def model_caveats(results: RunResults, info: RunInfo) -> dict[str, list[str]]:
    """What a reader must know about each model's numbers, from what the run recorded: the
    model's notes (e.g. medrobust-mini saw these classes; an adapter's base and data) and
    test images it had seen (evaluated with --allow-overlap)."""
    out = {m: [n.split(": ", 1)[1] for n in model_notes([m], info)] for m in results.models}
    for record in results.configs:
        config, found = record["config"], out[record["model"]]
        if config.get("seen_test_images"):
            text = (f"evaluated with --allow-overlap: {config['seen_test_images']} of the "
                    f"{config.get('n_images', '?')} test images of {record['dataset']} were "
                    "among its training or validation images")
            found += [] if text in found else [text]
    return out


def join_caveats(notes: list[str]) -> str | None:
    """One model's caveats as one cell: sentences joined by semicolons, one full stop."""
    parts = [n.strip().rstrip(".") for n in notes if n.strip()]
    return "; ".join(parts) + "." if parts else None


def _result_tables(analysis: Analysis, unc: Uncertainty) -> tuple[dict[str, Table], list[str]]:
    """The report's result tables (published baselines first, then the analysis tables, the
    seeds, flags and templates), and the warnings about differing prompt templates."""
    tables = build_tables(analysis)
    tables["headline"] = _retitled(tables["headline"])
    templates, warnings = templates_table(analysis.results)
    extra = {"seeds": seeds_table(unc), "flags": flags_table(unc), "templates": templates}
    ordered = {"published": published_table(unc), **tables, **extra}
    return {k: t for k, t in ordered.items() if t is not None}, warnings


def _retitled(table: Table) -> Table:
    """The point-estimate headline, kept below as the detailed table (ECE, AUC, coverage)."""
    return Table("detail", "Point estimates with calibration and coverage", table.description,
                 table.columns, table.rows, table.formats, table.notes)


def _uncertainty_notes(unc: Uncertainty) -> list[str]:
    notes = [f"Intervals: bootstrap {unc.settings.n_resamples} resamples, seed "
             f"{unc.settings.seed}, computed in {unc.seconds:.1f} s." if unc.settings.n_resamples
             else "Intervals: off (--bootstrap 0)."]
    notes.append(f"Relative mCE leaves out a corruption whose baseline degradation is below "
                 f"{unc.settings.min_degradation_images:g} test images' worth (that many / the "
                 "number of test images), counted in its coverage with the reason.")
    notes += [f"Images of {d}: {src}." for d, src in unc.image_sources.items()]
    return notes + unc.notes


def write_report(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    baseline: str | None = "clip-vit-b16",
    error_type: str = "error",
    montage_images: Mapping[str, str | Path] | None = None,
    *,
    split: str | None = None,
    modalities: Mapping[str, str] | None = None,
    expected_corruptions: Mapping[str, Sequence[str]] | None = None,
    bootstrap: BootstrapSettings | None = None,
) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and the figures of a run; return their paths.

    ``out_dir`` defaults to ``<run_dir>/report``. ``baseline`` is the model whose errors are
    100 (absent from the run or None: absolute errors only). ``error_type`` is 'error'
    (1 - accuracy) or 'balanced_error'. ``montage_images`` maps titles to PNG files (e.g. from
    :func:`~medrobust.reporting.montage.corruption_montage`). ``split`` picks one split (default:
    the only one, else 'test'); ``modalities`` names datasets' modalities the package does not
    know; ``expected_corruptions`` overrides a dataset's expected corruption list.
    ``bootstrap`` sets the confidence intervals (default: 1000 stratified resamples, seed 0)
    and the relative-mCE guard; ``summary.json`` beside the report holds every number.

    Returns ``{'summary', 'headline', 'markdown', 'html'}`` (summary.json, the headline
    table alone as Markdown, the report) plus ``'accuracy_vs_severity'`` and
    ``'corruption_heatmap'`` (PNG) when the run has corrupted results to plot. Raises
    FileNotFoundError if the run folder or its database is missing, ValueError if the database
    holds no finished cells or an argument is invalid.
    """
    check_error_type(error_type)
    run_dir = Path(run_dir)
    montages = _check_montages(montage_images)
    rows, info = _load_run(run_dir)
    results = collect_results(
        rows, error_type=error_type, split=split,
        modalities={**info.modalities(), **(modalities or {})},
        expected_corruptions={**info.expected_corruptions(rows), **(expected_corruptions or {})},
    )  # fmt: skip
    settings = bootstrap or BootstrapSettings()
    analysis = analyse(results, baseline, min_degradation_images=settings.min_degradation_images)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / temp_prefix("write-test")
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise PermissionError(
            f"cannot write the report to {out} ({exc.strerror or exc}): write it to another "
            "folder with --out DIR (out_dir=...); the run itself is only read"
        ) from exc

    unc = bootstrap_results(results, run_dir, analysis.baseline, settings)
    caveats = model_caveats(results, info)
    tables, template_warnings = _result_tables(analysis, unc)
    headline = headline_table(unc, {m: join_caveats(c) for m, c in caveats.items()})
    content = _Content(
        title=f"medrobust robustness report: {run_dir.resolve().name}",
        warnings=_warnings(results, analysis, info) + template_warnings,
        summary=_summary_items(results, analysis, run_dir.resolve(), info),
        datasets=_datasets_table(results),
        configuration=_config_summary(results),
        headline=headline,
        results=list(tables.values()),
        figures=_figures(analysis, out, unc),
        montages=montages,
        notes=_notes(results, analysis, info) + _uncertainty_notes(unc),
    )
    document = json.dumps(summary_json(unc, caveats), indent=1, allow_nan=False)
    paths = {"summary": write_text_atomic(document + "\n", out / "summary.json"),
             "headline": write_text_atomic(headline.to_markdown(), out / "headline.md"),
             "markdown": write_text_atomic(_markdown(content, out), out / "report.md"),
             "html": write_text_atomic(_html(content), out / "report.html")}
    paths.update({path.stem: path for _, path, _ in content.figures})
    return paths
