"""Few-shot training subsets: a stratified, seeded fraction or k images per class.

Each class gets its own random stream (seeded by the seed, a key such as the dataset name and
the class), so the sample of one class does not depend on the others, and a smaller fraction
is always a subset of a larger one (the paper's 1, 3, 7 and 10 % samples are nested). The test
split is refused: few-shot data and checkpoint selection must never see the images a model
is finally scored on.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from ..seeding import seed_words
from .datasets import ImageDataset

__all__ = [
    "DEFAULT_SPLIT_RATIOS",
    "PAPER_FRACTIONS",
    "check_not_test",
    "fewshot_indices",
    "partition_indices",
    "sample_fewshot",
    "split_fewshot",
]

PAPER_FRACTIONS: tuple[float, ...] = (0.01, 0.03, 0.07, 0.10)
TEST_SPLIT = "test"


def check_not_test(split: str, what: str = "few-shot training data") -> None:
    """Raise ValueError when ``split`` is the test split (reserved for ``medrobust eval``)."""
    if str(split).strip().lower() == TEST_SPLIT:
        raise ValueError(
            f"{what} must not come from the 'test' split: it is reserved for the final "
            "evaluation (choosing data or checkpoints on it leaks the test set). Use 'train' or "
            "'val'."
        )


def _check_request(fraction: float | None, shots: int | None) -> None:
    if fraction is not None and shots is not None:
        raise ValueError("give either fraction (fewshot) or shots (images per class), not both")
    if fraction is None and shots is None:
        raise ValueError("give fraction (in (0, 1]) or shots (images per class >= 1)")
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise TypeError(f"fraction must be a number in (0, 1], got {fraction!r}")
        if not (math.isfinite(fraction) and 0.0 < fraction <= 1.0):
            raise ValueError(
                f"fraction must lie in (0, 1] (e.g. 0.01 for 1 %), got {fraction!r}"
            )
    if shots is not None and (
        isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots < 1
    ):
        raise ValueError(f"shots must be a positive int (images per class), got {shots!r}")


def fewshot_indices(
    labels: np.ndarray,
    *,
    fraction: float | None = None,
    shots: int | None = None,
    seed: int = 0,
    key: str = "",
) -> np.ndarray:
    """Sorted positions of a stratified sample of single-label ``labels`` (N,).

    ``fraction``: each class keeps ``round(fraction * n_class)`` images, at least one.
    ``shots``: each class keeps ``shots`` images (all of them, with a warning, if it has fewer).
    Class ``c``'s images are drawn from ``numpy.random.default_rng([seed, crc32(key), c])``.
    """
    _check_request(fraction, shots)
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(
            f"labels must be a 1-D integer array (single-label task), got shape {labels.shape} "
            f"and dtype {labels.dtype}; multi-label datasets cannot be stratified per class"
        )
    chosen: list[np.ndarray] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if fraction is not None:
            take = max(1, math.floor(fraction * members.size + 0.5))
        else:
            take = int(shots)
            if members.size < take:
                warnings.warn(
                    f"{key or 'dataset'}: class {int(label)} has only {members.size} images, "
                    f"fewer than shots={take}; all of them are used",
                    stacklevel=2,
                )
        rng = np.random.default_rng(seed_words(seed, key, int(label)))
        chosen.append(members[rng.permutation(members.size)[:take]])
    if not chosen:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _check_dataset(dataset: ImageDataset) -> None:
    if not isinstance(dataset, ImageDataset):
        raise TypeError(f"expected an ImageDataset, got {type(dataset).__name__}")
    check_not_test(dataset.split)
    if dataset.multi_label:
        raise ValueError(
            f"{dataset.name} is multi-label; few-shot sampling (and LoRA training with a "
            "softmax cross-entropy) needs a single-label dataset"
        )


def split_fewshot(
    dataset: ImageDataset,
    *,
    fraction: float | None = None,
    shots: int | None = None,
    seed: int = 0,
) -> tuple[ImageDataset, ImageDataset]:
    """(the stratified sample, the rest of the split): the rest serves as held-out validation
    when the sample and the validation set come from the same split. Refuses the test split."""
    _check_dataset(dataset)
    picked = fewshot_indices(
        dataset.labels, fraction=fraction, shots=shots, seed=seed, key=dataset.name
    )
    mask = np.zeros(len(dataset), dtype=bool)
    mask[picked] = True
    return dataset.subset(picked), dataset.subset(np.flatnonzero(~mask))


def sample_fewshot(
    dataset: ImageDataset,
    *,
    fraction: float | None = None,
    shots: int | None = None,
    seed: int = 0,
) -> ImageDataset:
    """A stratified, seeded few-shot subset of ``dataset`` (a train or val split, never test).

    The subset's ``indices`` still point into the original split.
    """
    return split_fewshot(dataset, fraction=fraction, shots=shots, seed=seed)[0]


DEFAULT_SPLIT_RATIOS: tuple[float, float, float] = (0.6, 0.2, 0.2)
PARTS = ("train", "val", "test")


def partition_indices(
    labels: np.ndarray,
    ratios: Sequence[float] = DEFAULT_SPLIT_RATIOS,
    *,
    seed: int = 0,
    key: str = "",
) -> dict[str, np.ndarray]:
    """A seeded, class-stratified train/val/test partition of a dataset without splits.

    Each class is shuffled by ``numpy.random.default_rng([seed, crc32(key + '/partition'),
    class])`` and cut by ``ratios`` (train, val, test; summing to 1); a class with >= 3 images
    gets at least one in every part (2 images: train and val; 1: train). Returns sorted
    positions per part; together they are exactly ``range(len(labels))``, each position once.
    """
    ratios = tuple(float(r) for r in ratios)
    if len(ratios) != 3 or any(not math.isfinite(r) or r <= 0 for r in ratios) or not math.isclose(
        sum(ratios), 1.0, abs_tol=1e-6
    ):
        raise ValueError(
            f"split ratios must be three positive numbers (train, val, test) summing to 1, "
            f"e.g. 0.6,0.2,0.2; got {ratios}"
        )
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError("labels must be a 1-D integer array to stratify a train/val/test split")
    parts: dict[str, list[np.ndarray]] = {p: [] for p in PARTS}
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng = np.random.default_rng(seed_words(seed, f"{key}/partition", int(label)))
        members = members[rng.permutation(members.size)]
        n = members.size
        n_val = max(1, math.floor(ratios[1] * n + 0.5)) if n >= 3 else n - 1
        n_test = max(1, math.floor(ratios[2] * n + 0.5)) if n >= 3 else 0
        n_train = n - n_val - n_test
        if n_train < 1:
            n_train, n_val, n_test = 1, 1, n - 2
        cuts = np.cumsum([n_train, n_val])
        for part, chunk in zip(PARTS, np.split(members, cuts), strict=True):
            parts[part].append(chunk)
    out = {p: np.sort(np.concatenate(c)).astype(np.int64) if c else np.zeros(0, np.int64)
           for p, c in parts.items()}
    together = np.concatenate(list(out.values()))
    if together.size != labels.size or not np.array_equal(np.sort(together), np.arange(labels.size)):
        raise RuntimeError("train/val/test parts are not a partition of the dataset")
    return out
