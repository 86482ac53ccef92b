"""Blur corruptions against re-implementations of their references (cv2, SciPy, skimage,
torchvision, NumPy loops), on real MedMNIST images upsampled to 224 px and at 28 px."""

from __future__ import annotations

import itertools
import math

import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from scipy.ndimage import correlate
from scipy.ndimage import zoom as scipy_zoom
from skimage.filters import gaussian as sk_gaussian

from medrobust.corruptions._random import ImageRandom
from medrobust.corruptions.functional import blur
from medrobust.corruptions.functional._utils import pad2d

IMAGENET_C = {
    "defocus_blur": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
    "motion_blur": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
    "zoom_blur": [
        blur.zoom_factors(1, 1.11, 0.01),
        blur.zoom_factors(1, 1.16, 0.01),
        blur.zoom_factors(1, 1.21, 0.02),
        blur.zoom_factors(1, 1.26, 0.02),
        blur.zoom_factors(1, 1.31, 0.03),
    ],
    "gaussian_blur": [1, 2, 3, 4, 6],
    "gaussian_blur_kernel": [13, 15, 17, 21, 25],  # tissuemnist (MedMNIST-C)
    "glass_blur": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
}
STOCHASTIC = {"motion_blur", "glass_blur"}
SCALE = {
    "defocus_blur": blur.scale_defocus_blur,
    "motion_blur": blur.scale_motion_blur,
    "gaussian_blur": blur.scale_gaussian_blur,
    "gaussian_blur_kernel": blur.scale_gaussian_blur_kernel,
    "glass_blur": blur.scale_glass_blur,
}


@pytest.fixture(scope="module")
def grey224(breast_images: np.ndarray, nchw, upsample) -> torch.Tensor:
    return nchw(upsample(breast_images[:2]))


@pytest.fixture(scope="module")
def rgb224(retina_images: np.ndarray, nchw, upsample) -> torch.Tensor:
    return nchw(upsample(retina_images[:2]))


@pytest.fixture(scope="module")
def non_square(synthetic) -> torch.Tensor:
    """Two 30 x 44 RGB images."""
    return synthetic(2, 3, 44)[..., 7:37, :].contiguous()


def _call(name: str, images: torch.Tensor, param, seed: int = 0, severity: int = 1) -> torch.Tensor:
    fn = getattr(blur, name)
    if name in STOCHASTIC:
        rng = ImageRandom.for_images(seed, name, severity, range(len(images)))
        return fn(images, param, rng=rng)
    return fn(images, param)


# ----------------------------------------------------------------------------- references


def ref_disk(radius: float, alias_blur: float) -> np.ndarray:
    """ImageNet-C disk(), verbatim semantics."""
    if radius <= 8:
        grid, ksize = np.arange(-8, 8 + 1), (3, 3)
    else:
        grid, ksize = np.arange(-radius, radius + 1), (5, 5)
    xx, yy = np.meshgrid(grid, grid)
    aliased = np.array((xx**2 + yy**2) <= radius**2, dtype=np.float32)
    aliased /= np.sum(aliased)
    return cv2.GaussianBlur(aliased, ksize=ksize, sigmaX=alias_blur)


def ref_defocus(img: np.ndarray, param) -> np.ndarray:
    x = img / 255.0
    kernel = ref_disk(*param)
    out = np.stack([cv2.filter2D(x[..., d], -1, kernel) for d in range(x.shape[2])], axis=2)
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


def ref_motion(img: np.ndarray, radius: float, sigma: float, angle: float, *, stop_at_border: bool):
    """imagecorruptions 1.1.x _motion_blur in float64 (ImageMagick kernel width and offsets)."""
    width = 2 * math.ceil(radius) + 1
    k = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2))
    k /= k.sum()
    point = (width * np.sin(np.deg2rad(angle)), width * np.cos(np.deg2rad(angle)))
    hypot = math.hypot(*point)
    h, w = img.shape[:2]
    out = np.zeros(img.shape, np.float64)
    for i in range(width):
        dy = -math.ceil(i * point[0] / hypot - 0.5)
        dx = -math.ceil(i * point[1] / hypot - 0.5)
        if stop_at_border and (abs(dy) >= h or abs(dx) >= w):
            break
        rows = np.clip(np.arange(h) - dy, 0, h - 1)
        cols = np.clip(np.arange(w) - dx, 0, w - 1)
        out += k[i] * img[rows][:, cols]
    return np.clip(out, 0, 255)


