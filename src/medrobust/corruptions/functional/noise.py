"""Pixel noise of MedMNIST-C and ImageNet-C: Gaussian, shot (Poisson), impulse and speckle.

The references corrupt ``x / 255`` in float64 with independent draws per array element (so per
channel of an RGB image) and quantise with ``(x * 255).astype(uint8)``, a truncation. The input
is uint8, so each corruption is a distribution of the output level given the input level:
tabulated once per parameter, exactly (normal and Poisson CDFs in float64), and sampled with
Walker's alias method, one 31-bit draw per element. That is exact to 2**-31 in probability and
several times faster than drawing the reference's floats and quantising them.

Grey (C = 1) images follow the reference pipeline grey -> RGB -> corrupt -> ``convert('L')``:
their table is the distribution of PIL's luminance of three independent channel draws, so one
draw per pixel replaces three planes (noise on one plane only would be about 1.5 times stronger,
3 to 3.5 dB lower PSNR). Draws come from one stream per image (``ImageRandom``), so an image's
output does not depend on the batch it is in.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from medrobust._cache import cached_array
from medrobust.corruptions._random import ImageRandom
from medrobust.corruptions.functional._utils import (
    PIL_L_WEIGHTS,
    check_images,
    check_real,
    check_rng,
    map_chunks,
)

__all__ = ["gaussian_noise", "impulse_noise", "shot_noise", "speckle_noise"]

# Tables hold, per input level, 256 alias cells of P(output level | input level). One draw of 31
# random bits samples a pixel: 8 bits pick the cell, 23 decide between the cell's two values
# (probabilities resolved to 2**-31).
_CELL_BITS = 8
_FRACTION_BITS = 23
_FRACTION_MASK = (1 << _FRACTION_BITS) - 1
# tables enumerate photon counts up to ``photons``; beyond this the noise is a fraction of a level
_MAX_PHOTONS = 1e6
# input levels per step of ``_luma_distribution``: its temporaries are (support**2, this) float64
_LUMA_CHUNK = 8

_LEVELS = np.arange(256, dtype=np.float64)


# ----------------------------------------------------------------------------- distributions


def _normal_distribution(scales: np.ndarray) -> torch.Tensor:
    """P(y | x) of ``y = trunc(clip(x + s_x * Z, 0, 255))``, Z standard normal, (256, 256).

    Gaussian noise is ``s_x = 255 sigma`` and speckle noise ``s_x = x sigma``: the references'
    ``clip(x / 255 + ...) * 255`` truncated. ``y <= k`` (k < 255) iff ``x + s_x Z < k + 1``.
    """
    from scipy.special import ndtr  # imported when a table is built, not on every run

    x, k = _LEVELS[:, None], _LEVELS[None, :]
    scale = scales[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        below = np.where(scale > 0, ndtr((k + 1 - x) / scale), (k >= x).astype(np.float64))
    below[:, -1] = 1.0
    return torch.from_numpy(np.diff(below, axis=1, prepend=0.0)).clamp_(min=0.0)


def _gaussian_distribution(sigma: float) -> torch.Tensor:
    return _normal_distribution(np.full(256, 255.0 * sigma))


def _speckle_distribution(sigma: float) -> torch.Tensor:
    return _normal_distribution(_LEVELS * sigma)


def _impulse_distribution(amount: float) -> torch.Tensor:
    """P(y | x) of salt and pepper: ``x`` kept with probability ``1 - amount``, else 0 or 255."""
    probs = torch.eye(256, dtype=torch.float64) * (1.0 - amount)
    probs[:, 0] += 0.5 * amount
    probs[:, 255] += 0.5 * amount
    return probs


def _shot_distribution(photons: float) -> torch.Tensor:
    """P(output level | input level) of the reference, (256, 256) float64.

    The reference outputs ``trunc(clip(X / photons, 0, 1) * 255)`` with
    ``X ~ Poisson(x / 255 * photons)``; each output level collects a range of counts X, whose
    probability is a difference of Poisson CDFs (regularised incomplete gamma functions).
    """
    from scipy.special import gammaincc

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


_CHANNEL_DISTRIBUTIONS: dict[str, Callable[[float], torch.Tensor]] = {
    "gaussian": _gaussian_distribution,
    "speckle": _speckle_distribution,
    "impulse": _impulse_distribution,
    "shot": _shot_distribution,
}


@lru_cache(maxsize=64)
def _pair_thresholds(support: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """For channel levels ``support`` (k of them): pairs (a, b) sorted by ``wr a + wg b``, and
    how many pairs lie at or below each luminance threshold.

    Returns ``order`` (k * k,), indices of pairs ``i * k + j`` in sorted order, and ``counts``
    (256 * k,): for output level l and third level c, the number of pairs with
    ``wr a + wg b <= 65536 (l + 1) - 32769 - wb c``, i.e. those whose luminance is <= l.
    """
    wr, wg, wb = PIL_L_WEIGHTS
    levels = torch.tensor(support, dtype=torch.int64)
    sums, order = torch.sort((wr * levels[:, None] + wg * levels[None, :]).reshape(-1))
    limits = 65536 * torch.arange(1, 257)[:, None] - 32769 - wb * levels[None, :]
    return order, torch.searchsorted(sums, limits.reshape(-1), right=True)


def _luma_distribution(probs: torch.Tensor) -> torch.Tensor:
    """P(L | x), (256, 256): L is PIL's luminance of three independent draws from ``probs[x]``.

    ``L <= l`` iff ``wr a + wg b <= 65536 (l + 1) - 32769 - wb c``. So for each input level: weight
    every pair (a, b) by p(a) p(b) in the sorted order of ``_pair_thresholds``, cumulate, read
    the cumulated weight at each (l, c) threshold and sum over c with weights p(c). Exact up to
    float64 rounding; levels that a group of inputs never draws are left out of its pairs.
    """
    columns = probs.t()
    out = torch.empty_like(probs)
    for lo in range(0, probs.shape[0], _LUMA_CHUNK):
        p = columns[:, lo : lo + _LUMA_CHUNK]
        support = (p > 0).any(1).nonzero().squeeze(1)
        order, counts = _pair_thresholds(tuple(support.tolist()))
        p = p[support].contiguous()
        k, m = p.shape
        weights = (p[:, None, :] * p[None, :, :]).reshape(k * k, m).index_select(0, order)
        cumulated = torch.zeros(k * k + 1, m, dtype=torch.float64)
        torch.cumsum(weights, 0, out=cumulated[1:])
        at_or_below = cumulated.index_select(0, counts).view(256, k, m).mul_(p).sum(1)
        out[lo : lo + m] = torch.diff(
            at_or_below.t(), dim=1, prepend=torch.zeros(m, 1, dtype=out.dtype)
        )
    out.clamp_(min=0.0)
    return out / out.sum(1, keepdim=True)


# ----------------------------------------------------------------------------- sampling


def _alias_tables(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Walker alias tables for each row of ``probs`` (rows sum to 1), in float64.

    Returns ``keep`` (rows, K): the probability that cell k yields k itself, and ``alias``
    (rows, K): the value it yields otherwise. Built by pairing, in every row, the smallest
    open cell with the largest one, which fills one cell per step. Two copies of the masses,
    closed cells at +inf in one and -inf in the other, make each step two reductions.
    """
    n_rows, k = probs.shape
    rows = torch.arange(n_rows)
    keep = torch.ones_like(probs)
    alias = torch.arange(k).expand(n_rows, k).clone()
    open_low = probs * k
    open_high = open_low.clone()
    for _ in range(k - 1):
        small, large = open_low.argmin(1), open_high.argmax(1)
        small_mass = open_low[rows, small]
        keep[rows, small] = small_mass
        alias[rows, small] = large
        remaining = open_high[rows, large] - (1.0 - small_mass)
        open_low[rows, large] = remaining
        open_high[rows, large] = remaining
        open_low[rows, small] = math.inf
        open_high[rows, small] = -math.inf
    return keep.clamp_(0.0, 1.0), alias


