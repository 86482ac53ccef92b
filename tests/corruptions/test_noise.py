"""Noise corruptions: reference distributions, exact Poisson tables, per-image random streams."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import skimage.util
import torch
from PIL import Image
from scipy import stats

from medrobust.corruptions._random import ImageRandom
from medrobust.corruptions.functional import noise
from medrobust.corruptions.functional.noise import (
    gaussian_noise,
    impulse_noise,
    shot_noise,
    speckle_noise,
)

# reference severities spanning MedMNIST-C and ImageNet-C
PARAMS = {
    "gaussian_noise": (0.04, 0.12, 0.26, 0.38),
    "shot_noise": (200, 60, 18, 5, 3),
    "impulse_noise": (0.01, 0.06, 0.17, 0.27),
    "speckle_noise": (0.05, 0.2, 0.45, 0.6),
}
FUNCTIONS = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "speckle_noise": speckle_noise,
}


def reference(name: str, param: float, images: np.ndarray, seed: int = 0) -> np.ndarray:
    """MedMNIST-C / ImageNet-C noise in float64 NumPy through the DatasetManager pipeline
    (RGB PIL image -> corrupt -> ``(x * 255).astype(uint8)`` -> ``convert('L')`` if grey)."""
    g = np.random.default_rng(seed)
    corrupt = {
        "gaussian_noise": lambda x: np.clip(x + g.normal(size=x.shape, scale=param), 0, 1),
        "shot_noise": lambda x: np.clip(g.poisson(x * param) / float(param), 0, 1),
        "impulse_noise": lambda x: skimage.util.random_noise(x, mode="s&p", amount=param, rng=g),
        "speckle_noise": lambda x: np.clip(x + x * g.normal(size=x.shape, scale=param), 0, 1),
    }[name]
    out = []
    for image in images:
        x = np.asarray(Image.fromarray(image).convert("RGB")) / 255.0
        result = (np.clip(corrupt(x), 0, 1) * 255).astype(np.uint8)
        out.append(np.asarray(Image.fromarray(result).convert("L")) if image.ndim == 2 else result)
    return np.stack(out)


@pytest.fixture(scope="module")
def real224(breast_images, retina_images, upsample) -> dict[str, np.ndarray]:
    return {"grey": upsample(breast_images[:3]), "rgb": upsample(retina_images[:3])}


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_psnr_matches_reference(
    name: str, real224: dict[str, np.ndarray], nchw, to_numpy, psnr, streams
) -> None:
    """Same distribution as the reference: mean PSNR to the clean image within 0.5 dB."""
    for (kind, images), param in itertools.product(real224.items(), PARAMS[name]):
        ours = to_numpy(FUNCTIONS[name](nchw(images), param, rng=streams(len(images), "noise")))
        ref = reference(name, param, images)
        ours_db, ref_db = psnr(images, ours).mean(), psnr(images, ref).mean()
        assert abs(ours_db - ref_db) < 0.5, f"{kind} {param}: PSNR {ours_db:.2f} vs {ref_db:.2f}"


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_severity_is_monotone(name: str, real224: dict[str, np.ndarray], nchw, streams) -> None:
    for images in real224.values():
        clean = nchw(images)
        change = [
            (FUNCTIONS[name](clean, p, rng=streams(len(clean), "noise")).float() - clean.float())
            .abs()
            .mean()
            .item()
            for p in PARAMS[name]
        ]
        assert all(a < b for a, b in itertools.pairwise(change)), change


@pytest.mark.parametrize("name", list(FUNCTIONS))
@pytest.mark.parametrize("fixture", ["breast_images", "retina_images"])
def test_batch_invariance(
    name: str, fixture: str, request: pytest.FixtureRequest, nchw, streams
) -> None:
    """An image's output depends only on its own stream: alone, in a batch or reordered."""
    images = nchw(request.getfixturevalue(fixture)[:5])
    fn, param = FUNCTIONS[name], PARAMS[name][1]
    batched = fn(images, param, rng=streams(5, "noise"))
    one_by_one = torch.cat(
        [fn(images[i : i + 1], param, rng=streams([i], "noise")) for i in range(5)]
    )
    assert torch.equal(batched, one_by_one)
    order = [3, 0, 4]
    assert torch.equal(fn(images[order], param, rng=streams(order, "noise")), batched[order])


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_seeds(name: str, retina_images: np.ndarray, nchw, streams) -> None:
    images = nchw(retina_images[:2])
    fn, param = FUNCTIONS[name], PARAMS[name][1]
    first = fn(images, param, rng=streams(2, "noise", seed=0))
    assert torch.equal(first, fn(images, param, rng=streams(2, "noise", seed=0)))
    assert not torch.equal(first, fn(images, param, rng=streams(2, "noise", seed=1)))


