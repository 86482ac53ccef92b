"""Corruption families: corruptions that approximate one another at some severity.

A model trained with one member of a family as augmentation has, in effect, seen the others
(ImageNet-C ``contrast`` at severity 1 is close to MedMNIST-C ``contrast_down`` at severity 5;
``brightness`` is ``brightness_up`` under another name). Keeping evaluated corruptions out of
training therefore means keeping their whole family out. This module is the one place the
families are defined; every corruption of every built-in suite belongs to exactly one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

__all__ = [
    "FAMILIES",
    "exclude_families",
    "families_of",
    "family_members",
    "family_of",
    "known_corruptions",
]

FAMILIES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur"),
    # down-then-up sampling: a box filter at the pixel scale, the coarse end of a blur
    "resolution": ("pixelate",),
    "compression": ("jpeg_compression",),
    # global tone: brightness and gamma both move the grey levels monotonically
    "brightness": ("brightness", "brightness_up", "brightness_down", "gamma_corr_up",
                   "gamma_corr_down"),
    "contrast": ("contrast", "contrast_up", "contrast_down"),
    "colour": ("saturate",),
    "weather": ("snow", "frost", "fog"),
    "geometric": ("elastic_transform",),
    # marks laid over the image content: stains, bubbles, mud, text, a dark vignette
    "occlusion": ("stain_deposit", "bubble", "spatter", "characters", "black_corner"),
})
"""Family name -> corruption names, as the built-in suites name them."""

_FAMILY = {name: family for family, names in FAMILIES.items() for name in names}


def known_corruptions() -> list[str]:
    """Every corruption name that has a family."""
    return sorted(_FAMILY)


def family_of(corruption: str) -> str:
    """The family of a corruption named as in any built-in suite."""
    try:
        return _FAMILY[corruption]
    except KeyError:
        raise KeyError(
            f"corruption {corruption!r} belongs to no known family; known corruptions: "
            f"{', '.join(known_corruptions())}"
        ) from None


def family_members(corruption: str) -> tuple[str, ...]:
    """All corruptions of ``corruption``'s family (itself included)."""
    return FAMILIES[family_of(corruption)]


def families_of(corruptions: Iterable[str]) -> set[str]:
    """The families a set of corruptions touches."""
    return {family_of(c) for c in corruptions}


def exclude_families(corruptions: Iterable[str], exclude: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split ``corruptions`` into (kept, excluded): out goes every corruption of the family of
    any name in ``exclude`` (named as in any suite). A user suite's corruption outside every
    family is its own family: only its own name excludes it."""
    names = list(corruptions)
    banned = set()
    for x in exclude:
        if x in _FAMILY:
            banned.add(_FAMILY[x])
        elif x not in names:
            family_of(x)  # raises: the name is in no family and not in this suite
    drop = set(exclude) | {c for c in names if _FAMILY.get(c) in banned}
    return [c for c in names if c not in drop], [c for c in names if c in drop]
