"""The report tables of an evaluation run, built from its :class:`~.analysis.Analysis`.

The headline follows RobustMedCLIP's table: each model's Clean Error and mCE divided by a
baseline model's (baseline = 100). Both are computed per dataset, over the benchmark
corruptions of that dataset's suite, and then averaged over datasets with equal weight. Every
summary says how many (dataset, corruption) pairs it covers and flags an incomplete grid;
undefined ratios are n/a with the reason in a footnote. The tables are plain data
(:class:`~.render.Table`), rendered to Markdown or HTML by :mod:`.render`.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence

from ..evaluation.robustness import RobustnessSummary
from ..severity import CLEAN
from .analysis import Analysis, missing_reason
from .render import Cell, Table
from .results import Benchmark, RunResults, mean_defined

__all__ = [
    "ERROR_DEFINITIONS",
    "MEDCLIP_CAVEAT",
    "accuracy_curves",
    "build_tables",
    "corruption_matrix",
    "curve_datasets",
    "is_medclip",
]

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
              ratios: bool = True, summary: str = "mce") -> Cell:
    """Covered / expected (dataset, corruption) pairs, flagged when incomplete, gaps in a note.

    With ``ratios`` (and a baseline) a pair counts only when its ratio in ``summary`` ('mce' or
    'rel_mce') is defined, as in that mean; otherwise when the model has every severity of it.
    """
    undefined_why = ("relative CE undefined: the baseline degrades by less than the minimum"
                     if summary == "rel_mce" else "CE undefined")
    against = analysis.baseline if ratios else None
    covered = expected = 0
    gaps: dict[tuple[str, str], list[str]] = defaultdict(list)  # (dataset, why) -> corruptions
    for b in benches:
        s = analysis.summary(model, b)
        base = analysis.summary(against, b) if against else None
        expected += len(b.corruptions)
        if against is None:
            covered += len(b.corruptions) - len(s.missing)
        elif (ratio := getattr(s, summary)) is not None:
            covered += ratio.n_corruptions_covered
            gaps[(b.label, undefined_why)] += ratio.undefined
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
            *([_coverage(analysis, m, benches, summary="rel_mce")] if base else []),
        ))
    short = "bal. acc." if r.error_type == "balanced_error" else "acc."
    tail = (f"Clean {short}", f"Corrupted {short}", "Clean AUC", "Corrupted AUC", "Clean ECE",
            "Corrupted ECE", "Coverage") + (("Rel. mCE coverage",) if base else ())
    tail_formats = (".1%", ".1%", ".3f", ".3f", ".3f", ".3f", "") + (("",) if base else ())
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
                why = missing_reason(r, m, b, c)
                if kind == "ce":
                    ce = analysis.summary(m, b).ce or {}
                    value = ce.get(c)
                    if value is None and why is None:
                        base_why = missing_reason(r, analysis.baseline or m, b, c)
                        why = (f"baseline: {base_why}" if base_why else
                               "CE undefined: the baseline's error is zero or near zero")
                else:
                    value = None if why else mean_defined(
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
            value = mean_defined(r.accuracy(model, b, c, severity) for c in b.corruptions)
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


def curve_datasets(analysis: Analysis) -> dict[str, list[str]]:
    """The benchmark labels behind each curve of :func:`accuracy_curves` (same keys)."""
    return {key: [b.label for b, _ in where]
            for key, where in _corruption_pairs(analysis.results).items()}


def accuracy_curves(analysis: Analysis
                    ) -> tuple[list[int], dict[str, dict[str, list[float | None]]]]:
    """Severities (0 = clean first) and ``corruption -> model -> accuracy per severity``.

    Each point is the mean over the datasets holding that corruption; None where no data.
    """
    r = analysis.results
    severities = [0, *sorted({s for b in r.benchmarks for s in b.severities})]
    curves = {
        key: {
            m: [mean_defined(r.accuracy(m, b, CLEAN if s == 0 else c, s) for b, c in where)
                for s in severities]
            for m in analysis.models
        }
        for key, where in _corruption_pairs(r).items()
    }
    return severities, curves
