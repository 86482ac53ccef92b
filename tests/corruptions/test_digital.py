"""Pixelate (PIL BOX / NEAREST) and JPEG: bit-exact parity with Pillow, sizes, batching."""

from __future__ import annotations

import io
import itertools
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from medrobust.corruptions.functional import digital
from medrobust.corruptions.functional.digital import jpeg_compression, pixelate, pixelate_nearest

PIXELATE = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8)  # MedMNIST-C and ImageNet-C
QUALITY = (5, 7, 10, 15, 18, 20, 25, 30, 50)


def pil_pixelate(factor: float, up: int = Image.BOX):
    def corrupt(image: Image.Image) -> Image.Image:
        w, h = image.size
        return image.resize((int(w * factor), int(h * factor)), Image.BOX).resize((w, h), up)

    return corrupt


def pil_jpeg(quality: int):
    def corrupt(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        return Image.open(buffer)

    return corrupt


@pytest.fixture(scope="module")
def image_sets(breast_images, retina_images, upsample) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "grey28": breast_images,
        "rgb28": retina_images,
        "grey224": upsample(breast_images[:2]),
        "rgb224": upsample(retina_images[:2]),
        "wide": rng.integers(0, 256, (2, 37, 101, 3), dtype=np.uint8),
        # height shrinks by more than twice the width: Pillow 13 resamples vertically first
        "tall": rng.integers(0, 256, (2, 120, 31), dtype=np.uint8),
    }


@pytest.mark.parametrize(("fn", "up"), [(pixelate, Image.BOX), (pixelate_nearest, Image.NEAREST)])
def test_pixelate_matches_pil_exactly(
    fn, up, image_sets: dict[str, np.ndarray], nchw, to_numpy, pil_pipeline
) -> None:
    for (name, images), factor in itertools.product(image_sets.items(), PIXELATE):
        ours = to_numpy(fn(nchw(images), factor))
        expected = pil_pipeline(images, pil_pixelate(factor, up))
        diff = np.abs(ours.astype(int) - expected)
        assert diff.max() == 0, f"{name} {factor}: mean |diff| {diff.mean():.4f}"


@pytest.mark.parametrize("size", [(13, 15), (15, 17), (17, 19), (19, 13), (51, 7)])
def test_box_windows_with_pillow_rounding(
    size: tuple[int, int], nchw, to_numpy, pil_pipeline
) -> None:
    """Sizes where Pillow's rounded BOX bounds overlap or skip a pixel, and tiny outputs."""
    images = np.random.default_rng(sum(size)).integers(0, 256, (1, *size, 3), dtype=np.uint8)
    for factor in (0.15, 0.47, 0.53, 0.93):
        if min(int(size[0] * factor), int(size[1] * factor)) < 1:
            continue
        ours = to_numpy(pixelate(nchw(images), factor))
        np.testing.assert_array_equal(ours, pil_pipeline(images, pil_pixelate(factor)))


FACTORS = (0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1)
SIZES = ((28, 28), (64, 64), (128, 128), (224, 224), (224, 160), (37, 101), (120, 31))


@pytest.mark.parametrize(("fn", "up"), [(pixelate, Image.BOX), (pixelate_nearest, Image.NEAREST)])
@pytest.mark.parametrize("size", SIZES)
def test_pixelate_sizes_and_factors_match_pil(fn, up, size, nchw, to_numpy, pil_pipeline) -> None:
    """Every factor at the benchmark sizes and non-square ones (120 x 31: vertical first)."""
    images = np.random.default_rng(size[0]).integers(0, 256, (2, *size, 3), dtype=np.uint8)
    images[1] = np.linspace(0, 255, size[1], dtype=np.uint8)[:, None]  # smooth: equal sums
    for factor in FACTORS:
        if min(int(size[0] * factor), int(size[1] * factor)) < 1:
            continue
        expected = pil_pipeline(images, pil_pixelate(factor, up))
        np.testing.assert_array_equal(to_numpy(fn(nchw(images), factor)), expected, str(factor))


@pytest.mark.parametrize(
    ("fn", "enlarge"), [(pixelate, "_box_resize"), (pixelate_nearest, "_nearest_resize")]
)
def test_pixelate_cpu_rows_equal_the_torch_path(
    fn, enlarge, retina_images: np.ndarray, breast_images: np.ndarray, nchw, upsample
) -> None:
    """The CPU row operations against the torch passes that other devices run."""
    for images in (nchw(retina_images), nchw(upsample(breast_images[:3], 64))):
        for factor in FACTORS:
            small = digital._reduced_size(images, factor)
            torch_path = digital._pixelate_torch(images, small, getattr(digital, enlarge))
            assert torch.equal(fn(images, factor), torch_path), factor


def test_pixelate_integer_weights_match_pil(
    monkeypatch: pytest.MonkeyPatch, image_sets: dict[str, np.ndarray], nchw, to_numpy, pil_pipeline
) -> None:
    """The int32 fixed-point weights, used where float32 weights would round differently."""
    rows_pass = digital._rows_pass
    monkeypatch.setattr(digital, "_rows_pass", lambda *a: rows_pass(*a)._replace(factors=None))
    for name in ("rgb224", "wide", "tall"):
        images = image_sets[name]
        for factor in (0.7, 0.4, 0.15):
            expected = pil_pipeline(images, pil_pixelate(factor))
            np.testing.assert_array_equal(to_numpy(pixelate(nchw(images), factor)), expected)


