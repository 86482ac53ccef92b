"""Geometric corruptions: the ImageNet-C elastic transform as ``imagecorruptions`` implements it.

The reference (``imagecorruptions`` 1.1.2 and the fork ``imagecorruptions-imaug`` 1.1.5) draws two
fields of independent ``U(-0.005 H, 0.005 H)`` pixel offsets, smooths each with a Gaussian of
standard deviation ``0.01 H`` (rows) and ``0.01 W`` (columns) (``skimage.filters.gaussian``,
``mode='reflect'``, ``truncate=3``), multiplies them by ``alpha`` and resamples the image at the
displaced positions with ``scipy.ndimage.map_coordinates(order=1, mode='reflect')``. Every length
is relative to the image size, so the same ``alpha`` works at 28 px and at 224 px and there is no
``scale_elastic_transform``. (The original ImageNet-C code also applied a random affine warp with
244-px-based constants; ``imagecorruptions`` dropped it, and so do we.)

Here the offsets are smoothed with the SciPy-exact ``_utils.gaussian_filter`` (border
``symmetric``, which is SciPy's ``reflect``) and the batch is resampled with ``grid_sample``,
whose ``reflection`` padding with ``align_corners=False`` is that same half-sample-symmetric
boundary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medrobust.corruptions._random import ImageRandom
from medrobust.corruptions.functional._utils import (
    check_images,
    check_real,
    check_rng,
    gaussian_filter,
    map_chunks,
    to_float,
    to_uint8,
)

__all__ = ["elastic_transform"]

_SIGMA_FRACTION = 0.01  # smoothing sigma, as a fraction of the image side
_OFFSET_FRACTION = 0.005  # half-width of the uniform raw offsets, as a fraction of the height
_TRUNCATE = 3.0  # the reference's Gaussian truncation, in sigmas
# CPU batch slices hold about this many elements in their largest intermediate (8 RGB images
# of 224 px), as weather's do: the working set stays in cache
_CPU_CHUNK_ELEMENTS = 8 * 3 * 224 * 224


def elastic_transform(images: torch.Tensor, param: float, *, rng: ImageRandom) -> torch.Tensor:
    """Warp each image with a smooth random displacement field (ImageNet-C ``elastic_transform``).

    ``param`` is the reference's ``alpha`` (250 x {.05, .065, .085, .1, .12} for severities 1-5):
    the gain applied to the smoothed offsets. Grey images are warped as one channel, which equals
    the reference's grey -> RGB -> warp -> L round trip. Output is truncated to uint8 as in the
    reference.
    """
    check_images(images)
    check_rng(rng, images)
    alpha = check_real("elastic_transform param (alpha)", param, low=0.0)
    h, w = images.shape[-2:]
    max_offset = _OFFSET_FRACTION * h
    raw = rng.uniform((2, h, w), -max_offset, max_offset).to(images.device)  # x, then y offsets
    cols = torch.arange(w, dtype=torch.float32, device=images.device)
    rows = torch.arange(h, dtype=torch.float32, device=images.device)[:, None]

    def run(part: torch.Tensor, part_raw: torch.Tensor) -> torch.Tensor:
        sigma_h, sigma_w = _SIGMA_FRACTION * h, _SIGMA_FRACTION * w
        disp = gaussian_filter(part_raw, (sigma_h, sigma_w), truncate=_TRUNCATE, mode="symmetric")
        disp = disp * alpha
        grid = torch.stack(
            ((2.0 * (cols + disp[:, 0]) + 1.0) / w - 1.0, (2.0 * (rows + disp[:, 1]) + 1.0) / h - 1.0),
            dim=-1,
        )
        warped = F.grid_sample(
            to_float(part), grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )
        return to_uint8(warped)

    return map_chunks(
        run, images, raw, chunk_elements=_CPU_CHUNK_ELEMENTS, planes=max(2, images.shape[1])
    )
