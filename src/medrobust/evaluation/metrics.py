"""Classification metrics of one benchmark cell: what a model's predictions score on it.

They take class probabilities ``(N, K)`` and integer labels ``(N,)`` (numpy arrays, or torch
tensors, converted on the CPU) and return plain floats: accuracy, balanced accuracy, ROC-AUC
(positive column for binary tasks, one-vs-rest macro otherwise), expected calibration error,
and the errors 1 - accuracy and 1 - balanced accuracy. Robustness summaries over a grid of
such cells (CE, mCE, BE, ...) live in :mod:`medrobust.evaluation.robustness`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

__all__ = [
    "UndefinedMetricWarning",
    "accuracy",
    "balanced_accuracy",
    "cell_diagnostics",
    "cell_metrics",
    "expected_calibration_error",
    "predict",
    "roc_auc",
]

_TASKS = {
    "binary": "binary",
    "binary-class": "binary",
    "multi-class": "multi-class",
    "multiclass": "multi-class",
    "ordinal": "ordinal",
    "ordinal-regression": "ordinal",
}
_PROB_TOLERANCE = 1e-6


class UndefinedMetricWarning(UserWarning):
    """A metric or ratio is undefined for the given data (returned as None or NaN)."""


# ----------------------------------------------------------------------------- cell metrics


def _to_numpy(x: Any) -> np.ndarray:
    """numpy view of an array-like; torch tensors are detached and copied to the CPU."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.double()  # bfloat16/half have no numpy dtype
        x = x.numpy()
    return np.asarray(x)


def _validate_probs(probs: Any) -> np.ndarray:
    """Checked float64 probabilities (N, K), N >= 1, K >= 2, finite, in [0, 1]."""
    p = _to_numpy(probs)
    if p.dtype == np.bool_ or not (
        np.issubdtype(p.dtype, np.floating) or np.issubdtype(p.dtype, np.integer)
    ):
        raise TypeError(f"probs must be a real-valued array; got dtype {p.dtype}")
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probs must have shape (N, K) with K >= 2 classes; got shape {p.shape}")
    if p.shape[0] == 0:
        raise ValueError("probs is empty; at least one sample is needed")
    p = p.astype(np.float64)
    finite = np.isfinite(p).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise ValueError(
            f"probs contains NaN or infinite values in {rows.size} row(s), "
            f"first rows {rows[:5].tolist()}"
        )
    lo, hi = float(p.min()), float(p.max())
    if lo < -_PROB_TOLERANCE or hi > 1.0 + _PROB_TOLERANCE:
        raise ValueError(
            f"probs must be probabilities in [0, 1] (apply softmax to logits first); "
            f"got values in [{lo:.6g}, {hi:.6g}]"
        )
    return np.clip(p, 0.0, 1.0)


