"""Report tables of an evaluation run, computed from its results-store rows.

The headline follows RobustMedCLIP's table: each model's Clean Error and mCE divided by a
baseline model's (baseline = 100). Both are computed per dataset, over the benchmark
corruptions of that dataset's suite, and then averaged over datasets with equal weight. Every
summary says how many (dataset, corruption) pairs it covers and flags an incomplete grid;
undefined ratios are n/a with the reason in a footnote. Tables are plain data (:class:`Table`)
rendered to Markdown or HTML.
"""

from __future__ import annotations

import functools
import html
import json
import math
import re
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..evaluation.robustness import (
    CLEAN,
    ERROR_TYPES,
    ErrorGrid,
    IncompleteGridWarning,
    RobustnessSummary,
    UndefinedMetricWarning,
    clean_error_ratio,
    mean_corruption_error,
    relative_mean_corruption_error,
)

__all__ = [
    "ACCURACY_NAMES",
    "ERROR_DEFINITIONS",
    "MEDCLIP_CAVEAT",
    "Analysis",
    "Benchmark",
    "Cell",
    "CellResult",
    "DatasetSummary",
    "RunResults",
    "Table",
    "accuracy_curves",
    "analyse",
    "build_tables",
    "collect_results",
    "corruption_matrix",
    "dataset_modality",
    "is_medclip",
]

ACCURACY_NAMES = {"error": "accuracy", "balanced_error": "balanced accuracy"}
ERROR_DEFINITIONS = {
    "error": "error = 1 − top-1 accuracy",
    "balanced_error": "error = 1 − balanced accuracy (mean per-class recall)",
}
MEDCLIP_CAVEAT = (
    "MedCLIP: users report its released weights behaving as if random; "
    "treat its numbers with caution"
)
_MEDCLIP = re.compile(r"(?<![a-z])medclip")


def is_medclip(model: str) -> bool:
    """Whether a model name denotes MedCLIP (not BiomedCLIP or RobustMedCLIP)."""
    return _MEDCLIP.search(model.lower()) is not None


# ----------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Cell:
    """One table entry: a value (None = n/a) and an optional footnote, e.g. why it is n/a."""

    value: float | int | str | None
    note: str | None = None


@dataclass(frozen=True)
class Table:
    """A titled table of :class:`Cell` rows; ``formats`` holds one format spec per column."""

    key: str
    title: str
    description: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    formats: tuple[str, ...]
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.formats) != len(self.columns):
            raise ValueError(f"table {self.key!r}: {len(self.formats)} formats for "
                             f"{len(self.columns)} columns")
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(f"table {self.key!r}: a row has {len(row)} cells for "
                                 f"{len(self.columns)} columns")

    def value(self, row: str, column: str, *, key_columns: int = 1) -> Any:
        """The raw value in ``column`` of the row whose first cells read ``row``.

        With ``key_columns=2`` the row is named ``"first / second"`` (e.g. modality / model).
        """
        if column not in self.columns:
            raise KeyError(f"table {self.key!r} has no column {column!r}; columns: {self.columns}")
        j = self.columns.index(column)
        for cells in self.rows:
            name = " / ".join(str(c.value) for c in cells[:key_columns])
            if name == row:
                return cells[j].value
        raise KeyError(f"table {self.key!r} has no row {row!r}")

    def footnotes(self) -> list[str]:
        """The distinct cell notes, in reading order (footnote i is ``footnotes()[i - 1]``)."""
        seen: dict[str, None] = {}
        for row in self.rows:
            for cell in row:
                if cell.note:
                    seen.setdefault(cell.note)
        return list(seen)

    def text(self, cell: Cell, column: int) -> str:
        """A cell's value as text: formatted number, text, or n/a."""
        v = cell.value
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "n/a"
        if isinstance(v, str) or not self.formats[column]:
            return str(v)
        return format(v, self.formats[column])

    def _marked(self, marker: str) -> list[list[str]]:
        index = {note: i + 1 for i, note in enumerate(self.footnotes())}
        return [
            [self.text(c, j) + (marker.format(index[c.note]) if c.note else "")
             for j, c in enumerate(row)]
            for row in self.rows
        ]

    def to_markdown(self, level: int = 3) -> str:
        """GitHub-flavoured Markdown: heading, description, table, numbered footnotes."""
        def esc(text: str) -> str:
            return text.replace("|", "\\|").replace("\n", " ")

        lines = [f"{'#' * level} {self.title}", "", self.description, ""]
        lines.append("| " + " | ".join(esc(c) for c in self.columns) + " |")
        lines.append("|" + "|".join("---:" if f else "---" for f in self.formats) + "|")
        for row in self._marked(" [{}]"):
            lines.append("| " + " | ".join(esc(t) for t in row) + " |")
        notes = self.footnotes()
        if notes:
            lines.append("")
            lines.extend(f"[{i}] {esc(n)}  " for i, n in enumerate(notes, 1))
        if self.notes:
            lines.append("")
            lines.extend(f"*{esc(n)}*  " for n in self.notes)
        return "\n".join(lines).rstrip() + "\n"

    def to_html(self, level: int = 3) -> str:
        """An HTML fragment (section with heading, table, footnotes); all text escaped."""
        e = html.escape
        head = "".join(
            f'<th class="{"num" if f else "txt"}">{e(c)}</th>'
            for c, f in zip(self.columns, self.formats, strict=True)
        )
        body = []
        for cells, row in zip(self.rows, self._marked("\x00{}"), strict=True):
            tds = []
            for j, (cell, text) in enumerate(zip(cells, row, strict=True)):
                shown, _, mark = text.partition("\x00")
                cls = "num" if self.formats[j] else "txt"
                if cell.value is None:
                    cls += " na"
                elif isinstance(cell.value, str) and cell.value.endswith("incomplete"):
                    cls += " warn"
                if len(shown) <= 32:
                    cls += " short"
                sup = f'<sup title="{e(cell.note or "")}">{mark}</sup>' if mark else ""
                tds.append(f'<td class="{cls}">{e(shown)}{sup}</td>')
            body.append("<tr>" + "".join(tds) + "</tr>")
        parts = [
            f'<section class="table" id="table-{e(self.key)}">',
            f"<h{level}>{e(self.title)}</h{level}>",
            f'<p class="desc">{e(self.description)}</p>',
            '<div class="scroll"><table>',
            f"<thead><tr>{head}</tr></thead>",
            "<tbody>" + "\n".join(body) + "</tbody>",
            "</table></div>",
        ]
        notes = self.footnotes()
        if notes:
            parts.append('<ol class="footnotes">' + "".join(f"<li>{e(n)}</li>" for n in notes)
                         + "</ol>")
        parts.extend(f'<p class="note">{e(n)}</p>' for n in self.notes)
        parts.append("</section>")
        return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- run data


