"""Frozen, validated settings of a training run, saved with its outputs and loaded back.

:class:`AdaptConfig` (few-shot LoRA adaptation; it nests the :class:`LoraSettings`) and
:class:`PretrainConfig` (medrobust-mini) hold everything that decides what a run computes;
where files go, the device and progress output are arguments of ``adapt``/``pretrain``.
``to_dict``/``from_dict`` round-trip through JSON; :meth:`AdaptConfig.from_adapter` reads the
settings back from an adapter's ``medrobust_adapter.json`` (whose keys are unchanged since
the first adapters were written).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from medrobust.data import DataOptions
from medrobust.data.fewshot import DEFAULT_SPLIT_RATIOS, check_not_test, partition_indices

from .lora import LoraSettings
from .prompt import PromptSettings

__all__ = [
    "METHODS", "MONITORS", "PRECISIONS", "AdaptConfig", "PretrainConfig", "config_from_dict",
]

PRECISIONS = ("auto", "fp32", "bf16")
MONITORS = ("balanced_accuracy", "loss")
# What adapt trains: LoRA on the vision tower, a prompt context, or both jointly.
METHODS = ("lora", "prompt", "lora+prompt")
DEFAULT_PRETRAIN_DATASETS: tuple[str, ...] = ("breastmnist", "pneumoniamnist", "retinamnist")
# The optimisation settings an adapter's JSON keeps under "training".
_TRAINING_KEYS = (
    "epochs", "lr", "weight_decay", "batch_size", "grad_accum", "warmup", "patience", "monitor",
    "precision",
)

C = TypeVar("C")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_number(name: str, value: Any, low: float, high: float, *, open_low: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if (value <= low if open_low else value < low) or value > high:
        bracket = "(" if open_low else "["
        raise ValueError(f"{name} must lie in {bracket}{low}, {high}], got {value!r}")


def _plain(value: Any) -> Any:
    """JSON-ready: tuples become lists, nested configs dicts."""
    if isinstance(value, tuple):
        return list(value)
    if dataclasses.is_dataclass(value):
        return value.to_dict()
    return value


def config_from_dict(cls: type[C], data: Mapping[str, Any], **nested: type) -> C:
    """``cls(**data)`` with a clear error for unknown keys; ``nested`` names fields that hold
    another config (built with its own ``from_dict``)."""
    if not isinstance(data, Mapping):
        raise TypeError(f"{cls.__name__} settings must be a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings {unknown}; known: {sorted(names)}")
    values = dict(data)
    for key, sub in nested.items():
        if isinstance(values.get(key), Mapping):
            values[key] = sub.from_dict(values[key])
    return cls(**values)


@dataclass(frozen=True)
class AdaptConfig:
    """Settings of one few-shot LoRA adaptation run: data, augmentation, optimisation,
    precision, seed, the LoRA settings and the adapter's label (None: the folder's name).

    ``fewshot`` is a fraction in (0, 1] of each class, ``shots`` k images per class (neither:
    all of ``fewshot_split``); ``warmup`` a fraction of the steps if a float < 1, else steps;
    ``patience`` epochs without improvement before stopping (None: never). ``split_ratios``
    (train, val, test) partition a dataset without splits (an image folder, a split-less npz):
    few-shot data from its train part, validation from its val part, its test part left to eval.
    """

    fewshot: float | None = None
    shots: int | None = None
    fewshot_split: str = "train"
    val_split: str = "val"
    val_limit: int | None = None
    split_ratios: tuple[float, float, float] = DEFAULT_SPLIT_RATIOS
    data_size: int = 28
    resize: bool = True
    templates: str | tuple[str, ...] | None = None
    joint_labels: bool = False
    augment_suite: str | None = None
    exclude_corruptions: tuple[str, ...] = ()
    augment_p: float = 0.5
    epochs: int = 20
    lr: float = 1e-4
    weight_decay: float = 1e-4
    batch_size: int = 64
    grad_accum: int = 1
    warmup: float | int = 0.05
    patience: int | None = 5
    monitor: str = "balanced_accuracy"
    precision: str = "auto"
    seed: int = 0
    lora: LoraSettings = field(default_factory=LoraSettings)
    label: str | None = None
    data_options: DataOptions = field(default_factory=DataOptions)
    method: str = "lora"
    prompt: PromptSettings = field(default_factory=PromptSettings)
    prompt_lr: float = 2e-3

    def __post_init__(self) -> None:
        self._check_data()
        self._check_optimisation()
        if not isinstance(self.lora, LoraSettings):
            raise TypeError(f"lora must be LoraSettings, got {type(self.lora).__name__}")
        if not isinstance(self.data_options, DataOptions):
            raise TypeError(f"data_options must be DataOptions, got {type(self.data_options).__name__}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not isinstance(self.prompt, PromptSettings):
            raise TypeError(f"prompt must be PromptSettings, got {type(self.prompt).__name__}")
        _check_number("prompt_lr", self.prompt_lr, 0.0, math.inf, open_low=True)
        if self.label is not None and (not isinstance(self.label, str) or not self.label):
            raise ValueError(f"label must be a non-empty string or None, got {self.label!r}")

    def _check_data(self) -> None:
        if self.fewshot is not None and self.shots is not None:
            raise ValueError("give fewshot (a fraction) or shots (images per class), not both")
        if self.fewshot is not None:
            _check_number("fewshot", self.fewshot, 0.0, 1.0, open_low=True)
        if self.shots is not None:
            _check_int("shots", self.shots, 1)
        check_not_test(self.fewshot_split)
        check_not_test(self.val_split, "validation data (checkpoint selection)")
        if self.val_limit is not None:
            _check_int("val_limit", self.val_limit, 1)
        object.__setattr__(self, "split_ratios", tuple(float(r) for r in self.split_ratios))
        partition_indices(np.zeros(0, np.int64), self.split_ratios)  # checks the ratios
        _check_int("data_size", self.data_size, 1)
        if self.augment_suite is None and self.exclude_corruptions:
            raise ValueError("exclude_corruptions needs augment_suite")
        object.__setattr__(self, "exclude_corruptions", tuple(self.exclude_corruptions))
        if isinstance(self.templates, list):
            object.__setattr__(self, "templates", tuple(self.templates))
        _check_number("augment_p", self.augment_p, 0.0, 1.0, open_low=False)

    def _check_optimisation(self) -> None:
        _check_int("epochs", self.epochs, 1)
        _check_number("lr", self.lr, 0.0, math.inf, open_low=True)
        _check_number("weight_decay", self.weight_decay, 0.0, math.inf, open_low=False)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("grad_accum", self.grad_accum, 1)
        if isinstance(self.warmup, float):
            if not 0.0 <= self.warmup < 1.0:
                raise ValueError(
                    f"warmup as a float is a fraction of the steps in [0, 1), got {self.warmup!r}"
                )
        else:
            _check_int("warmup", self.warmup, 0)
        if self.patience is not None:
            _check_int("patience", self.patience, 1)
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor must be one of {MONITORS}, got {self.monitor!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        _check_int("seed", self.seed, 0)

    def warmup_steps(self, total_steps: int) -> int:
        if isinstance(self.warmup, float):
            return round(self.warmup * total_steps)
        return min(int(self.warmup), total_steps)

    @property
    def uses_lora(self) -> bool:
        return "lora" in self.method.split("+")

    @property
    def uses_prompt(self) -> bool:
        return "prompt" in self.method.split("+")

    def run_settings(self) -> dict[str, Any]:
        """The data and optimisation settings (no LoRA, no label), as a run's fingerprint has
        always hashed them: an unchanged run resumes and fingerprints as before (the data
        options count only when set, the prompt settings only when a prompt is trained)."""
        skip = {"lora", "label", "data_options"}
        if self.split_ratios == DEFAULT_SPLIT_RATIOS:  # older runs fingerprint as before
            skip.add("split_ratios")
        if not self.uses_prompt:
            skip |= {"method", "prompt", "prompt_lr"}
        settings = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)
                    if f.name not in skip}
        if self.data_options != DataOptions():
            settings["data_options"] = self.data_options.to_dict()
        return settings

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdaptConfig:
        return config_from_dict(cls, data, lora=LoraSettings, data_options=DataOptions,
                                prompt=PromptSettings)

    @classmethod
    def from_adapter(cls, record: Mapping[str, Any]) -> AdaptConfig:
        """The settings a trained adapter was made with, from its ``medrobust_adapter.json``."""
        if record.get("source", {}).get("kind") != "trained" or "data" not in record:
            raise ValueError("this adapter was not trained by medrobust (imported); it has no "
                             "AdaptConfig")
        data, augmentation = record["data"], record.get("augmentation") or {}
        return cls(
            **{k: data[k] for k in ("fewshot", "shots", "fewshot_split", "val_split",
                                    "val_limit", "data_size", "templates")},
            split_ratios=tuple(data.get("split_ratios", DEFAULT_SPLIT_RATIOS)),
            resize=data["resize_to"] is not None,
            joint_labels=data["label_space"] == "joint",
            augment_suite=augmentation.get("suite"),
            exclude_corruptions=tuple(augmentation.get("exclude", ())),
            augment_p=augmentation.get("p", 0.5),
            **{k: record["training"][k] for k in _TRAINING_KEYS},
            seed=record["seeds"]["seed"],
            lora=LoraSettings.from_dict(record["lora"]) if record["lora"] else LoraSettings(),
            label=record.get("label"),
            data_options=DataOptions.from_dict(data.get("data_options") or {}),
            method=record.get("method", "lora"),
            **({"prompt": PromptSettings.from_dict(record["prompt"]["settings"]),
                "prompt_lr": record["training"]["lr_prompt"]} if record.get("prompt") else {}),
        )


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of a medrobust-mini pretraining run (AdamW, linear warm-up, cosine decay).

    ``datasets``: MedMNIST 2D flags of single-label datasets (their train splits train, their
    val splits select the epoch); ``epochs`` passes of N sampled images each (N = the train
    images of all datasets); ``templates_per_step``: caption templates drawn per step (each
    image uses one of them); ``limit``: only the first N images of each split (smoke tests);
    ``tiny``: the registry's tiny config (tests). ``seed`` seeds everything.
    """

    datasets: tuple[str, ...] = DEFAULT_PRETRAIN_DATASETS
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    templates_per_step: int = 3
    seed: int = 0
    limit: int | None = None
    tiny: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.datasets, str) or not self.datasets:
            raise ValueError("datasets must be a non-empty sequence of MedMNIST flags")
        object.__setattr__(self, "datasets", tuple(self.datasets))
        for name in ("epochs", "batch_size", "warmup_steps", "templates_per_step"):
            minimum = 0 if name == "warmup_steps" else 1
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"limit must be a positive int or None, got {self.limit!r}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PretrainConfig:
        return config_from_dict(cls, data)

    @classmethod
    def from_log(cls, record: Mapping[str, Any]) -> PretrainConfig:
        """The settings of a finished run, from its ``pretrain_log.json``."""
        arguments = {k: v for k, v in record["arguments"].items() if k != "device"}
        return cls.from_dict({**arguments, "tiny": bool(record.get("tiny", False))})
