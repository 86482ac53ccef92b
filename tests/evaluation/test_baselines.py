"""Packaged AlexNet baselines: contents, lookup by name, errors on bad names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medrobust.evaluation import baselines

REFERENCE_JSON = (
    Path(__file__).resolve().parents[3]
    / "shared"
    / "reference"
    / "medmnist_c_alexnet_baselines.json"
)

# ImageNet-C AlexNet severity-averaged top-1 errors, as listed in the project's metrics reference
IMAGENET_C_EXPECTED = {
    "gaussian_noise": 0.886428,
    "shot_noise": 0.894468,
    "impulse_noise": 0.922640,
    "defocus_blur": 0.819880,
    "glass_blur": 0.826268,
    "motion_blur": 0.785948,
    "zoom_blur": 0.798360,
    "snow": 0.866816,
    "frost": 0.826572,
    "fog": 0.819324,
    "brightness": 0.564592,
    "contrast": 0.853204,
    "elastic_transform": 0.646056,
    "pixelate": 0.717840,
    "jpeg_compression": 0.606500,
}


def test_packaged_medmnist_c_table_equals_reference() -> None:
    if not REFERENCE_JSON.is_file():
        pytest.skip(f"reference table not found at {REFERENCE_JSON}")
    reference = json.loads(REFERENCE_JSON.read_text())["datasets"]
    assert set(baselines.medmnist_c_datasets()) == set(reference)
    for dataset, entry in reference.items():
        clean, errors = baselines.load_medmnist_c_alexnet(dataset)
        assert clean == entry["clean"]
        assert errors == entry["corruptions"]


def test_medmnist_c_table_shape_and_known_values() -> None:
    datasets = baselines.medmnist_c_datasets()
    assert len(datasets) == 12
    n_pairs = sum(len(baselines.load_medmnist_c_alexnet(d)[1]) for d in datasets)
    assert n_pairs == 131  # MedMNIST-C hard-codes 131 (dataset, corruption) pairs
    clean, errors = baselines.load_medmnist_c_alexnet("bloodmnist")
    assert clean == pytest.approx(0.01837, abs=1e-5)
    assert errors["pixelate"] == pytest.approx(0.05975618949678589, rel=1e-12)
    assert baselines.medmnist_c_alexnet_error("pneumoniamnist", "contrast_up") == pytest.approx(
        0.09529914529914527, rel=1e-12
    )
    for d in datasets:
        clean, errors = baselines.load_medmnist_c_alexnet(d)
        assert 0.0 < clean < 1.0
        assert all(0.0 < e < 1.0 for e in errors.values())


def test_negative_alexnet_degradations_are_the_documented_ones() -> None:
    clean, errors = baselines.load_medmnist_c_alexnet("pneumoniamnist")
    negative = sorted(c for c, e in errors.items() if e - clean < 0)
    assert negative == ["contrast_up", "gamma_corr_up"]
    assert errors["contrast_up"] - clean == pytest.approx(-0.0056, abs=5e-5)


def test_loaded_baseline_is_a_copy() -> None:
    _, errors = baselines.load_medmnist_c_alexnet("octmnist")
    errors["pixelate"] = 0.0
    assert baselines.load_medmnist_c_alexnet("octmnist")[1]["pixelate"] == pytest.approx(0.3124)


def test_imagenet_c_alexnet() -> None:
    assert dict(baselines.IMAGENET_C_ALEXNET) == IMAGENET_C_EXPECTED
    assert tuple(IMAGENET_C_EXPECTED) == baselines.IMAGENET_C_CORRUPTIONS
    held_out = {"speckle_noise", "gaussian_blur", "spatter", "saturate"}
    assert not held_out & set(baselines.IMAGENET_C_CORRUPTIONS)
    with pytest.raises(TypeError):
        baselines.IMAGENET_C_ALEXNET["fog"] = 0.0  # type: ignore[index]


def test_available_baselines() -> None:
    available = baselines.available_baselines()
    assert available["imagenet_c_alexnet"] == ("imagenet",)
    assert available["medmnist_c_alexnet"] == baselines.medmnist_c_datasets()
    assert "pneumoniamnist" in available["medmnist_c_alexnet"]


def test_bad_dataset_name_lists_known_datasets() -> None:
    with pytest.raises(KeyError, match="known datasets: bloodmnist, breastmnist"):
        baselines.load_medmnist_c_alexnet("bloodmnist_c")


def test_bad_corruption_name_lists_known_corruptions() -> None:
    with pytest.raises(KeyError, match="known corruptions for breastmnist: pixelate"):
        baselines.medmnist_c_alexnet_error("breastmnist", "gaussian_noise")
