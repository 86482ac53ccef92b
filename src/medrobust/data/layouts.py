"""Benchmark folder layouts: one ``Layout`` object per convention, registered by name.

MediMeta-C (RobustMedCLIP; also used there for MedMNIST-C), ``"medimeta-c"``::

    <root>/<dataset>/<split>/clean.npz
    <root>/<dataset>/<split>/<corruption>_severity_<k>.npz      keys: images, labels

Official MedMNIST-C (``medmnistc`` DatasetManager), ``"medmnist-c"``::

    <root>/<dataset>/<corruption>.npz      keys: test_images (5N, ...), test_labels (5N, k)

severity-major: image i at severity k is row (k-1)*N + i. A generated folder may also hold
``clean.npz`` (one block) and files with fewer severities, listed in its ``manifest.json``.

``get_layout(name, root)`` gives the layout; ``path_for``, ``files`` (what a benchmark
consists of), ``read``, ``require`` and ``open_writer`` are the one place each convention's
rules live: ``corruptions.generate`` writes with them and ``evaluation.runner`` reads.
Missing files are never skipped: ``require`` names every missing file. Writers return an
``NpzWriter`` whose file appears only when complete (safe to resume with ``is_complete``).
The module-level functions (``medimeta_c_path``, ``read_medmnist_c``, ...) are shorthands.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..severity import (
    CLEAN,
    NUM_SEVERITIES,
    SEVERITIES,
    Condition,
    check_severity,
    clean_condition,
    conditions,
    is_clean,
)
from .datasets import DatasetInfo, ImageDataset
from .medmnist import MEDMNIST_2D_FLAGS, medmnist_info
from .npz import NpzFormatError, NpzWriter, load_npz, load_npz_rows, npz_array_info, npz_is_complete
from .paths import DataNotFoundError

__all__ = [
    "LAYOUTS",
    "MEDIMETA_C_DATASETS",
    "MEDMNIST_C_SEVERITIES",
    "SEVERITIES",
    "BenchmarkFile",
    "IncompleteBenchmarkError",
    "Layout",
    "MedMNISTCLayout",
    "MediMetaCLayout",
    "benchmark_dataset_info",
    "get_layout",
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

MEDMNIST_C_SEVERITIES = NUM_SEVERITIES
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


@dataclass(frozen=True)
class BenchmarkFile:
    """One file of a benchmark: the clean images (``CLEAN``, no severities) or a corruption's
    severities, stacked severity-major in that order."""

    path: Path
    corruption: str
    severities: tuple[int, ...]

    @property
    def blocks(self) -> int:
        """How many copies of the N images the file holds."""
        return max(1, len(self.severities))


@dataclass(frozen=True)
class Layout:
    """A benchmark folder convention under ``root``: where each condition's images live.

    Subclasses say where a file is (``_path``), which files a benchmark has (``files``) and
    how a file is read (``_read``); the checks and the clean encoding are shared here.
    """

    root: Path
    name: ClassVar[str]
    title: ClassVar[str]
    image_key: ClassVar[str]
    label_key: ClassVar[str]
    clean_required: ClassVar[bool]  # whether a complete benchmark must hold a clean file
    file_per_severity: ClassVar[bool]  # whether the severity is part of the file name

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def path_for(
        self, dataset: str, split: str, corruption: str | None = None, severity: int | None = None
    ) -> Path:
        """The file holding ``(corruption, severity)`` of ``dataset``/``split`` (clean: None or
        ``("clean", 0)``); where one file holds every severity, ``severity`` may be None."""
        if self.file_per_severity or severity is not None or is_clean(corruption):
            corruption, severity = clean_condition(corruption, severity)
        return self._path(_component("dataset", dataset), _component("split", split),
                          str(corruption), severity)

    def _path(self, dataset: str, split: str, corruption: str, severity: int | None) -> Path:
        raise NotImplementedError

    def files(
        self, dataset: str, split: str, corruptions: Iterable[str], severities: Sequence[int]
    ) -> list[BenchmarkFile]:
        """The files a benchmark consists of, clean first, in the order they are written."""
        raise NotImplementedError

    def manifest_path(self, dataset: str, split: str) -> Path:
        """Where ``generate_benchmark`` records what it wrote."""
        raise NotImplementedError

    def stored_labels(self, labels: np.ndarray) -> np.ndarray:
        """Labels as this layout stores them for one block of N images."""
        return np.asarray(labels)

    def read(
        self,
        dataset: str,
        split: str,
        corruption: str | None = None,
        severity: int | None = None,
        *,
        info: DatasetInfo | None = None,
    ) -> ImageDataset:
        """The images of one condition as an ``ImageDataset`` (metadata from ``info`` or the
        catalog, ``benchmark_dataset_info``; memory-mapped where the file is stored)."""
        cell = clean_condition(corruption, severity)
        path = self.path_for(dataset, split, *cell)
        if not path.is_file():
            raise DataNotFoundError(f"{self.title} file not found: {path}")
        return self._read(path, dataset, split, cell, info or benchmark_dataset_info(dataset))

    def _read(
        self, path: Path, dataset: str, split: str, cell: Condition, info: DatasetInfo
    ) -> ImageDataset:
        raise NotImplementedError

    def require(
        self,
        dataset: str,
        split: str,
        corruptions: Iterable[str],
        severities: Sequence[int] = SEVERITIES,
        *,
        include_clean: bool | None = None,
    ) -> dict[Condition, Path]:
        """Paths of the requested set, keyed ``(corruption, severity)`` (``("clean", 0)``).

        ``include_clean`` defaults to whether the layout requires a clean file. Raises
        IncompleteBenchmarkError naming every missing file: an evaluation must never
        silently cover fewer corruptions than it claims.
        """
        clean = self.clean_required if include_clean is None else include_clean
        grid = conditions([_corruption_stem(c) for c in corruptions], severities, clean=clean)
        if not grid:
            raise ValueError("nothing requested: give corruptions and/or include_clean=True")
        wanted = {(c, s): self.path_for(dataset, split, c, s) for c, s in grid}
        missing = sorted({str(p) for p in wanted.values() if not p.is_file()})
        if missing:
            raise IncompleteBenchmarkError(
                f"{len(missing)} of {len(set(wanted.values()))} benchmark files missing for "
                f"{dataset}/{split} under {self.root} ({self.name} layout):\n  " + "\n  ".join(missing)
            )
        return wanted

    def start_file(
        self, writer: NpzWriter, file: BenchmarkFile, labels: np.ndarray, image_shape: Iterable[int]
    ) -> None:
        """Write ``file``'s labels (tiled per block) and declare its images (streamed after)."""
        labels = self.stored_labels(labels)
        writer.add(self.label_key, np.concatenate([labels] * file.blocks))
        writer.declare(self.image_key, (file.blocks * len(labels), *_image_shape(image_shape)), np.uint8)

    def open_writer(
        self,
        file: BenchmarkFile,
        *,
        labels: np.ndarray,
        image_shape: Iterable[int],
        compress: bool = False,
    ) -> NpzWriter:
        """A writer for ``file`` with its labels written; write its images, then ``close()``."""
        writer = NpzWriter(file.path, compress=compress)
        try:
            self.start_file(writer, file, labels, image_shape)
        except BaseException:
            writer.abort()
            raise
        return writer


