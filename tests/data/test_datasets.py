"""ImageDataset: validation messages, subsets keep original indices, bounded batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from medrobust.data import (
    ImageDataset,
    images_to_tensor,
    load_npz,
    resolve_data_root,
    save_npz_atomic,
    tensor_to_images,
)
from medrobust.data.paths import DATA_ROOT_ENV, default_data_root


def _make(**overrides: Any) -> ImageDataset:
    rng = np.random.default_rng(0)
    kwargs: dict[str, Any] = {
        "name": "toy",
        "split": "test",
        "images": rng.integers(0, 256, size=(6, 5, 4, 3), dtype=np.uint8),
        "labels": np.array([0, 1, 2, 0, 1, 2]),
        "class_names": ["a", "b", "c"],
        "modality": "synthetic",
        "task": "multi-class",
        "source": "memory",
    }
    kwargs.update(overrides)
    return ImageDataset(**kwargs)


def test_properties_rgb_and_grey() -> None:
    ds = _make()
    assert (len(ds), ds.channels, ds.image_size, ds.num_classes) == (6, 3, (5, 4), 3)
    assert ds.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.indices, np.arange(6))
    grey = _make(
        images=np.zeros((6, 5, 4), np.uint8), labels=np.array([[0], [1], [2], [0], [1], [2]])
    )
    assert grey.channels == 1
    assert grey.labels.shape == (6,)  # (N, 1) squeezed for single-label tasks


@pytest.mark.parametrize(
    ("overrides", "error", "pattern"),
    [
        ({"images": np.zeros((6, 5, 4), np.float32)}, TypeError, "dtype uint8, got float32"),
        ({"images": np.full((6, 5, 4), np.nan)}, ValueError, "float64 and contain NaN"),
        ({"images": np.zeros((6, 5, 4), np.int16)}, TypeError, "got int16"),
        ({"images": [[[0]]]}, TypeError, "numpy array, got list"),
        ({"images": np.zeros((6, 5), np.uint8)}, ValueError, r"\(N, H, W\) for grey"),
        ({"images": np.zeros((6, 5, 4, 4), np.uint8)}, ValueError, r"\(N, H, W, 3\) for RGB"),
        ({"images": np.zeros((6, 3, 8, 8), np.uint8)}, ValueError, "channel-first"),
        ({"labels": None}, ValueError, "labels are missing"),
        ({"labels": np.array([0, 1, 2])}, ValueError, "6 images but labels have shape"),
        ({"labels": np.array([0, 1, 2, 3, 0, 1])}, ValueError, r"must lie in \[0, 2\]"),
        ({"labels": np.array([0, -1, 2, 0, 1, 2])}, ValueError, r"got range \[-1, 2\]"),
        ({"labels": np.zeros(6, np.float32)}, TypeError, "labels must be integers"),
        ({"labels": np.zeros((6, 2), np.int64)}, ValueError, r"shape \(N,\) or \(N, 1\)"),
        ({"task": "regression"}, ValueError, "task must be one of"),
        ({"task": "binary"}, ValueError, "exactly 2 class names"),
        ({"class_names": []}, TypeError, "non-empty list"),
        ({"class_names": "abc"}, TypeError, "non-empty list"),
        ({"class_names": ["a", 1, "c"]}, TypeError, "must all be strings"),
        ({"indices": np.arange(5)}, ValueError, r"indices must have shape \(6,\)"),
    ],
)
def test_bad_inputs_give_clear_errors(overrides: dict, error: type, pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        _make(**overrides)


def test_multilabel_validation() -> None:
    labels = np.array([[0, 1, 1], [1, 0, 0]] * 3)
    ds = _make(task="multi-label", labels=labels)
    assert ds.labels.shape == (6, 3) and ds.multi_label
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        _make(task="multi-label", labels=labels[:, :2])
    with pytest.raises(ValueError, match="0 or 1"):
        _make(task="multi-label", labels=labels * 2)


def test_subset_keeps_original_indices() -> None:
    ds = _make()
    sub = ds.subset([4, 1, 5])
    np.testing.assert_array_equal(sub.indices, [4, 1, 5])
    np.testing.assert_array_equal(sub.images, ds.images[[4, 1, 5]])
    np.testing.assert_array_equal(sub.labels, ds.labels[[4, 1, 5]])
    subsub = sub.subset(slice(1, 3))
    np.testing.assert_array_equal(subsub.indices, [1, 5])  # still the ORIGINAL positions
    np.testing.assert_array_equal(subsub.images, ds.images[[1, 5]])
    mask = ds.labels == 2
    np.testing.assert_array_equal(ds.subset(mask).indices, [2, 5])
    assert len(ds.subset([])) == 0
    with pytest.raises(IndexError, match="out of range"):
        ds.subset([6])
    with pytest.raises(TypeError, match="integer array"):
        ds.subset([0.5])


def test_iter_batches_from_memmap_matches_whole(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(11, 6, 5, 3), dtype=np.uint8)
    path = save_npz_atomic(tmp_path / "d.npz", images=images)
    mm = load_npz(path)["images"]
    assert isinstance(mm, np.memmap)
    ds = _make(images=mm, labels=np.arange(11) % 3).subset(slice(1, 11))
    got_idx, got_img, got_lab = [], [], []
    for idx, batch, lab in ds.iter_batches(4):
        assert batch.dtype == torch.uint8 and batch.shape[1:] == (3, 6, 5)
        assert batch.shape[0] <= 4 and idx.dtype == np.int64 and lab.dtype == torch.int64
        got_idx.append(idx), got_img.append(batch), got_lab.append(lab)
    np.testing.assert_array_equal(np.concatenate(got_idx), np.arange(1, 11))
    whole = torch.cat(got_img)
    # channel-first conversion checked against an explicit numpy transpose
    np.testing.assert_array_equal(whole.numpy(), images[1:].transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(torch.cat(got_lab).numpy(), np.arange(1, 11) % 3)
    assert torch.equal(ds.to_tensor(), whole)
    with pytest.raises(ValueError, match="positive int"):
        next(ds.iter_batches(0))


def test_tensor_round_trip_grey_and_rgb() -> None:
    rng = np.random.default_rng(4)
    for shape in [(3, 7, 5), (3, 7, 5, 3)]:
        arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
        t = images_to_tensor(arr)
        assert t.shape == (3, 1 if len(shape) == 3 else 3, 7, 5)
        np.testing.assert_array_equal(tensor_to_images(t), arr)
    with pytest.raises(ValueError, match="with C = 1 or 3"):
        tensor_to_images(torch.zeros(1, 2, 4, 4, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8"):
        tensor_to_images(torch.zeros(1, 3, 4, 4))


def test_resolve_data_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "cli") == tmp_path / "cli"
    assert resolve_data_root(None) == tmp_path / "env"
    monkeypatch.delenv(DATA_ROOT_ENV)
    assert resolve_data_root(None) == default_data_root()
    assert default_data_root().parts[-2:] == ("medrobust", "data")
    assert resolve_data_root("~/x") == Path.home() / "x"
