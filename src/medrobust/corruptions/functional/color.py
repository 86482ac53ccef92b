"""Colour and tone corruptions of MedMNIST-C (PIL / torchvision / scikit-image) and ImageNet-C.

Every function reproduces its reference's arithmetic, rounding and quantisation exactly:

* ``brightness`` and ``contrast`` are ``PIL.ImageEnhance`` (``Image.blend`` in float32, truncated);
* ``gamma`` is torchvision's ``adjust_gamma`` on a PIL image (a 256-entry table);
* ``saturate``, ``brightness_hsv`` and ``saturate_hsv`` share one batched float64 port of
  ``skimage.color.rgb2hsv``/``hsv2rgb``, quantised as ``(x * 255).astype(uint8)``;
* ``contrast_mean`` is ImageNet-C ``contrast`` (per-channel mean, float64, truncated).

Pointwise maps of a uint8 image are applied as lookup tables built with the reference's own
float arithmetic, so they are exact and cost one table lookup per pixel. Grey (C = 1) input gives
the reference's grey -> RGB -> corrupt -> ``convert('L')`` result: for the hue-based corruptions,
which tint grey pixels, that result is computed once per grey level through the RGB path.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import cv2
import torch

from medrobust.corruptions.functional._utils import (
    batch_slices,
    check_images,
    check_real,
    check_tuple,
    match_cv2_threads,
    rgb_to_l,
    to_uint8,
)

__all__ = [
    "brightness",
    "brightness_hsv",
    "contrast",
    "contrast_mean",
    "gamma",
    "saturate",
    "saturate_hsv",
]

_HSV = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
_HsvAdjust = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], _HSV]


def _apply_lut(images: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Map uint8 ``images`` (N, C, H, W) through uint8 tables of 256 entries.

    ``lut`` is (256,) for the whole batch, (N, 256) per image or (N, C, 256) per channel.
    CPU tensors go through ``cv2.LUT`` (SIMD, several times faster than a torch gather); other
    devices through ``index_select``. Both are exact table lookups, so the results are equal.
    """
    out = torch.empty(images.shape, dtype=torch.uint8, device=images.device)  # contiguous
    if images.numel() == 0:
        return out
    lut = lut.to(images.device)
    if images.device.type == "cpu":
        _apply_lut_cv2(images, lut, out)
    else:
        _apply_lut_torch(images, lut, out)
    return out


def _apply_lut_torch(images: torch.Tensor, lut: torch.Tensor, out: torch.Tensor) -> None:
    """``_apply_lut`` on any device into ``out``: a gather with ``index_select``."""
    tables = lut if lut.ndim == 1 else lut.reshape(images.shape[0], -1, 256)
    for sl in batch_slices(images):
        chunk = images[sl]
        if lut.ndim == 1:
            out[sl] = lut.index_select(0, chunk.reshape(-1).to(torch.int32)).view_as(chunk)
            continue
        rows = tables[sl].reshape(-1, 256)
        offsets = torch.arange(rows.shape[0], dtype=torch.int32, device=images.device) * 256
        idx = chunk.reshape(rows.shape[0], -1).to(torch.int32) + offsets[:, None]
        out[sl] = rows.reshape(-1).index_select(0, idx.reshape(-1)).view_as(chunk)


def _apply_lut_cv2(images: torch.Tensor, lut: torch.Tensor, out: torch.Tensor) -> None:
    """``_apply_lut`` on CPU into the contiguous ``out``: ``cv2.LUT`` on zero-copy 2-D views
    (``out``'s views are ``dst``, so cv2 writes into them without reallocating).

    One call over the whole batch for a shared table; otherwise one call per table (image or
    channel plane): a 224 px plane is large enough that the per-call overhead is small, and it
    is still several times faster than any batched torch gather.
    """
    match_cv2_threads()
    src = images.contiguous().numpy()
    dst = out.numpy()
    tables = lut.contiguous().numpy()
    if tables.ndim == 1:
        cv2.LUT(src.reshape(-1, src.shape[-1]), tables, dst=dst.reshape(-1, dst.shape[-1]))
        return
    rows = tables.reshape(-1, 256)
    planes = src.reshape(rows.shape[0], -1, src.shape[-1])
    out_planes = dst.reshape(planes.shape)
    for table, plane, out_plane in zip(rows, planes, out_planes, strict=True):
        cv2.LUT(plane, table, dst=out_plane)


