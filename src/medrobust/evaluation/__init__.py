"""Evaluation: per-cell metrics, robustness summaries over a grid, the runner and its store.

``metrics`` scores one (model, dataset, corruption, severity) cell; ``robustness`` turns a grid
of cell errors into CE, mCE, relative mCE, BE and rBE against a baseline; ``runner`` evaluates
a grid into a :class:`ResultsStore`; ``baselines`` holds the published AlexNet baselines.
"""

from .metrics import (
    UndefinedMetricWarning,
    accuracy,
    balanced_accuracy,
    cell_metrics,
    expected_calibration_error,
    predict,
    roc_auc,
)
from .robustness import (
    CLEAN,
    DEFAULT_SEVERITIES,
    ERROR_TYPES,
    MIN_DENOMINATOR,
    ErrorGrid,
    IncompleteGridWarning,
    RobustnessSummary,
    balanced_error_ratio,
    clean_error_ratio,
    corruption_error,
    error_grid,
    mean_corruption_error,
    relative_balanced_error_ratio,
    relative_corruption_error,
    relative_mean_corruption_error,
)
from .runner import GridSpec, RunSummary, run_grid
from .store import CellKey, ResultsStore, StoreError

__all__ = [
    "CLEAN",
    "DEFAULT_SEVERITIES",
    "ERROR_TYPES",
    "MIN_DENOMINATOR",
    "CellKey",
    "ErrorGrid",
    "GridSpec",
    "IncompleteGridWarning",
    "ResultsStore",
    "RobustnessSummary",
    "RunSummary",
    "StoreError",
    "UndefinedMetricWarning",
    "accuracy",
    "balanced_accuracy",
    "balanced_error_ratio",
    "cell_metrics",
    "clean_error_ratio",
    "corruption_error",
    "error_grid",
    "expected_calibration_error",
    "mean_corruption_error",
    "predict",
    "relative_balanced_error_ratio",
    "relative_corruption_error",
    "relative_mean_corruption_error",
    "roc_auc",
    "run_grid",
]
