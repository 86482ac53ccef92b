"""Shared fixtures: the real medical images in ../shared/data and small synthetic images."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from forkserver import ForkServer

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDROBUST_DATA") or REPO_ROOT.parent / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real medical images: $MEDROBUST_DATA (the variable the README documents),
    else ../shared/data. Tests using it skip where it is absent, except in CI (CI=true), where
    a missing folder fails them: CI must run every test."""
    if not (SHARED_DATA / "medmnist").is_dir():
        message = f"real data not found at {SHARED_DATA} (set MEDROBUST_DATA)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + "; CI runs the data tests and needs it")
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(scope="session")
def forkserver() -> Iterator[ForkServer]:
    """Runs medrobust commands as real child processes that start in milliseconds."""
    server = ForkServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def breast_images(shared_data: Path) -> np.ndarray:
    """Eight real grey breast-ultrasound test images, (8, 28, 28) uint8."""
    with np.load(shared_data / "medmnist" / "breastmnist.npz") as f:
        return f["test_images"][:8].copy()


@pytest.fixture(scope="session")
def retina_images(shared_data: Path) -> np.ndarray:
    """Eight real RGB fundus test images, (8, 28, 28, 3) uint8."""
    with np.load(shared_data / "medmnist" / "retinamnist.npz") as f:
        return f["test_images"][:8].copy()


def synthetic_images(n: int = 4, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth gradients plus texture, uint8 (N, C, H, W): exercises every grey level range."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = 0.5 * (xx + yy)[None, None].expand(n, channels, size, size)
    noise = torch.rand(n, channels, size, size, generator=g) * 0.3
    return ((base * 0.7 + noise) * 255).clamp(0, 255).to(torch.uint8)


@pytest.fixture(autouse=True, scope="session")
def one_thread() -> Iterator[None]:
    """One intra-op thread for the test run: tiny tensors on a shared 2-core machine are faster
    and deterministic with one; the previous setting is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synthetic() -> Callable[..., torch.Tensor]:
    """``synthetic_images`` as a fixture: test modules cannot import from conftest reliably
    (another folder's conftest.py may be the module named ``conftest`` by then)."""
    return synthetic_images


@pytest.fixture(autouse=True, scope="session")
def private_array_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Cached arrays (noise tables) go to a folder of this test session, not the user's cache."""
    previous = os.environ.get("MEDROBUST_CACHE")
    os.environ["MEDROBUST_CACHE"] = str(tmp_path_factory.mktemp("array-cache"))
    yield
    if previous is None:
        os.environ.pop("MEDROBUST_CACHE", None)
    else:
        os.environ["MEDROBUST_CACHE"] = previous
