"""Benchmark layouts: MediMeta-C and official MedMNIST-C round trips, completeness checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medrobust.data import (
    LAYOUTS,
    MEDIMETA_C_DATASETS,
    DataNotFoundError,
    ImageDataset,
    IncompleteBenchmarkError,
    benchmark_dataset_info,
    get_layout,
    is_complete,
    list_medimeta_c,
    list_medmnist_c,
    load_medmnist,
    medimeta_c_path,
    medmnist_c_path,
    open_medimeta_c_writer,
    open_medmnist_c_writer,
    read_medimeta_c,
    read_medmnist_c,
    require_medimeta_c,
    tensor_to_images,
    write_medimeta_c,
)


def _fake_corrupt(images: np.ndarray, severity: int) -> np.ndarray:
    """A deterministic stand-in corruption: brighten by 10 grey levels per severity."""
    return np.clip(images.astype(np.int16) + 10 * severity, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def breast(shared_data: Path) -> ImageDataset:
    return load_medmnist("breastmnist", "test", root=shared_data, download=False).subset(
        slice(0, 20)
    )


def test_medimeta_c_paths(tmp_path: Path) -> None:
    assert medimeta_c_path(tmp_path, "oct", "test") == tmp_path / "oct/test/clean.npz"
    assert medimeta_c_path(tmp_path, "oct", "val", "clean") == tmp_path / "oct/val/clean.npz"
    assert (
        medimeta_c_path(tmp_path, "oct", "test", "Gaussian Noise", 3)
        == tmp_path / "oct/test/gaussian_noise_severity_3.npz"
    )
    with pytest.raises(ValueError, match="needs a severity"):
        medimeta_c_path(tmp_path, "oct", "test", "pixelate")
    with pytest.raises(ValueError, match="clean condition has no severity"):
        medimeta_c_path(tmp_path, "oct", "test", None, 2)
    with pytest.raises(ValueError, match=r"severity must be an integer in 1\.\.5"):
        medimeta_c_path(tmp_path, "oct", "test", "pixelate", 0)
    with pytest.raises(ValueError, match="plain name"):
        medimeta_c_path(tmp_path, "../oct", "test")


def test_medimeta_c_streamed_round_trip(tmp_path: Path, breast: ImageDataset) -> None:
    root = tmp_path / "MediMeta-C"
    write_medimeta_c(root, "breastmnist", "test", None, None, breast.images, breast.labels)
    for severity in (1, 2):
        with open_medimeta_c_writer(
            root, "breastmnist", "test", "brightness", severity,
            labels=breast.labels, image_shape=breast.images.shape[1:],
        ) as writer:  # fmt: skip
            assert not writer.path.exists()
            for _, batch, _ in breast.iter_batches(7):
                writer.write("images", _fake_corrupt(tensor_to_images(batch), severity))
        assert is_complete(writer.path, rows=len(breast))
    clean = read_medimeta_c(root, "breastmnist", "test")
    np.testing.assert_array_equal(clean.images, breast.images)
    np.testing.assert_array_equal(clean.labels, breast.labels)
    assert clean.class_names == breast.class_names and clean.task == "binary"
    sev2 = read_medimeta_c(root, "breastmnist", "test", "brightness", 2)
    np.testing.assert_array_equal(sev2.images, _fake_corrupt(breast.images, 2))
    assert isinstance(sev2.images, np.memmap)  # stored uncompressed -> memory-mapped
    with np.load(sev2.source) as f:  # the reference loader reads the same file
        assert sorted(f.files) == ["images", "labels"]
        np.testing.assert_array_equal(f["images"], sev2.images)
    assert list_medimeta_c(root, "breastmnist", "test") == [("brightness", 1), ("brightness", 2)]
    assert list_medimeta_c(root, "breastmnist", "val") == []


def test_require_names_every_missing_file(tmp_path: Path) -> None:
    images, labels = np.zeros((3, 8, 8, 3), np.uint8), np.array([0, 1, 2])
    write_medimeta_c(tmp_path, "pneumonia", "test", None, None, images, labels)
    for severity in (1, 2, 3):
        write_medimeta_c(tmp_path, "pneumonia", "test", "pixelate", severity, images, labels)
    with pytest.raises(IncompleteBenchmarkError) as err:
        require_medimeta_c(tmp_path, "pneumonia", "test", ["pixelate", "contrast"], (1, 2, 3, 4))
    msg = str(err.value)
    assert msg.startswith("5 of 9 benchmark files missing")
    for name in ["pixelate_severity_4", "contrast_severity_1", "contrast_severity_4"]:
        assert f"{name}.npz" in msg
    assert "pixelate_severity_3" not in msg
    assert isinstance(err.value, DataNotFoundError)
    found = require_medimeta_c(tmp_path, "pneumonia", "test", ["pixelate"], (1, 2, 3))
    assert sorted(found) == [("clean", 0), ("pixelate", 1), ("pixelate", 2), ("pixelate", 3)]
    ds = read_medimeta_c(tmp_path, "pneumonia", "test", "pixelate", 3)
    assert ds.class_names == ["normal", "bacterial pneumonia", "viral pneumonia"]
    with pytest.raises(DataNotFoundError, match=r"zoom_blur_severity_1\.npz"):
        read_medimeta_c(tmp_path, "pneumonia", "test", "zoom_blur", 1)


def test_failed_writer_leaves_nothing_and_resume_check(tmp_path: Path) -> None:
    labels = np.array([0, 1, 1, 0])
    with pytest.raises(RuntimeError), open_medimeta_c_writer(
        tmp_path, "fundus", "test", "contrast", 1, labels=labels, image_shape=(8, 8, 3)
    ) as writer:  # fmt: skip
        writer.write("images", np.zeros((2, 8, 8, 3), np.uint8))
        raise RuntimeError("generator crashed")
    assert not is_complete(writer.path)
    assert list(writer.path.parent.iterdir()) == []
    with pytest.raises(ValueError, match=r"image_shape must be \(H, W\) or \(H, W, 3\)"):
        open_medimeta_c_writer(tmp_path, "fundus", "test", "contrast", 1, labels=labels,
                               image_shape=(8, 8, 4))  # fmt: skip


def test_medimeta_c_metadata() -> None:
    assert sorted(MEDIMETA_C_DATASETS) == sorted(
        ["aml", "fundus", "mammo_calc", "mammo_mass", "pneumonia", "oct", "pbc"]
    )
    counts = {k: len(v.class_names) for k, v in MEDIMETA_C_DATASETS.items()}
    assert counts == {"aml": 15, "fundus": 2, "mammo_calc": 2, "mammo_mass": 2,
                      "pneumonia": 3, "oct": 4, "pbc": 8}  # fmt: skip
    assert benchmark_dataset_info("aml").modality == "blood cell microscopy"
    assert benchmark_dataset_info("oct").raw_class_names == ("CNV", "DME", "DRUSEN", "NORMAL")
    assert benchmark_dataset_info("retinamnist").task == "ordinal"
    with pytest.raises(ValueError, match="no metadata for dataset 'mystery'"):
        benchmark_dataset_info("mystery")


def test_medmnist_c_severity_major_round_trip(tmp_path: Path, breast: ImageDataset) -> None:
    n = len(breast)
    with open_medmnist_c_writer(
        tmp_path, "breastmnist", "brightness_up",
        labels=breast.labels, image_shape=breast.image_size,
    ) as writer:  # fmt: skip
        for severity in range(1, 6):
            assert writer.rows_written("test_images") == (severity - 1) * n
            for _, batch, _ in breast.iter_batches(8):
                writer.write("test_images", _fake_corrupt(tensor_to_images(batch), severity))
    path = medmnist_c_path(tmp_path, "breastmnist", "brightness_up")
    assert writer.path == path
    with np.load(path) as f:  # the official layout, as CorruptedMedMNIST reads it
        assert f["test_images"].shape == (5 * n, 28, 28)
        assert f["test_labels"].shape == (5 * n, 1)
        for k in range(1, 6):  # image i at severity k is row (k-1)*N + i
            np.testing.assert_array_equal(
                f["test_images"][(k - 1) * n : k * n], _fake_corrupt(breast.images, k)
            )
    for k in (1, 3, 5):
        ds = read_medmnist_c(tmp_path, "breastmnist", "brightness_up", k)
        np.testing.assert_array_equal(ds.images, _fake_corrupt(breast.images, k))
        np.testing.assert_array_equal(ds.labels, breast.labels)
        assert ds.class_names == breast.class_names and ds.split == "test"
    assert list_medmnist_c(tmp_path, "breastmnist") == ["brightness_up"]
    with pytest.raises(ValueError, match=r"severity must be an integer in 1\.\.5"):
        read_medmnist_c(tmp_path, "breastmnist", "brightness_up", 6)


def test_read_official_compressed_medmnist_c_file(tmp_path: Path) -> None:
    """Files written by medmnistc use np.savez_compressed; severity blocks are streamed."""
    rng = np.random.default_rng(5)
    n = 6
    images = rng.integers(0, 256, (5 * n, 8, 8, 3), dtype=np.uint8)
    labels = np.tile(rng.integers(0, 9, (n, 1)).astype(np.uint8), (5, 1))
    (tmp_path / "pathmnist").mkdir()
    np.savez_compressed(tmp_path / "pathmnist/pixelate.npz", test_images=images, test_labels=labels)
    ds = read_medmnist_c(tmp_path, "pathmnist", "pixelate", 4)
    np.testing.assert_array_equal(ds.images, images[3 * n : 4 * n])
    np.testing.assert_array_equal(ds.labels, labels[:n, 0])
    np.savez(tmp_path / "pathmnist/bad.npz", test_images=images[:-1], test_labels=labels[:-1])
    with pytest.raises(ValueError, match=r"29 rows.*expected 5\*N rows"):
        read_medmnist_c(tmp_path, "pathmnist", "bad", 1)
    with pytest.raises(DataNotFoundError, match=r"fog\.npz"):
        read_medmnist_c(tmp_path, "pathmnist", "fog", 1)


def test_layout_registry_paths_and_plans(tmp_path: Path) -> None:
    medimeta, official = get_layout("medimeta-c", tmp_path), get_layout("medmnist-c", tmp_path)
    assert set(LAYOUTS) == {"medimeta-c", "medmnist-c"}
    with pytest.raises(ValueError, match="unknown layout 'imagenet-c'; known: medimeta-c, medmnist-c"):
        get_layout("imagenet-c", tmp_path)
    # clean: None and ("clean", 0) name the same file in both layouts
    assert medimeta.path_for("oct", "test") == medimeta.path_for("oct", "test", "clean", 0)
    assert official.path_for("oct", "test", None) == tmp_path / "oct/clean.npz"
    assert official.path_for("oct", "test", "fog", 4) == medmnist_c_path(tmp_path, "oct", "fog")
    plan = medimeta.files("oct", "test", ["fog"], (1, 2))
    assert [(f.corruption, f.severities, f.blocks) for f in plan] == [
        ("clean", (), 1), ("fog", (1,), 1), ("fog", (2,), 1)]
    plan = official.files("oct", "test", ["fog"], (1, 2))
    assert [(f.path.name, f.severities, f.blocks) for f in plan] == [
        ("clean.npz", (), 1), ("fog.npz", (1, 2), 2)]
    with pytest.raises(IncompleteBenchmarkError, match=r"(?s)1 of 1 benchmark files missing.*oct/fog\.npz"):
        official.require("oct", "test", ["fog"], (1, 2))  # the official layout needs no clean file


def test_medmnist_c_reads_a_clean_file_and_a_partial_generated_file(
    tmp_path: Path, breast: ImageDataset
) -> None:
    """A generated MedMNIST-C folder holds clean.npz (one block) and files with the severities
    its manifest lists; both are read by block, not as five official severity blocks."""
    layout = get_layout("medmnist-c", tmp_path)
    n = len(breast)
    files = layout.files("breastmnist", "test", ["fog"], (2, 5))
    for file in files:
        with layout.open_writer(file, labels=breast.labels, image_shape=breast.image_size) as w:
            for s in file.severities or (0,):
                w.write("test_images", _fake_corrupt(breast.images, s))
    manifest = {"files": {str(f.path.relative_to(tmp_path)): {"severities": list(f.severities)}
                          for f in files}}
    layout.manifest_path("breastmnist", "test").write_text(json.dumps(manifest))
    clean = layout.read("breastmnist", "test")
    assert len(clean) == n
    np.testing.assert_array_equal(clean.images, _fake_corrupt(breast.images, 0))
    np.testing.assert_array_equal(layout.read("breastmnist", "test", "fog", 5).images,
                                  _fake_corrupt(breast.images, 5))
    with pytest.raises(ValueError, match=r"holds severities \[2, 5\], not 3"):
        layout.read("breastmnist", "test", "fog", 3)
