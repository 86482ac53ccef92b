"""Corruption-robustness summaries over a grid of cell errors (model x corruption x severity).

ImageNet-C's Corruption Error (CE, mCE, relative mCE), RobustMedCLIP's clean error ratio and
MedMNIST-C's balanced error ratios (BE, rBE). Severities are averaged unweighted per corruption
(equivalent to summing matched severities), corruptions then weighted equally, and baselines
are looked up by corruption name. A ratio whose baseline denominator is zero, near zero or
negative is undefined: it is returned as None with an :class:`UndefinedMetricWarning`, never as
a huge or sign-flipped number. Every summary records how many of the expected corruptions it
actually covers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import numpy as np

from medrobust.evaluation import baselines
from medrobust.evaluation.metrics import UndefinedMetricWarning
from medrobust.severity import CLEAN, SEVERITIES, check_severity

__all__ = [
    "CLEAN",
    "DEFAULT_SEVERITIES",
    "ERROR_TYPES",
    "MIN_DENOMINATOR",
    "ErrorGrid",
    "IncompleteGridWarning",
    "RobustnessSummary",
    "balanced_error_ratio",
    "check_error_type",
    "clean_error_ratio",
    "corruption_error",
    "error_grid",
    "mean_corruption_error",
    "relative_balanced_error_ratio",
    "relative_corruption_error",
    "relative_mean_corruption_error",
]

ErrorType: TypeAlias = Literal["error", "balanced_error"]
SeverityErrors: TypeAlias = Mapping[int, float] | float
"""Errors of one corruption: ``{severity: error}``, or one severity-averaged error."""
ErrorTable: TypeAlias = Mapping[str, Any] | Sequence[Mapping[str, Any]]
"""A mapping ``{'clean': e, corruption: {severity: e} | e}`` or a list of records (see error_grid)."""

ERROR_TYPES: tuple[str, ...] = ("error", "balanced_error")
DEFAULT_SEVERITIES: tuple[int, ...] = SEVERITIES
MIN_DENOMINATOR = 1e-3
"""Baseline denominators below this (zero, near zero or negative) make a ratio undefined."""

_ACCURACY_KEY = {"error": "accuracy", "balanced_error": "balanced_accuracy"}


class IncompleteGridWarning(UserWarning):
    """A robustness summary covers fewer corruptions than expected."""


# ----------------------------------------------------------------------------- error grids


def check_error_type(error_type: str) -> str:
    """``error_type`` if it names a stored error column (``ERROR_TYPES``), else ValueError."""
    if error_type not in ERROR_TYPES:
        raise ValueError(f"error_type must be one of {ERROR_TYPES}; got {error_type!r}")
    return error_type


def _error_value(value: Any, where: str) -> float:
    """A validated error: a finite fraction in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{where}: an error must be a number; got {type(value).__name__}")
    e = float(value)
    if not (math.isfinite(e) and 0.0 <= e <= 1.0):
        raise ValueError(f"{where}: errors are fractions in [0, 1]; got {value!r}")
    return e


def _is_cell(value: Any, error_type: str) -> bool:
    """Whether value is one cell's metrics record (rather than a {severity: ...} mapping)."""
    return isinstance(value, Mapping) and (
        error_type in value or _ACCURACY_KEY[error_type] in value
    )


def _cell_error(value: Any, error_type: str, where: str) -> float:
    """The error of a number or of a metrics record (error key, else 1 - accuracy key)."""
    if isinstance(value, Mapping):
        if error_type in value:
            return _error_value(value[error_type], where)
        if _ACCURACY_KEY[error_type] in value:
            return 1.0 - _error_value(value[_ACCURACY_KEY[error_type]], where)
        raise ValueError(
            f"{where}: record has neither {error_type!r} nor {_ACCURACY_KEY[error_type]!r}; "
            f"keys: {sorted(map(str, value))}"
        )
    return _error_value(value, where)


