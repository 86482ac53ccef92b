"""Elastic transform against a float64 SciPy re-implementation of ``imagecorruptions``'
``elastic_transform`` (same random offsets, and independent ones), on real MedMNIST images."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter, map_coordinates

from medrobust.corruptions._random import ImageRandom
from medrobust.corruptions.functional import geometric
from medrobust.corruptions.functional.geometric import elastic_transform

NAME = "elastic_transform"  # the random streams' corruption name
ALPHAS = [250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12]  # severities 1-5


def reference_elastic(
    image: np.ndarray, alpha: float, dx_raw: np.ndarray, dy_raw: np.ndarray
) -> np.ndarray:
    """imagecorruptions' elastic_transform (float64) for an (H, W) or (H, W, C) uint8 image,
    given its two raw U(-0.005 H, 0.005 H) offset fields."""
    x = image.astype(np.float64) / 255.0
    h, w = x.shape[:2]
    sigma = np.array([h, w]) * 0.01
    dx = gaussian_filter(dx_raw.astype(np.float64), sigma, mode="reflect", truncate=3) * alpha
    dy = gaussian_filter(dy_raw.astype(np.float64), sigma, mode="reflect", truncate=3) * alpha
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    planes = x[..., None] if x.ndim == 2 else x
    out = np.stack(
        [map_coordinates(p, (rows + dy, cols + dx), order=1, mode="reflect") for p in np.moveaxis(planes, -1, 0)],
        axis=-1,
    )
    out = (np.clip(out, 0, 1) * 255).astype(np.uint8)
    return out[..., 0] if image.ndim == 2 else out


def _reference_batch(arr: np.ndarray, alpha: float, raw: np.ndarray) -> np.ndarray:
    return np.stack([reference_elastic(a, alpha, r[0], r[1]) for a, r in zip(arr, raw, strict=True)])


@pytest.fixture(scope="module")
def corrupt(nchw, to_numpy):
    """``elastic_transform`` of NumPy images, as NumPy images: ``corrupt(arr, alpha, rng)``."""

    def run(arr: np.ndarray, alpha: float, rng: ImageRandom) -> np.ndarray:
        return to_numpy(elastic_transform(nchw(arr), alpha, rng=rng))

    return run


@pytest.mark.parametrize("size", [28, 96])
@pytest.mark.parametrize("dataset", ["breast", "retina"])
def test_matches_float64_reference_with_the_same_offsets(
    dataset, size, breast_images, retina_images, upsample, streams, corrupt
):
    """Given the offsets we drew, the result is the reference's up to float32 rounding."""
    arr = breast_images if dataset == "breast" else retina_images
    arr = arr if size == 28 else upsample(arr[:3], size)
    raw = streams(len(arr), NAME).uniform((2, size, size), -0.005 * size, 0.005 * size).numpy()
    for alpha in (ALPHAS[0], ALPHAS[-1]):
        ours = corrupt(arr, alpha, streams(len(arr), NAME)).astype(int)
        ref = _reference_batch(arr, alpha, raw)
        assert np.abs(ours - ref).max() <= 1
        assert np.abs(ours - ref).mean() < 0.05


def test_mean_psnr_matches_reference_with_independent_draws(breast_images, psnr, streams, corrupt):
    """Our random stream gives the reference's distribution: mean PSNR within 0.5 dB."""
    arr = np.concatenate([breast_images] * 16)  # 128 samples per severity
    size = arr.shape[1]
    gen = np.random.default_rng(7)
    for severity in (1, 5):
        alpha = ALPHAS[severity - 1]
        raw = gen.uniform(-0.005 * size, 0.005 * size, (len(arr), 2, size, size))
        ref = psnr(arr, _reference_batch(arr, alpha, raw)).mean()
        ours = psnr(arr, corrupt(arr, alpha, streams(len(arr), NAME, severity=severity))).mean()
        assert abs(ours - ref) < 0.5


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 224])
def test_shape_dtype_and_input_untouched(channels, size, streams, synthetic, check_contract):
    images = synthetic(2, channels, size)
    out = check_contract(lambda x: elastic_transform(x, ALPHAS[2], rng=streams(2, NAME)), images)
    assert not torch.equal(out, images)