@dataclass(frozen=True)
class Benchmark:
    """One dataset evaluated under one corruption suite."""

    label: str
    dataset: str
    suite: str
    modality: str
    corruptions: tuple[str, ...]
    """The benchmark corruptions: the set an mCE over this dataset is taken over."""
    held_out: tuple[str, ...]
    """Corruptions evaluated in the run but outside the benchmark set (shown, not averaged)."""
    severities: tuple[int, ...]
    source: str
    """Where ``corruptions`` comes from (the suite, the caller, or what the run holds)."""


@dataclass(frozen=True)
class CellResult:
    """Metrics of one grid cell, averaged over repeats (seeds, configurations) if any."""

    error: float
    auc: float | None
    ece: float | None
    n: int
    repeats: int


@dataclass(frozen=True)
class RunResults:
    """The finished cells of one split of a run, keyed by model and benchmark."""

    error_type: str
    split: str
    models: tuple[str, ...]
    benchmarks: tuple[Benchmark, ...]
    cells: Mapping[tuple[str, str, str, int], CellResult]
    """``(model, benchmark label, corruption or 'clean', severity (0 = clean)) -> result``."""
    weights: Mapping[str, str]
    configs: tuple[Mapping[str, Any], ...]
    """Distinct cell configurations: ``model``, ``dataset``, ``suite``, ``corruption``,
    ``severity``, ``seed`` and the parsed ``config`` (weights hash included)."""
    n_rows: int
    n_used: int
    seconds: float
    notes: tuple[str, ...]

    def cell(self, model: str, bench: Benchmark, corruption: str, severity: int) -> CellResult | None:
        return self.cells.get((model, bench.label, corruption, severity))

    def accuracy(self, model: str, bench: Benchmark, corruption: str, severity: int) -> float | None:
        """1 - error of the chosen error type (accuracy or balanced accuracy), None if absent."""
        c = self.cell(model, bench, corruption, severity)
        return None if c is None else 1.0 - c.error

    @property
    def accuracy_name(self) -> str:
        return ACCURACY_NAMES[self.error_type]

    @property
    def suite_families(self) -> list[str]:
        return sorted({b.suite.partition("/")[0] for b in self.benchmarks})

    def corruption_key(self, bench: Benchmark, corruption: str) -> str:
        """Row name of a corruption in cross-dataset tables (prefixed by suite when several)."""
        if len(self.suite_families) > 1:
            return f"{bench.suite.partition('/')[0]}: {corruption}"
        return corruption

    def expected_cells(self) -> int:
        per_model = sum(1 + len(b.corruptions + b.held_out) * len(b.severities)
                        for b in self.benchmarks)
        return per_model * len(self.models)


def _check_error_type(error_type: str) -> str:
    if error_type not in ERROR_TYPES:
        raise ValueError(f"error_type must be one of {ERROR_TYPES}; got {error_type!r}")
    return error_type


