"""Zero-shot scoring, robustness metrics, the evaluation runner and its results store."""

from .metrics import cell_metrics, mean_corruption_error, relative_mean_corruption_error
from .runner import GridSpec, RunSummary, run_grid
from .store import CellKey, ResultsStore, StoreError
from .zeroshot import ZeroShotClassifier

__all__ = [
    "CellKey",
    "GridSpec",
    "ResultsStore",
    "RunSummary",
    "StoreError",
    "ZeroShotClassifier",
    "cell_metrics",
    "mean_corruption_error",
    "relative_mean_corruption_error",
    "run_grid",
]