def _sampling_table(probs: torch.Tensor) -> torch.Tensor:
    """Alias tables of ``probs`` (256 x 256) packed as int32 ``threshold << 8 | alias`` per cell.

    A cell k yields k when the draw's 23-bit fraction is below ``threshold``, else ``alias``. A
    cell that always yields k is stored as alias k with threshold 0, so entries stay below 2**31.
    """
    keep, alias = _alias_tables(probs)
    threshold = torch.round(keep * (1 << _FRACTION_BITS)).to(torch.int32)
    full = threshold >= 1 << _FRACTION_BITS
    own = torch.arange(alias.shape[1], dtype=torch.int32).expand_as(alias)
    alias = torch.where(full, own, alias.to(torch.int32))
    return (threshold.masked_fill_(full, 0) << 8).bitwise_or_(alias).reshape(-1)


def _build_table(kind: str, param: float, grey: bool) -> np.ndarray:
    probs = _CHANNEL_DISTRIBUTIONS[kind](param)
    return _sampling_table(_luma_distribution(probs) if grey else probs).numpy()


@lru_cache(maxsize=1)
def _code_key() -> list[str]:
    """What the tables depend on besides their parameters: this module's code, the luminance
    weights and SciPy (its normal and gamma functions), so a cached table is never stale."""
    from importlib.metadata import version  # importing SciPy itself costs start-up time

    source = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    return [source, repr(PIL_L_WEIGHTS), version("scipy"), np.__version__]


