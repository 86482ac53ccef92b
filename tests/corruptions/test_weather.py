"""Weather corruptions (fog, frost, snow, spatter) against float64 NumPy / SciPy / OpenCV
re-implementations of ``imagecorruptions``, fed the same random draws, on real MedMNIST images;
frost against PSNRs measured with the reference's own frost photos."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import zoom as scipy_zoom
from skimage.filters import gaussian as sk_gaussian

from medrobust.corruptions._random import ImageRandom
from medrobust.corruptions.functional import weather
from medrobust.corruptions.functional._utils import gaussian_filter

PARAMS = {  # imagecorruptions 1.1.2 / imagecorruptions-imaug 1.1.5, severities 1-5
    "fog": [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)],
    "frost": [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],
    "snow": [
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
        (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
        (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    ],
    "spatter": [
        (0.65, 0.3, 4, 0.69, 0.6, 0),
        (0.65, 0.3, 3, 0.68, 0.6, 0),
        (0.65, 0.3, 2, 0.68, 0.5, 0),
        (0.65, 0.3, 1, 0.65, 1.5, 1),
        (0.67, 0.4, 1, 0.65, 1.5, 1),
    ],
}
NAMES = list(PARAMS)

# Mean PSNR (dB) of imagecorruptions-imaug 1.1.5 frost on the 8 fixture images at 28 px,
# averaged over its six photos (100 random crops per photo and image), severities 1-5.
REFERENCE_FROST_PSNR = {
    "breast": [13.13, 11.41, 10.60, 10.95, 10.52],
    "retina": [12.94, 10.53, 9.46, 9.63, 9.10],
}


@pytest.fixture(scope="module")
def corrupt(nchw, to_numpy):
    """A weather corruption of NumPy images, as NumPy images: ``corrupt(name, arr, param, rng)``."""

    def run(name: str, arr: np.ndarray, param: tuple, rng: ImageRandom) -> np.ndarray:
        return to_numpy(getattr(weather, name)(nchw(arr), param, rng=rng))

    return run


def _to_l(rgb_uint8: np.ndarray, grey_input: bool) -> np.ndarray:
    """The reference pipeline's final step for grey datasets: PIL convert('L')."""
    return np.asarray(Image.fromarray(rgb_uint8).convert("L")) if grey_input else rgb_uint8


# ----------------------------------------------------------------------------- references


def reference_plasma(mapsize: int, decay: float, u: np.ndarray) -> np.ndarray:
    """imagecorruptions' plasma_fractal in float64, consuming U(-1, 1) draws ``u`` in order."""
    grid = np.zeros((mapsize, mapsize))
    step, wibble, used = mapsize, 100.0, 0
    while step >= 2:
        k, half = mapsize // step, step // 2
        noise = u[used : used + 3 * k * k].reshape(3, k, k) * wibble * wibble
        used += 3 * k * k
        corners = grid[::step, ::step]
        square = corners + np.roll(corners, -1, 0)
        grid[half::step, half::step] = (square + np.roll(square, -1, 1)) / 4 + noise[0]
        centres, corners = grid[half::step, half::step], grid[::step, ::step]
        grid[::step, half::step] = (centres + np.roll(centres, 1, 0) + corners + np.roll(corners, -1, 1)) / 4 + noise[1]
        grid[half::step, ::step] = (centres + np.roll(centres, 1, 1) + corners + np.roll(corners, -1, 0)) / 4 + noise[2]
        step //= 2
        wibble /= decay
    grid -= grid.min()
    return grid / grid.max()


def reference_fog(img: np.ndarray, param: tuple, u: np.ndarray) -> np.ndarray:
    amount, decay = param
    x = img.astype(np.float64) / 255.0
    h, w = x.shape[:2]
    haze = reference_plasma(1 << (max(h, w) - 1).bit_length(), decay, u)[:h, :w]
    haze = haze if x.ndim == 2 else haze[..., None]
    peak = x.max()
    return (np.clip((x + amount * haze) * peak / (peak + amount), 0, 1) * 255).astype(np.uint8)


