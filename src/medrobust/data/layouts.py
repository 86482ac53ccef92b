"""Readers and streaming writers of the two corruption-benchmark folder layouts.

MediMeta-C (RobustMedCLIP; also used there for MedMNIST-C)::

    <root>/<dataset>/<split>/clean.npz
    <root>/<dataset>/<split>/<corruption>_severity_<k>.npz      keys: images, labels

Official MedMNIST-C (``medmnistc`` DatasetManager)::

    <root>/<dataset>/<corruption>.npz      keys: test_images (5N, ...), test_labels (5N, k)

severity-major: image i at severity k is row (k-1)*N + i.

Missing files are never skipped: ``require_medimeta_c`` names every missing file.
Writers return an ``NpzWriter`` whose file appears only when complete (safe to resume with
``is_complete``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import DatasetInfo, ImageDataset
from .medmnist import MEDMNIST_2D_FLAGS, medmnist_info
from .npz import NpzFormatError, NpzWriter, load_npz, load_npz_rows, npz_array_info, npz_is_complete
from .paths import DataNotFoundError

__all__ = [
    "MEDIMETA_C_DATASETS",
    "MEDMNIST_C_SEVERITIES",
    "SEVERITIES",
    "IncompleteBenchmarkError",
    "benchmark_dataset_info",
    "is_complete",
    "list_medimeta_c",
    "list_medmnist_c",
    "medimeta_c_path",
    "medmnist_c_path",
    "open_medimeta_c_writer",
    "open_medmnist_c_writer",
    "read_medimeta_c",
    "read_medmnist_c",
    "require_medimeta_c",
    "write_medimeta_c",
]

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
MEDMNIST_C_SEVERITIES = len(SEVERITIES)
_SEVERITY_FILE = re.compile(r"^(?P<corruption>.+)_severity_(?P<severity>\d+)\.npz$")


def _medimeta(
    name: str,
    class_names: Iterable[str],
    raw: Iterable[str],
    modality: str,
    task: str,
    channels: int,
    source: str,
) -> DatasetInfo:
    return DatasetInfo(name, tuple(class_names), modality, task, channels, tuple(raw), source)


_AML = (
    "BAS Basophil", "EBO Erythroblast", "EOS Eosinophil", "KSC Smudge cell",
    "LYA Lymphocyte (atypical)", "LYT Lymphocyte (typical)", "MMZ Metamyelocyte",
    "MOB Monoblast", "MON Monocyte", "MYB Myelocyte", "MYO Myeloblast",
    "NGB Neutrophil (band)", "NGS Neutrophil (segmented)", "PMB Promyelocyte (bilobled)",
    "PMO Promyelocyte",
)  # fmt: skip
_PBC = (
    "neutrophil", "eosinophil", "basophil", "lymphocyte", "monocyte",
    "immature granulocyte", "erythroblast", "platelet",
)  # fmt: skip
_OCT_RAW = ("CNV", "DME", "DRUSEN", "NORMAL")
_OCT = ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal")
_MEDIMETA_INFO = "MedIMeta info.yaml (StefanoWoerner/medimeta-dataset-scripts), task"

# Class order is MedIMeta's (labels of MediMeta-C come from MedIMeta task labels). The
# RobustMedCLIP cls_to_names.py lists fundus, mammo_*, oct and pbc in other orders.
MEDIMETA_C_DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        _medimeta("aml", _AML, _AML, "blood cell microscopy", "multi-class", 3,
                  f"{_MEDIMETA_INFO} 'morphological class'"),
        _medimeta("fundus", ("normal", "abnormal"), ("normal", "abnormal"),
                  "fundus photography", "binary", 3, f"{_MEDIMETA_INFO} 'disease presence'"),
        _medimeta("mammo_calc", ("benign", "malignant"), ("benign", "malignant"),
                  "mammography", "binary", 1, f"{_MEDIMETA_INFO} 'pathology'"),
        _medimeta("mammo_mass", ("benign", "malignant"), ("benign", "malignant"),
                  "mammography", "binary", 1, f"{_MEDIMETA_INFO} 'pathology'"),
        _medimeta("pneumonia", ("normal", "bacterial pneumonia", "viral pneumonia"),
                  ("NORMAL", "BACTERIA", "VIRUS"), "chest X-ray", "multi-class", 1,
                  "RobustMedCLIP cls_to_names.py (3 classes; MedIMeta's own task is binary)"),
        _medimeta("oct", _OCT, _OCT_RAW, "retinal OCT", "multi-class", 1,
                  f"{_MEDIMETA_INFO} 'disease'"),
        _medimeta("pbc", _PBC, _PBC, "blood cell microscopy", "multi-class", 3,
                  f"{_MEDIMETA_INFO} 'cell class'"),
    )
}  # fmt: skip


class IncompleteBenchmarkError(DataNotFoundError):
    """Some files of a requested benchmark set are missing (all are named)."""


def benchmark_dataset_info(dataset: str) -> DatasetInfo:
    """Metadata of a MediMeta-C dataset or a 2D MedMNIST flag."""
    if dataset in MEDIMETA_C_DATASETS:
        return MEDIMETA_C_DATASETS[dataset]
    if dataset in MEDMNIST_2D_FLAGS:
        return medmnist_info(dataset)
    raise ValueError(
        f"no metadata for dataset {dataset!r}; known: {sorted(MEDIMETA_C_DATASETS)} and "
        f"MedMNIST {list(MEDMNIST_2D_FLAGS)}; pass `info=DatasetInfo(...)` for others"
    )


def _component(kind: str, value: str) -> str:
    if (
        not isinstance(value, str)
        or not value
        or value in (".", "..")
        or re.search(r"[/\\]", value)
    ):
        raise ValueError(f"{kind} must be a plain name (no path separators), got {value!r}")
    return value


def _corruption_stem(corruption: str) -> str:
    """RobustMedCLIP's file stem: lower case, spaces -> underscores."""
    return _component("corruption", corruption.lower().replace(" ", "_"))