def dataset_modality(dataset: str, modalities: Mapping[str, str] | None = None) -> str:
    """Modality of a dataset: the caller's mapping, else the package's metadata, else 'unknown'."""
    if modalities and dataset in modalities:
        return str(modalities[dataset])
    known: dict[str, str] = {}
    try:
        from ..data.layouts import MEDIMETA_C_DATASETS
        from ..data.medmnist import MEDMNIST_MODALITIES
    except ImportError:
        return "unknown"
    known.update(MEDMNIST_MODALITIES)
    known.update({name: info.modality for name, info in MEDIMETA_C_DATASETS.items()})
    base = re.sub(r"_(28|64|128|224)$", "", dataset.lower())
    return known.get(dataset, known.get(base, "unknown"))


@functools.lru_cache(maxsize=64)
def _suite_corruptions(suite: str, dataset: str) -> tuple[str, ...] | None:
    """The benchmark corruptions of a suite, None if it cannot be loaded."""
    try:
        from ..corruptions import get_suite
    except Exception:  # a broken optional import must not stop a report: fall back, noted
        return None
    try:
        s = get_suite(suite, dataset if suite == "medmnist-c" else None)
    except (KeyError, ValueError, OSError):
        return None
    return tuple(s.benchmark_corruptions)


def _expected_corruptions(dataset: str, suite: str, observed: list[str],
                          given: Mapping[str, Sequence[str]] | None) -> tuple[list[str], str]:
    """The corruptions an mCE over a dataset should cover, and where that list comes from."""
    if given and dataset in given:
        return list(given[dataset]), "the list given by the caller"
    found = _suite_corruptions(suite, dataset)
    if found is not None:
        return list(found), f"the benchmark corruptions of suite {suite!r}"
    return observed, f"the corruptions found in the run (suite {suite!r} could not be loaded)"


def _config(config: Any) -> dict[str, Any]:
    """A row's configuration as a dict (the store keeps JSON text; a non-object is wrapped)."""
    value = json.loads(config) if isinstance(config, str) else config
    if value is None:
        return {}
    return dict(value) if isinstance(value, Mapping) else {"config": value}


def _row_error(row: Mapping[str, Any], error_type: str) -> float | None:
    value = row.get(error_type)
    if value is None:
        acc = row.get(ACCURACY_NAMES[error_type].replace(" ", "_"))
        value = None if acc is None else 1.0 - float(acc)
    return None if value is None or math.isnan(float(value)) else float(value)


def _mean(values: Iterable[float | None]) -> float | None:
    defined = [v for v in values if v is not None and not math.isnan(v)]
    return math.fsum(defined) / len(defined) if defined else None


def _select_split(rows: Sequence[Mapping[str, Any]], split: str | None) -> tuple[str, list[str]]:
    splits = sorted({str(r["split"]) for r in rows})
    if split is not None:
        if split not in splits:
            raise ValueError(f"the run has no cells of split {split!r}; it has {splits}")
        chosen = split
    elif len(splits) == 1:
        chosen = splits[0]
    else:
        chosen = "test" if "test" in splits else splits[0]
    notes = []
    if len(splits) > 1:
        notes.append(f"The run holds splits {', '.join(splits)}; this report shows split "
                     f"{chosen!r} only (choose another with split=...).")
    return chosen, notes


