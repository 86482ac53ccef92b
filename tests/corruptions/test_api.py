"""In-process API: corrupt(), determinism, batch invariance, the dataset view and the transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medrobust.corruptions import RandomCorruption, corrupt, get_suite


def test_corrupt_numpy_in_numpy_out_resized_to_reference(breast_images, retina_images):
    out = corrupt(breast_images[:2], "gaussian_noise", 3, seed=0, dataset="pneumoniamnist")
    assert isinstance(out, np.ndarray) and out.shape == (2, 224, 224) and out.dtype == np.uint8
    out = corrupt(retina_images[:2], "pixelate", 5, dataset="retinamnist", resize=False)
    assert out.shape == (2, 28, 28, 3)


def test_same_seed_same_bytes_other_seed_other_noise(breast_images):
    a = corrupt(breast_images, "gaussian_noise", 2, seed=7, dataset="pneumoniamnist")
    b = corrupt(breast_images, "gaussian_noise", 2, seed=7, dataset="pneumoniamnist")
    c = corrupt(breast_images, "gaussian_noise", 2, seed=8, dataset="pneumoniamnist")
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("name", ["gaussian_noise", "motion_blur", "snow", "impulse_noise"])
def test_output_depends_only_on_index_not_batching(name, retina_images):
    suite = get_suite("imagenet-c")
    images = torch.from_numpy(retina_images).permute(0, 3, 1, 2).contiguous()
    whole = suite[name].apply(images, 3, seed=3, indices=range(8), size_factor=0.125)
    # reversed order, odd batch sizes
    order = [7, 6, 5, 4, 3, 2, 1, 0]
    parts = [order[:3], order[3:4], order[4:]]
    for part in parts:
        out = suite[name].apply(images[part], 3, seed=3, indices=part, size_factor=0.125)
        assert torch.equal(out, whole[part])


def test_bad_images_are_rejected():
    with pytest.raises(TypeError, match="uint8"):
        corrupt(np.zeros((2, 8, 8), np.float32), "contrast", 1)
    with pytest.raises(ValueError, match="NaN"):
        corrupt(np.full((2, 8, 8), np.nan, np.float32), "contrast", 1)
    with pytest.raises(ValueError, match="shape"):
        corrupt(np.zeros((8, 8), np.uint8), "contrast", 1)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        corrupt(torch.zeros(2, 4, 8, 8, dtype=torch.uint8), "contrast", 1)


def test_random_corruption_transform_is_seeded_and_respects_exclude(retina_images):
    suite = get_suite("medmnist-c/retinamnist")
    images = torch.from_numpy(retina_images).permute(0, 3, 1, 2).contiguous()
    t1 = RandomCorruption(suite, exclude=["pixelate"], p=1.0, seed=5)
    t2 = RandomCorruption(suite, exclude=["pixelate"], p=1.0, seed=5)
    a, b = t1(images), t2(images)
    assert torch.equal(a, b) and a.shape == images.shape
    assert not torch.equal(a, images)
    assert "pixelate" not in t1.names
    assert torch.equal(RandomCorruption(suite, p=0.0)(images), images)
    with pytest.raises(KeyError, match="not in suite"):
        RandomCorruption(suite, exclude=["snow"])


def test_random_corruption_of_part_of_a_batch_equals_that_part_of_the_whole(synthetic):
    suite = get_suite("imagenet-c").select(["gaussian_noise", "pixelate", "contrast"])
    images = synthetic(n=6, channels=3, size=32)
    whole = RandomCorruption(suite, p=0.7, seed=3)(images, torch.Generator().manual_seed(9))
    halves = []
    for rows in (torch.tensor([0, 2, 4]), torch.tensor([1, 3, 5])):
        part = RandomCorruption(suite, p=0.7, seed=3)(
            images[rows], torch.Generator().manual_seed(9), rows=rows, batch_size=6)
        halves.append((rows, part))
    for rows, part in halves:
        assert torch.equal(part, whole[rows])


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("batch", [0, 1, 5])
@pytest.mark.parametrize(("side", "size"), [(28, 224), (64, 224), (300, 224), (33, 47)])
def test_prepare_images_equals_torchvision_bicubic_antialiased(
    channels: int, batch: int, side: int, size: int
) -> None:
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    from medrobust.corruptions import prepare_images

    gen = torch.Generator().manual_seed(side * 10 + channels + batch)
    images = torch.randint(0, 256, (batch, side, side, channels), dtype=torch.uint8, generator=gen)
    for layout in (images.permute(0, 3, 1, 2), images.permute(0, 3, 1, 2).contiguous()):
        want = TF.resize(layout, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
        got = prepare_images(layout, size)
        assert got.dtype == torch.uint8 and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_corruption_engine_imports_torchvision_only_for_jpeg() -> None:
    """torchvision's import (its models and ops pull in torch._dynamo) costs a second per run;
    only JPEG, which uses its libjpeg codec, needs it."""
    import subprocess
    import sys

    code = ("import sys, torch, medrobust.cli, medrobust.corruptions.generate; "
            "from medrobust.corruptions import get_suite, prepare_images; "
            "x = prepare_images(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), 224); "
            "suite = get_suite('medmnist-c', dataset='pneumoniamnist'); "
            "suite['gaussian_blur'].apply(x, 3, seed=0, indices=[0, 1]); "
            "before = 'torchvision' in sys.modules; "
            "suite['jpeg_compression'].apply(x, 3, seed=0, indices=[0, 1]); "
            "print(before, 'torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
