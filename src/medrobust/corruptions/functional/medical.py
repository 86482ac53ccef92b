"""Task-specific medical corruptions of MedMNIST-C: stain deposit, bubble, black corner, characters.

Batched re-implementations of ``medmnistc``'s ``StainDeposit``, ``Bubble``, ``BlackCorner`` and
``Characters`` (microscopy.py), with the reference's draws and rasters at 224 px: bubbles and the
corner circle are pixel-exact (PIL ellipses, cv2.circle), text is OpenCV's own anti-aliased
Hershey font. Pixel constants of the reference (margins, the bubble rim, the letter width, the
font-scale grid) scale with the image size; lower ends of random ranges are clamped to the upper
ends, so that no size or parameter raises (reference defect 10).
Fixed reference defects: the ink size follows the severity (defect 6, ``ink_size``), the bubble
centre ranges use (width, height) in the right order (defect 10), grey images take one channel
(defect 9). Ink masks are generated procedurally here instead of shipping ``assets/inks.npz``.
Randomness is drawn with fixed shapes (as many candidates as the maximum count, the first n
used), so every image's stream sees the same calls and batching never changes a result.
"""

from __future__ import annotations

import functools
import math
import string
from typing import NamedTuple

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw

from medrobust.corruptions._random import ImageRandom
from medrobust.corruptions.functional._utils import (
    check_factor,
    check_images,
    check_int,
    check_real,
    check_rng,
    check_tuple,
    chunk_length,
    rgb_to_l,
)

__all__ = [
    "STAIN_INK_SIZES",
    "black_corner",
    "bubble",
    "characters",
    "scale_bubble",
    "scale_characters",
    "scale_ink_size",
    "scale_stain_deposit",
    "stain_deposit",
]

REFERENCE_SIZE = 224
STAIN_INK_SIZES = (12, 16, 24, 32, 42)
"""Ink blob sizes (px at 224) of severities 1..5, the reference's ``inks.npz`` keys '1'..'5'."""

_INK_VARIANTS = 10
_DEFAULT_INK_SIZE = 24  # the reference's size for severities 1-4 (defect 6)
_INK_SEED = 61_2024
# (ink size px, mean fraction of the square covered) of the reference's assets/inks.npz, measured
_INK_COVERAGE = ((12, 0.6972), (16, 0.6938), (24, 0.6248), (32, 0.5413), (42, 0.5256))
_MARGIN = 10
_BUBBLE_RIM = 2
_BUBBLE_MIN_RADIUS = 3
_BUBBLE_MIN_COUNT = 7
_BUBBLE_ALPHA_INNER = 100
_BUBBLE_ALPHA_RIM = 130
_LETTER_WIDTH = 8
_MIN_LETTERS = 3
_MIN_FONT_SCALE_STEPS = 14  # font scale randint(14, 100 fs) / 100 at 224 px
_MIN_RENDER_SCALE = 0.14  # smaller fonts are drawn supersampled
_FONT = cv2.FONT_HERSHEY_DUPLEX
# marks and bubbles are scattered in chunks whose temporaries hold about this many elements
_CHUNK_ELEMENTS = 1 << 22


def _round_px(x: float) -> int:
    """Round a pixel count half up (Python's round() rounds half to even)."""
    return math.floor(x + 0.5)


def _blend_pixels(
    out: torch.Tensor,
    first_channel: torch.Tensor,
    target: torch.Tensor | float,
    alpha: torch.Tensor,
) -> None:
    """Blend some pixels of ``out`` (N, C, H, W) toward ``target`` in place: p + (t - p) * alpha.

    ``first_channel`` holds the flat indices of the pixels' channel 0 (any shape S, no index
    twice), ``alpha`` and ``target`` broadcast to (*S, C); alpha in [0, 1], 0 leaves a pixel
    as it is. Rounds to nearest, as PIL's paste and OpenCV's anti-aliasing do. Flat
    index_select / index_copy_ are much faster than multi-dimensional advanced indexing.
    """
    c, plane = out.shape[1], out.shape[2] * out.shape[3]
    index = first_channel[..., None] + torch.arange(c, device=out.device) * plane
    flat = out.view(-1)
    pixels = flat.index_select(0, index.view(-1)).view(index.shape).to(torch.float32)
    blended = pixels + (target - pixels) * alpha + 0.5
    flat.index_copy_(0, index.view(-1), blended.to(torch.uint8).view(-1))