def collect_results(
    rows: Sequence[Mapping[str, Any]],
    *,
    error_type: str = "error",
    split: str | None = None,
    modalities: Mapping[str, str] | None = None,
    expected_corruptions: Mapping[str, Sequence[str]] | None = None,
) -> RunResults:
    """Group store rows (``ResultsStore.rows()``) into a :class:`RunResults`.

    One split is kept (``split``; default: the only one, else 'test'). Repeats of a cell (other
    seeds or configurations) are averaged. A model stored under several weights hashes becomes
    one entry per hash (``name [hash8]``). A dataset's expected corruptions are, in order:
    ``expected_corruptions[dataset]``, the benchmark corruptions of its suite, or those the
    run holds; its severities are those evaluated on it by any model.
    """
    _check_error_type(error_type)
    rows = list(rows)
    if not rows:
        raise ValueError("no finished cells: the run database holds no results yet")
    chosen, notes = _select_split(rows, split)
    used = [r for r in rows if str(r["split"]) == chosen]

    hashes: dict[str, set[str]] = defaultdict(set)
    for r in used:
        hashes[r["model"]].add(str(r["weights_hash"]))

    def label(r: Mapping[str, Any]) -> str:
        name = str(r["model"])
        return name if len(hashes[name]) == 1 else f"{name} [{str(r['weights_hash'])[:8]}]"

    # dataset -> suites of its corrupted cells (in order seen); a clean-only dataset keeps its own
    suites: dict[str, dict[str, None]] = {}
    for r in sorted(used, key=lambda r: r["corruption"] == CLEAN):
        seen = suites.setdefault(r["dataset"], {})
        if r["corruption"] != CLEAN or not seen:
            seen.setdefault(str(r["suite"]))

    groups: dict[tuple[str, str, str, str, int], list[Mapping[str, Any]]] = defaultdict(list)
    skipped = 0
    for r in used:
        if _row_error(r, error_type) is None:
            skipped += 1
            continue
        suite = str(r["suite"]) if r["corruption"] != CLEAN else "*"
        groups[(label(r), r["dataset"], suite, r["corruption"], int(r["severity"]))].append(r)
    if skipped:
        notes.append(f"{skipped} cell(s) without a {error_type!r} value were left out.")

    def result(members: list[Mapping[str, Any]]) -> CellResult:
        return CellResult(
            error=_mean(_row_error(m, error_type) for m in members),  # type: ignore[arg-type]
            auc=_mean(m.get("auc") for m in members),
            ece=_mean(m.get("ece") for m in members),
            n=max(int(m["n"]) for m in members),
            repeats=len(members),
        )

    benchmarks: list[Benchmark] = []
    cells: dict[tuple[str, str, str, int], CellResult] = {}
    for dataset in sorted(suites):
        for suite in suites[dataset]:
            bench_label = dataset if len(suites[dataset]) == 1 else f"{dataset} ({suite})"
            observed = list(dict.fromkeys(
                k[3] for k in groups if k[1] == dataset and k[2] == suite and k[3] != CLEAN))
            severities = sorted({k[4] for k in groups
                                 if k[1] == dataset and k[2] == suite and k[3] != CLEAN})
            listed, source = _expected_corruptions(dataset, suite, observed, expected_corruptions)
            bench = Benchmark(
                label=bench_label, dataset=dataset, suite=suite,
                modality=dataset_modality(dataset, modalities),
                corruptions=tuple(listed),
                held_out=tuple(c for c in observed if c not in listed),
                severities=tuple(severities), source=source,
            )
            benchmarks.append(bench)
            for (model, d, s, corruption, severity), members in groups.items():
                if d == dataset and s == suite:
                    cells[(model, bench_label, corruption, severity)] = result(members)
            for model in {k[0] for k in groups}:
                clean = groups.get((model, dataset, "*", CLEAN, 0))
                if clean:
                    own = [m for m in clean if str(m["suite"]) == suite] or clean
                    cells[(model, bench_label, CLEAN, 0)] = result(own)

    repeated = sorted({(k[0], k[1]) for k, v in cells.items() if v.repeats > 1})
    if repeated:
        seeds = sorted({int(r["seed"]) for r in used})
        notes.append(
            f"Some cells were evaluated more than once (seeds {seeds} or several "
            f"configurations); their metrics are averaged ({len(repeated)} model/dataset pairs)."
        )

    configs = {}
    for r in used:
        record = {"model": label(r), "dataset": str(r["dataset"]), "suite": str(r["suite"]),
                  "corruption": str(r["corruption"]), "severity": int(r["severity"]),
                  "seed": int(r["seed"]),
                  "config": {"weights_hash": str(r["weights_hash"]), **_config(r.get("config"))}}
        configs.setdefault(json.dumps(record, sort_keys=True, default=str), record)
    models = sorted({k[0] for k in groups} | {label(r) for r in used})
    return RunResults(
        error_type=error_type,
        split=chosen,
        models=tuple(models),
        benchmarks=tuple(benchmarks),
        cells=cells,
        weights={label(r): str(r["weights_hash"]) for r in used},
        configs=tuple(configs.values()),
        n_rows=len(rows),
        n_used=len(used),
        seconds=math.fsum(float(r.get("seconds") or 0.0) for r in used),
        notes=tuple(notes),
    )


# ----------------------------------------------------------------------------- analysis


@dataclass(frozen=True)
class DatasetSummary:
    """One model on one benchmark: absolute metrics, coverage and (if a baseline) ratios."""

    clean_error: float | None
    clean_auc: float | None
    clean_ece: float | None
    corrupted_error: float | None
    corrupted_auc: float | None
    corrupted_ece: float | None
    missing: Mapping[str, str]
    """Benchmark corruptions the model lacks (some severity or all), with the reason."""
    clean_ratio: float | None = None
    clean_ratio_reason: str | None = None
    mce: RobustnessSummary | None = None
    rel_mce: RobustnessSummary | None = None
    ratio_reason: str | None = None
    """Why there is no mCE at all on this benchmark (None when there is one)."""
    ce: Mapping[str, float | None] | None = None
    """CE x 100 of every evaluated corruption (held-out ones included)."""


@dataclass(frozen=True)
class Analysis:
    """Per-(model, benchmark) summaries of a run against an optional baseline model."""

    results: RunResults
    baseline: str | None
    requested_baseline: str | None
    per_dataset: Mapping[tuple[str, str], DatasetSummary]

    def summary(self, model: str, bench: Benchmark) -> DatasetSummary:
        return self.per_dataset[(model, bench.label)]

    @property
    def models(self) -> list[str]:
        """Models in table order: the baseline first, then by name."""
        rest = [m for m in self.results.models if m != self.baseline]
        return ([self.baseline] if self.baseline else []) + rest


