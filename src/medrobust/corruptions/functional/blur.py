"""Blur corruptions: defocus, motion, zoom, Gaussian (two parameterisations) and glass blur.

Each function reproduces one reference (ImageNet-C / ``imagecorruptions``, MedMNIST-C
``medmnistc``, ImageMagick) on batched uint8 tensors, on the device of the input.
Filters whose cost would grow with the kernel are applied in a size-independent way:
separable filters as two matrix products with the border folded into the matrices (OpenCV
on CPU), the defocus disk as exact box sums from an integral image on CPU (by FFT elsewhere),
motion blur as a weighted sum of shifted copies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import NamedTuple

import cv2
import numpy as np
import torch

from medrobust.corruptions._random import ImageRandom
from medrobust.corruptions.functional._utils import (
    check_factor,
    check_images,
    check_int,
    check_real,
    check_rng,
    check_tuple,
    clipped_zoom,
    filter_matrix,
    gaussian_filter,
    gaussian_taps,
    map_chunks,
    match_cv2_threads,
    pad2d,
    run_chunks,
    separable_filter,
    to_float,
    to_uint8,
)

__all__ = [
    "apply_motion_blur",
    "defocus_blur",
    "gaussian_blur",
    "gaussian_blur_kernel",
    "glass_blur",
    "motion_blur",
    "motion_kernels",
    "scale_defocus_blur",
    "scale_gaussian_blur",
    "scale_gaussian_blur_kernel",
    "scale_glass_blur",
    "scale_motion_blur",
    "zoom_blur",
    "zoom_factors",
]

# On CPU, large batches are processed a few images at a time: with the working set in cache
# the filters run 2-3x faster per image than on a 64-image batch. Results do not change.
_CPU_CHUNK_ELEMENTS = 1 << 19
# defocus on CPU: padded plane elements per chunk; the int32 integral image of a chunk holds
# at most 255 x that, so a larger plane goes to the FFT
_DISK_CHUNK_ELEMENTS = 1 << 18
_DISK_MAX_ELEMENTS = (1 << 31) // 255
# defocus ties (results that are exact integers): an absolute nudge for the unblurred disk,
# whose results are multiples of 1/count, and a relative one above float32 rounding otherwise
_IDENTITY_TIE = 2.0**-12
_FLOAT_TIE = 2.0**-23


# ----------------------------------------------------------------------------- FFT correlation


def _fast_len(n: int) -> int:
    """Smallest m >= n whose prime factors are 2, 3 and 5 (fast FFT sizes)."""
    m = n
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def _fft_correlator(
    kernel: torch.Tensor, h: int, w: int, mode: str
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function correlating every channel of float (N, C, h, w) images with one odd kernel.

    Same result as ``cv2.filter2D`` with the given border; an FFT keeps the cost
    independent of the kernel size (a 17x17 direct convolution is 3x slower on CPU).
    """
    kh, kw = kernel.shape
    size = (_fast_len(h + kh - 1), _fast_len(w + kw - 1))
    kernel_spectrum = torch.fft.rfft2(kernel.flip(0, 1), s=size)

    def correlate(x: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.rfft2(pad2d(x, kh // 2, kw // 2, mode), s=size)
        y = torch.fft.irfft2(spectrum * kernel_spectrum, s=size)
        return y[..., kh - 1 : kh - 1 + h, kw - 1 : kw - 1 + w]

    return correlate


# ----------------------------------------------------------------------------- defocus


def _cv2_gaussian_taps(ksize: int, sigma: float) -> torch.Tensor:
    """``cv2.getGaussianKernel(ksize, sigma)`` in float64 (fixed binomial taps when sigma <= 0)."""
    if sigma <= 0:
        fixed = {3: [0.25, 0.5, 0.25], 5: [0.0625, 0.25, 0.375, 0.25, 0.0625]}
        return torch.tensor(fixed[ksize], dtype=torch.float64)
    return gaussian_taps(sigma, ksize // 2)


def _disk(radius: float, alias_sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet-C ``disk()``'s 0/1 disk (float64, odd square) and its anti-alias taps.

    For radius > 8 the reference's grid is ``arange(-radius, radius + 1)``, off-centre (even
    sized) for a fractional radius; the grid here is -ceil(radius)..ceil(radius), the same
    for integer radii.
    """
    if radius <= 8:
        half, ksize = 8, 3
    else:
        half, ksize = math.ceil(radius), 5
    grid = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((grid[None] ** 2 + grid[:, None] ** 2) <= radius**2).to(torch.float64)
    return disk, _cv2_gaussian_taps(ksize, alias_sigma)


def _disk_kernel(radius: float, alias_sigma: float) -> torch.Tensor:
    """ImageNet-C ``disk()``: a normalised aliased disk, then ``cv2.GaussianBlur`` of it."""
    disk, taps = _disk(radius, alias_sigma)
    m = filter_matrix(taps, disk.shape[0], "reflect")
    return m @ (disk / disk.sum()) @ m.T


class _DiskSums(NamedTuple):
    """The defocus correlation as exact integer box sums of the image (the CPU path).

    The kernel is K = M D M^T / count: D the 0/1 disk, M the anti-alias blur g (reflect-101
    at the kernel's edge). While the disk stays clear of that edge, K = (g x g) * D / count:
    the image summed over D, then blurred by g. D is nested centred rectangles, so its sums
    are a few lookups in an integral image: about four array operations per distinct width
    of the disk whatever its size, exact in integers (uint16, modulo 2**16: every sum is
    below 255 count < 2**16), then the blur in float32.
    """

    pad: int  # the reflect-101 border the sums read
    rings: tuple[tuple[int, int], ...]  # D's rectangles: (half-height, half-width), widest first
    taps: np.ndarray | None  # float32 g; None when the anti-alias blur is the identity
    taps_y: np.ndarray | None  # float32 g / count, tie bias included
    count: int  # pixels in the disk
    offset: float  # added before rounding to uint8: about -1/2, so that rounding truncates


def _reference_kernel_sum(disk: torch.Tensor, taps: torch.Tensor, alias_sigma: float) -> float:
    """Sum of the reference's float32 kernel (``cv2.GaussianBlur`` of the float32 disk)."""
    aliased = disk.numpy().astype(np.float32)
    aliased /= aliased.sum()
    ksize = (taps.numel(), taps.numel())
    return float(cv2.GaussianBlur(aliased, ksize, sigmaX=alias_sigma).astype(np.float64).sum())


def _half_widths(rows: np.ndarray) -> list[int] | None:
    """Half-width of each row of a 0/1 matrix (-1: empty); None unless all are centred intervals."""
    centre = rows.shape[1] // 2
    widths = [int(r.sum()) // 2 if r.any() else -1 for r in rows]
    offsets = np.abs(np.arange(rows.shape[1]) - centre)
    if any(not np.array_equal(r, offsets <= w) for r, w in zip(rows, widths, strict=True)):
        return None
    return widths


@lru_cache(maxsize=64)
def _disk_sums(radius: float, alias_sigma: float) -> _DiskSums | None:
    """The ``_DiskSums`` plan of a defocus kernel, or None where the FFT is the better path.

    That is where the disk reaches the anti-alias blur's reflection at the kernel's edge
    (radius 7 and up for the 17 x 17 kernel; always beyond 8): the terms that border adds
    cost as much as they save (measured at (8, 0.5): 16% faster on one thread, 10% slower on
    two); and, as a safeguard, for a disk that is not nested centred rectangles.
    """
    disk, taps = _disk(radius, alias_sigma)
    d = disk.numpy().astype(bool)
    n, s = d.shape[0], taps.numel() // 2
    widths = _half_widths(d)
    count = int(d.sum())
    if 255 * count >= 1 << 16 or widths is None or _half_widths(d.T) != widths:
        return None
    g = taps.numpy()
    identity = g[s] == 1.0  # sigma << 1: the other taps are below float64 resolution
    if identity:
        g, s = np.ones(1), 0
    plain = np.zeros((n + 2 * s, n))  # full correlation with g, no border
    for a in range(n):
        plain[a : a + 2 * s + 1, a] = g
    edge = -plain
    edge[s : s + n] += filter_matrix(torch.from_numpy(g), n, "reflect").numpy()
    if (edge @ d).any():
        return None
    # ties: a result that is an exact integer truncates to v - 1 in the reference when its
    # float32 kernel sums to less than ours (flat regions; any result for an unblurred disk)
    tie_down = _reference_kernel_sum(disk, taps, alias_sigma) < float(
        _disk_kernel(radius, alias_sigma).sum()
    )
    sign = -1.0 if tie_down else 1.0
    h = n // 2
    rows = [abs(a - h) for a in range(n)]
    rings = tuple(  # for each distinct width: the rows that reach it
        (max(r for r, w in zip(rows, widths, strict=True) if w >= wd), wd)
        for wd in sorted({w for w in widths if w >= 0}, reverse=True)
    )
    return _DiskSums(
        pad=max(max(y, w) for y, w in rings) + s,
        rings=rings,
        taps=None if identity else g.astype(np.float32),
        taps_y=None if identity else (g * (1.0 + sign * _FLOAT_TIE) / count).astype(np.float32),
        count=count,
        offset=-0.5 + sign * _IDENTITY_TIE if identity else -0.5,
    )


def _disk_correlate(planes: np.ndarray, plan: _DiskSums) -> np.ndarray:
    """The defocus correlation of uint8 planes (P, H, W) in grey levels, tie bias included.

    Returns a float32 grid (P, H + 2 pad, W + 2 pad + 1) in the padded planes' layout: the
    result of plane p is ``grid[p, pad : pad + H, pad : pad + W]``. Every box sum is a
    difference of integral-image entries at fixed offsets of the flattened table: one
    vectorised operation per term, for all planes at once.
    """
    count, h, w = planes.shape
    pad = plan.pad
    s = 0 if plan.taps is None else len(plan.taps) // 2
    hp, wp = h + 2 * pad, w + 2 * pad
    ws = wp + 1  # row stride of the integral image
    padded = np.empty((count, hp, wp), np.uint8)
    for plane, dst in zip(planes, padded, strict=True):
        cv2.copyMakeBorder(plane, pad, pad, pad, pad, cv2.BORDER_REFLECT_101, dst=dst)
    table = cv2.integral(padded.reshape(count * hp, wp), sdepth=cv2.CV_32S)
    sums = table.astype(np.uint16).reshape(-1)
    # the flat positions of every result the blur reads: a margin s around each plane
    first = (pad - s) * ws + pad - s
    n = ((count - 1) * hp + pad + h + s - 1) * ws + pad + w + s - first
    grid = _flat_grid(sums.dtype, (count * hp + 1) * ws, first, n)
    disk = grid[first : first + n]
    widest = plan.rings[0][1]
    previous = None
    for i, (half_height, half_width) in enumerate(plan.rings):
        runs = _column_runs(sums, ws, half_height, first - widest, n + 2 * widest + 1)
        ring = runs if previous is None else runs - previous
        previous = runs
        right = ring[widest + half_width + 1 : widest + half_width + 1 + n]
        left = ring[widest - half_width : widest - half_width + n]
        if i == 0:
            np.subtract(right, left, out=disk)
        else:
            disk += right
            disk -= left
    layout = (count * hp + 1, ws)
    if plan.taps is None:
        blurred = np.divide(grid, plan.count, dtype=np.float32).reshape(layout)
    else:
        disk_sums = grid.astype(np.float32).reshape(layout)
        blurred = cv2.sepFilter2D(
            disk_sums, -1, plan.taps, plan.taps_y, borderType=cv2.BORDER_REFLECT_101
        )
    return blurred[:-1].reshape(count, hp, ws)


def _flat_grid(dtype: np.dtype, size: int, first: int, n: int) -> np.ndarray:
    """An uninitialised flat array, zero outside ``[first, first + n)``."""
    grid = np.empty(size, dtype)
    grid[:first] = 0
    grid[first + n :] = 0
    return grid


def _column_runs(sums: np.ndarray, ws: int, half: int, lo: int, n: int) -> np.ndarray:
    """At flat positions lo..lo + n - 1 of the integral image: sums over rows -half..half."""
    top, bottom = lo - half * ws, lo + (half + 1) * ws
    return sums[bottom : bottom + n] - sums[top : top + n]


def _defocus_cpu(images: torch.Tensor, plan: _DiskSums) -> torch.Tensor:
    """``defocus_blur`` on CPU: ``_disk_correlate`` on cache-sized chunks of planes."""
    n, c, h, w = images.shape
    planes = images.contiguous().numpy().reshape(n * c, h, w)
    out = np.empty_like(planes)
    pad = plan.pad
    per_plane = (h + 2 * pad) * (w + 2 * pad + 1)
    step = max(1, _DISK_CHUNK_ELEMENTS // per_plane)

    def run(sl: slice) -> None:
        grid = _disk_correlate(planes[sl], plan)
        levels = cv2.add(grid.reshape(-1, grid.shape[-1]), plan.offset, dtype=cv2.CV_8U)
        out[sl] = levels.reshape(grid.shape)[:, pad : pad + h, pad : pad + w]

    run_chunks(run, [slice(i, min(i + step, n * c)) for i in range(0, n * c, step)])
    return torch.from_numpy(out).view(n, c, h, w)


def defocus_blur(images: torch.Tensor, param: tuple[float, float]) -> torch.Tensor:
    """Defocus: correlate with the ImageNet-C anti-aliased disk ``(radius, alias_sigma)``.

    As ``cv2.filter2D`` (reflect-101 border) on x/255, clipped, truncated to uint8. On CPU
    the disk is summed exactly from an integral image (``_DiskSums``); elsewhere by FFT.
    """
    check_images(images)
    radius, alias = check_tuple("defocus_blur", param, ("radius", "alias_sigma"))
    radius = check_real("defocus radius", radius, low=0.0)
    alias = check_real("defocus alias_sigma", alias, low=0.0)
    plan = _disk_sums(radius, alias) if images.device.type == "cpu" else None
    h, w = images.shape[-2:]
    if (
        plan is None
        or images.numel() == 0
        or (h + 2 * plan.pad) * (w + 2 * plan.pad + 1) > _DISK_MAX_ELEMENTS
    ):
        return _defocus_fft(images, _disk_kernel(radius, alias))
    match_cv2_threads()
    return _defocus_cpu(images, plan)


def _defocus_fft(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``defocus_blur`` with any kernel, through the FFT correlator (any device)."""
    kernel = kernel.to(torch.float32).to(images.device, non_blocking=True)
    correlate = _fft_correlator(kernel, *images.shape[-2:], "reflect")
    return map_chunks(
        lambda part: to_uint8(correlate(to_float(part))), images, chunk_elements=_CPU_CHUNK_ELEMENTS
    )


def scale_defocus_blur(param: tuple[float, float], factor: float) -> tuple[float, float]:
    """Radius and alias sigma (both in pixels) for an image ``factor`` times 224 px."""
    radius, alias = check_tuple("defocus_blur", param, ("radius", "alias_sigma"))
    f = check_factor(factor)
    return (float(radius) * f, float(alias) * f)


# ----------------------------------------------------------------------------- motion


def _motion_taps(
    radius: float, sigma: float, angles_deg: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tap offsets (dy, dx) of shape (N, T) and weights (T,) of ImageMagick's MotionBlurImage.

    T = GetOptimalKernelWidth1D(radius, sigma) = 2 ceil(radius) + 1; tap i samples the image
    at (y + ceil(i sin(a) - 0.5), x + ceil(i cos(a) - 0.5)) with weight exp(-i^2 / 2 sigma^2),
    normalised, the rule ``imagecorruptions`` reimplements in NumPy.
    """
    radius = check_real("motion radius", radius, low=0.0, low_open=True)
    sigma = check_real("motion sigma", sigma, low=0.0, low_open=True)
    if not isinstance(angles_deg, torch.Tensor) or angles_deg.ndim != 1:
        raise ValueError("angles_deg must be a 1-D tensor of angles in degrees, one per image")
    width = 2 * math.ceil(radius) + 1
    i = torch.arange(width, dtype=torch.float64)
    weights = torch.exp(-(i**2) / (2 * sigma**2))
    rad = torch.deg2rad(angles_deg.detach().to("cpu", torch.float64))[:, None]
    point_y, point_x = width * torch.sin(rad), width * torch.cos(rad)
    hypot = torch.hypot(point_y, point_x)
    dy = torch.ceil(i * point_y / hypot - 0.5).long()
    dx = torch.ceil(i * point_x / hypot - 0.5).long()
    return dy, dx, weights / weights.sum()


def motion_kernels(radius: float, sigma: float, angles_deg: torch.Tensor) -> torch.Tensor:
    """Per-image motion-blur kernels (N, K, K), float32, on the device of ``angles_deg``.

    Correlation kernels (as ``cv2.filter2D``) emulating ImageMagick's
    ``MotionBlurImage(radius, sigma, angle)``; K = 4 ceil(radius) + 1 so that every angle fits.
    """
    dy, dx, weights = _motion_taps(radius, sigma, angles_deg)
    n, width = dy.shape
    centre = width - 1
    k = 2 * centre + 1
    kernels = torch.zeros(n, k, k, dtype=torch.float64)
    image = torch.arange(n)[:, None].expand(n, width)
    kernels.index_put_((image, centre + dy, centre + dx), weights.expand(n, width), accumulate=True)
    return kernels.to(device=angles_deg.device, dtype=torch.float32)


def apply_motion_blur(
    x: torch.Tensor, radius: float, sigma: float, angles_deg: torch.Tensor
) -> torch.Tensor:
    """Motion-blur float images ``x`` (N, C, H, W), one angle per image; edge pixels repeat.

    Equals correlating with ``motion_kernels(...)`` (edge pixels repeated) but sums only the
    2 ceil(radius) + 1 shifted copies the kernel has (25x fewer operations than a dense
    61x61 kernel at radius 15). Each image sums its own taps in a fixed order, so the
    result does not depend on the batch, the thread count or the device. The taps are
    planned on the host: angles given there cost no device sync.
    """
    if x.ndim != 4 or not torch.is_floating_point(x):
        raise ValueError(f"x must be a float (N, C, H, W) tensor, got {x.dtype} {tuple(x.shape)}")
    if not isinstance(angles_deg, torch.Tensor) or angles_deg.shape != (x.shape[0],):
        raise ValueError(f"need one angle per image: {tuple(angles_deg.shape)} for N={x.shape[0]}")
    dy, dx, weights = _motion_taps(radius, sigma, angles_deg)
    pad_h, pad_w = int(dy.abs().max()), int(dx.abs().max())
    xp = pad2d(x, pad_h, pad_w, "replicate")
    rows, cols, taps = dy + pad_h, dx + pad_w, weights.tolist()
    if x.device.type == "cpu":
        return _sum_shifted_views(xp, rows, cols, taps, x.shape[-2:])
    rows, cols = (t.to(x.device, non_blocking=True) for t in (rows, cols))  # from pageable memory
    return _sum_shifted_gathers(xp, rows, cols, taps, x.shape[-2:])


def _sum_shifted_views(
    xp: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, taps: list[float], size: Sequence[int]
) -> torch.Tensor:
    """Sum of ``taps[t]`` x the (H, W) window of padded images ``xp`` at (rows, cols)[:, t].

    Per image and tap one in-place add of a view (on the CPU, where a loop costs little).
    """
    h, w = size
    out = xp.new_zeros((*xp.shape[:2], h, w))
    for xn, on, image_rows, image_cols in zip(xp, out, rows.tolist(), cols.tolist(), strict=True):
        for weight, r, c in zip(taps, image_rows, image_cols, strict=True):
            on.add_(xn[:, r : r + h, c : c + w], alpha=weight)
    return out


def _sum_shifted_gathers(
    xp: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, taps: list[float], size: Sequence[int]
) -> torch.Tensor:
    """``_sum_shifted_views`` with one gather per tap for the whole batch (on devices, where a
    kernel per image and tap would cost more than the work); ``rows``, ``cols`` on the device.

    The same adds in the same order per pixel: the same result.
    """
    (h, w), (n, c, hp, wp) = size, xp.shape
    device = xp.device
    window = (torch.arange(h, device=device)[:, None] * wp + torch.arange(w, device=device)).view(-1)
    corner = rows * wp + cols  # (N, T): flat index of each window's top-left pixel
    flat = xp.reshape(n, c, hp * wp)
    out = xp.new_zeros((n, c, h * w))
    for t, weight in enumerate(taps):
        index = (corner[:, t, None] + window)[:, None].expand(n, c, h * w)
        out.add_(flat.gather(2, index), alpha=weight)
    return out.view(n, c, h, w)


def motion_blur(
    images: torch.Tensor, param: tuple[float, float], *, rng: ImageRandom
) -> torch.Tensor:
    """Motion blur ``(radius, sigma)`` along an angle ~ U(-45, 45) degrees per image.

    Emulates ImageMagick ``MotionBlurImage`` as MedMNIST-C calls it through Wand, without
    ImageMagick, the PNG round trip, its NumPy 2.3 crash, the 28 px shape bug or the BGR
    swap; the result is rounded to uint8 as ImageMagick's 8-bit output is. The angles are
    drawn on the host (``ImageRandom.on_host``), where the taps are planned.
    """
    check_images(images)
    radius, sigma = check_tuple("motion_blur", param, ("radius", "sigma"))
    rng = check_rng(rng, images)
    angles = rng.on_host().uniform((), -45.0, 45.0)

    def run(part: torch.Tensor, part_angles: torch.Tensor) -> torch.Tensor:
        blurred = apply_motion_blur(to_float(part), radius, sigma, part_angles)
        return to_uint8(blurred, rounding="round")

    return map_chunks(run, images, angles, chunk_elements=_CPU_CHUNK_ELEMENTS)


def scale_motion_blur(param: tuple[float, float], factor: float) -> tuple[float, float]:
    """Radius and sigma (pixels) for an image ``factor`` times 224 px."""
    radius, sigma = check_tuple("motion_blur", param, ("radius", "sigma"))
    f = check_factor(factor)
    return (float(radius) * f, float(sigma) * f)


# ----------------------------------------------------------------------------- zoom


def zoom_factors(start: float, stop: float, step: float) -> tuple[float, ...]:
    """The factors of ``np.arange(start, stop, step)``, floating-point quirks included.

    ``zoom_factors(1, 1.11, 0.01)`` has 12 entries (up to 1.11), as in ImageNet-C.
    """
    return tuple(float(v) for v in np.arange(start, stop, step))


def zoom_blur(images: torch.Tensor, zooms: Sequence[float]) -> torch.Tensor:
    """Zoom blur: the mean of the image and its ``clipped_zoom`` for every factor (>= 1).

    As ImageNet-C / MedMNIST-C in float32 on x/255, clipped, truncated to uint8.
    """
    check_images(images)
    if isinstance(zooms, str) or not isinstance(zooms, Sequence | np.ndarray) or len(zooms) == 0:
        raise ValueError(
            f"zoom_blur parameter must be a non-empty sequence of factors, got {zooms!r}"
        )
    factors = [check_real("zoom factor", z, low=1.0) for z in zooms]

    def run(planes: torch.Tensor) -> torch.Tensor:
        x = to_float(planes)
        total = torch.zeros_like(x)
        for z in factors:
            total += clipped_zoom(x, z)
        return to_uint8((x + total) / (len(factors) + 1))

    # One channel per plane: the bilinear kernel is faster on (N*C, 1, H, W) than on RGB.
    planes = images.reshape(-1, 1, *images.shape[-2:])
    return map_chunks(run, planes, chunk_elements=_CPU_CHUNK_ELEMENTS).reshape(images.shape)


# ----------------------------------------------------------------------------- gaussian


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur by ``sigma`` pixels: ImageNet-C's ``skimage.filters.gaussian``.

    Border mode 'nearest', taps to int(4 sigma + 0.5); x/255 blurred, clipped, truncated.
    """
    check_images(images)
    sigma = check_real("gaussian_blur sigma", sigma, low=0.0)
    return map_chunks(
        lambda part: to_uint8(gaussian_filter(to_float(part), sigma, method="matmul")),
        images,
        chunk_elements=_CPU_CHUNK_ELEMENTS,
    )


def scale_gaussian_blur(param: float, factor: float) -> float:
    """Sigma (pixels) for an image ``factor`` times 224 px."""
    return check_real("gaussian_blur sigma", param, low=0.0) * check_factor(factor)


def _odd_kernel_size(kernel_size: object) -> int:
    """A kernel size >= 1, raised to the next odd size as MedMNIST-C forces."""
    return check_int("kernel_size", kernel_size, low=1) | 1


def gaussian_blur_kernel(images: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """MedMNIST-C Gaussian blur: ``torchvision...gaussian_blur(PIL, kernel_size=k)``.

    sigma = 0.3 ((k - 1) / 2 - 1) + 0.8, reflect padding, rounded to uint8 as torchvision
    does for PIL input. An even k is raised to the next odd size, as MedMNIST-C forces.
    """
    check_images(images)
    k = _odd_kernel_size(kernel_size)
    sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
    taps = gaussian_taps(sigma, k // 2)
    return map_chunks(
        lambda part: to_uint8(separable_filter(to_float(part), taps, None, "reflect"), "round"),
        images,
        chunk_elements=_CPU_CHUNK_ELEMENTS,
    )


def scale_gaussian_blur_kernel(param: int, factor: float) -> int:
    """The odd kernel size whose torchvision sigma is ``factor`` times that of ``param``.

    Blurs below sigma ~0.65 px round to k = 1, the identity (e.g. every MedMNIST-C level
    at 28 px, where sigma / 8 <= 0.52 px).
    """
    k = _odd_kernel_size(param)
    sigma = (0.15 * k + 0.35) * check_factor(factor)
    size = (sigma - 0.35) / 0.15
    return max(1, 2 * round((size - 1) / 2) + 1)


# ----------------------------------------------------------------------------- glass


def _chain_ends(jump: torch.Tensor, *, fixed_rounds: bool) -> torch.Tensor:
    """Pointer doubling along acyclic copy chains (N, M): where each one ends.

    Until nothing changes (a host read per round), or with ``fixed_rounds`` (off the CPU,
    no host sync) ceil(log2 M) rounds: a chain has fewer than M links, and once at its end a
    round changes nothing, so both give the same result.
    """
    if fixed_rounds:
        for _ in range(max(1, (jump.shape[1] - 1).bit_length())):
            jump = jump.gather(1, jump)
        return jump
    while True:
        nxt = jump.gather(1, jump)
        if torch.equal(nxt, jump):
            return jump
        jump = nxt


def _glass_shuffle(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, delta: int) -> torch.Tensor:
    """The ImageNet-C glass-blur pixel loop, computed exactly without a per-pixel loop.

    ``dx``, ``dy`` (N, iterations, H - 2 delta, W - 2 delta) are the offsets in [-delta, delta)
    of the pixels h, w in (delta, H - delta], which the loop visits with h, then w, descending.
    On RGB arrays the reference's tuple "swap" is a copy, x[h, w] = x[h + dy, w + dx] (NumPy
    views), and a pixel copies the *new* value of a source visited earlier (dy > 0, or dy = 0
    and dx > 0, inside the visited region). Following those copy chains to their ends by
    pointer doubling gives each pass as a gather; the passes compose into one gather.
    """
    n, c, h, w = x.shape
    hi, wi = h - 2 * delta, w - 2 * delta
    m = hi * wi
    dev = x.device
    rows = torch.arange(delta + 1, h - delta + 1, device=dev)[:, None]
    cols = torch.arange(delta + 1, w - delta + 1, device=dev)[None]
    own = torch.arange(m, device=dev).expand(n, m)
    total = torch.arange(h * w, device=dev).expand(n, h * w)
    for it_dx, it_dy in zip(dx.unbind(1), dy.unbind(1), strict=True):
        src_row, src_col = rows + it_dy, cols + it_dx
        source = (src_row * w + src_col).reshape(n, m)
        visited = (it_dy > 0) | ((it_dy == 0) & (it_dx > 0))
        visited &= (src_row <= h - delta) & (src_col > delta) & (src_col <= w - delta)
        inner_source = ((src_row - delta - 1) * wi + src_col - delta - 1).reshape(n, m)
        # where(visited, inner_source, own), branch-free (torch.where is slow on random masks)
        jump = (inner_source - own).mul_(visited.reshape(n, m)).add_(own)
        jump = _chain_ends(jump, fixed_rounds=dev.type != "cpu")
        shuffled = source.gather(1, jump).view(n, hi, wi)
        step = torch.arange(h * w, device=dev).repeat(n, 1)
        step.view(n, h, w)[:, delta + 1 : h - delta + 1, delta + 1 : w - delta + 1] = shuffled
        total = total.gather(1, step)
    flat = x.reshape(n, c, h * w)
    return flat.gather(2, total[:, None].expand(n, c, h * w)).reshape(n, c, h, w)


def _glass_param(param: object) -> tuple[float, int, int]:
    sigma, delta, iterations = check_tuple(
        "glass_blur", param, ("sigma", "max_delta", "iterations")
    )
    sigma = check_real("glass sigma", sigma, low=0.0)
    delta = check_int("glass max_delta", delta, low=1)
    iterations = check_int("glass iterations", iterations, low=0)
    return sigma, delta, iterations


def glass_blur(
    images: torch.Tensor, param: tuple[float, int, int], *, rng: ImageRandom
) -> torch.Tensor:
    """Glass blur ``(sigma, max_delta, iterations)``: blur, local pixel shuffle, blur.

    ImageNet-C: ``uint8(gaussian(x) * 255)``, ``iterations`` passes of the pixel loop
    (see ``_glass_shuffle``; offsets drawn per pixel from ``rng``), then ``gaussian``,
    clipped and truncated.
    """
    check_images(images)
    sigma, delta, iterations = _glass_param(param)
    rng = check_rng(rng, images)
    x = gaussian_blur(images, sigma)
    h, w = x.shape[-2:]
    if iterations and h > 2 * delta and w > 2 * delta:
        # One draw per pixel for the pair (dx, dy), uniform on [-delta, delta)^2.
        side = 2 * delta
        pairs = rng.integers(0, side * side - 1, (iterations, h - side, w - side))
        pairs = pairs.to(x.device, torch.int32)
        # pair -> (dx, dy) by table: integer % and // cost ~10x a lookup on CPU
        codes = torch.arange(side * side, dtype=torch.int32, device=x.device)
        to_dx, to_dy = codes % side - delta, codes // side - delta

        def shuffle(part: torch.Tensor, part_pairs: torch.Tensor) -> torch.Tensor:
            flat = part_pairs.reshape(-1)
            dx = to_dx.index_select(0, flat).view_as(part_pairs)
            dy = to_dy.index_select(0, flat).view_as(part_pairs)
            return _glass_shuffle(part, dx, dy, delta)

        x = map_chunks(shuffle, x, pairs, chunk_elements=_CPU_CHUNK_ELEMENTS)
    return gaussian_blur(x, sigma)


def scale_glass_blur(param: tuple[float, int, int], factor: float) -> tuple[float, int, int]:
    """Sigma scaled, max_delta scaled and rounded (at least 1), iterations kept."""
    sigma, delta, iterations = _glass_param(param)
    f = check_factor(factor)
    return (sigma * f, max(1, round(delta * f)), iterations)