class MediMetaCLayout(Layout):
    """``<root>/<dataset>/<split>/{clean,<corruption>_severity_<k>}.npz`` (images, labels)."""

    name = "medimeta-c"
    title = "MediMeta-C"
    image_key = "images"
    label_key = "labels"
    clean_required = True
    file_per_severity = True

    def _path(self, dataset: str, split: str, corruption: str, severity: int | None) -> Path:
        stem = CLEAN if is_clean(corruption) else f"{_corruption_stem(corruption)}_severity_{severity}"
        return self.root / dataset / split / f"{stem}.npz"

    def files(
        self, dataset: str, split: str, corruptions: Iterable[str], severities: Sequence[int]
    ) -> list[BenchmarkFile]:
        return [
            BenchmarkFile(self.path_for(dataset, split, c, s), c, () if is_clean(c) else (s,))
            for c, s in conditions(corruptions, severities)
        ]

    def manifest_path(self, dataset: str, split: str) -> Path:
        return self.root / _component("dataset", dataset) / f"{_component('split', split)}-manifest.json"

    def _read(
        self, path: Path, dataset: str, split: str, cell: Condition, info: DatasetInfo
    ) -> ImageDataset:
        arrays = load_npz(path, [self.image_key, self.label_key])
        return _dataset(dataset, split, arrays[self.image_key], arrays[self.label_key], info, path)

    def list(self, dataset: str, split: str) -> list[Condition]:
        """Sorted (corruption, severity) pairs whose files exist (the clean file excluded)."""
        folder = self.path_for(dataset, split).parent
        if not folder.is_dir():
            return []
        found = []
        for entry in folder.iterdir():
            match = _SEVERITY_FILE.match(entry.name)
            if match and entry.is_file():
                found.append((match["corruption"], int(match["severity"])))
        return sorted(found)