def _severity(value: Any, where: str) -> int:
    """A severity level as a positive int (JSON's string keys such as '3' accepted)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        return check_severity(value)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _severity_errors(value: SeverityErrors, where: str) -> dict[int, float] | float:
    """Validated ``{severity: error}`` (non-empty) or a severity-averaged error."""
    if isinstance(value, Mapping):
        if not value:
            raise ValueError(f"{where}: no severities given")
        out: dict[int, float] = {}
        for s, e in value.items():
            level = _severity(s, where)
            if level in out:
                raise ValueError(f"{where}: severity {level} given twice")
            out[level] = _error_value(e, f"{where}, severity {level}")
        return out
    return _error_value(value, where)


@dataclass(frozen=True)
class ErrorGrid:
    """Errors of one model on one dataset: clean and per corruption.

    ``corrupted[c]`` is ``{severity: error}`` or a single severity-averaged error (the form of
    the published AlexNet baselines). Values are validated and normalised on construction.
    """

    corrupted: Mapping[str, SeverityErrors]
    clean: float | None = None
    error_type: ErrorType = "error"
    name: str | None = None

    def __post_init__(self) -> None:
        check_error_type(self.error_type)
        corrupted = {}
        for c, value in self.corrupted.items():
            if not isinstance(c, str) or c == CLEAN:
                raise ValueError(
                    f"corruption names must be strings other than {CLEAN!r}; got {c!r}"
                )
            corrupted[c] = _severity_errors(value, f"corruption {c!r}")
        object.__setattr__(self, "corrupted", corrupted)
        if self.clean is not None:
            object.__setattr__(self, "clean", _error_value(self.clean, "clean error"))


def _duplicate_hint(rows: Sequence[Mapping[str, Any]]) -> str:
    """Which identifying keys take several values (the usual cause of duplicate records)."""
    keys = ("model", "dataset", "backbone", "split")
    seen = {k: sorted({str(r[k]) for r in rows if k in r}) for k in keys}
    many = {k: v for k, v in seen.items() if len(v) > 1}
    return f"; the table mixes {many}: choose one with select=" if many else ""


def error_grid(
    table: ErrorTable,
    *,
    error_type: ErrorType = "error",
    select: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> ErrorGrid:
    """Build an :class:`ErrorGrid` from a table of errors.

    ``table`` is either

    * a mapping ``{'clean': c, corruption: {severity: e} | e}``, or
    * a list of records with keys ``corruption`` (``'clean'`` for the clean error), ``severity``
      (omitted or None for a severity-averaged error) and the error, optionally ``model``,
      ``dataset`` and other keys; ``select={'model': 'clip'}`` keeps the matching records.

    Each error ``c`` / ``e`` is a number, or a metrics record such as :func:`cell_metrics`'s
    output, from which ``error_type`` is read (or derived as 1 - ``accuracy`` /
    1 - ``balanced_accuracy`` when only that is present).
    """
    check_error_type(error_type)
    if isinstance(table, Mapping):
        if select:
            raise ValueError("select filters record lists only; a mapping holds one model")
        return _grid_from_mapping(table, error_type, name)
    if isinstance(table, str | bytes) or not isinstance(table, Sequence):
        raise TypeError(f"table must be a mapping or a list of records; got {type(table).__name__}")
    return _grid_from_records(table, error_type, dict(select or {}), name)


def _grid_from_mapping(table: Mapping[str, Any], error_type: str, name: str | None) -> ErrorGrid:
    clean = None
    corrupted: dict[str, SeverityErrors] = {}
    for c, value in table.items():
        if c == CLEAN:
            clean = _cell_error(value, error_type, "clean")
        elif isinstance(value, Mapping) and not _is_cell(value, error_type):
            corrupted[c] = {
                s: _cell_error(v, error_type, f"corruption {c!r}, severity {s!r}")
                for s, v in value.items()
            }
        else:
            corrupted[c] = _cell_error(value, error_type, f"corruption {c!r}")
    return ErrorGrid(corrupted, clean=clean, error_type=error_type, name=name)


def _grid_from_records(
    records: Sequence[Mapping[str, Any]], error_type: str, select: dict[str, Any], name: str | None
) -> ErrorGrid:
    for i, r in enumerate(records):
        if not isinstance(r, Mapping):
            raise TypeError(f"record {i} must be a mapping; got {type(r).__name__}")
        if "corruption" not in r:
            raise ValueError(f"record {i} has no 'corruption' key; keys: {sorted(map(str, r))}")
    rows = [r for r in records if all(k in r and r[k] == v for k, v in select.items())]
    if not rows:
        raise ValueError(f"no record matches select={select}")
    clean: float | None = None
    per_severity: dict[str, dict[int, float]] = {}
    averaged: dict[str, float] = {}
    for r in rows:
        c = r["corruption"]
        where = f"record ({c!r}, severity {r.get('severity')!r})"
        error = _cell_error(r, error_type, where)
        if c == CLEAN:
            seen = clean is not None
            clean = error
        elif r.get("severity") is None:
            seen = c in averaged or c in per_severity
            averaged[c] = error
        else:
            level = _severity(r["severity"], where)
            levels = per_severity.setdefault(c, {})
            seen = level in levels or c in averaged
            levels[level] = error
        if seen:
            raise ValueError(f"{where} occurs twice{_duplicate_hint(rows)}")
    model = select.get("model")
    return ErrorGrid(
        {**per_severity, **averaged},
        clean=clean,
        error_type=error_type,
        name=name if name is not None else (None if model is None else str(model)),
    )


# ----------------------------------------------------------------------------- ratios


def _check_min_denominator(min_denominator: float) -> float:
    if not (isinstance(min_denominator, int | float) and min_denominator > 0):
        raise ValueError(f"min_denominator must be a positive number; got {min_denominator!r}")
    return float(min_denominator)


def _ratio(
    numerator: float, denominator: float, subject: str, min_denominator: float
) -> float | None:
    """numerator / denominator, or None plus a warning when the denominator is not usable."""
    if denominator < min_denominator:
        if denominator <= -min_denominator:
            why = "negative"
        elif denominator == 0:
            why = "zero"
        else:
            why = f"near zero (below {min_denominator:g})"
        warnings.warn(
            f"{subject} is undefined: its baseline denominator {denominator:.6g} is {why}; "
            "reported as None",
            UndefinedMetricWarning,
            stacklevel=3,
        )
        return None
    return numerator / denominator


def _matched_means(
    model_errors: SeverityErrors, baseline_errors: SeverityErrors, label: str
) -> tuple[float, float]:
    """Severity means of model and baseline; per-severity errors must share their severities."""
    m = _severity_errors(model_errors, f"model errors of {label}")
    b = _severity_errors(baseline_errors, f"baseline errors of {label}")
    if isinstance(m, dict) and isinstance(b, dict) and set(m) != set(b):
        raise ValueError(
            f"severities of {label} do not match: model has {sorted(m)}, baseline has {sorted(b)}"
        )

    def mean(e: dict[int, float] | float) -> float:
        return math.fsum(e.values()) / len(e) if isinstance(e, dict) else e

    return mean(m), mean(b)


def _label(corruption: str | None) -> str:
    return "this corruption" if corruption is None else f"corruption {corruption!r}"


def corruption_error(
    model_errors: SeverityErrors,
    baseline_errors: SeverityErrors,
    *,
    corruption: str | None = None,
    min_denominator: float = MIN_DENOMINATOR,
) -> float | None:
    """CE = sum_s E_f(s) / sum_s E_b(s) (a ratio, not x100), severities matched by value.

    Either side may be a single severity-averaged error (the published AlexNet tables); then
    CE = mean_s E_f / E_b. Returns None (with a warning) when the baseline error is below
    ``min_denominator``. ``corruption`` only names the corruption in messages.
    """
    label = _label(corruption)
    model_mean, base_mean = _matched_means(model_errors, baseline_errors, label)
    return _ratio(model_mean, base_mean, f"CE of {label}", _check_min_denominator(min_denominator))


def relative_corruption_error(
    model_errors: SeverityErrors,
    model_clean: float,
    baseline_errors: SeverityErrors,
    baseline_clean: float,
    *,
    corruption: str | None = None,
    min_denominator: float = MIN_DENOMINATOR,
) -> float | None:
    """Relative CE = sum_s (E_f(s) - E_f,clean) / sum_s (E_b(s) - E_b,clean) (not x100).

    With a severity-averaged baseline this is MedMNIST-C's rBE. The baseline's degradation is
    often tiny or negative; below ``min_denominator`` the result is None with a warning.
    """
    label = _label(corruption)
    model_mean, base_mean = _matched_means(model_errors, baseline_errors, label)
    m_clean = _error_value(model_clean, f"model clean error of {label}")
    b_clean = _error_value(baseline_clean, f"baseline clean error of {label}")
    return _ratio(
        model_mean - m_clean,
        base_mean - b_clean,
        f"relative CE of {label}",
        _check_min_denominator(min_denominator),
    )


def clean_error_ratio(
    model_clean: float, baseline_clean: float, *, min_denominator: float = MIN_DENOMINATOR
) -> float | None:
    """RobustMedCLIP's Clean Error: E_f,clean / E_b,clean x 100 (None if E_b,clean is ~0)."""
    ratio = _ratio(
        _error_value(model_clean, "model clean error"),
        _error_value(baseline_clean, "baseline clean error"),
        "the clean error ratio",
        _check_min_denominator(min_denominator),
    )
    return None if ratio is None else 100.0 * ratio


