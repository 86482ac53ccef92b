"""In-process use of the corruption engine: ``corrupt``, a corrupting dataset view, and a
training-time random-corruption transform."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..runtime import to_device
from ..severity import SEVERITIES, check_severity, clean_condition, is_clean
from ._random import ImageRandom
from .functional._utils import check_images
from .suites import Suite, get_suite

__all__ = [
    "CorruptedDataset",
    "RandomCorruption",
    "corrupt",
    "from_channels_first",
    "prepare_images",
    "to_channels_first",
]


def to_channels_first(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """numpy (N, H, W) or (N, H, W, 3) uint8 -> tensor (N, C, H, W); tensors pass through."""
    if isinstance(images, torch.Tensor):
        check_images(images)
        return images
    array = np.asarray(images)
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and np.isnan(array).any():
            raise ValueError("images contain NaN; corruptions take uint8 images (0..255)")
        raise TypeError(f"images must be uint8 (0..255), got {array.dtype}")
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[-1] in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    else:
        raise ValueError(
            f"images must be (N, H, W) grey or (N, H, W, 3) RGB, got shape {array.shape}"
        )
    return torch.from_numpy(np.ascontiguousarray(array))


def from_channels_first(images: torch.Tensor, like: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_channels_first` for an input laid out like ``like``."""
    out = images.cpu().numpy()
    if like.ndim == 3:
        return out[:, 0]
    return out.transpose(0, 2, 3, 1)