class MedMNISTCLayout(Layout):
    """``<root>/<dataset>/<corruption>.npz``: all severities of a corruption in one file,
    severity-major (test_images, test_labels). The official files hold the test split."""

    name, title = "medmnist-c", "MedMNIST-C"
    image_key, label_key = "test_images", "test_labels"
    clean_required = False  # official folders hold no clean file: the dataset itself is clean
    file_per_severity = False  # one file holds every severity

    def _path(self, dataset: str, split: str, corruption: str, severity: int | None) -> Path:
        name = CLEAN if is_clean(corruption) else _component("corruption", corruption)
        return self.root / dataset / f"{name}.npz"

    def files(
        self, dataset: str, split: str, corruptions: Iterable[str], severities: Sequence[int]
    ) -> list[BenchmarkFile]:
        levels = tuple(check_severity(s) for s in severities)
        return [BenchmarkFile(self.path_for(dataset, split), CLEAN, ())] + [
            BenchmarkFile(self.path_for(dataset, split, c), c, levels) for c in corruptions
        ]

    def manifest_path(self, dataset: str, split: str) -> Path:
        return self.root / _component("dataset", dataset) / "manifest.json"

    def stored_labels(self, labels: np.ndarray) -> np.ndarray:
        return _labels_2d(labels)

    def _blocks(self, path: Path, corruption: str) -> tuple[int, ...]:
        """The severities stacked in ``path``: from a generated folder's manifest, else the
        official five (the clean file is one block)."""
        if is_clean(corruption):
            return (0,)
        manifest = self.manifest_path(path.parent.name, "test")
        if manifest.is_file():
            entry = json.loads(manifest.read_text()).get("files", {}).get(
                str(path.relative_to(self.root)))
            if entry and entry.get("severities"):
                return tuple(entry["severities"])
        return SEVERITIES

    def _read(
        self, path: Path, dataset: str, split: str, cell: Condition, info: DatasetInfo
    ) -> ImageDataset:
        blocks = self._blocks(path, cell[0])
        if cell[1] not in blocks:
            raise ValueError(f"{path} holds severities {list(blocks)}, not {cell[1]}")
        return self.read_block(path, dataset, blocks.index(cell[1]), len(blocks), info)

    def read_block(
        self, path: Path, dataset: str, block: int, n_blocks: int, info: DatasetInfo
    ) -> ImageDataset:
        """Rows ``block*N .. (block+1)*N - 1`` of a severity-major file of ``n_blocks`` blocks.

        Reads only that block (a memmap slice when stored, a streamed read when compressed as
        the official ``savez_compressed`` files are).
        """
        shapes = npz_array_info(path)
        for key in (self.image_key, self.label_key):
            if key not in shapes:
                raise NpzFormatError(f"{path} lacks {key!r}; arrays present: {sorted(shapes)}")
        total = shapes[self.image_key][0][0]
        if total % n_blocks or shapes[self.label_key][0][:1] != (total,):
            raise NpzFormatError(
                f"{path}: {self.image_key} has {total} rows and {self.label_key} shape "
                f"{shapes[self.label_key][0]}; expected {n_blocks}*N rows in both"
            )
        n = total // n_blocks
        start, stop = block * n, (block + 1) * n
        images = load_npz_rows(path, self.image_key, start, stop)
        labels = load_npz_rows(path, self.label_key, start, stop)
        return _dataset(dataset, "test", images, labels, info, path)

    def list(self, dataset: str) -> list[str]:
        """Sorted corruption names with a file in ``<root>/<dataset>/``."""
        folder = self.root / _component("dataset", dataset)
        if not folder.is_dir():
            return []
        return sorted(
            p.stem for p in folder.glob("*.npz") if p.is_file() and not p.name.startswith(".")
        )


