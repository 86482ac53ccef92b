"""Confidence intervals and paired differences of a report's summaries, and ``summary.json``.

Every summary of the headline (Clean Error, mean corrupted error, mCE, relative mCE, BE, rBE,
accuracies and AUCs) is recomputed from the run's stored predictions for each resample of a
class-stratified bootstrap over each dataset's test images
(:mod:`medrobust.evaluation.uncertainty`); the same resamples serve every corruption, severity
and model of a dataset, so ratios and differences to the baseline model are paired. A
difference whose 95 % interval contains 0 is marked "not significant" rather than ranked.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluation import baselines
from ..evaluation.metrics import cell_diagnostics
from ..evaluation.robustness import CLEAN, MIN_DENOMINATOR
from ..evaluation.uncertainty import (
    DEFAULT_RESAMPLES,
    CellReplicates,
    Estimate,
    Resamples,
    cell_replicates,
    dataset_seed,
    estimate,
    estimates,
    original_only,
    robustness_replicates,
    stratified_resamples,
)
from .render import Cell, Table
from .results import Benchmark, RunResults
from .tables import ERROR_DEFINITIONS

__all__ = [
    "BootstrapSettings",
    "ModelSummary",
    "Uncertainty",
    "bootstrap_results",
    "flags_table",
    "headline_table",
    "published_table",
    "seed_groups",
    "seeds_table",
    "significance",
    "summary_json",
    "templates_table",
]

PUBLISHED_BASELINE_SUITE = "medmnist-c"
"""BE and rBE divide by MedMNIST-C's published AlexNet errors: only for the published images."""


@dataclass(frozen=True)
class BootstrapSettings:
    """How a report estimates test-set uncertainty.

    ``n_resamples`` (B) resamples per dataset (0: no intervals, point estimates only); ``seed``
    seeds them; a corruption whose baseline degradation is below ``min_degradation_images``
    images' worth (that many / the number of test images) is left out of the relative mCE.
    """

    n_resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    min_degradation_images: float = 5.0

    def __post_init__(self) -> None:
        if isinstance(self.n_resamples, bool) or not isinstance(self.n_resamples, int) \
                or self.n_resamples < 0:
            raise ValueError(f"the number of bootstrap resamples must be an integer >= 0 "
                             f"(0 turns it off); got {self.n_resamples!r}")
        if not (isinstance(self.min_degradation_images, int | float)
                and self.min_degradation_images >= 0):
            raise ValueError("min_degradation_images must be a number >= 0; got "
                             f"{self.min_degradation_images!r}")


@dataclass
class _Parts:
    """Replicates of one model's summaries on each benchmark, to be averaged over benchmarks."""

    values: dict[str, list[np.ndarray]] = field(default_factory=dict)
    left_out: dict[str, dict[str, str]] = field(default_factory=dict)
    covered: dict[str, int] = field(default_factory=dict)
    expected: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, value: np.ndarray | None) -> None:
        if value is not None and math.isfinite(float(np.ravel(value)[0])):
            self.values.setdefault(name, []).append(np.asarray(value, dtype=np.float64))

    def coverage(self, name: str, label: str, used: Sequence[str], left: Mapping[str, str],
                 expected: int) -> None:
        self.covered[name] = self.covered.get(name, 0) + len(used)
        self.expected[name] = self.expected.get(name, 0) + expected
        for c, why in left.items():
            self.left_out.setdefault(name, {})[f"{label}: {c}"] = why

    def mean(self, name: str) -> np.ndarray | None:
        parts = self.values.get(name)
        return None if not parts else np.mean(parts, axis=0)


@dataclass(frozen=True)
class ModelSummary:
    """One model's headline numbers with 95 % intervals (errors and accuracies in percent)."""

    estimates: dict[str, Estimate]
    differences: dict[str, Estimate]
    coverage: dict[str, dict[str, Any]]
    n_images: int
    replicates: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    """The bootstrap replicates behind ``estimates`` (entry 0: the estimate itself)."""


