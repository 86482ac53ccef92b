"""Outputs of the corruptions whose device paths were reworked (JPEG, motion blur, characters,
snow), pinned as SHA-256 prefixes of seeded batches.

The hashes were computed with main's code at 652455e, before the rework (thread pool for JPEG,
host-drawn angles and per-tap gathers for motion blur and snow, host-drawn word parameters
for characters), on the library versions in ``STACK``: they prove that the CPU output did not
change by a byte, at 1 and 2 threads. Other versions of torch, torchvision or OpenCV may
round or encode differently, so there the test is skipped rather than pinned to a guess.
"""

from __future__ import annotations

import hashlib

import cv2
import pytest
import torch
import torchvision

from medrobust.corruptions._random import ImageRandom
from medrobust.corruptions.functional.blur import motion_blur
from medrobust.corruptions.functional.digital import jpeg_compression
from medrobust.corruptions.functional.medical import characters
from medrobust.corruptions.functional.weather import snow

STACK = {"torch": "2.14.1+cu130", "torchvision": "0.29.1+cu130", "cv2": "5.1.0"}
MOTION = ((5, 5), (20, 15), (3.5, 2.0))
CHARACTERS = ((1, 6, 0.14), (6, 10, 0.18), (4, 9, 0.6))
SNOW = ((0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55))
PINNED = {
    "jpeg c1 s28 q50": "7609538e903347a7",
    "jpeg c1 s28 q7": "32841e6888fd9186",
    "motion c1 s28 (5, 5)": "1966e786b1395d30",
    "motion c1 s28 (20, 15)": "9de6de4329cca857",
    "motion c1 s28 (3.5, 2.0)": "e0a2112e1a87c081",
    "characters c1 s28 (1, 6, 0.14)": "9eb9883db5136c66",
    "characters c1 s28 (6, 10, 0.18)": "ebc36be20dc3e238",
    "characters c1 s28 (4, 9, 0.6)": "02a5b19182377c24",
    "jpeg c1 s224 q50": "6e97a76b34813de3",
    "jpeg c1 s224 q7": "34ff8e954ff72bcd",
    "motion c1 s224 (5, 5)": "52e607fc2dde0fc9",
    "motion c1 s224 (20, 15)": "3256c7736c8f73a5",
    "motion c1 s224 (3.5, 2.0)": "050305eda17c6f85",
    "characters c1 s224 (1, 6, 0.14)": "74e663a0e96e4074",
    "characters c1 s224 (6, 10, 0.18)": "f81261edf1734f0e",
    "characters c1 s224 (4, 9, 0.6)": "4a4b14ab914d25a9",
    "jpeg c3 s28 q50": "66ff021082af1b9b",
    "jpeg c3 s28 q7": "6b9570617a869d6f",
    "motion c3 s28 (5, 5)": "3e50994cc9046f5a",
    "motion c3 s28 (20, 15)": "e441d308a3cc640a",
    "motion c3 s28 (3.5, 2.0)": "3fd0223ef4e05650",
    "characters c3 s28 (1, 6, 0.14)": "9a648c5be29aee8c",
    "characters c3 s28 (6, 10, 0.18)": "51f4f41fee22923f",
    "characters c3 s28 (4, 9, 0.6)": "e39492839c8fb0a8",
    "jpeg c3 s224 q50": "6079676c853c2a1b",
    "jpeg c3 s224 q7": "905f42a9c9f23b86",
    "motion c3 s224 (5, 5)": "ae3c3df4279719ee",
    "motion c3 s224 (20, 15)": "a6379d3f35879319",
    "motion c3 s224 (3.5, 2.0)": "c369cf1f8b510d29",
    "characters c3 s224 (1, 6, 0.14)": "fea52f957d38c8a8",
    "characters c3 s224 (6, 10, 0.18)": "222bf7339083f1d4",
    "characters c3 s224 (4, 9, 0.6)": "b032af787b9fa401",
    "snow c1 s28 (0.1, 0.3, 3, 0.5, 10, 4, 0.8)": "13cbf3b741d18487",
    "snow c1 s28 (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)": "f22fb253f8709e68",
    "snow c1 s224 (0.1, 0.3, 3, 0.5, 10, 4, 0.8)": "8d175d8f261e432e",
    "snow c1 s224 (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)": "5f0bdd6fcda2459c",
    "snow c3 s28 (0.1, 0.3, 3, 0.5, 10, 4, 0.8)": "eca90ff9940c15e1",
    "snow c3 s28 (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)": "e54444b1f2a51078",
    "snow c3 s224 (0.1, 0.3, 3, 0.5, 10, 4, 0.8)": "13a52e7131130fca",
    "snow c3 s224 (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)": "17f474b3d2eb025f",
}

pytestmark = pytest.mark.skipif(
    {"torch": torch.__version__, "torchvision": torchvision.__version__, "cv2": cv2.__version__}
    != STACK,
    reason=f"hashes pinned for {STACK}",
)


def _batch(n: int, c: int, size: int, seed: int) -> torch.Tensor:
    """Seeded uint8 images: smooth waves plus noise, so that JPEG and blurs have work to do."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.linspace(0, 1, size)[:, None], torch.linspace(0, 1, size)[None]
    base = 127 + 100 * torch.sin(6 * yy + 4 * xx * (1 + torch.rand(n, c, 1, 1, generator=g)))
    noise = torch.randint(-30, 31, (n, c, size, size), generator=g)
    return (base + noise).clamp(0, 255).to(torch.uint8)


def _hash(t: torch.Tensor) -> str:
    return hashlib.sha256(str(tuple(t.shape)).encode() + t.contiguous().numpy().tobytes()).hexdigest()[:16]


def _rng(n: int, name: str, severity: int) -> ImageRandom:
    return ImageRandom.for_images(0, name, severity, range(100, 100 + n))


def _outputs() -> dict[str, str]:
    out = {}
    for c in (1, 3):
        for size in (28, 224):
            x = _batch(6, c, size, 7 * c + size)
            for q in (50, 7):
                out[f"jpeg c{c} s{size} q{q}"] = _hash(jpeg_compression(x, q))
            for sev, p in enumerate(MOTION):
                out[f"motion c{c} s{size} {p}"] = _hash(motion_blur(x, p, rng=_rng(6, "motion_blur", sev)))
            for sev, p in enumerate(CHARACTERS):
                y = characters(x, p, rng=_rng(6, "characters", sev))
                out[f"characters c{c} s{size} {p}"] = _hash(y)
            for sev, p in enumerate(SNOW):
                out[f"snow c{c} s{size} {p}"] = _hash(snow(x, p, rng=_rng(6, "snow", sev)))
    return out


@pytest.mark.parametrize("threads", [1, 2])
def test_outputs_match_the_hashes_pinned_before_the_rework(threads: int) -> None:
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert _outputs() == PINNED
    finally:
        torch.set_num_threads(saved)
