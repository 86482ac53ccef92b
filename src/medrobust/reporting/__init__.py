"""Reports of evaluation runs: tables, figures, sample montages and the Markdown/HTML report."""

from __future__ import annotations

from typing import Any

from .plots import plot_accuracy_vs_severity, plot_corruption_heatmap, write_bytes_atomic
from .report import write_report
from .tables import (
    Analysis,
    Benchmark,
    Cell,
    RunResults,
    Table,
    accuracy_curves,
    analyse,
    build_tables,
    collect_results,
    corruption_matrix,
)

__all__ = [
    "Analysis",
    "Benchmark",
    "Cell",
    "RunResults",
    "Table",
    "accuracy_curves",
    "analyse",
    "build_tables",
    "collect_results",
    "corruption_matrix",
    "corruption_montage",
    "plot_accuracy_vs_severity",
    "plot_corruption_heatmap",
    "save_png_atomic",
    "write_bytes_atomic",
    "write_report",
]

_MONTAGE = ("corruption_montage", "save_png_atomic")


def __getattr__(name: str) -> Any:
    """Montage helpers load on first use: they import the corruption suites (and torch)."""
    if name in _MONTAGE:
        from . import montage

        return getattr(montage, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
