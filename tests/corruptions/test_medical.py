"""Stain deposit, bubble, black corner, characters: parity with PIL/OpenCV, ranges, batching."""

from __future__ import annotations

import itertools
import random
import string

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from medrobust.corruptions._random import ImageRandom
from medrobust.corruptions.functional import medical
from medrobust.corruptions.functional.medical import (
    STAIN_INK_SIZES,
    black_corner,
    bubble,
    characters,
    scale_bubble,
    scale_characters,
    scale_ink_size,
    scale_stain_deposit,
    stain_deposit,
)

# per-severity parameters of the reference (pathmnist stain/bubble, dermamnist corner/characters)
STAIN_MARKS = (1, 2, 3, 4, 5)
BUBBLES = ((7, 15), (10, 15), (12, 15), (15, 20), (17, 25))
CORNERS = (1.1, 1.05, 1.0, 0.9, 0.95)
CHARACTERS = ((1, 6, 0.14), (2, 7, 0.15), (3, 8, 0.16), (4, 9, 0.17), (6, 10, 0.18))


def apply_all(images: torch.Tensor, severity: int, rng: ImageRandom, factor: float = 1.0) -> dict:
    """Every corruption at one severity, parameters scaled by ``factor``."""
    k = severity - 1
    return {
        "stain_deposit": stain_deposit(
            images, scale_stain_deposit(STAIN_MARKS[k], factor), rng=rng,
            ink_size=scale_ink_size(STAIN_INK_SIZES[k], factor),
        ),
        "bubble": bubble(images, scale_bubble(BUBBLES[k], factor), rng=rng),
        "black_corner": black_corner(images, CORNERS[k]),
        "characters": characters(images, scale_characters(CHARACTERS[k], factor), rng=rng),
    }


@pytest.fixture(scope="module")
def grey(breast_images, nchw) -> torch.Tensor:
    return nchw(breast_images)


@pytest.fixture(scope="module")
def rgb(retina_images, nchw) -> torch.Tensor:
    return nchw(retina_images)


@pytest.fixture(scope="module")
def rgb224(retina_images, upsample) -> np.ndarray:
    return upsample(retina_images[:4])


@pytest.fixture(scope="module")
def grey224(breast_images, upsample) -> np.ndarray:
    return upsample(breast_images[:4])


# ----------------------------------------------------------------------------- all functions


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 224])
def test_shape_dtype_kept_and_input_untouched(
    channels, size, grey, rgb, nchw, to_numpy, upsample, streams
):
    images = (grey if channels == 1 else rgb)[:2]
    if size != 28:
        images = nchw(upsample(to_numpy(images), size))
    before = images.clone()
    for severity in (1, 5):
        for name, out in apply_all(images, severity, streams(2, "medical"), size / 224).items():
            assert out.shape == images.shape and out.dtype == torch.uint8, name
            # black_corner may find the corners of a fundus photograph already black
            assert not torch.equal(out, images) or name == "black_corner", name
    assert torch.equal(images, before)


@pytest.mark.parametrize("factor", [1.0, 0.125])
def test_never_raises_at_28_px_over_many_streams(factor, grey, rgb, streams):
    """Reference defect 10: StainDeposit and Characters raise at 28 px, Bubble for big radii."""
    images = {1: grey.repeat(8, 1, 1, 1), 3: rgb.repeat(8, 1, 1, 1)}  # 64 streams each
    for channels, batch in images.items():
        rng = streams(len(batch), "medical", seed=channels)
        for severity in range(1, 6):
            for name, out in apply_all(batch, severity, rng, factor).items():
                assert out.shape == batch.shape, (name, severity)
    odd = rgb[:, :, :, :20].contiguous()  # 28 x 20, and parameters far too big for it
    assert stain_deposit(odd, 9, rng=streams(8, "medical"), ink_size=42).shape == odd.shape
    assert bubble(odd, (40, 30), rng=streams(8, "medical")).shape == odd.shape
    assert characters(odd, (8, 30, 1.5), rng=streams(8, "medical")).shape == odd.shape


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("stain_deposit", lambda x, r: stain_deposit(x, 4, rng=r, ink_size=6)),
        ("bubble", lambda x, r: bubble(x, (9, 20), rng=r)),
        ("characters", lambda x, r: characters(x, (6, 10, 0.5), rng=r)),
    ],
)
def test_batch_invariance_and_determinism(name, call, rgb, grey):
    for images in (rgb, grey):
        whole = call(images, ImageRandom.for_images(11, name, 4, range(8)))
        for part in ([5, 2, 7], [0], [1, 3, 4, 6]):
            out = call(images[part], ImageRandom.for_images(11, name, 4, part))
            assert torch.equal(out, whole[part])
        medical._ink_masks.cache_clear()  # a new run computes the masks and tables afresh
        medical._disk_half_widths.cache_clear()
        assert torch.equal(call(images, ImageRandom.for_images(11, name, 4, range(8))), whole)
        other = call(images, ImageRandom.for_images(12, name, 4, range(8)))
        assert not torch.equal(other, whole)