def ref_zoom(img: np.ndarray, zooms) -> np.ndarray:
    """ImageNet-C zoom_blur with its clipped_zoom (square (H, W, C) images)."""
    x = (img / 255.0).astype(np.float32)
    h = x.shape[0]
    out = np.zeros_like(x)
    for z in zooms:
        ch = int(np.ceil(h / z))
        top = (h - ch) // 2
        zoomed = scipy_zoom(x[top : top + ch, top : top + ch], (z, z, 1), order=1)
        trim = (zoomed.shape[0] - h) // 2
        out += zoomed[trim : trim + h, trim : trim + h]
    return (np.clip((x + out) / (len(zooms) + 1), 0, 1) * 255).astype(np.uint8)


def ref_gaussian(img: np.ndarray, sigma: float) -> np.ndarray:
    out = sk_gaussian(img / 255.0, sigma=sigma, channel_axis=-1)
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


def ref_glass_loop(x: np.ndarray, offsets: np.ndarray, delta: int) -> np.ndarray:
    """The ImageNet-C pixel loop on (H, W, 3); offsets[it, h - delta - 1, w - delta - 1] = (dx, dy)."""
    x = x.copy()
    h_size, w_size = x.shape[:2]
    for it in range(offsets.shape[0]):
        for h in range(h_size - delta, delta, -1):
            for w in range(w_size - delta, delta, -1):
                dx, dy = offsets[it, h - delta - 1, w - delta - 1]
                h_prime, w_prime = h + dy, w + dx
                x[h, w], x[h_prime, w_prime] = x[h_prime, w_prime], x[h, w]
    return x


def ref_glass(img: np.ndarray, param, rs: np.random.RandomState) -> np.ndarray:
    """ImageNet-C glass_blur (channel_axis for the removed ``multichannel``)."""
    sigma, delta, iterations = param
    x = np.uint8(sk_gaussian(img / 255.0, sigma=sigma, channel_axis=-1) * 255)
    for _ in range(iterations):
        for h in range(x.shape[0] - delta, delta, -1):
            for w in range(x.shape[1] - delta, delta, -1):
                dx, dy = rs.randint(-delta, delta, size=(2,))
                h_prime, w_prime = h + dy, w + dx
                x[h, w], x[h_prime, w_prime] = x[h_prime, w_prime], x[h, w]
    return np.uint8(np.clip(sk_gaussian(x / 255.0, sigma=sigma, channel_axis=-1), 0, 1) * 255)


def _assert_close(ours: np.ndarray, ref: np.ndarray, max_mean: float = 0.1) -> None:
    """Our (N, H, W, C) result within one level of the reference, and rarely off at all."""
    diff = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
    assert diff.max() <= 1, f"max |diff| {diff.max()}"
    assert diff.mean() <= max_mean, f"mean |diff| {diff.mean()}"


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", sorted(IMAGENET_C))
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 224])
def test_shape_dtype_and_input_untouched(
    name: str, channels: int, size: int, synthetic, check_contract
) -> None:
    images = synthetic(2, channels, size)
    param = IMAGENET_C[name][-1]
    check_contract(lambda x: _call(name, x, param), images)
    if size == 28 and name in SCALE:  # the scaled parameter at native MedMNIST size
        scaled = _call(name, images, SCALE[name](param, 28 / 224))
        assert scaled.shape == images.shape


