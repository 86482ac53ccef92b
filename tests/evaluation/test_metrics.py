"""Cell metrics against sklearn and hand computations."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    roc_auc_score,
)

from medrobust.evaluation.metrics import (
    UndefinedMetricWarning,
    accuracy,
    balanced_accuracy,
    cell_metrics,
    expected_calibration_error,
    predict,
    roc_auc,
)


def random_cell(n: int, k: int, seed: int, *, decimals: int | None = None):
    """Seeded probabilities (N, K) that are informative about seeded labels (N,)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if decimals is not None:  # coarse scores create ties for the AUC
        probs = np.round(probs, decimals)
        probs[:, -1] = 1.0 - probs[:, :-1].sum(axis=1)
        probs = np.clip(probs, 0.0, 1.0)
    return probs, labels


# ----------------------------------------------------------------------------- cell metrics


@pytest.mark.parametrize(("k", "seed"), [(2, 0), (2, 1), (5, 2), (5, 3), (8, 4)])
def test_cell_metrics_match_sklearn(k: int, seed: int) -> None:
    probs, labels = random_cell(400, k, seed)
    task = "binary" if k == 2 else "multi-class"
    pred = probs.argmax(axis=1)
    expected_auc = (
        roc_auc_score(labels, probs[:, 1])
        if k == 2
        else roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    )
    assert accuracy(probs, labels) == pytest.approx(accuracy_score(labels, pred), abs=1e-12)
    assert balanced_accuracy(probs, labels, task) == pytest.approx(
        balanced_accuracy_score(labels, pred), abs=1e-12
    )
    assert roc_auc(probs, labels) == pytest.approx(expected_auc, abs=1e-12)

    cell = cell_metrics(probs, labels, task)
    assert cell["accuracy"] == pytest.approx(accuracy_score(labels, pred), abs=1e-12)
    assert cell["error"] == pytest.approx(1.0 - accuracy_score(labels, pred), abs=1e-12)
    assert cell["balanced_error"] == pytest.approx(
        1.0 - balanced_accuracy_score(labels, pred), abs=1e-12
    )
    assert cell["auc"] == pytest.approx(expected_auc, abs=1e-12)
    assert cell["ece"] == pytest.approx(expected_calibration_error(probs, labels), abs=1e-15)
    assert cell["n"] == 400
    assert 0.5 < cell["auc"] < 1.0  # informative scores: the check is not vacuous


@pytest.mark.parametrize("k", [2, 5])
def test_roc_auc_with_ties_matches_sklearn(k: int) -> None:
    probs, labels = random_cell(300, k, seed=10 + k, decimals=1)
    assert len(np.unique(probs[:, 1])) < 20  # many ties
    expected = (
        roc_auc_score(labels, probs[:, 1])
        if k == 2
        else np.mean([roc_auc_score(labels == c, probs[:, c]) for c in range(k)])
    )
    assert roc_auc(probs, labels) == pytest.approx(expected, abs=1e-12)


def test_binary_scoring_is_the_argmax_and_a_threshold_only_on_request() -> None:
    probs, labels = random_cell(300, 2, seed=5)
    cell = cell_metrics(probs, labels, "binary-class")
    pred = probs.argmax(axis=1)
    assert cell["error"] == pytest.approx(np.mean(pred != labels), abs=1e-12)
    assert cell["balanced_error"] == pytest.approx(
        1.0 - balanced_accuracy_score(labels, pred), abs=1e-12)
    # sigmoid scores (SigLIP) need not sum to 1: both below 0.5 -> argmax, not "p1 > 0.5"
    sigmoid = np.array([[0.10, 0.30], [0.45, 0.20], [0.70, 0.90]])
    assert cell_metrics(sigmoid, np.array([1, 0, 1]), "binary")["error"] == 0.0
    np.testing.assert_array_equal(predict(sigmoid, "binary"), [1, 0, 1])
    for threshold in (0.3, 0.5, 0.7):
        explicit = (probs[:, -1] > threshold).astype(int)
        np.testing.assert_array_equal(predict(probs, "binary", threshold), explicit)
        assert accuracy(probs, labels, "binary", threshold) == pytest.approx(
            accuracy_score(labels, explicit), abs=1e-12)


def test_ordinal_and_multiclass_use_argmax() -> None:
    probs, labels = random_cell(200, 5, seed=6)
    np.testing.assert_array_equal(predict(probs, "ordinal-regression"), probs.argmax(axis=1))
    a = cell_metrics(probs, labels, "ordinal")
    b = cell_metrics(probs, labels, "multi-class")
    assert a == b


def test_balanced_accuracy_ignores_classes_absent_from_labels() -> None:
    probs, labels = random_cell(200, 5, seed=7)
    labels = np.where(labels == 3, 0, labels)  # class 3 never occurs, but may be predicted
    pred = probs.argmax(axis=1)
    assert (pred == 3).any()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns that y_pred has classes not in y_true
        expected = balanced_accuracy_score(labels, pred)
    assert balanced_accuracy(probs, labels) == pytest.approx(expected, abs=1e-12)


def test_roc_auc_absent_class_uses_present_classes_with_warning() -> None:
    probs, labels = random_cell(200, 5, seed=8)
    labels = np.where(labels == 2, 4, labels)
    expected = np.mean([roc_auc_score(labels == c, probs[:, c]) for c in (0, 1, 3, 4)])
    with pytest.warns(UndefinedMetricWarning, match=r"classes \[2\]"):
        assert roc_auc(probs, labels) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("k", [2, 4])
def test_roc_auc_single_class_is_nan_with_warning(k: int) -> None:
    probs, _ = random_cell(50, k, seed=9)
    with pytest.warns(UndefinedMetricWarning, match="only class"):
        assert np.isnan(roc_auc(probs, np.ones(50, dtype=int)))