def test_channels_last_views_and_empty_batches(retina_images, streams):
    """A permuted (channels-last) view gives the same bytes as contiguous input; N = 0 works."""
    view = torch.from_numpy(retina_images).permute(0, 3, 1, 2)
    for severity in (1, 5):
        got = apply_all(view, severity, streams(8, "medical"))
        want = apply_all(view.contiguous(), severity, streams(8, "medical"))
        for name in got:
            assert torch.equal(got[name], want[name]), name
    empty = torch.zeros(0, 3, 28, 28, dtype=torch.uint8)
    for name, out in apply_all(empty, 3, streams(0, "medical")).items():
        assert out.shape == empty.shape, name


def test_chunked_drawing_is_identical(rgb, monkeypatch, streams):
    """Big images draw stains and bubbles in chunks to bound memory; the result is the same."""
    stain = stain_deposit(rgb, 5, rng=streams(8, "medical"), ink_size=9)
    bubbles = bubble(rgb, (9, 20), rng=streams(8, "medical"))
    monkeypatch.setattr(medical, "_CHUNK_ELEMENTS", 1)
    assert torch.equal(stain_deposit(rgb, 5, rng=streams(8, "medical"), ink_size=9), stain)
    assert torch.equal(bubble(rgb, (9, 20), rng=streams(8, "medical")), bubbles)


def test_bad_parameters_are_rejected(rgb, streams):
    rng = streams(8, "medical")
    with pytest.raises(ValueError, match="max_marks"):
        stain_deposit(rgb, 0, rng=rng)
    with pytest.raises(TypeError, match="ink_size"):
        stain_deposit(rgb, 3, rng=rng, ink_size=2.5)
    with pytest.raises(ValueError, match="not both"):
        stain_deposit(rgb, (3, 24), rng=rng, ink_size=24)
    with pytest.raises(ValueError, match="streams"):
        stain_deposit(rgb, 3, rng=streams(3, "medical"))
    with pytest.raises(TypeError, match="max_radius, max_bubbles"):
        bubble(rgb, 12, rng=rng)
    with pytest.raises(ValueError, match="multiplier"):
        black_corner(rgb, -1.0)
    with pytest.raises(TypeError, match="max_words"):
        characters(rgb, (3, 8), rng=rng)
    with pytest.raises(TypeError, match="uint8"):
        black_corner(rgb.float(), 1.0)
    with pytest.raises(ValueError, match="factor"):
        scale_bubble((12, 15), 0.0)


def test_scaling_of_pixel_parameters():
    assert [scale_ink_size(s, 0.125) for s in STAIN_INK_SIZES] == [2, 2, 3, 4, 5]
    assert scale_ink_size(24, 1.0) == 24 and scale_ink_size(12, 0.01) == 1
    assert scale_stain_deposit(3, 0.125) == 3
    assert scale_stain_deposit((3, 24), 0.125) == (3, 3)  # the suites' (marks, ink size) form
    assert scale_bubble((12, 15), 0.125) == (2, 15)
    assert scale_bubble((7, 15), 0.05) == (1, 15)
    assert scale_characters((3, 8, 0.16), 0.125) == (3, 8, pytest.approx(0.02))


# ----------------------------------------------------------------------------- stain deposit


# mean coverage of medmnistc's assets/inks.npz per ink size (measured in the reference env)
REFERENCE_INK_COVERAGE = {12: 0.697, 16: 0.694, 24: 0.625, 32: 0.541, 42: 0.526}