def reference_motion_blur(x: np.ndarray, radius: int, sigma: float, angle: float) -> np.ndarray:
    """imagecorruptions' _motion_blur: a Gaussian-weighted sum of shifted copies, edges repeated."""
    width = 2 * radius + 1
    weights = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2))
    weights /= weights.sum()
    sin, cos = np.sin(np.deg2rad(angle)), np.cos(np.deg2rad(angle))
    h, w = x.shape
    out = np.zeros_like(x)
    for i in range(width):
        dy, dx = math.ceil(i * sin - 0.5), math.ceil(i * cos - 0.5)
        rows, cols = np.clip(np.arange(h) + dy, 0, h - 1), np.clip(np.arange(w) + dx, 0, w - 1)
        out += weights[i] * x[rows][:, cols]
    return out


def reference_snow(img: np.ndarray, c: tuple, noise: np.ndarray, angle: float) -> np.ndarray:
    """imagecorruptions' snow; like it, the image and its whitening are float32, the layer float64."""
    x = (np.stack([img] * 3, -1) if img.ndim == 2 else img).astype(np.float32) / np.float32(255)
    h, w = x.shape[:2]
    layer = c[0] + c[1] * noise
    ch, cw = math.ceil(h / c[2]), math.ceil(w / c[2])
    top, left = (h - ch) // 2, (w - cw) // 2
    layer = scipy_zoom(layer[top : top + ch, left : left + cw], c[2], order=1)
    layer[layer < c[3]] = 0
    layer = reference_motion_blur(np.clip(layer, 0, 1), c[4], c[5], angle)
    layer = (np.round(layer * 255) / 255)[:h, :w, None]
    grey = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[..., None]
    x = np.float32(c[6]) * x + np.float32(1 - c[6]) * np.maximum(x, grey * np.float32(1.5) + np.float32(0.5))
    out = (np.clip(x + layer + np.rot90(layer, 2), 0, 1) * 255).astype(np.uint8)
    return _to_l(out, img.ndim == 2)


