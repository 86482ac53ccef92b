"""The in-memory (or memory-mapped) labelled image set every loader returns.

Images stay in their storage layout, uint8 (N, H, W) grey or (N, H, W, 3) RGB, possibly a
read-only memmap; they become torch (B, C, H, W) uint8 tensors one batch at a time, so
memory stays bounded. ``indices`` maps each row to its position in the original dataset:
corruption seeding uses that index, so a subset corrupts each image exactly as the full set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "TASKS",
    "DatasetInfo",
    "ImageDataset",
    "check_images",
    "image_hashes",
    "images_to_tensor",
    "tensor_to_images",
]

TASKS = ("binary", "multi-class", "ordinal", "multi-label")


@dataclass(frozen=True)
class DatasetInfo:
    """Static metadata of a named dataset (class names, modality, task)."""

    name: str
    class_names: tuple[str, ...]
    modality: str
    task: str
    channels: int | None = None  # native channels, where known
    raw_class_names: tuple[str, ...] = ()  # the source's own names, when they differ
    source: str = ""  # where the metadata comes from


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, 3) array -> new contiguous uint8 tensor (N, C, H, W)."""
    arr = np.array(images, dtype=np.uint8, copy=True)  # copy: memmaps may be read-only
    tensor = torch.from_numpy(arr)
    if tensor.ndim == 3:
        return tensor.unsqueeze(1)
    return tensor.permute(0, 3, 1, 2).contiguous()


def tensor_to_images(images: torch.Tensor) -> np.ndarray:
    """uint8 tensor (N, C, H, W), C in {1, 3} -> numpy (N, H, W) grey or (N, H, W, 3) RGB."""
    check_images(images)
    arr = images.detach().cpu()
    if arr.shape[1] == 1:
        return arr[:, 0].numpy()
    return arr.permute(0, 2, 3, 1).contiguous().numpy()


def image_hashes(images: np.ndarray) -> list[str]:
    """SHA-256 of each image's content (shape and uint8 pixels, as stored): the identity that
    tells whether a test image was among an adapter's training or validation images."""
    arr = np.asarray(images)
    shape = str(arr.shape[1:]).encode()
    return [hashlib.sha256(shape + np.ascontiguousarray(img).tobytes()).hexdigest()
            for img in arr]


def check_images(images: Any, *, channels_last: bool = False) -> None:
    """Raise a clear error unless ``images`` are uint8 pixels in one of medrobust's two forms.

    * default: a tensor (N, C, H, W), C = 1 or 3, as corruptions and models take them;
    * ``channels_last=True``: a numpy array (N, H, W) grey or (N, H, W, 3) RGB, as
      datasets and benchmark files store them.
    """
    if not channels_last:
        _check_tensor_images(images)
        return
    if not isinstance(images, np.ndarray):
        raise TypeError(f"images must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        if images.dtype.kind in "fc" and bool(np.isnan(images).any()):
            raise ValueError(
                f"images are {images.dtype} and contain NaN values; images must be uint8 "
                "in [0, 255] (replace NaN and quantise first)"
            )
        raise TypeError(f"images must have dtype uint8, got {images.dtype}")
    if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
        raise ValueError(
            f"images have shape {images.shape}, which looks channel-first; expected "
            "(N, H, W) grey or (N, H, W, 3) RGB (channel-last)"
        )
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
        raise ValueError(
            f"images must have shape (N, H, W) for grey or (N, H, W, 3) for RGB, got {images.shape}"
        )


def _check_tensor_images(images: Any) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(
            f"images must be uint8 (raw pixels; models normalise them themselves), got {images.dtype}"
        )
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"images must have shape (N, C, H, W) with C = 1 or 3, got {tuple(images.shape)}"
        )


def _check_labels(labels: Any, n: int, task: str, num_classes: int) -> np.ndarray:
    if labels is None:
        raise ValueError("labels are missing: every image needs a label")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iub":
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.shape[:1] != (n,):
        raise ValueError(f"{n} images but labels have shape {labels.shape} (counts differ)")
    if task == "multi-label":
        if labels.ndim != 2 or labels.shape[1] != num_classes:
            raise ValueError(
                f"multi-label labels must have shape (N, {num_classes}), got {labels.shape}"
            )
        if labels.size and not np.isin(labels, (0, 1)).all():
            raise ValueError("multi-label labels must be 0 or 1")
    else:
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1:
            raise ValueError(f"{task} labels must have shape (N,) or (N, 1), got {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"label values must lie in [0, {num_classes - 1}] for {num_classes} class names, "
                f"got range [{labels.min()}, {labels.max()}]"
            )
    return labels.astype(np.int64, copy=False)


