"""Summaries of a run's results: each model on each benchmark, against an optional baseline.

Per (model, benchmark): clean and corrupted error, AUC and ECE, the benchmark corruptions the
model lacks and why, and with a baseline model in the run the clean error ratio, mCE, relative
mCE and the CE of every evaluated corruption (:mod:`medrobust.evaluation.robustness`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..evaluation.metrics import UndefinedMetricWarning
from ..evaluation.robustness import (
    CLEAN,
    MIN_DENOMINATOR,
    ErrorGrid,
    IncompleteGridWarning,
    RobustnessSummary,
    clean_error_ratio,
    mean_corruption_error,
    relative_mean_corruption_error,
)
from .results import Benchmark, RunResults, mean_defined

__all__ = ["Analysis", "DatasetSummary", "analyse", "missing_reason"]


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


def missing_reason(results: RunResults, model: str, bench: Benchmark, corruption: str
                   ) -> str | None:
    """Why a model lacks a corruption on a benchmark (some or all severities), None if it has all."""
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


def _summarise(results: RunResults, model: str, bench: Benchmark, baseline: str | None,
               min_degradation_images: float) -> DatasetSummary:
    clean = results.cell(model, bench, CLEAN, 0)
    missing = {c: why for c in bench.corruptions
               if (why := missing_reason(results, model, bench, c)) is not None}
    full = [c for c in bench.corruptions if c not in missing]
    corrupted = [cell for c in full for s in bench.severities
                 if (cell := results.cell(model, bench, c, s)) is not None]
    base = {
        "clean_error": None if clean is None else clean.error,
        "clean_auc": None if clean is None else clean.auc,
        "clean_ece": None if clean is None else clean.ece,
        # severity mean per corruption, then the mean over corruptions (equal weights)
        "corrupted_error": mean_defined(
            mean_defined(results.cell(model, bench, c, s).error for s in bench.severities)  # type: ignore[union-attr]
            for c in full),
        "corrupted_auc": mean_defined(c.auc for c in corrupted),
        "corrupted_ece": mean_defined(c.ece for c in corrupted),
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
        base_clean = results.cell(baseline, bench, CLEAN, 0)
        floor = min_degradation_images / base_clean.n if base_clean and base_clean.n else 0.0
        rel = _quiet(relative_mean_corruption_error, mine, theirs, list(bench.corruptions),
                     min_denominator=max(MIN_DENOMINATOR, floor), **kwargs)
    return DatasetSummary(**base, clean_ratio=ratio, clean_ratio_reason=ratio_why, mce=mce,
                          rel_mce=rel, ce=ce)


def analyse(results: RunResults, baseline: str | None = "clip-vit-b16", *,
            min_degradation_images: float = 5.0) -> Analysis:
    """Summaries of every model on every benchmark; ratios only if the baseline is in the run.

    A corruption whose baseline degradation (mean over severities minus clean error) is below
    ``min_degradation_images`` images' worth of the test set is left out of the relative mCE.
    """
    resolved = _resolve_baseline(results, baseline)
    per = {
        (m, b.label): _summarise(results, m, b, resolved, min_degradation_images)
        for m in results.models for b in results.benchmarks
    }
    return Analysis(results, resolved, baseline, per)