def reference_spatter(img: np.ndarray, c: tuple, noise: np.ndarray) -> np.ndarray:
    """imagecorruptions' spatter (OpenCV Canny, chamfer distance transform, ...) in float64.

    Where no drop survives the threshold, the reference divides by zero; here m = 0 then.
    """
    x = (np.stack([img] * 3, -1) if img.ndim == 2 else img).astype(np.float64) / 255.0
    liquid = sk_gaussian(c[0] + c[1] * noise, sigma=c[2])
    liquid[liquid < c[3]] = 0
    if c[5] == 0:
        levels = (liquid * 255).astype(np.uint8)
        dist = cv2.distanceTransform(255 - cv2.Canny(levels, 50, 150), cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
        emboss = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
        dist = cv2.blur(cv2.filter2D(dist, cv2.CV_8U, emboss), (3, 3)).astype(np.float64)
        m = levels * dist
        m = m / m.max() * c[4] if m.max() > 0 else m
        out = x + m[..., None] * np.array([175, 238, 238]) / 255.0
    else:
        m = sk_gaussian((liquid > c[3]).astype(np.float64), sigma=c[4])
        m[m < 0.8] = 0
        out = x * (1 - m[..., None]) + m[..., None] * np.array([63, 42, 20]) / 255.0
    return _to_l((np.clip(out, 0, 1) * 255).astype(np.uint8), img.ndim == 2)


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("size", [28, 64])
@pytest.mark.parametrize("dataset", ["breast", "retina"])
def test_fog_matches_float64_reference_with_the_same_draws(
    dataset, size, breast_images, retina_images, upsample, streams, corrupt
):
    arr = breast_images if dataset == "breast" else retina_images
    arr = arr if size == 28 else upsample(arr[:4], size)
    count = sum(3 * 4**level for level in range(int(math.log2(32 if size == 28 else 64))))
    u = streams(len(arr), "fog").uniform((count,), -1.0, 1.0).double().numpy()
    for param in (PARAMS["fog"][0], PARAMS["fog"][4]):
        ours = corrupt("fog", arr, param, streams(len(arr), "fog")).astype(int)
        ref = np.stack([reference_fog(a, param, ui) for a, ui in zip(arr, u, strict=True)])
        assert np.abs(ours - ref).max() <= 1
        assert np.abs(ours - ref).mean() < 0.01


def test_fog_mean_psnr_matches_reference_with_independent_draws(
    breast_images, psnr, streams, corrupt
):
    """Our random stream gives the reference's distribution: mean PSNR within 0.5 dB."""
    arr = np.concatenate([breast_images] * 48)  # 384 samples per severity
    gen = np.random.default_rng(3)
    for severity in (1, 5):
        param = PARAMS["fog"][severity - 1]
        ref = np.stack([reference_fog(a, param, gen.uniform(-1, 1, 1023)) for a in arr])
        ours = corrupt("fog", arr, param, streams(len(arr), "fog", severity=severity))
        assert abs(psnr(arr, ours).mean() - psnr(arr, ref).mean()) < 0.5


@pytest.mark.parametrize("dataset", ["breast", "retina"])
def test_snow_matches_float64_reference_with_the_same_draws(
    dataset, breast_images, retina_images, upsample, streams, corrupt
):
    arr = upsample((breast_images if dataset == "breast" else retina_images)[:3], 64)
    for severity in (1, 3, 5):
        c = PARAMS["snow"][severity - 1]
        rng = streams(len(arr), "snow", severity=severity)
        noise, angles = rng.normal((64, 64)).double().numpy(), rng.uniform((), -135.0, -45.0).double().numpy()
        ours = corrupt("snow", arr, c, streams(len(arr), "snow", severity=severity)).astype(int)
        ref = np.stack([reference_snow(a, c, z, t) for a, z, t in zip(arr, noise, angles, strict=True)])
        assert np.abs(ours - ref).max() <= 2  # a 1/255 rounding flip in the layer and its rotation
        assert np.abs(ours - ref).mean() < 0.02


@pytest.mark.parametrize("dataset", ["breast", "retina"])
def test_spatter_matches_opencv_reference_with_the_same_draws(
    dataset, breast_images, retina_images, upsample, psnr, streams, corrupt
):
    """Mud is reproduced exactly; water up to its documented approximations (PSNR < 0.5 dB)."""
    arr = upsample((breast_images if dataset == "breast" else retina_images)[:4], 96)
    for severity in range(1, 6):
        c = PARAMS["spatter"][severity - 1]
        noise = streams(len(arr), "spatter", severity=severity).normal((96, 96)).double().numpy()
        ours = corrupt("spatter", arr, c, streams(len(arr), "spatter", severity=severity))
        ref = np.stack([reference_spatter(a, c, z) for a, z in zip(arr, noise, strict=True)])
        diff = np.abs(ours.astype(int) - ref)
        if c[5] == 1:
            assert diff.max() <= 1
        else:
            assert diff.mean() < 0.5
            assert abs(psnr(arr, ours).mean() - psnr(arr, ref).mean()) < 0.5


def test_spatter_edges_and_distance_match_opencv(breast_images, streams):
    """The water mask's building blocks: Canny edges and the (cut) edge distance."""
    noise = streams(4, "spatter").normal((1, 96, 96))
    for sigma, threshold in ((4, 0.69), (2, 0.68)):
        liquid = gaussian_filter(0.65 + 0.3 * noise, sigma)
        levels = torch.floor(torch.where(liquid < threshold, 0.0, liquid) * 255)
        edges = weather._canny_edges(levels)
        ref = np.stack([cv2.Canny(lv[0].numpy().astype(np.uint8), 50, 150) > 0 for lv in levels])
        assert (edges[:, 0].numpy() != ref).mean() < 1e-3
        exact = np.stack([cv2.distanceTransform((~e).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE) for e in ref])
        ours = weather._edge_distance(torch.from_numpy(ref)[:, None])[:, 0].numpy()
        np.testing.assert_allclose(ours, np.minimum(exact, 20), atol=1e-3)


@pytest.mark.parametrize("dataset", ["breast", "retina"])
def test_frost_mean_psnr_matches_reference_photos(
    dataset, breast_images, retina_images, psnr, streams, corrupt
):
    """Procedural frost vs the reference's six photos: mean PSNR within 0.5 dB per severity."""
    arr = np.concatenate([breast_images if dataset == "breast" else retina_images] * 96)
    for severity, ref in enumerate(REFERENCE_FROST_PSNR[dataset], 1):
        rng = streams(len(arr), "frost", severity=severity)
        ours = corrupt("frost", arr, PARAMS["frost"][severity - 1], rng)
        assert abs(psnr(arr, ours).mean() - ref) < 0.5


def test_frost_texture_follows_the_presets(streams):
    """Each preset gives the colour and spread measured on the reference photos."""
    n, size = 16, 64
    normals = streams(n, "frost").normal((1 + weather._FROST_NORMALS,))
    for j, preset in enumerate(weather._FROST_PRESETS):
        angles = torch.rand(n, 3, generator=torch.Generator().manual_seed(j))
        uniforms = torch.cat([torch.full((n, 1), (j + 0.5) / 6), angles], 1)
        texture = weather._frost_texture(normals, uniforms, size, size).double()
        mean = texture.mean(dim=(0, 2, 3)).numpy()
        spread = texture.std(dim=(2, 3)).mean(0).numpy()
        np.testing.assert_allclose(mean, preset[0:3], atol=3 * max(preset[3:6]) / math.sqrt(n) + 1)
        np.testing.assert_allclose(spread, preset[6:9], rtol=0.1)


def test_frost_blend_formula(retina_images, nchw, streams):
    images = nchw(retina_images)
    rng = streams(8, "frost")
    assert torch.equal(weather.frost(images, (1.0, 0.0), rng=rng), images)
    halved = weather.frost(images, (0.5, 0.0), rng=streams(8, "frost"))
    assert torch.equal(halved, (images.double() * 0.5).floor().to(torch.uint8))


# ----------------------------------------------------------------------------- common behaviour


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 224])
def test_shape_dtype_and_input_untouched(name, channels, size, streams, synthetic, check_contract):
    images = synthetic(2, channels, size)
    for param in (PARAMS[name][0], PARAMS[name][4]):
        check_contract(lambda x, p=param: getattr(weather, name)(x, p, rng=streams(2, name)), images)


