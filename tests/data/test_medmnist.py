"""load_medmnist on the real shared files; metadata; offline error messages."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from medmnist import INFO

from medrobust.data import (
    MEDMNIST_2D_FLAGS,
    DataNotFoundError,
    NpzFormatError,
    load_medmnist,
    medmnist_filename,
    medmnist_info,
    save_npz_atomic,
)
from medrobust.data import medmnist as medmnist_module


def _reference(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as f:
        return f[f"{split}_images"], f[f"{split}_labels"]


def test_breastmnist_grey(shared_data: Path) -> None:
    ds = load_medmnist("breastmnist", "test", root=shared_data, download=False)
    images, labels = _reference(shared_data / "medmnist" / "breastmnist.npz", "test")
    assert (len(ds), ds.channels, ds.image_size) == (156, 1, (28, 28))
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, labels[:, 0])
    assert ds.labels.shape == (156,) and ds.labels.dtype == np.int64
    assert ds.class_names == ["malignant", "normal, benign"]
    assert (ds.task, ds.modality, ds.split) == ("binary", "breast ultrasound", "test")
    assert ds.source == str(shared_data / "medmnist" / "breastmnist.npz")


def test_retinamnist_rgb_meaningful_names(shared_data: Path) -> None:
    ds = load_medmnist("retinamnist", "train", root=shared_data, download=False)
    images, labels = _reference(shared_data / "medmnist" / "retinamnist.npz", "train")
    assert (len(ds), ds.channels) == (1080, 3)
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, labels.ravel())
    assert ds.class_names[0] == "no diabetic retinopathy"
    assert ds.class_names[4] == "proliferative diabetic retinopathy"
    assert ds.task == "ordinal" and ds.modality == "fundus photography"
    assert medmnist_info("retinamnist").raw_class_names == ("0", "1", "2", "3", "4")


def test_pneumoniamnist_splits(shared_data: Path) -> None:
    sizes = {s: len(load_medmnist("pneumoniamnist", s, root=shared_data, download=False))
             for s in ("train", "val", "test")}  # fmt: skip
    assert sizes == {"train": 4708, "val": 524, "test": 624}
    ds = load_medmnist("pneumoniamnist", "val", root=shared_data, download=False)
    assert ds.class_names == ["normal", "pneumonia"] and ds.modality == "chest X-ray"


def test_pathmnist_subset_missing_train_split(shared_data: Path) -> None:
    ds = load_medmnist("pathmnist", "test", root=shared_data, download=False)
    assert (len(ds), ds.channels, ds.num_classes) == (718, 3, 9)
    assert ds.source.endswith("medmnist-subsets/pathmnist.npz")
    assert ds.modality == "colon pathology (H&E)"
    with pytest.raises(NpzFormatError, match=r"no 'train' split.*splits present: \['test'\]"):
        load_medmnist("pathmnist", "train", root=shared_data, download=False)


def test_missing_file_offline_message(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as err:
        load_medmnist("octmnist", size=224, root=tmp_path, download=False)
    msg = str(err.value)
    assert "octmnist_224.npz" in msg
    assert str(tmp_path / "medmnist" / "octmnist_224.npz") in msg
    assert INFO["octmnist"]["url_224"] in msg and INFO["octmnist"]["MD5_224"] in msg
    assert isinstance(err.value, FileNotFoundError)


def test_failed_download_becomes_data_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(flag: str, size: int, root: Path) -> Path:
        raise OSError("network unreachable")

    monkeypatch.setattr(medmnist_module, "download_medmnist", offline)
    with pytest.raises(DataNotFoundError, match="download failed: network unreachable") as err:
        load_medmnist("bloodmnist", root=tmp_path, download=True)
    assert INFO["bloodmnist"]["url"] in str(err.value) and INFO["bloodmnist"]["MD5"] in str(
        err.value
    )
    assert list(tmp_path.iterdir()) == []


def test_download_is_used_when_file_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake(flag: str, size: int, root: Path) -> Path:
        rng = np.random.default_rng(0)
        return save_npz_atomic(
            root / "medmnist" / medmnist_filename(flag, size),
            test_images=rng.integers(0, 256, (5, 64, 64), dtype=np.uint8),
            test_labels=np.array([[0], [1], [0], [1], [1]], np.uint8),
        )

    monkeypatch.setattr(medmnist_module, "download_medmnist", fake)
    ds = load_medmnist("pneumoniamnist", size=64, root=tmp_path)
    assert ds.image_size == (64, 64) and ds.source == str(
        tmp_path / "medmnist" / "pneumoniamnist_64.npz"
    )


def test_chestmnist_stays_multilabel(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, (4, 14)).astype(np.uint8)
    save_npz_atomic(tmp_path / "chestmnist.npz",
                    test_images=np.zeros((4, 28, 28), np.uint8), test_labels=labels)  # fmt: skip
    ds = load_medmnist("chestmnist", root=tmp_path, download=False)
    assert ds.task == "multi-label" and ds.labels.shape == (4, 14)
    np.testing.assert_array_equal(ds.labels, labels)


def test_corrupt_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "medmnist").mkdir()
    bad = tmp_path / "medmnist" / "dermamnist.npz"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(NpzFormatError, match=re.escape(str(bad))):
        load_medmnist("dermamnist", root=tmp_path, download=False)


def test_metadata_for_every_2d_flag() -> None:
    assert len(MEDMNIST_2D_FLAGS) == 12
    for flag in MEDMNIST_2D_FLAGS:
        info = medmnist_info(flag)
        assert len(info.class_names) == len(INFO[flag]["label"]) and info.modality
        assert info.channels == INFO[flag]["n_channels"]
    assert medmnist_info("chestmnist").task == "multi-label"
    assert medmnist_info("organamnist").modality == "abdominal CT"
    with pytest.raises(ValueError, match="unknown MedMNIST 2D flag 'organmnist3d'"):
        medmnist_info("organmnist3d")
    with pytest.raises(ValueError, match="size must be one of"):
        medmnist_filename("pathmnist", 32)
    assert medmnist_filename("pathmnist", 224) == "pathmnist_224.npz"


def test_download_failure_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets.utils as tv_utils

    def broken(url: str, root: str, filename: str, md5: str) -> None:
        assert url == INFO["breastmnist"]["url"] and md5 == INFO["breastmnist"]["MD5"]
        (Path(root) / filename).write_bytes(b"half a file")
        raise RuntimeError("File not found or corrupted.")

    monkeypatch.setattr(tv_utils, "download_url", broken)
    with pytest.raises(DataNotFoundError, match="corrupted"):
        load_medmnist("breastmnist", root=tmp_path, download=True)
    assert list((tmp_path / "medmnist").iterdir()) == []