def _uniform_int(u: torch.Tensor, low: torch.Tensor | int, high: torch.Tensor) -> torch.Tensor:
    """Map uniform draws u in [0, 1) to integers in [low, high] (both inclusive, per element)."""
    span = high - low + 1
    return low + torch.minimum((u * span).long(), span - 1)


# ----------------------------------------------------------------------------- stain deposit


def _smooth_noise(gen: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Unit-variance Gaussian-smoothed white noise, periodic, (variants, size, size) float64.

    Filtered in the Fourier domain: O(size^2 log size) for any blur, and deterministic.
    """
    noise = gen.standard_normal((_INK_VARIANTS, size, size))
    freq2 = np.fft.fftfreq(size)[:, None] ** 2 + np.fft.rfftfreq(size)[None, :] ** 2
    transfer = np.exp(-2.0 * (np.pi * sigma) ** 2 * freq2)
    field = np.fft.irfft2(np.fft.rfft2(noise) * transfer, s=(size, size))
    return field / np.maximum(field.reshape(_INK_VARIANTS, -1).std(axis=1), 1e-12)[:, None, None]


def _ink_coverage(size: int) -> float:
    """Mean fraction of its square that an ink of ``size`` px covers, as the reference's inks do.

    ``_INK_COVERAGE`` at the reference's sizes, linear in between, the end values beyond (small
    inks of downscaled images keep the small inks' coverage).
    """
    sizes, cover = zip(*_INK_COVERAGE, strict=True)
    return float(np.interp(size, sizes, cover))


@functools.lru_cache(maxsize=32)
def _ink_masks(size: int, device: torch.device) -> torch.Tensor:
    """Ten irregular ink-blob masks of ``size`` x ``size`` px, (10, size, size) bool.

    Smoothed noise at two scales perturbs the radius of a randomly rotated, stretched disk: blots
    with ragged edges and the odd splash. Each mask's threshold on that field is set so that it
    covers ``_ink_coverage(size)`` of its square (as the reference's inks do on average: the
    coverage decides how dark a stain is). A fixed seed per size makes them the same in every
    process.
    """
    if size == 1:
        return torch.ones(_INK_VARIANTS, 1, 1, dtype=torch.bool, device=device)
    gen = np.random.default_rng([_INK_SEED, size])
    coords = (np.arange(size) + 0.5) / (size / 2.0) - 1.0
    angle = gen.uniform(0.0, np.pi, (_INK_VARIANTS, 1, 1))
    stretch = gen.uniform(0.7, 1.0, (_INK_VARIANTS, 1, 1))
    yy, xx = coords[:, None], coords[None, :]
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = (yy * np.cos(angle) - xx * np.sin(angle)) / stretch
    field = 1.0 - np.sqrt(u * u + v * v)
    for scale, amplitude in ((8.0, 0.3), (24.0, 0.1)):
        field += amplitude * _smooth_noise(gen, size, max(size / scale, 0.5))
    # each mask's `covered` highest field values are ink (ties have probability zero)
    flat = field.reshape(_INK_VARIANTS, -1)
    rank = flat.shape[1] - max(1, _round_px(_ink_coverage(size) * flat.shape[1]))
    threshold = np.partition(flat, rank, axis=1)[:, rank, None, None]
    masks = field >= threshold
    masks[:, size // 2, size // 2] = True
    return torch.from_numpy(masks).to(device)


def scale_ink_size(ink_size: int, factor: float) -> int:
    """Ink blob size for an image ``factor`` times the 224 px reference (at least 1 px)."""
    ink_size = check_int("ink_size", ink_size, low=1)
    factor = check_factor(factor)
    return max(1, _round_px(ink_size * factor))


def _stain_param(param: int | tuple[int, int], ink_size: int | None) -> tuple[int, int]:
    """(max marks, ink size) from ``max_marks`` and ``ink_size=``, or a (marks, size) tuple."""
    if isinstance(param, (tuple, list)):
        if ink_size is not None:
            raise ValueError(
                "give the ink size either in the (max_marks, ink_size) tuple or as ink_size=, "
                "not both"
            )
        param, ink_size = check_tuple("stain_deposit", param, ("max_marks", "ink_size"))
    ink_size = _DEFAULT_INK_SIZE if ink_size is None else ink_size
    return check_int("max_marks", param, low=1), check_int("ink_size", ink_size, low=1)


def scale_stain_deposit(param: int | tuple[int, int], factor: float) -> int | tuple[int, int]:
    """The mark count does not depend on the image size; a (marks, ink size) tuple's ink scales."""
    check_factor(factor)
    max_marks, ink_size = _stain_param(param, None)
    if isinstance(param, (tuple, list)):
        return max_marks, scale_ink_size(ink_size, factor)
    return max_marks


def stain_deposit(
    images: torch.Tensor,
    max_marks: int | tuple[int, int],
    *,
    rng: ImageRandom,
    ink_size: int | None = None,
) -> torch.Tensor:
    """Black ink blots (microscopy slide stains): pixels under 1..max_marks blobs are set to 0.

    Each image gets n ~ U{1..max_marks} blobs of ``ink_size`` px (default 24; STAIN_INK_SIZES[k-1]
    at severity k, 224 px), each one of ten fixed shapes, with its top-left corner uniform such
    that a margin of 10 px (at 224) is kept. Blobs larger than the image are cropped.
    ``max_marks`` may also be the tuple (max_marks, ink_size), as suites give it.
    """
    check_images(images)
    check_rng(rng, images)
    max_marks, ink_size = _stain_param(max_marks, ink_size)
    _, _, h, w = images.shape
    device = images.device

    def corner_range(extent: int) -> tuple[int, int]:
        margin = min(_round_px(_MARGIN * extent / REFERENCE_SIZE), max(extent - ink_size, 0) // 2)
        return margin, max(extent - ink_size - margin, margin)

    (y_lo, y_hi), (x_lo, x_hi) = corner_range(h), corner_range(w)
    count = rng.integers(1, max_marks).to(device)
    variant = rng.integers(0, _INK_VARIANTS - 1, (max_marks,)).to(device)
    top = rng.integers(y_lo, y_hi, (max_marks,)).to(device)
    left = rng.integers(x_lo, x_hi, (max_marks,)).to(device)

    marks = _Marks(_ink_masks(ink_size, device), variant, top, left, count)
    return (_stain_sparse if device.type == "cpu" else _stain_dense)(images, marks)


class _Marks(NamedTuple):
    """Stain marks of a batch: ink masks (10, s, s) and per image and mark (N, M) the mask
    variant, top-left corner; ``count`` (N,) marks drawn per image (the first ones)."""

    masks: torch.Tensor
    variant: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    count: torch.Tensor

    def chunks(self, n: int) -> list[torch.Tensor]:
        """Mark numbers in chunks whose inks hold about ``_CHUNK_ELEMENTS`` pixels."""
        m, size = self.variant.shape[1], self.masks.shape[-1]
        return list(torch.arange(m, device=self.masks.device).split(chunk_length(m, n * size**2, _CHUNK_ELEMENTS)))

    def inks(self, part: torch.Tensor) -> torch.Tensor:
        """(N, len(part), s, s) bool: the ink of each drawn mark of ``part``."""
        drawn = part < self.count[:, None]
        return self.masks[self.variant[:, part]] & drawn[:, :, None, None]


def _stain_sparse(images: torch.Tensor, marks: _Marks) -> torch.Tensor:
    """Zero the covered pixels, found with ``nonzero`` (on the CPU: fewer operations)."""
    n, c, h, w = images.shape
    out = images.clone(memory_format=torch.contiguous_format)
    channels = torch.arange(c, device=images.device) * (h * w)
    for part in marks.chunks(n):
        img, mark, dy, dx = marks.inks(part).nonzero(as_tuple=True)
        mark = part[mark]
        y, x = marks.top[img, mark] + dy, marks.left[img, mark] + dx
        inside = (y < h) & (x < w)  # only inks larger than the image stick out
        pixel = (img * (c * h * w) + y * w + x)[inside]
        # only covered pixels are written, all with 0: repeated indices are harmless
        out.view(-1).index_fill_(0, (pixel[:, None] + channels).view(-1), 0)
    return out


def _stain_dense(images: torch.Tensor, marks: _Marks) -> torch.Tensor:
    """``_stain_sparse`` without data-dependent shapes (no host sync): every ink is scattered
    with ``amax`` into a cover canvas padded by the ink size, then the covered pixels zeroed."""
    _, _, h, w = images.shape
    n, size = marks.variant.shape[0], marks.masks.shape[-1]
    hp, wp = h + size, w + size
    device = marks.masks.device
    patch = (torch.arange(size, device=device)[:, None] * wp + torch.arange(size, device=device)).view(-1)
    canvas = torch.zeros(n, hp * wp, dtype=torch.uint8, device=device)
    for part in marks.chunks(n):
        index = (marks.top[:, part] * wp + marks.left[:, part])[:, :, None] + patch
        canvas.scatter_reduce_(1, index.flatten(1), marks.inks(part).to(torch.uint8).flatten(1), "amax")
    return images.masked_fill(canvas.view(n, 1, hp, wp)[..., :h, :w].bool(), 0)


# ----------------------------------------------------------------------------- bubble


@functools.lru_cache(maxsize=32)
def _disk_half_widths(max_radius: int, device: torch.device) -> torch.Tensor:
    """Row half-widths of PIL's filled circles: table[r, |dy|] = max |dx| drawn, -1 if none.

    ``ImageDraw.ellipse((x-r, y-r, x+r, y+r))`` fills rows symmetrically and contiguously, so
    this table reproduces its raster exactly (it is not quite a distance threshold).
    """
    table = torch.full((max_radius + 1, max_radius + 1), -1, dtype=torch.int64)
    side = 2 * max_radius + 3
    centre = max_radius + 1
    for r in range(max_radius + 1):
        canvas = Image.new("L", (side, side), 0)
        ImageDraw.Draw(canvas).ellipse((centre - r, centre - r, centre + r, centre + r), fill=1)
        rows = torch.from_numpy(np.asarray(canvas, dtype=np.int64))[centre:, centre:]
        filled = rows.sum(dim=1)[: max_radius + 1]
        table[r] = torch.where(filled > 0, filled - 1, -1)
    return table.to(device)


def scale_bubble(param: tuple[int, int], factor: float) -> tuple[int, int]:
    """(max radius, max bubbles) for an image ``factor`` times 224 px: the radius scales."""
    max_radius, max_bubbles = check_tuple("bubble", param, ("max_radius", "max_bubbles"))
    max_radius = check_int("max_radius", max_radius, low=1)
    factor = check_factor(factor)
    return max(1, _round_px(max_radius * factor)), check_int("max_bubbles", max_bubbles, low=1)


def _bubble_code_map(
    height: int, width: int, centre_y: torch.Tensor, centre_x: torch.Tensor,
    radius: torch.Tensor, valid: torch.Tensor, rim: int, max_radius: int,
) -> torch.Tensor:
    """Which bubble is on top at every pixel, and whether it is its interior, (N, H*W) integers.

    0 = no bubble; 2 * (b + 1) + 1 = interior of bubble b, 2 * (b + 1) = its rim. PIL overwrites
    the overlay, so the last bubble drawn that covers a pixel wins: the largest code does.
    Each bubble is a (2 reach + 1)^2 patch scattered with ``amax`` into a padded canvas, in
    chunks of bubbles that bound the memory (amax does not depend on the order).
    """
    n, b = radius.shape
    dtype = torch.uint8 if 2 * b + 1 <= 255 else torch.int16  # smallest canvas that holds codes
    if 2 * b + 1 > torch.iinfo(torch.int16).max:
        raise ValueError(f"at most 16383 bubbles are supported, got {b}")
    device = radius.device
    reach = max_radius + rim
    table = _disk_half_widths(reach, device)
    offsets = torch.arange(-reach, reach + 1, device=device)
    dist = offsets.abs()
    half_outer = torch.where(valid[..., None], table[radius + rim][:, :, dist], -1)
    half_inner = torch.where(valid[..., None], table[radius][:, :, dist], -1)
    order = 2 * torch.arange(1, b + 1, device=device, dtype=dtype)[:, None, None]
    ph, pw = height + 2 * reach, width + 2 * reach
    corner = (centre_y + reach) * pw + centre_x + reach
    patch = offsets[:, None] * pw + offsets
    canvas = torch.zeros(n, ph * pw, dtype=dtype, device=device)
    bubbles_per_chunk = chunk_length(b, n * patch.numel(), _CHUNK_ELEMENTS)
    for part in torch.arange(b, device=device).split(bubbles_per_chunk):
        code = (dist <= half_outer[:, part, :, None]).to(dtype) * order[part]
        code += dist <= half_inner[:, part, :, None]
        index = corner[:, part, None, None] + patch
        canvas.scatter_reduce_(1, index.flatten(1), code.flatten(1), "amax")
    canvas = canvas.view(n, ph, pw)[:, reach : reach + height, reach : reach + width]
    return canvas.reshape(n, height * width)


def _composite_bubbles(
    images: torch.Tensor, centre_y: torch.Tensor, centre_x: torch.Tensor,
    radius: torch.Tensor, valid: torch.Tensor, rim: int, max_radius: int,
) -> torch.Tensor:
    """Paste white bubbles (N, B geometry) like PIL ``paste(overlay, mask=overlay)``, exactly.

    PIL's blend is round((p * (255 - a) + 255 * a) / 255), of the covered pixels only on the
    CPU (``_blend_bubbles_sparse``), of all elsewhere (``_blend_bubbles_dense``).
    """
    _, _, h, w = images.shape
    code = _bubble_code_map(h, w, centre_y, centre_x, radius, valid, rim, max_radius).view(-1)
    blend = _blend_bubbles_sparse if images.device.type == "cpu" else _blend_bubbles_dense
    return blend(images, code)


def _blend_bubbles_sparse(images: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Blend the pixels of the bubble ``code`` map (N H W) that a bubble covers, found with
    ``nonzero``."""
    _, c, h, w = images.shape
    covered = code.nonzero().squeeze(1)
    interior = (code.index_select(0, covered) & 1).bool()
    alpha = torch.where(interior, _BUBBLE_ALPHA_INNER / 255.0, _BUBBLE_ALPHA_RIM / 255.0)
    first_channel = covered + torch.div(covered, h * w, rounding_mode="floor") * ((c - 1) * h * w)
    out = images.clone(memory_format=torch.contiguous_format)
    _blend_pixels(out, first_channel, 255.0, alpha[:, None])
    return out


def _blend_bubbles_dense(images: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """``_blend_bubbles_sparse`` over every pixel, uncovered ones with alpha 0 (left as they
    are): the same arithmetic, no data-dependent shape (no host sync)."""
    n, c, h, w = images.shape
    alpha = torch.where(code & 1 == 1, _BUBBLE_ALPHA_INNER / 255.0, _BUBBLE_ALPHA_RIM / 255.0)
    alpha = alpha.masked_fill_(code == 0, 0.0).view(n, 1, h * w)
    pixels = images.reshape(n, c, h * w).to(torch.float32)
    return (pixels + (255.0 - pixels) * alpha + 0.5).to(torch.uint8).view(n, c, h, w)


def bubble(images: torch.Tensor, param: tuple[int, int], *, rng: ImageRandom) -> torch.Tensor:
    """Translucent white bubbles (immersion-oil/air bubbles in microscopy).

    ``param = (max_radius, max_bubbles)``: n ~ U{7..max_bubbles} circles, radius ~ U{3..max_radius},
    centre ~ U{r..W-r} x U{r..H-r}; a 2 px rim (at 224) with alpha 130/255 around an interior
    with alpha 100/255, later bubbles overwriting earlier ones on the overlay, as PIL draws them.
    """
    check_images(images)
    check_rng(rng, images)
    max_radius, max_bubbles = check_tuple("bubble", param, ("max_radius", "max_bubbles"))
    max_radius = check_int("max_radius", max_radius, low=1)
    max_bubbles = check_int("max_bubbles", max_bubbles, low=1)
    _, _, h, w = images.shape
    device = images.device
    rim = max(1, _round_px(_BUBBLE_RIM * min(h, w) / REFERENCE_SIZE))

    count = rng.integers(min(_BUBBLE_MIN_COUNT, max_bubbles), max_bubbles).to(device)
    radius = rng.integers(min(_BUBBLE_MIN_RADIUS, max_radius), max_radius, (max_bubbles,))
    radius = radius.to(device)
    u = rng.uniform((max_bubbles, 2)).to(device)

    def centre(extent: int, draw: torch.Tensor) -> torch.Tensor:
        lo = torch.minimum(radius, extent - radius).clamp(0, extent - 1)
        hi = torch.maximum(radius, extent - radius).clamp(0, extent - 1)
        return _uniform_int(draw, lo, hi)

    centre_x, centre_y = centre(w, u[..., 0]), centre(h, u[..., 1])
    valid = torch.arange(max_bubbles, device=device) < count[:, None]
    return _composite_bubbles(images, centre_y, centre_x, radius, valid, rim, max_radius)


# ----------------------------------------------------------------------------- black corner


def black_corner(images: torch.Tensor, multiplier: float) -> torch.Tensor:
    """Dermoscopy vignette: zero everything outside a centred circle.

    Radius ``int(multiplier * min(W // 2, H // 2))`` around (W // 2, H // 2), the pixels with
    dx^2 + dy^2 <= radius^2 kept: exactly the raster of cv2.circle(..., thickness=-1).
    """
    check_images(images)
    multiplier = check_real("multiplier", multiplier, low=0.0, low_open=True)
    _, _, h, w = images.shape
    cx, cy = w // 2, h // 2
    radius = int(min(cx, cy, w - cx, h - cy) * multiplier)
    dy = (torch.arange(h, device=images.device) - cy) ** 2
    dx = (torch.arange(w, device=images.device) - cx) ** 2
    inside = dy[:, None] + dx[None, :] <= radius * radius
    return images * inside


# ----------------------------------------------------------------------------- characters


def scale_characters(param: tuple[int, int, float], factor: float) -> tuple[int, int, float]:
    """(max words, max letters, max font scale) for ``factor`` times 224 px: the font scales."""
    max_words, max_letters, max_font_scale = check_tuple(
        "characters", param, ("max_words", "max_letters", "max_font_scale")
    )
    factor = check_factor(factor)
    return (
        check_int("max_words", max_words, low=1),
        check_int("max_letters", max_letters, low=1),
        check_real("max_font_scale", max_font_scale, low=0.0, low_open=True) * factor,
    )


Word = tuple[str, int, int, float, tuple[int, int, int]]
"""(text, x, y, font scale, (r, g, b)): cv2.putText's text, org = (x, y) baseline-left, colour."""


class _WordBox(NamedTuple):
    """Where a word's ink can fall in the image, and how to draw it into a patch there."""

    supersample: int
    top: int
    left: int
    height: int
    width: int
    org: tuple[int, int]  # cv2.putText's org in the (supersampled) patch


def _word_box(text: str, x: int, y: int, scale: float) -> _WordBox:
    """The patch of one word drawn at org (x, y).

    Fonts smaller than the reference's smallest (0.14) are drawn k times larger and area-averaged,
    so that small images get the faint text a 224 px rendering leaves after downsizing, instead
    of the nothing cv2 draws at sub-pixel sizes.
    """
    k = max(1, math.ceil(_MIN_RENDER_SCALE / scale - 1e-9))
    (tw, th), baseline = cv2.getTextSize(text, _FONT, scale * k, 1)
    pad = 2 + math.ceil(2 * scale * k)  # Hershey strokes overshoot getTextSize by <= 2 px
    top, left = y - math.ceil((th + pad) / k), x - math.ceil(pad / k)
    bottom, right = y + math.ceil((baseline + pad) / k), x + math.ceil((tw + pad) / k)
    return _WordBox(k, top, left, bottom - top, right - left, (k * (x - left), k * (y - top)))


def _word_coverage(text: str, scale: float, box: _WordBox, out: np.ndarray) -> None:
    """Draw a word's anti-aliased coverage, white on black, into the top-left of ``out``."""
    k = box.supersample
    if k == 1:
        cv2.putText(out, text, box.org, _FONT, scale, 255, 1, cv2.LINE_AA)
        return
    big = np.zeros((box.height * k, box.width * k), dtype=np.uint8)
    cv2.putText(big, text, box.org, _FONT, scale * k, 255, 1, cv2.LINE_AA)
    out[: box.height, : box.width] = cv2.resize(
        big, (box.width, box.height), interpolation=cv2.INTER_AREA
    )


def _clip_corner(corner: int, size: int, extent: int) -> int:
    """Where a patch of ``size`` (at most ``extent``) starts so that it lies in ``[0, extent)``
    and still holds every in-image pixel of the patch that started at ``corner``."""
    return min(max(corner, 0), extent - size)


def _word_patches(words: list[list[Word]], h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rasterise every word on the host: coverage (slots, N, ph, pw) uint8, corners (2, slots, N)
    and colours (slots, N, 3) uint8, word slot j of image i at ``[j, i]``.

    A word is drawn white on black at the top left of a patch the size of the largest word's,
    as cv2 draws it; the patch is then moved inside the image (``_clip_corner``), its pixels
    outside cut off, so that every patch pixel is an image pixel and the device blends them
    all without masks (coverage 0 leaves a pixel as it is).
    """
    n = len(words)
    slots = max(len(ws) for ws in words)
    boxes = {
        (i, j): _word_box(text, x, y, scale)
        for i, ws in enumerate(words)
        for j, (text, x, y, scale, _) in enumerate(ws)
    }
    ph = max(box.height for box in boxes.values())
    pw = max(box.width for box in boxes.values())
    qh, qw = min(ph, h), min(pw, w)
    coverage = np.zeros((slots, n, qh, qw), dtype=np.uint8)
    corner = np.zeros((2, slots, n), dtype=np.int64)
    colours = np.zeros((slots, n, 3), dtype=np.uint8)
    drawn = np.empty((ph, pw), dtype=np.uint8)
    for (i, j), box in boxes.items():
        text, _, _, scale, colour = words[i][j]
        drawn.fill(0)
        _word_coverage(text, scale, box, drawn)
        top, left = _clip_corner(box.top, qh, h), _clip_corner(box.left, qw, w)
        # image rows top..top + qh - 1 are drawn rows top - box.top.., where they exist
        r0, c0 = max(top - box.top, 0), max(left - box.left, 0)
        r1, c1 = min(top + qh - box.top, ph), min(left + qw - box.left, pw)
        if r0 < r1 and c0 < c1:
            dst_r, dst_c = box.top + r0 - top, box.left + c0 - left
            coverage[j, i, dst_r : dst_r + r1 - r0, dst_c : dst_c + c1 - c0] = drawn[r0:r1, c0:c1]
        corner[:, j, i] = top, left
        colours[j, i] = colour
    return coverage, corner, colours


def _draw_words(
    images: torch.Tensor, words: list[list[Word]], *, dense: bool | None = None
) -> torch.Tensor:
    """Draw anti-aliased Hershey text like cv2.putText(..., thickness 1, LINE_AA), batched.

    OpenCV rasterises each word as white-on-black coverage in a small patch (host, the only
    per-word work, ``_word_patches``); the patches are blended on the images' device, one
    word slot at a time so that later words lie on top, as when drawing in sequence.
    ``dense`` (default: off the CPU) blends every patch pixel, with no data-dependent shape
    and so no host sync; otherwise only the covered ones, fewer operations on the CPU. Both
    give the same bytes.
    """
    n, c, h, w = images.shape
    device = images.device
    dense = device.type != "cpu" if dense is None else dense
    out = images.clone(memory_format=torch.contiguous_format)
    if max((len(ws) for ws in words), default=0) == 0:
        return out
    coverage, corner, colours = _word_patches(words, h, w)
    slots, _, ph, pw = coverage.shape
    alpha_all = torch.from_numpy(coverage).to(device, non_blocking=True)  # pageable: staged now
    corner_all = torch.from_numpy(corner).to(device, non_blocking=True)
    colour_all = torch.from_numpy(colours)
    if c == 1:  # the colour's luma, as drawing in RGB and converting to L gives
        colour_all = rgb_to_l(colour_all.view(-1, 3, 1, 1)).view(slots, n, 1)
    colour_all = colour_all.to(device, torch.float32, non_blocking=True)
    rows = torch.arange(ph, device=device) * w
    cols = torch.arange(pw, device=device)
    image = torch.arange(n, device=device) * (c * h * w)
    for j in range(slots):
        top = image + corner_all[0, j] * w
        first_channel = (top[:, None] + rows)[:, :, None] + (corner_all[1, j, :, None] + cols)[:, None]
        first_channel, alpha = first_channel.view(n, ph * pw), alpha_all[j].view(n, ph * pw)
        target = colour_all[j, :, None]
        if not dense:
            img, pixel = alpha.nonzero(as_tuple=True)
            first_channel, alpha, target = first_channel[img, pixel], alpha[img, pixel], colour_all[j, img]
        _blend_pixels(out, first_channel, target, alpha.to(torch.float32)[..., None] / 255.0)
    return out


def characters(
    images: torch.Tensor, param: tuple[int, int, float], *, rng: ImageRandom
) -> torch.Tensor:
    """Random lowercase words in random colours (burned-in annotations of dermoscopy images).

    ``param = (max_words, max_letters, max_font_scale)``: U{1..max_words} words of U{3..max_letters}
    letters, font scale U{14..100 fs}/100, at x ~ U{10..W-8*letters}, y ~ U{10..H-10}: numbers at
    224 px, the margins, letter width and font-scale steps (0.01 from 0.14) scale with the size;
    words get fewer letters where they would not fit. Grey images get the luma of the colour,
    as drawing in RGB and converting to L gives.
    """
    check_images(images)
    check_rng(rng, images)
    max_words, max_letters, max_font_scale = check_tuple(
        "characters", param, ("max_words", "max_letters", "max_font_scale")
    )
    max_words = check_int("max_words", max_words, low=1)
    max_letters = check_int("max_letters", max_letters, low=1)
    max_font_scale = check_real("max_font_scale", max_font_scale, low=0.0, low_open=True)
    _, _, h, w = images.shape
    # the reference draws the scale in steps of 0.01 from 0.14 at 224 px: both scale with the size
    steps_per_unit = 100 * REFERENCE_SIZE / min(h, w)
    scale_hi = max(1, math.floor(max_font_scale * steps_per_unit + 1e-6))
    margin_x = _round_px(_MARGIN * w / REFERENCE_SIZE)
    margin_y = _round_px(_MARGIN * h / REFERENCE_SIZE)
    letter_width = max(1, _round_px(_LETTER_WIDTH * w / REFERENCE_SIZE))
    margin_x = min(margin_x, w - letter_width)
    letters_hi = max(1, min(max_letters, (w - margin_x) // letter_width))

    host = rng.on_host()  # the words are rasterised on the host: no device sync for them
    count = host.integers(1, max_words).tolist()
    n_letters = host.integers(min(_MIN_LETTERS, letters_hi), letters_hi, (max_words,))
    scale_lo = min(_MIN_FONT_SCALE_STEPS, scale_hi)
    scale_steps = host.integers(scale_lo, scale_hi, (max_words,)).tolist()
    letters = host.integers(0, 25, (max_words, letters_hi)).tolist()
    colour = host.integers(0, 255, (max_words, 3)).tolist()
    x = _uniform_int(host.uniform((max_words,)), margin_x, w - letter_width * n_letters).tolist()
    y = host.integers(margin_y, max(h - margin_y, margin_y), (max_words,)).tolist()
    n_letters = n_letters.tolist()

    words = [
        [
            (
                "".join(string.ascii_lowercase[k] for k in letters[i][j][: n_letters[i][j]]),
                x[i][j], y[i][j], scale_steps[i][j] / steps_per_unit, tuple(colour[i][j]),
            )
            for j in range(count[i])
        ]
        for i in range(images.shape[0])
    ]
    return _draw_words(images, words)