def _levels(device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The 256 grey levels 0..255."""
    return torch.arange(256, dtype=dtype, device=device)


def _blend_lut(degenerate: torch.Tensor, factor: float, device: torch.device) -> torch.Tensor:
    """PIL ``Image.blend(degenerate, image, factor)`` as uint8 tables.

    Blend.c computes ``in1 + alpha * (in2 - in1)`` in float32 and truncates (clipping only
    when extrapolating, which ``clamp`` covers). ``degenerate`` is one integer level per row.
    """
    alpha = torch.tensor(factor, dtype=torch.float32, device=device)
    base = degenerate.to(torch.float32)[..., None]
    blended = (_levels(device) - base).mul_(alpha).add_(base)
    return blended.clamp_(0.0, 255.0).to(torch.uint8)


def brightness(images: torch.Tensor, factor: float) -> torch.Tensor:
    """MedMNIST-C brightness: ``PIL.ImageEnhance.Brightness(img).enhance(factor)``.

    A blend with black: ``trunc(factor * x)`` in float32, clipped to 255.
    """
    check_images(images)
    factor = check_real("factor", factor, low=0.0)
    zero = torch.zeros((), dtype=torch.int64, device=images.device)
    return _apply_lut(images, _blend_lut(zero, factor, images.device))


def contrast(images: torch.Tensor, factor: float) -> torch.Tensor:
    """MedMNIST-C contrast: ``PIL.ImageEnhance.Contrast(img).enhance(factor)``.

    A blend with a constant grey image whose level is ``int(mean + 0.5)`` of the image's PIL
    luminance (``convert('L')``); grey images are their own luminance.
    """
    check_images(images)
    factor = check_real("factor", factor, low=0.0)
    n, c, h, w = images.shape
    sums = torch.empty(n, dtype=torch.int64, device=images.device)
    for sl in batch_slices(images):
        luma = rgb_to_l(images[sl]) if c == 3 else images[sl]
        sums[sl] = luma.sum(dim=(1, 2, 3), dtype=torch.int64)
    means = torch.floor(sums.to(torch.float64) / (h * w) + 0.5).to(torch.int64)
    return _apply_lut(images, _blend_lut(means, factor, images.device))


@lru_cache(maxsize=64)
def _gamma_table(gamma_value: float) -> tuple[int, ...]:
    """torchvision's PIL gamma map, computed exactly as ``F_pil.adjust_gamma`` does."""
    gain = 1.0
    return tuple(int((255 + 1 - 1e-3) * gain * pow(e / 255.0, gamma_value)) for e in range(256))


def gamma(images: torch.Tensor, gamma: float) -> torch.Tensor:
    """MedMNIST-C gamma correction: ``torchvision adjust_gamma(PIL image, gamma, gain=1)``.

    The PIL path maps level ``x`` to ``int(255.999 * (x / 255) ** gamma)`` (a truncation).
    """
    check_images(images)
    value = check_real("gamma", gamma, low=0.0)
    lut = torch.tensor(_gamma_table(value), dtype=torch.uint8, device=images.device)
    return _apply_lut(images, lut)


def contrast_mean(images: torch.Tensor, c: float) -> torch.Tensor:
    """ImageNet-C contrast: ``clip((x - m) * c + m)`` with ``m`` each channel's mean, x in [0, 1].

    ImageNet-C takes ``np.mean(x, axis=(0, 1))`` of an H x W x C array: one mean per channel.
    Computed in float64 and truncated to uint8 like ``np.uint8(x * 255)``.
    """
    check_images(images)
    c = check_real("c", c, low=0.0)
    h, w = images.shape[-2:]
    means = images.sum(dim=(2, 3), dtype=torch.float64).div_(h * w).div_(255.0)[..., None]
    levels = _levels(images.device, torch.float64) / 255.0
    lut = to_uint8((levels - means) * c + means)
    return _apply_lut(images, lut)


def _rgb_to_hsv(x: torch.Tensor) -> _HSV:
    """``skimage.color.rgb2hsv`` of float64 images (N, 3, H, W), operation for operation."""
    r, g, b = x.unbind(1)
    v = torch.maximum(torch.maximum(r, g), b)
    delta = v - torch.minimum(torch.minimum(r, g), b)
    flat = delta == 0.0
    s = torch.where(flat, 0.0, delta / v)
    # skimage assigns red, then green, then blue maxima, so later ones win ties
    h = torch.where(
        b == v,
        4.0 + (r - g) / delta,
        torch.where(g == v, 2.0 + (b - r) / delta, (g - b) / delta),
    )
    h = torch.where(flat, 0.0, torch.remainder(h / 6.0, 1.0))
    return h, s, v


# hsv2rgb picks, per hue sector 0..5, which of (v, q, p, t) each of R, G, B takes
_SECTOR_PICKS = ((0, 1, 2, 2, 3, 0), (3, 0, 0, 1, 2, 2), (2, 2, 3, 0, 0, 1))


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``skimage.color.hsv2rgb`` of float64 (N, H, W) planes -> (N, 3, H, W)."""
    hi = torch.floor(h * 6)
    f = h * 6 - hi
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    sector = hi.to(torch.uint8).remainder_(6).to(torch.int64)
    picks = torch.tensor(_SECTOR_PICKS, dtype=torch.int64, device=h.device)
    candidates = torch.stack((v, q, p, t), dim=1)
    index = picks[:, sector].transpose(0, 1)
    return candidates.gather(1, index)


def _hsv_round_trip(images: torch.Tensor, adjust: _HsvAdjust) -> torch.Tensor:
    """uint8 RGB -> x / 255 -> rgb2hsv -> ``adjust`` -> hsv2rgb -> ``(x * 255).astype(uint8)``."""
    x = images.to(torch.float64) / 255.0
    return to_uint8(_hsv_to_rgb(*adjust(*_rgb_to_hsv(x))))


def _hsv_corrupt(images: torch.Tensor, adjust: _HsvAdjust) -> torch.Tensor:
    """Apply an HSV adjustment to RGB images; grey images go grey -> RGB -> adjust -> L."""
    if images.shape[1] == 1:
        ramp = torch.arange(256, dtype=torch.uint8, device=images.device).expand(1, 3, 1, 256)
        lut = rgb_to_l(_hsv_round_trip(ramp, adjust)).reshape(256)
        return _apply_lut(images, lut)
    out = torch.empty_like(images)
    for sl in batch_slices(images):
        out[sl] = _hsv_round_trip(images[sl], adjust)
    return out


def saturate(images: torch.Tensor, delta: float) -> torch.Tensor:
    """MedMNIST-C saturate: HSV saturation ``S = clip(S + delta, 0, 1)`` (scikit-image HSV).

    Grey pixels have S = 0 and hue 0 (red), so a positive ``delta`` tints them red; grey input
    therefore returns the reference's tinted image converted back with PIL ``convert('L')``.
    """
    check_images(images)
    delta = check_real("delta", delta)
    return _hsv_corrupt(images, lambda h, s, v: (h, (s + delta).clamp_(0.0, 1.0), v))


def brightness_hsv(images: torch.Tensor, delta: float) -> torch.Tensor:
    """ImageNet-C brightness: HSV value ``V = clip(V + delta, 0, 1)``; grey: ``clip(x + delta)``."""
    check_images(images)
    delta = check_real("delta", delta)
    return _hsv_corrupt(images, lambda h, s, v: (h, s, (v + delta).clamp_(0.0, 1.0)))


def saturate_hsv(images: torch.Tensor, param: tuple[float, float]) -> torch.Tensor:
    """ImageNet-C saturate: HSV saturation ``S = clip(S * a + b, 0, 1)`` for ``param = (a, b)``.

    Grey input follows grey -> RGB -> saturate -> ``convert('L')``: S = 0 becomes ``b``, so
    ``b > 0`` darkens grey levels through the red tint, as the reference's RGB output does.
    """
    check_images(images)
    a, b = check_tuple("saturate_hsv", param, ("a", "b"))
    a = check_real("a", a, low=0.0)
    b = check_real("b", b)
    return _hsv_corrupt(images, lambda h, s, v: (h, (s * a + b).clamp_(0.0, 1.0), v))
