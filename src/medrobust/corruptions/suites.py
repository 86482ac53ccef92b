"""Corruption suites: named sets of corruptions with five severity parameters each.

Built-in suites:

* ``medmnist-c``: the MedMNIST-C corruptions and parameters of one 2D MedMNIST dataset
  (``get_suite("medmnist-c", dataset="breastmnist")`` or ``"medmnist-c/breastmnist"``), as
  published, quirks included (StainDeposit's ink sizes, BlackCorner's severity order), so its
  images and any comparison with the published AlexNet baselines are the benchmark's.
* ``medmnist-c-fixed``: the same with those two quirks corrected (severity k uses the k-th
  ink size; BlackCorner's severities ordered): a named variant, not comparable with the
  published baselines for stain_deposit and black_corner.
* ``imagenet-c``: the 15 ImageNet-C benchmark corruptions plus the 4 held-out ones.
* ``medimeta-c``: the 7 corruptions of MediMeta-C with ImageNet-C parameters.

A user suite is a TOML or YAML file; see :func:`load_suite_file`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..severity import NUM_SEVERITIES, check_severity
from ._medmnist_c_table import MEDMNIST_C_TABLE
from ._random import ImageRandom
from .families import family_of
from .functional._utils import check_images
from .functional.blur import zoom_factors
from .functional.medical import STAIN_INK_SIZES
from .registry import get_function

__all__ = [
    "MEDMNIST_C_VARIANTS",
    "NUM_SEVERITIES",
    "Suite",
    "SuiteEntry",
    "get_suite",
    "list_suites",
    "load_suite_file",
]

REFERENCE_SIZE = 224


@dataclass(frozen=True)
class SuiteEntry:
    """One corruption of a suite: a registered function and its parameter per severity."""

    name: str
    function: str
    params: tuple[Any, ...]
    benchmark: bool = True

    def __post_init__(self) -> None:
        get_function(self.function)
        if len(self.params) != NUM_SEVERITIES:
            raise ValueError(
                f"corruption {self.name!r} needs {NUM_SEVERITIES} severity parameters, "
                f"got {len(self.params)}"
            )

    @property
    def stochastic(self) -> bool:
        return get_function(self.function).stochastic

    def param(self, severity: int, size_factor: float = 1.0) -> Any:
        """The parameter of ``severity``, scaled for images ``size_factor`` x the reference size."""
        return get_function(self.function).scaled(self.params[check_severity(severity) - 1], size_factor)

    def apply(
        self,
        images: torch.Tensor,
        severity: int,
        *,
        seed: int = 0,
        indices: Sequence[int] | None = None,
        size_factor: float = 1.0,
        rng: ImageRandom | None = None,
    ) -> torch.Tensor:
        """Corrupt uint8 images (N, C, H, W) at ``severity``.

        ``indices`` are the images' positions in their dataset (default ``0..N-1``); with
        ``seed`` they key each image's random stream, so results do not depend on batching.
        A ready ``rng`` (one stream per image) replaces ``seed`` and ``indices``.
        """
        check_images(images)
        function = get_function(self.function)
        param = self.param(severity, size_factor)
        if not function.stochastic:
            return function(images, param)
        if rng is None:
            if indices is None:
                indices = range(images.shape[0])
            if len(indices) != images.shape[0]:
                raise ValueError(f"{len(indices)} indices given for {images.shape[0]} images")
            rng = ImageRandom.for_images(seed, self.name, severity, indices, images.device)
        elif len(rng) != images.shape[0]:
            raise ValueError(f"rng has {len(rng)} streams for {images.shape[0]} images")
        return function(images, param, rng=rng)


@dataclass(frozen=True)
class Suite:
    """A named, ordered set of corruptions at five severities each."""

    name: str
    entries: Mapping[str, SuiteEntry]
    reference_size: int = REFERENCE_SIZE
    description: str = ""
    dataset: str | None = None
    source: str = "built-in"
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, corruption: str) -> SuiteEntry:
        try:
            return self.entries[corruption]
        except KeyError:
            raise KeyError(
                f"suite {self.name!r} has no corruption {corruption!r}; "
                f"it has: {', '.join(self.entries)}"
            ) from None

    @property
    def corruptions(self) -> list[str]:
        return list(self.entries)

    @property
    def benchmark_corruptions(self) -> list[str]:
        """The corruptions a mean over the suite (e.g. mCE) is taken over."""
        return [name for name, entry in self.entries.items() if entry.benchmark]

    def select(self, corruptions: Sequence[str] | None) -> Suite:
        """The same suite restricted to ``corruptions`` (in the given order)."""
        if corruptions is None:
            return self
        entries = {name: self[name] for name in corruptions}
        return Suite(self.name, entries, self.reference_size, self.description, self.dataset,
                     self.source, self.metadata)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description (for manifests and `medrobust corruptions`)."""
        return {
            "name": self.name,
            "dataset": self.dataset,
            "reference_size": self.reference_size,
            "source": self.source,
            "corruptions": {
                name: {
                    "function": e.function,
                    "params": [_jsonable(p) for p in e.params],
                    "stochastic": e.stochastic,
                    "benchmark": e.benchmark,
                    "family": _family(name),
                }
                for name, e in self.entries.items()
            },
        }


