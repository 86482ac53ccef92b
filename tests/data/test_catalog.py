"""open_dataset with DataOptions: folders of PNG/DICOM/NIfTI, grey, squaring, class names, modality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medrobust.data import DataOptions, medmnist_c_dataset_for, open_dataset
from medrobust.data.readers import Slicing


@pytest.fixture()
def busi_folder(shared_data: Path, tmp_path: Path) -> Path:
    """The real BUSI ultrasound PNGs (RGB files holding grey, non-square) as <tmp>/busi/<class>/."""
    root = tmp_path / "busi"
    for src in sorted((shared_data / "highres" / "busi").glob("*.png")):
        cls = src.name.split("_")[0]
        (root / cls).mkdir(parents=True, exist_ok=True)
        (root / cls / src.name).symlink_to(src)
    return root


def test_real_ultrasound_grey_and_aspect(busi_folder: Path) -> None:
    stored = open_dataset(busi_folder)
    assert stored.channels == 3 and stored.image_size == (224, 224)  # RGB files: read as RGB
    assert stored.reading == {"grey": False, "resize": "stretch"}
    assert stored.class_names == ["benign", "malignant", "normal"] and len(stored) == 19
    grey = open_dataset(busi_folder, options=DataOptions(grey=True))
    assert grey.channels == 1 and grey.reading["grey"] is True
    # the files hold grey as RGB: one channel loses nothing
    np.testing.assert_array_equal(grey.images, stored.images[..., 0])

    first = sorted((busi_folder / "benign").iterdir())[0]
    src = Image.open(first).convert("L")  # 562 x 471, landscape
    w, h = src.size
    padded = open_dataset(busi_folder, options=DataOptions(grey=True, resize="pad")).images[0]
    canvas = Image.new("L", (w, w))
    canvas.paste(src, (0, (w - h) // 2))
    np.testing.assert_array_equal(padded, np.asarray(canvas.resize((224, 224), Image.Resampling.BICUBIC)))
    band = round((w - h) / 2 * 224 / w) - 2
    assert (padded[:band] == 0).all() and (padded[-band:] == 0).all()
    cropped = open_dataset(busi_folder, options=DataOptions(grey=True, resize="crop")).images[0]
    left = (w - h) // 2
    ref = src.crop((left, 0, left + h, h)).resize((224, 224), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(cropped, np.asarray(ref))
    stretched = open_dataset(busi_folder, options=DataOptions(grey=True)).images[0]
    np.testing.assert_array_equal(stretched, np.asarray(src.resize((224, 224), Image.Resampling.BICUBIC)))


def test_real_xray_already_grey(shared_data: Path, tmp_path: Path) -> None:
    (tmp_path / "cxr" / "any").mkdir(parents=True)
    (tmp_path / "cxr" / "other").mkdir()
    src = shared_data / "highres" / "cxr" / "00000001_000.png"
    (tmp_path / "cxr" / "any" / src.name).symlink_to(src)
    (tmp_path / "cxr" / "other" / src.name).symlink_to(src)
    ds = open_dataset(tmp_path / "cxr", options=DataOptions(grey=True, resize="pad", modality="x-ray"))
    assert ds.channels == 1 and ds.modality == "chest X-ray"
    ref = Image.open(src).convert("L").resize((224, 224), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(ds.images[0], np.asarray(ref))  # square: padding changes nothing


def test_folder_of_dicom_nifti_and_png(tmp_path: Path) -> None:
    from tests.data.test_readers import write_dicom, write_nifti

    root = tmp_path / "scans"
    (root / "tumour").mkdir(parents=True)
    (root / "healthy").mkdir()
    rng = np.random.default_rng(0)
    write_dicom(root / "healthy" / "a.dcm", rng.integers(0, 4096, (32, 32)).astype(np.uint16))
    write_nifti(root / "tumour" / "b.nii.gz", rng.normal(size=(32, 32, 5)).astype(np.float32))
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(root / "tumour" / "c.png")
    (root / "tumour" / "notes.txt").write_text("ignored")
    ds = open_dataset(root, options=DataOptions(slicing=Slicing(which="all")))
    assert ds.class_names == ["healthy", "tumour"] and ds.channels == 1
    np.testing.assert_array_equal(ds.labels, [0] + [1] * 5 + [1])
    assert ds.reading == {"grey": True, "resize": "stretch", "slice_axis": 2, "slices": "all"}
    middle = open_dataset(root)
    assert len(middle) == 3 and middle.reading["slices"] == "middle"


def test_damaged_file_in_folder_is_named(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / cls / "ok.png")
    (tmp_path / "b" / "bad.dcm").write_bytes(b"\x00" * 300)
    with pytest.raises(ValueError, match=r"cannot read DICOM file .*bad\.dcm"):
        open_dataset(tmp_path)


def test_folder_class_names(tmp_path: Path) -> None:
    for cls in ("0_benign", "1_malignant"):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / cls / "x.png")
    ds = open_dataset(tmp_path, options=DataOptions(class_names=("benign lesion", "malignant lesion")))
    assert ds.class_names == ["benign lesion", "malignant lesion"]
    assert ds.reading["folder_names"] == ["0_benign", "1_malignant"]
    with pytest.raises(ValueError, match=r"3 class names given for the 2 class folders .*\[.0_benign., .1_malignant.\]"):
        open_dataset(tmp_path, options=DataOptions(class_names=("a", "b", "c")))


def _npz(path: Path, images: np.ndarray, labels: np.ndarray, **extra: np.ndarray) -> Path:
    np.savez(path, test_images=images, test_labels=labels, **extra)
    return path


def test_generic_npz_class_names(tmp_path: Path) -> None:
    images = np.zeros((6, 8, 8), np.uint8)
    path = _npz(tmp_path / "mine.npz", images, np.array([0, 1, 2, 0, 1, 1]))
    with pytest.raises(ValueError, match=r"no class names \(labels 0\.\.2\).*--class-names with 3 names"):
        open_dataset(path, named_classes=True)
    assert open_dataset(path).class_names == ["0", "1", "2"]  # corrupting needs no names
    named = open_dataset(path, options=DataOptions(class_names=("a", "b", "c", "d")), named_classes=True)
    assert named.class_names == ["a", "b", "c", "d"] and named.task == "multi-class"
    with pytest.raises(ValueError, match=r"2 class names for .*labels need 3"):
        open_dataset(path, options=DataOptions(class_names=("a", "b")))
    stored = _npz(tmp_path / "stored.npz", images, np.array([0, 1, 0, 1, 0, 1]),
                  class_names=np.array(["normal", "pneumonia"]))
    ds = open_dataset(stored, named_classes=True)
    assert ds.class_names == ["normal", "pneumonia"] and ds.task == "binary"


def test_npz_grey_and_square(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (4, 6, 10, 3), dtype=np.uint8)
    path = _npz(tmp_path / "wide.npz", rgb, np.array([0, 1, 0, 1]))
    plain = open_dataset(path)
    assert plain.images.shape == (4, 6, 10, 3) and plain.reading == {"resize": "stretch"}
    ds = open_dataset(path, options=DataOptions(grey=True, resize="crop", class_names=("x", "y")))
    expected = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in rgb])[:, :, 2:8]
    np.testing.assert_array_equal(ds.images, expected)
    assert ds.reading == {"grey": True, "resize": "crop"}


def test_medmnist_options(shared_data: Path) -> None:
    plain = open_dataset("breastmnist", root=shared_data)
    unchanged = open_dataset("breastmnist", root=shared_data, options=DataOptions(grey=True))
    assert plain.reading == {} == unchanged.reading  # already grey: nothing to do
    np.testing.assert_array_equal(unchanged.images, plain.images)
    renamed = open_dataset("breastmnist", root=shared_data,
                           options=DataOptions(class_names=("cancer", "no cancer")))
    assert renamed.class_names == ["cancer", "no cancer"]
    assert renamed.reading["source_class_names"] == plain.class_names
    with pytest.raises(ValueError, match=r"3 class names given for the 2 classes of breastmnist"):
        open_dataset("breastmnist", root=shared_data, options=DataOptions(class_names=("a", "b", "c")))
    retina = open_dataset("retinamnist", root=shared_data, options=DataOptions(grey=True))
    assert retina.channels == 1 and retina.reading == {"grey": True}


def test_options_validate_and_modality_suites() -> None:
    with pytest.raises(ValueError, match="choose one of x-ray, ultrasound"):
        DataOptions(modality="sonar")
    with pytest.raises(ValueError, match="stretch, pad, crop"):
        DataOptions(resize="fit")
    with pytest.raises(ValueError, match="must differ"):
        DataOptions(class_names=("a", "a"))
    assert DataOptions(class_names=(" a ", "b")).class_names == ("a", "b")
    assert medmnist_c_dataset_for("busi", "ultrasound") == "breastmnist"
    assert medmnist_c_dataset_for("pneumoniamnist", "ultrasound") == "pneumoniamnist"
    assert medmnist_c_dataset_for("x", "breast ultrasound") == "breastmnist"
    assert medmnist_c_dataset_for("x", "chest X-ray") == "chestmnist"
    assert medmnist_c_dataset_for("x", "mri") is None and medmnist_c_dataset_for("x", None) is None


def test_options_round_trip() -> None:
    options = DataOptions(grey=True, resize="crop", slicing=Slicing(0, "all"), class_names=("a", "b"),
                          modality="ct")
    assert DataOptions.from_dict(options.to_dict()) == options
    assert DataOptions.from_dict({}) == DataOptions()
    with pytest.raises(ValueError, match=r"unknown data options \['gray'\]"):
        DataOptions.from_dict({"gray": True})


def test_has_splits_marks_folders_and_split_less_npz(tmp_path) -> None:
    from medrobust.data import has_splits

    images, labels = np.zeros((4, 8, 8), np.uint8), np.array([0, 1, 0, 1])
    np.savez(tmp_path / "flat.npz", images=images, labels=labels)
    np.savez(tmp_path / "split.npz", train_images=images, train_labels=labels)
    (tmp_path / "folder" / "a").mkdir(parents=True)
    assert not has_splits(tmp_path / "flat.npz") and not has_splits(tmp_path / "folder")
    assert has_splits(tmp_path / "split.npz") and has_splits("breastmnist")