def test_non_square_image(to_numpy, streams, synthetic):
    images = synthetic(2, 3, 44)[..., 7:37, :].contiguous()
    raw = streams(2, NAME).uniform((2, 30, 44), -0.15, 0.15).numpy()
    ours = to_numpy(elastic_transform(images, ALPHAS[4], rng=streams(2, NAME)))
    ref = _reference_batch(to_numpy(images), ALPHAS[4], raw)
    assert np.abs(ours.astype(int) - ref).max() <= 1


def test_batch_invariance_and_chunking(retina_images, monkeypatch, nchw):
    images = nchw(retina_images)
    indices = [3, 11, 5, 40, 2, 9, 17, 8]
    batch = elastic_transform(images, ALPHAS[3], rng=ImageRandom.for_images(1, "elastic", 4, indices))
    single = torch.cat(
        [
            elastic_transform(images[i : i + 1], ALPHAS[3], rng=ImageRandom.for_images(1, "elastic", 4, [k]))
            for i, k in enumerate(indices)
        ]
    )
    assert torch.equal(batch, single)
    monkeypatch.setattr(geometric, "_CPU_CHUNK_ELEMENTS", 3 * 3 * 28 * 28)  # 3 images per slice
    chunked = elastic_transform(images, ALPHAS[3], rng=ImageRandom.for_images(1, "elastic", 4, indices))
    assert torch.equal(batch, chunked)


def test_seeds_differ_and_repeat(breast_images, nchw, streams):
    images = nchw(breast_images)
    a = elastic_transform(images, ALPHAS[2], rng=streams(8, NAME, seed=0))
    b = elastic_transform(images, ALPHAS[2], rng=streams(8, NAME, seed=1))
    assert torch.equal(a, elastic_transform(images, ALPHAS[2], rng=streams(8, NAME, seed=0)))
    assert (a != b).any(dim=(1, 2, 3)).all()


def test_grey_equals_each_channel_of_grey_rgb(breast_images, nchw, streams):
    grey = nchw(breast_images)
    out_grey = elastic_transform(grey, ALPHAS[4], rng=streams(8, NAME))
    out_rgb = elastic_transform(grey.expand(-1, 3, -1, -1).contiguous(), ALPHAS[4], rng=streams(8, NAME))
    assert torch.equal(out_rgb, out_grey.expand(-1, 3, -1, -1))


def test_zero_alpha_is_identity_up_to_truncation(retina_images, nchw, streams):
    """With no displacement only float32 rounding of the sampling grid remains: values can
    land a hair below k/255 and truncate to k - 1, never further."""
    images = nchw(retina_images)
    diff = elastic_transform(images, 0.0, rng=streams(8, NAME)).int() - images.int()
    assert diff.min() >= -1 and diff.max() == 0


def test_severity_monotone_in_psnr(breast_images, retina_images, psnr, streams, corrupt):
    for arr in (breast_images, retina_images):
        arr = np.concatenate([arr] * 4)
        means = [
            psnr(arr, corrupt(arr, alpha, streams(len(arr), NAME, severity=s))).mean()
            for s, alpha in enumerate(ALPHAS, 1)
        ]
        assert all(a > b for a, b in itertools.pairwise(means)), means


def test_bad_input(streams, synthetic):
    images = synthetic(2, 3, 28)
    with pytest.raises(TypeError, match="alpha"):
        elastic_transform(images, (1.0,), rng=streams(2, NAME))
    with pytest.raises(ValueError, match="alpha"):
        elastic_transform(images, -1.0, rng=streams(2, NAME))
    with pytest.raises(ValueError, match="streams"):
        elastic_transform(images, 1.0, rng=streams(3, NAME))
    with pytest.raises(TypeError, match="ImageRandom"):
        elastic_transform(images, 1.0, rng=np.random.default_rng(0))
    with pytest.raises(TypeError, match="uint8"):
        elastic_transform(images.float(), 1.0, rng=streams(2, NAME))
