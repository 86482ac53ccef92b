"""Few-shot sampling: stratified, seeded, nested fractions, never the test split."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from medrobust.data import ImageDataset, load_medmnist
from medrobust.data.fewshot import (
    PAPER_FRACTIONS,
    check_not_test,
    fewshot_indices,
    sample_fewshot,
    split_fewshot,
)


@pytest.fixture(scope="module")
def pneumonia(shared_data) -> ImageDataset:
    return load_medmnist("pneumoniamnist", "train", root=shared_data, download=False)


def test_fraction_is_stratified_per_class(pneumonia: ImageDataset) -> None:
    sample = sample_fewshot(pneumonia, fraction=0.03, seed=7)
    full = np.bincount(pneumonia.labels)
    got = np.bincount(sample.labels, minlength=2)
    np.testing.assert_array_equal(got, [max(1, math.floor(0.03 * n + 0.5)) for n in full])
    # sklearn's stratified split of the same size allocates the same counts (to one image)
    _, ref = train_test_split(
        np.arange(len(pneumonia)), test_size=int(got.sum()), stratify=pneumonia.labels,
        random_state=0,
    )
    assert np.abs(np.bincount(pneumonia.labels[ref], minlength=2) - got).max() <= 1
    # rows are real rows of the split, with indices into the original dataset
    assert sample.split == "train" and len(set(sample.indices.tolist())) == len(sample)
    np.testing.assert_array_equal(sample.images, pneumonia.images[sample.indices])


def test_shots_per_class_and_seeding(pneumonia: ImageDataset) -> None:
    a = sample_fewshot(pneumonia, shots=5, seed=1)
    np.testing.assert_array_equal(np.bincount(a.labels), [5, 5])
    b = sample_fewshot(pneumonia, shots=5, seed=1)
    c = sample_fewshot(pneumonia, shots=5, seed=2)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, c.indices)


def test_paper_fractions_are_nested(pneumonia: ImageDataset) -> None:
    samples = [set(fewshot_indices(pneumonia.labels, fraction=f, key="x").tolist())
               for f in PAPER_FRACTIONS]
    for small, large in itertools.pairwise(samples):
        assert small < large


def test_split_is_a_partition(pneumonia: ImageDataset) -> None:
    sample, rest = split_fewshot(pneumonia, fraction=0.1, seed=0)
    assert not set(sample.indices) & set(rest.indices)
    assert len(sample) + len(rest) == len(pneumonia)
    assert sample_fewshot(pneumonia, fraction=1.0).indices.tolist() == list(range(len(pneumonia)))


def test_class_stream_independent_of_other_classes() -> None:
    labels = np.array([0] * 50 + [1] * 30)
    relabelled = labels.copy()
    relabelled[60:] = 2  # class 1 split in two: class 0's draw must not move
    a = fewshot_indices(labels, shots=4, seed=3, key="d")
    b = fewshot_indices(relabelled, shots=4, seed=3, key="d")
    np.testing.assert_array_equal(a[a < 50], b[b < 50])


def test_small_class_takes_all_with_warning() -> None:
    labels = np.array([0] * 10 + [1] * 2)
    with pytest.warns(UserWarning, match="class 1 has only 2 images"):
        picked = fewshot_indices(labels, shots=4)
    np.testing.assert_array_equal(np.bincount(labels[picked]), [4, 2])


def test_refuses_the_test_split(shared_data) -> None:
    test = load_medmnist("breastmnist", "test", root=shared_data, download=False)
    with pytest.raises(ValueError, match="must not come from the 'test' split"):
        sample_fewshot(test, fraction=0.1)
    with pytest.raises(ValueError, match="'test' split"):
        check_not_test("Test", "validation data")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fraction": 0.0}, r"\(0, 1\]"),
        ({"fraction": 1.5}, r"\(0, 1\]"),
        ({"fraction": float("nan")}, r"\(0, 1\]"),
        ({"fraction": -0.1}, r"\(0, 1\]"),
        ({"fraction": 0.1, "shots": 2}, "not both"),
        ({}, "give fraction"),
        ({"shots": 0}, "positive int"),
        ({"shots": 2.5}, "positive int"),
    ],
)
def test_bad_requests(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fewshot_indices(np.array([0, 1, 0, 1]), **kwargs)


def test_multi_label_rejected() -> None:
    images = np.zeros((4, 8, 8), dtype=np.uint8)
    ds = ImageDataset("m", "train", images, np.array([[0, 1], [1, 0], [1, 1], [0, 0]]),
                      ["a", "b"], "x", "multi-label", "synthetic")
    with pytest.raises(ValueError, match="multi-label"):
        sample_fewshot(ds, shots=1)


@pytest.mark.parametrize("ratios", [(0.6, 0.2, 0.2), (0.5, 0.25, 0.25)])
def test_partition_is_stratified_disjoint_covering_and_seeded(ratios) -> None:
    from medrobust.data.fewshot import partition_indices

    labels = np.repeat(np.arange(4), [3, 10, 40, 2])
    parts = partition_indices(labels, ratios, seed=3, key="folder")
    together = np.concatenate(list(parts.values()))
    assert np.array_equal(np.sort(together), np.arange(labels.size))  # disjoint and covering
    for label, n in zip(range(3), (3, 10, 40), strict=True):
        counts = [int((labels[parts[p]] == label).sum()) for p in ("train", "val", "test")]
        assert min(counts) >= 1 and sum(counts) == n
        expected = [max(1, math.floor(r * n + 0.5)) for r in ratios[1:]]
        assert counts[1:] == expected
    assert [int((labels[parts[p]] == 3).sum()) for p in ("train", "val", "test")] == [1, 1, 0]
    again = partition_indices(labels, ratios, seed=3, key="folder")
    assert all(np.array_equal(parts[p], again[p]) for p in parts)
    other = partition_indices(labels, ratios, seed=4, key="folder")
    assert not np.array_equal(parts["test"], other["test"])


@pytest.mark.parametrize("ratios", [(0.5, 0.5), (0.6, 0.2, 0.3), (1.0, 0.0, 0.0), (0.8, -0.1, 0.3)])
def test_partition_refuses_bad_ratios(ratios) -> None:
    from medrobust.data.fewshot import partition_indices

    with pytest.raises(ValueError, match="ratios"):
        partition_indices(np.arange(10) % 2, ratios)