@pytest.mark.parametrize("name", sorted(IMAGENET_C))
def test_tiny_images_with_large_kernels(name: str, synthetic) -> None:
    """Kernels far wider than a non-square image: borders repeat or reflect, nothing crashes."""
    images = synthetic(2, 3, 13)[..., :9, :].contiguous()
    out = _call(name, images, IMAGENET_C[name][-1])
    assert out.shape == images.shape
    assert not torch.equal(out, images)


# ImageNet-C's glass levels are not monotone (iterations 2, 1, 3, 2, 2; the reference's PSNR
# goes up from level 1 to 2 as well; a larger sigma can raise it too): grow the shuffle only.
MONOTONE = {
    **IMAGENET_C,
    "glass_blur": [(0.7, 1, 1), (0.7, 1, 2), (0.7, 2, 2), (0.7, 3, 2), (0.7, 3, 3)],
}


@pytest.mark.parametrize("name", sorted(MONOTONE))
def test_blur_grows_with_severity(name: str, grey224: torch.Tensor, nhwc, psnr) -> None:
    image = grey224[:1]
    db = [psnr(nhwc(image), nhwc(_call(name, image, p)))[0] for p in MONOTONE[name]]
    assert all(a > b for a, b in itertools.pairwise(db)), db


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_batch_invariance(name: str, rgb224: torch.Tensor) -> None:
    images = torch.cat([rgb224, rgb224.flip(-1)])[:, :, :96, :96].contiguous()
    param = IMAGENET_C[name][2]
    rng = ImageRandom.for_images(7, name, 3, [10, 11, 12, 13])
    batch = getattr(blur, name)(images, param, rng=rng)
    for i in range(len(images)):
        one_rng = ImageRandom.for_images(7, name, 3, [10 + i])
        one = getattr(blur, name)(images[i : i + 1], param, rng=one_rng)
        assert torch.equal(one, batch[i : i + 1])
    other = getattr(blur, name)(
        images, param, rng=ImageRandom.for_images(8, name, 3, [10, 11, 12, 13])
    )
    assert not torch.equal(other, batch)


def test_grey_is_one_channel_of_rgb(grey224: torch.Tensor) -> None:
    """Grey input equals the reference's grey -> RGB -> corrupt -> L path."""
    image = grey224[:1]
    for name, params in IMAGENET_C.items():
        grey = _call(name, image, params[2])
        rgb = _call(name, image.expand(-1, 3, -1, -1).contiguous(), params[2])
        assert torch.equal(rgb, grey.expand(-1, 3, -1, -1)), name


# ----------------------------------------------------------------------------- defocus


@pytest.mark.parametrize(
    "param", [*IMAGENET_C["defocus_blur"], (2, 0.01), (7, 0.3), (0.5, 0.6), (1.5, 0.1), (2.5, 0.1)]
)
def test_defocus_matches_imagenet_c(
    param, grey224: torch.Tensor, rgb224: torch.Tensor, nhwc, to_rgb
) -> None:
    torch.testing.assert_close(
        blur._disk_kernel(*param), torch.from_numpy(ref_disk(*param)).double(), atol=1e-7, rtol=0
    )
    for images in (grey224, rgb224):
        ref = np.stack(
            [ref_defocus(to_rgb(im), param)[..., : images.shape[1]] for im in nhwc(images)]
        )
        _assert_close(nhwc(blur.defocus_blur(images, param)), ref)


def test_defocus_at_28px_and_non_square(
    breast_images: np.ndarray, nchw, nhwc, to_rgb, non_square
) -> None:
    images = nchw(breast_images[:4])
    ref = np.stack([ref_defocus(to_rgb(im), (10, 0.5))[..., :1] for im in nhwc(images)])
    _assert_close(nhwc(blur.defocus_blur(images, (10, 0.5))), ref)
    ref = np.stack([ref_defocus(im, (4, 0.5)) for im in nhwc(non_square)])
    _assert_close(nhwc(blur.defocus_blur(non_square, (4, 0.5))), ref)