CHANNEL_CASES = [
    ("gaussian", 0.04),
    ("gaussian", 0.38),
    ("speckle", 0.2),
    ("impulse", 0.27),
    ("shot", 3.0),
    ("shot", 60.0),
]


def brute_force_luma(channel: np.ndarray) -> np.ndarray:
    """P(L | x) for one input level by enumerating every (R, G, B) draw: PIL's luminance."""
    levels = np.arange(256)
    luma = (
        19595 * levels[:, None, None]
        + 38470 * levels[None, :, None]
        + 7471 * levels[None, None, :]
        + 0x8000
    ) >> 16
    weight = channel[:, None, None] * channel[None, :, None] * channel[None, None, :]
    return np.bincount(luma.ravel(), weights=weight.ravel(), minlength=256)


@pytest.mark.parametrize(("kind", "param"), CHANNEL_CASES)
def test_grey_tables_are_the_luminance_of_three_channels(kind: str, param: float) -> None:
    """A grey pixel's output is PIL's luminance of three independent channel draws, exactly."""
    channel = noise._CHANNEL_DISTRIBUTIONS[kind](param).numpy()
    grey = noise._luma_distribution(torch.from_numpy(channel)).numpy()
    for level in (0, 77, 254):
        np.testing.assert_allclose(
            grey[level], brute_force_luma(channel[level]), rtol=0, atol=1e-12
        )


@pytest.mark.parametrize(("kind", "param"), CHANNEL_CASES)
def test_channel_distributions_match_the_reference_quantisation(kind: str, param: float) -> None:
    """P(y | x) of one channel against the reference's float64 arithmetic on many draws."""
    g = np.random.default_rng(0)
    x = np.repeat(np.array([0, 40, 128, 250]), 50_000) / 255.0
    noisy = {
        "gaussian": lambda: x + g.normal(size=x.shape, scale=param),
        "speckle": lambda: x + x * g.normal(size=x.shape, scale=param),
        "impulse": lambda: skimage.util.random_noise(x, mode="s&p", amount=param, rng=g),
        "shot": lambda: g.poisson(x * param) / float(param),
    }[kind]()
    out = (np.clip(noisy, 0, 1) * 255).astype(np.uint8).reshape(4, -1)
    probs = noise._CHANNEL_DISTRIBUTIONS[kind](param).numpy()[[0, 40, 128, 250]]
    for observed, expected in zip(out, probs, strict=True):
        frequencies = np.bincount(observed, minlength=256) / observed.size
        assert np.abs(frequencies - expected).max() < 0.01
        assert not (frequencies[expected == 0] > 0).any()  # nothing outside the support


def test_packed_tables_reproduce_their_distribution() -> None:
    """Decoding every cell of a packed alias table gives back P(y | x) to its 2**-31 resolution."""
    probs = noise._luma_distribution(noise._CHANNEL_DISTRIBUTIONS["gaussian"](0.12))
    packed = noise._sampling_table(probs).view(256, 256).to(torch.int64)
    threshold = (packed >> 8).double() / (1 << noise._FRACTION_BITS)
    own = torch.arange(256).expand(256, 256)
    implied = torch.zeros(256, 256, dtype=torch.float64)
    implied.scatter_add_(1, own, threshold).scatter_add_(1, packed & 255, 1.0 - threshold)
    np.testing.assert_allclose((implied / 256).numpy(), probs.numpy(), rtol=0, atol=1e-8)