@dataclass(frozen=True)
class Uncertainty:
    """The bootstrap of a run's summaries: per model, per cell, and how it was made."""

    settings: BootstrapSettings
    error_type: str
    baseline: str | None
    models: dict[str, ModelSummary]
    cells: list[dict[str, Any]]
    notes: list[str]
    image_sources: dict[str, str]
    class_counts: dict[str, list[int]]
    """Test images per class of each dataset (benchmark label)."""
    seconds: float

    def chance(self, dataset: str) -> float | None:
        """The accuracy of a constant guess: 1 / K for balanced accuracy (K classes present),
        the majority class's share for plain accuracy."""
        counts = [c for c in self.class_counts.get(dataset, ()) if c]
        if not counts:
            return None
        if self.error_type == "balanced_error":
            return 1.0 / len(counts)
        return max(counts) / sum(counts)


def _load(run_dir: Path, path: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(run_dir / path, allow_pickle=False) as f:
        return f["probabilities"], f["labels"]


def _resamples(labels: np.ndarray, settings: BootstrapSettings, dataset: str) -> Resamples:
    if settings.n_resamples == 0:
        return original_only(labels, settings.seed)
    return stratified_resamples(labels, settings.n_resamples,
                                dataset_seed(settings.seed, dataset))


def _bench_replicates(results: RunResults, bench: Benchmark, run_dir: Path,
                      settings: BootstrapSettings, notes: list[str],
                      diagnostics: dict[tuple[str, str, int], dict[str, Any]]
                      ) -> tuple[dict[tuple[str, str, int], CellReplicates], np.ndarray] | None:
    """Replicates of every cell of one benchmark; None when its cells do not share images.

    ``diagnostics`` receives each loaded cell's confusion matrix, recalls and flags.
    """
    keys = [k for k in results.cells if k[1] == bench.label]
    loaded = {}
    for k in keys:
        cell = results.cells[k]
        if not cell.predictions:
            notes.append(f"{bench.label}: no stored predictions; no intervals")
            return None
        loaded[(k[0], k[2], k[3])] = _load(run_dir, cell.predictions[0])
        if cell.repeats > 1:
            notes.append(f"{bench.label}: repeated cells use their first repeat's predictions "
                         "for the intervals")
    if not loaded:
        return None
    for key, (probs, y) in loaded.items():
        diagnostics[key] = cell_diagnostics(probs, y)
    labels = next(iter(loaded.values()))[1]
    if any(y.shape != labels.shape or not np.array_equal(y, labels) for _, y in loaded.values()):
        notes.append(f"{bench.label}: its cells were scored on different test images (other "
                     "limits or orders), so they cannot be resampled together; no intervals")
        return None
    res = _resamples(labels, settings, bench.dataset)
    names = list(loaded)
    reps = cell_replicates(res, [loaded[k][0] for k in names])
    return dict(zip(names, reps, strict=True)), labels


def _grid(reps: Mapping[tuple[str, str, int], CellReplicates], model: str, bench: Benchmark,
          error_type: str) -> dict[str, dict[int, np.ndarray]]:
    """Corruptions with every severity: ``{corruption: {severity: replicates}}``."""
    out = {}
    for c in bench.corruptions + bench.held_out:
        levels = {s: reps[(model, c, s)].of(error_type) for s in bench.severities
                  if (model, c, s) in reps}
        if levels and len(levels) == len(bench.severities):
            out[c] = levels
    return out


def _absolute(parts: _Parts, reps: Mapping[tuple[str, str, int], CellReplicates], model: str,
              bench: Benchmark, error_type: str) -> dict[str, dict[int, np.ndarray]]:
    grid = _grid(reps, model, bench, error_type)
    full = [c for c in bench.corruptions if c in grid]
    clean = reps.get((model, CLEAN, 0))
    if clean is not None:
        parts.add("clean_error", 100 * clean.of(error_type))
        parts.add("clean_auc", clean.auc)
    if full:
        corrupted = np.mean([np.mean(list(grid[c].values()), axis=0) for c in full], axis=0)
        parts.add("mean_corrupted_error", 100 * corrupted)
        aucs = [reps[(model, c, s)].auc for c in full for s in bench.severities]
        if all(a is not None for a in aucs):
            parts.add("corrupted_auc", np.mean(aucs, axis=0))
    return grid


def _published_ratios(parts: _Parts, reps: Mapping[tuple[str, str, int], CellReplicates],
                      model: str, bench: Benchmark) -> None:
    """MedMNIST-C's BE and rBE against the published AlexNet errors (balanced error)."""
    if bench.suite != PUBLISHED_BASELINE_SUITE or bench.dataset not in \
            baselines.medmnist_c_datasets():
        return
    alex_clean, alex = baselines.load_medmnist_c_alexnet(bench.dataset)
    grid = _grid(reps, model, bench, "balanced_error")
    clean = reps.get((model, CLEAN, 0))
    be = robustness_replicates(grid, alex, bench.corruptions, min_denominator=MIN_DENOMINATOR,
                               scale=1.0)
    parts.add("be", be.value)
    parts.coverage("be", bench.label, be.used, be.left_out, be.expected)
    if clean is not None:
        rbe = robustness_replicates(grid, alex, bench.corruptions,
                                    model_clean=clean.balanced_error, baseline_clean=alex_clean,
                                    min_denominator=MIN_DENOMINATOR, scale=1.0)
        parts.add("rbe", rbe.value)
        parts.coverage("rbe", bench.label, rbe.used, rbe.left_out, rbe.expected)


def _ratios(parts: _Parts, diffs: _Parts, reps: Mapping[tuple[str, str, int], CellReplicates],
            model: str, baseline: str, bench: Benchmark, error_type: str, min_rel: float) -> None:
    """Clean Error ratio, mCE and relative mCE against the baseline model, and differences."""
    mine = _grid(reps, model, bench, error_type)
    theirs = _grid(reps, baseline, bench, error_type)
    clean_m, clean_b = reps.get((model, CLEAN, 0)), reps.get((baseline, CLEAN, 0))
    if clean_m is not None and clean_b is not None:
        e_m, e_b = clean_m.of(error_type), clean_b.of(error_type)
        diffs.add("clean_error", 100 * (e_m - e_b))
        if e_b[0] >= MIN_DENOMINATOR:
            with np.errstate(divide="ignore", invalid="ignore"):
                parts.add("relative_clean_error", 100 * e_m / e_b)
    if not bench.corruptions:
        return
    mce = robustness_replicates(mine, theirs, bench.corruptions, min_denominator=MIN_DENOMINATOR)
    parts.add("mce", mce.value)
    parts.coverage("mce", bench.label, mce.used, mce.left_out, mce.expected)
    if mce.value is not None:
        diffs.add("mce", mce.value - 100.0)
    both = [c for c in bench.corruptions if c in mine and c in theirs]
    if both:
        gap = np.mean([np.mean(list(mine[c].values()), axis=0)
                       - np.mean(list(theirs[c].values()), axis=0) for c in both], axis=0)
        diffs.add("mean_corrupted_error", 100 * gap)
    if clean_m is not None and clean_b is not None:
        rel = robustness_replicates(mine, theirs, bench.corruptions,
                                    model_clean=clean_m.of(error_type),
                                    baseline_clean=clean_b.of(error_type),
                                    min_denominator=min_rel)
        parts.add("relative_mce", rel.value)
        parts.coverage("relative_mce", bench.label, rel.used, rel.left_out, rel.expected)


def _cell_records(reps: Mapping[tuple[str, str, int], CellReplicates], bench: Benchmark,
                  n: int, diagnostics: Mapping[tuple[str, str, int], dict[str, Any]]
                  ) -> list[dict[str, Any]]:
    """Per-cell error, accuracy, balanced error (percent) and AUC with intervals, plus the
    cell's confusion matrix, per-class recall and flags."""
    keys = sorted(reps)
    nan = np.full(reps[keys[0]].error.shape, np.nan)
    rows = {
        "error": [100 * reps[k].error for k in keys],
        "accuracy": [100 * (1 - reps[k].error) for k in keys],
        "balanced_error": [100 * reps[k].balanced_error for k in keys],
        "auc": [nan if reps[k].auc is None else reps[k].auc for k in keys],
    }
    columns = {name: estimates(np.stack(values)) for name, values in rows.items()}
    return [{"model": model, "dataset": bench.label, "corruption": corruption,
             "severity": severity, "n": n,
             **{name: columns[name][i].to_json() for name in rows},
             **diagnostics[(model, corruption, severity)]}
            for i, (model, corruption, severity) in enumerate(keys)]


def _image_source(results: RunResults, dataset: str) -> str:
    """Where a dataset's images came from: native resolution, or 28 px upsampled."""
    sources = {str(c["config"].get("dataset_source", "")) for c in results.configs
               if c["dataset"] == dataset}
    resize = {c["config"].get("resize") for c in results.configs if c["dataset"] == dataset}
    native = any("_224" in s for s in sources)
    if native:
        return "native 224 px (MedMNIST+), as the published baselines were measured"
    upsampled = "upsampled to 224 px" if any(resize - {None}) else "at 28 px"
    return (f"28 px MedMNIST {upsampled}: not comparable with the published baselines, "
            "which were measured on native 224 px images")


_NAMES = ("clean_error", "relative_clean_error", "mean_corrupted_error", "mce", "relative_mce",
          "clean_auc", "corrupted_auc", "be", "rbe")


def bootstrap_results(results: RunResults, run_dir: str | Path, baseline: str | None,
                      settings: BootstrapSettings | None = None) -> Uncertainty:
    """Intervals of every headline summary and paired differences to ``baseline``."""
    settings = settings or BootstrapSettings()
    started = time.perf_counter()
    run_dir = Path(run_dir)
    parts = {m: _Parts() for m in results.models}
    diffs = {m: _Parts() for m in results.models}
    n_images = dict.fromkeys(results.models, 0)
    cells: list[dict[str, Any]] = []
    notes: list[str] = []
    sources = {}
    class_counts: dict[str, list[int]] = {}
    for bench in results.benchmarks:
        diagnostics: dict[tuple[str, str, int], dict[str, Any]] = {}
        got = _bench_replicates(results, bench, run_dir, settings, notes, diagnostics)
        if got is None:
            continue
        reps, labels = got
        n = int(labels.size)
        class_counts[bench.label] = np.bincount(labels, minlength=1).tolist()
        cells += _cell_records(reps, bench, n, diagnostics)
        sources[bench.label] = _image_source(results, bench.dataset)
        min_rel = max(MIN_DENOMINATOR, settings.min_degradation_images / n)
        for m in results.models:
            if (m, CLEAN, 0) in reps:
                n_images[m] += n
            _absolute(parts[m], reps, m, bench, results.error_type)
            _published_ratios(parts[m], reps, m, bench)
            if baseline is not None and baseline in results.models:
                _ratios(parts[m], diffs[m], reps, m, baseline, bench, results.error_type,
                        min_rel)
    models = {}
    for m in results.models:
        p = parts[m]
        est = {name: estimate(p.mean(name)) for name in _NAMES}
        est["clean_accuracy"] = _complement(est["clean_error"])
        est["corrupted_accuracy"] = _complement(est["mean_corrupted_error"])
        coverage = {name: {"cells": p.covered[name], "of": p.expected[name],
                           "left_out": p.left_out.get(name, {})} for name in p.covered}
        models[m] = ModelSummary(
            estimates=est,
            differences={name: estimate(diffs[m].mean(name))
                         for name in ("clean_error", "mean_corrupted_error", "mce")},
            coverage=coverage, n_images=n_images[m],
            replicates={name: r for name in _NAMES if (r := p.mean(name)) is not None})
    return Uncertainty(settings, results.error_type, baseline, models, cells,
                       list(dict.fromkeys(notes)), sources, class_counts,
                       time.perf_counter() - started)


def _complement(e: Estimate) -> Estimate:
    """An accuracy in percent from an error in percent."""
    if e.value is None:
        return e
    ci = None if e.ci95 is None else (100 - e.ci95[1], 100 - e.ci95[0])
    return Estimate(100 - e.value, ci)


# ----------------------------------------------------------------------------- outputs


def significance(diff: Estimate) -> str:
    """'not significant' when the interval contains 0, else lower / higher than the baseline."""
    if diff.value is None:
        return "n/a"
    if diff.ci95 is None:
        return "no interval"
    if not diff.excludes(0.0):
        return "not significant"
    return "lower (better)" if diff.value < 0 else "higher (worse)"


def summary_json(unc: Uncertainty, caveats: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """The ``summary.json`` document: per model, per difference to the baseline, per cell."""
    models = {}
    for m, s in unc.models.items():
        entry: dict[str, Any] = {name: e.to_json() for name, e in s.estimates.items()}
        for name, cov in s.coverage.items():
            entry[name]["coverage"] = cov
        mce_cov = s.coverage.get("mce")
        entry["coverage"] = ({"cells": mce_cov["cells"], "of": mce_cov["of"]} if mce_cov
                             else None)
        entry["n_images"] = s.n_images
        entry["caveats"] = list(caveats.get(m, ()))
        models[m] = entry
    differences = {
        m: {name: {**e.to_json(), "significance": significance(e)}
            for name, e in s.differences.items()}
        for m, s in unc.models.items() if unc.baseline is not None and m != unc.baseline
    }
    return {
        "baseline": unc.baseline,
        "error": unc.error_type,
        "error_definition": ERROR_DEFINITIONS[unc.error_type],
        "units": "errors, accuracies and differences in percent (points); mce, relative_mce "
                 "and relative_clean_error with the baseline = 100; be and rbe as ratios "
                 "(AlexNet = 1); auc in [0, 1]",
        "bootstrap": {
            "resamples": unc.settings.n_resamples, "seed": unc.settings.seed, "level": 0.95,
            "method": "percentile; test images resampled per dataset, stratified by class; the "
                      "same resamples for every corruption, severity and model (paired)",
            "min_degradation_images": unc.settings.min_degradation_images,
            "seconds": round(unc.seconds, 3),
        },
        "image_sources": unc.image_sources,
        "notes": unc.notes,
        "models": models,
        "differences": differences,
        "cells": unc.cells,
    }


def _ci_text(e: Estimate, fmt: str) -> str | None:
    if e.value is None:
        return None
    if e.ci95 is None:
        return format(e.value, fmt)
    return f"{e.value:{fmt}} [{e.ci95[0]:{fmt}}, {e.ci95[1]:{fmt}}]"


def _cov_text(cov: Mapping[str, Any] | None) -> Cell:
    if cov is None:
        return Cell(None)
    text = f"{cov['cells']}/{cov['of']}" + (", incomplete" if cov["cells"] < cov["of"] else "")
    left = "; ".join(f"{k} ({why})" for k, why in cov["left_out"].items())
    return Cell(text, f"left out: {left}" if left else None)


def headline_table(unc: Uncertainty, model_notes: Mapping[str, str | None] | None = None
                   ) -> Table:
    """The headline with 95 % intervals and, per model, whether it differs from the baseline."""
    notes = model_notes or {}
    base = unc.baseline
    order = ([base] if base in unc.models else []) + sorted(m for m in unc.models if m != base)
    rows = []
    for m in order:
        s = unc.models[m]
        e, d = s.estimates, s.differences
        row = [Cell(m, notes.get(m))]
        if base is not None:
            row += [Cell(_ci_text(e["relative_clean_error"], ".1f")),
                    Cell(_ci_text(e["mce"], ".1f")),
                    Cell(_ci_text(e["relative_mce"], ".1f")),
                    Cell("baseline" if m == base else _ci_text(d["clean_error"], "+.1f")),
                    Cell("baseline" if m == base else _ci_text(d["mce"], "+.1f")),
                    Cell("baseline" if m == base else
                         f"clean: {significance(d['clean_error'])}; "
                         f"mCE: {significance(d['mce'])}")]
        row += [Cell(_ci_text(e["clean_error"], ".1f")),
                Cell(_ci_text(e["mean_corrupted_error"], ".1f")),
                Cell(_ci_text(e["clean_auc"], ".3f")),
                _cov_text(s.coverage.get("mce")), _cov_text(s.coverage.get("relative_mce"))]
        rows.append(tuple(row))
    what = ERROR_DEFINITIONS[unc.error_type]
    b = unc.settings.n_resamples
    how = (f"{what}. 95 % percentile intervals from {b} bootstrap resamples of each dataset's "
           "test images (stratified by class, the same resamples for every corruption, severity "
           "and model, seed " f"{unc.settings.seed}); per dataset, then the mean over datasets. "
           if b else f"{what}. The bootstrap is off (--bootstrap 0): no intervals. ")
    if base is not None:
        how += (f"Δ = model − {base}, paired on the same resampled images (clean error in "
                "percentage points, mCE in points of the baseline's 100); a Δ whose interval "
                "contains 0 is not significant and is not a ranking.")
        head = ("Model", "Clean Error", "mCE", "Relative mCE", "Δ clean error", "Δ mCE",
                "Difference to baseline")
        title = f"Clean Error and mCE with 95 % intervals, {base} = 100"
    else:
        head = ("Model",)
        title = "Errors with 95 % intervals"
    head += ("Clean error %", "Mean corrupted error %", "Clean AUC", "mCE coverage",
             "Rel. mCE coverage")
    return Table("headline_ci", title, how, head, tuple(rows), ("",) + ("x",) * (len(head) - 1))


def published_table(unc: Uncertainty) -> Table | None:
    """MedMNIST-C's BE and rBE against the published AlexNet baselines, with the image source."""
    rows = [(Cell(m), Cell(_ci_text(s.estimates["be"], ".3f")),
             Cell(_ci_text(s.estimates["rbe"], ".3f")), _cov_text(s.coverage.get("be")),
             _cov_text(s.coverage.get("rbe")))
            for m, s in sorted(unc.models.items()) if s.estimates["be"].value is not None]
    if not rows:
        return None
    sources = "; ".join(f"{d}: {src}" for d, src in unc.image_sources.items())
    how = ("BE = mean over corruptions of mean_s E(c, s) / E_AlexNet(c); rBE uses E - E_clean on "
           "both sides; E = 1 - balanced accuracy; AlexNet = 1, from MedMNIST-C's published "
           f"table; only cells of the published suite {PUBLISHED_BASELINE_SUITE!r} "
           f"(medmnist-c-fixed images are not the published ones). Image source: {sources}.")
    return Table("published", "MedMNIST-C BE and rBE against the published AlexNet", how,
                 ("Model", "BE", "rBE", "BE coverage", "rBE coverage"), tuple(rows),
                 ("", "x", "x", "x", "x"))


def flags_table(unc: Uncertainty) -> Table | None:
    """Cells to read with care: small n, small classes, degenerate predictions, per model."""
    counts: dict[tuple[str, str, str], int] = {}
    example: dict[tuple[str, str, str], str] = {}
    for cell in unc.cells:
        for flag in cell["flags"]:
            kind = flag.partition(":")[0]
            key = (cell["model"], cell["dataset"], kind)
            counts[key] = counts.get(key, 0) + 1
            example.setdefault(key, f"{cell['corruption']} s{cell['severity']}: {flag}")
    if not counts:
        return None
    rows = tuple((Cell(m), Cell(d), Cell(kind), Cell(n), Cell(example[(m, d, kind)]))
                 for (m, d, kind), n in sorted(counts.items()))
    how = ("Flags from each cell's stored predictions: small n (fewer than 100 test images), "
           "small class (a class with fewer than 10 images: its recall, and balanced accuracy, "
           "are noisy) and degenerate (one predicted class for more than 95 % of the images: "
           "the model ignores the image). Every cell's confusion matrix and per-class recall "
           "are in summary.json.")
    return Table("flags", "Cells to read with care", how,
                 ("Model", "Dataset", "Flag", "Cells", "First example"), rows,
                 ("", "", "", "d", ""))


def _templates(prompts: Sequence[Sequence[str]], class_names: Sequence[str]) -> list[str]:
    """A cell's prompt templates: its prompts with the class name put back as {}."""
    out: dict[str, None] = {}
    for name, texts in zip(class_names, prompts, strict=False):
        for text in texts:
            out.setdefault(text.replace(name, "{}"))
    return list(out)


def templates_table(results: RunResults) -> tuple[Table | None, list[str]]:
    """Each model's prompt templates per dataset, and a warning when models of one dataset
    were scored with different templates (their numbers then compare prompts too)."""
    found: dict[tuple[str, str], tuple[str, ...]] = {}
    for record in results.configs:
        config = record["config"]
        if "prompts" in config and "class_names" in config:
            found.setdefault((record["model"], record["dataset"]),
                             tuple(_templates(config["prompts"], config["class_names"])))
    if not found:
        return None, []
    warnings = []
    for dataset in sorted({d for _, d in found}):
        distinct = {t for (_, d), t in found.items() if d == dataset}
        if len(distinct) > 1:
            warnings.append(f"The models on {dataset} used different prompt templates "
                            f"({len(distinct)} sets; see 'Prompt templates'): their differences "
                            "include the prompts, not only the models.")
    rows = tuple((Cell(m), Cell(d), Cell(len(t)), Cell(" | ".join(t)))
                 for (m, d), t in sorted(found.items()))
    return Table("templates", "Prompt templates", "The templates each model was scored with "
                 "('{}' = the class name), from the stored cell configurations.",
                 ("Model", "Dataset", "Templates", "Text"), rows, ("", "", "d", "")), warnings


_SEED = re.compile(r"^(?P<group>.+)-seed-(?P<seed>\d+)$")


def seed_groups(models: Sequence[str]) -> dict[str, list[str]]:
    """Models that differ only by their training seed (``...-seed-N``, from ``adapt --seeds``)."""
    groups: dict[str, list[str]] = {}
    for m in models:
        match = _SEED.match(m)
        if match:
            groups.setdefault(match["group"], []).append(m)
    return {g: sorted(ms) for g, ms in groups.items() if len(ms) > 1}


def seeds_table(unc: Uncertainty) -> Table | None:
    """Mean and spread over training seeds, beside the bootstrap interval of the seed mean."""
    groups = seed_groups(list(unc.models))
    if not groups:
        return None
    names = [("clean_error", "Clean error %"), ("mean_corrupted_error", "Mean corrupted error %")]
    if unc.baseline is not None:
        names += [("mce", "mCE")]
    rows = []
    for group, members in sorted(groups.items()):
        row = [Cell(group), Cell(len(members))]
        for name, _ in names:
            reps = [unc.models[m].replicates.get(name) for m in members]
            if any(r is None for r in reps):
                row += [Cell(None), Cell(None)]
                continue
            values = np.array([r[0] for r in reps])
            row += [Cell(f"{values.mean():.1f} ± {values.std(ddof=1):.1f} "
                         f"(min {values.min():.1f}, max {values.max():.1f})"),
                    Cell(_ci_text(estimate(np.mean(reps, axis=0)), ".1f"))]
        rows.append(tuple(row))
    head = ["Adapter (seeds grouped)", "Seeds"]
    for _, title in names:
        head += [f"{title}: mean ± sd over seeds", f"{title}: bootstrap 95 % CI of the mean"]
    how = ("Adapters trained with several seeds (adapt --seeds: a new few-shot draw and training "
           "each). The spread over seeds is training noise; the bootstrap interval is test-set "
           "noise (the same resampled images for every seed); both matter.")
    return Table("seeds", "Spread over training seeds", how, tuple(head), tuple(rows),
                 ("",) + ("x",) * (len(head) - 1))
