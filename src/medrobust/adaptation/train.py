"""Few-shot LoRA adaptation of a model's vision tower (RobustMedCLIP's recipe, done right).

What differs from the official code (see the reference notes on its defects):

- the loss is the cross-entropy of the model's own logits, ``logit_scale x cosine`` against
  frozen text prototypes computed once per dataset with the evaluation's prompts; each batch
  comes from one dataset and is scored in that dataset's label space (a joint label space over
  all datasets is an option, keyed ``dataset/class`` so identical class names never collide);
- few-shot data come from train (or val), stratified and seeded; the checkpoint is chosen on a
  held-out validation set (the val split, or the rest of the split the sample came from),
  never on test; epoch 0 (the untouched base model) is a candidate too;
- LoRA B starts at zero on every adapted layer (outputs equal the base's at initialisation) and
  every LoRA weight is saved; rank, alpha, dropout and targets are all used;
- optional training-time corruptions from a suite (test corruptions excludable).

The whole model stays in eval mode (BatchNorm statistics frozen, base dropout off); only the
LoRA dropout layers train. AdamW with linear warm-up then cosine decay, bf16 autocast on GPU,
gradient accumulation, early stopping on validation balanced accuracy or loss, and a
resumable state written atomically each epoch. All randomness comes from generators seeded by
``(seed, purpose, epoch)``, so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from medrobust.corruptions import RandomCorruption, derive_seed, get_suite, prepare_images
from medrobust.corruptions.suites import REFERENCE_SIZE
from medrobust.data import ImageDataset, open_dataset
from medrobust.data.fewshot import check_not_test, sample_fewshot, split_fewshot
from medrobust.evaluation.metrics import cell_metrics
from medrobust.models import ModelAdapter
from medrobust.models.zeroshot import ZeroShotClassifier

from .checkpoint import (
    ADAPTER_CONFIG,
    STATE_FILE,
    base_source,
    load_train_state,
    prepare_base,
    save_adapter,
    save_train_state,
)
from .lora import (
    LoraSettings,
    apply_lora,
    detect_architecture,
    load_lora_state_dict,
    lora_parameters,
    lora_state_dict,
    set_lora_training,
    vision_fingerprint,
)

__all__ = ["MONITORS", "PRECISIONS", "AdaptConfig", "LoraTrainer", "adapt", "cosine_warmup"]

PRECISIONS = ("auto", "fp32", "bf16")
MONITORS = ("balanced_accuracy", "loss")
_DEVICE_BYTES = 2 << 30  # few-shot images up to this size live on the accelerator
_CACHE_BYTES = 4 << 30  # few-shot images up to this size are resized once, not every step


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_number(name: str, value: Any, low: float, high: float, *, open_low: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if (value <= low if open_low else value < low) or value > high:
        bracket = "(" if open_low else "["
        raise ValueError(f"{name} must lie in {bracket}{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class AdaptConfig:
    """Validated data, augmentation and optimisation settings of one adaptation run."""

    fewshot: float | None = None
    shots: int | None = None
    fewshot_split: str = "train"
    val_split: str = "val"
    val_limit: int | None = None
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

    def __post_init__(self) -> None:
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
        _check_int("data_size", self.data_size, 1)
        if self.augment_suite is None and self.exclude_corruptions:
            raise ValueError("exclude_corruptions needs augment_suite")
        object.__setattr__(self, "exclude_corruptions", tuple(self.exclude_corruptions))
        if isinstance(self.templates, list):
            object.__setattr__(self, "templates", tuple(self.templates))
        _check_number("augment_p", self.augment_p, 0.0, 1.0, open_low=False)
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


def cosine_warmup(step: int, *, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return torch.bfloat16 if precision == "bf16" else None


class LoraTrainer:
    """Optimizer, schedule, mixed precision and the per-batch step of LoRA training.

    ``heads[h]`` is a (K, D) matrix of unit text prototypes; a batch scored against head
    ``h`` has labels in ``0..K-1``. A step takes raw uint8 images and does everything the
    training loop does: transfer, resize to the corruption suite's size, optional corruption,
    the model's own preprocessing, the forward under autocast, the loss, the backward and (every
    ``grad_accum`` batches) the optimizer and schedule step.
    """

    def __init__(
        self,
        model: ModelAdapter,
        heads: Sequence[Tensor],
        *,
        lr: float,
        weight_decay: float,
        total_steps: int,
        warmup_steps: int,
        grad_accum: int = 1,
        amp_dtype: torch.dtype | None = None,
        resize_to: int | None = None,
    ) -> None:
        self.model = model
        self.params = [p for _, p in lora_parameters(model)]
        if not self.params:
            raise ValueError("the model has no LoRA parameters to train (call apply_lora first)")
        self.device = self.params[0].device
        self.heads = [h.to(self.device, torch.float32) for h in heads]
        self.scale = float(model.logit_scale)
        self.grad_accum = int(grad_accum)
        self.amp_dtype = amp_dtype
        self.resize_to = resize_to
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, partial(cosine_warmup, warmup=warmup_steps, total=total_steps)
        )
        self.pending = 0  # batches accumulated since the last optimizer step
        self.steps = 0  # optimizer steps taken

    def loss(
        self,
        images: Tensor,
        labels: Tensor,
        head: int,
        *,
        augment: RandomCorruption | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Mean cross-entropy of ``logit_scale x cosine`` logits for raw uint8 images."""
        x = images.to(self.device, non_blocking=True)
        if self.resize_to is not None:
            x = prepare_images(x, self.resize_to)
        if augment is not None:
            x = augment(x, generator=generator)
        pixels = self.model.preprocess(x)
        amp = self.amp_dtype
        with torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            features = self.model.encode_image(pixels)
        features = F.normalize(features.float(), dim=-1)
        logits = self.scale * features @ self.heads[head].T
        return F.cross_entropy(logits, labels.to(self.device, non_blocking=True))

    def train_step(
        self,
        images: Tensor,
        labels: Tensor,
        head: int,
        *,
        augment: RandomCorruption | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Forward and backward of one batch; steps the optimizer every ``grad_accum`` batches.
        Returns the batch's loss (detached, on the device: no synchronisation)."""
        loss = self.loss(images, labels, head, augment=augment, generator=generator)
        (loss / self.grad_accum).backward()
        self.pending += 1
        if self.pending == self.grad_accum:
            self._step()
        return loss.detach()

    def flush(self) -> None:
        """Apply a partial accumulation (end of epoch), rescaled to a mean over its batches."""
        if self.pending:
            factor = self.grad_accum / self.pending
            for p in self.params:
                if p.grad is not None:
                    p.grad.mul_(factor)
            self._step()

    def _step(self) -> None:
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.pending = 0
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "steps": self.steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps = int(state["steps"])
        self.pending = 0


@dataclass
class _Task:
    """One dataset of the run: its few-shot sample, validation set and scoring."""

    name: str
    images: Tensor
    labels: Tensor
    val: ImageDataset
    classifier: ZeroShotClassifier | None = None
    head: int = 0
    augment: RandomCorruption | None = None
    record: dict[str, Any] = field(default_factory=dict)


def _open_pool(item: str | ImageDataset, cfg: AdaptConfig, root: Any) -> ImageDataset:
    if isinstance(item, ImageDataset):
        return item
    if not isinstance(item, (str, Path)):
        raise TypeError(f"datasets must be names or ImageDatasets, got {type(item).__name__}")
    return open_dataset(item, split=cfg.fewshot_split, size=cfg.data_size, root=root)


def _prepare_task(item: str | ImageDataset, cfg: AdaptConfig, root: Any) -> _Task:
    pool = _open_pool(item, cfg, root)
    fraction = 1.0 if cfg.fewshot is None and cfg.shots is None else cfg.fewshot
    sample, rest = split_fewshot(pool, fraction=fraction, shots=cfg.shots, seed=cfg.seed)
    if isinstance(item, ImageDataset) or cfg.val_split == pool.split:
        val, val_from = rest, f"held-out rest of the {pool.split!r} split"
    else:
        val = open_dataset(item, split=cfg.val_split, size=cfg.data_size, root=root)
        val_from = f"the {cfg.val_split!r} split"
    if cfg.val_limit is not None and len(val) > cfg.val_limit:
        val = sample_fewshot(val, fraction=cfg.val_limit / len(val), seed=cfg.seed)
    if len(val) == 0:
        raise ValueError(
            f"{pool.name}: no validation images left ({val_from}); use a smaller fewshot/shots "
            "or a separate val_split"
        )
    counts = np.bincount(sample.labels, minlength=sample.num_classes)
    record = {
        "name": pool.name,
        "source": pool.source,
        "fewshot_split": pool.split,
        "n_pool": len(pool),
        "n_train": len(sample),
        "train_class_counts": counts.tolist(),
        "train_indices_sha256": hashlib.sha256(sample.indices.tobytes()).hexdigest(),
        "validation": val_from,
        "n_val": len(val),
        "class_names": list(pool.class_names),
        "modality": pool.modality,
    }
    return _Task(
        name=pool.name,
        images=sample.to_tensor(),
        labels=sample.labels_tensor(),
        val=val,
        record=record,
    )


def _augmenters(tasks: Sequence[_Task], cfg: AdaptConfig) -> dict[str, Any] | None:
    """Attach a RandomCorruption per dataset; return the augmentation record."""
    if cfg.augment_suite is None:
        return None
    suites = {
        t.name: get_suite(cfg.augment_suite, t.name if cfg.augment_suite == "medmnist-c" else None)
        for t in tasks
    }
    known = set().union(*(s.entries for s in suites.values()))
    unknown = sorted(set(cfg.exclude_corruptions) - known)
    if unknown:
        raise ValueError(
            f"exclude_corruptions {unknown} are not in suite {cfg.augment_suite!r} "
            f"(it has {sorted(known)})"
        )
    used: dict[str, list[str]] = {}
    for t in tasks:
        suite = suites[t.name]
        exclude = [c for c in cfg.exclude_corruptions if c in suite.entries]
        t.augment = RandomCorruption(suite, exclude=exclude, p=cfg.augment_p, seed=cfg.seed)
        used[t.name] = list(t.augment.names)
    return {
        "suite": cfg.augment_suite,
        "exclude": list(cfg.exclude_corruptions),
        "p": cfg.augment_p,
        "severities": [1, 2, 3, 4, 5],
        "corruptions": used,
    }


def _heads(tasks: Sequence[_Task], joint: bool) -> tuple[list[Tensor], list[str] | None]:
    """Per-dataset prototype heads, or one joint head with labels shifted into it."""
    if not joint:
        for i, t in enumerate(tasks):
            t.head = i
        return [t.classifier.text_features for t in tasks], None
    keys: list[str] = []
    offset = 0
    for t in tasks:
        t.labels = t.labels + offset
        t.head = 0
        keys += [f"{t.name}/{c}" for c in t.classifier.class_names]
        offset += len(t.classifier.class_names)
    if len(set(keys)) != len(keys):
        raise ValueError("joint label space: a dataset name appears twice; pass each once")
    joint_head = torch.cat([t.classifier.text_features for t in tasks])
    sims = joint_head @ joint_head.T
    dup = [
        (keys[i], keys[j])
        for i, j in zip(*np.triu_indices(len(keys), 1), strict=True)
        if float(sims[i, j]) > 1 - 1e-6
    ]
    if dup:
        warnings.warn(
            f"joint label space: classes with identical prompts cannot be told apart by the "
            f"model: {dup[:4]}; use templates with a dataset/modality field ('{{}} ... {{}}')",
            stacklevel=3,
        )
    return [joint_head], keys


def _batch_plan(
    tasks: Sequence[_Task], batch_size: int, g: torch.Generator
) -> list[tuple[int, Tensor]]:
    """Shuffled single-dataset batches of one epoch, interleaved in a random order."""
    plan: list[tuple[int, Tensor]] = []
    for i, t in enumerate(tasks):
        perm = torch.randperm(len(t.labels), generator=g)
        plan += [(i, perm[s : s + batch_size]) for s in range(0, len(perm), batch_size)]
    order = torch.randperm(len(plan), generator=g).tolist()
    return [plan[k] for k in order]


def _stage_images(
    tasks: Sequence[_Task], resize_to: int | None, device: torch.device
) -> int | None:
    """Resize the few-shot images to ``resize_to`` once (resizing is per image and
    deterministic, so this equals resizing every batch) and keep them on the accelerator when
    they fit. Returns the size the trainer must still resize to per batch (None when done)."""
    total = 0
    for t in tasks:
        n, c, h, w = t.images.shape
        total += n * c * (resize_to * resize_to if resize_to else h * w)
    if resize_to is not None and total > _CACHE_BYTES:
        return resize_to
    on_device = device.type == "cuda" and total <= _DEVICE_BYTES
    target = device if on_device else torch.device("cpu")
    for t in tasks:
        if resize_to is not None:
            chunks = [t.images[i : i + 256].to(device) for i in range(0, len(t.images), 256)]
            t.images = torch.cat([prepare_images(c, resize_to).to(target) for c in chunks])
        t.images, t.labels = t.images.to(target), t.labels.to(target)
    return None


def _epoch_seed(seed: int, purpose: str, epoch: int) -> int:
    return derive_seed(seed, f"adapt/{purpose}", 0, epoch)


@contextlib.contextmanager
def _seeded_global_rng(device: torch.device, seed: int) -> Iterator[None]:
    """LoRA dropout draws from torch's global RNG: seed it for the block, restore it after."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _validate(
    tasks: Sequence[_Task], batch_size: int, resize_to: int | None, device: torch.device
) -> dict[str, Any]:
    """Clean validation metrics per dataset (its own label space, the evaluation's scoring)
    and their unweighted mean over datasets."""
    per: dict[str, dict[str, Any]] = {}
    for t in tasks:
        probs, labels = [], []
        loss_sum = 0.0
        for _, images, y in t.val.iter_batches(batch_size):
            x = images.to(device)
            if resize_to is not None:
                x = prepare_images(x, resize_to)
            out = t.classifier.predict_batch(x)
            loss_sum += float(F.cross_entropy(out.logits, y.to(device), reduction="sum"))
            probs.append(out.probabilities.float().cpu().numpy())
            labels.append(y.numpy())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # AUC of a one-class validation set is NaN
            m = cell_metrics(np.concatenate(probs), np.concatenate(labels), t.val.task)
        per[t.name] = {
            "loss": loss_sum / len(t.val),
            "accuracy": m["accuracy"],
            "balanced_accuracy": m["balanced_accuracy"],
            "auc": _finite(m["auc"]),
            "n": len(t.val),
        }
    keys = ("loss", "accuracy", "balanced_accuracy")
    mean = {k: float(np.mean([p[k] for p in per.values()])) for k in keys}
    return {"mean": mean, "datasets": per}


def _improved(value: float, best: float | None, monitor: str) -> bool:
    if best is None:
        return True
    return value > best if monitor == "balanced_accuracy" else value < best


def adapt(
    model: str | ModelAdapter,
    datasets: Sequence[str | ImageDataset],
    *,
    out_dir: str | Path,
    fewshot: float | None = None,
    shots: int | None = None,
    rank: int = 16,
    alpha: float | None = None,
    dropout: float = 0.0,
    targets: str | Sequence[str] | None = None,
    augment_suite: str | None = None,
    exclude_corruptions: Sequence[str] = (),
    augment_p: float = 0.5,
    epochs: int = 20,
    lr: float = 1e-4,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    grad_accum: int = 1,
    warmup: float | int = 0.05,
    patience: int | None = 5,
    monitor: str = "balanced_accuracy",
    joint_labels: bool = False,
    templates: str | Sequence[str] | None = None,
    fewshot_split: str = "train",
    val_split: str = "val",
    val_limit: int | None = None,
    data_root: str | Path | None = None,
    data_size: int = 28,
    resize: bool = True,
    precision: str = "auto",
    device: str | torch.device = "cpu",
    seed: int = 0,
    model_kwargs: Mapping[str, Any] | None = None,
    label: str | None = None,
    resume: bool = True,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """Train a LoRA adapter on few-shot data and write it to ``out_dir``; return ``out_dir``.

    Args:
        model: a model name (built with ``create_model(model, device=device, **model_kwargs)``)
            or a ready model (copied, never modified).
        datasets: names ``open_dataset`` resolves (MedMNIST flags, .npz files, folders), or
            ``ImageDataset``s of a train/val split (validated on the rest of that split).
        fewshot / shots: a fraction in (0, 1] of each class (the paper's 0.01, 0.03, 0.07,
            0.10) or k images per class, drawn from ``fewshot_split``; neither = all of it.
        rank, alpha (None = rank), dropout, targets: LoRA settings (see ``LoraSettings``).
        augment_suite, exclude_corruptions, augment_p: training-time corruptions from a suite
            (each image corrupted with probability ``augment_p``), minus the excluded ones.
        epochs, lr, weight_decay, batch_size, grad_accum, warmup (fraction of the steps if a
            float < 1, else steps), patience (epochs without improvement; None = no early
            stop), monitor ('balanced_accuracy' or 'loss'): optimisation and selection.
        joint_labels: score every batch against all datasets' classes (``dataset/class``).
        templates: prompt templates (default: the model's own, as in ``medrobust eval``).
        val_split, val_limit: validation data (never 'test'); a stratified subset of about
            ``val_limit`` images per dataset (each class rounded, at least one).
        data_root, data_size, resize: where datasets are read, which MedMNIST size, and
            whether images are first resized to the suite's 224 px as in ``medrobust eval``.
        precision: 'auto' (bf16 autocast on GPU, fp32 on CPU), 'fp32' or 'bf16'.
        resume: continue from ``out_dir``'s last epoch if it holds this same run.
        callback: called after each epoch with its record (as stored in the history).

    Raises:
        ValueError / TypeError: invalid options (the message says what is allowed).
        FileExistsError: ``out_dir`` holds another run, or this run with ``resume=False``.
    """
    settings = LoraSettings(rank=rank, alpha=alpha, dropout=dropout, targets=targets)
    cfg = AdaptConfig(
        fewshot=fewshot, shots=shots, fewshot_split=fewshot_split, val_split=val_split,
        val_limit=val_limit, data_size=data_size, resize=resize, templates=templates,
        joint_labels=joint_labels, augment_suite=augment_suite,
        exclude_corruptions=tuple(exclude_corruptions), augment_p=augment_p, epochs=epochs, lr=lr,
        weight_decay=weight_decay, batch_size=batch_size, grad_accum=grad_accum, warmup=warmup,
        patience=patience, monitor=monitor, precision=precision, seed=seed,
    )
    if isinstance(datasets, (str, ImageDataset)) or not datasets:
        raise ValueError("datasets must be a non-empty list of dataset names or ImageDatasets")
    say = log or (lambda _msg: None)
    out = Path(out_dir).expanduser()
    dev = torch.device(device)
    kwargs = dict(model_kwargs or {})

    tasks = [_prepare_task(d, cfg, data_root) for d in datasets]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"datasets must be distinct, got {names}")
    augmentation = _augmenters(tasks, cfg)
    net = prepare_base(model, dev, kwargs)
    base = {
        "name": net.name,
        "family": net.family,
        "weights_id": net.weights_id,
        "weights_hash": net.weights_hash,
        "vision_sha256": vision_fingerprint(net),
        "source": base_source(model, kwargs),
    }
    amp = _amp_dtype(cfg.precision, dev)
    for t in tasks:
        t.classifier = ZeroShotClassifier(
            net, t.record["class_names"], cfg.templates, t.record["modality"],
            precision="bf16" if amp is not None else "fp32",
        )
    heads, joint_keys = _heads(tasks, cfg.joint_labels)
    modules = apply_lora(net, settings, seed=_epoch_seed(cfg.seed, "lora-init", 0))
    reference = tasks[0].augment.suite.reference_size if tasks[0].augment else REFERENCE_SIZE
    resize_to = reference if cfg.resize else None
    per_step_resize = _stage_images(tasks, resize_to, dev)

    batches = sum(math.ceil(len(t.labels) / cfg.batch_size) for t in tasks)
    steps_per_epoch = math.ceil(batches / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    trainer = LoraTrainer(
        net, heads, lr=cfg.lr, weight_decay=cfg.weight_decay, total_steps=total_steps,
        warmup_steps=cfg.warmup_steps(total_steps), grad_accum=cfg.grad_accum, amp_dtype=amp,
        resize_to=per_step_resize,
    )
    config: dict[str, Any] = {
        "label": label or out.name,
        "source": {"kind": "trained"},
        "base": base,
        "lora": {
            **settings.to_dict(),
            "lora_alpha": settings.lora_alpha,
            "scaling": settings.scaling,
            "architecture": getattr(detect_architecture(net.vision_module), "name", None),
            "modules": modules,
        },
        "data": {
            "datasets": [t.record for t in tasks],
            "fewshot": cfg.fewshot,
            "shots": cfg.shots,
            "fewshot_split": cfg.fewshot_split,
            "val_split": cfg.val_split,
            "val_limit": cfg.val_limit,
            "data_size": cfg.data_size,
            "resize_to": resize_to,
            "templates": cfg.templates,
            "prompts": {t.name: t.classifier.prompts for t in tasks},
            "label_space": "joint" if cfg.joint_labels else "per-dataset",
            "joint_classes": joint_keys,
        },
        "augmentation": augmentation,
        "training": {
            **{k: getattr(cfg, k) for k in (
                "epochs", "lr", "weight_decay", "batch_size", "grad_accum", "warmup",
                "patience", "monitor", "precision",
            )},
            "optimizer": "AdamW",
            "schedule": "linear warm-up, then cosine decay to 0 (per optimizer step)",
            "amp": str(amp).replace("torch.", "") if amp is not None else None,
            "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps,
            "warmup_steps": cfg.warmup_steps(total_steps),
            "trainable_parameters": sum(p.numel() for p in trainer.params),
        },
        "seeds": {
            "seed": cfg.seed,
            "fewshot_sampling": "numpy default_rng([seed, crc32(dataset), class])",
            "lora_init": _epoch_seed(cfg.seed, "lora-init", 0),
            "per_epoch": "derive_seed(seed, 'adapt/<batches|augment|dropout>', 0, epoch)",
        },
    }
    fingerprint = hashlib.sha256(
        json.dumps(
            {
                "base": {k: base[k] for k in ("name", "weights_hash", "vision_sha256")},
                "lora": config["lora"],
                "cfg": dataclasses.asdict(cfg),
                "amp": str(amp),
                "data": [{k: v for k, v in t.record.items() if k != "source"} for t in tasks],
            },
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()
    config["run_fingerprint"] = fingerprint
    return _train(net, tasks, trainer, cfg, config, fingerprint, out, dev, resize_to, resume,
                  progress, say, callback)


def _train(
    net: ModelAdapter,
    tasks: Sequence[_Task],
    trainer: LoraTrainer,
    cfg: AdaptConfig,
    config: dict[str, Any],
    fingerprint: str,
    out: Path,
    dev: torch.device,
    resize_to: int | None,
    resume: bool,
    progress: bool,
    say: Callable[[str], None],
    callback: Callable[[dict[str, Any]], None] | None,
) -> Path:
    """The epoch loop: resume, train, validate, select, checkpoint, stop early, finish."""
    state_path = out / STATE_FILE
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_lora: dict[str, Tensor] = {}
    bad_epochs, start = 0, 0
    if state_path.is_file():
        state = load_train_state(state_path)
        if state.get("fingerprint") != fingerprint:
            raise FileExistsError(
                f"{out} holds a different adaptation run (other model, data or settings); "
                "choose another out_dir"
            )
        if not resume:
            raise FileExistsError(f"{out} already holds this run; pass resume=True to continue")
        if state.get("finished"):
            say(f"{out}: already trained ({state['epoch']} epochs); nothing to do")
            return out
        load_lora_state_dict(net, state["lora"])
        trainer.load_state_dict(state["trainer"])
        history, best = list(state["history"]), dict(state["best"])
        best_lora = dict(state["best_lora"])
        bad_epochs, start = int(state["bad_epochs"]), int(state["epoch"]) + 1
        say(f"{out}: resuming after epoch {state['epoch']}")
    elif (out / ADAPTER_CONFIG).exists():
        previous = json.loads((out / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        if previous.get("run_fingerprint") != fingerprint:
            raise FileExistsError(f"{out} already holds an adapter; choose another out_dir")

    patience_spent = cfg.patience is not None and bad_epochs >= cfg.patience
    stopped_early = patience_spent and start <= cfg.epochs
    for epoch in range(start, 0 if patience_spent else cfg.epochs + 1):
        started = time.perf_counter()
        train_loss = None
        if epoch > 0:
            train_loss = _train_epoch(net, tasks, trainer, cfg, epoch, dev, progress)
        set_lora_training(net, False)
        val = _validate(tasks, cfg.batch_size, resize_to, dev)
        value = val["mean"][cfg.monitor]
        improved = _improved(value, None if best is None else best["value"], cfg.monitor)
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "lr": trainer.scheduler.get_last_lr()[0],
            "optimizer_steps": trainer.steps,
            "validation": val,
            "improved": improved,
            "seconds": time.perf_counter() - started,
        }
        history.append(record)
        lora = lora_state_dict(net)
        if improved:
            best = {"epoch": epoch, "value": value, "validation": val}
            best_lora, bad_epochs = lora, 0
        else:
            bad_epochs += 1
        stop = cfg.patience is not None and bad_epochs >= cfg.patience
        finished = stop or epoch == cfg.epochs
        save_train_state(state_path, {
            "fingerprint": fingerprint,
            "epoch": epoch,
            "finished": False,
            "lora": lora,
            "best_lora": best_lora,
            "trainer": trainer.state_dict(),
            "history": history,
            "best": best,
            "bad_epochs": bad_epochs,
            "rng": {"seed": cfg.seed, "next_epoch": epoch + 1},
        })
        if improved:  # after the state: the state alone is enough to finish the run
            save_adapter(net, out, _final_config(config, history, best, cfg, complete=False))
        loss_text = "-" if train_loss is None else f"{train_loss:.4f}"
        say(f"epoch {epoch}/{cfg.epochs}: train loss {loss_text}, val {cfg.monitor} "
            f"{value:.4f}{' (best)' if improved else ''}")
        if callback is not None:
            callback(record)
        if stop and epoch != cfg.epochs:
            stopped_early = True
            say(f"early stop: no improvement for {cfg.patience} epochs")
        if finished:
            break

    assert best is not None
    load_lora_state_dict(net, best_lora)
    final = _final_config(config, history, best, cfg, complete=True, stopped_early=stopped_early)
    save_adapter(net, out, final)
    state = load_train_state(state_path)
    save_train_state(state_path, {**state, "finished": True})
    say(f"adapter written to {out} (best epoch {best['epoch']}: {cfg.monitor} {best['value']:.4f})")
    return out


def _train_epoch(
    net: ModelAdapter,
    tasks: Sequence[_Task],
    trainer: LoraTrainer,
    cfg: AdaptConfig,
    epoch: int,
    dev: torch.device,
    progress: bool,
) -> float:
    batch_gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, "batches", epoch))
    aug_gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, "augment", epoch))
    plan = _batch_plan(tasks, cfg.batch_size, batch_gen)
    total = torch.zeros((), device=dev)
    count = 0
    set_lora_training(net, True)
    bar = tqdm(
        plan, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", disable=not progress, leave=False
    )
    with _seeded_global_rng(dev, _epoch_seed(cfg.seed, "dropout", epoch)):
        for i, (k, rows) in enumerate(bar):
            t = tasks[k]
            index = rows.to(t.images.device)
            loss = trainer.train_step(
                t.images[index], t.labels[index], t.head, augment=t.augment, generator=aug_gen
            )
            total += loss * len(rows)
            count += len(rows)
            if progress and i % 10 == 0:
                lr = trainer.scheduler.get_last_lr()[0]
                bar.set_postfix(loss=f"{float(loss):.4f}", lr=f"{lr:.2e}")
        trainer.flush()
    set_lora_training(net, False)
    return float(total) / count


def _final_config(
    config: Mapping[str, Any],
    history: list[dict[str, Any]],
    best: Mapping[str, Any],
    cfg: AdaptConfig,
    *,
    complete: bool,
    stopped_early: bool = False,
) -> dict[str, Any]:
    return {
        **config,
        "validation": {
            "monitor": cfg.monitor,
            "best_epoch": best["epoch"],
            "best": best["validation"],
            "epochs_run": history[-1]["epoch"],
            "stopped_early": stopped_early,
            "history": history,
        },
        "complete": complete,
    }
