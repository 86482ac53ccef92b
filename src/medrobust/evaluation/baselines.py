"""Published baseline errors: the denominators of corruption-robustness ratios.

* MedMNIST-C (Di Salvo et al., 2024): per dataset, AlexNet's clean balanced error
  (1 - balanced accuracy) and its balanced error per corruption averaged over the 5 severities,
  the denominators of BE and relative BE. Shipped as ``data/medmnist_c_alexnet_baselines.json``.
* ImageNet-C (Hendrycks & Dietterich, 2019): AlexNet's top-1 error per corruption averaged over
  the 5 severities, for the 15 corruptions of mCE. Shipped as ``data/imagenet_c_alexnet.json``.

Baselines are always looked up by corruption name; a bad name raises a KeyError that lists the
known names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Any

__all__ = [
    "IMAGENET_C_ALEXNET",
    "IMAGENET_C_CORRUPTIONS",
    "available_baselines",
    "load_medmnist_c_alexnet",
    "medmnist_c_alexnet_error",
    "medmnist_c_datasets",
]

_MEDMNIST_C_FILE = "medmnist_c_alexnet_baselines.json"
_IMAGENET_C_FILE = "imagenet_c_alexnet.json"


@cache
def _read_json(name: str) -> Mapping[str, Any]:
    """Parse a packaged baseline table once (read-only for callers: public functions copy)."""
    text = (resources.files("medrobust.evaluation") / "data" / name).read_text(encoding="utf-8")
    return json.loads(text)


def _medmnist_c_table() -> Mapping[str, Any]:
    return _read_json(_MEDMNIST_C_FILE)["datasets"]


def medmnist_c_datasets() -> tuple[str, ...]:
    """Names of the MedMNIST-C datasets that have AlexNet baselines (sorted)."""
    return tuple(sorted(_medmnist_c_table()))


def load_medmnist_c_alexnet(dataset: str) -> tuple[float, dict[str, float]]:
    """AlexNet's clean balanced error and ``{corruption: severity-averaged balanced error}``.

    Errors are 1 - balanced accuracy, as MedMNIST-C's Evaluator computes them. The corruption
    names are exactly that dataset's MedMNIST-C suite. Raises KeyError for an unknown dataset.
    """
    table = _medmnist_c_table()
    if dataset not in table:
        raise KeyError(
            f"no MedMNIST-C AlexNet baseline for dataset {dataset!r}; "
            f"known datasets: {', '.join(sorted(table))}"
        )
    entry = table[dataset]
    return float(entry["clean"]), {name: float(e) for name, e in entry["corruptions"].items()}


def medmnist_c_alexnet_error(dataset: str, corruption: str) -> float:
    """AlexNet's severity-averaged balanced error of one MedMNIST-C (dataset, corruption) pair."""
    _, errors = load_medmnist_c_alexnet(dataset)
    if corruption not in errors:
        raise KeyError(
            f"no MedMNIST-C AlexNet baseline for corruption {corruption!r} of {dataset}; "
            f"known corruptions for {dataset}: {', '.join(errors)}"
        )
    return errors[corruption]


def _load_imagenet_c() -> Mapping[str, float]:
    errors = _read_json(_IMAGENET_C_FILE)["errors"]
    return MappingProxyType({name: float(e) for name, e in errors.items()})


IMAGENET_C_ALEXNET: Mapping[str, float] = _load_imagenet_c()
"""AlexNet top-1 error per ImageNet-C corruption, averaged over severities 1-5 (read-only)."""

IMAGENET_C_CORRUPTIONS: tuple[str, ...] = tuple(IMAGENET_C_ALEXNET)
"""The 15 corruptions of ImageNet-C's mCE (held out: speckle, gaussian_blur, spatter, saturate)."""


def available_baselines() -> dict[str, tuple[str, ...]]:
    """The packaged baselines: ``{baseline family: datasets it covers}``."""
    return {
        "imagenet_c_alexnet": ("imagenet",),
        "medmnist_c_alexnet": medmnist_c_datasets(),
    }