def _resolve_baseline(results: RunResults, baseline: str | None) -> str | None:
    if baseline is None:
        return None
    if baseline in results.models:
        return baseline
    matches = [m for m in results.models if m.startswith(f"{baseline} [")]
    if len(matches) > 1:
        raise ValueError(f"baseline {baseline!r} has several weights in this run: {matches}; "
                         "name one of them")
    return matches[0] if matches else None


def _missing(results: RunResults, model: str, bench: Benchmark, corruption: str) -> str | None:
    have = {s for s in bench.severities if results.cell(model, bench, corruption, s)}
    if not have:
        return "not evaluated"
    lacking = [s for s in bench.severities if s not in have]
    return f"severities {lacking} missing" if lacking else None


def _grid(results: RunResults, model: str, bench: Benchmark) -> ErrorGrid:
    corrupted = {}
    for c in bench.corruptions + bench.held_out:
        levels = {s: cell.error for s in bench.severities
                  if (cell := results.cell(model, bench, c, s)) is not None}
        if levels:
            corrupted[c] = levels
    clean = results.cell(model, bench, CLEAN, 0)
    return ErrorGrid(corrupted, clean=None if clean is None else clean.error,
                     error_type=results.error_type, name=model)  # type: ignore[arg-type]


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a metrics function without its coverage warnings (the report states coverage)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IncompleteGridWarning)
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return fn(*args, **kwargs)


def _summarise(results: RunResults, model: str, bench: Benchmark, baseline: str | None
               ) -> DatasetSummary:
    clean = results.cell(model, bench, CLEAN, 0)
    missing = {c: why for c in bench.corruptions
               if (why := _missing(results, model, bench, c)) is not None}
    full = [c for c in bench.corruptions if c not in missing]
    corrupted = [cell for c in full for s in bench.severities
                 if (cell := results.cell(model, bench, c, s)) is not None]
    base = {
        "clean_error": None if clean is None else clean.error,
        "clean_auc": None if clean is None else clean.auc,
        "clean_ece": None if clean is None else clean.ece,
        # severity mean per corruption, then the mean over corruptions (equal weights)
        "corrupted_error": _mean(
            _mean(results.cell(model, bench, c, s).error for s in bench.severities)  # type: ignore[union-attr]
            for c in full),
        "corrupted_auc": _mean(c.auc for c in corrupted),
        "corrupted_ece": _mean(c.ece for c in corrupted),
        "missing": missing,
    }
    if baseline is None:
        return DatasetSummary(**base)
    mine, theirs = _grid(results, model, bench), _grid(results, baseline, bench)
    ratio, ratio_why = None, None
    if mine.clean is None or theirs.clean is None:
        ratio_why = f"no clean cell for {'the model' if mine.clean is None else 'the baseline'}"
    else:
        ratio = _quiet(clean_error_ratio, mine.clean, theirs.clean)
        if ratio is None:
            ratio_why = f"the baseline's clean error is {theirs.clean:.3g} (zero or near zero)"
    if not bench.corruptions:
        return DatasetSummary(**base, clean_ratio=ratio, clean_ratio_reason=ratio_why,
                              ratio_reason="no corruptions evaluated")
    kwargs = {"severities": bench.severities or None}
    mce = _quiet(mean_corruption_error, mine, theirs, list(bench.corruptions), **kwargs)
    every = list(bench.corruptions + bench.held_out)
    ce = dict(_quiet(mean_corruption_error, mine, theirs, every, **kwargs).per_corruption)
    rel = None
    if mine.clean is not None and theirs.clean is not None:
        rel = _quiet(relative_mean_corruption_error, mine, theirs, list(bench.corruptions),
                     **kwargs)
    return DatasetSummary(**base, clean_ratio=ratio, clean_ratio_reason=ratio_why, mce=mce,
                          rel_mce=rel, ce=ce)


def analyse(results: RunResults, baseline: str | None = "clip-vit-b16") -> Analysis:
    """Summaries of every model on every benchmark; ratios only if the baseline is in the run."""
    resolved = _resolve_baseline(results, baseline)
    per = {
        (m, b.label): _summarise(results, m, b, resolved)
        for m in results.models for b in results.benchmarks
    }
    return Analysis(results, resolved, baseline, per)


# ----------------------------------------------------------------------------- aggregation

Parts = list[tuple[str, float | None, str | None]]
"""(benchmark label, value or None, why it is None) of one model, one entry per benchmark."""


def _mean_cell(parts: Parts, what: str = "") -> Cell:
    """Mean over benchmarks of the defined values; a footnote names those left out and why."""
    defined = [v for _, v, _ in parts if v is not None]
    left = [f"{name}: {why}" for name, v, why in parts if v is None and why]
    prefix = f"{what} " if what else ""
    if not defined:
        return Cell(None, f"{prefix}n/a - {'; '.join(left)}" if left else None)
    note = None
    if len(defined) < len(parts):
        note = (f"{prefix}mean over {len(defined)} of {len(parts)} datasets; "
                f"left out {'; '.join(left)}")
    return Cell(math.fsum(defined) / len(defined), note)


