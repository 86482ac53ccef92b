"""Bootstrap uncertainty of every number a robustness report prints, from stored predictions.

Test-set noise is estimated by a bootstrap over test images, stratified by class (each
resample keeps every class's image count, as the test set was drawn per class), seeded and
vectorised: one resample is a row of per-image counts, so a cell's accuracy over all resamples
is one matrix product and the ROC-AUC one sorted cumulative sum. The same resamples serve
every corruption, severity and model of a dataset, so ratios such as CE = sum E_f / sum E_b
and paired differences between models are resampled coherently (paired bootstrap).

Replicates are arrays whose first entry is the estimate on the original test set and whose
other ``B`` entries are the resamples; :func:`estimate` turns them into a value and a
percentile 95 % confidence interval. Summaries over corruptions (:func:`robustness_replicates`)
keep the set of corruptions fixed by the original data, so every replicate averages the same
corruptions.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_RESAMPLES",
    "CellReplicates",
    "Estimate",
    "Resamples",
    "RobustnessReplicates",
    "cell_replicates",
    "dataset_seed",
    "estimate",
    "estimates",
    "original_only",
    "robustness_replicates",
    "stratified_resamples",
]

DEFAULT_RESAMPLES = 1000
"""B, the number of bootstrap resamples (``--bootstrap B``; 0 turns the bootstrap off)."""
LEVEL = 0.95


@dataclass(frozen=True)
class Resamples:
    """Stratified bootstrap resamples of one test set: ``counts[i, b]`` = copies of image i.

    ``counts`` has ``B + 1`` columns; column 0 is all ones (the original test set), so every
    replicate computed from it carries its point estimate first. Images are rows, so the
    per-image sums of a sorted AUC pass run over contiguous memory.
    """

    counts: np.ndarray
    labels: np.ndarray
    seed: int

    @property
    def n_resamples(self) -> int:
        return self.counts.shape[1] - 1

    @property
    def n_images(self) -> int:
        return self.counts.shape[0]


def dataset_seed(seed: int, dataset: str) -> int:
    """A per-dataset seed: stable across runs and Python versions (CRC32 of the name)."""
    return (int(seed) * 1_000_003 + zlib.crc32(dataset.encode())) % (2**32)


def stratified_resamples(labels: np.ndarray, n_resamples: int, seed: int) -> Resamples:
    """``n_resamples`` class-stratified bootstrap resamples of a test set with ``labels``.

    Within each class of n_k images, n_k images are drawn with replacement, uniformly, from a
    ``numpy.random.default_rng(seed)`` generator; classes are drawn in label order.
    """
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    if y.size == 0:
        raise ValueError("cannot bootstrap an empty test set")
    if isinstance(n_resamples, bool) or int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be a positive integer; got {n_resamples!r}")
    b, n = int(n_resamples), y.size
    rng = np.random.default_rng(seed)
    flat = np.zeros(b * n, dtype=np.int64)
    rows = (np.arange(b, dtype=np.int64) * n)[:, None]
    for k in np.unique(y):
        members = np.flatnonzero(y == k)
        draws = members[rng.integers(0, members.size, size=(b, members.size))]
        flat += np.bincount((rows + draws).ravel(), minlength=b * n)
    counts = np.empty((n, b + 1), dtype=np.float32)
    counts[:, 0] = 1.0
    counts[:, 1:] = flat.reshape(b, n).T
    return Resamples(counts=counts, labels=y, seed=int(seed))


def original_only(labels: np.ndarray, seed: int = 0) -> Resamples:
    """No resampling: only the original test set (point estimates, no intervals)."""
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    return Resamples(counts=np.ones((y.size, 1), dtype=np.float32), labels=y, seed=int(seed))


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its percentile confidence interval (None where undefined)."""

    value: float | None
    ci95: tuple[float, float] | None

    def scaled(self, factor: float) -> Estimate:
        """The same estimate in other units (e.g. x 100 for percent)."""
        if self.value is None:
            return self
        ci = None if self.ci95 is None else (self.ci95[0] * factor, self.ci95[1] * factor)
        return Estimate(self.value * factor, ci)

    def excludes(self, reference: float) -> bool | None:
        """Whether the interval excludes ``reference`` (None without an interval)."""
        if self.ci95 is None:
            return None
        return not (self.ci95[0] <= reference <= self.ci95[1])

    def to_json(self) -> dict[str, Any]:
        """``{"value", "ci95"}``; an unbounded interval end (an undefined resample) is null."""
        ci = None if self.ci95 is None else [v if math.isfinite(v) else None for v in self.ci95]
        return {"value": self.value, "ci95": ci}


