"""Colour and tone corruptions of MedMNIST-C (PIL / torchvision / scikit-image) and ImageNet-C.

Every function reproduces its reference's arithmetic, rounding and quantisation exactly:

* ``brightness`` and ``contrast`` are ``PIL.ImageEnhance`` (``Image.blend`` in float32, truncated);
* ``gamma`` is torchvision's ``adjust_gamma`` on a PIL image (a 256-entry table);
* ``saturate``, ``brightness_hsv`` and ``saturate_hsv`` share one float64 port of
  ``skimage.color.rgb2hsv``/``hsv2rgb``, quantised as ``(x * 255).astype(uint8)``, with what
  depends only on a pixel's max and min levels tabulated (``_hsv_round_trip``);
* ``contrast_mean`` is ImageNet-C ``contrast`` (per-channel mean, float64, truncated).

Pointwise maps of a uint8 image are built as lookup tables with the reference's own float
arithmetic, so they are exact. On CPU a table that is a rounded affine map of the level (most
brightness and contrast tables) is applied by one OpenCV ``convertScaleAbs`` or ``addWeighted``
pass, about twice as fast as ``cv2.LUT``: its parameters are fitted to the table and kept only
once they reproduce it for every level on every OpenCV code path (``_affine_map``); other tables
go through ``cv2.LUT``. Grey (C = 1) input gives the reference's grey -> RGB -> corrupt ->
``convert('L')`` result: for the hue-based corruptions, which tint grey pixels, that result is
computed once per grey level through the RGB path.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import NamedTuple

import cv2
import numpy as np
import torch

from medrobust.corruptions.functional._utils import (
    batch_slices,
    check_images,
    check_real,
    check_tuple,
    l_sums,
    map_chunks,
    match_cv2_threads,
    plane_sums,
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

# an HSV corruption changes saturation and value, never hue: (s, v) -> (s', v') on float64
_HsvAdjust = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _apply_lut(images: torch.Tensor, lut: torch.Tensor, slope: float | None = None) -> torch.Tensor:
    """Map uint8 ``images`` (N, C, H, W) through uint8 tables of 256 entries.

    ``lut`` is (256,) for the whole batch, (N, 256) per image or (N, C, 256) per channel.
    CPU tensors go through OpenCV: one affine pass where a table is a rounded affine map with a
    slope near ``slope`` (``_affine_map``; None: never), ``cv2.LUT`` otherwise (SIMD, several
    times faster than a torch gather); other devices through ``index_select``. All are exact,
    so the results are equal.
    """
    out = torch.empty(images.shape, dtype=torch.uint8, device=images.device)  # contiguous
    if images.numel() == 0:
        return out
    lut = lut.to(images.device, non_blocking=True)  # from the host: no sync (staged at once)
    if images.device.type == "cpu":
        _apply_lut_cv2(images, lut, out, slope)
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


def _apply_lut_cv2(
    images: torch.Tensor, lut: torch.Tensor, out: torch.Tensor, slope: float | None
) -> None:
    """``_apply_lut`` on CPU into the contiguous ``out``: one OpenCV call per table on zero-copy
    2-D views (``out``'s views are ``dst``, so cv2 writes into them without reallocating).

    A shared table is one call over the whole batch; otherwise one call per table (image or
    channel plane): a 224 px plane is large enough that the per-call overhead is small.
    """
    match_cv2_threads()
    src = images.contiguous().numpy()
    rows = lut.contiguous().numpy().reshape(-1, 256)
    planes = src.reshape(rows.shape[0], -1, src.shape[-1])
    out_planes = out.numpy().reshape(planes.shape)
    for table, plane, out_plane in zip(rows, planes, out_planes, strict=True):
        affine = None if slope is None else _affine_map(table.tobytes(), slope)
        if affine is None:
            cv2.LUT(plane, table, dst=out_plane)
        else:
            affine.apply(plane, out_plane)


class _AffineMap(NamedTuple):
    """``saturate(round(alpha * x + beta))`` of uint8 ``x`` as one OpenCV pass (float32 inside).

    ``absolute``: ``convertScaleAbs`` (the faster; it takes ``|alpha * x + beta|``, so it is only
    used where that is above -1/2 for every level), else ``addWeighted``.
    """

    absolute: bool
    alpha: float
    beta: float

    def apply(self, src: np.ndarray, dst: np.ndarray | None = None) -> np.ndarray:
        if self.absolute:
            return cv2.convertScaleAbs(src, dst=dst, alpha=self.alpha, beta=self.beta)
        return cv2.addWeighted(src, self.alpha, src, 0.0, self.beta, dst=dst)


_X = np.arange(256, dtype=np.float64)
# how far (relative) from the nominal slope, and how finely, ``_fit_affine`` searches
_SLOPE_SEARCH = 1.0 / 32
_SEARCH_STEPS = 40


def _rounding_tolerance(alpha: float, beta: float) -> float:
    """A bound, 4x over, on how far OpenCV's float32 ``alpha * x + beta`` strays from the exact
    value for x <= 255: ``alpha`` and ``beta`` rounded to float32, then one or two roundings."""
    return 2.0**-20 * (256 * abs(alpha) + abs(beta) + 1)


def _beta_fit(bounds: tuple[np.ndarray, np.ndarray], alpha: float) -> tuple[float, float, float]:
    """The best offset for slope ``alpha``: ``(beta, margin, d(margin)/d(alpha))``.

    ``bounds`` are, per level x, ``low <= alpha * x + beta <= high`` (the table's value -/+ 1/2,
    open-ended at 0 and 255, which saturation reaches from beyond). ``beta`` is centred in the
    feasible range and keeps ``margin`` to its ends (negative: no offset fits).
    """
    low, high = bounds
    lows = low - alpha * _X
    highs = high - alpha * _X
    i, j = int(lows.argmax()), int(highs.argmin())
    lo, hi = float(lows[i]), float(highs[j])
    if np.isinf(lo) or np.isinf(hi):  # a constant 0 or 255 table
        lo, hi = (hi - 1.0, hi) if np.isinf(lo) else (lo, lo + 1.0)
        return (lo + hi) / 2, 0.5, 0.0
    return (lo + hi) / 2, (hi - lo) / 2, (i - j) / 2


def _fit_affine(table: np.ndarray, slope: float) -> tuple[float, float, float]:
    """``(alpha, beta, margin)`` of the affine map whose rounding gives ``table`` with the widest
    margin, ``alpha`` near ``slope``.

    ``slope`` itself first (where its margin is enough, as for most tables); otherwise the
    margin, concave in ``alpha``, is maximised by bisecting on its slope: float32 reference
    arithmetic can put a level just below an integer, which a slightly different slope absorbs.
    """
    t = table.astype(np.float64)
    bounds = (np.where(t > 0, t - 0.5, -np.inf), np.where(t < 255, t + 0.5, np.inf))
    beta, margin, _ = _beta_fit(bounds, slope)
    if margin >= _rounding_tolerance(slope, beta):
        return slope, beta, margin
    width = _SLOPE_SEARCH * max(1.0, abs(slope))
    lo, hi = slope - width, slope + width
    for _ in range(_SEARCH_STEPS):
        mid = (lo + hi) / 2
        if _beta_fit(bounds, mid)[2] > 0:
            lo = mid
        else:
            hi = mid
    alpha = (lo + hi) / 2
    beta, margin, _ = _beta_fit(bounds, alpha)
    return alpha, beta, margin


@lru_cache(maxsize=1)
def _calibration_inputs() -> tuple[np.ndarray, ...]:
    """uint8 arrays that send every level through every path of OpenCV's element loops.

    A long contiguous array (the SIMD body; also any size-dependent dispatch), rows of 127
    with each level at each position (the body and every tail: half vectors, the unrolled and
    the scalar loop) and rows of one element (scalar only).
    """
    levels = np.arange(256, dtype=np.uint8)
    shifted = np.zeros((256, 128), dtype=np.uint8)
    shifted[:, :127] = (levels[:, None] + np.arange(127)) % 256
    return np.tile(levels, (256, 1)), shifted[:, :127], shifted[:, :1]


@lru_cache(maxsize=8192)
def _affine_map(table: bytes, slope: float) -> _AffineMap | None:
    """One OpenCV pass that reproduces the 256-entry uint8 ``table`` exactly, or None.

    Fitted with a slope near ``slope`` (``_fit_affine``) and kept only with a margin above
    float32 rounding and after it gives the table's bytes on every ``_calibration_inputs``
    array: the OpenCV build in use is checked, not assumed. Cached: contrast tables repeat.
    """
    levels = np.frombuffer(table, dtype=np.uint8)
    alpha, beta, margin = _fit_affine(levels, slope)
    tolerance = _rounding_tolerance(alpha, beta)
    if margin < tolerance:
        return None
    candidates = [_AffineMap(False, alpha, beta)]
    if min(beta, 255 * alpha + beta) > tolerance - 0.5:  # |value| rounds as the value does
        candidates.insert(0, _AffineMap(True, alpha, beta))
    inputs = _calibration_inputs()
    expected = [cv2.LUT(x, levels) for x in inputs]
    for candidate in candidates:
        outputs = (candidate.apply(x) for x in inputs)
        if all(np.array_equal(y, e) for y, e in zip(outputs, expected, strict=True)):
            return candidate
    return None


def _levels(device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The 256 grey levels 0..255."""
    return torch.arange(256, dtype=dtype, device=device)


def _blend_lut(degenerate: torch.Tensor, factor: float, device: torch.device) -> torch.Tensor:
    """PIL ``Image.blend(degenerate, image, factor)`` as uint8 tables.

    Blend.c computes ``in1 + alpha * (in2 - in1)`` in float32 and truncates (clipping only
    when extrapolating, which ``clamp`` covers). ``degenerate`` is one integer level per row.
    """
    alpha = torch.tensor(factor, dtype=torch.float32).to(device, non_blocking=True)
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
    return _apply_lut(images, _blend_lut(zero, factor, images.device), slope=factor)


def contrast(images: torch.Tensor, factor: float) -> torch.Tensor:
    """MedMNIST-C contrast: ``PIL.ImageEnhance.Contrast(img).enhance(factor)``.

    A blend with a constant grey image whose level is ``int(mean + 0.5)`` of the image's PIL
    luminance (``convert('L')``); grey images are their own luminance.
    """
    check_images(images)
    factor = check_real("factor", factor, low=0.0)
    h, w = images.shape[-2:]
    means = torch.floor(l_sums(images).to(torch.float64) / (h * w) + 0.5).to(torch.int64)
    return _apply_lut(images, _blend_lut(means, factor, images.device), slope=factor)


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
    lut = torch.tensor(_gamma_table(value), dtype=torch.uint8)
    return _apply_lut(images, lut)


def contrast_mean(images: torch.Tensor, c: float) -> torch.Tensor:
    """ImageNet-C contrast: ``clip((x - m) * c + m)`` with ``m`` each channel's mean, x in [0, 1].

    ImageNet-C takes ``np.mean(x, axis=(0, 1))`` of an H x W x C array: one mean per channel.
    Computed in float64 and truncated to uint8 like ``np.uint8(x * 255)``.
    """
    check_images(images)
    c = check_real("c", c, low=0.0)
    h, w = images.shape[-2:]
    means = plane_sums(images).to(torch.float64).div_(h * w).div_(255.0)[..., None]
    levels = _levels(images.device, torch.float64) / 255.0
    lut = to_uint8((levels - means) * c + means)
    return _apply_lut(images, lut, slope=c)


# hsv2rgb picks, per hue sector 0..5, which of (v, q, p, t) each of R, G, B takes; sector 6
# (``floor(h * 6)`` of an h that rounds up to 6) is sector 0, as skimage's ``% 6`` makes it
_SECTOR_PICKS = ((0, 1, 2, 2, 3, 0, 0), (3, 0, 0, 1, 2, 2, 3), (2, 2, 3, 0, 0, 1, 2))


class _HsvTables(NamedTuple):
    """Everything of the HSV round trip that depends only on (max level, min level) of a pixel,
    flattened over ``max * 256 + min`` (``difference`` over any two levels ``a * 256 + b``)."""

    difference: torch.Tensor  # float64 ``a / 255 - b / 255``: skimage's channel differences
    saturation: torch.Tensor  # float64 adjusted S
    value: torch.Tensor  # float64 adjusted V
    fixed: torch.Tensor  # int32 ``trunc(255 V') | trunc(255 p) << 16``, the outputs v and p
    shifts: torch.Tensor  # int32 (3, 7): bit offset of each channel's pick in a packed pixel


def _hsv_tables(adjust: _HsvAdjust, device: torch.device) -> _HsvTables:
    """``skimage.color.rgb2hsv`` S and V per (max, min), adjusted; hsv2rgb's p and V' quantised."""
    levels = _levels(device, torch.float64) / 255.0
    top = levels[:, None].expand(256, 256)
    delta = top - levels[None, :]
    saturation = torch.where(delta == 0.0, 0.0, delta / top).nan_to_num_(nan=0.0)
    saturation, value = adjust(saturation, top)
    value = value.expand(256, 256)
    fixed = (
        to_uint8(value).to(torch.int32) | to_uint8(value * (1 - saturation)).to(torch.int32) << 16
    )
    shifts = torch.tensor(_SECTOR_PICKS, dtype=torch.int32).to(device, non_blocking=True) * 8
    return _HsvTables(
        delta.reshape(-1), saturation.reshape(-1), value.reshape(-1), fixed.reshape(-1), shifts
    )


def _hsv_round_trip(images: torch.Tensor, tables: _HsvTables) -> torch.Tensor:
    """uint8 RGB -> x / 255 -> rgb2hsv -> adjust -> hsv2rgb -> ``(x * 255).astype(uint8)``.

    Bit-exact to scikit-image's float64 arithmetic, operation for operation, but only the hue
    and the middle channel are computed per pixel: V and S depend on the pixel's max and min
    levels alone, and hsv2rgb gives the max channel V' and the min channel p, both tabulated.
    The hue numerator follows skimage's assignment order (blue, then green, then red wins).
    """
    r, g, b = images.unbind(1)
    top = torch.maximum(torch.maximum(r, g), b)
    bottom = torch.minimum(torch.minimum(r, g), b)
    blue_max = b == top
    green_max = (g == top).logical_and_(~blue_max)
    red_max = ~(blue_max | green_max)
    # hue numerator: red max (g - b) / delta, green 2 + (b - r) / delta, blue 4 + (r - g) / delta
    first = (g * red_max).add_(b * green_max).add_(r * blue_max).to(torch.int32)
    second = (b * red_max).add_(r * green_max).add_(g * blue_max).to(torch.int32)
    extremes = top.to(torch.int32).mul_(256).add_(bottom).view(-1)
    hue = tables.difference.index_select(0, first.mul_(256).add_(second).view(-1)).view(r.shape)
    hue = hue.div_(tables.difference.index_select(0, extremes).view(r.shape))
    hue = hue.add_(green_max.to(torch.uint8).mul_(2).add_(blue_max.to(torch.uint8).mul_(4)))
    hue = hue.div_(6.0)
    # (x % 1.0) for -1 < x < 1 as NumPy computes it; NaN (delta == 0) is hue 0
    hue = hue.add_(hue < 0).nan_to_num_(nan=0.0)
    hue6 = hue.mul_(6)
    sector = torch.floor(hue6)
    f = hue6.sub_(sector)
    s = tables.saturation.index_select(0, extremes).view(r.shape)
    v = tables.value.index_select(0, extremes).view(r.shape)
    q = v * (1 - f * s)
    t = v.mul_(1 - (1 - f).mul_(s))
    # pack the four candidates (v, q, p, t) as bytes 0..3; each channel shifts its pick down
    packed = tables.fixed.index_select(0, extremes).view(r.shape)
    packed |= q.mul_(255).to(torch.int32) << 8
    packed |= t.mul_(255).to(torch.int32) << 24
    sector = sector.to(torch.int32).view(-1)
    out = torch.empty_like(images)
    for channel, shifts in enumerate(tables.shifts):
        out[:, channel] = (packed >> shifts.index_select(0, sector).view(r.shape)).bitwise_and_(255)
    return out


def _hsv_corrupt(images: torch.Tensor, adjust: _HsvAdjust) -> torch.Tensor:
    """Apply an HSV adjustment to RGB images; grey images go grey -> RGB -> adjust -> L."""
    tables = _hsv_tables(adjust, images.device)
    if images.shape[1] == 1:
        ramp = torch.arange(256, dtype=torch.uint8, device=images.device).expand(1, 3, 1, 256)
        lut = rgb_to_l(_hsv_round_trip(ramp, tables)).reshape(256)
        return _apply_lut(images, lut)
    return map_chunks(lambda part: _hsv_round_trip(part, tables), images)


def saturate(images: torch.Tensor, delta: float) -> torch.Tensor:
    """MedMNIST-C saturate: HSV saturation ``S = clip(S + delta, 0, 1)`` (scikit-image HSV).

    Grey pixels have S = 0 and hue 0 (red), so a positive ``delta`` tints them red; grey input
    therefore returns the reference's tinted image converted back with PIL ``convert('L')``.
    """
    check_images(images)
    delta = check_real("delta", delta)
    return _hsv_corrupt(images, lambda s, v: ((s + delta).clamp_(0.0, 1.0), v))


def brightness_hsv(images: torch.Tensor, delta: float) -> torch.Tensor:
    """ImageNet-C brightness: HSV value ``V = clip(V + delta, 0, 1)``; grey: ``clip(x + delta)``."""
    check_images(images)
    delta = check_real("delta", delta)
    return _hsv_corrupt(images, lambda s, v: (s, (v + delta).clamp_(0.0, 1.0)))


def saturate_hsv(images: torch.Tensor, param: tuple[float, float]) -> torch.Tensor:
    """ImageNet-C saturate: HSV saturation ``S = clip(S * a + b, 0, 1)`` for ``param = (a, b)``.

    Grey input follows grey -> RGB -> saturate -> ``convert('L')``: S = 0 becomes ``b``, so
    ``b > 0`` darkens grey levels through the red tint, as the reference's RGB output does.
    """
    check_images(images)
    a, b = check_tuple("saturate_hsv", param, ("a", "b"))
    a = check_real("a", a, low=0.0)
    b = check_real("b", b)
    return _hsv_corrupt(images, lambda s, v: ((s * a + b).clamp_(0.0, 1.0), v))
