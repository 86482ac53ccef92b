"""Colour corruptions: bit-exact parity with PIL / torchvision / scikit-image and ImageNet-C."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import skimage.color
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageEnhance

from medrobust.corruptions.functional import _utils, color
from medrobust.corruptions.functional._utils import l_sums, plane_sums, rgb_to_l
from medrobust.corruptions.functional.color import (
    brightness,
    brightness_hsv,
    contrast,
    contrast_mean,
    gamma,
    saturate,
    saturate_hsv,
)

# every per-severity value the references use (MedMNIST-C tables, ImageNet-C lists)
BRIGHTNESS = (0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 1.1, 1.2, 1.25, 1.3, 1.5, 1.7)
CONTRAST = (0.4, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9, 1.1, 1.2, 1.3, 1.4, 1.6, 1.8)
GAMMA = (0.4, 0.6, 0.7, 0.8, 0.9, 1.3, 1.4, 1.6, 1.8, 2.0)
SATURATE = (0.05, 0.1, 0.15, 0.17, 0.2, 0.25)
BRIGHTNESS_HSV = (0.1, 0.2, 0.3, 0.4, 0.5)
CONTRAST_MEAN = (0.4, 0.3, 0.2, 0.1, 0.05)
SATURATE_HSV = ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2))


def skimage_hsv(adjust):
    """A reference corruption on an RGB PIL image through skimage's HSV, truncated to uint8."""

    def corrupt(image: Image.Image) -> np.ndarray:
        hsv = skimage.color.rgb2hsv(np.asarray(image) / 255.0)
        adjust(hsv)
        return (np.clip(skimage.color.hsv2rgb(hsv), 0, 1) * 255).astype(np.uint8)

    return corrupt


def medmnistc_saturate(delta: float):
    def adjust(hsv: np.ndarray) -> None:
        hsv[..., 1] = np.clip(hsv[..., 1] + delta, 0, 1)

    return skimage_hsv(adjust)


def imagenetc_brightness(c: float):
    def adjust(hsv: np.ndarray) -> None:
        hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)

    return skimage_hsv(adjust)


def imagenetc_saturate(c: tuple[float, float]):
    def adjust(hsv: np.ndarray) -> None:
        hsv[..., 1] = np.clip(hsv[..., 1] * c[0] + c[1], 0, 1)

    return skimage_hsv(adjust)


def imagenetc_contrast(c: float):
    def corrupt(image: Image.Image) -> np.ndarray:
        x = np.asarray(image) / 255.0
        means = np.mean(x, axis=(0, 1), keepdims=True)
        return (np.clip((x - means) * c + means, 0, 1) * 255).astype(np.uint8)

    return corrupt


# (our function, reference corruption factory, parameters)
CASES = {
    "brightness": (
        brightness,
        lambda f: lambda im: ImageEnhance.Brightness(im).enhance(f),
        BRIGHTNESS,
    ),
    "contrast": (contrast, lambda f: lambda im: ImageEnhance.Contrast(im).enhance(f), CONTRAST),
    "gamma": (gamma, lambda g: lambda im: TF.adjust_gamma(im, g, gain=1), GAMMA),
    "saturate": (saturate, medmnistc_saturate, SATURATE),
    "brightness_hsv": (brightness_hsv, imagenetc_brightness, BRIGHTNESS_HSV),
    "contrast_mean": (contrast_mean, imagenetc_contrast, CONTRAST_MEAN),
    "saturate_hsv": (saturate_hsv, imagenetc_saturate, SATURATE_HSV),
}
ALL = [(fn, params) for fn, _, params in CASES.values()]


def edge_colours() -> np.ndarray:
    """Every RGB combination of levels where HSV ties and clipping happen, as a 6 x 36 image."""
    levels = (0, 1, 127, 128, 254, 255)
    return np.array(list(itertools.product(levels, repeat=3)), dtype=np.uint8).reshape(1, 6, 36, 3)


@pytest.fixture(scope="module")
def image_sets(breast_images, retina_images, shared_data, upsample) -> dict[str, np.ndarray]:
    """Real grey and RGB images at 28 and 224 px, H&E colours, and synthetic edge cases."""
    with np.load(shared_data / "medmnist-subsets" / "pathmnist.npz") as f:
        pathology = f["test_images"][:4].copy()
    rng = np.random.default_rng(0)
    ramp = np.arange(256, dtype=np.uint8).reshape(1, 8, 32)
    return {
        "grey28": breast_images,
        "rgb28": retina_images,
        "grey224": upsample(breast_images[:2]),
        "rgb224": upsample(retina_images[:2]),
        "pathology28": pathology,
        "ramp": ramp,
        "edges": edge_colours(),
        "random": rng.integers(0, 256, (2, 19, 23, 3), dtype=np.uint8),
    }