def _validate(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Checked probabilities (see _validate_probs) and int64 labels (N,) in [0, K)."""
    p = _validate_probs(probs)
    y = _to_numpy(labels)
    if y.ndim == 2 and y.shape[1] == 1:  # MedMNIST stores labels as (N, 1)
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"labels must have shape (N,) or (N, 1); got shape {y.shape}")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"labels must be integer class indices; got dtype {y.dtype}")
    if p.shape[0] != y.shape[0]:
        raise ValueError(
            f"probs has {p.shape[0]} rows but labels has {y.shape[0]} entries; they must match"
        )
    k = p.shape[1]
    y_lo, y_hi = int(y.min()), int(y.max())
    if y_lo < 0 or y_hi >= k:
        raise ValueError(
            f"labels must lie in [0, {k - 1}] for {k} probability columns; "
            f"got labels in [{y_lo}, {y_hi}]"
        )
    return p, y.astype(np.int64)


def _task(task: str, n_classes: int) -> str:
    """Canonical task name ('binary', 'multi-class' or 'ordinal'), checked against K."""
    if task not in _TASKS:
        raise ValueError(
            f"unsupported task {task!r}; allowed: {', '.join(_TASKS)} "
            "(multi-label tasks are not supported)"
        )
    canonical = _TASKS[task]
    if canonical == "binary" and n_classes != 2:
        raise ValueError(f"a binary task needs probs with 2 columns; got {n_classes}")
    return canonical


def _check_threshold(threshold: float | None) -> float | None:
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not (
        isinstance(threshold, int | float | np.floating) and 0.0 <= threshold <= 1.0
    ):
        raise ValueError(f"threshold must be a number in [0, 1]; got {threshold!r}")
    return float(threshold)


def _predict(p: np.ndarray, task: str, threshold: float | None) -> np.ndarray:
    """The argmax of the class scores, for every model and task (one rule: a sigmoid model's
    two scores need not sum to 1, so ``p1 > 0.5`` and the argmax can disagree). A binary task
    thresholds the positive column only when a threshold is asked for explicitly."""
    if task == "binary" and threshold is not None:
        return (p[:, -1] > threshold).astype(np.int64)
    return p.argmax(axis=1)


def _balanced_accuracy(pred: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    support = np.bincount(y, minlength=n_classes)
    hits = np.bincount(y[pred == y], minlength=n_classes)
    present = support > 0
    return float(np.mean(hits[present] / support[present]))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x, ties sharing their average rank (as scipy.stats.rankdata)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts_group = np.r_[True, xs[1:] != xs[:-1]]
    group = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.r_[starts[1:], x.size]
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = ((starts + 1 + ends) / 2.0)[group]
    return ranks


def _binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC-AUC as the Mann-Whitney statistic (ties count one half), exactly sklearn's value."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    rank_sum = _average_ranks(scores)[positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _roc_auc(p: np.ndarray, y: np.ndarray) -> float:
    n_classes = p.shape[1]
    present = np.flatnonzero(np.bincount(y, minlength=n_classes))
    if present.size < 2:
        warnings.warn(
            f"ROC-AUC is undefined: only class {present.tolist()} occurs in the labels; "
            "returning NaN",
            UndefinedMetricWarning,
            stacklevel=3,
        )
        return math.nan
    if n_classes == 2:
        return _binary_auc(p[:, 1], y == 1)
    if present.size < n_classes:
        absent = sorted(set(range(n_classes)) - set(present.tolist()))
        warnings.warn(
            f"classes {absent} do not occur in the labels; ROC-AUC is the one-vs-rest macro "
            f"mean over the {present.size} present classes only",
            UndefinedMetricWarning,
            stacklevel=3,
        )
    return float(np.mean([_binary_auc(p[:, c], y == c) for c in present]))


def _ece(p: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer; got {n_bins!r}")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    # bins (lo, hi]; a confidence of exactly 0 joins the first bin
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    acc_sum = np.bincount(bins, weights=correct, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=confidence, minlength=n_bins)
    # sum_b (n_b / N) |acc_b - conf_b| = sum_b |acc_sum_b - conf_sum_b| / N
    return float(np.abs(acc_sum - conf_sum).sum() / y.size)


def predict(probs: Any, task: str = "multi-class", threshold: float | None = None) -> np.ndarray:
    """Predicted classes (N,): the argmax; ``probs[:, -1] > threshold`` if a binary task
    gives a threshold."""
    p = _validate_probs(probs)
    return _predict(p, _task(task, p.shape[1]), _check_threshold(threshold))


def accuracy(probs: Any, labels: Any, task: str = "multi-class",
             threshold: float | None = None) -> float:
    """Fraction of samples whose predicted class (see :func:`predict`) equals the label."""
    p, y = _validate(probs, labels)
    pred = _predict(p, _task(task, p.shape[1]), _check_threshold(threshold))
    return float(np.mean(pred == y))


def balanced_accuracy(
    probs: Any, labels: Any, task: str = "multi-class", threshold: float | None = None
) -> float:
    """Mean per-class recall over the classes present in labels (as sklearn's).

    Predictions as :func:`predict` (the argmax unless a binary threshold is given).
    """
    p, y = _validate(probs, labels)
    pred = _predict(p, _task(task, p.shape[1]), _check_threshold(threshold))
    return _balanced_accuracy(pred, y, p.shape[1])


def roc_auc(probs: Any, labels: Any) -> float:
    """ROC-AUC: on the positive column for K = 2, else one-vs-rest macro over present classes.

    Classes absent from labels are left out of the macro mean (with a warning); with a single
    present class the AUC is undefined and NaN is returned (with a warning).
    """
    p, y = _validate(probs, labels)
    return _roc_auc(p, y)


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Top-label ECE: equal-width confidence bins (lo, hi], sum of |acc - conf| x bin fraction."""
    p, y = _validate(probs, labels)
    return _ece(p, y, n_bins)


def cell_metrics(
    probs: Any, labels: Any, task: str, *, n_bins: int = 15
) -> dict[str, float | int]:
    """All metrics of one (model, dataset, corruption, severity) cell.

    Returns accuracy, balanced_accuracy, auc, ece, error (1 - accuracy), balanced_error
    (1 - balanced accuracy) and n. The predicted class is the argmax of the class scores for
    every model and task, so ``error == mean(argmax(probs) != labels)`` in every cell (for
    softmax scores this is MedMNIST-C's binary ``p1 > 0.5`` rule, ties aside).
    """
    p, y = _validate(probs, labels)
    _task(task, p.shape[1])
    pred = p.argmax(axis=1)
    acc = float(np.mean(pred == y))
    bal = _balanced_accuracy(pred, y, p.shape[1])
    return {
        "accuracy": acc,
        "balanced_accuracy": bal,
        "auc": _roc_auc(p, y),
        "ece": _ece(p, y, n_bins),
        "error": 1.0 - acc,
        "balanced_error": 1.0 - bal,
        "n": int(y.size),
    }


SMALL_N = 100
"""Fewer test images than this make a cell's numbers noisy (flagged)."""
SMALL_CLASS = 10
"""Fewer images of some class than this make its recall, and balanced accuracy, noisy."""
DEGENERATE_SHARE = 0.95
"""A model predicting one class for more than this share of the images is flagged."""


def cell_diagnostics(probs: Any, labels: Any) -> dict[str, Any]:
    """What a reader should check in one cell: the confusion matrix (rows = true class), the
    recall of each class (None where a class is absent), and flags for small n (fewer than
    100 images, or fewer than 10 of a present class) and degenerate predictions (one class
    for more than 95 % of the images). Predictions are the argmax, as in :func:`cell_metrics`.
    """
    p, y = _validate(probs, labels)
    k = p.shape[1]
    pred = p.argmax(axis=1)
    confusion = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    support = confusion.sum(axis=1)
    recall = [None if n == 0 else float(confusion[c, c] / n) for c, n in enumerate(support)]
    shares = np.bincount(pred, minlength=k) / y.size
    flags = []
    if y.size < SMALL_N:
        flags.append(f"small n: {y.size} images (< {SMALL_N})")
    small = [c for c, n in enumerate(support) if 0 < n < SMALL_CLASS]
    if small:
        flags.append(f"small class: class(es) {small} have fewer than {SMALL_CLASS} images")
    if shares.max() > DEGENERATE_SHARE:
        flags.append(f"degenerate: predicts class {int(shares.argmax())} for "
                     f"{shares.max():.0%} of the images")
    return {"confusion": confusion.tolist(), "recall": recall, "flags": flags}
