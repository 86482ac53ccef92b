"""Tensor helpers shared by the corruption functions (float conversion, filtering)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "check_images",
    "depthwise_conv2d",
    "gaussian_kernel1d",
    "separable_conv2d",
    "to_float",
    "to_uint8",
]


def check_images(images: torch.Tensor) -> None:
    """Raise a clear error unless ``images`` is a uint8 tensor of shape (N, C, H, W), C in {1, 3}."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"images must have shape (N, C, H, W) with C = 1 or 3, got {tuple(images.shape)}"
        )


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


def gaussian_kernel1d(sigma: float, radius: int | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Normalised 1-D Gaussian taps; radius defaults to SciPy's ``int(4 sigma + 0.5)``."""
    if radius is None:
        radius = max(1, int(4.0 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(torch.float32)


def depthwise_conv2d(x: torch.Tensor, kernel: torch.Tensor, padding_mode: str = "reflect") -> torch.Tensor:
    """Convolve every channel of float images ``x`` (N, C, H, W) with a 2-D kernel.

    ``kernel`` is (kh, kw), shared by the batch, or (N, kh, kw), one per image. Odd sizes.
    Padding keeps the size; ``padding_mode`` is any of ``F.pad``'s modes, or ``zeros``.
    This is correlation, as ``cv2.filter2D`` computes.
    """
    n, c, h, w = x.shape
    kh, kw = kernel.shape[-2:]
    pad = (kw // 2, kw - 1 - kw // 2, kh // 2, kh - 1 - kh // 2)
    mode = "constant" if padding_mode == "zeros" else padding_mode
    xp = F.pad(x, pad, mode=mode)
    kernel = kernel.to(dtype=x.dtype, device=x.device)
    if kernel.ndim == 2:
        weight = kernel.expand(c, 1, kh, kw)
        return F.conv2d(xp, weight, groups=c)
    weight = kernel[:, None].expand(n, c, kh, kw).reshape(n * c, 1, kh, kw)
    out = F.conv2d(xp.reshape(1, n * c, *xp.shape[-2:]), weight, groups=n * c)
    return out.reshape(n, c, h, w)


def separable_conv2d(x: torch.Tensor, taps: torch.Tensor, padding_mode: str = "reflect") -> torch.Tensor:
    """Convolve every channel with the same 1-D ``taps`` along rows, then columns."""
    c = x.shape[1]
    k = taps.numel()
    r = k // 2
    mode = "constant" if padding_mode == "zeros" else padding_mode
    taps = taps.to(dtype=x.dtype, device=x.device)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), taps.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode=mode), taps.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