def test_ink_masks_are_fixed_irregular_blobs_with_the_reference_coverage():
    for size in STAIN_INK_SIZES:
        masks = medical._ink_masks(size, torch.device("cpu"))
        assert masks.shape == (10, size, size) and masks.dtype == torch.bool
        coverage = masks.float().mean((1, 2))
        assert abs(coverage.mean().item() - REFERENCE_INK_COVERAGE[size]) < 0.005
        assert masks[:, size // 2, size // 2].all()
        assert not masks.all((1, 2)).any()  # blobs, not squares: some of every square is clear
        assert len({m.numpy().tobytes() for m in masks}) == 10  # ten different shapes
    # between and beyond the reference's sizes the coverage is interpolated / held
    assert abs(medical._ink_masks(20, torch.device("cpu")).float().mean() - 0.660) < 0.01
    assert abs(medical._ink_masks(6, torch.device("cpu")).float().mean() - 0.697) < 0.01
    assert abs(medical._ink_masks(64, torch.device("cpu")).float().mean() - 0.526) < 0.01
    first = medical._ink_masks(24, torch.device("cpu")).clone()
    medical._ink_masks.cache_clear()
    assert torch.equal(medical._ink_masks(24, torch.device("cpu")), first)  # recomputed, same
    assert medical._ink_masks(1, torch.device("cpu")).all()


def test_stain_takes_the_suites_tuple_form(rgb, streams):
    tuple_form = stain_deposit(rgb, (4, 6), rng=streams(8, "medical"))
    assert torch.equal(tuple_form, stain_deposit(rgb, 4, rng=streams(8, "medical"), ink_size=6))
    default = stain_deposit(rgb, 2, rng=streams(8, "medical"))
    assert torch.equal(default, stain_deposit(rgb, (2, 24), rng=streams(8, "medical")))


def test_stain_only_blackens_inside_the_margin(rgb224, nchw, streams):
    images = nchw(np.maximum(rgb224, 1))  # no black pixels before
    out = stain_deposit(images, 5, rng=streams(4, "medical"), ink_size=42)
    changed = (out != images).any(dim=1)
    assert changed.any(dim=(1, 2)).all()
    assert (out.permute(1, 0, 2, 3)[:, changed] == 0).all()  # all channels of a mark are 0
    assert not changed[:, :10].any() and not changed[:, -10:].any()
    assert not changed[:, :, :10].any() and not changed[:, :, -10:].any()


def test_stain_area_grows_with_severity(streams):
    """Defect 6 fixed: ink size follows the level (12..42 px), so the area grows at every level."""
    images = torch.full((32, 1, 224, 224), 128, dtype=torch.uint8)
    areas = [
        (stain_deposit(images, marks, rng=streams(32, "medical", severity=k), ink_size=size) == 0)
        .float().mean().item()
        for k, (marks, size) in enumerate(zip(STAIN_MARKS, STAIN_INK_SIZES, strict=True), 1)
    ]
    assert all(a < b for a, b in itertools.pairwise(areas)), areas
    # about E[marks] inks of the reference's coverage each (overlaps only shrink the area)
    for area, marks, size in zip(areas, STAIN_MARKS, STAIN_INK_SIZES, strict=True):
        expected = (marks + 1) / 2 * REFERENCE_INK_COVERAGE[size] * size**2 / 224**2
        assert 0.75 * expected < area < 1.2 * expected, (size, area, expected)


# ----------------------------------------------------------------------------- bubble


def pil_bubbles(image: np.ndarray, circles: list[tuple[int, int, int]], rim: int = 2) -> np.ndarray:
    """The reference drawing: PIL ellipses on one RGBA overlay, pasted with its own alpha."""
    grey = image.ndim == 2
    base = Image.fromarray(image).convert("RGB")
    overlay = Image.new("RGBA", base.size, (255, 255, 255, 0))
    draw = ImageDraw.Draw(overlay)
    for x, y, r in circles:
        outer = x - r - rim, y - r - rim, x + r + rim, y + r + rim
        draw.ellipse(outer, fill=(255, 255, 255, 130))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(255, 255, 255, 100))
    base.paste(overlay, (0, 0), overlay)
    return np.asarray(base.convert("L") if grey else base)


