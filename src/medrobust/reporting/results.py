"""The results of an evaluation run, assembled from its results-store rows.

:func:`collect_results` keeps one split, averages repeats of a cell (other seeds or
configurations), names a model stored under several weights hashes once per hash, and groups
the cells by benchmark (one dataset under one suite) with the corruptions an mCE over that
dataset should cover.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..evaluation.robustness import check_error_type
from ..severity import CLEAN

__all__ = [
    "ACCURACY_NAMES",
    "Benchmark",
    "CellResult",
    "RunResults",
    "collect_results",
    "dataset_modality",
    "mean_defined",
]

ACCURACY_NAMES = {"error": "accuracy", "balanced_error": "balanced accuracy"}

Row = Mapping[str, Any]
"""One results-store row (``ResultsStore.rows()``)."""
GroupKey = tuple[str, str, str, str, int]
"""(model label, dataset, suite ('*' for clean cells), corruption, severity)."""


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
    predictions: tuple[str, ...] = ()
    """The stored predictions of the cell's repeats (paths relative to the run folder)."""


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
        s = get_suite(suite, dataset)
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


def mean_defined(values: Iterable[float | None]) -> float | None:
    """Mean of the values that are defined (not None, not NaN); None if there are none."""
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


def _model_labels(used: Sequence[Row]) -> Callable[[Row], str]:
    """A row's model label: its name, plus ``[hash8]`` when the name has several weights."""
    hashes: dict[str, set[str]] = defaultdict(set)
    for r in used:
        hashes[r["model"]].add(str(r["weights_hash"]))

    def label(r: Row) -> str:
        name = str(r["model"])
        return name if len(hashes[name]) == 1 else f"{name} [{str(r['weights_hash'])[:8]}]"

    return label


def _dataset_suites(used: Sequence[Row]) -> dict[str, dict[str, None]]:
    """dataset -> suites of its corrupted cells (in order seen); a clean-only dataset keeps its own."""
    suites: dict[str, dict[str, None]] = {}
    for r in sorted(used, key=lambda r: r["corruption"] == CLEAN):
        seen = suites.setdefault(r["dataset"], {})
        if r["corruption"] != CLEAN or not seen:
            seen.setdefault(str(r["suite"]))
    return suites


def _group_rows(used: Sequence[Row], label: Callable[[Row], str], error_type: str
                ) -> tuple[dict[GroupKey, list[Row]], int]:
    """Rows grouped by cell (clean cells under suite '*'), and how many lack the error value."""
    groups: dict[GroupKey, list[Row]] = defaultdict(list)
    skipped = 0
    for r in used:
        if _row_error(r, error_type) is None:
            skipped += 1
            continue
        suite = str(r["suite"]) if r["corruption"] != CLEAN else "*"
        groups[(label(r), r["dataset"], suite, r["corruption"], int(r["severity"]))].append(r)
    return groups, skipped


def _cell_result(members: list[Row], error_type: str) -> CellResult:
    """The mean metrics of a cell's repeats."""
    return CellResult(
        error=mean_defined(_row_error(m, error_type) for m in members),  # type: ignore[arg-type]
        auc=mean_defined(m.get("auc") for m in members),
        ece=mean_defined(m.get("ece") for m in members),
        n=max(int(m["n"]) for m in members),
        repeats=len(members),
        predictions=tuple(str(m["predictions"]) for m in members if m.get("predictions")),
    )


def _benchmark(dataset: str, suite: str, label: str, groups: Mapping[GroupKey, list[Row]],
               modalities: Mapping[str, str] | None,
               expected_corruptions: Mapping[str, Sequence[str]] | None) -> Benchmark:
    """One dataset under one suite: its expected and held-out corruptions and severities."""
    keys = [k for k in groups if k[1] == dataset and k[2] == suite and k[3] != CLEAN]
    observed = list(dict.fromkeys(k[3] for k in keys))
    listed, source = _expected_corruptions(dataset, suite, observed, expected_corruptions)
    return Benchmark(
        label=label, dataset=dataset, suite=suite,
        modality=dataset_modality(dataset, modalities),
        corruptions=tuple(listed),
        held_out=tuple(c for c in observed if c not in listed),
        severities=tuple(sorted({k[4] for k in keys})), source=source,
    )


def _benchmark_cells(bench: Benchmark, groups: Mapping[GroupKey, list[Row]], error_type: str
                     ) -> dict[tuple[str, str, str, int], CellResult]:
    """The cells of a benchmark; a clean cell prefers the repeats run under its own suite."""
    cells = {}
    for (model, d, s, corruption, severity), members in groups.items():
        if d == bench.dataset and s == bench.suite:
            cells[(model, bench.label, corruption, severity)] = _cell_result(members, error_type)
    for model in {k[0] for k in groups}:
        clean = groups.get((model, bench.dataset, "*", CLEAN, 0))
        if clean:
            own = [m for m in clean if str(m["suite"]) == bench.suite] or clean
            cells[(model, bench.label, CLEAN, 0)] = _cell_result(own, error_type)
    return cells


def _configs(used: Sequence[Row], label: Callable[[Row], str]) -> tuple[dict[str, Any], ...]:
    """The distinct cell configurations, in the order first seen."""
    configs = {}
    for r in used:
        record = {"model": label(r), "dataset": str(r["dataset"]), "suite": str(r["suite"]),
                  "corruption": str(r["corruption"]), "severity": int(r["severity"]),
                  "seed": int(r["seed"]),
                  "config": {"weights_hash": str(r["weights_hash"]), **_config(r.get("config"))}}
        configs.setdefault(json.dumps(record, sort_keys=True, default=str), record)
    return tuple(configs.values())


def collect_results(
    rows: Sequence[Row],
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
    check_error_type(error_type)
    rows = list(rows)
    if not rows:
        raise ValueError("no finished cells: the run database holds no results yet")
    chosen, notes = _select_split(rows, split)
    used = [r for r in rows if str(r["split"]) == chosen]
    label = _model_labels(used)
    groups, skipped = _group_rows(used, label, error_type)
    if skipped:
        notes.append(f"{skipped} cell(s) without a {error_type!r} value were left out.")

    benchmarks: list[Benchmark] = []
    cells: dict[tuple[str, str, str, int], CellResult] = {}
    for dataset, suites in sorted(_dataset_suites(used).items()):
        for suite in suites:
            name = dataset if len(suites) == 1 else f"{dataset} ({suite})"
            bench = _benchmark(dataset, suite, name, groups, modalities, expected_corruptions)
            benchmarks.append(bench)
            cells.update(_benchmark_cells(bench, groups, error_type))

    repeated = sorted({(k[0], k[1]) for k, v in cells.items() if v.repeats > 1})
    if repeated:
        seeds = sorted({int(r["seed"]) for r in used})
        notes.append(
            f"Some cells were evaluated more than once (seeds {seeds} or several "
            f"configurations); their metrics are averaged ({len(repeated)} model/dataset pairs)."
        )
    return RunResults(
        error_type=error_type,
        split=chosen,
        models=tuple(sorted({k[0] for k in groups} | {label(r) for r in used})),
        benchmarks=tuple(benchmarks),
        cells=cells,
        weights={label(r): str(r["weights_hash"]) for r in used},
        configs=_configs(used, label),
        n_rows=len(rows),
        n_used=len(used),
        seconds=math.fsum(float(r.get("seconds") or 0.0) for r in used),
        notes=tuple(notes),
    )
