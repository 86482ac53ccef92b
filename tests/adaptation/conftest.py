"""Fixtures for the adaptation tests: offline tiny models, one CPU thread, real breast images."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import pytest
import torch

from medrobust.data import ImageDataset, load_medmnist
from medrobust.models import ModelAdapter, create_model
from medrobust.models import weights as weights_module


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests never download: every Hub/URL access sees the network as unreachable."""
    monkeypatch.setenv(weights_module.OFFLINE_ENV, "1")
    yield


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> Iterator[None]:
    """Tiny models on a shared machine: extra intra-op threads only add contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomise_bn_scales(model: ModelAdapter, seed: int = 1) -> ModelAdapter:
    """open_clip zero-initialises each ResNet block's last BatchNorm scale, which makes LoRA on
    the block's convs inert for random weights; give them the non-zero scales trained weights
    have."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.vision_module.named_parameters():
            if name.endswith("bn3.weight"):
                param.copy_(torch.rand(param.shape, generator=g) + 0.5)
    return model


@pytest.fixture(scope="session")
def _tiny_cache() -> dict[str, ModelAdapter]:
    return {}


@pytest.fixture
def tiny(_tiny_cache: dict[str, ModelAdapter]) -> Callable[[str], ModelAdapter]:
    """A fresh copy of a tiny random-weight registry model (safe to modify)."""

    def get(name: str) -> ModelAdapter:
        if name not in _tiny_cache:
            model = create_model(name, pretrained=False, tiny=True)
            _tiny_cache[name] = randomise_bn_scales(model) if name == "clip-rn50" else model
        return copy.deepcopy(_tiny_cache[name])

    return get


@pytest.fixture(scope="session")
def breast_train(shared_data) -> ImageDataset:
    return load_medmnist("breastmnist", "train", root=shared_data, download=False)


@pytest.fixture(scope="session")
def breast_batch(breast_train: ImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """48 real grey breast-ultrasound images (uint8 (48, 1, 28, 28)) and their labels."""
    subset = breast_train.subset(range(48))
    return subset.to_tensor(), subset.labels_tensor()