def test_ece_hand_computed() -> None:
    probs = np.array(
        [
            [0.90, 0.10],  # conf .90, correct  -> bin (.8, 1]
            [0.95, 0.05],  # conf .95, wrong    -> bin (.8, 1]
            [0.30, 0.70],  # conf .70, correct  -> bin (.6, .8]
            [0.45, 0.55],  # conf .55, wrong    -> bin (.4, .6]
            [0.60, 0.40],  # conf .60, correct  -> bin (.4, .6]: right edge is inclusive
        ]
    )
    labels = np.array([0, 1, 1, 0, 0])
    # (.8,1]: |0.5 - 0.925| * 2/5 = .17; (.6,.8]: |1 - .7| * 1/5 = .06; (.4,.6]: |.5 - .575| * 2/5 = .03
    assert expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(0.26, abs=1e-12)
    # one bin: |accuracy - mean confidence| = |3/5 - 3.7/5|
    assert expected_calibration_error(probs, labels, n_bins=1) == pytest.approx(0.14, abs=1e-12)
    # perfectly calibrated one-hot predictions
    eye = np.eye(3)[[0, 1, 2, 1]]
    assert expected_calibration_error(eye, np.array([0, 1, 2, 1])) == 0.0


def test_ece_default_bins_against_loop_reference() -> None:
    probs, labels = random_cell(500, 5, seed=11)
    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    edges = np.linspace(0, 1, 16)
    expected = 0.0
    for lo, hi in itertools.pairwise(edges):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            expected += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    assert expected_calibration_error(probs, labels) == pytest.approx(expected, abs=1e-12)


def test_torch_and_column_labels_are_accepted() -> None:
    probs, labels = random_cell(100, 4, seed=12)
    expected = cell_metrics(probs, labels, "multi-class")
    as_torch = cell_metrics(
        torch.from_numpy(probs).to(torch.float32), torch.from_numpy(labels), "multi-class"
    )
    for key in ("accuracy", "balanced_accuracy", "error", "balanced_error", "n"):
        assert as_torch[key] == expected[key]
    assert as_torch["auc"] == pytest.approx(expected["auc"], abs=1e-6)
    assert as_torch["ece"] == pytest.approx(expected["ece"], abs=1e-6)
    column = cell_metrics(probs, labels[:, None].astype(np.uint8), "multi-class")
    assert column == expected
    bf16 = torch.from_numpy(probs).to(torch.bfloat16)
    assert accuracy(bf16, torch.from_numpy(labels)) == pytest.approx(expected["accuracy"], abs=0.05)


@pytest.mark.parametrize(
    ("probs", "labels", "error", "match"),
    [
        (np.full((4, 3), 1 / 3), np.zeros(5, int), ValueError, "4 rows but labels has 5"),
        (np.full(4, 0.5), np.zeros(4, int), ValueError, r"shape \(N, K\)"),
        (np.ones((4, 1)), np.zeros(4, int), ValueError, "K >= 2"),
        (np.full((0, 3), 1 / 3), np.zeros(0, int), ValueError, "empty"),
        (np.array([[0.5, np.nan], [0.5, 0.5]]), np.zeros(2, int), ValueError, "NaN"),
        (np.array([[0.5, np.inf], [0.5, 0.5]]), np.zeros(2, int), ValueError, "NaN or infinite"),
        (np.array([[2.0, -1.0], [0.5, 0.5]]), np.zeros(2, int), ValueError, "softmax"),
        (np.full((2, 3), 1 / 3), np.array([0, 3]), ValueError, r"labels must lie in \[0, 2\]"),
        (np.full((2, 3), 1 / 3), np.array([-1, 0]), ValueError, "got labels in"),
        (np.full((2, 3), 1 / 3), np.array([0.0, 1.0]), TypeError, "integer class indices"),
        (np.full((2, 3), 1 / 3), np.zeros((2, 2), int), ValueError, "labels must have shape"),
        (np.array([["a", "b"]]), np.zeros(1, int), TypeError, "real-valued"),
    ],
)
def test_bad_cell_inputs_raise(probs, labels, error, match) -> None:
    with pytest.raises(error, match=match):
        cell_metrics(probs, labels, "multi-class")


def test_bad_task_threshold_and_bins_raise() -> None:
    probs, labels = random_cell(20, 3, seed=13)
    with pytest.raises(ValueError, match="unsupported task 'multi-label"):
        cell_metrics(probs, labels, "multi-label, binary-class")
    with pytest.raises(ValueError, match="binary task needs probs with 2 columns"):
        cell_metrics(probs, labels, "binary")
    with pytest.raises(ValueError, match="threshold"):
        predict(probs, "multi-class", threshold=1.5)
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(probs, labels, n_bins=0)


def test_cell_diagnostics_confusion_recall_and_flags() -> None:
    from medrobust.evaluation.metrics import cell_diagnostics

    probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.6, 0.4, 0.0], [0.2, 0.8, 0.0]])
    labels = np.array([0, 1, 1, 1])
    d = cell_diagnostics(probs, labels)
    assert d["confusion"] == [[1, 0, 0], [2, 1, 0], [0, 0, 0]]
    assert d["recall"] == [1.0, pytest.approx(1 / 3), None]
    assert any(f.startswith("small n: 4 images") for f in d["flags"])
    assert any(f.startswith("small class") for f in d["flags"])
    assert not any(f.startswith("degenerate") for f in d["flags"])  # 75 % class 0
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    one = np.tile([0.3, 0.7], (500, 1))
    flags = cell_diagnostics(one, y)["flags"]
    assert flags == ["degenerate: predicts class 1 for 100% of the images"]
