"""Digital corruptions: pixelation (PIL BOX / NEAREST resizing) and JPEG compression.

``pixelate`` and ``pixelate_nearest`` are batched, bit-exact ports of Pillow's 8-bit resampler
(``Resample.c``: separable passes, 22-bit fixed-point weights, an 8-bit rounded intermediate)
and of its NEAREST resize (``ImagingScaleAffine``). A BOX window gives every pixel in it the
same weight, so a pass is one ``index_add_`` of the pixels into their
windows followed by Pillow's fixed-point scaling and rounding, whatever the factor.

``jpeg_compression`` uses torchvision's libjpeg encoder and decoder, which write the same bytes
as ``PIL.Image.save(..., 'JPEG', quality=q)`` (baseline, 4:2:0 chroma subsampling, the IJG
quality-scaled tables) and decode them identically.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import lru_cache

import torch
from torchvision.io import decode_jpeg, encode_jpeg

from medrobust.corruptions.functional._utils import (
    batch_slices,
    check_images,
    check_int,
    check_real,
)

__all__ = ["jpeg_compression", "pixelate", "pixelate_nearest"]

_PRECISION_BITS = 32 - 8 - 2  # Resample.c: fixed-point precision of 8-bit resampling
# integer passes touch little memory per element: larger CPU chunks amortise per-call overhead
_CHUNK_ELEMENTS = 1 << 19


@lru_cache(maxsize=128)
def _box_windows(
    in_size: int, out_size: int
) -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]:
    """Pillow's BOX coefficients for one axis: the input pixels of each output, and its weight.

    Follows ``precompute_coeffs`` (support 0.5 scaled by the reduction factor, bounds rounded
    with ``(int)(x + 0.5)``, box filter at ``(x - center + 0.5) * (1 / filterscale)``) and
    ``normalize_coeffs_8bpc`` (weights ``(int)(0.5 + k * 2**22)``). Rounding makes neighbouring
    windows overlap or leave a pixel out for some sizes, exactly as in Pillow.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    ss = 1.0 / filterscale
    members, weights = [], []
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        inside = tuple(x for x in range(xmin, xmax) if -0.5 < (x - center + 0.5) * ss <= 0.5)
        members.append(inside)
        weights.append(int(0.5 + (1.0 / len(inside)) * (1 << _PRECISION_BITS)) if inside else 0)
    return tuple(members), tuple(weights)


