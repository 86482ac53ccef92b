"""Pixel noise of MedMNIST-C and ImageNet-C: Gaussian, shot (Poisson), impulse and speckle.

The references corrupt ``x / 255`` in float64 with independent draws per array element (so per
channel of an RGB image) and quantise with ``(x * 255).astype(uint8)``, a truncation. These
functions draw from one stream per image (``ImageRandom``), so an image's output does not depend
on the batch it is in.

Grey (C = 1) images follow the reference pipeline grey -> RGB -> corrupt -> ``convert('L')``:
three independent noise planes are drawn, each is quantised, and PIL's luminance of the three is
returned. Noise on one plane only would be about 1.5 times stronger than the reference's (3 to
3.5 dB lower PSNR), because the luminance averages three independent draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import torch
from scipy.special import gammaincc

from medrobust.corruptions._random import ImageRandom
from medrobust.corruptions.functional._utils import (
    batch_slices,
    check_images,
    check_real,
    check_rng,
    rgb_to_l,
    to_float,
    to_uint8,
)

__all__ = ["gaussian_noise", "impulse_noise", "shot_noise", "speckle_noise"]

# Shot noise samples an output grey level from 256 alias cells per input level: 8 bits of a
# 52-bit random integer pick the cell, the other 44 bits decide between the cell's two values.
_CELL_BITS = 8
_FRACTION_BITS = 44
_FRACTION_MASK = (1 << _FRACTION_BITS) - 1
# tables enumerate photon counts up to ``photons``; beyond this the noise is a fraction of a level
_MAX_PHOTONS = 1e6


def _per_channel(
    images: torch.Tensor,
    rng: ImageRandom,
    draw: Callable[[tuple[int, int, int]], torch.Tensor],
    corrupt: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Corrupt every channel with its own draws; grey as grey -> RGB -> corrupt -> L.

    ``draw(shape)`` returns the batch's draws (N, *shape) from ``rng``, called once ``rng`` is
    checked; ``corrupt(planes, draws)`` maps a chunk of uint8 RGB planes and their draws to uint8.
    """
    check_images(images)
    check_rng(rng, images)
    n, c, h, w = images.shape
    planes = images.expand(n, 3, h, w) if c == 1 else images
    draws = draw((3, h, w)).to(images.device)
    out = torch.empty_like(images)
    for sl in batch_slices(planes):
        noisy = corrupt(planes[sl], draws[sl])
        out[sl] = rgb_to_l(noisy) if c == 1 else noisy
    return out


def gaussian_noise(images: torch.Tensor, sigma: float, *, rng: ImageRandom) -> torch.Tensor:
    """Additive Gaussian noise: ``clip(x / 255 + N(0, sigma^2))``, truncated to uint8."""
    sigma = check_real("sigma", sigma, low=0.0)
    return _per_channel(
        images,
        rng,
        lambda shape: rng.normal(shape),
        lambda x, z: to_uint8(to_float(x).add_(z.mul_(sigma))),
    )