def estimate(replicates: np.ndarray | None, level: float = LEVEL) -> Estimate:
    """Point estimate (entry 0) and the percentile interval of the other entries.

    Non-finite resample values (a ratio whose denominator vanished in that resample) count as
    the interval's extremes: the interval widens rather than silently dropping them.
    """
    if replicates is None:
        return Estimate(None, None)
    r = np.asarray(replicates, dtype=np.float64)
    if r.size == 0 or not math.isfinite(r[0]):
        return Estimate(None, None)
    if r.size == 1:
        return Estimate(float(r[0]), None)
    rest = np.where(np.isnan(r[1:]), np.inf, r[1:])
    alpha = (1.0 - level) / 2.0
    with np.errstate(invalid="ignore"):
        lo, hi = np.quantile(rest, [alpha, 1.0 - alpha], method="linear")
    if math.isnan(lo):  # interpolating between infinities
        lo = np.quantile(rest, alpha, method="lower")
    if math.isnan(hi):
        hi = np.quantile(rest, 1.0 - alpha, method="higher")
    return Estimate(float(r[0]), (float(lo), float(hi)))


def estimates(replicates: np.ndarray, level: float = LEVEL) -> list[Estimate]:
    """:func:`estimate` of each row of a (M, B + 1) array, with one quantile call."""
    r = np.asarray(replicates, dtype=np.float64)
    if r.ndim != 2 or r.shape[1] < 2 or not np.isfinite(r[:, 1:]).all():
        return [estimate(row, level) for row in r]
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(r[:, 1:], [alpha, 1.0 - alpha], axis=1, method="linear")
    return [Estimate(float(v), (float(a), float(b))) if math.isfinite(v) else Estimate(None, None)
            for v, a, b in zip(r[:, 0], lo, hi, strict=True)]


# ----------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class CellReplicates:
    """Replicates (``B + 1`` values each) of one cell's metrics; AUC None if undefined."""

    error: np.ndarray
    balanced_error: np.ndarray
    auc: np.ndarray | None

    def of(self, error_type: str) -> np.ndarray:
        return self.balanced_error if error_type == "balanced_error" else self.error