def _check_severity(severity: Any) -> int:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity < 1:
        raise ValueError(f"severity must be a positive int (1..5), got {severity!r}")
    return int(severity)


def medimeta_c_path(
    root: str | Path,
    dataset: str,
    split: str,
    corruption: str | None = None,
    severity: int | None = None,
) -> Path:
    """``<root>/<dataset>/<split>/clean.npz`` or ``.../<corruption>_severity_<k>.npz``.

    ``corruption`` None or 'clean' selects the clean file (then ``severity`` must be None).
    """
    folder = Path(root) / _component("dataset", dataset) / _component("split", split)
    if corruption is None or corruption == "clean":
        if severity is not None:
            raise ValueError("the clean file has no severity; pass severity=None")
        return folder / "clean.npz"
    if severity is None:
        raise ValueError(f"corruption {corruption!r} needs a severity (1..5)")
    return folder / f"{_corruption_stem(corruption)}_severity_{_check_severity(severity)}.npz"


def list_medimeta_c(root: str | Path, dataset: str, split: str) -> list[tuple[str, int]]:
    """Sorted (corruption, severity) pairs whose files exist (the clean file excluded)."""
    folder = medimeta_c_path(root, dataset, split).parent
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = _SEVERITY_FILE.match(entry.name)
        if match and entry.is_file():
            found.append((match["corruption"], int(match["severity"])))
    return sorted(found)