def speckle_noise(images: torch.Tensor, sigma: float, *, rng: ImageRandom) -> torch.Tensor:
    """Multiplicative noise: ``clip(x + x * N(0, sigma^2))`` with x in [0, 1], truncated."""
    sigma = check_real("sigma", sigma, low=0.0)

    def corrupt(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        f = to_float(x)
        return to_uint8(f.addcmul_(f, z.mul_(sigma)))

    return _per_channel(images, rng, lambda shape: rng.normal(shape), corrupt)


def impulse_noise(images: torch.Tensor, amount: float, *, rng: ImageRandom) -> torch.Tensor:
    """Salt-and-pepper noise as ``skimage.util.random_noise(mode='s&p', amount)``.

    Every element (each channel of a pixel) is replaced with probability ``amount``, by 255 or
    0 with equal probability; the others keep their exact value.
    """
    amount = check_real("amount", amount, low=0.0, high=1.0)

    def corrupt(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        salt_or_pepper = (u >= 0.5 * amount).to(torch.uint8).mul_(255)
        return torch.where(u < amount, salt_or_pepper, x)

    return _per_channel(images, rng, lambda shape: rng.uniform(shape), corrupt)


def _alias_tables(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Walker alias tables for each row of ``probs`` (rows sum to 1), in float64.

    Returns ``keep`` (rows, K): the probability that cell k yields k itself, and ``alias``
    (rows, K): the value it yields otherwise. Built by pairing, in every row, the smallest
    open cell with the largest one, which fills one cell per step.
    """
    n_rows, k = probs.shape
    rows = torch.arange(n_rows)
    mass = probs * k
    keep = torch.ones_like(mass)
    alias = torch.arange(k).expand(n_rows, k).clone()
    is_open = torch.ones(n_rows, k, dtype=torch.bool)
    for _ in range(k - 1):
        small = torch.where(is_open, mass, math.inf).argmin(1)
        large = torch.where(is_open, mass, -math.inf).argmax(1)
        small_mass = mass[rows, small]
        keep[rows, small] = small_mass
        alias[rows, small] = large
        mass[rows, large] -= 1.0 - small_mass
        is_open[rows, small] = False
    return keep.clamp_(0.0, 1.0), alias


def _shot_distribution(photons: float) -> torch.Tensor:
    """P(output level | input level) of the reference, (256, 256) float64.

    The reference outputs ``trunc(clip(X / photons, 0, 1) * 255)`` with
    ``X ~ Poisson(x / 255 * photons)``; each output level collects a range of counts X, whose
    probability is a difference of Poisson CDFs (regularised incomplete gamma functions).
    """
    top = math.ceil(photons)
    counts = torch.arange(top + 1, dtype=torch.float64)
    values = torch.floor((counts / photons).clamp(max=1.0) * 255)
    first_count = torch.searchsorted(values, torch.arange(257, dtype=torch.float64))
    rates = torch.arange(256, dtype=torch.float64) / 255.0 * photons
    n = first_count.to(torch.float64).clamp(min=1.0)
    # P(X < n) for each boundary n is gammaincc(n, rate) (SciPy's is accurate to ~1e-15, torch's
    # to ~1e-10); n = 0 gives 0 and the last boundary, which closes the tail, 1
    below = torch.from_numpy(gammaincc(n[None, :].numpy(), rates[:, None].numpy()))
    below[:, first_count == 0] = 0.0
    below[:, -1] = 1.0
    probs = (below[:, 1:] - below[:, :-1]).clamp_(min=0.0)
    return probs / probs.sum(1, keepdim=True)


@lru_cache(maxsize=32)
def _shot_tables(photons: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened alias tables (256 input levels x 256 cells) on ``device``, cached per photons."""
    keep, alias = _alias_tables(_shot_distribution(photons))
    threshold = torch.round(keep * (1 << _FRACTION_BITS)).to(torch.int64)
    return threshold.reshape(-1).to(device), alias.to(torch.uint8).reshape(-1).to(device)


def shot_noise(images: torch.Tensor, photons: float, *, rng: ImageRandom) -> torch.Tensor:
    """Poisson (shot) noise: ``clip(Poisson(x / 255 * photons) / photons)``, truncated to uint8.

    Exact Poisson sampling of the reference's output: the input is uint8, so the distribution
    of each output level given each input level is tabulated once per ``photons`` (from the
    Poisson CDF in float64) and sampled with Walker's alias method, one 52-bit random integer
    per element; on CPU this is five to six times faster than ``torch.poisson``.
    """
    photons = check_real("photons", photons, low=0.0, high=_MAX_PHOTONS, low_open=True)

    def corrupt(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        threshold, alias = _shot_tables(photons, x.device)
        own = r >> _FRACTION_BITS
        cell = x.to(torch.int64).mul_(1 << _CELL_BITS).add_(own).reshape(-1)
        keep = (r & _FRACTION_MASK) < threshold.index_select(0, cell).view_as(r)
        return torch.where(keep, own.to(torch.uint8), alias.index_select(0, cell).view_as(r))

    bits = _CELL_BITS + _FRACTION_BITS
    return _per_channel(images, rng, lambda shape: rng.integers(0, (1 << bits) - 1, shape), corrupt)
