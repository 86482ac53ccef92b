"""Geometric corruptions: the ImageNet-C elastic transform as ``imagecorruptions`` implements it.

The reference (``imagecorruptions`` 1.1.2 and the fork ``imagecorruptions-imaug`` 1.1.5) draws two
fields of independent ``U(-0.005 H, 0.005 H)`` pixel offsets, smooths each with a Gaussian of
standard deviation ``0.01 H`` (rows) and ``0.01 W`` (columns) (``skimage.filters.gaussian``,
``mode='reflect'``, ``truncate=3``), multiplies them by ``alpha`` and resamples the image at the
displaced positions with ``scipy.ndimage.map_coordinates(order=1, mode='reflect')``. Every length
is relative to the image size, so the same ``alpha`` works at 28 px and at 224 px and there is no
``scale_elastic_transform``. (The original ImageNet-C code also applied a random affine warp with
244-px-based constants; ``imagecorruptions`` dropped it, and so do we.)

Here the whole batch is smoothed with one separable convolution and resampled with one
``grid_sample`` call; scipy's ``reflect`` (half-sample symmetric) boundary equals ``grid_sample``'s
``reflection`` padding with ``align_corners=False``.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn.functional as F

from medrobust.corruptions._random import ImageRandom
from medrobust.corruptions.functional._utils import (
    check_images,
    gaussian_kernel1d,
    to_float,
    to_uint8,
)
from medrobust.corruptions.functional.weather import _in_chunks

__all__ = ["elastic_transform"]

_SIGMA_FRACTION = 0.01  # smoothing sigma, as a fraction of the image side
_OFFSET_FRACTION = 0.005  # half-width of the uniform raw offsets, as a fraction of the height
_TRUNCATE = 3.0  # the reference's Gaussian truncation, in sigmas


def _symmetric_indices(size: int, radius: int, device: torch.device) -> torch.Tensor:
    """Indices that pad a length-``size`` axis by ``radius`` in scipy's ``reflect`` mode.

    That mode repeats the edge sample (``c b a | a b c | c b a``), which ``F.pad`` lacks; the
    index form also works when ``radius`` exceeds ``size``.
    """
    idx = torch.arange(-radius, size + radius, device=device) % (2 * size)
    return torch.where(idx < size, idx, 2 * size - 1 - idx)


def _smooth_reflect(x: torch.Tensor, sigma_h: float, sigma_w: float) -> torch.Tensor:
    """Gaussian smoothing of (N, C, H, W) like ``scipy.ndimage.gaussian_filter(mode='reflect', truncate=3)``.

    Every plane is one group of a single convolution over a (1, N*C, H, W) view, which CPU
    backends run far faster than a batch of few-channel images.
    """
    n, c, h, w = x.shape
    x = x.reshape(1, n * c, h, w)
    for dim, size, sigma in ((3, w, sigma_w), (2, h, sigma_h)):
        radius = int(_TRUNCATE * sigma + 0.5)
        taps = gaussian_kernel1d(sigma, radius, device=x.device).to(x.dtype)
        x = x.index_select(dim, _symmetric_indices(size, radius, x.device))
        shape = (1, taps.numel()) if dim == 3 else (taps.numel(), 1)
        x = F.conv2d(x, taps.view(1, 1, *shape).expand(n * c, 1, *shape), groups=n * c)
    return x.view(n, c, h, w)


def elastic_transform(images: torch.Tensor, param: float, *, rng: ImageRandom) -> torch.Tensor:
    """Warp each image with a smooth random displacement field (ImageNet-C ``elastic_transform``).

    ``param`` is the reference's ``alpha`` (250 x {.05, .065, .085, .1, .12} for severities 1-5):
    the gain applied to the smoothed offsets. Grey images are warped as one channel, which equals
    the reference's grey -> RGB -> warp -> L round trip. Output is truncated to uint8 as in the
    reference.
    """
    check_images(images)
    if isinstance(param, bool) or not isinstance(param, Real):
        raise TypeError(f"elastic_transform param (alpha) must be a number, got {param!r}")
    alpha = float(param)
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"elastic_transform param (alpha) must be finite and >= 0, got {param!r}")
    n, _, h, w = images.shape
    if not isinstance(rng, ImageRandom):
        raise TypeError(f"rng must be an ImageRandom, got {type(rng).__name__}")
    if len(rng) != n:
        raise ValueError(f"rng has {len(rng)} streams for a batch of {n} images")
    max_offset = _OFFSET_FRACTION * h
    raw = rng.uniform((2, h, w), -max_offset, max_offset).to(images.device)  # x, then y offsets
    cols = torch.arange(w, dtype=torch.float32, device=images.device)
    rows = torch.arange(h, dtype=torch.float32, device=images.device)[:, None]

    def run(part: torch.Tensor, part_raw: torch.Tensor) -> torch.Tensor:
        disp = _smooth_reflect(part_raw, _SIGMA_FRACTION * h, _SIGMA_FRACTION * w) * alpha
        grid = torch.stack(
            ((2.0 * (cols + disp[:, 0]) + 1.0) / w - 1.0, (2.0 * (rows + disp[:, 1]) + 1.0) / h - 1.0),
            dim=-1,
        )
        warped = F.grid_sample(
            to_float(part), grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )
        return to_uint8(warped)

    return _in_chunks(run, images, raw, planes=max(2, images.shape[1]))