def test_sample_takes_own_level_below_the_threshold_else_the_alias() -> None:
    table = torch.zeros(256 * 256, dtype=torch.int32)
    cell = 7 * 256 + 3  # input level 7, cell 3: own level 3, alias 200, threshold 1000
    table[cell] = (1000 << 8) | 200
    bits = torch.tensor(
        [(3 << 23) | 999, (3 << 23) | 1000, (3 << 23) | 0x7FFFFF], dtype=torch.int32
    )
    levels = torch.full((3,), 7, dtype=torch.uint8)
    assert noise._sample(levels, table, bits).tolist() == [3, 200, 200]


def test_grey_samples_follow_the_tables(streams) -> None:
    """Grey output frequencies for a constant level match the luminance table (chi-square)."""
    level, sigma = 90, 0.12
    image = torch.full((4, 1, 64, 64), level, dtype=torch.uint8)
    out = gaussian_noise(image, sigma, rng=streams(4, "noise")).flatten().numpy()
    probs = noise._luma_distribution(noise._gaussian_distribution(sigma))[level].numpy()
    expected = probs * out.size
    big = expected >= 5
    observed = np.bincount(out, minlength=256)
    assert observed[~big].sum() <= 4 * max(expected[~big].sum(), 1.0)
    chi2 = (((observed - expected) ** 2)[big] / expected[big]).sum()
    assert stats.chi2.sf(chi2, big.sum() - 1) > 1e-4


@pytest.mark.parametrize("photons", [0.5, 3, 12.5, 60, 200, 1000])
def test_shot_noise_tables_are_exact_poisson(photons: float) -> None:
    """The alias tables give exactly P(trunc(clip(X / photons) * 255) = k), X ~ Poisson."""
    keep, alias = noise._alias_tables(noise._shot_distribution(photons))
    implied = keep.clone().scatter_add_(1, alias, 1.0 - keep).numpy() / keep.shape[1]
    expected = np.zeros((256, 256))
    top = int(np.ceil(photons))
    counts = np.arange(top + 1)
    values = (np.clip(counts / float(photons), 0, 1) * 255).astype(np.uint8)
    for level in range(256):
        rate = level / 255.0 * photons
        np.add.at(expected[level], values[:-1], stats.poisson.pmf(counts[:-1], rate))
        expected[level, values[-1]] += stats.poisson.sf(top - 1, rate)
    np.testing.assert_allclose(implied, expected, rtol=0, atol=1e-12)


def test_shot_noise_samples_follow_the_tables(streams) -> None:
    """Empirical frequencies of a constant level match the Poisson probabilities (chi-square)."""
    level, photons = 128, 18
    image = torch.full((4, 3, 64, 64), level, dtype=torch.uint8)
    out = shot_noise(image, photons, rng=streams(4, "noise")).flatten().numpy()
    probs = noise._shot_distribution(photons)[level].numpy()
    seen = probs > 0
    observed = np.bincount(out, minlength=256)[seen]
    assert observed.sum() == out.size  # nothing outside the support
    expected = probs[seen] * out.size
    big = expected >= 5
    chi2 = (((observed - expected) ** 2)[big] / expected[big]).sum()
    assert stats.chi2.sf(chi2, big.sum() - 1) > 1e-4


