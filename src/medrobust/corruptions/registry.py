"""Registry of corruption functions by name.

A corruption *function* is a pure batched operation (``functional``) with the reference's
parameter semantics. Suites (``suites.py``) bind names such as ``brightness_up`` to a
function and its five severity parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ._random import ImageRandom
from .functional import blur, color, digital, geometric, medical, noise, weather

__all__ = ["FUNCTIONS", "CorruptionFunction", "get_function", "list_functions"]


@dataclass(frozen=True)
class CorruptionFunction:
    """A named corruption function and how to call it."""

    name: str
    fn: Callable[..., torch.Tensor]
    family: str
    stochastic: bool
    reference: str
    scale_param: Callable[[Any, float], Any] | None = None

    def __call__(
        self,
        images: torch.Tensor,
        param: Any,
        *,
        rng: ImageRandom | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if self.stochastic:
            if rng is None:
                raise ValueError(f"corruption {self.name!r} is random: pass an ImageRandom")
            return self.fn(images, param, rng=rng, **kwargs)
        return self.fn(images, param, **kwargs)

    def scaled(self, param: Any, factor: float) -> Any:
        """The parameter for an image ``factor`` times the reference size."""
        if self.scale_param is None or factor == 1.0:
            return param
        return self.scale_param(param, factor)


def _entry(
    fn: Callable[..., torch.Tensor],
    family: str,
    stochastic: bool,
    reference: str,
    scale_param: Callable[[Any, float], Any] | None = None,
) -> CorruptionFunction:
    return CorruptionFunction(fn.__name__, fn, family, stochastic, reference, scale_param)


_MEDMNISTC = "medmnistc 0.1.0"
_IMAGENETC = "imagecorruptions 1.1.2 (ImageNet-C)"

FUNCTIONS: dict[str, CorruptionFunction] = {
    entry.name: entry
    for entry in (
        _entry(noise.gaussian_noise, "noise", True, "medmnistc and ImageNet-C"),
        _entry(noise.shot_noise, "noise", True, "medmnistc and ImageNet-C"),
        _entry(noise.impulse_noise, "noise", True, "medmnistc and ImageNet-C (skimage s&p)"),
        _entry(noise.speckle_noise, "noise", True, "medmnistc and ImageNet-C"),
        _entry(blur.defocus_blur, "blur", False, "medmnistc and ImageNet-C disk kernel",
               blur.scale_defocus_blur),
        _entry(blur.motion_blur, "blur", True, "ImageMagick MotionBlurImage kernel",
               blur.scale_motion_blur),
        _entry(blur.zoom_blur, "blur", False, "medmnistc and ImageNet-C"),
        _entry(blur.gaussian_blur, "blur", False, f"{_IMAGENETC}: skimage sigma",
               blur.scale_gaussian_blur),
        _entry(blur.gaussian_blur_kernel, "blur", False, f"{_MEDMNISTC}: torchvision kernel size",
               blur.scale_gaussian_blur_kernel),
        _entry(blur.glass_blur, "blur", True, _IMAGENETC, blur.scale_glass_blur),
        _entry(color.brightness, "color", False, f"{_MEDMNISTC}: PIL ImageEnhance.Brightness"),
        _entry(color.brightness_hsv, "color", False, f"{_IMAGENETC}: HSV value shift"),
        _entry(color.contrast, "color", False, f"{_MEDMNISTC}: PIL ImageEnhance.Contrast"),
        _entry(color.contrast_mean, "color", False, f"{_IMAGENETC}: scale about the mean"),
        _entry(color.gamma, "color", False, f"{_MEDMNISTC}: torchvision adjust_gamma"),
        _entry(color.saturate, "color", False, f"{_MEDMNISTC}: additive HSV saturation"),
        _entry(color.saturate_hsv, "color", False, f"{_IMAGENETC}: affine HSV saturation"),
        _entry(digital.pixelate, "digital", False, f"{_MEDMNISTC}: PIL BOX down, BOX up"),
        _entry(digital.pixelate_nearest, "digital", False, f"{_IMAGENETC}: BOX down, NEAREST up"),
        _entry(digital.jpeg_compression, "digital", False, "libjpeg at a quality, 4:2:0"),
        _entry(geometric.elastic_transform, "digital", True, _IMAGENETC,
               getattr(geometric, "scale_elastic_transform", None)),
        _entry(weather.snow, "weather", True, _IMAGENETC, getattr(weather, "scale_snow", None)),
        _entry(weather.frost, "weather", True, f"{_IMAGENETC} (procedural frost texture)"),
        _entry(weather.fog, "weather", True, _IMAGENETC),
        _entry(weather.spatter, "weather", True, _IMAGENETC, getattr(weather, "scale_spatter", None)),
        _entry(medical.stain_deposit, "medical", True, _MEDMNISTC, medical.scale_stain_deposit),
        _entry(medical.bubble, "medical", True, _MEDMNISTC, medical.scale_bubble),
        _entry(medical.black_corner, "medical", False, _MEDMNISTC),
        _entry(medical.characters, "medical", True, _MEDMNISTC, medical.scale_characters),
    )
}


def list_functions() -> list[str]:
    """Names of all registered corruption functions."""
    return sorted(FUNCTIONS)


def get_function(name: str) -> CorruptionFunction:
    """Look a corruption function up by name; unknown names list the known ones."""
    try:
        return FUNCTIONS[name]
    except KeyError:
        raise KeyError(
            f"unknown corruption function {name!r}; known: {', '.join(list_functions())}"
        ) from None