def _field_parts(analysis: Analysis, model: str, benches: Sequence[Benchmark], name: str
                 ) -> Parts:
    """Parts of an absolute DatasetSummary field (clean_error, corrupted_auc, ...)."""
    out: Parts = []
    for b in benches:
        s = analysis.summary(model, b)
        value, why = getattr(s, name), None
        if value is None:
            clean = name.startswith("clean")
            absent = s.clean_error is None if clean else s.corrupted_error is None
            why = ("not recorded" if not absent else
                   "no clean cell" if clean else "no corruption with every severity")
        out.append((b.label, value, why))
    return out


def _mean_field(analysis: Analysis, model: str, benches: Sequence[Benchmark], name: str,
                *, accuracy: bool = False) -> Cell:
    """Mean over benchmarks of a DatasetSummary field; an error becomes accuracy if asked."""
    cell = _mean_cell(_field_parts(analysis, model, benches, name))
    if accuracy and cell.value is not None:
        return Cell(1.0 - float(cell.value), cell.note)
    return cell


def _ratio_parts(analysis: Analysis, model: str, benches: Sequence[Benchmark], name: str
                 ) -> Parts:
    """Parts of a ratio against the baseline: clean_ratio, mce or rel_mce."""
    out: Parts = []
    for b in benches:
        s = analysis.summary(model, b)
        if name == "clean_ratio":
            out.append((b.label, s.clean_ratio, s.clean_ratio_reason))
            continue
        summary: RobustnessSummary | None = getattr(s, name)
        if summary is None:
            why = s.ratio_reason or "needs the clean errors of model and baseline"
        elif summary.undefined and summary.n_corruptions_covered == 0:
            why = "every corruption's ratio is undefined"
        else:
            why = "no corruption with every severity for model and baseline"
        out.append((b.label, None if summary is None else summary.value, why))
    return out


def _ratio_cell(analysis: Analysis, model: str, benches: Sequence[Benchmark], name: str,
                what: str) -> Cell:
    """Mean over benchmarks of a ratio; notes also name corruptions left out as undefined."""
    cell = _mean_cell(_ratio_parts(analysis, model, benches, name), what)
    undefined = []
    for b in benches:
        summary = getattr(analysis.summary(model, b), name)
        if isinstance(summary, RobustnessSummary) and summary.undefined and summary.value is not None:
            undefined.append(
                f"{what} on {b.label} leaves out {', '.join(summary.undefined)}: the baseline's "
                "denominator is zero, near zero or negative there")
    if undefined and cell.value is not None:
        return Cell(cell.value, "; ".join(([cell.note] if cell.note else []) + undefined))
    return cell


def _coverage(analysis: Analysis, model: str, benches: Sequence[Benchmark], *,
              ratios: bool = True) -> Cell:
    """Covered / expected (dataset, corruption) pairs, flagged when incomplete, gaps in a note.

    With ``ratios`` (and a baseline) a pair counts only when its CE is defined, as in the mCE;
    otherwise when the model has every severity of it.
    """
    against = analysis.baseline if ratios else None
    covered = expected = 0
    gaps: dict[tuple[str, str], list[str]] = defaultdict(list)  # (dataset, why) -> corruptions
    for b in benches:
        s = analysis.summary(model, b)
        base = analysis.summary(against, b) if against else None
        expected += len(b.corruptions)
        if against is None:
            covered += len(b.corruptions) - len(s.missing)
        elif s.mce is not None:
            covered += s.mce.n_corruptions_covered
            gaps[(b.label, "CE undefined")] += s.mce.undefined
        for c in b.corruptions:
            if c in s.missing:
                gaps[(b.label, s.missing[c])].append(c)
            elif base is not None and c in base.missing:
                gaps[(b.label, f"baseline: {base.missing[c]}")].append(c)
    text = f"{covered}/{expected}" + (", incomplete" if covered < expected else "")
    where = [f"{', '.join(cs)} on {label} ({why})" for (label, why), cs in gaps.items() if cs]
    return Cell(text, f"not covered: {'; '.join(where)}" if where else None)


def _model_cell(model: str) -> Cell:
    return Cell(model, MEDCLIP_CAVEAT if is_medclip(model) else None)


# ----------------------------------------------------------------------------- the tables


