"""Image folders (real CRC tiles) and the MedIMeta on-disk format (a tiny fake dataset)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from medrobust.data import DataNotFoundError, read_image_folder, read_medimeta


@pytest.fixture()
def crc_folder(shared_data: Path, tmp_path: Path) -> Path:
    """Two CRC tiles per class (BACK, MUS, TUM) copied into <tmp>/crc/<class>/."""
    root = tmp_path / "crc"
    for cls in ("TUM", "BACK", "MUS"):
        (root / cls).mkdir(parents=True)
        for src in sorted((shared_data / "highres" / "crc").glob(f"{cls}-*.jpg"))[:2]:
            shutil.copy(src, root / cls / src.name)
    return root


def test_image_folder_round_trip_crc(crc_folder: Path) -> None:
    ds = read_image_folder(crc_folder, modality="colon pathology (H&E)")
    assert ds.class_names == ["BACK", "MUS", "TUM"]
    assert (len(ds), ds.channels, ds.image_size, ds.task) == (6, 3, (224, 224), "multi-class")
    np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1, 2, 2])
    files = sorted((crc_folder / "MUS").iterdir())
    np.testing.assert_array_equal(ds.images[2], np.asarray(Image.open(files[0]).convert("RGB")))
    assert ds.name == "crc" and ds.source == str(crc_folder)


def test_image_folder_resize_and_grey(crc_folder: Path) -> None:
    ds = read_image_folder(crc_folder, size=32, mode="L")
    assert ds.images.shape == (6, 32, 32)
    src = sorted((crc_folder / "BACK").iterdir())[0]
    ref = Image.open(src).convert("L").resize((32, 32), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(ds.images[0], np.asarray(ref))
    rect = read_image_folder(crc_folder, size=(20, 30))
    assert rect.image_size == (20, 30)


def test_image_folder_mixed_sizes_need_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for cls, size in (("benign", (10, 12)), ("malignant", (14, 12)), ("malignant", (14, 12))):
        (tmp_path / cls).mkdir(exist_ok=True)
        arr = rng.integers(0, 256, size, dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / cls / f"{len(list(tmp_path.rglob('*.png')))}.png")
    with pytest.raises(ValueError, match=r"differ in size.*pass size="):
        read_image_folder(tmp_path)
    ds = read_image_folder(tmp_path, size=8)
    assert ds.channels == 1  # all files are 'L': the majority mode is grey
    assert ds.task == "binary" and ds.class_names == ["benign", "malignant"]
    np.testing.assert_array_equal(ds.labels, [0, 1, 1])


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="image folder not found"):
        read_image_folder(tmp_path / "absent")
    with pytest.raises(ValueError, match="no class sub-folders"):
        read_image_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        read_image_folder(tmp_path)
    (tmp_path / "empty" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        read_image_folder(tmp_path)
    with pytest.raises(ValueError, match="mode must be"):
        read_image_folder(tmp_path, mode="CMYK")


def _write_medimeta(root: Path, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 6-image grey dataset in the MedIMeta format (info.yaml, images/, task_labels/, splits/)."""
    folder = root / "mammo_calc"
    (folder / "images").mkdir(parents=True)
    (folder / "task_labels").mkdir()
    (folder / "splits").mkdir()
    (folder / "original_splits").mkdir()
    info = {
        "id": "mammo_calc",
        "name": "Mammography (Calcifications)",
        "domain": "Mammography",
        "input_size": [1, 16, 16],
        "tasks": [
            {"task_name": "pathology", "task_target": "BINARY_CLASSIFICATION",
             "labels": {0: "benign", 1: "malignant"}},
            {"task_name": "calc distribution", "task_target": "MULTILABEL_CLASSIFICATION",
             "labels": {0: "CLUSTERED", 1: "LINEAR", 2: "REGIONAL"}},
        ],
        "splits_num_samples": {"train": 3, "val": 0, "test": 3},
    }  # fmt: skip
    (folder / "info.yaml").write_text(yaml.safe_dump(info), encoding="utf-8")
    images = rng.integers(0, 256, (6, 16, 16), dtype=np.uint8)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / "images" / f"{i:06d}.tiff")
    pathology = np.array([0, 1, 1, 0, 1, 0])
    np.save(folder / "task_labels" / "pathology.npy", pathology)
    np.save(folder / "task_labels" / "calc distribution.npy", rng.integers(0, 2, (6, 3)))
    (folder / "splits" / "train.txt").write_text(
        "images/000000.tiff\nimages/000002.tiff\nimages/000004.tiff\n"
    )
    (folder / "splits" / "test.txt").write_text(
        "images/000001.tiff\nimages/000003.tiff\nimages/000005.tiff"
    )
    (folder / "original_splits" / "test.txt").write_text("images/000005.tiff\n")
    return images, pathology


def test_read_medimeta_fake_dataset(tmp_path: Path) -> None:
    images, pathology = _write_medimeta(tmp_path, np.random.default_rng(1))
    ds = read_medimeta(tmp_path, "mammo_calc", "pathology", "test")
    np.testing.assert_array_equal(ds.images, images[[1, 3, 5]])  # TIFF is lossless
    np.testing.assert_array_equal(ds.labels, pathology[[1, 3, 5]])
    assert ds.class_names == ["benign", "malignant"]
    assert (ds.task, ds.modality, ds.channels) == ("binary", "Mammography", 1)
    multi = read_medimeta(tmp_path, "mammo_calc", "calc distribution", "train")
    assert multi.task == "multi-label" and multi.labels.shape == (3, 3)
    orig = read_medimeta(tmp_path, "mammo_calc", "pathology", "test", original_split=True)
    np.testing.assert_array_equal(orig.images, images[[5]])


def test_read_medimeta_errors(tmp_path: Path) -> None:
    _write_medimeta(tmp_path, np.random.default_rng(2))
    with pytest.raises(DataNotFoundError, match=r"'oct' not found.*present: \['mammo_calc'\]"):
        read_medimeta(tmp_path, "oct", "disease", "test")
    with pytest.raises(
        ValueError, match=r"no task 'shape'; tasks: \['calc distribution', 'pathology'\]"
    ):
        read_medimeta(tmp_path, "mammo_calc", "shape", "test")
    with pytest.raises(
        DataNotFoundError, match=r"split 'val' not found.*present: \['test', 'train'\]"
    ):
        read_medimeta(tmp_path, "mammo_calc", "pathology", "val")
    (tmp_path / "mammo_calc" / "images" / "000003.tiff").unlink()
    with pytest.raises(DataNotFoundError, match="1 MedIMeta image"):
        read_medimeta(tmp_path, "mammo_calc", "pathology", "test")