def _family(name: str) -> str | None:
    """A corruption's family (None for a user suite's name outside every family)."""
    try:
        return family_of(name)
    except KeyError:
        return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


# medmnistc class -> our function.
_MEDMNIST_C_FUNCTIONS = {
    "Pixelate": "pixelate",
    "JPEGCompression": "jpeg_compression",
    "GaussianNoise": "gaussian_noise",
    "SpeckleNoise": "speckle_noise",
    "ImpulseNoise": "impulse_noise",
    "ShotNoise": "shot_noise",
    "DefocusBlur": "defocus_blur",
    "MotionBlur": "motion_blur",
    "ZoomBlur": "zoom_blur",
    "GaussianBlur": "gaussian_blur_kernel",
    "Brightness": "brightness",
    "Contrast": "contrast",
    "GammaCorrection": "gamma",
    "Saturate": "saturate",
    "StainDeposit": "stain_deposit",
    "Bubble": "bubble",
    "BlackCorner": "black_corner",
    "Characters": "characters",
}


def medmnist_c_datasets() -> list[str]:
    """The 12 2D MedMNIST datasets that have a MedMNIST-C suite."""
    return list(MEDMNIST_C_TABLE)


def _medmnist_c_dataset(dataset: str | None, modality: str | None) -> str:
    """The MedMNIST dataset whose MedMNIST-C set a dataset gets; a clear error listing the
    choices when neither its name nor its modality says."""
    from ..data.catalog import MODALITIES, medmnist_c_dataset_for

    flag = medmnist_c_dataset_for(dataset or "", modality)
    if flag is not None:
        return flag
    if dataset is None and modality is None:
        raise ValueError(
            "the medmnist-c suite depends on the dataset: use medmnist-c/<flag> with one of "
            + ", ".join(MEDMNIST_C_TABLE)
        )
    choices = ", ".join(k for k, (_, flag) in MODALITIES.items() if flag)
    known = f"modality {modality!r}" if modality and modality != "unknown" else "no known modality"
    raise KeyError(
        f"no default corruption suite for dataset {dataset!r} ({known}): give --modality "
        f"({choices}) to use that modality's MedMNIST-C corruptions, or --suite "
        f"(medmnist-c/<dataset> with one of {', '.join(MEDMNIST_C_TABLE)}; imagenet-c; "
        "medimeta-c; or a .toml/.yaml file)"
    )


MEDMNIST_C_VARIANTS = ("medmnist-c", "medmnist-c-fixed")
"""The published MedMNIST-C suite and the variant with its two parameter quirks corrected."""

PUBLISHED_STAIN_INK_SIZES = tuple(STAIN_INK_SIZES[max(3, level) - 1] for level in range(5))
"""The reference picks ``inks[str(max(3, severity))]`` with a 0-based severity: 24 px inks at
levels 1-4 and 32 px at level 5 (docs/corruptions.md, defect 6)."""


