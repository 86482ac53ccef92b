"""MedMNIST v2 / MedMNIST+ 2D datasets: metadata and loading of the official ``.npz`` files.

Metadata (class names, task, channels, URLs, MD5) comes from ``medmnist.INFO``; this module
adds a modality per dataset and meaningful class names where the source has only digits
(RetinaMNIST's diabetic-retinopathy grades). Files are looked up as ``<flag>.npz`` (28 px) or
``<flag>_<size>.npz`` in the data root, ``<root>/medmnist`` and ``<root>/medmnist-subsets``.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from .datasets import DatasetInfo, ImageDataset
from .npz import NpzFormatError, load_npz, npz_array_info
from .paths import DataNotFoundError, resolve_data_root

__all__ = [
    "MEDMNIST_2D_FLAGS",
    "MEDMNIST_MODALITIES",
    "MEDMNIST_SIZES",
    "download_medmnist",
    "find_medmnist_file",
    "load_medmnist",
    "medmnist_filename",
    "medmnist_info",
]

MEDMNIST_MODALITIES: dict[str, str] = {
    "pathmnist": "colon pathology (H&E)",
    "chestmnist": "chest X-ray",
    "dermamnist": "dermatoscopy",
    "octmnist": "retinal OCT",
    "pneumoniamnist": "chest X-ray",
    "retinamnist": "fundus photography",
    "breastmnist": "breast ultrasound",
    "bloodmnist": "blood cell microscopy",
    "tissuemnist": "kidney cortex microscopy",
    "organamnist": "abdominal CT",
    "organcmnist": "abdominal CT",
    "organsmnist": "abdominal CT",
}
MEDMNIST_2D_FLAGS: tuple[str, ...] = tuple(MEDMNIST_MODALITIES)
MEDMNIST_SIZES: tuple[int, ...] = (28, 64, 128, 224)
SUBFOLDERS: tuple[str, ...] = ("", "medmnist", "medmnist-subsets")

# Class names where the source gives none (RetinaMNIST: DeepDRiD grades '0'..'4').
_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "retinamnist": (
        "no diabetic retinopathy",
        "mild diabetic retinopathy",
        "moderate diabetic retinopathy",
        "severe diabetic retinopathy",
        "proliferative diabetic retinopathy",
    ),
}
_TASKS = {
    "binary-class": "binary",
    "multi-class": "multi-class",
    "ordinal-regression": "ordinal",
    "multi-label, binary-class": "multi-label",
}


@cache
def _medmnist_info() -> dict[str, Any]:
    """``medmnist.INFO``, read from its ``info`` module alone.

    ``import medmnist`` also imports its evaluator and with it scikit-learn and SciPy's stats
    (about 1.3 s), which a command that only reads metadata never uses.
    """
    if "medmnist" in sys.modules:
        return sys.modules["medmnist"].INFO
    package = importlib.util.find_spec("medmnist")
    if package is None or not package.submodule_search_locations:
        raise ImportError("the medmnist package is missing: pip install medmnist")
    location = Path(next(iter(package.submodule_search_locations))) / "info.py"
    spec = importlib.util.spec_from_file_location("medrobust._medmnist_info", location)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.INFO


def _check_flag(flag: str) -> str:
    if flag not in MEDMNIST_MODALITIES:
        raise ValueError(f"unknown MedMNIST 2D flag {flag!r}; allowed: {list(MEDMNIST_2D_FLAGS)}")
    return flag


def _check_size(size: int) -> int:
    if size not in MEDMNIST_SIZES:
        raise ValueError(f"MedMNIST size must be one of {MEDMNIST_SIZES}, got {size!r}")
    return size


def medmnist_info(flag: str) -> DatasetInfo:
    """Metadata of a 2D MedMNIST dataset; ``raw_class_names`` are the ``INFO`` names."""
    info = _medmnist_info()[_check_flag(flag)]
    raw = tuple(info["label"][str(i)] for i in range(len(info["label"])))
    return DatasetInfo(
        name=flag,
        class_names=_CLASS_NAMES.get(flag, raw),
        modality=MEDMNIST_MODALITIES[flag],
        task=_TASKS[info["task"]],
        channels=int(info["n_channels"]),
        raw_class_names=raw,
        source="medmnist.INFO",
    )


def medmnist_filename(flag: str, size: int = 28) -> str:
    """``<flag>.npz`` for 28 px, ``<flag>_<size>.npz`` otherwise (the official names)."""
    _check_flag(flag)
    return f"{flag}.npz" if _check_size(size) == 28 else f"{flag}_{size}.npz"


def _url_md5(flag: str, size: int) -> tuple[str, str]:
    suffix = "" if size == 28 else f"_{size}"
    info = _medmnist_info()[flag]
    return info[f"url{suffix}"], info[f"MD5{suffix}"]


def find_medmnist_file(flag: str, size: int = 28, root: str | Path | None = None) -> Path | None:
    """The first existing ``<root>/{'', medmnist, medmnist-subsets}/<file>``, else None."""
    base = resolve_data_root(root)
    name = medmnist_filename(flag, size)
    for sub in SUBFOLDERS:
        candidate = base / sub / name if sub else base / name
        if candidate.is_file():
            return candidate
    return None


def download_medmnist(flag: str, size: int = 28, root: str | Path | None = None) -> Path:
    """Download the official file into ``<root>/medmnist`` (MD5-checked, atomic); its path.

    Uses the same downloader and URL/MD5 as ``medmnist.dataset``. Raises OSError or
    RuntimeError on network or checksum failure, leaving no partial file.
    """
    from torchvision.datasets.utils import download_url

    url, md5 = _url_md5(flag, size)
    dest = resolve_data_root(root) / "medmnist"
    dest.mkdir(parents=True, exist_ok=True)
    name = medmnist_filename(flag, size)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        download_url(url, root=tmp, filename=name, md5=md5)
        part = Path(tmp) / name
        if not part.is_file():
            raise RuntimeError(f"download of {url} produced no file")
        shutil.move(part, dest / name)
    return dest / name


def _not_found(flag: str, size: int, root: Path, cause: BaseException | None) -> DataNotFoundError:
    url, md5 = _url_md5(flag, size)
    name = medmnist_filename(flag, size)
    searched = ", ".join(str(root / s) if s else str(root) for s in SUBFOLDERS)
    why = f" (automatic download failed: {cause})" if cause else ""
    return DataNotFoundError(
        f"MedMNIST file {name} not found{why}. Download it from {url} (MD5 {md5}) and put it "
        f"at {root / 'medmnist' / name}. Searched: {searched}. Set the data root with "
        f"--data-root or $MEDROBUST_DATA."
    )


def load_medmnist(
    flag: str,
    split: str = "test",
    size: int = 28,
    root: str | Path | None = None,
    download: bool = True,
) -> ImageDataset:
    """One split of a 2D MedMNIST dataset as an ``ImageDataset``.

    Reads only the two arrays of ``split`` (memory-mapped when the npz is uncompressed).
    A missing file is downloaded when ``download`` (network permitting), else
    ``DataNotFoundError`` says which file to put where. Files holding only some splits (such
    as a test-only subset) load; asking for an absent split names the splits present.
    """
    info = medmnist_info(flag)
    base = resolve_data_root(root)
    path = find_medmnist_file(flag, size, base)
    if path is None:
        if not download:
            raise _not_found(flag, size, base, None)
        try:
            path = download_medmnist(flag, size, base)
        except (OSError, RuntimeError, ValueError) as exc:
            raise _not_found(flag, size, base, exc) from exc
    keys = npz_array_info(path)
    splits = sorted(k[: -len("_images")] for k in keys if k.endswith("_images"))
    if f"{split}_images" not in keys or f"{split}_labels" not in keys:
        raise NpzFormatError(
            f"{path} has no {split!r} split (arrays {split}_images/{split}_labels); "
            f"splits present: {splits}"
        )
    arrays = load_npz(path, [f"{split}_images", f"{split}_labels"])
    return ImageDataset(
        name=flag,
        split=split,
        images=arrays[f"{split}_images"],
        labels=arrays[f"{split}_labels"],
        class_names=list(info.class_names),
        modality=info.modality,
        task=info.task,
        source=str(path),
    )