def _headline(analysis: Analysis) -> Table:
    r = analysis.results
    benches, base = r.benchmarks, analysis.baseline
    how = (f"Per dataset over the benchmark corruptions of its suite, then the mean over the "
           f"{len(benches)} dataset(s) with equal weight; {ERROR_DEFINITIONS[r.error_type]}. "
           "Coverage counts the (dataset, corruption) pairs that entered the mean.")
    rows = []
    for m in analysis.models:
        if base:
            first = [_ratio_cell(analysis, m, benches, "clean_ratio", "Clean Error"),
                     _ratio_cell(analysis, m, benches, "mce", "mCE"),
                     _ratio_cell(analysis, m, benches, "rel_mce", "relative mCE")]
        else:
            first = [_mean_field(analysis, m, benches, "clean_error"),
                     _mean_field(analysis, m, benches, "corrupted_error")]
        rows.append((
            _model_cell(m), *first,
            _mean_field(analysis, m, benches, "clean_error", accuracy=True),
            _mean_field(analysis, m, benches, "corrupted_error", accuracy=True),
            *(_mean_field(analysis, m, benches, f) for f in
              ("clean_auc", "corrupted_auc", "clean_ece", "corrupted_ece")),
            _coverage(analysis, m, benches),
        ))
    short = "bal. acc." if r.error_type == "balanced_error" else "acc."
    tail = (f"Clean {short}", f"Corrupted {short}", "Clean AUC", "Corrupted AUC", "Clean ECE",
            "Corrupted ECE", "Coverage")
    tail_formats = (".1%", ".1%", ".3f", ".3f", ".3f", ".3f", "")
    if base:
        head = ("Model", "Clean Error", "mCE", "Relative mCE")
        formats = ("", ".1f", ".1f", ".1f")
        title = f"Clean Error and mCE, {base} = 100"
        how = (f"Ratios to the baseline {base} (= 100). {how} Accuracy, AUC and ECE are "
               "absolute; corrupted = mean over corruptions and severities.")
    else:
        head = ("Model", "Clean error", "Mean corrupted error")
        formats = ("", ".1%", ".1%")
        title = "Absolute errors (the baseline is not in this run)"
        how += (f" The baseline {analysis.requested_baseline!r} is not in this run, so no ratios "
                "are shown; the mean corrupted error is the mean over corruptions of the mean "
                "over severities.")
    return Table("headline", title, how, head + tail, tuple(rows), formats + tail_formats)


def _modality(analysis: Analysis) -> Table:
    r = analysis.results
    acc, base = r.accuracy_name, analysis.baseline
    rows = []
    for mod in sorted({b.modality for b in r.benchmarks}):
        benches = [b for b in r.benchmarks if b.modality == mod]
        names = ", ".join(b.label for b in benches)
        for m in analysis.models:
            robust = (_ratio_cell(analysis, m, benches, "mce", "mCE") if base
                      else _mean_field(analysis, m, benches, "corrupted_error"))
            rows.append((
                Cell(mod), _model_cell(m), Cell(names),
                _mean_field(analysis, m, benches, "clean_error", accuracy=True),
                _mean_field(analysis, m, benches, "corrupted_error", accuracy=True),
                robust, _coverage(analysis, m, benches),
            ))
    return Table(
        "modality", "Per modality",
        "Datasets grouped by imaging modality; each value is the mean over the modality's "
        "datasets of the per-dataset value" + (f"; mCE with {base} = 100." if base else "."),
        ("Modality", "Model", "Datasets", f"Clean {acc}", f"Corrupted {acc}",
         "mCE" if base else "Mean corrupted error", "Coverage"),
        tuple(rows), ("", "", "", ".1%", ".1%", ".1f" if base else ".1%", ""),
    )


def _corruption_pairs(r: RunResults) -> dict[str, list[tuple[Benchmark, str]]]:
    """``row label -> [(benchmark, corruption name)]`` over every evaluated corruption.

    Benchmark corruptions come first, then held-out ones; the label says where a corruption
    is held out (not part of the mCE).
    """
    pairs: dict[str, list[tuple[Benchmark, str]]] = defaultdict(list)
    for held_out in (False, True):
        for b in r.benchmarks:
            for c in b.held_out if held_out else b.corruptions:
                pairs[r.corruption_key(b, c)].append((b, c))
    labelled = {}
    for key, where in pairs.items():
        held = [b.label for b, c in where if c in b.held_out]
        suffix = ("" if not held else " (held out)" if len(held) == len(where)
                  else f" (held out on {', '.join(held)})")
        labelled[key + suffix] = where
    return labelled


def _corruption_cells(analysis: Analysis, kind: str) -> dict[str, dict[str, Cell]]:
    """``corruption key -> model -> Cell`` of CE (kind 'ce'), mean 'error' or 'accuracy'."""
    r = analysis.results
    out: dict[str, dict[str, Cell]] = {}
    for key, pairs in _corruption_pairs(r).items():
        out[key] = {}
        for m in analysis.models:
            parts: Parts = []
            for b, c in pairs:
                why = _missing(r, m, b, c)
                if kind == "ce":
                    ce = analysis.summary(m, b).ce or {}
                    value = ce.get(c)
                    if value is None and why is None:
                        base_why = _missing(r, analysis.baseline or m, b, c)
                        why = (f"baseline: {base_why}" if base_why else
                               "CE undefined: the baseline's error is zero or near zero")
                else:
                    value = None if why else _mean(
                        1.0 - e.error if kind == "accuracy" else e.error
                        for s in b.severities if (e := r.cell(m, b, c, s)) is not None)
                parts.append((b.label, value, why))
            out[key][m] = _mean_cell(parts)
    return out