@pytest.mark.parametrize("name", NAMES)
def test_non_square_images(name, streams, synthetic):
    images = synthetic(2, 3, 44)[..., 7:37, :].contiguous()  # 30 x 44
    out = getattr(weather, name)(images, PARAMS[name][4], rng=streams(2, name))
    assert out.shape == images.shape and not torch.equal(out, images)


@pytest.mark.parametrize("name", NAMES)
def test_batch_invariance_and_chunking(name, retina_images, monkeypatch, nchw):
    images = nchw(retina_images)
    indices = [3, 11, 5, 40, 2, 9, 17, 8]
    fn, param = getattr(weather, name), PARAMS[name][2 if name != "spatter" else 0]
    batch = fn(images, param, rng=ImageRandom.for_images(1, name, 3, indices))
    single = torch.cat(
        [fn(images[i : i + 1], param, rng=ImageRandom.for_images(1, name, 3, [k])) for i, k in enumerate(indices)]
    )
    assert torch.equal(batch, single)
    monkeypatch.setattr(weather, "_CPU_CHUNK_ELEMENTS", 6 * 3 * 28 * 28)  # 1 to 3 images per slice
    assert torch.equal(batch, fn(images, param, rng=ImageRandom.for_images(1, name, 3, indices)))


@pytest.mark.parametrize("name", NAMES)
def test_seeds_differ_and_repeat(name, breast_images, nchw, streams):
    images = nchw(breast_images)
    fn, param = getattr(weather, name), PARAMS[name][4]
    a = fn(images, param, rng=streams(8, name, seed=0))
    assert torch.equal(a, fn(images, param, rng=streams(8, name, seed=0)))
    assert (a != fn(images, param, rng=streams(8, name, seed=1))).any(dim=(1, 2, 3)).all()


@pytest.mark.parametrize("name", ["fog", "snow"])
def test_grey_equals_each_channel_of_grey_rgb(name, breast_images, nchw, streams):
    """Colour-blind corruptions process grey as one channel: same as all three of grey RGB."""
    grey = nchw(breast_images)
    for param in PARAMS[name]:
        out_grey = getattr(weather, name)(grey, param, rng=streams(8, name))
        out_rgb = getattr(weather, name)(grey.expand(-1, 3, -1, -1).contiguous(), param, rng=streams(8, name))
        assert torch.equal(out_rgb, out_grey.expand(-1, 3, -1, -1))


