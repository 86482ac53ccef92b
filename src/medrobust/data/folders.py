"""Datasets stored as image files: class sub-folders, and the MedIMeta on-disk format.

MedIMeta (Woerner et al.; ``medimeta-pytorch``) stores each dataset as::

    <root>/<dir>/info.yaml                 id, name, domain, input_size [C, H, W], tasks
    <root>/<dir>/images/000000.tiff ...    one image per index (images.hdf5 also exists)
    <root>/<dir>/task_labels/<task>.npy    one label row per image index
    <root>/<dir>/splits/<split>.txt        lines 'images/000123.tiff' (original_splits/ too)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, UnidentifiedImageError

from .datasets import ImageDataset
from .paths import DataNotFoundError

__all__ = ["IMAGE_EXTENSIONS", "load_images", "read_image_folder", "read_medimeta"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
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


def _to_8bit(img: Image.Image) -> Image.Image:
    """High-bit-depth grey (I;16, I, F) -> 8-bit 'L' by scaling the full type range."""
    if img.mode in ("1", "L", "LA", "RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV"):
        return img
    arr = np.asarray(img, dtype=np.float64)
    top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
    return Image.fromarray(np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8))


def load_images(
    paths: Sequence[Path], *, grey: bool, size: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode ``paths`` to one uint8 (N, H, W) or (N, H, W, 3) array with PIL.

    ``size`` = (height, width) resizes with bicubic filtering; without it all images must
    share one size (else a ValueError lists the sizes found).
    """
    mode = "L" if grey else "RGB"
    if size is None:
        sizes = Counter()
        for path in paths:
            with _open(path) as img:
                sizes[(img.height, img.width)] += 1
        if len(sizes) > 1:
            raise ValueError(
                f"images differ in size (height, width): {dict(sizes.most_common(5))}; "
                "pass size= to resize them to one size"
            )
        size = next(iter(sizes), (0, 0))
    h, w = size
    out = np.empty((len(paths), h, w) if grey else (len(paths), h, w, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        with _open(path) as img:
            img = _to_8bit(img).convert(mode)
            if img.size != (w, h):
                img = img.resize((w, h), Image.Resampling.BICUBIC)
            out[i] = np.asarray(img)
    return out


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc


def _majority_grey(paths: Iterable[Path]) -> bool:
    votes = Counter()
    for path in paths:
        with _open(path) as img:
            votes[img.mode in _GREY_MODES] += 1
    return votes[True] > votes[False]


def read_image_folder(
    path: str | Path,
    size: int | Sequence[int] | None = None,
    *,
    mode: str | None = None,
    name: str | None = None,
    split: str = "all",
    modality: str = "unknown",
    task: str | None = None,
) -> ImageDataset:
    """A dataset from ``path/<class>/<image>``: classes are the sorted sub-folder names.

    ``mode`` 'L' (grey) or 'RGB'; None picks the majority mode of the files. ``size`` (int or
    (height, width)) resizes; it is required when the images differ in size. ``task``
    defaults to 'binary' for 2 classes, else 'multi-class'.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataNotFoundError(f"image folder not found: {root}")
    if mode not in (None, "L", "RGB"):
        raise ValueError(f"mode must be 'L', 'RGB' or None, got {mode!r}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"{root} has no class sub-folders (expected {root}/<class>/<image>)")
    files: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(class_dirs):
        found = sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not found:
            raise ValueError(
                f"class folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
            )
        files += found
        labels += [label] * len(found)
    grey = _majority_grey(files) if mode is None else mode == "L"
    images = load_images(files, grey=grey, size=_size_hw(size))
    return ImageDataset(
        name=name or root.name,
        split=split,
        images=images,
        labels=np.asarray(labels, dtype=np.int64),
        class_names=[p.name for p in class_dirs],
        modality=modality,
        task=task or ("binary" if len(class_dirs) == 2 else "multi-class"),
        source=str(root),
    )


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