def test_impulse_noise_statistics(streams) -> None:
    """Each element flips with probability ``amount``, half to 255, half to 0, channels apart."""
    amount = 0.2
    image = torch.full((2, 3, 96, 96), 100, dtype=torch.uint8)
    out = impulse_noise(image, amount, rng=streams(2, "noise"))
    assert set(out.unique().tolist()) == {0, 100, 255}
    flipped = out != 100
    n = flipped.numel()
    assert abs(flipped.float().mean().item() - amount) < 4 * (amount * (1 - amount) / n) ** 0.5
    salt = (out == 255).sum().item() / flipped.sum().item()
    assert abs(salt - 0.5) < 0.02
    assert not torch.equal(flipped[:, 0], flipped[:, 1])  # per element, as skimage does


@pytest.mark.parametrize("name", list(FUNCTIONS))
@pytest.mark.parametrize(
    "shape", [(2, 1, 28, 28), (2, 3, 28, 28), (1, 1, 224, 224), (1, 3, 200, 224)]
)
def test_shape_dtype_kept_and_input_untouched(name: str, shape, streams, check_contract) -> None:
    images = torch.randint(
        0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(2)
    )
    rng = streams(shape[0], "noise")
    check_contract(lambda x: FUNCTIONS[name](x, PARAMS[name][-1], rng=rng), images)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_empty_batch(name: str, streams) -> None:
    for channels in (1, 3):
        empty = torch.zeros(0, channels, 28, 28, dtype=torch.uint8)
        out = FUNCTIONS[name](empty, PARAMS[name][0], rng=streams([], "noise"))
        assert out.shape == empty.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_cuda(name: str, retina_images: np.ndarray, nchw, to_numpy, psnr) -> None:
    images = nchw(retina_images[:4]).cuda()
    fn, param = FUNCTIONS[name], PARAMS[name][1]
    rng = ImageRandom.for_images(0, name, 3, range(4), device="cuda")
    out = fn(images, param, rng=rng)
    assert out.device.type == "cuda" and out.shape == images.shape
    clean = to_numpy(images)
    gap = (
        psnr(clean, to_numpy(out)).mean()
        - psnr(clean, reference(name, param, retina_images[:4])).mean()
    )
    assert abs(gap) < 0.5


def test_bad_arguments_are_rejected(streams) -> None:
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="1 streams for a batch of 2"):
        gaussian_noise(images, 0.1, rng=streams([0], "noise"))
    with pytest.raises(TypeError, match="ImageRandom"):
        speckle_noise(images, 0.1, rng=np.random.default_rng(0))
    with pytest.raises(TypeError, match="ImageRandom"):
        shot_noise(images, 10, rng=None)
    with pytest.raises(ValueError, match="amount must be <= 1"):
        impulse_noise(images, 1.5, rng=streams(2, "noise"))
    with pytest.raises(ValueError, match="photons must be > 0"):
        shot_noise(images, 0, rng=streams(2, "noise"))
    with pytest.raises(ValueError, match="photons must be <= "):
        shot_noise(images, 1e9, rng=streams(2, "noise"))
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        gaussian_noise(images, -0.1, rng=streams(2, "noise"))
    with pytest.raises(TypeError, match="uint8"):
        gaussian_noise(images.float(), 0.1, rng=streams(2, "noise"))


def test_tables_come_from_the_user_cache_unchanged(tmp_path, monkeypatch) -> None:
    """A table built in one run is read back in the next, identical to a fresh build; a table
    of other code (another key) is never served."""
    monkeypatch.setenv("MEDROBUST_CACHE", str(tmp_path))
    noise._table.cache_clear()
    built = noise._table("speckle", 0.3, True, torch.device("cpu")).clone()
    assert len(list(tmp_path.glob("noise-table-*.npy"))) == 1
    noise._table.cache_clear()
    monkeypatch.setattr(noise, "_build_table", lambda *a: pytest.fail("rebuilt a cached table"))
    cached = noise._table("speckle", 0.3, True, torch.device("cpu"))
    assert torch.equal(cached, built)
    noise._table.cache_clear()
    monkeypatch.undo()
    fresh = torch.from_numpy(noise._build_table("speckle", 0.3, True))
    assert torch.equal(fresh, built)
    noise._table.cache_clear()
