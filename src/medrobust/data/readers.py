"""Read one image file as 8-bit 2-D images: PIL formats, DICOM (pydicom), NIfTI (nibabel).

Every file becomes one or more 2-D uint8 images (grey, or RGB where the file is colour), by
a fixed rule, so a benchmark made from the same files is the same everywhere:

* PNG, JPEG, TIFF, ...: 8-bit as stored; 16-bit and float grey are scaled by their type
  range (``x * 255 / 65535``; 0..255 for values that fit in 8 bits).
* DICOM (``.dcm``, ``.dicom``; ``pip install medrobust[dicom]``): the stored values pass the
  modality LUT (rescale slope and intercept), then the file's VOI LUT or window when it has
  one, whose whole output range maps linearly onto 0..255; without a VOI LUT or window, the
  file's minimum..maximum maps onto 0..255. MONOCHROME1 is inverted (high values dark).
  RGB and YBR files are decoded to RGB; colour deeper than 8 bits is scaled min..max.
* NIfTI (``.nii``, ``.nii.gz``; ``pip install medrobust[nifti]``): voxel values with the
  header's scale factors (``get_fdata``); the volume is reoriented to the closest RAS+
  orientation, then the header's display range ``cal_min..cal_max`` maps onto 0..255 when
  it is set, else the volume's minimum..maximum (non-finite voxels count as the minimum).

Intensity scales are per file (all frames of a DICOM file, all slices of a volume share one),
so the slices of one volume stay comparable. A file with several frames, or a volume, gives
2-D slices: along ``axis`` of the RAS+ volume (0 sagittal, 1 coronal, 2 axial; the frame axis
for DICOM), the middle one (index ``n // 2``) or all. A NIfTI slice is shown with its first
in-plane axis running left to right and its second bottom to top (``np.rot90``).

A file that cannot be decoded raises :class:`ImageFileError` naming it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "DICOM_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "NIFTI_EXTENSIONS",
    "RESIZE_MODES",
    "SLICE_MODES",
    "FileInfo",
    "ImageFileError",
    "MissingDependencyError",
    "Slicing",
    "file_format",
    "probe_file",
    "read_file",
    "square_images",
    "to_grey",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
DICOM_EXTENSIONS = (".dcm", ".dicom")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")
RESIZE_MODES = ("stretch", "pad", "crop")
SLICE_MODES = ("middle", "all")
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_EXTRAS = {"pydicom": "dicom", "nibabel": "nifti"}

T = TypeVar("T")


class ImageFileError(ValueError):
    """An image file cannot be read; the message names the file."""


class MissingDependencyError(ImportError):
    """An optional package needed for a file format is not installed; says how to install it."""


@dataclass(frozen=True)
class Slicing:
    """Which 2-D slices a volume (NIfTI) or multi-frame DICOM file gives."""

    axis: int = 2  # NIfTI: axis of the RAS+ volume (0 sagittal, 1 coronal, 2 axial)
    which: str = "middle"  # "middle": slice n // 2; "all": every slice

    def __post_init__(self) -> None:
        if isinstance(self.axis, bool) or self.axis not in (0, 1, 2):
            raise ValueError(f"slice axis must be 0, 1 or 2, got {self.axis!r}")
        if self.which not in SLICE_MODES:
            raise ValueError(f"slices must be one of {', '.join(SLICE_MODES)}, got {self.which!r}")

    def pick(self, n: int) -> list[int]:
        """Indices of the slices taken from ``n``."""
        return list(range(n)) if self.which == "all" else [n // 2]


@dataclass(frozen=True)
class FileInfo:
    """What a file holds, read from its header: images, their (height, width), grey or not."""

    count: int
    height: int
    width: int
    grey: bool


def file_format(path: Path) -> str | None:
    """'image' (PIL), 'dicom', 'nifti', or None for other files (by extension)."""
    name = path.name.lower()
    if name.endswith(NIFTI_EXTENSIONS):
        return "nifti"
    if name.endswith(DICOM_EXTENSIONS):
        return "dicom"
    if name.endswith(IMAGE_EXTENSIONS):
        return "image"
    return None


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = _EXTRAS[module]
        raise MissingDependencyError(
            f"reading {extra.upper() if extra == 'dicom' else 'NIfTI'} files needs {module}: "
            f"pip install 'medrobust[{extra}]'"
        ) from exc


def _guarded(path: Path, kind: str, fn: Callable[[], T]) -> T:
    """Run ``fn``; any failure of the decoding library becomes one ImageFileError naming ``path``."""
    try:
        return fn()
    except (ImageFileError, MissingDependencyError):
        raise
    except Exception as exc:  # third-party decoders raise many types for damaged files
        reason = " ".join(str(exc).split()) or type(exc).__name__  # one line
        raise ImageFileError(f"cannot read {kind} file {path}: {reason}") from exc


def probe_file(path: Path, slicing: Slicing = Slicing()) -> FileInfo:
    """Header-only look at ``path``: how many 2-D images it gives, their size, grey or colour."""
    kind = file_format(path)
    if kind == "dicom":
        return _guarded(path, "DICOM", lambda: _probe_dicom(path, slicing))
    if kind == "nifti":
        return _guarded(path, "NIfTI", lambda: _probe_nifti(path, slicing))
    with _open_pil(path) as img:
        return FileInfo(1, img.height, img.width, img.mode in _GREY_MODES)


def read_file(path: Path, slicing: Slicing = Slicing()) -> list[Image.Image]:
    """The 2-D images of ``path`` as PIL images (8-bit 'L' or 'RGB'; other PIL modes as stored)."""
    kind = file_format(path)
    if kind == "dicom":
        arrays = _guarded(path, "DICOM", lambda: _read_dicom(path, slicing))
    elif kind == "nifti":
        arrays = _guarded(path, "NIfTI", lambda: _read_nifti(path, slicing))
    else:
        with _open_pil(path) as img:
            return [_guarded(path, "image", lambda: _to_8bit(img))]
    return [Image.fromarray(a) for a in arrays]


def _open_pil(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageFileError(f"cannot read image {path}: {exc}") from exc


def _to_8bit(img: Image.Image) -> Image.Image:
    """High-bit-depth grey (I;16, I, F) -> 8-bit 'L' by scaling the full type range."""
    if img.mode in ("1", "L", "LA", "RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV"):
        img.load()
        return img.copy()
    arr = np.asarray(img, dtype=np.float64)
    top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
    return Image.fromarray(np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8))


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map [lo, hi] linearly onto 0..255 (rounded, clipped); all 0 when hi <= lo."""
    if not hi > lo:
        return np.zeros(values.shape, dtype=np.uint8)
    out = np.rint((np.nan_to_num(values, nan=lo) - lo) * (255.0 / (hi - lo)))
    return np.clip(out, 0, 255).astype(np.uint8)