# the MedMNIST-C defocus levels (all datasets) besides ImageNet-C's, at 224 px
DEFOCUS_MEDMNIST_C = [
    (0.5, 0.6), (1, 0.5), (1.5, 0.1), (2, 0.01), (2, 0.5), (2.5, 0.1), (3, 0.1), (4, 0.1),
    (5, 0.1), (5, 0.2), (6, 0.1), (6, 0.2), (6, 0.3), (7, 0.3), (7, 0.4),
]  # fmt: skip
DEFOCUS_ALL = sorted({*IMAGENET_C["defocus_blur"], *DEFOCUS_MEDMNIST_C})


def _exact_defocus(images: torch.Tensor, param) -> np.ndarray:
    """The disk correlation of every plane in float64 (reflect-101 border), in grey levels."""
    kernel = blur._disk_kernel(*param).numpy()
    planes = images.reshape(-1, *images.shape[-2:]).double().numpy()
    return np.stack([correlate(plane, kernel, mode="mirror") for plane in planes])


@pytest.mark.parametrize("size", [28, 224])
def test_defocus_disk_sums_equal_the_kernel(
    size: int, grey224: torch.Tensor, rgb224: torch.Tensor, retina_images: np.ndarray, nchw
) -> None:
    """The integral-image path (nested rectangles, then the blur) is the kernel, to 2e-4 grey
    levels, on real and random planes; the results truncate as the exact values do."""
    real = rgb224[:1] if size == 224 else nchw(retina_images[:2])
    noise = torch.randint(
        0, 256, (1, 1, size, size + 5), generator=torch.Generator().manual_seed(1)
    )
    for param in DEFOCUS_ALL:
        param = blur.scale_defocus_blur(param, size / 224)
        plan = blur._disk_sums(*param)
        if plan is None:
            continue
        for images in (real, noise.to(torch.uint8), grey224[:1, :, :size, :size].contiguous()):
            h, w = images.shape[-2:]
            planes = images.reshape(-1, h, w).numpy()
            grid = blur._disk_correlate(planes, plan)[
                :, plan.pad : plan.pad + h, plan.pad : plan.pad + w
            ]
            exact = _exact_defocus(images, param)
            np.testing.assert_allclose(grid, exact, atol=2e-4, rtol=0, err_msg=str(param))
            ours = blur.defocus_blur(images, param).reshape(-1, h, w).numpy()
            near = np.abs(exact - np.round(exact)) < 2e-4
            assert np.all((ours == np.floor(np.clip(exact, 0, 255))) | near), param


@pytest.mark.parametrize("param", [(7, 0.3), (8, 0.5), (10, 0.5)])
def test_defocus_fft_fallback(param) -> None:
    """Disks that reach the kernel's edge, where its anti-alias blur reflects (radius 7 and
    up, and every radius above 8), go to the FFT; an unblurred disk (sigma 0.1) does not."""
    assert blur._disk_sums(*param) is None
    assert blur._disk_sums(8, 0.01) is not None and blur._disk_sums(8, 0.01).taps is None
    assert blur._disk_sums(6, 0.5) is not None
    images = torch.randint(0, 256, (2, 3, 40, 36), generator=torch.Generator().manual_seed(2))
    images = images.to(torch.uint8)
    kernel = blur._disk_kernel(*param)
    assert torch.equal(blur.defocus_blur(images, param), blur._defocus_fft(images, kernel))


@pytest.mark.parametrize("param", DEFOCUS_ALL)
def test_defocus_agrees_with_the_fft_path(
    param, grey224: torch.Tensor, rgb224: torch.Tensor, nhwc
) -> None:
    """The CPU path against the FFT path (CUDA's): at most one level apart. The FFT's float32
    noise decides the truncation of the (many) exact-integer results, hence no tighter bound."""
    for images in (grey224[:1], rgb224[:1]):
        fft = blur._defocus_fft(images, blur._disk_kernel(*param))
        _assert_close(nhwc(blur.defocus_blur(images, param)), nhwc(fft))


