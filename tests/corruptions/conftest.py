"""Helpers shared by the corruption tests, provided as fixtures.

The tests folder is not a package, so test modules do not import helpers from each other or
from a conftest; each fixture here returns one helper function:

* ``nchw`` / ``to_numpy`` / ``nhwc``: layout conversion between NumPy image batches and tensors;
* ``to_rgb``: one NumPy image as RGB, as PIL's ``convert('RGB')`` makes it;
* ``upsample``: PIL bicubic resize, as MedMNIST+ makes its 224 px images;
* ``psnr``: PSNR in dB of each image of a uint8 batch to its clean version;
* ``streams``: per-image random streams (``ImageRandom``) for a batch;
* ``data_free_streams``: such streams whose device draws hold no data (see ``_DataFreeStreams``);
* ``pil_pipeline``: the reference datasets' per-image path through a PIL corruption;
* ``check_contract``: the output contract every corruption function keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pytest
import torch
from PIL import Image

from medrobust.corruptions._random import ImageRandom

IDENTICAL_PSNR = 100.0
"""The PSNR reported for an image identical to its clean version (dB)."""


def _nchw(images: np.ndarray) -> torch.Tensor:
    """(N, H, W) grey or (N, H, W, C) uint8 NumPy images -> contiguous (N, C, H, W) tensor."""
    t = torch.from_numpy(np.ascontiguousarray(images))
    return t[:, None].contiguous() if t.ndim == 3 else t.permute(0, 3, 1, 2).contiguous()


def _to_numpy(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) tensor -> (N, H, W) NumPy for grey, (N, H, W, 3) for RGB."""
    images = images.cpu()
    return images[:, 0].numpy() if images.shape[1] == 1 else images.permute(0, 2, 3, 1).numpy()


def _nhwc(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) tensor -> (N, H, W, C) NumPy, C kept (also 1 for grey)."""
    return images.cpu().permute(0, 2, 3, 1).numpy()


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """One (H, W), (H, W, 1) or (H, W, 3) image -> (H, W, 3), grey copied to every channel."""
    a = image.reshape(*image.shape[:2], -1)
    return a if a.shape[2] == 3 else np.repeat(a, 3, axis=2)


def _upsample(images: np.ndarray, size: int = 224) -> np.ndarray:
    """PIL bicubic resize of (N, H, W) or (N, H, W, 3) uint8 images to ``size`` x ``size``."""
    return np.stack(
        [np.asarray(Image.fromarray(i).resize((size, size), Image.BICUBIC)) for i in images]
    )


def _psnr(clean: np.ndarray, corrupted: np.ndarray) -> np.ndarray:
    """PSNR (dB) of each image (first axis) of two uint8 batches; identical images give 100."""
    a = clean.reshape(len(clean), -1).astype(np.float64)
    b = corrupted.reshape(len(corrupted), -1).astype(np.float64)
    mse = ((a - b) ** 2).mean(axis=1)
    db = 10 * np.log10(255.0**2 / np.maximum(mse, 1e-300))
    return np.where(mse > 0, db, IDENTICAL_PSNR)


def _streams(
    images: int | Iterable[int], name: str, *, seed: int = 0, severity: int = 3
) -> ImageRandom:
    """Random streams of ``name`` at ``severity`` for ``images`` (a count, or dataset indices)."""
    indices = range(images) if isinstance(images, int) else list(images)
    return ImageRandom.for_images(seed, name, severity, indices)


class _DataFreeStreams(ImageRandom):
    """Streams whose device draws land on the meta device: shapes, no data.

    With images on the meta device too, any read of device data on the host (``.tolist()``,
    ``.item()``, ``.cpu()``, ``nonzero``, ``torch.equal``) raises, where on a GPU it would
    stall the host in a sync; draws made through ``on_host()`` come from the CPU streams.
    """

    def __init__(self, seeds: Iterable[int]) -> None:
        super().__init__(list(seeds))
        self.device = torch.device("meta")


def _data_free_streams(images: int, name: str, *, seed: int = 0, severity: int = 3) -> ImageRandom:
    """``_streams`` of ``name`` for ``images`` images, as ``_DataFreeStreams``."""
    return _DataFreeStreams(_streams(images, name, seed=seed, severity=severity).seeds)


def _pil_pipeline(
    images: np.ndarray, corrupt: Callable[[Image.Image], Image.Image | np.ndarray]
) -> np.ndarray:
    """The MedMNIST-C DatasetManager path for each image: RGB PIL image -> ``corrupt`` (a PIL
    image or uint8 array) -> ``convert('L')`` if the input is grey (N, H, W)."""
    out = []
    for image in images:
        result = corrupt(Image.fromarray(image).convert("RGB"))
        if not isinstance(result, Image.Image):
            result = Image.fromarray(np.asarray(result).astype(np.uint8))
        out.append(np.asarray(result.convert("L") if image.ndim == 2 else result))
    return np.stack(out)


def _check_contract(
    call: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor
) -> torch.Tensor:
    """``call(images)``, checked to be uint8 of the input's shape and device, the input unchanged."""
    before = images.clone()
    out = call(images)
    assert out.shape == images.shape and out.dtype == torch.uint8 and out.device == images.device
    assert torch.equal(images, before), "the input was modified"
    return out


@pytest.fixture(scope="session")
def nchw() -> Callable[[np.ndarray], torch.Tensor]:
    return _nchw


@pytest.fixture(scope="session")
def to_numpy() -> Callable[[torch.Tensor], np.ndarray]:
    return _to_numpy


@pytest.fixture(scope="session")
def nhwc() -> Callable[[torch.Tensor], np.ndarray]:
    return _nhwc


@pytest.fixture(scope="session")
def to_rgb() -> Callable[[np.ndarray], np.ndarray]:
    return _to_rgb


@pytest.fixture(scope="session")
def upsample() -> Callable[..., np.ndarray]:
    return _upsample


@pytest.fixture(scope="session")
def psnr() -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    return _psnr


@pytest.fixture(scope="session")
def streams() -> Callable[..., ImageRandom]:
    return _streams


@pytest.fixture(scope="session")
def data_free_streams() -> Callable[..., ImageRandom]:
    return _data_free_streams


@pytest.fixture(scope="session")
def pil_pipeline() -> Callable[..., np.ndarray]:
    return _pil_pipeline


@pytest.fixture(scope="session")
def check_contract() -> Callable[..., torch.Tensor]:
    return _check_contract
