"""Robustness summaries (CE, mCE, relative mCE, BE, rBE) on hand-made grids and real baselines."""

from __future__ import annotations

import numpy as np
import pytest

from medrobust.evaluation import baselines
from medrobust.evaluation.metrics import UndefinedMetricWarning
from medrobust.evaluation.robustness import (
    ErrorGrid,
    IncompleteGridWarning,
    balanced_error_ratio,
    clean_error_ratio,
    corruption_error,
    error_grid,
    mean_corruption_error,
    relative_balanced_error_ratio,
    relative_corruption_error,
    relative_mean_corruption_error,
)

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
    with pytest.raises(ValueError, match=r"severity must be an integer in 1\.\.5"):
        error_grid({"a": {0: 0.1}})
    with pytest.raises(ValueError, match="neither 'error' nor 'accuracy'"):
        error_grid([{"corruption": "a", "severity": 1, "auc": 0.7}])