@pytest.mark.parametrize("param", [(3, 0.1), (2, 0.01), (6, 0.1), (4, 0.5), (6, 0.3)])
def test_defocus_ties_truncate_as_imagenet_c(param, grey224: torch.Tensor, nhwc, to_rgb) -> None:
    """Exact-integer results (flat regions; any pixel of an unblurred disk whose sum divides
    evenly) truncate to v or v - 1 as the reference's float32 kernel sum decides."""
    flat = torch.full((1, 1, 24, 24), 201, dtype=torch.uint8)
    images = torch.cat([flat, grey224[:1, :, :24, :24]])
    ref = np.stack([ref_defocus(to_rgb(im), param)[..., :1] for im in nhwc(images)])
    ours = nhwc(blur.defocus_blur(images, param))
    assert np.array_equal(ours[0], ref[0])
    if blur._disk_sums(*param).taps is None:  # unblurred disk: every result is exact
        assert np.array_equal(ours, ref)


def test_defocus_threads_and_chunks(rgb224: torch.Tensor) -> None:
    """Results do not depend on the thread count or on the batch's chunking."""
    images = torch.cat([rgb224, rgb224.flip(-1), rgb224.flip(-2)])
    one = blur.defocus_blur(images, (6, 0.5))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert torch.equal(blur.defocus_blur(images, (6, 0.5)), one)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(torch.cat([blur.defocus_blur(im[None], (6, 0.5)) for im in images]), one)


# ----------------------------------------------------------------------------- motion


def test_motion_kernels_are_imagemagick_lines() -> None:
    angles = torch.tensor([0.0, 90.0, -45.0, 30.0])
    k = blur.motion_kernels(3, 2, angles)
    assert k.shape == (4, 13, 13) and k.dtype == torch.float32
    torch.testing.assert_close(k.sum((1, 2)), torch.ones(4))
    weights = torch.exp(-(torch.arange(7.0) ** 2) / 8)
    weights /= weights.sum()
    torch.testing.assert_close(k[0, 6, 6:], weights)  # angle 0: rightwards along the row
    torch.testing.assert_close(k[1, 6:, 6], weights)  # angle 90: downwards along the column
    rows, cols = torch.nonzero(k[2], as_tuple=True)  # -45 degrees: up and to the right
    assert torch.all(rows <= 6) and torch.all(cols >= 6) and torch.equal(6 - rows, cols - 6)


def test_motion_taps_equal_the_dense_kernel(rgb224: torch.Tensor) -> None:
    x = rgb224[:, :, :64, :64].float() / 255
    angles = torch.tensor([-37.0, 12.5])
    fast = blur.apply_motion_blur(x, 7.5, 4, angles)
    kernels = blur.motion_kernels(7.5, 4, angles).double().numpy()
    dense = np.stack(
        [
            [correlate(plane, kernel, mode="nearest") for plane in image]
            for image, kernel in zip(x.double().numpy(), kernels, strict=True)
        ]
    )
    np.testing.assert_allclose(fast.numpy(), dense, atol=2e-6, rtol=0)


@pytest.mark.parametrize("shape", [(5, 1, 28, 28), (2, 3, 224, 224), (3, 3, 31, 17)])
def test_motion_gathers_equal_the_views_bit_for_bit(shape: tuple[int, ...]) -> None:
    """The device path (one gather per tap for the batch) adds what the CPU path (views per
    image) adds, in the same order: the same floats, here run on the CPU."""
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.rand(shape, generator=g) * 255
    angles = torch.rand(shape[0], generator=g) * 90 - 45
    for radius, sigma in ((5, 5), (20, 15), (3.5, 2.0)):
        dy, dx, weights = blur._motion_taps(radius, sigma, angles)
        pad_h, pad_w = int(dy.abs().max()), int(dx.abs().max())
        xp = pad2d(x, pad_h, pad_w, "replicate")
        args = (xp, dy + pad_h, dx + pad_w, weights.tolist(), shape[-2:])
        assert torch.equal(blur._sum_shifted_gathers(*args), blur._sum_shifted_views(*args))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_motion_blur_on_cuda_draws_the_cpu_angles(rgb224: torch.Tensor) -> None:
    """CUDA streams draw the angles on the host: the CPU's angles, so (up to float rounding of
    the device's adds) the CPU's images."""
    rng = ImageRandom.for_images(0, "motion_blur", 3, range(len(rgb224)), "cuda")
    out = blur.motion_blur(rgb224.cuda(), (15, 5), rng=rng).cpu()
    cpu = blur.motion_blur(rgb224, (15, 5), rng=ImageRandom.for_images(0, "motion_blur", 3, range(len(rgb224))))
    assert (out.int() - cpu.int()).abs().max() <= 1


