"""Sample montages: what each corruption looks like at each severity."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .._files import atomic_path
from ..corruptions.api import prepare_images
from ..corruptions.suites import Suite
from ..severity import CLEAN, SEVERITIES

__all__ = ["corruption_montage", "save_png_atomic"]

_LABEL_WIDTH = 150
_HEADER = 22


def corruption_montage(
    images: torch.Tensor,
    suite: Suite,
    *,
    indices: Sequence[int] | None = None,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    tile: int = 128,
    resize: bool = True,
) -> Image.Image:
    """A grid image: one row per (corruption, sample), columns clean then each severity.

    ``images`` are uint8 (N, C, H, W) samples; ``indices`` their dataset indices, so the
    tiles show exactly what a generated benchmark holds for those images.
    """
    names = list(corruptions or suite.corruptions)
    prepared = prepare_images(images, suite.reference_size if resize else None)
    factor = 1.0 if resize else prepared.shape[-1] / suite.reference_size
    indices = list(range(len(prepared))) if indices is None else list(indices)
    rows: list[tuple[str, list[np.ndarray]]] = []
    for name in names:
        outs = [prepared] + [
            suite[name].apply(prepared, s, seed=seed, indices=indices, size_factor=factor)
            for s in severities
        ]
        for i in range(len(prepared)):
            rows.append((name, [_tile(o[i], tile) for o in outs]))
    columns = [CLEAN, *[f"severity {s}" for s in severities]]
    canvas = Image.new("RGB", (_LABEL_WIDTH + tile * len(columns), _HEADER + tile * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for c, title in enumerate(columns):
        draw.text((_LABEL_WIDTH + c * tile + 4, 4), title, fill="black", font=font)
    for r, (name, tiles) in enumerate(rows):
        y = _HEADER + r * tile
        draw.text((4, y + tile // 2 - 6), name, fill="black", font=font)
        for c, array in enumerate(tiles):
            canvas.paste(Image.fromarray(array), (_LABEL_WIDTH + c * tile, y))
    return canvas


def _tile(image: torch.Tensor, size: int) -> np.ndarray:
    array = image.cpu().numpy()
    array = np.repeat(array, 3, axis=0) if array.shape[0] == 1 else array
    pil = Image.fromarray(array.transpose(1, 2, 0))
    return np.asarray(pil.resize((size, size), Image.Resampling.NEAREST if pil.width < size else Image.Resampling.BILINEAR))


def save_png_atomic(image: Image.Image, path: str | Path) -> Path:
    """Save a PNG through a temporary file so a crash never leaves half an image."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)
