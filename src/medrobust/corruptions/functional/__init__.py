"""The functional API: batched corruption functions on uint8 image tensors, by family.

Each corruption takes a uint8 tensor ``(N, C, H, W)`` (C = 1 or 3) and its parameters and
returns a uint8 tensor of the same shape on the same device; random ones take
a keyword ``rng`` (:class:`~medrobust.corruptions._random.ImageRandom`). ``scale_*`` functions
rescale a parameter for another image size. Like ``torchvision.transforms.v2.functional``: the
suites and registry build on these; call them directly for one corruption with exact parameters.
"""

from __future__ import annotations

from .blur import (
    apply_motion_blur,
    defocus_blur,
    gaussian_blur,
    gaussian_blur_kernel,
    glass_blur,
    motion_blur,
    motion_kernels,
    scale_defocus_blur,
    scale_gaussian_blur,
    scale_gaussian_blur_kernel,
    scale_glass_blur,
    scale_motion_blur,
    zoom_blur,
    zoom_factors,
)
from .color import (
    brightness,
    brightness_hsv,
    contrast,
    contrast_mean,
    gamma,
    saturate,
    saturate_hsv,
)
from .digital import jpeg_compression, pixelate, pixelate_nearest
from .geometric import elastic_transform
from .medical import (
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
from .noise import gaussian_noise, impulse_noise, shot_noise, speckle_noise
from .weather import fog, frost, scale_snow, scale_spatter, snow, spatter

__all__ = [
    "STAIN_INK_SIZES",
    "apply_motion_blur",
    "black_corner",
    "brightness",
    "brightness_hsv",
    "bubble",
    "characters",
    "contrast",
    "contrast_mean",
    "defocus_blur",
    "elastic_transform",
    "fog",
    "frost",
    "gamma",
    "gaussian_blur",
    "gaussian_blur_kernel",
    "gaussian_noise",
    "glass_blur",
    "impulse_noise",
    "jpeg_compression",
    "motion_blur",
    "motion_kernels",
    "pixelate",
    "pixelate_nearest",
    "saturate",
    "saturate_hsv",
    "scale_bubble",
    "scale_characters",
    "scale_defocus_blur",
    "scale_gaussian_blur",
    "scale_gaussian_blur_kernel",
    "scale_glass_blur",
    "scale_ink_size",
    "scale_motion_blur",
    "scale_snow",
    "scale_spatter",
    "scale_stain_deposit",
    "shot_noise",
    "snow",
    "spatter",
    "speckle_noise",
    "stain_deposit",
    "zoom_blur",
    "zoom_factors",
]