@pytest.mark.parametrize("grey_image", [False, True])
def test_bubble_compositing_matches_pil_exactly(grey_image, rgb224, grey224, nchw, nhwc):
    """Overlapping and clipped bubbles, any radius, a non-square image: byte-identical to PIL."""
    clean = (grey224 if grey_image else rgb224)[:, :200]  # 200 rows x 224 columns
    g = np.random.default_rng(5)
    n, b, max_radius = len(clean), 12, 17
    radius = g.integers(1, max_radius + 1, (n, b))
    cx, cy = g.integers(0, 224, (n, b)), g.integers(0, 200, (n, b))
    valid = np.arange(b) < g.integers(6, b + 1, (n, 1))
    out = medical._composite_bubbles(
        nchw(clean), torch.from_numpy(cy), torch.from_numpy(cx), torch.from_numpy(radius),
        torch.from_numpy(valid), rim=2, max_radius=max_radius,
    )
    for i in range(n):
        circles = [(cx[i, j], cy[i, j], radius[i, j]) for j in range(b) if valid[i, j]]
        expected = pil_bubbles(clean[i], circles)
        got = out[i, 0].numpy() if grey_image else nhwc(out[i : i + 1])[0]
        np.testing.assert_array_equal(got, expected)


def reference_bubble(image: np.ndarray, param: tuple[int, int], rand: random.Random) -> np.ndarray:
    """medmnistc Bubble.apply with Python's random, (width, height) unswapped."""
    max_radius, max_bubbles = param
    h, w = image.shape[:2]
    circles = []
    for _ in range(rand.randint(7, max_bubbles)):
        r = rand.randint(3, max_radius)
        circles.append((rand.randint(r, w - r), rand.randint(r, h - r), r))
    return pil_bubbles(image, circles)


def test_bubble_same_psnr_as_the_reference_and_grows_with_severity(grey224, nchw, psnr, streams):
    """256 images: the mean PSNR of one draw has a standard deviation of about 0.1 dB."""
    clean = np.concatenate([grey224] * 64)
    rand = random.Random(0)
    ours = []
    for k, param in enumerate(BUBBLES, 1):
        rng = streams(len(clean), "medical", severity=k)
        out = bubble(nchw(clean), param, rng=rng)[:, 0].numpy()
        ref = np.stack([reference_bubble(i, param, rand) for i in clean])
        assert abs(psnr(clean, out).mean() - psnr(clean, ref).mean()) < 0.5, k
        assert (out >= clean).all()
        ours.append((out != clean).mean())
    assert all(a < b for a, b in itertools.pairwise(ours)), ours


def test_bubble_grey_is_one_channel_of_the_rgb_result(grey224, nchw, streams):
    grey_out = bubble(nchw(grey224), (12, 15), rng=streams(4, "medical"))
    rgb = nchw(np.repeat(grey224[..., None], 3, axis=-1))
    rgb_out = bubble(rgb, (12, 15), rng=streams(4, "medical"))
    assert torch.equal(rgb_out, grey_out.expand_as(rgb_out))


# ----------------------------------------------------------------------------- black corner