def _weighted_auc(counts: np.ndarray, scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC (ties one half) of every resample, from per-image counts (N, R).

    The negatives, sorted by score, are summed cumulatively once; each positive then reads how
    many resampled negatives lie below its score (searchsorted), so the work is two gathers
    and one cumulative sum of the count matrix. Counts and their sums are integers below
    2**24, exact in float32; the final sums are accumulated in float64.
    """
    neg = np.flatnonzero(~positive)
    order = neg[np.argsort(scores[neg], kind="mergesort")]
    sorted_neg = scores[order]
    cum = np.zeros((order.size + 1, counts.shape[1]), dtype=np.float32)
    np.cumsum(counts[order], axis=0, out=cum[1:])
    pos = np.flatnonzero(positive)
    lo = np.searchsorted(sorted_neg, scores[pos], side="left")
    hi = np.searchsorted(sorted_neg, scores[pos], side="right")
    below = cum[lo]
    tied = np.flatnonzero(hi != lo)
    if tied.size:
        below[tied] += 0.5 * (cum[hi[tied]] - below[tied])
    w_pos = counts[pos]
    below *= w_pos
    wins = below.sum(axis=0, dtype=np.float64)
    return wins / (w_pos.sum(axis=0, dtype=np.float64) * cum[-1].astype(np.float64))


def _auc_replicates(res: Resamples, probs: np.ndarray) -> np.ndarray | None:
    present = np.unique(res.labels)
    if present.size < 2:
        return None
    if probs.shape[1] == 2:
        return _weighted_auc(res.counts, probs[:, 1], res.labels == 1)
    return np.mean([_weighted_auc(res.counts, probs[:, c], res.labels == c) for c in present],
                   axis=0)


def cell_replicates(res: Resamples, probs: Sequence[np.ndarray], *, auc: bool = True
                    ) -> list[CellReplicates]:
    """Replicates of error, balanced error and AUC of cells scored on the same test images.

    ``probs`` holds one (N, K) array per cell, rows in the order of ``res.labels``. The
    predicted class is the argmax of the class scores. Balanced accuracy is the mean recall
    over the classes present, which stratification keeps fixed in every resample.
    """
    y = res.labels
    if not probs:
        return []
    correct = np.stack([np.asarray(p).argmax(axis=1) == y for p in probs], axis=1)
    _, inverse, support = np.unique(y, return_inverse=True, return_counts=True)
    per_image = np.stack([np.full(y.size, 1.0 / y.size),
                          1.0 / (support[inverse] * support.size)], axis=1)
    weights = (correct[:, :, None] * per_image[:, None, :]).reshape(y.size, -1)
    acc = (weights.T @ res.counts.astype(np.float64)).reshape(len(probs), 2, -1)
    out = []
    for j, p in enumerate(probs):
        area = _auc_replicates(res, np.asarray(p, dtype=np.float64)) if auc else None
        out.append(CellReplicates(error=1.0 - acc[j, 0], balanced_error=1.0 - acc[j, 1],
                                  auc=area))
    return out


# ----------------------------------------------------------------------------- summaries

SeverityReplicates = Mapping[int, np.ndarray]
"""Replicates of one corruption's error per severity."""


@dataclass(frozen=True)
class RobustnessReplicates:
    """Replicates of a ratio summary over corruptions, with the corruptions it left out.

    ``value`` is the mean over the corruptions in ``used`` of the per-corruption ratio (x
    ``scale``); ``left_out`` maps each expected corruption that did not enter to the reason.
    """

    value: np.ndarray | None
    per_corruption: dict[str, np.ndarray]
    used: tuple[str, ...]
    left_out: dict[str, str] = field(default_factory=dict)
    expected: int = 0


def _severity_mean(levels: SeverityReplicates) -> np.ndarray:
    return np.mean([levels[s] for s in sorted(levels)], axis=0)


def robustness_replicates(
    model: Mapping[str, SeverityReplicates],
    baseline: Mapping[str, SeverityReplicates | float],
    corruptions: Sequence[str],
    *,
    model_clean: np.ndarray | None = None,
    baseline_clean: np.ndarray | float | None = None,
    min_denominator: float,
    scale: float = 100.0,
) -> RobustnessReplicates:
    """mCE-style summaries over replicates: mean over corruptions of a per-corruption ratio.

    Without clean errors: CE(c) = mean_s E_f(c, s) / mean_s E_b(c, s) (mCE; with a fixed
    severity-averaged baseline, MedMNIST-C's BE). With both clean errors: relative CE(c) =
    (mean_s E_f - E_f,clean) / (mean_s E_b - E_b,clean) (relative mCE; rBE). ``baseline``
    values are replicates per severity or one fixed published number. A corruption whose
    baseline denominator on the original test set is below ``min_denominator`` is left out
    (with the reason), as is one that either side lacks; the kept set is the same in every
    replicate.
    """
    relative = model_clean is not None and baseline_clean is not None
    per: dict[str, np.ndarray] = {}
    left: dict[str, str] = {}
    for c in corruptions:
        if c not in model or c not in baseline:
            left[c] = f"no {'model' if c not in model else 'baseline'} errors"
            continue
        base = baseline[c]
        b_mean = (np.asarray(base, dtype=np.float64) if not isinstance(base, Mapping)
                  else _severity_mean(base))
        m_mean = _severity_mean(model[c])
        if relative:
            m_mean = m_mean - model_clean
            b_mean = b_mean - baseline_clean
        first = float(np.ravel(b_mean)[0])
        if first < min_denominator:
            what = "degradation" if relative else "error"
            left[c] = (f"baseline {what} {first:.4g} is below {min_denominator:.4g}")
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = scale * m_mean / b_mean
        # An error equal to the baseline's is a ratio of exactly 1, also where both are 0 in a
        # resample (the baseline against itself); only a positive error over 0 is unbounded.
        per[c] = np.where(m_mean == b_mean, scale, ratio)
    value = np.mean(list(per.values()), axis=0) if per else None
    return RobustnessReplicates(value=value, per_corruption=per, used=tuple(per),
                                left_out=left, expected=len(corruptions))
