"""DICOM and NIfTI files the tests write themselves, grey conversion and squaring of images."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medrobust.data.readers import (
    ImageFileError,
    MissingDependencyError,
    Slicing,
    probe_file,
    read_file,
    square_images,
    to_grey,
)

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    **elements: object,
) -> Path:
    """A minimal Secondary Capture DICOM file holding ``pixels`` (frames first if 3-D grey)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.set_pixel_data(pixels, photometric_interpretation=photometric, bits_stored=bits_stored)
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_nifti(path: Path, volume: np.ndarray, affine: np.ndarray | None = None, **header: float) -> Path:
    img = nib.Nifti1Image(volume, np.eye(4) if affine is None else affine)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, path)
    return path


def _pixels(shape: tuple[int, ...] = (20, 30), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4096, size=shape).astype(np.uint16)


def _grey(path: Path, slicing: Slicing | None = None) -> list[np.ndarray]:
    images = read_file(path, slicing or Slicing())
    assert all(img.mode == "L" for img in images)
    return [np.asarray(img) for img in images]


def test_dicom_rescale_then_window(tmp_path: Path) -> None:
    raw = _pixels()
    path = write_dicom(tmp_path / "ct.dcm", raw, RescaleSlope=2, RescaleIntercept=-1024,
                       WindowCenter=40, WindowWidth=400)
    got = _grey(path)[0]
    hu = raw.astype(np.float64) * 2 - 1024
    # DICOM PS3.3 C.11.2.1.2.1 (LINEAR), output range mapped onto 0..255
    expected = np.clip(((hu - 39.5) / 399 + 0.5) * 255, 0, 255)
    assert got.shape == (20, 30) and got.dtype == np.uint8
    assert np.abs(got.astype(float) - expected).max() <= 1.0
    assert (got[hu <= 40 - 200] == 0).all() and (got[hu > 40 + 200] == 255).all()


def test_dicom_without_window_is_min_max_and_monochrome1_inverted(tmp_path: Path) -> None:
    raw = _pixels()
    mono2 = _grey(write_dicom(tmp_path / "a.dcm", raw, RescaleSlope=1, RescaleIntercept=-100))[0]
    span = float(raw.max()) - float(raw.min())
    np.testing.assert_array_equal(mono2, np.rint((raw - raw.min()) * (255 / span)).astype(np.uint8))
    mono1 = _grey(write_dicom(tmp_path / "b.dcm", raw, photometric="MONOCHROME1"))[0]
    np.testing.assert_array_equal(mono1, 255 - mono2)


def test_dicom_frames_middle_or_all(tmp_path: Path) -> None:
    frames = np.stack([np.full((6, 8), 100 * (i + 1), np.uint16) for i in range(5)])
    frames[:, 0, 0] = 0  # every frame spans 0..100(i+1): min-max is over the whole file
    path = write_dicom(tmp_path / "multi.dcm", frames, NumberOfFrames=5)
    assert probe_file(path) .count == 1
    (middle,) = _grey(path)
    assert middle[1, 1] == round(300 * 255 / 500)
    every = _grey(path, Slicing(which="all"))
    assert probe_file(path, Slicing(which="all")).count == 5 == len(every)
    assert [int(img[1, 1]) for img in every] == [round(100 * k * 255 / 500) for k in range(1, 6)]


def test_dicom_rgb_kept(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    path = write_dicom(tmp_path / "photo.dcm", rgb, photometric="RGB", bits_stored=8)
    assert probe_file(path).grey is False
    (img,) = read_file(path)
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), rgb)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "no_pixels"])
def test_damaged_dicom_is_one_error_naming_the_file(tmp_path: Path, damage: str) -> None:
    path = write_dicom(tmp_path / "scan.dcm", _pixels())
    if damage == "garbage":
        path.write_bytes(b"this is not a DICOM file at all" * 10)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-500])
    else:
        ds = pydicom.dcmread(path)
        del ds.PixelData
        ds.save_as(path)
    with pytest.raises(ImageFileError, match=r"cannot read DICOM file .*scan\.dcm"):
        read_file(path)


def test_missing_extra_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_dicom(tmp_path / "x.dcm", _pixels())
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'medrobust\[dicom\]'"):
        probe_file(path)
    nii = write_nifti(tmp_path / "x.nii", np.zeros((4, 4, 4), np.float32))
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(MissingDependencyError, match=r"medrobust\[nifti\]"):
        read_file(nii)