def require_medimeta_c(
    root: str | Path,
    dataset: str,
    split: str,
    corruptions: Iterable[str],
    severities: Iterable[int] = SEVERITIES,
    include_clean: bool = True,
) -> dict[tuple[str, int], Path]:
    """Paths of the requested set, keyed (corruption, severity) ('clean', 0 for clean).

    Raises IncompleteBenchmarkError naming every missing file: an evaluation must never
    silently cover fewer corruptions than it claims.
    """
    wanted: dict[tuple[str, int], Path] = {}
    if include_clean:
        wanted["clean", 0] = medimeta_c_path(root, dataset, split)
    severities = [_check_severity(s) for s in severities]
    for corruption in corruptions:
        for severity in severities:
            wanted[_corruption_stem(corruption), severity] = medimeta_c_path(
                root, dataset, split, corruption, severity
            )
    if not wanted:
        raise ValueError("nothing requested: give corruptions and/or include_clean=True")
    missing = [str(p) for p in wanted.values() if not p.is_file()]
    if missing:
        raise IncompleteBenchmarkError(
            f"{len(missing)} of {len(wanted)} benchmark files missing for {dataset}/{split} "
            f"under {root}:\n  " + "\n  ".join(missing)
        )
    return wanted


def _dataset(
    name: str, split: str, images: np.ndarray, labels: np.ndarray, info: DatasetInfo, source: Path
) -> ImageDataset:
    return ImageDataset(
        name=name,
        split=split,
        images=images,
        labels=labels,
        class_names=list(info.class_names),
        modality=info.modality,
        task=info.task,
        source=str(source),
    )


def read_medimeta_c(
    root: str | Path,
    dataset: str,
    split: str,
    corruption: str | None = None,
    severity: int | None = None,
    *,
    info: DatasetInfo | None = None,
) -> ImageDataset:
    """One MediMeta-C file as an ``ImageDataset`` (memory-mapped when stored uncompressed).

    Metadata comes from ``info`` or, for known names, ``benchmark_dataset_info(dataset)``.
    """
    info = info or benchmark_dataset_info(dataset)
    path = medimeta_c_path(root, dataset, split, corruption, severity)
    if not path.is_file():
        raise DataNotFoundError(f"MediMeta-C file not found: {path}")
    arrays = load_npz(path, ["images", "labels"])
    return _dataset(dataset, split, arrays["images"], arrays["labels"], info, path)


def is_complete(
    path: str | Path, keys: Iterable[str] = ("images", "labels"), rows: int | None = None
) -> bool:
    """True when a benchmark file exists and holds ``keys`` (with ``rows`` rows, if given)."""
    return npz_is_complete(path, keys, rows)