# ----------------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class RobustnessSummary:
    """A robustness summary over a grid, with its coverage.

    ``value`` is the mean of the defined per-corruption values (both already multiplied by
    ``scale``), or None when none is defined. ``n_corruptions_covered`` counts the corruptions
    that entered the mean; ``missing`` lists expected corruptions without (complete) data,
    ``undefined`` those whose ratio has an unusable denominator. ``complete`` is True only when
    every expected corruption entered the mean.
    """

    metric: str
    value: float | None
    per_corruption: dict[str, float | None]
    error_type: str
    scale: float
    n_corruptions_covered: int
    n_corruptions_expected: int
    complete: bool
    missing: list[str] = field(default_factory=list)
    undefined: list[str] = field(default_factory=list)
    baseline: str | None = None


def _as_grid(table: ErrorGrid | ErrorTable, error_type: str, role: str) -> ErrorGrid:
    grid = table if isinstance(table, ErrorGrid) else error_grid(table, error_type=error_type)
    if grid.error_type != error_type:
        raise ValueError(
            f"the {role} grid holds {grid.error_type!r} but this summary uses {error_type!r}; "
            "model and baseline must use the same error type"
        )
    return grid


def _resolve_error_type(error_type: str | None, *tables: ErrorGrid | ErrorTable | str) -> str:
    if error_type is not None:
        return check_error_type(error_type)
    for t in tables:
        if isinstance(t, ErrorGrid):
            return t.error_type
    return "error"


