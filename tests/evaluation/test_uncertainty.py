"""Bootstrap uncertainty: resampling, per-cell replicates, CIs against closed forms and SciPy."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from medrobust.evaluation import metrics, robustness
from medrobust.evaluation.uncertainty import (
    cell_replicates,
    estimate,
    robustness_replicates,
    stratified_resamples,
)


def _probs(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    logits = rng.normal(size=(n, k))
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def _probs_with_accuracy(rng: np.random.Generator, y: np.ndarray, k: int, acc: float) -> np.ndarray:
    """Probabilities whose argmax is the label for a fraction ``acc`` of the images."""
    pred = np.where(rng.random(y.size) < acc, y, (y + rng.integers(1, k, y.size)) % k)
    p = np.full((y.size, k), 0.1 / (k - 1))
    p[np.arange(y.size), pred] = 0.9
    return p


def test_resamples_are_stratified_seeded_and_start_with_the_original() -> None:
    y = np.array([0] * 30 + [1] * 7 + [2] * 13)
    res = stratified_resamples(y, 200, seed=3)
    assert res.counts.shape == (50, 201)
    assert np.all(res.counts[:, 0] == 1)
    for k, n_k in ((0, 30), (1, 7), (2, 13)):
        assert np.all(res.counts[y == k, 1:].sum(axis=0) == n_k)
    assert np.array_equal(res.counts, stratified_resamples(y, 200, seed=3).counts)
    assert not np.array_equal(res.counts, stratified_resamples(y, 200, seed=4).counts)


def test_point_estimates_equal_the_cell_metrics() -> None:
    rng = np.random.default_rng(0)
    for k in (2, 5):
        y = rng.integers(0, k, 300)
        probs = _probs(rng, 300, k)
        probs[:20] = probs[0]  # ties in the scores
        rep = cell_replicates(stratified_resamples(y, 10, seed=0), [probs])[0]
        m = metrics.cell_metrics(probs, y, "multi-class")
        assert rep.error[0] == pytest.approx(m["error"])
        assert rep.balanced_error[0] == pytest.approx(m["balanced_error"])
        assert rep.auc[0] == pytest.approx(m["auc"])


def test_auc_of_a_resample_equals_the_auc_of_the_materialised_resample() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 120)
    probs = np.round(_probs(rng, 120, 3), 1)  # coarse scores: many ties
    probs /= probs.sum(axis=1, keepdims=True)
    res = stratified_resamples(y, 5, seed=2)
    rep = cell_replicates(res, [probs])[0]
    for b in range(1, 6):
        idx = np.repeat(np.arange(120), res.counts[:, b].astype(int))
        assert rep.auc[b] == pytest.approx(metrics.roc_auc(probs[idx], y[idx]))
        assert rep.error[b] == pytest.approx(1 - metrics.accuracy(probs[idx], y[idx]))
        assert rep.balanced_error[b] == pytest.approx(
            1 - metrics.balanced_accuracy(probs[idx], y[idx]))


def test_binomial_error_ci_width_matches_the_normal_approximation() -> None:
    """At n = 10,000 and error 0.2 the bootstrap CI is the binomial one, within 10 %."""
    rng = np.random.default_rng(5)
    n, p_err = 10_000, 0.2
    y = np.zeros(n, dtype=np.int64)
    probs = np.zeros((n, 2))
    wrong = rng.random(n) < p_err
    probs[np.arange(n), wrong.astype(int)] = 1.0
    rep = cell_replicates(stratified_resamples(y, 1000, seed=0), [probs], auc=False)[0]
    est = estimate(rep.error)
    e = float(wrong.mean())
    normal_width = 2 * 1.959964 * math.sqrt(e * (1 - e) / n)
    width = est.ci95[1] - est.ci95[0]
    assert abs(width - normal_width) / normal_width < 0.10
    assert est.ci95[0] < e < est.ci95[1]


def test_percentile_ci_agrees_with_scipy_bootstrap() -> None:
    rng = np.random.default_rng(7)
    n = 400
    y = np.zeros(n, dtype=np.int64)  # one class: the stratified bootstrap is the plain one
    correct = rng.random(n) < 0.7
    probs = np.zeros((n, 2))
    probs[np.arange(n), (~correct).astype(int)] = 1.0
    ours = estimate(cell_replicates(stratified_resamples(y, 4000, seed=1), [probs],
                                    auc=False)[0].error)
    theirs = stats.bootstrap((1.0 - correct,), np.mean, n_resamples=4000, method="percentile",
                             vectorized=True, rng=np.random.default_rng(2)).confidence_interval
    assert ours.ci95[0] == pytest.approx(theirs.low, abs=0.006)
    assert ours.ci95[1] == pytest.approx(theirs.high, abs=0.006)


def test_paired_differences_use_the_same_images() -> None:
    rng = np.random.default_rng(11)
    n, k = 600, 4
    y = rng.integers(0, k, n)
    a = _probs_with_accuracy(rng, y, k, 0.70)
    same = cell_replicates(stratified_resamples(y, 500, seed=0), [a, a.copy()])
    diff = estimate(same[0].error - same[1].error)
    assert diff.value == 0.0 and diff.ci95 == (0.0, 0.0)
    assert diff.excludes(0.0) is False  # identical models: not significant

    # b fixes 60 of a's mistakes: paired, that is a clear improvement ...
    b = a.copy()
    fix = np.flatnonzero(a.argmax(1) != y)[:60]
    b[fix] = np.eye(k)[y[fix]]
    reps = cell_replicates(stratified_resamples(y, 500, seed=0), [a, b])
    paired = estimate(reps[1].error - reps[0].error)
    assert paired.value == pytest.approx(-60 / n)
    assert paired.excludes(0.0) is True
    # ... narrower than the difference of independently resampled errors
    other = cell_replicates(stratified_resamples(y, 500, seed=1), [b])[0]
    unpaired = estimate(other.error - reps[0].error)
    assert (paired.ci95[1] - paired.ci95[0]) < 0.75 * (unpaired.ci95[1] - unpaired.ci95[0])


def test_robustness_point_estimates_equal_the_metrics_and_the_guard_leaves_cells_out() -> None:
    rng = np.random.default_rng(3)
    n_rep = 20
    grid_m = {c: {s: rng.uniform(0.1, 0.6, n_rep) for s in (1, 2, 3)} for c in "abc"}
    grid_b = {c: {s: rng.uniform(0.2, 0.7, n_rep) for s in (1, 2, 3)} for c in "abc"}
    clean_m, clean_b = rng.uniform(0.05, 0.1, n_rep), rng.uniform(0.05, 0.1, n_rep)
    # corruption c barely degrades the baseline: relative CE must leave it out
    for s in (1, 2, 3):
        grid_b["c"][s] = clean_b + 0.001
    mce = robustness_replicates(grid_m, grid_b, list("abc"), min_denominator=0.01)
    rel = robustness_replicates(grid_m, grid_b, list("abc"), model_clean=clean_m,
                                baseline_clean=clean_b, min_denominator=0.01)

    def first(grid: dict) -> dict:
        return {c: {s: float(v[0]) for s, v in levels.items()} for c, levels in grid.items()}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = robustness.mean_corruption_error(
            robustness.ErrorGrid(first(grid_m), clean=float(clean_m[0])),
            robustness.ErrorGrid(first(grid_b), clean=float(clean_b[0])), list("abc"),
            severities=(1, 2, 3))
        ref_rel = robustness.relative_mean_corruption_error(
            robustness.ErrorGrid(first(grid_m), clean=float(clean_m[0])),
            robustness.ErrorGrid(first(grid_b), clean=float(clean_b[0])), list("abc"),
            severities=(1, 2, 3), min_denominator=0.01)
    assert mce.value[0] == pytest.approx(ref.value)
    assert rel.value[0] == pytest.approx(ref_rel.value)
    assert rel.used == ("a", "b") and "c" in rel.left_out and "below" in rel.left_out["c"]
    assert rel.expected == 3


def test_fixed_baseline_numbers_and_undefined_estimates() -> None:
    model = {"a": {1: np.array([0.2, 0.3]), 2: np.array([0.4, 0.5])}}
    be = robustness_replicates(model, {"a": 0.5}, ["a", "b"], min_denominator=1e-3, scale=1.0)
    assert be.value[0] == pytest.approx(0.6) and be.left_out == {"b": "no model errors"}
    assert estimate(None).value is None
    assert estimate(np.array([np.nan, 1.0])).value is None
    wide = estimate(np.array([1.0, 0.5, np.nan, 1.5, 1.0]))
    assert wide.ci95[1] == math.inf  # an undefined resample widens the interval


def test_the_baseline_against_itself_is_exactly_100_even_where_a_resample_has_no_error() -> None:
    """A resample in which the baseline makes no error on a corruption gives 0/0: the baseline's
    own CE is still exactly 100 there, while another model's positive error over 0 is unbounded."""
    base = {"a": {1: np.array([0.2, 0.0, 0.1])}}
    other = {"a": {1: np.array([0.3, 0.1, 0.1])}}
    own = robustness_replicates(base, base, ["a"], min_denominator=0.01)
    assert np.array_equal(own.value, [100.0, 100.0, 100.0])
    mce = robustness_replicates(other, base, ["a"], min_denominator=0.01)
    assert mce.value[0] == 150.0 and np.isinf(mce.value[1]) and mce.value[2] == 100.0