@pytest.mark.parametrize("name", ["frost", "spatter"])
def test_grey_is_pil_l_of_the_rgb_result(name, breast_images, nchw, to_numpy, streams):
    """Colour corruptions on grey follow the reference pipeline: grey -> RGB -> corrupt -> L."""
    grey = nchw(breast_images)
    for param in PARAMS[name]:
        out_grey = getattr(weather, name)(grey, param, rng=streams(8, name))
        out_rgb = getattr(weather, name)(grey.expand(-1, 3, -1, -1).contiguous(), param, rng=streams(8, name))
        expected = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in to_numpy(out_rgb)])
        np.testing.assert_array_equal(out_grey[:, 0].numpy(), expected)


@pytest.mark.parametrize(
    ("name", "pairs"),
    [
        ("fog", [(1, 3), (3, 5)]),
        ("frost", [(1, 2), (2, 3)]),
        ("snow", [(1, 2), (4, 5)]),
        ("spatter", [(1, 2), (2, 3), (4, 5)]),
    ],
)
def test_severity_monotone_in_psnr_where_the_reference_is(
    name, pairs, breast_images, retina_images, upsample, psnr, streams, corrupt
):
    """Pairs of severities whose reference parameters (and PSNRs) are ordered."""
    for arr in (breast_images, retina_images):
        arr = upsample(arr[:4], 64) if name == "spatter" else np.concatenate([arr] * 8)
        db = {}
        for s in {s for pair in pairs for s in pair}:
            rng = streams(len(arr), name, severity=s)
            db[s] = psnr(arr, corrupt(name, arr, PARAMS[name][s - 1], rng)).mean()
        for milder, harsher in pairs:
            assert db[milder] > db[harsher], db


def test_spatter_without_drops_leaves_the_image(retina_images, nchw, streams):
    images = nchw(retina_images)
    out = weather.spatter(images, (0.0, 0.0, 1, 0.5, 0.6, 0), rng=streams(8, "spatter"))
    assert torch.equal(out, images)


def test_scale_functions(streams, synthetic):
    assert weather.scale_snow(PARAMS["snow"][0], 0.125) == (0.1, 0.3, 1.0, 0.5, 1.25, 0.5, 0.8)
    assert weather.scale_snow(PARAMS["snow"][0], 2.0)[2:6] == (6.0, 0.5, 20.0, 8.0)
    assert weather.scale_spatter(PARAMS["spatter"][0], 0.5) == (0.65, 0.3, 2.0, 0.69, 0.6, 0)
    assert weather.scale_spatter(PARAMS["spatter"][4], 0.5) == (0.67, 0.4, 0.5, 0.65, 0.75, 1)
    with pytest.raises(ValueError, match="factor"):
        weather.scale_snow(PARAMS["snow"][0], 0.0)
    images = synthetic(2, 3, 28)
    for name, scale in (("snow", weather.scale_snow), ("spatter", weather.scale_spatter)):
        for param in PARAMS[name]:
            out = getattr(weather, name)(images, scale(param, 28 / 224), rng=streams(2, name))
            assert out.shape == images.shape


@pytest.mark.parametrize("name", NAMES)
def test_bad_input(name, streams, synthetic):
    fn, param = getattr(weather, name), PARAMS[name][0]
    images = synthetic(2, 3, 28)
    with pytest.raises(TypeError, match=name):
        fn(images, param[:-1], rng=streams(2, name))
    with pytest.raises(TypeError, match=name):
        fn(images, 0.5, rng=streams(2, name))
    with pytest.raises(ValueError, match="finite"):
        fn(images, (math.nan, *param[1:]), rng=streams(2, name))
    with pytest.raises(ValueError, match="streams"):
        fn(images, param, rng=streams(3, name))
    with pytest.raises(TypeError, match="ImageRandom"):
        fn(images, param, rng=None)
    with pytest.raises(TypeError, match="uint8"):
        fn(images.float(), param, rng=streams(2, name))


@pytest.mark.parametrize(
    ("name", "param"),
    [("fog", (1.0, 0.0)), ("snow", (0.1, 0.3, 0.5, 0.5, 10, 4, 0.8)), ("spatter", (0.65, 0.3, 4, 0.69, 0.6, 2))],
)
def test_out_of_range_params(name, param, streams, synthetic):
    with pytest.raises(ValueError, match=name):
        getattr(weather, name)(synthetic(2, 3, 28), param, rng=streams(2, name))