@pytest.mark.parametrize("param", [(10, 3), (15, 8), (20, 15), (3, 3)])
def test_motion_blur_matches_float64_reference(
    param, grey224: torch.Tensor, rgb224: torch.Tensor, nhwc
) -> None:
    for images in (grey224[:1], rgb224[:1]):
        rng = ImageRandom.for_images(0, "motion_blur", 1, range(len(images)))
        angles = ImageRandom.for_images(0, "motion_blur", 1, range(len(images))).uniform(
            (), -45, 45
        )
        out = blur.motion_blur(images, param, rng=rng)
        ref = np.stack(
            [
                np.round(ref_motion(im.astype(np.float64), *param, float(a), stop_at_border=False))
                for im, a in zip(nhwc(images), angles, strict=True)
            ]
        )
        _assert_close(nhwc(out), ref, max_mean=0.02)


def test_motion_blur_psnr_matches_imagecorruptions(
    breast_images: np.ndarray, nchw, nhwc, upsample, psnr
) -> None:
    """Same PSNR to clean as imagecorruptions with its own angles and truncation, per level.

    The angle moves the PSNR of one image by several dB, so the means are over 128 draws
    (4 images x 32 angles, 64 px, parameters scaled to 64 px).
    """
    clean = np.repeat(upsample(breast_images[:4], 64), 32, axis=0)
    images = nchw(clean)
    rs = np.random.RandomState(0)
    for severity, param in enumerate(IMAGENET_C["motion_blur"], 1):
        param = blur.scale_motion_blur(param, 64 / 224)
        rng = ImageRandom.for_images(0, "motion_blur", severity, range(len(images)))
        ours = nhwc(blur.motion_blur(images, param, rng=rng))[..., 0]
        ref = [
            ref_motion(im, *param, rs.uniform(-45, 45), stop_at_border=True).astype(np.uint8)
            for im in clean
        ]
        ours_psnr, ref_psnr = psnr(clean, ours).mean(), psnr(clean, np.stack(ref)).mean()
        assert abs(ours_psnr - ref_psnr) < 0.5, (severity, ours_psnr, ref_psnr)


def test_motion_blur_at_28px_keeps_shape_and_grey(breast_images: np.ndarray, nchw) -> None:
    """MedMNIST-C defect 2: a (28, 3) result at 28 px. Here the shape and grey content stay."""
    images = nchw(breast_images[:3])
    rng = ImageRandom.for_images(0, "motion_blur", 3, range(3))
    out = blur.motion_blur(images, blur.scale_motion_blur((15, 5), 28 / 224), rng=rng)
    assert out.shape == (3, 1, 28, 28)
    assert 0 < (out.int() - images.int()).abs().float().mean() < 10


# ----------------------------------------------------------------------------- zoom


def test_zoom_factors_reproduce_numpy_arange() -> None:
    assert [len(z) for z in IMAGENET_C["zoom_blur"]] == [12, 16, 11, 13, 11]
    assert blur.zoom_factors(1, 1.11, 0.01) == tuple(np.arange(1, 1.11, 0.01).tolist())
    assert max(blur.zoom_factors(1, 1.11, 0.01)) == pytest.approx(1.11)


