"""Datasets stored as image files: class sub-folders, and the MedIMeta on-disk format.

Files are decoded by :mod:`.readers` (PIL formats, DICOM, NIfTI).

MedIMeta (Woerner et al.; ``medimeta-pytorch``) stores each dataset as::

    <root>/<dir>/info.yaml                 id, name, domain, input_size [C, H, W], tasks
    <root>/<dir>/images/000000.tiff ...    one image per index (images.hdf5 also exists)
    <root>/<dir>/task_labels/<task>.npy    one label row per image index
    <root>/<dir>/splits/<split>.txt        lines 'images/000123.tiff' (original_splits/ too)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from .datasets import ImageDataset
from .paths import DataNotFoundError
from .readers import (
    DICOM_EXTENSIONS,
    IMAGE_EXTENSIONS,
    NIFTI_EXTENSIONS,
    FileInfo,
    ImageFileError,
    Slicing,
    file_format,
    probe_file,
    read_file,
    square_images,
)

__all__ = ["IMAGE_EXTENSIONS", "load_images", "read_image_folder", "read_medimeta"]

_MEDIMETA_TASKS = {
    "BINARY_CLASSIFICATION": "binary",
    "MULTICLASS_CLASSIFICATION": "multi-class",
    "ORDINAL_REGRESSION": "ordinal",
    "MULTILABEL_CLASSIFICATION": "multi-label",
}


def _size_hw(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(isinstance(s, int) and s > 0 for s in hw):
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    return hw  # type: ignore[return-value]


def load_images(
    paths: Sequence[Path],
    *,
    grey: bool,
    size: tuple[int, int] | None = None,
    resize: str = "stretch",
    slicing: Slicing | None = None,
    infos: Sequence[FileInfo] | None = None,
) -> np.ndarray:
    """Decode ``paths`` to one uint8 (N, H, W) or (N, H, W, 3) array (see :mod:`.readers`).

    ``size`` = (height, width) resizes with bicubic filtering after ``resize`` made each
    image square ('stretch' leaves it to the resize, 'pad' or 'crop' keep the aspect ratio);
    without ``size`` all images must share one size (else a ValueError lists the sizes
    found). A volume or multi-frame file gives the rows ``slicing`` picks.
    """
    slicing = slicing or Slicing()
    infos = list(infos) if infos is not None else [probe_file(p, slicing) for p in paths]
    mode = "L" if grey else "RGB"
    if size is None:
        sizes = Counter((i.height, i.width) for i in infos for _ in range(i.count))
        if len(sizes) > 1:
            raise ValueError(
                f"images differ in size (height, width): {dict(sizes.most_common(5))}; "
                "pass size= to resize them to one size"
            )
        size = next(iter(sizes), (0, 0))
    h, w = size
    n = sum(i.count for i in infos)
    out = np.empty((n, h, w) if grey else (n, h, w, 3), dtype=np.uint8)
    row = 0
    for path, info in zip(paths, infos, strict=True):
        images = read_file(path, slicing)
        if len(images) != info.count:
            raise ImageFileError(f"{path} changed while it was read ({info.count} -> {len(images)} images)")
        for img in images:
            img = img.convert(mode)
            if resize != "stretch" and img.width != img.height:
                img = Image.fromarray(square_images(np.asarray(img)[None], resize)[0])
            if img.size != (w, h):
                img = img.resize((w, h), Image.Resampling.BICUBIC)
            out[row] = np.asarray(img)
            row += 1
    return out


def read_image_folder(
    path: str | Path,
    size: int | Sequence[int] | None = None,
    *,
    mode: str | None = None,
    name: str | None = None,
    split: str = "all",
    modality: str = "unknown",
    task: str | None = None,
    class_names: Sequence[str] | None = None,
    resize: str = "stretch",
    slicing: Slicing | None = None,
) -> ImageDataset:
    """A dataset from ``path/<class>/<file>``: classes are the sorted sub-folder names.

    Files are images (PNG, JPEG, ...), DICOM or NIfTI (see :mod:`.readers`). ``mode`` 'L'
    (grey) or 'RGB'; None picks the majority mode of the files. ``size`` (int or (height,
    width)) resizes, after ``resize`` ('stretch', 'pad', 'crop') made non-square images
    square; it is required when the images differ in size. ``class_names`` replaces the
    folder names (same count, in the sorted folder order). ``task`` defaults to 'binary'
    for 2 classes, else 'multi-class'. ``reading`` of the result records these choices.
    """
    root, slicing = Path(path), slicing or Slicing()
    if not root.is_dir():
        raise DataNotFoundError(f"image folder not found: {root}")
    if mode not in (None, "L", "RGB"):
        raise ValueError(f"mode must be 'L', 'RGB' or None, got {mode!r}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"{root} has no class sub-folders (expected {root}/<class>/<image>)")
    folder_names = [p.name for p in class_dirs]
    names = _class_names(folder_names, class_names, root)
    files: list[Path] = []
    per_file: list[int] = []
    for label, folder in enumerate(class_dirs):
        found = sorted(p for p in folder.iterdir() if p.is_file() and file_format(p) is not None)
        if not found:
            raise ValueError(
                f"class folder {folder} holds no images "
                f"({', '.join(IMAGE_EXTENSIONS + DICOM_EXTENSIONS + NIFTI_EXTENSIONS)})"
            )
        files += found
        per_file += [label] * len(found)
    infos = [probe_file(p, slicing) for p in files]
    grey = sum(i.grey for i in infos) > len(infos) / 2 if mode is None else mode == "L"
    images = load_images(files, grey=grey, size=_size_hw(size), resize=resize, slicing=slicing,
                         infos=infos)
    labels = np.repeat(np.asarray(per_file, dtype=np.int64), [i.count for i in infos])
    reading: dict[str, object] = {"grey": grey, "resize": resize}
    if any(file_format(p) in ("dicom", "nifti") for p in files):
        reading.update(slice_axis=slicing.axis, slices=slicing.which)
    if names != folder_names:
        reading["folder_names"] = folder_names
    return ImageDataset(
        name=name or root.name,
        split=split,
        images=images,
        labels=labels,
        class_names=names,
        modality=modality,
        task=task or ("binary" if len(class_dirs) == 2 else "multi-class"),
        source=str(root),
        reading=reading,
    )


def _class_names(folder_names: list[str], given: Sequence[str] | None, root: Path) -> list[str]:
    if given is None:
        return folder_names
    names = [str(n) for n in given]
    if len(names) != len(folder_names):
        raise ValueError(
            f"{len(names)} class names given for the {len(folder_names)} class folders of {root} "
            f"({folder_names}, in this order)"
        )
    return names


def _medimeta_dir(root: Path, dataset_id: str) -> tuple[Path, dict]:
    """The folder whose info.yaml has ``id == dataset_id`` (the folder name usually)."""
    if not root.is_dir():
        raise DataNotFoundError(f"MedIMeta root not found: {root}")
    found: dict[str, tuple[Path, dict]] = {}
    for folder in sorted(p for p in root.iterdir() if (p / "info.yaml").is_file()):
        with open(folder / "info.yaml", encoding="utf-8") as fh:
            info = yaml.safe_load(fh)
        if not isinstance(info, dict):
            raise ValueError(f"{folder / 'info.yaml'} is not a YAML mapping")
        found[str(info.get("id", folder.name))] = (folder, info)
    if dataset_id not in found:
        raise DataNotFoundError(
            f"MedIMeta dataset {dataset_id!r} not found under {root}; datasets present: "
            f"{sorted(found)} (each <root>/<dir>/info.yaml with an 'id')"
        )
    return found[dataset_id]


def _split_indices(folder: Path, split: str, original: bool) -> np.ndarray:
    sub = "original_splits" if original else "splits"
    split_file = folder / sub / f"{split}.txt"
    if not split_file.is_file():
        present = sorted(p.stem for p in (folder / sub).glob("*.txt"))
        raise DataNotFoundError(
            f"split {split!r} not found ({split_file}); {sub} present: {present}"
        )
    lines = [ln.strip() for ln in split_file.read_text(encoding="utf-8").splitlines()]
    try:
        return np.array([int(Path(ln).stem) for ln in lines if ln], dtype=np.int64)
    except ValueError as exc:
        raise ValueError(f"{split_file}: lines must name images like 'images/000123.tiff'") from exc


def read_medimeta(
    root: str | Path,
    dataset_id: str,
    task: str,
    split: str,
    *,
    original_split: bool = False,
    size: int | Sequence[int] | None = None,
) -> ImageDataset:
    """One split of one task of a MedIMeta dataset, images decoded from ``images/*.tiff``.

    Class names, task type, modality ('domain') and channels (``input_size[0]``) come from
    info.yaml. ``original_split`` reads ``original_splits/`` instead of ``splits/``.
    """
    folder, info = _medimeta_dir(Path(root), dataset_id)
    tasks = {t["task_name"]: t for t in info.get("tasks", [])}
    if task not in tasks:
        raise ValueError(
            f"MedIMeta dataset {dataset_id!r} has no task {task!r}; tasks: {sorted(tasks)}"
        )
    task_info = tasks[task]
    target = task_info.get("task_target")
    if target not in _MEDIMETA_TASKS:
        raise ValueError(
            f"unsupported MedIMeta task_target {target!r}; known: {sorted(_MEDIMETA_TASKS)}"
        )
    label_map = {int(k): str(v) for k, v in task_info["labels"].items()}
    if sorted(label_map) != list(range(len(label_map))):
        raise ValueError(f"{folder / 'info.yaml'}: labels of task {task!r} must be numbered 0..K-1")
    label_file = folder / "task_labels" / f"{task}.npy"
    if not label_file.is_file():
        raise DataNotFoundError(f"MedIMeta label file not found: {label_file}")
    all_labels = np.load(label_file, allow_pickle=False)
    indices = _split_indices(folder, split, original_split)
    if indices.size and (indices.min() < 0 or indices.max() >= len(all_labels)):
        raise ValueError(f"split {split!r} names images beyond the {len(all_labels)} labels")
    paths = [folder / "images" / f"{i:06d}.tiff" for i in indices]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataNotFoundError(f"{len(missing)} MedIMeta image(s) missing, e.g. {missing[:3]}")
    channels = int(info.get("input_size", [3])[0])
    return ImageDataset(
        name=dataset_id,
        split=split,
        images=load_images(paths, grey=channels == 1, size=_size_hw(size)),
        labels=all_labels[indices],
        class_names=[label_map[i] for i in range(len(label_map))],
        modality=str(info.get("domain", "unknown")),
        task=_MEDIMETA_TASKS[target],
        source=str(folder),
    )