def _labels_2d(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim not in (1, 2):
        raise ValueError(f"labels must have shape (N,) or (N, k), got {labels.shape}")
    return labels.reshape(len(labels), -1)


def _image_shape(image_shape: Iterable[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in image_shape)
    if not (len(shape) == 2 or (len(shape) == 3 and shape[2] == 3)) or min(shape) < 1:
        raise ValueError(f"image_shape must be (H, W) or (H, W, 3), got {shape}")
    return shape


def open_medimeta_c_writer(
    root: str | Path,
    dataset: str,
    split: str,
    corruption: str | None,
    severity: int | None,
    *,
    labels: np.ndarray,
    image_shape: Iterable[int],
    compress: bool = False,
) -> NpzWriter:
    """A writer for one MediMeta-C file; ``labels`` are written now, images streamed after.

    ``writer.path`` is the final path. Write ``images`` uint8 chunks of shape
    (B, *image_shape) in dataset order, then ``close()`` (or use ``with``)::

        with open_medimeta_c_writer(root, "oct", "test", "pixelate", 3,
                                    labels=ds.labels, image_shape=(224, 224)) as w:
            for _, batch, _ in ds.iter_batches(64):
                w.write("images", tensor_to_images(corrupt(batch)))
    """
    labels = np.asarray(labels)
    shape = _image_shape(image_shape)
    writer = NpzWriter(
        medimeta_c_path(root, dataset, split, corruption, severity), compress=compress
    )
    try:
        writer.add("labels", labels)
        writer.declare("images", (len(labels), *shape), np.uint8)
    except BaseException:
        writer.abort()
        raise
    return writer


def write_medimeta_c(
    root: str | Path,
    dataset: str,
    split: str,
    corruption: str | None,
    severity: int | None,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    compress: bool = False,
) -> Path:
    """Write whole arrays as one MediMeta-C file (atomic); returns its path."""
    images = np.asarray(images)
    with open_medimeta_c_writer(
        root, dataset, split, corruption, severity,
        labels=labels, image_shape=images.shape[1:], compress=compress,
    ) as writer:  # fmt: skip
        writer.write("images", images)
    return writer.path


def medmnist_c_path(root: str | Path, dataset: str, corruption: str) -> Path:
    """``<root>/<dataset>/<corruption>.npz`` (official MedMNIST-C layout)."""
    return (
        Path(root) / _component("dataset", dataset) / f"{_component('corruption', corruption)}.npz"
    )


def list_medmnist_c(root: str | Path, dataset: str) -> list[str]:
    """Sorted corruption names with a file in ``<root>/<dataset>/``."""
    folder = Path(root) / _component("dataset", dataset)
    if not folder.is_dir():
        return []
    return sorted(
        p.stem for p in folder.glob("*.npz") if p.is_file() and not p.name.startswith(".")
    )


def read_medmnist_c(
    root: str | Path,
    dataset: str,
    corruption: str,
    severity: int,
    *,
    info: DatasetInfo | None = None,
    n_severities: int = MEDMNIST_C_SEVERITIES,
) -> ImageDataset:
    """Severity ``severity`` of an official MedMNIST-C file: rows (k-1)N .. kN-1.

    Reads only that block (a memmap slice when stored, a streamed read when compressed as
    the official ``savez_compressed`` files are).
    """
    info = info or benchmark_dataset_info(dataset)
    path = medmnist_c_path(root, dataset, corruption)
    if not path.is_file():
        raise DataNotFoundError(f"MedMNIST-C file not found: {path}")
    severity = _check_severity(severity)
    if severity > n_severities:
        raise ValueError(f"severity must be in 1..{n_severities}, got {severity}")
    shapes = npz_array_info(path)
    for key in ("test_images", "test_labels"):
        if key not in shapes:
            raise NpzFormatError(f"{path} lacks {key!r}; arrays present: {sorted(shapes)}")
    total = shapes["test_images"][0][0]
    if total % n_severities or shapes["test_labels"][0][:1] != (total,):
        raise NpzFormatError(
            f"{path}: test_images has {total} rows and test_labels shape "
            f"{shapes['test_labels'][0]}; expected {n_severities}*N rows in both"
        )
    n = total // n_severities
    start, stop = (severity - 1) * n, severity * n
    images = load_npz_rows(path, "test_images", start, stop)
    labels = load_npz_rows(path, "test_labels", start, stop)
    return _dataset(dataset, "test", images, labels, info, path)


def open_medmnist_c_writer(
    root: str | Path,
    dataset: str,
    corruption: str,
    *,
    labels: np.ndarray,
    image_shape: Iterable[int],
    n_severities: int = MEDMNIST_C_SEVERITIES,
    compress: bool = False,
) -> NpzWriter:
    """A writer for one official-layout MedMNIST-C file (severity-major).

    ``test_labels`` (the N clean labels tiled ``n_severities`` times, shape (5N, k)) is written
    now. Then write ``test_images`` in severity-major order: all N images at severity 1 (in
    dataset order, in as many chunks as you like), then all N at severity 2, and so on;
    ``writer.rows_written('test_images') // N + 1`` is the severity being written::

        with open_medmnist_c_writer(root, "breastmnist", "pixelate",
                                    labels=ds.labels, image_shape=(224, 224)) as w:
            for severity in range(1, 6):
                for _, batch, _ in ds.iter_batches(64):
                    w.write("test_images", tensor_to_images(corrupt(batch, severity)))
    """
    labels = _labels_2d(labels)
    shape = _image_shape(image_shape)
    writer = NpzWriter(medmnist_c_path(root, dataset, corruption), compress=compress)
    try:
        writer.add("test_labels", np.tile(labels, (n_severities, 1)))
        writer.declare("test_images", (n_severities * len(labels), *shape), np.uint8)
    except BaseException:
        writer.abort()
        raise
    return writer