def _medmnist_c_params(cls: str, params: tuple[Any, ...], fixed: bool) -> tuple[Any, ...]:
    """A MedMNIST-C class's five parameters, as published or with the quirks corrected."""
    if cls == "StainDeposit":
        inks = STAIN_INK_SIZES if fixed else PUBLISHED_STAIN_INK_SIZES
        return tuple(zip(params, inks, strict=True))
    if cls == "BlackCorner" and fixed:
        # published (1.1, 1.05, 1.0, 0.9, 0.95): level 4 is harsher than level 5
        return tuple(sorted(params, reverse=True))
    return tuple(params)


def _medmnist_c_suite(dataset: str, variant: str = "medmnist-c") -> Suite:
    try:
        colour, table = MEDMNIST_C_TABLE[dataset]
    except KeyError:
        raise KeyError(
            f"MedMNIST-C has no dataset {dataset!r}; known: {', '.join(MEDMNIST_C_TABLE)}"
        ) from None
    fixed = variant == "medmnist-c-fixed"
    entries = {
        name: SuiteEntry(name, _MEDMNIST_C_FUNCTIONS[cls], _medmnist_c_params(cls, params, fixed))
        for name, (cls, params) in table.items()
    }
    what = ("StainDeposit ink sizes and BlackCorner order corrected" if fixed
            else "as published, quirks included")
    return Suite(
        variant,
        entries,
        description=f"MedMNIST-C corruptions of {dataset} ({colour}; {what})",
        dataset=dataset,
        metadata={"colour": colour, "variant": "fixed" if fixed else "published"},
    )


_ZOOMS = (
    zoom_factors(1, 1.11, 0.01),
    zoom_factors(1, 1.16, 0.01),
    zoom_factors(1, 1.21, 0.02),
    zoom_factors(1, 1.26, 0.02),
    zoom_factors(1, 1.31, 0.03),
)

# ImageNet-C (imagecorruptions 1.1.2) severity parameters; the last four are held out of mCE.
_IMAGENET_C = (
    ("gaussian_noise", "gaussian_noise", (0.08, 0.12, 0.18, 0.26, 0.38), True),
    ("shot_noise", "shot_noise", (60, 25, 12, 5, 3), True),
    ("impulse_noise", "impulse_noise", (0.03, 0.06, 0.09, 0.17, 0.27), True),
    ("defocus_blur", "defocus_blur", ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)), True),
    ("glass_blur", "glass_blur",
     ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)), True),
    ("motion_blur", "motion_blur", ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)), True),
    ("zoom_blur", "zoom_blur", _ZOOMS, True),
    ("snow", "snow", (
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
        (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
        (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    ), True),
    ("frost", "frost", ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)), True),
    ("fog", "fog", ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)), True),
    ("brightness", "brightness_hsv", (0.1, 0.2, 0.3, 0.4, 0.5), True),
    ("contrast", "contrast_mean", (0.4, 0.3, 0.2, 0.1, 0.05), True),
    ("elastic_transform", "elastic_transform",
     (250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12), True),
    ("pixelate", "pixelate_nearest", (0.6, 0.5, 0.4, 0.3, 0.25), True),
    ("jpeg_compression", "jpeg_compression", (25, 18, 15, 10, 7), True),
    ("speckle_noise", "speckle_noise", (0.15, 0.2, 0.35, 0.45, 0.6), False),
    ("gaussian_blur", "gaussian_blur", (1, 2, 3, 4, 6), False),
    ("spatter", "spatter", (
        (0.65, 0.3, 4, 0.69, 0.6, 0),
        (0.65, 0.3, 3, 0.68, 0.6, 0),
        (0.65, 0.3, 2, 0.68, 0.5, 0),
        (0.65, 0.3, 1, 0.65, 1.5, 1),
        (0.67, 0.4, 1, 0.65, 1.5, 1),
    ), False),
    ("saturate", "saturate_hsv", ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)), False),
)