LAYOUTS: dict[str, type[Layout]] = {cls.name: cls for cls in (MediMetaCLayout, MedMNISTCLayout)}


def get_layout(name: str, root: str | Path) -> Layout:
    """The layout registered as ``name`` (``medimeta-c`` or ``medmnist-c``) under ``root``."""
    if name not in LAYOUTS:
        raise ValueError(f"unknown layout {name!r}; known: {', '.join(LAYOUTS)}")
    return LAYOUTS[name](Path(root))


def is_complete(
    path: str | Path, keys: Iterable[str] = ("images", "labels"), rows: int | None = None
) -> bool:
    """True when a benchmark file exists and holds ``keys`` (with ``rows`` rows, if given)."""
    return npz_is_complete(path, keys, rows)


# ---------------------------------------------------------------- shorthands of the layouts


def medimeta_c_path(
    root: str | Path,
    dataset: str,
    split: str,
    corruption: str | None = None,
    severity: int | None = None,
) -> Path:
    """``<root>/<dataset>/<split>/clean.npz`` or ``.../<corruption>_severity_<k>.npz``.

    ``corruption`` None or 'clean' selects the clean file (then ``severity`` None or 0).
    """
    return MediMetaCLayout(root).path_for(dataset, split, corruption, severity)


def list_medimeta_c(root: str | Path, dataset: str, split: str) -> list[Condition]:
    """Sorted (corruption, severity) pairs whose files exist (the clean file excluded)."""
    return MediMetaCLayout(root).list(dataset, split)


def require_medimeta_c(
    root: str | Path,
    dataset: str,
    split: str,
    corruptions: Iterable[str],
    severities: Iterable[int] = SEVERITIES,
    include_clean: bool = True,
) -> dict[Condition, Path]:
    """``MediMetaCLayout(root).require``: paths keyed (corruption, severity), all present."""
    return MediMetaCLayout(root).require(
        dataset, split, corruptions, tuple(severities), include_clean=include_clean
    )


def read_medimeta_c(
    root: str | Path, dataset: str, split: str, corruption: str | None = None,
    severity: int | None = None, *, info: DatasetInfo | None = None,
) -> ImageDataset:  # fmt: skip
    """One MediMeta-C file as an ``ImageDataset`` (memory-mapped when stored uncompressed)."""
    return MediMetaCLayout(root).read(dataset, split, corruption, severity, info=info)


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
    layout = MediMetaCLayout(root)
    corruption, severity = clean_condition(corruption, severity)
    file = BenchmarkFile(layout.path_for(dataset, split, corruption, severity), corruption,
                         () if is_clean(corruption) else (severity,))
    return layout.open_writer(file, labels=labels, image_shape=image_shape, compress=compress)


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
    return MedMNISTCLayout(root).path_for(dataset, "test", corruption)


def list_medmnist_c(root: str | Path, dataset: str) -> list[str]:
    """Sorted corruption names with a file in ``<root>/<dataset>/``."""
    return MedMNISTCLayout(root).list(dataset)


def read_medmnist_c(
    root: str | Path,
    dataset: str,
    corruption: str,
    severity: int,
    *,
    info: DatasetInfo | None = None,
    n_severities: int = MEDMNIST_C_SEVERITIES,
) -> ImageDataset:
    """Severity ``severity`` of an official MedMNIST-C file of ``n_severities`` severity
    blocks: rows (k-1)N .. kN-1 (only that block is read)."""
    layout = MedMNISTCLayout(root)
    corruption, severity = clean_condition(corruption, severity)
    path = layout.path_for(dataset, "test", corruption, severity)
    if not path.is_file():
        raise DataNotFoundError(f"MedMNIST-C file not found: {path}")
    if severity > n_severities:
        raise ValueError(f"severity must be in 1..{n_severities}, got {severity}")
    return layout.read_block(path, dataset, severity - 1, n_severities,
                             info or benchmark_dataset_info(dataset))


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
            for severity in SEVERITIES:
                for _, batch, _ in ds.iter_batches(64):
                    w.write("test_images", tensor_to_images(corrupt(batch, severity)))
    """
    layout = MedMNISTCLayout(root)
    file = BenchmarkFile(medmnist_c_path(root, dataset, corruption), corruption,
                         tuple(range(1, n_severities + 1)))
    return layout.open_writer(file, labels=labels, image_shape=image_shape, compress=compress)