@dataclass(eq=False)
class ImageDataset:
    """Labelled uint8 images with their metadata; validated on construction.

    ``labels`` are int64 (N,) for single-label tasks or (N, K) 0/1 for multi-label ones
    ((N, 1) single-label labels are squeezed). ``indices`` (default ``arange(N)``) gives each
    row's position in the original dataset. ``reading`` records the choices made when the
    images were read (grey conversion, squaring, slicing); empty when the data was used as
    stored.
    """

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    modality: str
    task: str
    source: str
    indices: np.ndarray = field(default=None)  # type: ignore[assignment]
    reading: dict[str, Any] = field(default_factory=dict)  # how files became these images

    def __post_init__(self) -> None:
        check_images(self.images, channels_last=True)
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        names = self.class_names
        if isinstance(names, str) or not isinstance(names, Sequence) or not names:
            raise TypeError("class_names must be a non-empty list of strings")
        if not all(isinstance(c, str) for c in names):
            raise TypeError("class_names must all be strings")
        self.class_names = list(names)
        if self.task == "binary" and len(names) != 2:
            raise ValueError(f"a binary task needs exactly 2 class names, got {len(names)}")
        self.labels = _check_labels(self.labels, len(self.images), self.task, len(names))
        if self.indices is None:
            self.indices = np.arange(len(self.images), dtype=np.int64)
        else:
            self.indices = np.asarray(self.indices, dtype=np.int64)
            if self.indices.shape != (len(self.images),):
                raise ValueError(
                    f"indices must have shape ({len(self.images)},), got {self.indices.shape}"
                )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (
            f"ImageDataset({self.name!r}, split={self.split!r}, n={len(self)}, "
            f"image_size={self.image_size}, channels={self.channels}, task={self.task!r}, "
            f"classes={self.num_classes})"
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        """1 for grey, 3 for RGB."""
        return 1 if self.images.ndim == 3 else 3

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def info(self) -> DatasetInfo:
        """This dataset's metadata: what a stored benchmark of it is read back with."""
        return DatasetInfo(self.name, tuple(self.class_names), self.modality, self.task,
                           self.channels, source=self.source)

    @property
    def multi_label(self) -> bool:
        return self.task == "multi-label"

    def subset(self, indices: Sequence[int] | np.ndarray | slice) -> ImageDataset:
        """Rows ``indices`` (positions in this dataset) as a new dataset.

        The new ``indices`` still point into the original dataset. A slice keeps a memmap a
        memmap; an index array copies the selected images.
        """
        if isinstance(indices, slice):
            pos: Any = indices
        else:
            pos = np.asarray(indices)
            if pos.dtype == bool:
                if pos.shape != (len(self),):
                    raise ValueError(f"boolean mask must have shape ({len(self)},)")
                pos = np.flatnonzero(pos)
            if pos.size == 0:
                pos = pos.astype(np.int64)
            if pos.ndim != 1 or pos.dtype.kind not in "iu":
                raise TypeError("subset indices must be a 1-D integer array, a mask or a slice")
            if pos.size and (pos.min() < -len(self) or pos.max() >= len(self)):
                raise IndexError(f"subset index out of range for a dataset of {len(self)}")
        return ImageDataset(
            name=self.name,
            split=self.split,
            images=self.images[pos],
            labels=self.labels[pos],
            class_names=list(self.class_names),
            modality=self.modality,
            task=self.task,
            source=self.source,
            indices=self.indices[pos],
            reading=dict(self.reading),
        )

    def iter_batches(
        self, batch_size: int
    ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
        """Yield (original indices int64, images uint8 (B, C, H, W), labels) per batch.

        Only one batch is materialised at a time (slices of a memmap are read on demand).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            yield (
                self.indices[start:stop].copy(),
                images_to_tensor(self.images[start:stop]),
                torch.from_numpy(self.labels[start:stop].copy()),
            )

    def to_tensor(self) -> torch.Tensor:
        """All images as one uint8 (N, C, H, W) tensor (for small datasets)."""
        return images_to_tensor(self.images)

    def labels_tensor(self) -> torch.Tensor:
        """All labels as an int64 tensor."""
        return torch.from_numpy(self.labels.copy())