MEDIMETA_C_CORRUPTIONS = (
    "brightness",
    "contrast",
    "gaussian_noise",
    "impulse_noise",
    "motion_blur",
    "pixelate",
    "zoom_blur",
)


def _imagenet_c_suite() -> Suite:
    entries = {
        name: SuiteEntry(name, function, params, benchmark)
        for name, function, params, benchmark in _IMAGENET_C
    }
    return Suite("imagenet-c", entries,
                 description="ImageNet-C: 15 benchmark corruptions + 4 held out (imagecorruptions)")


def _medimeta_c_suite() -> Suite:
    imagenet_c = _imagenet_c_suite()
    entries = {name: imagenet_c.entries[name] for name in MEDIMETA_C_CORRUPTIONS}
    return Suite("medimeta-c", entries,
                 description="MediMeta-C: 7 ImageNet-C corruptions with ImageNet-C parameters")


def list_suites() -> list[str]:
    """Names of the built-in suites (``medmnist-c`` needs a dataset)."""
    return [*MEDMNIST_C_VARIANTS, "imagenet-c", "medimeta-c"]


def get_suite(name: str | Path, dataset: str | None = None, modality: str | None = None) -> Suite:
    """A suite by name (``medmnist-c[-fixed][/DATASET]``, ``imagenet-c``, ``medimeta-c``) or file path.

    Plain ``medmnist-c`` is the MedMNIST-C set of ``dataset`` when it is a MedMNIST dataset,
    else of the MedMNIST dataset that ``modality`` stands for (see
    :func:`medrobust.data.medmnist_c_dataset_for`); other suites ignore both.
    """
    text = str(name)
    if text.endswith((".toml", ".yaml", ".yml")):
        return load_suite_file(text)
    base, _, suffix = text.partition("/")
    if base in MEDMNIST_C_VARIANTS:
        return _medmnist_c_suite(suffix or _medmnist_c_dataset(dataset, modality), base)
    if suffix:
        raise KeyError(f"suite {base!r} takes no dataset; known suites: {', '.join(list_suites())}")
    if base == "imagenet-c":
        return _imagenet_c_suite()
    if base == "medimeta-c":
        return _medimeta_c_suite()
    raise KeyError(
        f"unknown suite {text!r}; known: {', '.join(list_suites())}, or a .toml/.yaml file"
    )


def _as_tuple(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_as_tuple(v) for v in value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"severity parameters must be numbers or lists of numbers, got {value!r}")
    return value


def load_suite_file(path: str | Path) -> Suite:
    """Read a user suite.

    TOML example::

        name = "my-suite"
        reference_size = 224          # optional
        [corruptions.soft_noise]
        function = "gaussian_noise"   # optional, defaults to the table name
        params = [0.02, 0.04, 0.06, 0.08, 0.1]

    YAML has the same structure.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"suite file not found: {path}")
    try:
        if path.suffix == ".toml":
            with path.open("rb") as fh:
                spec = tomllib.load(fh)
        else:
            import yaml

            with path.open() as fh:
                spec = yaml.safe_load(fh)
    except Exception as exc:
        raise ValueError(f"cannot parse suite file {path}: {exc}") from exc
    if not isinstance(spec, dict) or not isinstance(spec.get("corruptions"), dict) or not spec["corruptions"]:
        raise ValueError(f"suite file {path} needs a non-empty 'corruptions' table")
    entries = {}
    for name, item in spec["corruptions"].items():
        if not isinstance(item, dict) or "params" not in item:
            raise ValueError(f"suite file {path}: corruption {name!r} needs 'params' (5 values)")
        try:
            entries[name] = SuiteEntry(
                str(name),
                str(item.get("function", name)),
                _as_tuple(item["params"]),
                bool(item.get("benchmark", True)),
            )
        except (KeyError, ValueError) as exc:
            raise ValueError(f"suite file {path}: corruption {name!r}: {exc}") from None
    size = spec.get("reference_size", REFERENCE_SIZE)
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"suite file {path}: reference_size must be an integer >= 8, got {size!r}")
    return Suite(str(spec.get("name", path.stem)), entries, size,
                 str(spec.get("description", "")), source=str(path))