def _finite_range(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)


# --- DICOM -------------------------------------------------------------------------------

_DICOM_GREY = ("MONOCHROME1", "MONOCHROME2")
_DICOM_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT")


def _dicom(path: Path, pixels: bool) -> Any:
    """The dataset of a DICOM file (header only unless ``pixels``), checked to hold a
    supported image."""
    pydicom = _require("pydicom")
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=not pixels)
    except pydicom.errors.InvalidDicomError:
        raise ImageFileError(
            f"cannot read DICOM file {path}: not a DICOM file (no DICOM file header)"
        ) from None
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in _DICOM_GREY + _DICOM_COLOUR:
        raise ImageFileError(
            f"cannot read DICOM file {path}: photometric interpretation {photometric or 'missing'!r} "
            f"is not supported (supported: {', '.join(_DICOM_GREY + _DICOM_COLOUR)})"
        )
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageFileError(f"cannot read DICOM file {path}: it holds no image (no Rows/Columns)")
    return ds


def _probe_dicom(path: Path, slicing: Slicing) -> FileInfo:
    ds = _dicom(path, pixels=False)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    grey = ds.PhotometricInterpretation in _DICOM_GREY
    return FileInfo(len(slicing.pick(frames)), int(ds.Rows), int(ds.Columns), grey)


def _read_dicom(path: Path, slicing: Slicing) -> list[np.ndarray]:
    ds = _dicom(path, pixels=True)
    pixels = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    grey = ds.PhotometricInterpretation in _DICOM_GREY
    stack = pixels if frames > 1 else pixels[None]
    if stack.ndim != (3 if grey else 4):
        raise ImageFileError(f"cannot read DICOM file {path}: unexpected pixel shape {pixels.shape}")
    if not grey:
        if stack.dtype != np.uint8:
            values = stack.astype(np.float64)
            stack = _scale(values, *_finite_range(values))
        return [stack[i] for i in slicing.pick(frames)]
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(stack, ds), dtype=np.float64)
    out = _scale(*_dicom_voi(values, ds))
    if ds.PhotometricInterpretation == "MONOCHROME1":
        out = 255 - out
    return [out[i] for i in slicing.pick(frames)]