def many_colours() -> np.ndarray:
    """65,536 random colours, every grey and every colour with two equal channels on a grid."""
    rng = np.random.default_rng(1)
    grid = np.arange(0, 256, 5, dtype=np.uint8)
    a, b = (x.ravel() for x in np.meshgrid(grid, grid))
    ties = np.concatenate([np.stack(order, -1) for order in ((a, a, b), (a, b, a), (b, a, a))])
    greys = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, 1)
    colours = np.concatenate([rng.integers(0, 256, (1 << 16, 3), dtype=np.uint8), ties, greys])
    return colours.reshape(1, 1, -1, 3)


@pytest.mark.parametrize(
    ("fn", "reference", "param"),
    [
        (saturate, medmnistc_saturate, 0.15),
        (saturate, medmnistc_saturate, -0.3),
        (brightness_hsv, imagenetc_brightness, 0.3),
        (brightness_hsv, imagenetc_brightness, -0.2),
        (saturate_hsv, imagenetc_saturate, (0.3, 0.2)),
        (saturate_hsv, imagenetc_saturate, (5, 0.1)),
    ],
)
def test_hsv_round_trip_is_skimage_on_many_colours(fn, reference, param, nchw, to_numpy) -> None:
    """The tabulated HSV round trip equals scikit-image's float64 one, colour by colour."""
    colours = many_colours()
    expected = reference(param)(Image.fromarray(colours[0]))
    np.testing.assert_array_equal(to_numpy(fn(nchw(colours), param))[0], expected)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference(
    name: str, image_sets: dict[str, np.ndarray], nchw, to_numpy, pil_pipeline
) -> None:
    """Every severity on real and synthetic images, grey and RGB: identical bytes.

    Grey images go through the reference's grey -> RGB -> corrupt -> ``convert('L')``. The one
    exception is ``contrast_mean``: NumPy's float64 mean of ``x / 255`` carries summation-order
    rounding, which flips the truncation of values that are exact integers (a grey ramp at
    c = 0.2 has many); we use the exactly rounded mean, so those differ by one level.
    """
    fn, reference, params = CASES[name]
    for (set_name, images), param in itertools.product(image_sets.items(), params):
        ours = to_numpy(fn(nchw(images), param))
        expected = pil_pipeline(images, reference(param))
        diff = np.abs(ours.astype(int) - expected)
        message = f"{set_name} {param}: mean |diff| {diff.mean():.4f}, max {diff.max()}"
        if fn is contrast_mean and set_name in ("ramp", "edges"):
            assert diff.max() <= 1 and diff.mean() < 0.25, message
        else:
            assert diff.max() == 0, message


@pytest.mark.parametrize(
    ("fn", "params"),
    [
        (brightness, (0.9, 0.8, 0.7, 0.6, 0.5)),
        (brightness, (1.1, 1.2, 1.3, 1.4, 1.5)),
        (contrast, (0.9, 0.8, 0.7, 0.6, 0.4)),
        (contrast, (1.1, 1.2, 1.3, 1.4, 1.6)),
        (gamma, (0.9, 0.8, 0.7, 0.6, 0.4)),
        (gamma, (1.3, 1.4, 1.6, 1.8, 2.0)),
        (saturate, (0.05, 0.1, 0.15, 0.2, 0.25)),
        (brightness_hsv, BRIGHTNESS_HSV),
        (contrast_mean, CONTRAST_MEAN),
        (saturate_hsv, ((5, 0.1), (20, 0.2))),
    ],
)
def test_severity_is_monotone(fn, params, image_sets: dict[str, np.ndarray], nchw) -> None:
    for set_name in ("grey224", "rgb224"):
        clean = nchw(image_sets[set_name])
        change = [(fn(clean, p).float() - clean.float()).abs().mean().item() for p in params]
        assert all(a < b for a, b in itertools.pairwise(change)), (set_name, change)


