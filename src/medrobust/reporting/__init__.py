"""Reports of evaluation runs: results, analysis, tables, figures, montages and the report.

``results`` assembles a run's store rows, ``analysis`` summarises each model on each benchmark,
``tables`` builds the report tables, ``render`` holds the table type and its Markdown/HTML,
``plots`` draws the figures and ``report`` writes ``report.md`` and ``report.html``.
"""

from __future__ import annotations

from typing import Any

from .analysis import Analysis, DatasetSummary, analyse
from .plots import plot_accuracy_vs_severity, plot_corruption_heatmap, write_bytes_atomic
from .render import Cell, Table
from .report import write_report
from .results import Benchmark, CellResult, RunResults, collect_results
from .tables import accuracy_curves, build_tables, corruption_matrix

__all__ = [
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