def _dicom_voi(values: np.ndarray, ds: Any) -> tuple[np.ndarray, float, float]:
    """The VOI LUT or window of ``ds`` applied (pydicom prefers the LUT), with its output range."""
    from pydicom.pixels import apply_voi_lut

    lut = ds.get("VOILUTSequence")
    if lut and lut[0].get("LUTDescriptor") is not None and lut[0].get("LUTData") is not None:
        n, first = int(lut[0].LUTDescriptor[0] or 65536), int(lut[0].LUTDescriptor[1])
        table = np.asarray(apply_voi_lut(np.arange(first, first + n, dtype=np.int64), ds))
        out = np.asarray(apply_voi_lut(np.rint(values).astype(np.int64), ds), dtype=np.float64)
        return out, float(table.min()), float(table.max())
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        with np.errstate(over="ignore"):
            ends = np.asarray(apply_voi_lut(np.array([-1e15, 1e15]), ds), dtype=np.float64)
        return np.asarray(apply_voi_lut(values, ds), dtype=np.float64), float(ends.min()), float(ends.max())
    return (values, *_finite_range(values))


# --- NIfTI -------------------------------------------------------------------------------


def _nifti_image(path: Path) -> tuple[Any, np.ndarray, tuple[int, int, int]]:
    """(image, orientation to RAS+, shape of the reoriented 3-D volume); data not loaded."""
    nib = _require("nibabel")
    img = nib.load(path)
    shape = tuple(int(s) for s in img.shape)
    if len(shape) > 3 and any(s != 1 for s in shape[3:]):
        raise ImageFileError(
            f"cannot read NIfTI file {path}: it holds a {len(shape)}-D series {shape}; "
            "only 2-D images and 3-D volumes are read (extract one volume first)"
        )
    if len(shape) < 2:
        raise ImageFileError(f"cannot read NIfTI file {path}: shape {shape} is not an image")
    shape3 = (*shape[:3], *(1,) * (3 - min(len(shape), 3)))
    ornt = nib.orientations.io_orientation(img.affine)
    ras = [0, 0, 0]
    for axis, (target, _) in enumerate(ornt):
        ras[int(target)] = shape3[axis]
    return img, ornt, (ras[0], ras[1], ras[2])


def _probe_nifti(path: Path, slicing: Slicing) -> FileInfo:
    _, _, shape = _nifti_image(path)
    plane = [s for a, s in enumerate(shape) if a != slicing.axis]
    return FileInfo(len(slicing.pick(shape[slicing.axis])), plane[1], plane[0], True)


def _read_nifti(path: Path, slicing: Slicing) -> list[np.ndarray]:
    nib = _require("nibabel")
    img, ornt, shape = _nifti_image(path)
    data = np.asarray(img.get_fdata(dtype=np.float32))
    data = data.reshape(data.shape[:3] + (1,) * (3 - min(data.ndim, 3)))
    volume = nib.orientations.apply_orientation(data, ornt)
    lo, hi = float(img.header["cal_min"]), float(img.header["cal_max"])
    if not hi > lo:
        lo, hi = _finite_range(volume)
    out = _scale(volume, lo, hi)
    return [np.ascontiguousarray(np.rot90(np.take(out, i, axis=slicing.axis)))
            for i in slicing.pick(shape[slicing.axis])]


# --- array transforms applied when a dataset is opened ------------------------------------


def to_grey(images: np.ndarray, chunk: int = 256) -> np.ndarray:
    """uint8 (N, H, W, 3) RGB -> (N, H, W) grey with PIL's 'L' rule (ITU-R 601-2 luma, exact
    integer arithmetic), in chunks; grey input is returned as is."""
    if images.ndim == 3:
        return images
    weights = np.array([19595, 38470, 7471], dtype=np.uint32)
    out = np.empty(images.shape[:3], dtype=np.uint8)
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start : start + chunk], dtype=np.uint32)
        out[start : start + chunk] = ((block @ weights + 0x8000) >> 16).astype(np.uint8)
    return out


def square_images(images: np.ndarray, mode: str) -> np.ndarray:
    """Make (N, H, W[, 3]) images square: 'stretch' leaves them (the later resize stretches),
    'pad' centres them on a black square of the longer side, 'crop' keeps the centred square
    of the shorter side (odd margins put the extra pixel at the bottom / right)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    h, w = images.shape[1:3]
    if mode == "stretch" or h == w:
        return images
    if mode == "crop":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        return np.ascontiguousarray(images[:, top : top + side, left : left + side])
    side = max(h, w)
    out = np.zeros((len(images), side, side, *images.shape[3:]), dtype=images.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    out[:, top : top + h, left : left + w] = images
    return out