def test_grey_saturate_tints_like_the_reference(breast_images: np.ndarray, nchw) -> None:
    """Grey pixels have hue 0 (red): more saturation darkens their luminance, never identity."""
    grey = nchw(breast_images)
    bright = grey >= 64
    for delta in SATURATE:
        out = saturate(grey, delta)
        assert (out[bright] < grey[bright]).all()
    assert torch.equal(saturate(grey, 0.0), grey)
    assert torch.equal(saturate_hsv(grey, (2.0, 0.0)), grey)  # S = 0 stays 0: no tint
    assert (saturate_hsv(grey, (5, 0.1))[bright] < grey[bright]).all()


def test_grey_brightness_hsv_is_imagenetc_2d_path(
    breast_images: np.ndarray, nchw, to_numpy
) -> None:
    """ImageNet-C brightens a 2-D grey image with ``clip(x + c)``: the same bytes."""
    for c in BRIGHTNESS_HSV:
        expected = (np.clip(breast_images / 255.0 + c, 0, 1) * 255).astype(np.uint8)
        np.testing.assert_array_equal(to_numpy(brightness_hsv(nchw(breast_images), c)), expected)


def test_contrast_mean_uses_one_mean_per_channel(nchw, to_numpy) -> None:
    """ImageNet-C averages over (H, W) only: a constant channel stays constant at its level."""
    image = np.zeros((1, 8, 8, 3), dtype=np.uint8)
    image[..., 0] = 200
    image[..., 1] = np.arange(64, dtype=np.uint8).reshape(8, 8)
    out = to_numpy(contrast_mean(nchw(image), 0.1))
    assert (out[..., 0] == 200).all()  # one mean over all channels would pull it towards ~110
    assert out[..., 1].max() - out[..., 1].min() < 10


@pytest.mark.parametrize(("fn", "params"), ALL)
@pytest.mark.parametrize(
    "shape", [(3, 1, 28, 28), (2, 3, 28, 28), (1, 1, 224, 224), (1, 3, 224, 160)]
)
def test_shape_dtype_kept_and_input_untouched(fn, params, shape, check_contract) -> None:
    images = torch.randint(
        0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    check_contract(lambda x: fn(x, params[-1]), images)


@pytest.mark.parametrize(("fn", "params"), ALL)
def test_empty_batch(fn, params) -> None:
    for channels in (1, 3):
        empty = torch.zeros(0, channels, 28, 28, dtype=torch.uint8)
        assert fn(empty, params[0]).shape == empty.shape


@pytest.mark.parametrize(("fn", "params"), ALL)
def test_batch_invariance(fn, params, retina_images: np.ndarray, nchw) -> None:
    """Per-image statistics (contrast means) must not leak between images of a batch."""
    images = nchw(retina_images)
    batched = fn(images, params[2])
    one_by_one = torch.cat([fn(images[i : i + 1], params[2]) for i in range(len(images))])
    assert torch.equal(batched, one_by_one)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("fn", "params"), ALL)
def test_cuda_matches_cpu(
    fn, params, retina_images: np.ndarray, breast_images: np.ndarray, nchw
) -> None:
    """Integer and LUT paths give the CPU's bytes. The float HSV round trips (saturate,
    brightness_hsv, saturate_hsv) may differ by one level where CUDA fuses a multiply-add and
    a value sits on a rounding boundary (seen on an H100: mean |diff| <= 0.1, max 1)."""
    exact = fn not in (saturate, brightness_hsv, saturate_hsv)
    for images in (nchw(retina_images), nchw(breast_images)):
        out = fn(images.cuda(), params[2])
        assert out.device.type == "cuda"
        expected = fn(images, params[2])
        if exact:
            assert torch.equal(out.cpu(), expected)
        else:
            diff = (out.cpu().to(torch.int16) - expected.to(torch.int16)).abs()
            assert diff.max() <= 1 and diff.float().mean() < 0.15


def test_bad_input_is_rejected() -> None:
    grey = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(TypeError, match="uint8"):
        brightness(grey.float(), 1.2)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        contrast(torch.zeros(1, 2, 8, 8, dtype=torch.uint8), 1.2)
    with pytest.raises(ValueError, match="factor must be >= 0"):
        brightness(grey, -0.5)
    with pytest.raises(ValueError, match="finite"):
        gamma(grey, float("nan"))
    with pytest.raises(TypeError, match="real number"):
        saturate(grey, "0.1")
    with pytest.raises(TypeError, match=r"saturate_hsv param must be a tuple \(a, b\)"):
        saturate_hsv(grey, 0.1)
    with pytest.raises(ValueError, match="a must be >= 0"):
        saturate_hsv(grey, (-1, 0.1))