def test_pixelate_threads_do_not_change_results(retina_images: np.ndarray, nchw, upsample) -> None:
    images = nchw(upsample(retina_images, 96))
    expected = [pixelate(images, 0.3), pixelate_nearest(images, 0.6)]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert torch.equal(pixelate(images, 0.3), expected[0])
        assert torch.equal(pixelate_nearest(images, 0.6), expected[1])
    finally:
        torch.set_num_threads(threads)


def test_jpeg_matches_pil_exactly(
    image_sets: dict[str, np.ndarray], nchw, to_numpy, pil_pipeline
) -> None:
    """RGB as 4:2:0 JPEG, grey as 1-channel JPEG: the bytes PIL's grey -> RGB -> JPEG -> L gives."""
    for (name, images), quality in itertools.product(image_sets.items(), QUALITY):
        ours = to_numpy(jpeg_compression(nchw(images), quality))
        expected = pil_pipeline(images, pil_jpeg(quality))
        diff = np.abs(ours.astype(int) - expected)
        assert diff.max() == 0, f"{name} q={quality}: mean |diff| {diff.mean():.4f}"


@pytest.mark.parametrize(
    ("fn", "params"),
    [
        (pixelate, (0.8, 0.6, 0.4, 0.3, 0.25)),
        (pixelate_nearest, (0.6, 0.5, 0.4, 0.3, 0.25)),
        (jpeg_compression, (50, 30, 15, 10, 7)),
    ],
)
def test_severity_is_monotone(fn, params, image_sets: dict[str, np.ndarray], nchw) -> None:
    for name in ("grey224", "rgb224"):
        clean = nchw(image_sets[name])
        change = [(fn(clean, p).float() - clean.float()).abs().mean().item() for p in params]
        assert all(a < b for a, b in itertools.pairwise(change)), (name, change)


@pytest.mark.parametrize(
    ("fn", "param"), [(pixelate, 0.1), (pixelate_nearest, 0.25), (jpeg_compression, 7)]
)
@pytest.mark.parametrize(
    "shape", [(3, 1, 28, 28), (2, 3, 28, 28), (1, 1, 224, 224), (1, 3, 224, 160)]
)
def test_shape_dtype_kept_and_input_untouched(fn, param, shape, check_contract) -> None:
    images = torch.randint(
        0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(3)
    )
    check_contract(lambda x: fn(x, param), images)


@pytest.mark.parametrize(
    ("fn", "param"), [(pixelate, 0.4), (pixelate_nearest, 0.4), (jpeg_compression, 15)]
)
def test_empty_batch_and_batch_invariance(fn, param, retina_images: np.ndarray, nchw) -> None:
    for channels in (1, 3):
        empty = torch.zeros(0, channels, 28, 28, dtype=torch.uint8)
        assert fn(empty, param).shape == empty.shape
    images = nchw(retina_images)
    one_by_one = torch.cat([fn(images[i : i + 1], param) for i in range(len(images))])
    assert torch.equal(fn(images, param), one_by_one)


def test_jpeg_on_threads_gives_the_single_thread_bytes(monkeypatch, retina_images, nchw) -> None:
    """JPEG chunks run on the thread pool (each encode call waits a little, so that the chunks
    overlap and several threads take part), with the bytes of one thread, grey and RGB."""
    encode, threads = digital._encode_jpeg, set()

    def slow_encode(images, quality):
        threads.add(threading.current_thread().name)
        time.sleep(0.05)
        return encode(images, quality=quality)

    rgb = nchw(np.concatenate([retina_images] * 4))
    saved = torch.get_num_threads()
    try:
        for images in (rgb, rgb[:, 1:2].contiguous()):
            torch.set_num_threads(1)
            one = jpeg_compression(images, 20)
            monkeypatch.setattr(digital, "_encode_jpeg", slow_encode)
            torch.set_num_threads(4)
            assert torch.equal(jpeg_compression(images, 20), one)
            monkeypatch.setattr(digital, "_encode_jpeg", encode)
    finally:
        torch.set_num_threads(saved)
    assert len(threads) > 1, threads


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    ("fn", "param"), [(pixelate, 0.4), (pixelate_nearest, 0.3), (jpeg_compression, 15)]
)
def test_cuda_matches_cpu(
    fn, param, retina_images: np.ndarray, breast_images: np.ndarray, nchw, upsample
) -> None:
    for images in (nchw(retina_images), nchw(upsample(breast_images[:2]))):
        out = fn(images.cuda(), param)
        assert out.device.type == "cuda"
        assert torch.equal(out.cpu(), fn(images, param))


def test_bad_arguments_are_rejected() -> None:
    images = torch.zeros(1, 3, 28, 28, dtype=torch.uint8)
    with pytest.raises(ValueError, match="shrinks a 28x28 image to 0x0"):
        pixelate(images, 0.03)
    with pytest.raises(ValueError, match="factor must be <= 1"):
        pixelate_nearest(images, 1.5)
    with pytest.raises(ValueError, match="factor must be > 0"):
        pixelate(images, 0.0)
    with pytest.raises(ValueError, match=r"quality must be in 1\.\.100"):
        jpeg_compression(images, 0)
    with pytest.raises(TypeError, match="quality must be an int"):
        jpeg_compression(images, 15.5)
    with pytest.raises(TypeError, match="uint8"):
        pixelate(images.float(), 0.5)