def _volume(shape: tuple[int, int, int] = (12, 10, 7)) -> np.ndarray:
    return np.random.default_rng(2).normal(100, 30, size=shape).astype(np.float32)


@pytest.mark.parametrize("name", ["vol.nii", "vol.nii.gz"])
def test_nifti_middle_axial_slice(tmp_path: Path, name: str) -> None:
    vol = _volume()
    path = write_nifti(tmp_path / name, vol)
    info = probe_file(path)
    assert (info.count, info.height, info.width, info.grey) == (1, 10, 12, True)
    (got,) = _grey(path)
    lo, hi = float(vol.min()), float(vol.max())
    expected = np.rint((np.rot90(vol[:, :, 3]) - lo) * (255 / (hi - lo)))
    np.testing.assert_array_equal(got, expected.astype(np.uint8))


def test_nifti_axes_all_slices_and_display_range(tmp_path: Path) -> None:
    vol = _volume()
    path = write_nifti(tmp_path / "v.nii", vol, cal_min=50.0, cal_max=150.0)
    slices = _grey(path, Slicing(axis=0, which="all"))
    assert len(slices) == 12 == probe_file(path, Slicing(axis=0, which="all")).count
    expected = np.clip(np.rint((np.rot90(vol[5]) - 50) * 2.55), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(slices[5], expected)
    assert slices[0].shape == (7, 10)


def test_nifti_reoriented_to_ras(tmp_path: Path) -> None:
    vol = _volume()
    flipped = write_nifti(tmp_path / "lps.nii", vol[::-1].copy(), np.diag([-1.0, 1.0, 1.0, 1.0]))
    plain = write_nifti(tmp_path / "ras.nii", vol)
    np.testing.assert_array_equal(_grey(flipped)[0], _grey(plain)[0])


def test_nifti_series_and_damage_are_clear(tmp_path: Path) -> None:
    series = write_nifti(tmp_path / "fmri.nii", np.zeros((4, 4, 4, 3), np.float32))
    with pytest.raises(ImageFileError, match=r"fmri\.nii.*4-D series"):
        probe_file(series)
    for name in ("v.nii.gz", "v.nii"):  # header intact, voxel data cut in half
        good = write_nifti(tmp_path / name, _volume((40, 40, 20)))
        broken = tmp_path / f"broken-{name}"
        broken.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        assert probe_file(broken).count == 1
        with pytest.raises(ImageFileError, match=rf"cannot read NIfTI file .*broken-{name}") as err:
            read_file(broken)
        assert "\n" not in str(err.value)
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"not nifti" * 50))
    with pytest.raises(ImageFileError, match=r"garbage\.nii\.gz"):
        probe_file(garbage)


def test_slicing_validates() -> None:
    with pytest.raises(ValueError, match="slice axis must be 0, 1 or 2"):
        Slicing(axis=3)
    with pytest.raises(ValueError, match="middle, all"):
        Slicing(which="first")
    assert Slicing().pick(7) == [3] and Slicing(which="all").pick(3) == [0, 1, 2]


def test_to_grey_is_pils_rule() -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (5, 9, 7, 3), dtype=np.uint8)
    expected = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in rgb])
    np.testing.assert_array_equal(to_grey(rgb, chunk=2), expected)
    assert to_grey(expected) is expected


def test_square_images_pad_and_crop() -> None:
    images = np.arange(2 * 3 * 6, dtype=np.uint8).reshape(2, 3, 6) + 1
    padded = square_images(images, "pad")
    assert padded.shape == (2, 6, 6)
    assert (padded[:, :1] == 0).all() and (padded[:, 4:] == 0).all()
    np.testing.assert_array_equal(padded[:, 1:4], images)
    cropped = square_images(images, "crop")
    np.testing.assert_array_equal(cropped, images[:, :, 1:4])
    assert square_images(images, "stretch") is images
    with pytest.raises(ValueError, match="stretch, pad, crop"):
        square_images(images, "fit")


def test_dicom_voi_lut_sequence(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset

    raw = np.random.default_rng(4).integers(0, 300, (10, 12)).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.add_new(0x00283006, "US", [4 * (255 - v) for v in range(256)])  # LUTData: inverting
    path = write_dicom(tmp_path / "lut.dcm", raw, VOILUTSequence=[item])
    got = _grey(path)[0]
    # values past the table's end take its last entry; the table's range 0..1020 maps to 0..255
    np.testing.assert_array_equal(got, 255 - np.minimum(raw, 255))