@pytest.mark.parametrize("table_shape", [(256,), (5, 256), (5, 3, 256)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_cpu_lut_fast_path_equals_the_gather(table_shape, layout) -> None:
    """cv2.LUT (CPU) and index_select (other devices) give the same bytes for every table form."""
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (5, 3, 30, 82), dtype=torch.uint8, generator=gen)
    if layout == "channels_last":
        images = images.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        images = images[..., ::2]
    lut = torch.randint(0, 256, table_shape, dtype=torch.uint8, generator=gen)
    tables = (lut if lut.ndim == 3 else lut.reshape(-1, 1, 256)).expand(5, 3, 256)
    expected = torch.gather(tables, 2, images.reshape(5, 3, -1).long()).view(images.shape)
    gathered = torch.empty(images.shape, dtype=torch.uint8)
    color._apply_lut_torch(images, lut, gathered)
    assert torch.equal(gathered, expected)
    out = color._apply_lut(images, lut)  # the cv2.LUT path on CPU
    assert out.is_contiguous() and torch.equal(out, expected)


# slopes for the affine fast path: reference severities and edges (flat, identity, steep)
SLOPES = (0.0, 0.05, 0.1, 0.4, 0.5, 0.6, 0.75, 1.0, 1.2, 1.3, 1.6, 1.7, 2.5, 10.0, 1 / 3, 0.123456)
CPU = torch.device("cpu")


def every_level_images(n: int, channels: int) -> torch.Tensor:
    """Images whose first holds every level many times at shifting positions, with 17 x 31
    planes (no multiple of OpenCV's vector widths, so its tail loops run); the later images'
    levels are compressed towards 0 so that their means, and contrast tables, differ."""
    size = n * channels * 17 * 31
    index = np.arange(size)
    levels = ((index * 7 + index // 256) % 256).reshape(n, channels, 17, 31)
    return torch.from_numpy((levels * 0.8 ** np.arange(n)[:, None, None, None]).astype(np.uint8))


def level_runs() -> tuple[np.ndarray, ...]:
    """Every level in a contiguous odd-length row (SIMD body and tail) and down a strided
    column (rows of one element: the scalar loop only)."""
    levels = np.arange(256, dtype=np.uint8)
    return np.resize(levels, (1, 256 * 5 + 3)), np.repeat(levels[:, None], 2, axis=1)[:, :1]


@pytest.fixture
def fresh_affine_cache():
    """Clear ``_affine_map``'s cache before and after, so that tests do not share maps."""
    affine_map = color._affine_map  # the cached function, even while a test replaces it
    affine_map.cache_clear()
    yield
    affine_map.cache_clear()


@pytest.mark.parametrize("fn", [brightness, contrast, contrast_mean])
@pytest.mark.parametrize("channels", [1, 3])
def test_affine_fast_path_equals_the_lookup_table(
    fn, channels, monkeypatch, fresh_affine_cache
) -> None:
    """With the affine pass, the same bytes as with every table through ``cv2.LUT``: for every
    slope, for a shared table (brightness), per-image (contrast) and per-plane (contrast_mean)
    tables, whole batches and single images."""
    images = every_level_images(6, channels)
    real_affine_map = color._affine_map
    taken = []

    def spy(table: bytes, slope: float):
        found = real_affine_map(table, slope)
        taken.append(found is not None)
        return found

    with monkeypatch.context() as m:
        m.setattr(color, "_affine_map", spy)
        fast = {slope: fn(images, slope) for slope in SLOPES}
        single = {slope: fn(images[5:], slope) for slope in SLOPES}
    assert any(taken), "the affine pass was never used"
    monkeypatch.setattr(color, "_affine_map", lambda table, slope: None)
    for slope in SLOPES:
        expected = fn(images, slope)
        assert torch.equal(fast[slope], expected), slope
        assert torch.equal(single[slope], expected[5:]), slope


@pytest.mark.parametrize("factor", [0.6, 1.2, 1.3, 1.6])
def test_every_contrast_table_is_exact_on_every_level(factor, fresh_affine_cache) -> None:
    """All 256 contrast tables of a factor (one per grey level): every accepted affine pass
    gives the table's entry for every level on the SIMD and the scalar paths."""
    tables = color._blend_lut(torch.arange(256), factor, CPU).numpy()
    accepted = 0
    for table in tables:
        affine = color._affine_map(table.tobytes(), factor)
        if affine is None:
            continue
        accepted += 1
        for levels in level_runs():
            np.testing.assert_array_equal(affine.apply(levels), table[levels])
    assert accepted > 0


def test_affine_fast_path_falls_back_to_the_table(monkeypatch, fresh_affine_cache) -> None:
    """Tables that no rounded affine map gives, and a fitted map that OpenCV does not reproduce,
    go through ``cv2.LUT``."""
    zero = torch.zeros((), dtype=torch.int64)
    # float32 PIL arithmetic puts some multiples of 1.3 just below an integer: not affine
    assert color._affine_map(color._blend_lut(zero, 1.3, CPU).numpy().tobytes(), 1.3) is None
    gamma_table = np.array(color._gamma_table(2.0), dtype=np.uint8)
    assert color._affine_map(gamma_table.tobytes(), 1.0) is None
    shuffled = np.random.default_rng(0).permutation(256).astype(np.uint8)
    assert color._affine_map(shuffled.tobytes(), 1.0) is None
    # a fit off by one level is rejected by the calibration, whatever margin it claims
    lut = color._blend_lut(zero, 1.2, CPU)
    assert color._affine_map(lut.numpy().tobytes(), 1.2) is not None
    color._affine_map.cache_clear()
    monkeypatch.setattr(color, "_fit_affine", lambda levels, slope: (slope, 0.6, 0.4))
    assert color._affine_map(lut.numpy().tobytes(), 1.2) is None
    images = every_level_images(2, 3)
    assert torch.equal(brightness(images, 1.2), color._apply_lut(images, lut))


def test_calibration_sends_every_level_down_every_path() -> None:
    """The long array and each column of the strided rows hold all 256 levels; the rows are
    strided (OpenCV cannot merge them into one) and 127 and 1 elements long."""
    long_run, rows, singles = color._calibration_inputs()
    assert long_run.flags.c_contiguous and long_run.size >= 256 * 64
    assert np.array_equal(np.unique(long_run), np.arange(256))
    for run, width in ((rows, 127), (singles, 1)):
        assert run.shape == (256, width) and not run.flags.c_contiguous
        assert all(np.array_equal(np.sort(run[:, j]), np.arange(256)) for j in range(width))


def test_l_sums_of_every_colour() -> None:
    """``l_sums`` equals the sums of PIL's L (``rgb_to_l``) over all 2**24 RGB colours: image b
    holds every (R, G) pair with blue b, so its float32 path meets every rounding case."""
    red, green = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    expected = np.empty(256, dtype=np.int64)
    images = np.empty((256, 3, 256, 256), dtype=np.uint8)
    for b in range(256):
        images[b, 0], images[b, 1], images[b, 2] = red, green, b
        weights = 19595 * red + 38470 * green + 7471 * b + 0x8000
        expected[b] = (weights >> 16).sum()
    x = torch.from_numpy(images)
    assert torch.equal(torch_sums(x[:3])[1], torch.from_numpy(expected[:3]))  # the formula
    assert torch.equal(l_sums(x), torch.from_numpy(expected))


def torch_sums(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-plane sums and per-image sums of PIL's L, by torch."""
    luma = rgb_to_l(images) if images.shape[1] == 3 else images
    planes = images.sum(dim=(2, 3), dtype=torch.int64)
    return planes, luma.sum(dim=(1, 2, 3), dtype=torch.int64)


@pytest.mark.parametrize("shape", [(5, 3, 19, 23), (3, 1, 28, 28), (2, 3, 224, 160), (0, 3, 8, 8)])
def test_plane_and_l_sums_match_torch(shape, monkeypatch) -> None:
    """The OpenCV sums equal torch's in every layout, and so does the torch path taken on other
    devices and for planes whose sum could overflow int32."""
    gen = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
    for layout in (images, images.contiguous(memory_format=torch.channels_last), images[..., ::2]):
        planes, lumas = torch_sums(layout)
        assert torch.equal(plane_sums(layout), planes)
        assert torch.equal(l_sums(layout), lumas)
    monkeypatch.setattr(_utils, "_INT32_MAX", 0)
    planes, lumas = torch_sums(images)
    assert torch.equal(plane_sums(images), planes)
    assert torch.equal(l_sums(images), lumas)