def _check_corruptions(corruptions: Sequence[str]) -> list[str]:
    if isinstance(corruptions, str) or not isinstance(corruptions, Sequence):
        raise TypeError("corruptions must be a sequence of corruption names")
    names = list(corruptions)
    if not names:
        raise ValueError("corruptions is empty: pass the names the summary is expected to cover")
    if any(not isinstance(c, str) or c == CLEAN for c in names):
        raise ValueError(f"corruptions must be names other than {CLEAN!r}; got {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"corruptions contains duplicates: {names}")
    return names


def _severity_gap(
    corruption: str,
    sides: Sequence[tuple[str, dict[int, float] | float]],
    severities: tuple[int, ...] | None,
) -> str | None:
    """Which side lacks expected severities of a corruption (None: complete)."""
    for role, errors in sides:
        if severities is None or not isinstance(errors, dict):
            continue
        extra = sorted(set(errors) - set(severities))
        if extra:
            raise ValueError(
                f"{role} errors of {corruption!r} have severities {extra} outside the expected "
                f"{list(severities)}"
            )
        absent = sorted(set(severities) - set(errors))
        if absent:
            return f"{corruption} ({role} lacks severities {absent})"
    return None


def _clean_errors(metric: str, model: ErrorGrid, baseline: ErrorGrid) -> tuple[float, float]:
    """Both clean errors, which relative summaries need."""
    for role, grid in (("model", model), ("baseline", baseline)):
        if grid.clean is None:
            raise ValueError(f"{metric} needs the {role}'s clean error; the {role} grid has none")
    return float(model.clean), float(baseline.clean)  # type: ignore[arg-type]


def _summarise(
    metric: str,
    model: ErrorGrid | ErrorTable,
    baseline: ErrorGrid | ErrorTable,
    corruptions: Sequence[str],
    *,
    error_type: str,
    relative: bool,
    scale: float,
    severities: Sequence[int] | None,
    min_denominator: float,
) -> RobustnessSummary:
    """Per-corruption (relative) CE over the expected corruptions, their mean and coverage."""
    names = _check_corruptions(corruptions)
    levels = None if severities is None else tuple(_severity(s, "severities") for s in severities)
    min_denominator = _check_min_denominator(min_denominator)
    model_grid = _as_grid(model, error_type, "model")
    base_grid = _as_grid(baseline, error_type, "baseline")
    cleans = _clean_errors(metric, model_grid, base_grid) if relative else None

    per_corruption: dict[str, float | None] = {}
    missing: list[str] = []
    gaps: list[str] = []
    for c in names:
        m, b = model_grid.corrupted.get(c), base_grid.corrupted.get(c)
        if m is None or b is None:
            gap: str | None = f"{c} (no {'model' if m is None else 'baseline'} errors)"
        else:
            gap = _severity_gap(c, (("model", m), ("baseline", b)), levels)
        if gap is not None:
            missing.append(c)
            gaps.append(gap)
            continue
        if cleans is not None:
            ratio = relative_corruption_error(
                m, cleans[0], b, cleans[1], corruption=c, min_denominator=min_denominator
            )
        else:
            ratio = corruption_error(m, b, corruption=c, min_denominator=min_denominator)
        per_corruption[c] = None if ratio is None else scale * ratio

    defined = [v for v in per_corruption.values() if v is not None]
    undefined = [c for c, v in per_corruption.items() if v is None]
    if missing:
        warnings.warn(
            f"{metric} covers {len(defined)} of {len(names)} expected corruptions; "
            f"missing: {', '.join(gaps)}",
            IncompleteGridWarning,
            stacklevel=3,
        )
    if not defined:
        warnings.warn(
            f"{metric} is undefined: no expected corruption has a defined value",
            UndefinedMetricWarning,
            stacklevel=3,
        )
    return RobustnessSummary(
        metric=metric,
        value=math.fsum(defined) / len(defined) if defined else None,
        per_corruption=per_corruption,
        error_type=error_type,
        scale=scale,
        n_corruptions_covered=len(defined),
        n_corruptions_expected=len(names),
        complete=len(defined) == len(names),
        missing=missing,
        undefined=undefined,
        baseline=base_grid.name,
    )


Grid: TypeAlias = ErrorGrid | ErrorTable
"""A model's errors: an :class:`ErrorGrid`, or a table that :func:`error_grid` reads."""


def mean_corruption_error(model: Grid, baseline: Grid, corruptions: Sequence[str], *,
                          error_type: ErrorType | None = None,
                          severities: Sequence[int] | None = DEFAULT_SEVERITIES,
                          min_denominator: float = MIN_DENOMINATOR) -> RobustnessSummary:
    """mCE x 100: the mean over ``corruptions`` of CE (x 100), baselines looked up by name.

    ``model`` and ``baseline`` are grids or tables (see :func:`error_grid`); ``error_type``
    (default: the grids', else 'error') selects 'error' or 'balanced_error'. A corruption counts
    as covered only when both sides have every severity in ``severities`` (None: no check).
    E.g. ImageNet-C: ``mean_corruption_error(grid, IMAGENET_C_ALEXNET, IMAGENET_C_CORRUPTIONS)``.
    """
    return _summarise("mCE", model, baseline, corruptions, relative=False, scale=100.0,
                      error_type=_resolve_error_type(error_type, model, baseline),
                      severities=severities, min_denominator=min_denominator)


def relative_mean_corruption_error(model: Grid, baseline: Grid, corruptions: Sequence[str], *,
                                   error_type: ErrorType | None = None,
                                   severities: Sequence[int] | None = DEFAULT_SEVERITIES,
                                   min_denominator: float = MIN_DENOMINATOR
                                   ) -> RobustnessSummary:
    """Relative mCE x 100: mean over ``corruptions`` of relative CE; needs both clean errors."""
    return _summarise("relative_mCE", model, baseline, corruptions, relative=True, scale=100.0,
                      error_type=_resolve_error_type(error_type, model, baseline),
                      severities=severities, min_denominator=min_denominator)


def _medmnist_c_baseline(baseline: str | Grid) -> Grid:
    """A MedMNIST-C dataset name becomes its packaged AlexNet grid; other inputs pass through."""
    if not isinstance(baseline, str):
        return baseline
    clean, errors = baselines.load_medmnist_c_alexnet(baseline)
    return ErrorGrid(
        errors, clean=clean, error_type="balanced_error", name=f"medmnist_c_alexnet/{baseline}"
    )


def balanced_error_ratio(model: Grid, baseline: str | Grid, corruptions: Sequence[str], *,
                         severities: Sequence[int] | None = DEFAULT_SEVERITIES,
                         min_denominator: float = MIN_DENOMINATOR) -> RobustnessSummary:
    """MedMNIST-C's BE: mean over corruptions of BE_c = mean_s E / E_AlexNet,c (not scaled).

    E is the balanced error (1 - balanced accuracy). ``baseline`` is a MedMNIST-C dataset name
    (AlexNet from the packaged table) or a balanced-error grid. The value is a plain ratio, as
    in MedMNIST-C's Evaluator output (AlexNet = 1).
    """
    return _summarise("BE", model, _medmnist_c_baseline(baseline), corruptions, relative=False,
                      scale=1.0, error_type="balanced_error", severities=severities,
                      min_denominator=min_denominator)


def relative_balanced_error_ratio(model: Grid, baseline: str | Grid,
                                  corruptions: Sequence[str], *,
                                  severities: Sequence[int] | None = DEFAULT_SEVERITIES,
                                  min_denominator: float = MIN_DENOMINATOR
                                  ) -> RobustnessSummary:
    """MedMNIST-C's rBE: mean of (mean_s E - E_clean) / (E_AlexNet,c - E_AlexNet,clean).

    Corruptions where AlexNet's degradation is below ``min_denominator`` (pneumoniamnist
    contrast_up and gamma_corr_up are negative) are undefined, not sign-flipped.
    """
    return _summarise("rBE", model, _medmnist_c_baseline(baseline), corruptions, relative=True,
                      scale=1.0, error_type="balanced_error", severities=severities,
                      min_denominator=min_denominator)