@lru_cache(maxsize=64)
def _table(kind: str, param: float, grey: bool, device: torch.device) -> torch.Tensor:
    """Packed alias table of one channel's noise, or (``grey``) of the luminance of three.

    Built once per parameter in a process and kept in the user cache across runs (building
    takes 0.1-0.5 s per table on a CPU; a whole MedMNIST-C set needs 20).
    """
    if device.type != "cpu":
        return _table(kind, param, grey, torch.device("cpu")).to(device)
    key = [*_code_key(), kind, float(param).hex(), grey]
    table = cached_array("noise-table", key, lambda: _build_table(kind, param, grey),
                         shape=(256 * 256,), dtype=np.int32)
    return torch.from_numpy(table)


def _sample(levels: torch.Tensor, table: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """One output level per element of uint8 ``levels``, from 31-bit ``bits`` and a packed table.

    Branch-free (``torch.where`` on a random mask is several times slower): the sign of
    ``fraction - threshold`` selects the cell's own value or its alias.
    """
    own = bits >> _FRACTION_BITS
    cell = levels.to(torch.int32).bitwise_left_shift_(_CELL_BITS).add_(own)
    entry = table.index_select(0, cell.view(-1)).view_as(bits)
    choose_own = bits.bitwise_and(_FRACTION_MASK).sub_(entry >> 8).bitwise_right_shift_(31)
    alias = entry.bitwise_and_(255)
    return own.bitwise_xor_(alias).bitwise_and_(choose_own).bitwise_xor_(alias).to(torch.uint8)


def _noise(images: torch.Tensor, rng: ImageRandom, kind: str, param: float) -> torch.Tensor:
    """Every element sampled from the tables of ``kind``: per channel for RGB, the luminance of
    three channels for grey; one 31-bit draw per element."""
    check_images(images)
    check_rng(rng, images)
    _, c, h, w = images.shape
    table = _table(kind, param, c == 1, images.device)
    bits = rng.bits31((c, h, w)).to(images.device)
    # contiguous: the sampler indexes flat views (generate passes channels-last RGB batches)
    return map_chunks(lambda x, r: _sample(x, table, r), images.contiguous(), bits)


def gaussian_noise(images: torch.Tensor, sigma: float, *, rng: ImageRandom) -> torch.Tensor:
    """Additive Gaussian noise: ``clip(x / 255 + N(0, sigma^2))``, truncated to uint8."""
    sigma = check_real("sigma", sigma, low=0.0)
    return _noise(images, rng, "gaussian", sigma)


def speckle_noise(images: torch.Tensor, sigma: float, *, rng: ImageRandom) -> torch.Tensor:
    """Multiplicative noise: ``clip(x + x * N(0, sigma^2))`` with x in [0, 1], truncated."""
    sigma = check_real("sigma", sigma, low=0.0)
    return _noise(images, rng, "speckle", sigma)


def impulse_noise(images: torch.Tensor, amount: float, *, rng: ImageRandom) -> torch.Tensor:
    """Salt-and-pepper noise as ``skimage.util.random_noise(mode='s&p', amount)``.

    Every element (each channel of a pixel) is replaced with probability ``amount``, by 255 or
    0 with equal probability; the others keep their exact value.
    """
    amount = check_real("amount", amount, low=0.0, high=1.0)
    return _noise(images, rng, "impulse", amount)


def shot_noise(images: torch.Tensor, photons: float, *, rng: ImageRandom) -> torch.Tensor:
    """Poisson (shot) noise: ``clip(Poisson(x / 255 * photons) / photons)``, truncated to uint8.

    The Poisson CDF in float64 gives each output level's probability (several times faster
    to sample than ``torch.poisson`` on CPU, and exact).
    """
    photons = check_real("photons", photons, low=0.0, high=_MAX_PHOTONS, low_open=True)
    return _noise(images, rng, "shot", photons)