@lru_cache(maxsize=128)
def _box_plan(
    in_size: int, out_size: int, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """``_box_windows`` as index tensors on ``device``: ``(copy, pixels, windows, weight)``.

    ``copy`` is set when every output is one input pixel of weight 1 (enlarging), so the pass
    is a gather. Otherwise input ``pixels[j]`` (``None``: all pixels in order) adds into output
    ``windows[j]``, and each output's sum is scaled by ``weight`` (int32, fixed point).
    """
    members, weights = _box_windows(in_size, out_size)
    weight = torch.tensor(weights, dtype=torch.int32, device=device)
    if all(len(m) == 1 for m in members) and all(w == 1 << _PRECISION_BITS for w in weights):
        copy = torch.tensor([m[0] for m in members], dtype=torch.int64, device=device)
        return copy, None, None, weight
    flat = [x for m in members for x in m]
    windows = [i for i, m in enumerate(members) for _ in m]
    pixels = None if flat == list(range(in_size)) else torch.tensor(flat, device=device)
    return None, pixels, torch.tensor(windows, dtype=torch.int64, device=device), weight


def _box_pass(x: torch.Tensor, out_size: int, dim: int) -> torch.Tensor:
    """One Pillow BOX pass of uint8 images along ``dim`` (-1 = horizontal, -2 = vertical)."""
    in_size = x.shape[dim]
    if in_size == out_size:
        return x
    copy, pixels, windows, weight = _box_plan(in_size, out_size, x.device)
    if windows is None:
        return x.index_select(dim, copy)
    source = x if pixels is None else x.index_select(dim, pixels)
    shape = list(x.shape)
    shape[dim] = out_size
    sums = torch.zeros(shape, dtype=torch.int32, device=x.device)
    sums.index_add_(dim, windows, source.to(torch.int32))
    if dim == -2:
        weight = weight[:, None]
    rounded = sums.mul_(weight).add_(1 << (_PRECISION_BITS - 1)) >> _PRECISION_BITS
    return rounded.clamp_(max=255).to(torch.uint8)


def _box_resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """PIL ``resize((width, height), BOX)`` of uint8 images (N, C, H, W).

    When both axes shrink, the order of the passes changes the rounded intermediate: Pillow
    goes horizontally first, except (since Pillow 13) when the height loses more than twice as
    many pixels as the width. Otherwise a pass is a gather and the order is free: rows last.
    """
    in_h, in_w = x.shape[-2:]
    if height < in_h and width < in_w and in_h - height > 2 * (in_w - width):
        return _box_pass(_box_pass(x, height, -2), width, -1)
    return _box_pass(_box_pass(x, width, -1), height, -2)


@lru_cache(maxsize=128)
def _nearest_index(in_size: int, out_size: int, device: torch.device) -> torch.Tensor:
    """Source index of each output pixel of PIL's NEAREST resize (``ImagingScaleAffine``).

    Pillow accumulates the position in double precision: ``xo = a/2``, then ``xo += a``.
    """
    step = in_size / out_size
    position = step * 0.5
    index = []
    for _ in range(out_size):
        index.append(min(int(position), in_size - 1))
        position += step
    return torch.tensor(index, dtype=torch.int64, device=device)


def _nearest_resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """PIL ``resize((width, height), NEAREST)`` of images (N, C, H, W)."""
    rows = _nearest_index(x.shape[-2], height, x.device)
    cols = _nearest_index(x.shape[-1], width, x.device)
    return x.index_select(-1, cols).index_select(-2, rows)


def _reduced_size(images: torch.Tensor, factor: float) -> tuple[int, int]:
    """``(int(H * factor), int(W * factor))`` as the references compute it, checked non-empty."""
    factor = check_real("factor", factor, low=0.0, high=1.0, low_open=True)
    h, w = images.shape[-2:]
    small = (int(h * factor), int(w * factor))
    if min(small) < 1:
        raise ValueError(
            f"factor {factor} shrinks a {h}x{w} image to {small[0]}x{small[1]}; "
            f"use a factor >= {1.0 / min(h, w):.4g} for this size"
        )
    return small


def _pixelate(
    images: torch.Tensor,
    factor: float,
    enlarge: Callable[[torch.Tensor, int, int], torch.Tensor],
) -> torch.Tensor:
    """PIL BOX resize to ``int(size * factor)``, then ``enlarge`` back to the input size."""
    check_images(images)
    small_h, small_w = _reduced_size(images, factor)
    h, w = images.shape[-2:]
    out = torch.empty_like(images)
    for sl in batch_slices(images, _CHUNK_ELEMENTS):
        out[sl] = enlarge(_box_resize(images[sl], small_h, small_w), h, w)
    return out


def pixelate(images: torch.Tensor, factor: float) -> torch.Tensor:
    """MedMNIST-C pixelate: PIL BOX resize to ``int(size * factor)``, then BOX back to the size."""
    return _pixelate(images, factor, _box_resize)


def pixelate_nearest(images: torch.Tensor, factor: float) -> torch.Tensor:
    """ImageNet-C pixelate (imagecorruptions): PIL BOX down by ``factor``, then NEAREST back up."""
    return _pixelate(images, factor, _nearest_resize)


def jpeg_compression(images: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG encode at ``quality`` and decode, byte-identical to PIL's default JPEG save.

    RGB images are 4:2:0 YCbCr JPEGs; grey images are 1-channel JPEGs, which decode to exactly
    what the reference's grey -> RGB -> JPEG -> ``convert('L')`` gives. Encoding runs on CPU
    (libjpeg); CUDA input is copied there and back.
    """
    check_images(images)
    quality = check_int("quality", quality, low=1, high=100)
    if images.shape[0] == 0:
        return images.clone()
    cpu = images.cpu().contiguous()
    with warnings.catch_warnings():
        # torchvision 0.29 flags its image codecs as deprecated in favour of TorchCodec; they
        # are kept because they write the same bytes as PIL, in one batched call
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
        decoded = decode_jpeg(encode_jpeg(list(cpu), quality=quality))
    return torch.stack(decoded).to(images.device)
