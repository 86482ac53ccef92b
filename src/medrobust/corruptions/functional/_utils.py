"""Helpers shared by the corruption functions of this package.

Everything here is public within ``medrobust.corruptions.functional`` and is the one copy the
modules use (no module imports a private name from a sibling):

* validation: ``check_images``, ``check_rng``, ``check_real``, ``check_int``, ``check_tuple``,
  ``check_factor`` (errors say what was wrong and what is allowed);
* conversion: ``to_float``, ``to_uint8``, ``rgb_to_l`` (PIL's integer ``convert('L')``, with
  ``PIL_L_WEIGHTS``) and ``rgb_to_grey_cv2`` (OpenCV's float ``COLOR_RGB2GRAY``);
* exact integer sums: ``plane_sums`` (per channel plane) and ``l_sums`` (of PIL's L, per image);
* batching: ``chunk_length``, ``batch_slices``, ``map_chunks`` (cache-sized slices of a batch
  on CPU, the whole batch elsewhere; results do not depend on the slicing);
* borders and filters: ``border_index``, ``pad2d``, ``gaussian_taps``, ``filter_matrix``,
  ``separable_filter``, ``correlate1d``, ``gaussian_filter``;
* ``match_cv2_threads`` (OpenCV calls use torch's thread count) and ``run_chunks`` (chunks of
  NumPy / OpenCV work on torch's thread count);
* ``clipped_zoom`` (ImageNet-C's centre crop and bilinear zoom).

Border modes, named as in torch and OpenCV: ``reflect`` mirrors about the edge sample
(OpenCV BORDER_REFLECT_101), ``symmetric`` mirrors with the edge sample repeated (SciPy
``reflect``, OpenCV BORDER_REFLECT), ``replicate`` repeats the edge sample (SciPy ``nearest``),
``zeros`` pads with 0 (``pad2d`` only).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from numbers import Integral, Real

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from medrobust.corruptions._random import ImageRandom
from medrobust.corruptions._threads import run_chunks
from medrobust.data.datasets import check_images

__all__ = [
    "CPU_CHUNK_ELEMENTS",
    "PIL_L_WEIGHTS",
    "batch_slices",
    "border_index",
    "check_factor",
    "check_images",
    "check_int",
    "check_real",
    "check_rng",
    "check_tuple",
    "chunk_length",
    "clipped_zoom",
    "correlate1d",
    "filter_matrix",
    "gaussian_filter",
    "gaussian_taps",
    "l_sums",
    "map_chunks",
    "match_cv2_threads",
    "pad2d",
    "plane_sums",
    "rgb_to_grey_cv2",
    "rgb_to_l",
    "run_chunks",
    "separable_filter",
    "to_float",
    "to_uint8",
]

# Default CPU chunk: the float temporaries of about this many elements stay in cache; a whole
# 224 px batch at once is several times slower on CPU.
CPU_CHUNK_ELEMENTS = 1 << 17

# PIL's RGB -> L conversion (ITU-R 601-2 in 16-bit fixed point, rounded): Convert.c ``L24``.
PIL_L_WEIGHTS = (19595, 38470, 7471)
# OpenCV's COLOR_RGB2GRAY weights on float images (ITU-R 601-2).
_CV2_GREY_WEIGHTS = (0.299, 0.587, 0.114)

_INT32_MAX = 2**31 - 1
# ``l_sums`` chunk (elements): about 13 RGB images of 224 px per OpenCV call, where the calls'
# fixed cost stops mattering (measured: 1 image per call is 1.5x slower)
_L_SUM_CHUNK = 1 << 21

_BORDER_MODES = ("reflect", "symmetric", "replicate")
_CV2_BORDERS = {
    "reflect": cv2.BORDER_REFLECT_101,
    "symmetric": cv2.BORDER_REFLECT,
    "replicate": cv2.BORDER_REPLICATE,
}
_PAD_MODES = (*_BORDER_MODES, "zeros")


# ----------------------------------------------------------------------------- validation


def check_rng(rng: object, images: torch.Tensor) -> ImageRandom:
    """``rng``, checked to be an ``ImageRandom`` with one stream per image of ``images``."""
    if not isinstance(rng, ImageRandom):
        raise TypeError(f"rng must be an ImageRandom, got {type(rng).__name__}")
    if len(rng) != images.shape[0]:
        raise ValueError(f"rng has {len(rng)} streams for a batch of {images.shape[0]} images")
    return rng


def check_real(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """``value`` as a float, or a clear error unless it is a finite real number in range.

    ``low`` and ``high`` are inclusive bounds (``low`` exclusive when ``low_open``). NumPy
    scalars are real numbers; ``bool`` is not.
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x}")
    if low is not None and (x < low or (low_open and x == low)):
        bound = ">" if low_open else ">="
        raise ValueError(f"{name} must be {bound} {low}, got {x}")
    if high is not None and x > high:
        raise ValueError(f"{name} must be <= {high}, got {x}")
    return x