@pytest.mark.parametrize(("height", "width"), [(224, 224), (28, 28), (200, 224), (31, 28)])
@pytest.mark.parametrize("multiplier", [*CORNERS, 0.5, 1.5])
def test_black_corner_matches_cv2_circle(height, width, multiplier, rgb224, nchw, nhwc):
    clean = np.ascontiguousarray(
        np.stack([cv2.resize(i, (width, height), interpolation=cv2.INTER_AREA) for i in rgb224])
    )
    out = nhwc(black_corner(nchw(clean), multiplier))
    # the reference: BlackCorner.apply
    center = (width // 2, height // 2)
    radius = min(center[0], center[1], width - center[0], height - center[1])
    circle = np.zeros((height, width), np.uint8)
    cv2.circle(circle, center, int(radius * multiplier), 255, thickness=-1)
    expected = clean.copy()
    expected[:, circle != 255] = 0
    np.testing.assert_array_equal(out, expected)
    grey = black_corner(nchw(clean[..., 1]), multiplier)
    np.testing.assert_array_equal(grey[:, 0].numpy(), expected[..., 1])


# ----------------------------------------------------------------------------- characters


def random_words(rand: random.Random, n: int, size: int) -> list[list[medical.Word]]:
    words = []
    for _ in range(n):
        row = []
        for _ in range(rand.randint(1, 6)):
            letters = rand.randint(3, 10)
            text = "".join(rand.choice(string.ascii_lowercase) for _ in range(letters))
            colour = (rand.randint(0, 255), rand.randint(0, 255), rand.randint(0, 255))
            x, y = rand.randint(-20, size - 8 * letters), rand.randint(0, size + 5)
            row.append((text, x, y, rand.randint(14, 80) / 100, colour))
        words.append(row)
    return words


def cv2_words(image: np.ndarray, words: list[medical.Word]) -> np.ndarray:
    """The reference drawing: cv2.putText on the RGB image, one word after another."""
    out = image.copy()
    for text, x, y, scale, colour in words:
        out = cv2.putText(out, text, (x, y), cv2.FONT_HERSHEY_DUPLEX, scale, colour, 1, cv2.LINE_AA)
    return out


def test_word_compositing_matches_cv2_put_text(rgb224, grey224, nchw, nhwc):
    """Overlapping and clipped words: off by at most one grey level from direct drawing."""
    words = random_words(random.Random(3), len(rgb224), 224)
    out = nhwc(medical._draw_words(nchw(rgb224), words))
    expected = np.stack([cv2_words(i, w) for i, w in zip(rgb224, words, strict=True)])
    assert (expected != rgb224).sum() > 1000
    assert np.abs(out.astype(int) - expected).max() <= 1
    assert (out != expected).mean() < 0.001
    # grey: drawn in colour on grey -> RGB, then converted to L
    out = medical._draw_words(nchw(grey224), words)[:, 0].numpy()
    expected = np.stack([
        np.asarray(Image.fromarray(cv2_words(np.repeat(i[..., None], 3, -1), w)).convert("L"))
        for i, w in zip(grey224, words, strict=True)
    ])
    assert np.abs(out.astype(int) - expected).max() <= 2
    assert (out != expected).mean() < 0.005


def reference_characters(image: np.ndarray, param: tuple, rand: random.Random) -> np.ndarray:
    """medmnistc Characters.apply with Python's random."""
    max_words, max_letters, max_font_scale = param
    words = []
    for _ in range(rand.randint(1, max_words)):
        letters = rand.randint(3, max_letters)
        scale = rand.randint(14, int(max_font_scale * 100)) / 100.0
        text = "".join(rand.choice(string.ascii_lowercase) for _ in range(letters))
        x = rand.randint(10, image.shape[1] - 8 * letters)
        y = rand.randint(10, image.shape[0] - 10)
        colour = (rand.randint(0, 255), rand.randint(0, 255), rand.randint(0, 255))
        words.append((text, x, y, scale, colour))
    return cv2_words(image, words)


def test_characters_same_psnr_as_the_reference_and_seeds_differ(rgb224, nchw, psnr, streams):
    """1024 images: per image the PSNR varies by about 4 dB (1..6 words, any colour)."""
    clean = np.concatenate([rgb224[..., 0]] * 256)  # grey: the reference draws in RGB, then L
    rand = random.Random(0)
    for k in (1, 3, 5):
        param = CHARACTERS[k - 1]
        rng = streams(len(clean), "medical", severity=k)
        out = characters(nchw(clean), param, rng=rng)[:, 0].numpy()
        ref = np.stack([
            np.asarray(Image.fromarray(reference_characters(np.stack([i] * 3, -1), param, rand))
                       .convert("L"))
            for i in clean
        ])
        assert abs(psnr(clean, out).mean() - psnr(clean, ref).mean()) < 0.5, k
        changed = out != clean
        assert changed.any(axis=(1, 2)).mean() > 0.95  # a word may have the background's grey
        # words stay inside the 10 px margins (the baseline is at y <= H - 10; descenders below)
        assert not changed[:, :, :8].any() and not changed[:, :3].any()
    a = characters(nchw(rgb224), CHARACTERS[2], rng=streams(4, "medical", seed=1))
    b = characters(nchw(rgb224), CHARACTERS[2], rng=streams(4, "medical", seed=2))
    assert not torch.equal(a, b) and not torch.equal(a, nchw(rgb224))


def test_small_fonts_look_like_downsized_224_px_text(nchw, nhwc):
    """At 28 px, text scaled by 1/8 is drawn supersampled: like 224 px text area-downsized."""
    words = random_words(random.Random(7), 6, 224)
    words = [[(t, x - x % 8, y - y % 8, (14 + i % 2) / 100, c) for i, (t, x, y, _, c) in
              enumerate(row)] for row in words]
    clean = np.full((6, 224, 224, 3), 100, np.uint8)
    big = np.stack([cv2_words(i, w) for i, w in zip(clean, words, strict=True)])
    expected = np.stack([cv2.resize(i, (28, 28), interpolation=cv2.INTER_AREA) for i in big])
    small = [[(t, x // 8, y // 8, s / 8, c) for t, x, y, s, c in row] for row in words]
    out = nhwc(medical._draw_words(nchw(clean[:, :28, :28]), small))
    assert (expected != 100).sum() > 100
    assert np.abs(out.astype(int) - expected).max() <= 2


def test_characters_grey_uses_the_luma_of_the_colour(nchw):
    """A word in pure green on a black image shows PIL's L of (0, 255, 0) = 150 at full cover."""
    black = np.zeros((1, 224, 224), np.uint8)
    out = medical._draw_words(nchw(black), [[("mmm", 20, 100, 2.0, (0, 255, 0))]])
    assert out.max().item() == 150


def test_dense_blending_gives_the_sparse_bytes(rgb224, nchw):
    """The device path blends every patch pixel (coverage 0 leaves it), the CPU path only the
    covered ones: the same bytes, grey and RGB, words sticking out of every side included."""
    words = [
        [("abcdefgh", -30, 15, 0.9, (200, 10, 90)), ("xyz", 150, 230, 1.2, (5, 250, 5))],
        [("mmm", 20, 100, 2.0, (0, 255, 0))],
        [],
        [("qq", 210, 60, 0.3, (1, 2, 3)), ("w", 100, 100, 0.05, (90, 90, 200)), ("kk", 5, 5, 3.0, (9, 9, 9))],
    ]
    for images in (nchw(rgb224), nchw(rgb224)[:, :1].contiguous()):
        images = images[:4]
        sparse = medical._draw_words(images, words, dense=False)
        assert torch.equal(medical._draw_words(images, words, dense=True), sparse)
        assert not torch.equal(sparse, images)


@pytest.mark.parametrize("size", [28, 224])
def test_dense_stains_and_bubbles_give_the_sparse_bytes(size, rgb224, nchw, monkeypatch, streams):
    """Off the CPU stains and bubbles touch every pixel (no nonzero), on the CPU the covered
    ones: the same bytes, here both on the CPU, inks larger than the image included."""
    images = torch.nn.functional.interpolate(nchw(rgb224)[:4].float(), size=size).to(torch.uint8)

    def both() -> list[torch.Tensor]:
        return [
            stain_deposit(images, 5, rng=streams(4, "stain", severity=5), ink_size=42),
            stain_deposit(images[:, :1], 3, rng=streams(4, "stain", severity=2), ink_size=30),
            bubble(images, (17, 25), rng=streams(4, "bubble", severity=5)),
            bubble(images[:, :1], (3, 40), rng=streams(4, "bubble", severity=1)),
        ]

    sparse = both()
    monkeypatch.setattr(medical, "_stain_sparse", medical._stain_dense)
    monkeypatch.setattr(medical, "_blend_bubbles_sparse", medical._blend_bubbles_dense)
    for dense, expected in zip(both(), sparse, strict=True):
        assert torch.equal(dense, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_characters_on_cuda_draw_the_cpu_words(rgb224, nchw):
    """CUDA streams draw the words on the host: the CPU's words, blended to the CPU's bytes."""
    images = nchw(rgb224)
    rng = ImageRandom.for_images(0, "characters", 5, range(len(images)), "cuda")
    out = characters(images.cuda(), (6, 10, 0.18), rng=rng)
    expected = characters(images, (6, 10, 0.18), rng=ImageRandom.for_images(0, "characters", 5, range(len(images))))
    assert torch.equal(out.cpu(), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_bytes_for_the_same_draws(rgb224, nchw, streams):
    """Images on the GPU, random streams on the CPU: every function returns the CPU's bytes."""
    images = nchw(rgb224)
    assert torch.equal(black_corner(images.cuda(), 0.9).cpu(), black_corner(images, 0.9))
    calls = (
        lambda x: stain_deposit(x, 5, rng=streams(4, "medical"), ink_size=24),
        lambda x: bubble(x, (17, 25), rng=streams(4, "medical")),
        lambda x: characters(x, (6, 10, 0.18), rng=streams(4, "medical")),
    )
    for call in calls:
        out = call(images.cuda())
        assert out.device.type == "cuda"
        assert torch.equal(out.cpu(), call(images))