def prepare_images(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Resize uint8 images (N, C, H, W) to ``size`` x ``size`` (bicubic, antialiased).

    This is the image as it enters the corruptions; ``size=None`` keeps the native size.
    """
    check_images(images)
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    if images.shape[0] == 0:
        return images.new_empty((0, images.shape[1], size, size))
    # the values of torchvision's ``resize(..., BICUBIC, antialias=True)``, without importing
    # torchvision (a second of start-up): torch resamples uint8 natively on CPU; elsewhere
    # through float32, clamped and rounded
    if images.device.type == "cpu":
        return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    resized = F.interpolate(images.to(torch.float32), size=(size, size), mode="bicubic",
                            align_corners=False, antialias=True)
    return resized.clamp_(0, 255).round_().to(torch.uint8)


def corrupt(
    images: np.ndarray | torch.Tensor,
    name: str,
    severity: int,
    seed: int = 0,
    *,
    suite: str | Suite | None = None,
    dataset: str | None = None,
    indices: Sequence[int] | None = None,
    resize: bool = True,
) -> np.ndarray | torch.Tensor:
    """Corrupt a batch of uint8 images with a suite's corruption at ``severity`` (1..5).

    ``images`` is a tensor (N, C, H, W) or an array (N, H, W[, 3]); the result has the same
    type and layout. The suite defaults to MedMNIST-C of ``dataset`` when one is given, else
    ImageNet-C. With ``resize`` images are first resized to the suite's reference size (224);
    otherwise size-dependent parameters are scaled to the native size.
    """
    if suite is None:
        suite = get_suite("medmnist-c", dataset) if dataset else get_suite("imagenet-c")
    elif not isinstance(suite, Suite):
        suite = get_suite(suite, dataset)
    tensor = to_channels_first(images)
    tensor = prepare_images(tensor, suite.reference_size if resize else None)
    factor = 1.0 if resize else tensor.shape[-1] / suite.reference_size
    out = suite[name].apply(tensor, severity, seed=seed, indices=indices, size_factor=factor)
    if isinstance(images, torch.Tensor):
        return out
    return from_channels_first(out, np.asarray(images))


class CorruptedDataset(torch.utils.data.Dataset):
    """A view of an image dataset that corrupts on the fly.

    Items are ``(image uint8 (C, S, S), label)``. Image ``i`` is corrupted exactly as in a
    generated benchmark with the same seed, whatever the access order or batch.
    """

    def __init__(
        self,
        dataset: Any,
        suite: Suite,
        corruption: str | None,
        severity: int | None,
        *,
        seed: int = 0,
        resize: bool = True,
    ) -> None:
        if not is_clean(corruption):
            suite[corruption]
        self.dataset = dataset
        self.suite = suite
        self.corruption, self.severity = clean_condition(corruption, severity)
        self.seed = seed
        self.size = suite.reference_size if resize else None

    def __len__(self) -> int:
        return len(self.dataset)

    def _corrupt(self, images: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
        images = prepare_images(images, self.size)
        if is_clean(self.corruption):
            return images
        factor = 1.0 if self.size else images.shape[-1] / self.suite.reference_size
        return self.suite[self.corruption].apply(
            images, self.severity, seed=self.seed, indices=indices, size_factor=factor
        )

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        indices, images, labels = next(iter(self.dataset.subset([i]).iter_batches(1)))
        return self._corrupt(images, [int(indices[0])])[0], labels[0]

    def iter_batches(
        self, batch_size: int = 256, device: torch.device | str = "cpu"
    ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
        """Batches ``(dataset indices, corrupted uint8 images on device, labels)``."""
        for indices, images, labels in self.dataset.iter_batches(batch_size):
            yield indices, self._corrupt(to_device(images, device), indices.tolist()), labels


class RandomCorruption(nn.Module):
    """Training-time augmentation: each image gets a random corruption and severity.

    With probability ``p`` an image is corrupted by a corruption drawn uniformly from
    ``suite`` (minus ``exclude``, e.g. the test corruptions) at a severity drawn from
    ``severities``. Every draw comes from the ``generator`` passed in or the module's own,
    seeded one, so an epoch is reproducible. Images keep their size (parameters scaled).
    """

    def __init__(
        self,
        suite: Suite,
        *,
        severities: Sequence[int] = SEVERITIES,
        exclude: Sequence[str] = (),
        p: float = 0.5,
        seed: int = 0,
    ) -> None:
        super().__init__()
        unknown = sorted(set(exclude) - set(suite.entries))
        if unknown:
            raise KeyError(f"cannot exclude {unknown}: not in suite {suite.name!r}")
        self.names = [n for n in suite.entries if n not in set(exclude)]
        if not self.names:
            raise ValueError("RandomCorruption needs at least one corruption left after exclude")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.severities = [check_severity(s) for s in severities]
        self.suite, self.p = suite, p
        self.generator = torch.Generator().manual_seed(seed)

    def forward(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        rows: torch.Tensor | None = None,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """Corrupt a batch. With ``rows`` (and ``batch_size``), ``images`` are those rows of a
        batch of ``batch_size`` images: the draws are made for the whole batch and these rows'
        are used, so a batch split across processes is corrupted as it would be whole."""
        check_images(images)
        g = generator or self.generator
        n = images.shape[0] if rows is None else int(batch_size)
        apply = torch.rand(n, generator=g) < self.p
        which = torch.randint(len(self.names), (n,), generator=g)
        severity = torch.tensor(self.severities)[torch.randint(len(self.severities), (n,), generator=g)]
        seeds = torch.randint(0, 2**62, (n,), generator=g)
        if rows is not None:
            rows = rows.cpu()
            apply, which, severity, seeds = apply[rows], which[rows], severity[rows], seeds[rows]
        factor = images.shape[-1] / self.suite.reference_size
        out = images.clone()
        for k, name in enumerate(self.names):
            for s in self.severities:
                members = torch.nonzero(apply & (which == k) & (severity == s)).flatten()
                if members.numel() == 0:
                    continue
                rng = ImageRandom(seeds[members].tolist(), images.device)
                members = members.to(images.device, non_blocking=True)  # pageable: staged now, no sync
                out[members] = self.suite[name].apply(images[members], s, rng=rng, size_factor=factor)
        return out

    def extra_repr(self) -> str:
        return f"suite={self.suite.name}, corruptions={len(self.names)}, p={self.p}"