def check_int(name: str, value: object, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int, or a clear error unless it is an integer in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        if low is not None and high is not None:
            allowed = f"in {low}..{high}"
        else:
            allowed = f">= {low}" if low is not None else f"<= {high}"
        raise ValueError(f"{name} must be {allowed}, got {v}")
    return v


def check_tuple(name: str, param: object, fields: Sequence[str]) -> tuple:
    """``param`` as a tuple of ``len(fields)`` items, or a TypeError naming the fields.

    Only the arity is checked; each caller checks the items (``check_real``, ``check_int``).
    """
    if not isinstance(param, tuple | list) or len(param) != len(fields):
        raise TypeError(f"{name} param must be a tuple ({', '.join(fields)}), got {param!r}")
    return tuple(param)


def check_factor(factor: object) -> float:
    """A ``scale_<name>`` size factor: a finite number > 0."""
    return check_real("factor", factor, low=0.0, low_open=True)


# ----------------------------------------------------------------------------- conversion


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to float32 in [0, 1]."""
    return images.to(torch.float32).div_(255.0)


def to_uint8(x: torch.Tensor, rounding: str = "truncate") -> torch.Tensor:
    """Float images in [0, 1] (clipped) to uint8.

    ``truncate`` reproduces ``(x * 255).astype(np.uint8)`` of ImageNet-C and MedMNIST-C;
    ``round`` reproduces PIL and OpenCV, which round to nearest.
    """
    y = x.clamp(0.0, 1.0).mul(255.0)
    if rounding == "round":
        y = y.round_()
    elif rounding != "truncate":
        raise ValueError(f"rounding must be 'truncate' or 'round', got {rounding!r}")
    return y.to(torch.uint8)


def rgb_to_l(rgb: torch.Tensor) -> torch.Tensor:
    """PIL ``convert('L')`` of uint8 RGB images (N, 3, H, W) -> (N, 1, H, W), bit-exact.

    ITU-R 601-2 luma in 16-bit fixed point, rounded: what the reference pipelines' final
    grey conversion computes. Use ``rgb_to_grey_cv2`` where a reference converts floats.
    """
    x = rgb.to(torch.int32)
    wr, wg, wb = PIL_L_WEIGHTS
    luma = x[:, 0:1] * wr
    luma.add_(x[:, 1:2], alpha=wg).add_(x[:, 2:3], alpha=wb).add_(0x8000)
    return (luma >> 16).to(torch.uint8)


def plane_sums(images: torch.Tensor) -> torch.Tensor:
    """Exact int64 sums of the H x W planes of uint8 images (N, C, H, W) -> (N, C).

    On CPU one ``cv2.reduce`` into int32 (over 10x faster than a torch reduction of uint8),
    used while a plane's sum fits in int32; torch elsewhere.
    """
    n, c, h, w = images.shape
    if images.device.type != "cpu" or images.numel() == 0 or 255 * h * w > _INT32_MAX:
        return images.sum(dim=(2, 3), dtype=torch.int64)
    match_cv2_threads()
    return torch.from_numpy(_row_sums(images.contiguous().numpy().reshape(n * c, h * w))).view(n, c)


def l_sums(images: torch.Tensor) -> torch.Tensor:
    """Exact int64 sums of PIL ``convert('L')`` of uint8 images (N, C, H, W) -> (N,).

    Grey images (C = 1) are their own L. On CPU, RGB goes through OpenCV in float32, which is
    exact here: the weights ``w / 2**16`` and the rounding offset 1/2 are multiples of 2**-16,
    and so is every partial sum, below 256, so each needs at most 24 significant bits and no
    step rounds, whatever the evaluation order; L is then the truncation of the positive sum.
    About twice as fast as ``rgb_to_l`` plus a torch sum.
    """
    n, c, h, w = images.shape
    if c == 1:
        return plane_sums(images)[:, 0]
    if images.device.type != "cpu" or images.numel() == 0 or 255 * h * w > _INT32_MAX:
        lumas = (rgb_to_l(images[sl]) for sl in batch_slices(images))
        return torch.cat([luma.sum(dim=(1, 2, 3), dtype=torch.int64) for luma in lumas])
    match_cv2_threads()
    wr, wg, wb = (weight / 65536 for weight in PIL_L_WEIGHTS)
    planes = images.contiguous().numpy().reshape(n, 3, h * w)
    slices = batch_slices(images, _L_SUM_CHUNK)
    rows = slices[0].stop
    luma = np.empty((rows, h * w), dtype=np.float32)
    levels = np.empty((rows, h * w), dtype=np.uint8)
    sums = torch.empty(n, dtype=torch.int64)
    for sl in slices:
        k = sl.stop - sl.start
        y, l8 = luma[:k], levels[:k]
        cv2.addWeighted(planes[sl, 0], wr, planes[sl, 1], wg, 0.5, dst=y, dtype=cv2.CV_32F)
        cv2.addWeighted(y, 1.0, planes[sl, 2], wb, 0.0, dst=y, dtype=cv2.CV_32F)
        np.copyto(l8, y, casting="unsafe")  # truncation
        sums[sl] = torch.from_numpy(_row_sums(l8))
    return sums


def _row_sums(rows: np.ndarray) -> np.ndarray:
    """int64 sums of the rows of a 2-D uint8 array whose row sums fit in int32 (``cv2.reduce``)."""
    return cv2.reduce(rows, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S)[:, 0].astype(np.int64)


def rgb_to_grey_cv2(x: torch.Tensor) -> torch.Tensor:
    """OpenCV ``cvtColor(x, COLOR_RGB2GRAY)`` of float images (N, C, H, W) -> (N, 1, H, W).

    A grey image (C = 1) is weighted as three equal channels, so that it gets exactly what
    its RGB copy gets (the float32 weights do not sum to exactly 1).
    """
    red, green, blue = x.unbind(1) if x.shape[1] == 3 else (x[:, 0],) * 3
    wr, wg, wb = _CV2_GREY_WEIGHTS
    return (wr * red + wg * green + wb * blue)[:, None]


# ----------------------------------------------------------------------------- batching


def chunk_length(items: int, elements_per_item: int, chunk_elements: int) -> int:
    """How many of ``items`` to process together so that a chunk holds ~``chunk_elements``.

    At least 1, at most ``items``.
    """
    return min(items, max(1, chunk_elements // max(elements_per_item, 1)))


def batch_slices(
    x: torch.Tensor, chunk_elements: int = CPU_CHUNK_ELEMENTS, planes: int | None = None
) -> list[slice]:
    """Slices of the batch ``x`` (N, C, H, W) to process together.

    On CPU, chunks of about ``chunk_elements`` elements, counting ``planes`` H x W planes per
    image (the largest intermediate; default C), so that the working set stays in cache; on
    other devices the whole batch. Never empty: an empty batch gives ``[slice(0, 0)]``.
    """
    n = x.shape[0]
    if x.device.type != "cpu" or n == 0:
        return [slice(0, n)]
    per_image = x[0].numel() if planes is None else planes * x.shape[-2] * x.shape[-1]
    step = chunk_length(n, per_image, chunk_elements)
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def map_chunks(
    fn: Callable[..., torch.Tensor],
    x: torch.Tensor,
    *per_image: torch.Tensor,
    chunk_elements: int = CPU_CHUNK_ELEMENTS,
    planes: int | None = None,
) -> torch.Tensor:
    """``fn(x, *per_image)``, computed on the ``batch_slices`` of ``x`` and concatenated.

    ``per_image`` tensors (one row per image, e.g. random draws) are sliced alongside ``x``.
    ``fn`` must treat images independently, so that the result is the same as in one call.
    """
    n = x.shape[0]
    for t in per_image:
        if t.shape[0] != n:
            raise ValueError(f"per-image tensor has {t.shape[0]} rows for a batch of {n}")
    slices = batch_slices(x, chunk_elements, planes)
    if len(slices) == 1:
        return fn(x, *per_image)
    return torch.cat([fn(x[sl], *(t[sl] for t in per_image)) for sl in slices])


# ----------------------------------------------------------------------------- borders, filters


def _check_mode(mode: str, allowed: Sequence[str]) -> None:
    if mode not in allowed:
        raise ValueError(f"border mode must be one of {', '.join(allowed)}; got {mode!r}")


def border_index(idx: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """Map integer positions ``idx`` into ``[0, n)`` by the border ``mode``, at any distance.

    The reflections repeat periodically, as OpenCV's do, when the border is wider than the
    signal; a single sample (n = 1) is repeated in every mode.
    """
    _check_mode(mode, _BORDER_MODES)
    if mode == "replicate" or n == 1:
        return idx.clamp(0, n - 1)
    if mode == "symmetric":
        period = 2 * n
        m = idx.remainder(period)
        return torch.where(m < n, m, period - 1 - m)
    period = 2 * (n - 1)
    m = idx.remainder(period)
    return torch.where(m < n, m, period - m)


def pad2d(x: torch.Tensor, pad_h: int, pad_w: int, mode: str) -> torch.Tensor:
    """Pad the last two dims by ``pad_h`` rows / ``pad_w`` columns on each side, any width.

    ``F.pad``'s kernels where they apply (every width for ``replicate`` and ``zeros``,
    ``reflect`` narrower than the image), an index gather otherwise.
    """
    _check_mode(mode, _PAD_MODES)
    pad = (pad_w, pad_w, pad_h, pad_h)
    if mode == "zeros":
        return F.pad(x, pad)
    h, w = x.shape[-2:]
    if mode == "replicate" or (mode == "reflect" and pad_h < h and pad_w < w):
        return F.pad(x, pad, mode=mode)
    if pad_h:
        x = x.index_select(-2, border_index(torch.arange(-pad_h, h + pad_h, device=x.device), h, mode))
    if pad_w:
        x = x.index_select(-1, border_index(torch.arange(-pad_w, w + pad_w, device=x.device), w, mode))
    return x


def gaussian_taps(sigma: float, radius: int) -> torch.Tensor:
    """Normalised Gaussian taps ``exp(-(t / sigma)^2 / 2)``, t = -radius..radius, float64 on CPU.

    SciPy's ``gaussian_filter`` uses ``radius = int(truncate * sigma + 0.5)``, torchvision's
    ``gaussian_blur`` ``radius = kernel_size // 2``.
    """
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (t / sigma) ** 2)
    return taps / taps.sum()


def filter_matrix(taps: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """(n, n) float64 matrix M with (M @ v)[i] = sum_j taps[j] * v[border(i + j - r)].

    A 1-D correlation with an odd number of taps, its border folded in (``border_index``),
    so that a separable filter becomes two matrix products whatever the kernel length.
    """
    k = taps.numel()
    r = k // 2
    rows = torch.arange(n, device=taps.device)[:, None].expand(n, k)
    cols = border_index(rows + torch.arange(-r, k - r, device=taps.device)[None], n, mode)
    m = torch.zeros(n, n, dtype=torch.float64, device=taps.device)
    return m.index_put_((rows, cols), taps.to(torch.float64).expand(n, k), accumulate=True)


def match_cv2_threads() -> None:
    """Give OpenCV's thread pool ``torch.get_num_threads()`` threads (it defaults to every core),
    so that ``torch.set_num_threads`` bounds the OpenCV calls of the corruptions too."""
    threads = torch.get_num_threads()
    if cv2.getNumThreads() != threads:
        cv2.setNumThreads(threads)


def separable_filter(
    x: torch.Tensor, taps_h: torch.Tensor, taps_w: torch.Tensor | None, mode: str
) -> torch.Tensor:
    """Correlate every plane of float ``x`` (..., H, W) with ``taps_w`` along W, then ``taps_h``
    along H (``taps_w=None``: the same taps).

    On CPU, float32 planes go through ``cv2.sepFilter2D`` (SIMD, cost linear in the kernel
    length), one call per plane so that no plane's result depends on its batch. Elsewhere,
    and for kernels longer than the image, two products with ``filter_matrix``es (cost
    independent of the kernel length). The two agree to float32 rounding.
    """
    h, w = x.shape[-2:]
    taps_w = taps_h if taps_w is None else taps_w
    if (
        x.device.type == "cpu" and x.dtype == torch.float32 and mode in _CV2_BORDERS
        and taps_h.numel() // 2 < h and taps_w.numel() // 2 < w
    ):
        return _separable_filter_cv2(x, taps_h, taps_w, mode)
    # the matrices are built in float64 on CPU (MPS has no float64), then cast to x's dtype and
    # copied without blocking (pageable memory is staged at once: no device sync)
    mw = filter_matrix(taps_w.to("cpu", torch.float64), w, mode).to(x.dtype).to(x.device, non_blocking=True)
    mh = filter_matrix(taps_h.to("cpu", torch.float64), h, mode).to(x.dtype).to(x.device, non_blocking=True)
    return torch.matmul(mh, torch.matmul(x, mw.T))


def _separable_filter_cv2(
    x: torch.Tensor, taps_h: torch.Tensor, taps_w: torch.Tensor, mode: str
) -> torch.Tensor:
    match_cv2_threads()
    h, w = x.shape[-2:]
    planes = x.detach().contiguous().reshape(-1, h, w).numpy()
    out = np.empty_like(planes)
    kernel_x = taps_w.to("cpu", torch.float32).numpy()
    kernel_y = taps_h.to("cpu", torch.float32).numpy()
    border = _CV2_BORDERS[mode]
    for plane, result in zip(planes, out, strict=True):
        cv2.sepFilter2D(plane, -1, kernel_x, kernel_y, dst=result, borderType=border)
    return torch.from_numpy(out).reshape(x.shape)


def correlate1d(x: torch.Tensor, taps: Sequence[float], dim: int, mode: str) -> torch.Tensor:
    """Correlate float ``x`` along ``dim`` (-1 or -2) with an odd number of ``taps``, size kept.

    A sum of shifted copies in the taps' order: each pixel's arithmetic does not depend on
    the batch (convolution backends pick different kernels for different plane counts, whose
    rounding differs), and for short kernels it is as fast as a depthwise convolution.
    """
    if dim not in (-1, -2):
        raise ValueError(f"dim must be -1 or -2, got {dim}")
    size, r = x.shape[dim], len(taps) // 2
    padded = pad2d(x, r, 0, mode) if dim == -2 else pad2d(x, 0, r, mode)
    out = padded.narrow(dim, 0, size) * taps[0]
    for i, tap in enumerate(taps[1:], 1):
        if tap:
            out.add_(padded.narrow(dim, i, size), alpha=tap)
    return out


def gaussian_filter(
    x: torch.Tensor,
    sigma: float | tuple[float, float],
    *,
    truncate: float = 4.0,
    mode: str = "replicate",
    method: str = "matmul",
) -> torch.Tensor:
    """``scipy.ndimage.gaussian_filter`` over the last two dims of float ``x``.

    ``sigma`` is one value or ``(sigma_h, sigma_w)``; an axis with sigma 0 is left as it is.
    Taps reach ``int(truncate * sigma + 0.5)``; the defaults are ``skimage.filters.gaussian``'s
    (mode 'nearest' = ``replicate``, truncate 4). ``method`` picks the arithmetic: ``matmul``
    (``separable_filter``: OpenCV on CPU, matrix products elsewhere) or ``shifts``
    (``correlate1d`` with float32 taps). The two agree to float32 rounding.
    """
    sigma_h, sigma_w = (sigma, sigma) if isinstance(sigma, Real) else sigma
    if method == "matmul":
        if sigma_h == 0 and sigma_w == 0:
            return x
        taps = [
            gaussian_taps(s, int(truncate * s + 0.5)) if s > 0 else torch.ones(1, dtype=torch.float64)
            for s in (sigma_h, sigma_w)
        ]
        return separable_filter(x, taps[0], taps[1], mode)
    if method != "shifts":
        raise ValueError(f"method must be 'shifts' or 'matmul', got {method!r}")
    for dim, s in ((-1, sigma_w), (-2, sigma_h)):
        if s > 0:
            taps = gaussian_taps(s, int(truncate * s + 0.5)).to(torch.float32).tolist()
            x = correlate1d(x, taps, dim, mode)
    return x


def clipped_zoom(x: torch.Tensor, zoom: float, trim: bool = True) -> torch.Tensor:
    """ImageNet-C ``clipped_zoom`` of float images: centre crop ``ceil(size / zoom)``, then
    ``scipy.ndimage.zoom(order=1)`` to ``round(crop * zoom)``, then (``trim``) centre trim to
    the input size. Snow uses the untrimmed output (``trim=False``, >= the input size).

    SciPy maps output o to input ``o (in - 1) / (out - 1)``: ``align_corners=True`` bilinear.
    """
    h, w = x.shape[-2:]
    crop_h, crop_w = math.ceil(h / zoom), math.ceil(w / zoom)
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    out_h, out_w = round(crop_h * zoom), round(crop_w * zoom)
    crop = x[..., top : top + crop_h, left : left + crop_w]
    zoomed = F.interpolate(crop, size=(out_h, out_w), mode="bilinear", align_corners=True)
    if not trim:
        return zoomed
    trim_h, trim_w = (out_h - h) // 2, (out_w - w) // 2
    return zoomed[..., trim_h : trim_h + h, trim_w : trim_w + w]