@pytest.mark.parametrize("severity", range(5))
def test_zoom_blur_matches_imagenet_c(severity: int, grey224: torch.Tensor, nhwc, to_rgb) -> None:
    zooms = IMAGENET_C["zoom_blur"][severity]
    ref = np.stack([ref_zoom(to_rgb(im), zooms)[..., :1] for im in nhwc(grey224[:1])])
    _assert_close(nhwc(blur.zoom_blur(grey224[:1], zooms)), ref)


def test_zoom_blur_rgb_and_28px(
    rgb224: torch.Tensor, retina_images: np.ndarray, nchw, nhwc
) -> None:
    for images in (rgb224[:1], nchw(retina_images[:4])):
        zooms = IMAGENET_C["zoom_blur"][4]
        ref = np.stack([ref_zoom(im, zooms) for im in nhwc(images)])
        _assert_close(nhwc(blur.zoom_blur(images, zooms)), ref)


# ----------------------------------------------------------------------------- gaussian


@pytest.mark.parametrize("sigma", [0.7, 1, 2.5, 6])
def test_gaussian_blur_matches_skimage(
    sigma: float, grey224: torch.Tensor, rgb224: torch.Tensor, nhwc, non_square
) -> None:
    for images in (grey224, rgb224, non_square):
        ref = np.stack([ref_gaussian(im, sigma) for im in nhwc(images)])
        _assert_close(nhwc(blur.gaussian_blur(images, sigma)), ref)


@pytest.mark.parametrize("k", [3, 11, 25])
def test_gaussian_blur_kernel_matches_torchvision(
    k: int, grey224: torch.Tensor, rgb224: torch.Tensor, nhwc, non_square
) -> None:
    for images in (grey224, rgb224, non_square):
        ref = []
        for im in nhwc(images):
            pil = Image.fromarray(im[..., 0] if im.shape[2] == 1 else im)
            ref.append(np.asarray(TF.gaussian_blur(pil, kernel_size=k)).reshape(im.shape))
        _assert_close(nhwc(blur.gaussian_blur_kernel(images, k)), np.stack(ref), max_mean=0.01)


def test_gaussian_blur_kernel_forces_odd(grey224: torch.Tensor) -> None:
    assert torch.equal(blur.gaussian_blur_kernel(grey224, 4), blur.gaussian_blur_kernel(grey224, 5))


# ----------------------------------------------------------------------------- glass


@pytest.mark.parametrize("delta", [1, 2, 3])
def test_glass_shuffle_is_the_sequential_loop(
    delta: int, retina_images: np.ndarray, nchw, nhwc
) -> None:
    """Same offsets: the vectorised shuffle equals the per-pixel loop byte for byte."""
    images = nchw(retina_images[:3, :20, :17])
    n, _, h, w = images.shape
    offsets = np.random.default_rng(delta).integers(
        -delta, delta, (n, 3, h - 2 * delta, w - 2 * delta, 2)
    )
    ours = blur._glass_shuffle(
        images, torch.from_numpy(offsets[..., 0]), torch.from_numpy(offsets[..., 1]), delta
    )
    for i in range(n):
        ref = ref_glass_loop(nhwc(images)[i], offsets[i], delta)
        np.testing.assert_array_equal(nhwc(ours)[i], ref)


def test_glass_fixed_rounds_give_the_chain_ends_of_the_stopping_rule(rgb224, monkeypatch) -> None:
    """Off the CPU the pointer doubling runs a fixed ceil(log2 M) rounds instead of testing for
    the end on the host: on random chains (long ones included) and in glass blur, the same."""
    g = torch.Generator().manual_seed(5)
    for m in (1, 2, 7, 1000):
        parent = (torch.rand(4, m, generator=g) * torch.arange(m)).long()  # links to lower indices
        parent[:, ::3] = torch.arange(m)[::3]  # some chain ends
        parent[0] = torch.arange(m) - 1  # one chain through everything
        parent[0, 0] = 0
        assert torch.equal(blur._chain_ends(parent, fixed_rounds=True), blur._chain_ends(parent, fixed_rounds=False))
    images = rgb224[:2, :, :96, :96].contiguous()
    expected = blur.glass_blur(images, (0.7, 2, 2), rng=ImageRandom.for_images(0, "glass_blur", 3, range(2)))
    stopping = blur._chain_ends
    monkeypatch.setattr(blur, "_chain_ends", lambda jump, fixed_rounds: stopping(jump, fixed_rounds=True))
    out = blur.glass_blur(images, (0.7, 2, 2), rng=ImageRandom.for_images(0, "glass_blur", 3, range(2)))
    assert torch.equal(out, expected)


