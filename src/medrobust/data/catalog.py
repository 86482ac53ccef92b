"""Open a dataset from what a user types: a MedMNIST flag, an .npz file or an image folder.

:class:`DataOptions` holds what a user can say about their data (grey, squaring, slices,
class names, modality); :data:`MODALITIES` names the modalities a user can give and the
MedMNIST dataset whose MedMNIST-C corruptions stand for each.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import ImageDataset
from .folders import read_image_folder
from .medmnist import MEDMNIST_2D_FLAGS, MEDMNIST_MODALITIES, load_medmnist
from .npz import NpzFormatError, load_npz, npz_array_info
from .paths import DataNotFoundError
from .readers import RESIZE_MODES, Slicing, square_images, to_grey

__all__ = ["MODALITIES", "DataOptions", "has_splits", "medmnist_c_dataset_for", "open_dataset"]

_MEDMNIST_FILE = re.compile(r"^(?P<flag>[a-z]+mnist)(?:_(?P<size>28|64|128|224))?$")

# --modality value -> (the dataset's modality text, used in prompts; the MedMNIST dataset
# whose MedMNIST-C corruption set is that modality's default suite, None where there is none).
MODALITIES: dict[str, tuple[str, str | None]] = {
    "x-ray": ("chest X-ray", "chestmnist"),  # ChestMNIST: NIH ChestX-ray14
    "ultrasound": ("ultrasound", "breastmnist"),
    "ct": ("CT", "organamnist"),
    "mri": ("MRI", None),
    "oct": ("retinal OCT", "octmnist"),
    "fundus": ("fundus photography", "retinamnist"),
    "dermatoscopy": ("dermatoscopy", "dermamnist"),
    "pathology": ("histopathology (H&E)", "pathmnist"),
    "blood-smear": ("blood cell microscopy", "bloodmnist"),
    "microscopy": ("microscopy", "tissuemnist"),
}


@dataclass(frozen=True)
class DataOptions:
    """What a user says about their data when a dataset is opened.

    ``grey`` converts colour images to one channel before anything else (PIL's 'L' rule);
    ``resize`` makes non-square images square: 'stretch' (the default, as before: the resize
    to the suite's size distorts the aspect ratio), 'pad' (centred on black) or 'crop'
    (centred); ``slicing`` picks the 2-D slices of volumes; ``class_names`` name the labels
    0..K-1 (image folders: in the sorted folder order); ``modality`` is a key of
    :data:`MODALITIES`.
    """

    grey: bool = False
    resize: str = "stretch"
    slicing: Slicing = field(default_factory=Slicing)
    class_names: tuple[str, ...] | None = None
    modality: str | None = None

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")
        if self.modality is not None and self.modality not in MODALITIES:
            raise ValueError(
                f"unknown modality {self.modality!r}; choose one of {', '.join(MODALITIES)}"
            )
        if self.class_names is not None:
            names = tuple(str(n).strip() for n in self.class_names)
            if not names or not all(names):
                raise ValueError(f"class names must be non-empty, got {list(self.class_names)}")
            if len(set(names)) != len(names):
                raise ValueError(f"class names must differ from each other, got {list(names)}")
            object.__setattr__(self, "class_names", names)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (``from_dict`` reads them back)."""
        return {"grey": self.grey, "resize": self.resize, "slice_axis": self.slicing.axis,
                "slices": self.slicing.which,
                "class_names": None if self.class_names is None else list(self.class_names),
                "modality": self.modality}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataOptions:
        """The options ``to_dict`` wrote; unknown keys are an error."""
        known = {"grey", "resize", "slice_axis", "slices", "class_names", "modality"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown data options {unknown}; known: {sorted(known)}")
        values = dict(data)
        slicing = Slicing(values.pop("slice_axis", 2), values.pop("slices", "middle"))
        names = values.pop("class_names", None)
        return cls(slicing=slicing, class_names=None if names is None else tuple(names), **values)


def medmnist_c_dataset_for(name: str, modality: str | None) -> str | None:
    """The MedMNIST dataset whose MedMNIST-C corruptions suit a dataset: itself if it is one,
    else the one its modality (a :data:`MODALITIES` key or a dataset's modality text) stands
    for; None when there is none."""
    if name in MEDMNIST_2D_FLAGS:
        return name
    if not modality:
        return None
    text = modality.lower()
    if text in MODALITIES:
        return MODALITIES[text][1]
    known = {d.lower(): flag for d, flag in MODALITIES.values()}
    for flag, description in MEDMNIST_MODALITIES.items():
        known.setdefault(description.lower(), flag)
    return known.get(text)


def open_dataset(
    spec: str | Path,
    *,
    split: str = "test",
    size: int = 28,
    root: str | Path | None = None,
    image_size: int = 224,
    download: bool = True,
    options: DataOptions | None = None,
    named_classes: bool = False,
) -> ImageDataset:
    """Resolve ``spec`` to an :class:`ImageDataset`, read as ``options`` say.

    * a 2D MedMNIST flag (``breastmnist``): read ``<flag>[_<size>].npz`` from the data root;
    * a path to a MedMNIST-style ``.npz`` (``<split>_images``/``<split>_labels``; class names
      from ``options``, else a ``class_names`` array in the file);
    * a folder with one sub-folder per class of images, DICOM or NIfTI files (resized to
      ``image_size``).

    ``named_classes`` refuses a dataset whose classes have no names (zero-shot prompts
    need them) instead of naming them by their numbers.
    """
    options = options or DataOptions()
    text = str(spec)
    path = Path(text).expanduser()
    if text in MEDMNIST_2D_FLAGS:
        dataset = load_medmnist(text, split=split, size=size, root=root, download=download)
    elif path.is_dir():
        return read_image_folder(
            path, size=image_size, split=split, mode="L" if options.grey else None,
            modality=_modality_text(options, "unknown"), class_names=options.class_names,
            resize=options.resize, slicing=options.slicing,
        )
    elif path.suffix == ".npz":
        if not path.is_file():
            raise DataNotFoundError(f"dataset file not found: {path}")
        match = _MEDMNIST_FILE.match(path.stem)
        if match and match["flag"] in MEDMNIST_2D_FLAGS:
            dataset = load_medmnist(match["flag"], split=split, size=int(match["size"] or 28),
                                    root=path.parent, download=False)
        else:
            dataset = _generic_npz(path, split, options.class_names, named_classes)
    else:
        raise KeyError(
            f"unknown dataset {text!r}: give a MedMNIST flag ({', '.join(MEDMNIST_2D_FLAGS)}), "
            "a .npz file or an image folder with one sub-folder per class"
        )
    return _apply_options(dataset, options)


def has_splits(spec: str | Path) -> bool:
    """Whether ``spec`` (as :func:`open_dataset` takes it) has its own train/val/test splits:
    MedMNIST flags and files and npz files with ``<split>_images`` do; image folders and npz
    files holding only ``images``/``labels`` do not (``adapt`` then partitions them)."""
    text = str(spec)
    path = Path(text).expanduser()
    if text in MEDMNIST_2D_FLAGS:
        return True
    if path.is_dir():
        return False
    if path.suffix == ".npz" and path.is_file():
        match = _MEDMNIST_FILE.match(path.stem)
        if match and match["flag"] in MEDMNIST_2D_FLAGS:
            return True
        return any(k.endswith("_images") for k in npz_array_info(path))
    return True


def _modality_text(options: DataOptions, default: str) -> str:
    return MODALITIES[options.modality][0] if options.modality else default


def _apply_options(dataset: ImageDataset, options: DataOptions) -> ImageDataset:
    """``options`` applied to a dataset read from an array file; the same dataset when none apply."""
    images, reading = dataset.images, dict(dataset.reading)
    if options.grey and images.ndim == 4:
        images = to_grey(images)
        reading["grey"] = True
    if images.shape[1] != images.shape[2]:
        images = square_images(images, options.resize)
        reading["resize"] = options.resize
    names = list(dataset.class_names)
    if options.class_names is not None and list(options.class_names) != names:
        if len(options.class_names) != len(names):
            raise ValueError(
                f"{len(options.class_names)} class names given for the {len(names)} classes of "
                f"{dataset.name} ({names})"
            )
        reading["source_class_names"] = names
        names = list(options.class_names)
    modality = _modality_text(options, dataset.modality)
    if images is dataset.images and reading == dataset.reading and modality == dataset.modality:
        return dataset
    return ImageDataset(
        name=dataset.name, split=dataset.split, images=images, labels=dataset.labels,
        class_names=names, modality=modality, task=dataset.task, source=dataset.source,
        indices=dataset.indices, reading=reading,
    )


def _generic_npz(
    path: Path, split: str, class_names: Sequence[str] | None, named_classes: bool
) -> ImageDataset:
    keys = npz_array_info(path)
    for image_key, label_key in ((f"{split}_images", f"{split}_labels"), ("images", "labels")):
        if image_key in keys:
            if label_key not in keys:
                raise NpzFormatError(f"{path} has {image_key!r} but no label array {label_key!r}")
            arrays = load_npz(path, [image_key, label_key])
            labels = np.asarray(arrays[label_key]).reshape(len(arrays[label_key]), -1)
            labels = labels[:, 0] if labels.shape[1] == 1 else labels
            names = _npz_class_names(path, keys, labels, class_names, named_classes)
            n_classes = len(names)
            return ImageDataset(
                name=path.stem, split=split, images=arrays[image_key], labels=labels,
                class_names=names, modality="unknown",
                task="multi-label" if labels.ndim == 2 else ("binary" if n_classes == 2 else "multi-class"),
                source=str(path),
            )
    raise NpzFormatError(
        f"{path} holds no images for split {split!r}: expected {split}_images/{split}_labels "
        f"or images/labels, found {sorted(keys)}"
    )


def _npz_class_names(
    path: Path, keys: Sequence[str], labels: np.ndarray, given: Sequence[str] | None,
    named_classes: bool,
) -> list[str]:
    """Class names of a generic .npz: given, else its ``class_names`` array, else numbers
    (refused with ``named_classes``)."""
    multi_label = labels.ndim == 2
    needed = labels.shape[1] if multi_label else (int(labels.max()) + 1 if labels.size else 0)
    if given is None and "class_names" in keys:
        given = [str(n) for n in load_npz(path, ["class_names"])["class_names"].reshape(-1)]
    if given is not None:
        if len(given) < needed or (multi_label and len(given) != needed):
            raise ValueError(
                f"{len(given)} class names for {path}, whose labels need {needed} "
                f"(labels 0..{needed - 1}, in label order)"
            )
        return list(given)
    if named_classes:
        raise ValueError(
            f"{path} has no class names (labels 0..{needed - 1}) and zero-shot prompts need them: "
            f"pass --class-names with {needed} names in label order, or store a 'class_names' "
            "array in the file"
        )
    return [str(i) for i in range(needed)]
