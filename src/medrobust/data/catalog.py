"""Open a dataset from what a user types: a MedMNIST flag, an .npz file or an image folder."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .datasets import ImageDataset
from .folders import read_image_folder
from .medmnist import MEDMNIST_2D_FLAGS, load_medmnist
from .npz import NpzFormatError, load_npz, npz_array_info
from .paths import DataNotFoundError

__all__ = ["open_dataset"]

_MEDMNIST_FILE = re.compile(r"^(?P<flag>[a-z]+mnist)(?:_(?P<size>28|64|128|224))?$")


def open_dataset(
    spec: str | Path,
    *,
    split: str = "test",
    size: int = 28,
    root: str | Path | None = None,
    image_size: int = 224,
    download: bool = True,
) -> ImageDataset:
    """Resolve ``spec`` to an :class:`ImageDataset`.

    * a 2D MedMNIST flag (``breastmnist``): read ``<flag>[_<size>].npz`` from the data root;
    * a path to a MedMNIST-style ``.npz`` (``<split>_images``/``<split>_labels``);
    * a folder with one sub-folder per class (images resized to ``image_size``).
    """
    text = str(spec)
    if text in MEDMNIST_2D_FLAGS:
        return load_medmnist(text, split=split, size=size, root=root, download=download)
    path = Path(text).expanduser()
    if path.is_dir():
        return read_image_folder(path, size=image_size, split=split)
    if path.suffix == ".npz":
        if not path.is_file():
            raise DataNotFoundError(f"dataset file not found: {path}")
        match = _MEDMNIST_FILE.match(path.stem)
        if match and match["flag"] in MEDMNIST_2D_FLAGS:
            return load_medmnist(match["flag"], split=split, size=int(match["size"] or 28),
                                 root=path.parent, download=False)
        return _generic_npz(path, split)
    raise KeyError(
        f"unknown dataset {text!r}: give a MedMNIST flag ({', '.join(MEDMNIST_2D_FLAGS)}), "
        "a .npz file or an image folder with one sub-folder per class"
    )


def _generic_npz(path: Path, split: str) -> ImageDataset:
    keys = npz_array_info(path)
    for image_key, label_key in ((f"{split}_images", f"{split}_labels"), ("images", "labels")):
        if image_key in keys:
            if label_key not in keys:
                raise NpzFormatError(f"{path} has {image_key!r} but no label array {label_key!r}")
            arrays = load_npz(path, [image_key, label_key])
            labels = np.asarray(arrays[label_key]).reshape(len(arrays[label_key]), -1)
            labels = labels[:, 0] if labels.shape[1] == 1 else labels
            n_classes = int(labels.max()) + 1 if labels.size else 0
            return ImageDataset(
                name=path.stem, split=split, images=arrays[image_key], labels=labels,
                class_names=[str(i) for i in range(n_classes)], modality="unknown",
                task="multi-label" if labels.ndim == 2 else ("binary" if n_classes == 2 else "multi-class"),
                source=str(path),
            )
    raise NpzFormatError(
        f"{path} holds no images for split {split!r}: expected {split}_images/{split}_labels "
        f"or images/labels, found {sorted(keys)}"
    )