def corruption_matrix(analysis: Analysis) -> tuple[str, dict[str, dict[str, float | None]]]:
    """The heatmap's data: a label and ``corruption -> model -> value``.

    The value is CE x 100 with a baseline, else the mean error over severities.
    """
    kind = "ce" if analysis.baseline else "error"
    label = (f"CE ({analysis.baseline} = 100)" if analysis.baseline
             else f"mean error (1 − {analysis.results.accuracy_name})")
    matrix = {
        key: {m: None if c.value is None else float(c.value) for m, c in row.items()}
        for key, row in _corruption_cells(analysis, kind).items()
    }
    return label, matrix


def _per_corruption(analysis: Analysis, kind: str) -> Table:
    r = analysis.results
    pairs = _corruption_pairs(r)
    rows = [(Cell(key), Cell(len(pairs[key])), *(row[m] for m in analysis.models))
            for key, row in _corruption_cells(analysis, kind).items()]
    held = any(b.held_out for b in r.benchmarks)
    then = "per dataset, then the mean over the datasets with that corruption."
    if kind == "ce":
        title = f"Corruption Error per corruption ({analysis.baseline} = 100)"
        desc = ("CE = the sum over severities of the model's error divided by the same sum for "
                f"the baseline, x 100, {then}")
        fmt = ".1f"
    elif kind == "error":
        title = "Mean error per corruption"
        desc = f"Mean over severities of the error ({ERROR_DEFINITIONS[r.error_type]}), {then}"
        fmt = ".1%"
    else:
        title = f"Mean {r.accuracy_name} per corruption"
        desc = f"Mean over severities of the {r.accuracy_name}, {then}"
        fmt = ".1%"
    notes = ("Held-out corruptions are shown but are not part of the mCE.",) if held else ()
    models = tuple(analysis.models)
    return Table(f"corruption_{kind}", title, desc, ("Corruption", "Datasets", *models),
                 tuple(rows), ("", "d", *(fmt for _ in models)), notes)


def _severity_parts(analysis: Analysis, model: str, severity: int) -> Parts:
    r = analysis.results
    parts: Parts = []
    for b in r.benchmarks:
        if severity == 0:
            value = r.accuracy(model, b, CLEAN, 0)
            parts.append((b.label, value, None if value is not None else "no clean cell"))
        elif severity not in b.severities:
            parts.append((b.label, None, f"severity {severity} not evaluated"))
        else:
            value = _mean(r.accuracy(model, b, c, severity) for c in b.corruptions)
            parts.append((b.label, value, None if value is not None else "no cells"))
    return parts


def _severity(analysis: Analysis) -> Table:
    r = analysis.results
    severities = sorted({s for b in r.benchmarks for s in b.severities})
    rows = [
        (_model_cell(m), *(_mean_cell(_severity_parts(analysis, m, s)) for s in [0, *severities]),
         _coverage(analysis, m, r.benchmarks, ratios=False))
        for m in analysis.models
    ]
    return Table(
        "severity", f"{r.accuracy_name.capitalize()} per severity",
        f"Mean {r.accuracy_name} over the benchmark corruptions at each severity, per dataset, "
        "then the mean over datasets (severity 0 = clean).",
        ("Model", "Clean", *(f"Severity {s}" for s in severities), "Coverage"),
        tuple(rows), ("", ".1%", *(".1%" for _ in severities), ""),
    )


def build_tables(analysis: Analysis) -> dict[str, Table]:
    """All report tables, keyed: headline, modality, corruption_ce (corruption_error without
    a baseline), corruption_accuracy and severity."""
    kind = "ce" if analysis.baseline else "error"
    return {
        "headline": _headline(analysis),
        "modality": _modality(analysis),
        f"corruption_{kind}": _per_corruption(analysis, kind),
        "corruption_accuracy": _per_corruption(analysis, "accuracy"),
        "severity": _severity(analysis),
    }


def accuracy_curves(analysis: Analysis
                    ) -> tuple[list[int], dict[str, dict[str, list[float | None]]]]:
    """Severities (0 = clean first) and ``corruption -> model -> accuracy per severity``.

    Each point is the mean over the datasets holding that corruption; None where no data.
    """
    r = analysis.results
    severities = [0, *sorted({s for b in r.benchmarks for s in b.severities})]
    curves = {
        key: {
            m: [_mean(r.accuracy(m, b, CLEAN if s == 0 else c, s) for b, c in where)
                for s in severities]
            for m in analysis.models
        }
        for key, where in _corruption_pairs(r).items()
    }
    return severities, curves
