"""Report figures: accuracy versus severity per corruption, and a corruption x model heatmap.

Matplotlib figures drawn on an Agg canvas (no display, no pyplot global state), the Okabe-Ito colour-blind-safe palette
plus distinct markers, PNG at 120 dpi, written through a temporary file so a crash never
leaves half an image.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from .._files import write_bytes_atomic

__all__ = [
    "DPI",
    "OKABE_ITO",
    "plot_accuracy_vs_severity",
    "plot_corruption_heatmap",
    "write_bytes_atomic",
]

DPI = 120
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
             "#F0E442")
"""Okabe & Ito's colour-blind-safe colours, yellow last (weakest on white)."""
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_LINESTYLES = ("-", "--", ":", "-.")


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return write_bytes_atomic(buffer.getvalue(), path)


def _style(i: int) -> dict[str, object]:
    """Colour, marker and (after the palette runs out) line style of the i-th model."""
    n = len(OKABE_ITO)
    return {"color": OKABE_ITO[i % n], "marker": _MARKERS[i % len(_MARKERS)],
            "linestyle": _LINESTYLES[(i // n) % len(_LINESTYLES)]}


def _values(points: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in points], dtype=np.float64)


def plot_accuracy_vs_severity(
    curves: Mapping[str, Mapping[str, Sequence[float | None]]],
    severities: Sequence[int],
    path: str | Path,
    *,
    ylabel: str = "accuracy",
    title: str | None = None,
    columns: int = 4,
    chance: Mapping[str, float | None] | None = None,
) -> Path:
    """One subplot per corruption, one line per model: accuracy at ``severities`` (0 = clean).

    ``curves`` maps corruption -> model -> one value per severity (None = no data, drawn as a
    gap); corruptions without any corrupted value get no panel. The y axis is shared so the
    panels compare at a glance. ``chance`` (per corruption) draws the accuracy of a constant
    guess as a dotted line, so a curve near it is read as no better than guessing.
    """
    for c, per_model in curves.items():
        for m, points in per_model.items():
            if len(points) != len(severities):
                raise ValueError(f"{c}/{m}: {len(points)} values for {len(severities)} severities")
    corrupted = [i for i, s in enumerate(severities) if s != 0]
    names = [c for c, per_model in curves.items()
             if any(p[i] is not None for p in per_model.values() for i in corrupted)]
    if not names:
        raise ValueError("no corruption curves to plot (no corrupted results)")
    models = list(dict.fromkeys(m for c in curves.values() for m in c))
    ncols = min(columns, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = _figure(3.1 * ncols + 0.4, 2.5 * nrows + 0.9)
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    every = np.concatenate([_values(p) for c in curves.values() for p in c.values()])
    levels = [v for v in (chance or {}).values() if v is not None]
    every = np.concatenate([every, np.asarray(levels, dtype=np.float64)])
    finite = every[np.isfinite(every)]
    lo = math.floor(finite.min() * 10) / 10 if finite.size else 0.0
    hi = math.ceil(finite.max() * 10) / 10 if finite.size else 1.0
    lo, hi = max(0.0, lo - 0.05), min(1.0, hi + 0.05)
    x = np.arange(len(severities))
    labels = ["clean" if s == 0 else str(s) for s in severities]
    for k, ax in enumerate(axes.flat):
        if k >= len(names):
            ax.set_visible(False)
            continue
        for i, m in enumerate(models):
            points = curves[names[k]].get(m)
            if points is not None:
                ax.plot(x, _values(points), label=m, linewidth=1.6, markersize=4.5, **_style(i))
        level = (chance or {}).get(names[k])
        if level is not None:
            ax.axhline(level, color="#888888", linestyle=":", linewidth=1.2, label="chance")
        panel = names[k].replace("_", " ").replace(" (", "\n(", 1)  # a note on its own line
        ax.set_title("\n".join(textwrap.fill(t, 36) for t in panel.split("\n")), fontsize=10)
        ax.set_xticks(x, labels)
        ax.set_ylim(lo, hi)
        ax.grid(True, color="#dddddd", linewidth=0.6)
        ax.tick_params(labelsize=8.5)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        if k % ncols == 0:
            ax.set_ylabel(ylabel, fontsize=9)
        if k // ncols == nrows - 1 or k + ncols >= len(names):
            ax.set_xlabel("severity", fontsize=9)
            ax.xaxis.set_tick_params(labelbottom=True)
    handles, legend_labels = axes.flat[0].get_legend_handles_labels()
    entry = 0.55 + 0.075 * max(map(len, models))  # inches: marker plus the longest name
    fig.legend(handles, legend_labels, loc="outside upper center", frameon=False, fontsize=9,
               ncols=max(1, min(len(models), int(fig.get_figwidth() // entry))))
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def plot_corruption_heatmap(
    matrix: Mapping[str, Mapping[str, float | None]],
    path: str | Path,
    *,
    label: str,
    center: float | None = None,
    percent: bool = False,
    title: str | None = None,
) -> Path:
    """Rows = corruptions, columns = models; annotated cells, n/a in grey (rows without any
    value are left out).

    With ``center`` (e.g. 100 for CE) a diverging colour map is centred on it (purple below:
    better than the baseline; orange above: worse); otherwise the sequential cividis map.
    ``percent`` shows values (fractions) as percentages.
    """
    rows = [r for r, values in matrix.items() if any(v is not None for v in values.values())]
    if not rows:
        raise ValueError("no corruptions to plot (no values)")
    models = list(dict.fromkeys(m for r in matrix.values() for m in r))
    data = np.array([[np.nan if matrix[r].get(m) is None else float(matrix[r][m])  # type: ignore[arg-type]
                      for m in models] for r in rows], dtype=np.float64)
    finite = data[np.isfinite(data)]
    fig = _figure(2.6 + 1.15 * len(models), 1.3 + 0.36 * len(rows))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["PuOr_r" if center is not None else "cividis"].with_extremes(
        bad="#e6e6e6")
    norm = None
    if center is not None and finite.size:
        spread = max(float(np.abs(finite - center).max()), 1e-9)
        norm = TwoSlopeNorm(vcenter=center, vmin=center - spread, vmax=center + spread)
    image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, norm=norm, aspect="auto")
    colorbar = fig.colorbar(image, ax=ax, shrink=0.9)
    colorbar.set_label(label, fontsize=9)
    colorbar.ax.tick_params(labelsize=8.5)
    if percent:
        colorbar.formatter = PercentFormatter(1.0, decimals=0)
        colorbar.update_ticks()
    upright = len(models) <= 4 and max(map(len, models)) <= 18
    ax.set_xticks(np.arange(len(models)), models, fontsize=9, rotation=0 if upright else 30,
                  ha="center" if upright else "right", rotation_mode="anchor")
    ax.set_yticks(np.arange(len(rows)), [r.replace("_", " ") for r in rows], fontsize=9)
    ax.tick_params(length=0)
    for i in range(len(rows)):
        for j in range(len(models)):
            v = data[i, j]
            if not np.isfinite(v):
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=8, color="#555555")
                continue
            r, g, b, _ = cmap(norm(v) if norm is not None else image.norm(v))
            dark = 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.5
            text = f"{v:.1%}" if percent else f"{v:.1f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
    ax.set_xticks(np.arange(len(models) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(rows) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=11)
    return _save(fig, path)
