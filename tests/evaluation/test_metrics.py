"""Cell metrics against sklearn and hand computations; robustness summaries on hand-made grids."""

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

from medrobust.evaluation import baselines
from medrobust.evaluation.metrics import (
    ErrorGrid,
    IncompleteGridWarning,
    UndefinedMetricWarning,
    accuracy,
    balanced_accuracy,
    balanced_error_ratio,
    cell_metrics,
    clean_error_ratio,
    corruption_error,
    error_grid,
    expected_calibration_error,
    mean_corruption_error,
    predict,
    relative_balanced_error_ratio,
    relative_corruption_error,
    relative_mean_corruption_error,
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


def test_binary_balanced_error_uses_medmnist_c_threshold_rule() -> None:
    probs, labels = random_cell(300, 2, seed=5)
    for threshold in (0.3, 0.5, 0.7):
        pred = (probs[:, -1] > threshold).astype(int)
        np.testing.assert_array_equal(predict(probs, "binary", threshold), pred)
        cell = cell_metrics(probs, labels, "binary-class", threshold=threshold)
        assert cell["balanced_error"] == pytest.approx(
            1.0 - balanced_accuracy_score(labels, pred), abs=1e-12
        )
        assert cell["accuracy"] == pytest.approx(accuracy_score(labels, pred), abs=1e-12)
    # a positive-class probability of exactly 0.5 is negative under "> thr"
    tie = np.array([[0.5, 0.5], [0.4, 0.6]])
    np.testing.assert_array_equal(predict(tie, "binary"), [0, 1])


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
        cell_metrics(probs, labels, "multi-class", threshold=1.5)
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(probs, labels, n_bins=0)


# ----------------------------------------------------------------------------- summaries
# Hand-computed grid: 2 corruptions x 3 severities.
#   CE_a = (.2+.3+.4)/(.3+.4+.5) = .75      CE_b = (.1+.1+.4)/(.2+.3+.5) = .6      mCE = 67.5
#   rCE_a = (.9-3*.1)/(1.2-3*.2) = 1.0      rCE_b = (.6-.3)/(1.0-.6) = .75   relative mCE = 87.5
#   clean error ratio = .1/.2 x 100 = 50
SEVERITIES = (1, 2, 3)
MODEL = {"clean": 0.1, "a": {1: 0.2, 2: 0.3, 3: 0.4}, "b": {1: 0.1, 2: 0.1, 3: 0.4}}
BASE = {"clean": 0.2, "a": {1: 0.3, 2: 0.4, 3: 0.5}, "b": {1: 0.2, 2: 0.3, 3: 0.5}}


def as_records(table: dict, model: str) -> list[dict]:
    records = [{"model": model, "corruption": "clean", "severity": None, "error": table["clean"]}]
    for c, levels in table.items():
        if c != "clean":
            records += [
                {"model": model, "corruption": c, "severity": s, "error": e}
                for s, e in levels.items()
            ]
    return records


def test_corruption_errors_hand_computed() -> None:
    assert corruption_error(MODEL["a"], BASE["a"]) == pytest.approx(0.75, abs=1e-12)
    assert corruption_error(MODEL["b"], BASE["b"]) == pytest.approx(0.6, abs=1e-12)
    assert relative_corruption_error(MODEL["a"], 0.1, BASE["a"], 0.2) == pytest.approx(1.0)
    assert relative_corruption_error(MODEL["b"], 0.1, BASE["b"], 0.2) == pytest.approx(0.75)
    assert clean_error_ratio(0.1, 0.2) == pytest.approx(50.0, abs=1e-12)
    # severity-averaged baseline (published tables): mean_s E_f / E_b
    assert corruption_error(MODEL["a"], 0.4) == pytest.approx(0.75, abs=1e-12)


def test_mean_corruption_errors_hand_computed() -> None:
    mce = mean_corruption_error(MODEL, BASE, ["a", "b"], severities=SEVERITIES)
    assert mce.value == pytest.approx(67.5, abs=1e-10)
    assert mce.per_corruption == pytest.approx({"a": 75.0, "b": 60.0}, abs=1e-10)
    assert (mce.metric, mce.error_type, mce.scale) == ("mCE", "error", 100.0)
    assert (mce.n_corruptions_covered, mce.n_corruptions_expected, mce.complete) == (2, 2, True)
    assert mce.missing == [] and mce.undefined == []

    rel = relative_mean_corruption_error(MODEL, BASE, ["a", "b"], severities=SEVERITIES)
    assert rel.value == pytest.approx(87.5, abs=1e-10)
    assert rel.per_corruption == pytest.approx({"a": 100.0, "b": 75.0}, abs=1e-10)


def test_records_table_with_several_models_equals_mapping() -> None:
    records = as_records(MODEL, "robust") + as_records(BASE, "clip")
    model = error_grid(records, select={"model": "robust"})
    base = error_grid(records, select={"model": "clip"})
    assert base.name == "clip" and base.clean == pytest.approx(0.2)
    from_records = mean_corruption_error(model, base, ["a", "b"], severities=SEVERITIES)
    from_mapping = mean_corruption_error(MODEL, BASE, ["a", "b"], severities=SEVERITIES)
    assert from_records.value == pytest.approx(from_mapping.value, abs=1e-12)
    assert from_records.baseline == "clip"
    with pytest.raises(ValueError, match=r"occurs twice.*select="):
        error_grid(records)
    with pytest.raises(ValueError, match="no record matches"):
        error_grid(records, select={"model": "medclip"})


def test_cell_metric_records_and_json_string_severities() -> None:
    model = {
        "clean": {"accuracy": 0.9, "balanced_accuracy": 0.8},
        "a": {str(s): {"error": e, "balanced_error": 0.5} for s, e in MODEL["a"].items()},
    }
    grid = error_grid(model)
    assert grid.clean == pytest.approx(0.1)
    assert grid.corrupted["a"] == pytest.approx({1: 0.2, 2: 0.3, 3: 0.4})
    assert error_grid(model, error_type="balanced_error").clean == pytest.approx(0.2)


def test_baselines_looked_up_by_name_not_position() -> None:
    reference = mean_corruption_error(MODEL, BASE, ["a", "b"], severities=SEVERITIES)
    permuted_base = {"b": {3: 0.5, 1: 0.2, 2: 0.3}, "clean": 0.2, "a": BASE["a"]}
    permuted = mean_corruption_error(MODEL, permuted_base, ["b", "a"], severities=SEVERITIES)
    assert permuted.per_corruption == pytest.approx(reference.per_corruption, abs=1e-12)
    assert permuted.value == pytest.approx(reference.value, abs=1e-12)
    swapped = mean_corruption_error(
        MODEL, {"a": BASE["b"], "b": BASE["a"]}, ["a", "b"], severities=SEVERITIES
    )
    assert swapped.per_corruption["a"] != pytest.approx(reference.per_corruption["a"])


def test_incomplete_grid_is_flagged() -> None:
    partial = {"clean": 0.1, "a": MODEL["a"]}
    with pytest.warns(IncompleteGridWarning, match=r"covers 1 of 2 .*b \(no model errors\)"):
        summary = mean_corruption_error(partial, BASE, ["a", "b"], severities=SEVERITIES)
    assert summary.value == pytest.approx(75.0, abs=1e-10)
    assert (summary.complete, summary.missing) == (False, ["b"])
    assert (summary.n_corruptions_covered, summary.n_corruptions_expected) == (1, 2)

    lacking = {**MODEL, "b": {1: 0.1, 2: 0.1}}
    with pytest.warns(IncompleteGridWarning, match=r"model lacks severities \[3\]"):
        summary = mean_corruption_error(lacking, BASE, ["a", "b"], severities=SEVERITIES)
    assert summary.missing == ["b"] and not summary.complete

    with pytest.warns(IncompleteGridWarning, match="covers 2 of 3"):
        summary = mean_corruption_error(MODEL, BASE, ["a", "b", "c"], severities=SEVERITIES)
    assert summary.missing == ["c"] and summary.value == pytest.approx(67.5)


def test_extra_corruptions_in_grid_are_ignored() -> None:
    model = {**MODEL, "held_out": {1: 0.9, 2: 0.9, 3: 0.9}}
    summary = mean_corruption_error(model, BASE, ["a", "b"], severities=SEVERITIES)
    assert summary.complete and summary.value == pytest.approx(67.5)


def test_severity_mismatch_raises() -> None:
    with pytest.raises(ValueError, match=r"severities of .* do not match"):
        corruption_error({1: 0.2, 2: 0.3}, {1: 0.3, 3: 0.5})
    with pytest.raises(ValueError, match=r"severities \[4\] outside the expected"):
        mean_corruption_error(
            {**MODEL, "a": {**MODEL["a"], 4: 0.5}}, BASE, ["a", "b"], severities=SEVERITIES
        )


def test_zero_negative_and_near_zero_denominators_are_undefined() -> None:
    with pytest.warns(UndefinedMetricWarning, match=r"clean error ratio.* is zero"):
        assert clean_error_ratio(0.1, 0.0) is None
    with pytest.warns(UndefinedMetricWarning, match=r"corruption 'a'.* is zero"):
        assert corruption_error({1: 0.1}, {1: 0.0}, corruption="a") is None
    with pytest.warns(UndefinedMetricWarning, match="near zero"):
        assert relative_corruption_error({1: 0.3}, 0.1, {1: 0.2005}, 0.2) is None
    with pytest.warns(UndefinedMetricWarning, match="negative"):
        assert relative_corruption_error({1: 0.3}, 0.1, {1: 0.15}, 0.2) is None
    # negative numerators (the model improves under corruption) are fine
    assert relative_corruption_error({1: 0.05}, 0.1, {1: 0.3}, 0.2) == pytest.approx(-0.5)


def pneumonia_model_grid(rng: np.random.Generator) -> tuple[ErrorGrid, float, dict[str, float]]:
    clean, alex = baselines.load_medmnist_c_alexnet("pneumoniamnist")
    grid = {"clean": 0.08}
    for c in alex:
        grid[c] = {s: float(rng.uniform(0.05, 0.5)) for s in range(1, 6)}
    return error_grid(grid, error_type="balanced_error"), clean, alex


def test_medmnist_c_be_and_rbe_on_real_baselines() -> None:
    model, alex_clean, alex = pneumonia_model_grid(np.random.default_rng(0))
    names = list(alex)

    be = balanced_error_ratio(model, "pneumoniamnist", names)
    expected_be = {c: np.mean(list(model.corrupted[c].values())) / alex[c] for c in names}
    assert be.per_corruption == pytest.approx(expected_be, rel=1e-12)
    assert be.value == pytest.approx(np.mean(list(expected_be.values())), rel=1e-12)
    assert be.complete and be.scale == 1.0 and be.error_type == "balanced_error"
    assert be.baseline == "medmnist_c_alexnet/pneumoniamnist"

    with pytest.warns(UndefinedMetricWarning) as caught:
        rbe = relative_balanced_error_ratio(model, "pneumoniamnist", names)
    messages = " ".join(str(w.message) for w in caught)
    assert "'contrast_up'" in messages and "'gamma_corr_up'" in messages
    assert "negative" in messages
    assert rbe.undefined == ["contrast_up", "gamma_corr_up"]
    assert rbe.per_corruption["contrast_up"] is None
    assert (rbe.n_corruptions_covered, rbe.n_corruptions_expected, rbe.complete) == (11, 13, False)
    defined = {
        c: (np.mean(list(model.corrupted[c].values())) - 0.08) / (alex[c] - alex_clean)
        for c in names
        if c not in ("contrast_up", "gamma_corr_up")
    }
    assert rbe.value == pytest.approx(np.mean(list(defined.values())), rel=1e-12)


def test_alexnet_against_itself_scores_100() -> None:
    clean, alex = baselines.load_medmnist_c_alexnet("bloodmnist")
    itself = {"clean": clean, **{c: dict.fromkeys(range(1, 6), e) for c, e in alex.items()}}
    be = balanced_error_ratio(
        error_grid(itself, error_type="balanced_error"), "bloodmnist", list(alex)
    )
    assert be.value == pytest.approx(1.0, rel=1e-12) and be.complete
    mce = mean_corruption_error(
        dict(baselines.IMAGENET_C_ALEXNET),
        baselines.IMAGENET_C_ALEXNET,
        baselines.IMAGENET_C_CORRUPTIONS,
    )
    assert mce.value == pytest.approx(100.0, rel=1e-12) and mce.n_corruptions_covered == 15


def test_error_type_mismatch_and_bad_tables_raise() -> None:
    model = error_grid(MODEL)  # 'error'
    with pytest.raises(ValueError, match="same error type"):
        balanced_error_ratio(model, "pneumoniamnist", ["pixelate"])
    with pytest.raises(ValueError, match="same error type"):
        mean_corruption_error(model, error_grid(BASE, error_type="balanced_error"), ["a"])
    with pytest.raises(ValueError, match=r"fractions in \[0, 1\]"):
        error_grid({"clean": 10.0})
    with pytest.raises(ValueError, match="other than 'clean'"):
        mean_corruption_error(MODEL, BASE, ["a", "clean"])
    with pytest.raises(ValueError, match="duplicates"):
        mean_corruption_error(MODEL, BASE, ["a", "a"])
    with pytest.raises(ValueError, match="empty"):
        mean_corruption_error(MODEL, BASE, [])
    with pytest.raises(ValueError, match="needs the baseline's clean error"):
        relative_mean_corruption_error(MODEL, {"a": BASE["a"]}, ["a"], severities=SEVERITIES)
    with pytest.raises(KeyError, match="known datasets"):
        balanced_error_ratio(MODEL, "cifar10", ["a"])
    with pytest.raises(ValueError, match="positive integer"):
        error_grid({"a": {0: 0.1}})
    with pytest.raises(ValueError, match="neither 'error' nor 'accuracy'"):
        error_grid([{"corruption": "a", "severity": 1, "auc": 0.7}])