def test_glass_blur_psnr_matches_imagenet_c(
    breast_images: np.ndarray, retina_images: np.ndarray, nchw, nhwc, upsample, psnr
) -> None:
    """Distribution check on 40 px images: mean PSNR to clean within 0.5 dB of the reference."""
    grey_as_rgb = np.repeat(upsample(breast_images[:3], 40)[..., None], 3, axis=3)
    images = np.concatenate([grey_as_rgb, upsample(retina_images[:3], 40)])
    tensor = nchw(images)
    rs = np.random.RandomState(0)
    for severity, param in enumerate(IMAGENET_C["glass_blur"], 1):
        rng = ImageRandom.for_images(0, "glass_blur", severity, range(len(images)))
        ours = nhwc(blur.glass_blur(tensor, param, rng=rng))
        ref = [ref_glass(im, param, rs) for im in images]
        ours_psnr, ref_psnr = psnr(images, ours).mean(), psnr(images, np.stack(ref)).mean()
        assert abs(ours_psnr - ref_psnr) < 0.5, (severity, ours_psnr, ref_psnr)


# ----------------------------------------------------------------------------- scaling, errors


def test_scale_parameters() -> None:
    assert blur.scale_defocus_blur((8, 0.5), 0.5) == (4.0, 0.25)
    assert blur.scale_motion_blur((20, 15), 0.125) == (2.5, 1.875)
    assert blur.scale_gaussian_blur(6, 0.5) == 3.0
    assert blur.scale_glass_blur((1.5, 4, 2), 0.125) == (0.1875, 1, 2)
    assert blur.scale_glass_blur((1.1, 3, 2), 2.0) == (2.2, 6, 2)
    for k in (3, 5, 7, 9, 11, 13, 15, 17, 21, 25):
        assert blur.scale_gaussian_blur_kernel(k, 1.0) == k
    assert blur.scale_gaussian_blur_kernel(25, 0.125) == 1  # sigma 4.1 / 8 = 0.51 px
    assert blur.scale_gaussian_blur_kernel(11, 2.0) == 25  # sigma 2.0 x 2 = 4.0; k = 25 has 4.1


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda x: blur.defocus_blur(x, (3,)), TypeError),
        (lambda x: blur.defocus_blur(x, (-1, 0.1)), ValueError),
        (lambda x: blur.zoom_blur(x, (1.0, 0.9)), ValueError),
        (lambda x: blur.zoom_blur(x, ()), ValueError),
        (lambda x: blur.gaussian_blur(x, float("nan")), ValueError),
        (lambda x: blur.gaussian_blur_kernel(x, 2.5), TypeError),
        (lambda x: blur.gaussian_blur_kernel(x, 0), ValueError),
        (lambda x: blur.glass_blur(x, (1, 0, 2), rng=ImageRandom([0, 1])), ValueError),
        (lambda x: blur.glass_blur(x, (1, 2, 2), rng=ImageRandom([0])), ValueError),
        (lambda x: blur.motion_blur(x, (10, 0), rng=ImageRandom([0, 1])), ValueError),
        (lambda x: blur.motion_blur(x, (10, 3), rng=None), TypeError),
        (lambda x: blur.gaussian_blur(x.float(), 1), TypeError),
        (lambda x: blur.scale_motion_blur((10, 3), 0), ValueError),
    ],
)
def test_bad_input_raises(call, error, synthetic) -> None:
    with pytest.raises(error):
        call(synthetic(2, 1, 28))
