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
import functools
import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from medrobust._distributed import World, process_group, world
from medrobust._files import remove_orphans
from medrobust.corruptions import RandomCorruption, derive_seed, get_suite, prepare_images
from medrobust.corruptions.families import exclude_families, families_of, known_corruptions
from medrobust.corruptions.suites import REFERENCE_SIZE
from medrobust.data import ImageDataset, has_splits, image_hashes, open_dataset
from medrobust.data.fewshot import partition_indices, sample_fewshot, split_fewshot
from medrobust.evaluation.metrics import cell_metrics
from medrobust.models import ModelAdapter
from medrobust.models.zeroshot import ZeroShotClassifier

from .checkpoint import (
    ADAPTER_CONFIG,
    STATE_FILE,
    adapter_tensors,
    base_source,
    load_adapter_tensors,
    prepare_base,
    save_adapter,
)
from .config import MONITORS, PRECISIONS, AdaptConfig
from .distributed import reduce_sum, share_of_batch, wrap_image_tower
from .lora import (
    apply_lora,
    detect_architecture,
    lora_parameters,
    set_lora_training,
    vision_fingerprint,
)
from .prompt import PromptLearner
from .training import (
    Stepper,
    improved,
    load_train_state,
    save_train_state,
    warmup_cosine_scheduler,
)

__all__ = ["MONITORS", "PRECISIONS", "AdaptConfig", "LoraTrainer", "PromptHeads", "adapt"]

Augment = Callable[[Tensor], Tensor]
"""A batch augmentation: a ``RandomCorruption`` with its generator bound."""

_DEVICE_BYTES = 2 << 30  # few-shot images up to this size live on the accelerator
_CACHE_BYTES = 4 << 30  # few-shot images up to this size are resized once, not every step


def _amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return torch.bfloat16 if precision == "bf16" else None


@dataclass(frozen=True)
class PromptHeads:
    """A learned prompt context and, per head, the class names it makes prototypes for."""

    learner: PromptLearner
    classes: Sequence[Sequence[str]]
    lr: float


class LoraTrainer:
    """Optimizer, schedule, mixed precision and the per-batch step of adaptation: LoRA weights
    and/or a learned prompt context, trained jointly.

    ``heads[h]`` is a (K, D) matrix of unit text prototypes; a batch scored against head
    ``h`` has labels in ``0..K-1``. ``heads`` may instead be a :class:`PromptHeads`: head
    ``h``'s prototypes are then computed at every step from the learned context for
    ``heads.classes[h]`` (the text tower runs forward and backward, frozen), and the context
    trains with its own learning rate ``heads.lr`` (one AdamW, two parameter groups, one
    schedule; a single process only). A step takes raw uint8
    images and does everything the training loop does: transfer, resize to the corruption
    suite's size, optional corruption, the model's own preprocessing, the forward under
    autocast, the loss, the backward and (every ``grad_accum`` batches) the optimizer and
    schedule step.
    """

    def __init__(
        self,
        model: ModelAdapter,
        heads: Sequence[Tensor] | PromptHeads,
        *,
        lr: float,
        weight_decay: float,
        total_steps: int,
        warmup_steps: int,
        grad_accum: int = 1,
        amp_dtype: torch.dtype | None = None,
        resize_to: int | None = None,
        world: World | None = None,
    ) -> None:
        self.model = model
        prompt = heads if isinstance(heads, PromptHeads) else None
        self.world = world or World()
        if prompt is not None and self.world.distributed:
            raise ValueError(
                "prompt tuning under torchrun is not supported (the context's gradients are not "
                "synchronised across processes); run adapt with --method prompt or lora+prompt "
                "in one process"
            )
        lora = [p for _, p in lora_parameters(model)]
        groups = [{"params": lora, "lr": lr}] if lora else []
        if prompt is not None:
            groups.append({"params": [prompt.learner.ctx], "lr": prompt.lr})
        if not groups:
            raise ValueError(
                "nothing to train: the model has no LoRA parameters (call apply_lora first) "
                "and no prompt context was given"
            )
        self.params = [p for g in groups for p in g["params"]]
        self.prompt = prompt
        self.device = model.device
        self.heads = [] if prompt else [h.to(self.device, torch.float32) for h in heads]
        self.scale = float(model.logit_scale)
        self.amp_dtype = amp_dtype
        self.resize_to = resize_to
        optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
        scheduler = warmup_cosine_scheduler(optimizer, warmup=warmup_steps, total=total_steps)
        self.stepper = Stepper(optimizer, scheduler, grad_accum=grad_accum)
        # under torchrun: DistributedDataParallel averages the LoRA gradients of the processes
        self.encoder = wrap_image_tower(model, self.world)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.stepper.optimizer

    @property
    def scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        return self.stepper.scheduler

    @property
    def steps(self) -> int:
        """Optimizer steps taken."""
        return self.stepper.steps

    def loss(self, images: Tensor, labels: Tensor, head: int, *,
             augment: Augment | None = None) -> Tensor:
        """Mean cross-entropy of ``logit_scale x cosine`` logits for raw uint8 images;
        ``augment`` (a corruption with its generator bound) runs after the resize."""
        x = images.to(self.device, non_blocking=True)
        if self.resize_to is not None:
            x = prepare_images(x, self.resize_to)
        if augment is not None:
            x = augment(x)
        pixels = self.model.preprocess(x)
        amp = self.amp_dtype
        with torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            features = self.encoder(pixels)
        features = F.normalize(features.float(), dim=-1)
        logits = self.scale * features @ self.prototypes(head).T
        return F.cross_entropy(logits, labels.to(self.device, non_blocking=True))

    def prototypes(self, head: int) -> Tensor:
        """Head ``head``'s class prototypes: fixed, or from the learned context (with grad)."""
        if self.prompt is None:
            return self.heads[head]
        return self.prompt.learner.text_features(self.model, self.prompt.classes[head])

    def train_step(self, images: Tensor, labels: Tensor, head: int, *,
                   augment: Augment | None = None, weight: float = 1.0) -> Tensor:
        """Forward and backward of one batch (as :meth:`loss`); steps the optimizer every
        ``grad_accum`` batches. Returns the batch's loss (detached, on the device: no
        synchronisation). The backward takes ``weight`` x the loss: under torchrun a process's
        share of a global batch, so that the gradients DDP averages are the whole batch's."""
        loss = self.loss(images, labels, head, augment=augment)
        self.stepper.backward(loss if weight == 1.0 else loss * weight)
        return loss.detach()

    def flush(self) -> None:
        """Apply a partial accumulation (end of epoch), rescaled to a mean over its batches."""
        self.stepper.flush(self.params)

    def state_dict(self) -> dict[str, Any]:
        return self.stepper.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.stepper.load_state_dict(state)


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
    return open_dataset(item, split=cfg.fewshot_split, size=cfg.data_size, root=root,
                        options=cfg.data_options, named_classes=True)


def _partition(pool: ImageDataset, cfg: AdaptConfig) -> tuple[ImageDataset, ImageDataset, dict]:
    """(train part, val part, record) of a dataset without splits, partitioned by
    ``cfg.split_ratios``; the record names the test part that eval alone may use."""
    parts = partition_indices(pool.labels, cfg.split_ratios, seed=cfg.seed, key=pool.name)
    test = pool.subset(parts["test"])
    record = {
        "ratios": list(cfg.split_ratios),
        "seed": cfg.seed,
        "sampling": "numpy default_rng([seed, crc32(dataset + '/partition'), class])",
        "n": {part: int(idx.size) for part, idx in parts.items()},
        "test_indices": test.indices.tolist(),
        "test_image_sha256": image_hashes(test.images),
    }
    return pool.subset(parts["train"]), pool.subset(parts["val"]), record


def _prepare_task(item: str | ImageDataset, cfg: AdaptConfig, root: Any) -> _Task:
    pool = _open_pool(item, cfg, root)
    partition = None
    if not isinstance(item, ImageDataset) and not has_splits(item):
        pool, val, partition = _partition(pool, cfg)
    fraction = 1.0 if cfg.fewshot is None and cfg.shots is None else cfg.fewshot
    sample, rest = split_fewshot(pool, fraction=fraction, shots=cfg.shots, seed=cfg.seed)
    if partition is not None:
        val_from = "the val part of the seeded train/val/test partition"
    elif isinstance(item, ImageDataset) or cfg.val_split == pool.split:
        val, val_from = rest, f"held-out rest of the {pool.split!r} split"
    else:
        val = open_dataset(item, split=cfg.val_split, size=cfg.data_size, root=root,
                           options=cfg.data_options, named_classes=True)
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
        # content hashes of every image the adapter saw: eval refuses test images among them
        "train_image_sha256": image_hashes(sample.images),
        "val_image_sha256": image_hashes(val.images),
        "class_names": list(pool.class_names),
        "modality": pool.modality,
        **({"reading": pool.reading} if pool.reading else {}),  # only when used: old runs resume
        **({"partition": partition} if partition else {}),
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
        t.name: get_suite(cfg.augment_suite, t.name, t.record["modality"])
        for t in tasks
    }
    used: dict[str, list[str]] = {}
    excluded: dict[str, None] = {}
    for t in tasks:
        suite = suites[t.name]
        kept, dropped = exclude_families(suite.corruptions, cfg.exclude_corruptions)
        if not kept:
            raise ValueError(
                f"excluding the families of {list(cfg.exclude_corruptions)} leaves no corruption "
                f"of suite {cfg.augment_suite!r} to augment with")
        t.augment = RandomCorruption(suite, exclude=dropped, p=cfg.augment_p, seed=cfg.seed)
        used[t.name] = list(t.augment.names)
        excluded.update(dict.fromkeys(dropped))
    return {
        "suite": cfg.augment_suite,
        "corruptions": sorted({c for names in used.values() for c in names}),
        "excluded": list(excluded),
        "exclude": list(cfg.exclude_corruptions),
        "excluded_families": sorted(families_of(
            c for c in cfg.exclude_corruptions if c in known_corruptions())),
        "p": cfg.augment_p,
        "severities": [1, 2, 3, 4, 5],
        "per_dataset": used,
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


def adapt(
    model: str | ModelAdapter,
    datasets: Sequence[str | ImageDataset],
    config: AdaptConfig | None = None,
    *,
    out_dir: str | Path,
    data_root: str | Path | None = None,
    device: str | torch.device = "cpu",
    model_kwargs: Mapping[str, Any] | None = None,
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
        config: what to train (``AdaptConfig``; None: defaults), saved in the adapter's JSON
            (``AdaptConfig.from_adapter`` reads it back). ``data_root``: where named datasets are.
        resume: continue from ``out_dir``'s last epoch if it holds this same run.
        progress: a progress bar per epoch; ``log`` gets a line per epoch, ``callback`` the
            epoch's record (as stored in the history).

    Raises:
        ValueError / TypeError: invalid options (the message says what is allowed).
        FileExistsError: ``out_dir`` holds another run, or this run with ``resume=False``.
    """
    cfg = AdaptConfig() if config is None else config
    if not isinstance(cfg, AdaptConfig):
        raise TypeError(f"config must be an AdaptConfig, got {type(cfg).__name__}")
    if isinstance(datasets, (str, ImageDataset)) or not datasets:
        raise ValueError("datasets must be a non-empty list of dataset names or ImageDatasets")
    out, dev, kwargs = Path(out_dir).expanduser(), torch.device(device), dict(model_kwargs or {})
    if world().distributed and dev.type == "cuda":  # under torchrun: this process's GPU
        dev = torch.device("cuda", world().local_rank)
        torch.cuda.set_device(dev)

    tasks = [_prepare_task(d, cfg, data_root) for d in datasets]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"datasets must be distinct, got {names}")
    augmentation = _augmenters(tasks, cfg)
    if augmentation is not None and cfg.exclude_corruptions and log is not None:
        log(f"augmentation: {cfg.augment_suite} without the families of "
            f"{', '.join(cfg.exclude_corruptions)}: excluded {', '.join(augmentation['excluded'])}")
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
    modules = _make_trainable(net, tasks, cfg)
    for t in tasks:
        t.classifier = ZeroShotClassifier(
            net, t.record["class_names"], cfg.templates, t.record["modality"],
            precision="bf16" if amp is not None else "fp32",
        )
    heads, joint_keys = _heads(tasks, cfg.joint_labels)
    reference = tasks[0].augment.suite.reference_size if tasks[0].augment else REFERENCE_SIZE
    resize_to = reference if cfg.resize else None
    per_step_resize = _stage_images(tasks, resize_to, dev)

    batches = sum(math.ceil(len(t.labels) / cfg.batch_size) for t in tasks)
    steps_per_epoch = math.ceil(batches / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    with process_group("nccl" if dev.type == "cuda" else "gloo") as group:  # one process: none
        trainer = LoraTrainer(
            net, _prompt_heads(net, tasks, cfg) or heads, lr=cfg.lr,
            weight_decay=cfg.weight_decay, total_steps=total_steps,
            warmup_steps=cfg.warmup_steps(total_steps), grad_accum=cfg.grad_accum, amp_dtype=amp,
            resize_to=per_step_resize, world=group,
        )
        record = _adapter_record(
            _RecordParts(cfg, out, base, net, modules, tasks, augmentation, joint_keys, resize_to,
                         amp, trainer, steps_per_epoch, total_steps)
        )
        run = _Run(net, tasks, trainer, cfg, record, out, dev, resize_to)
        say = log if log is not None and group.main else (lambda _msg: None)
        return _train(run, resume=resume, progress=progress and group.main, say=say,
                      callback=callback)


def _make_trainable(net: ModelAdapter, tasks: Sequence[_Task], cfg: AdaptConfig) -> list[str]:
    """Freeze the model and add what the method trains: LoRA layers on the vision tower and/or
    a prompt context, set as the model's class head (zero-shot scoring then uses it). Returns
    the names of the LoRA-adapted modules."""
    net.requires_grad_(False)
    modules = []
    if cfg.uses_lora:
        modules = apply_lora(net, cfg.lora, seed=_epoch_seed(cfg.seed, "lora-init", 0))
    if cfg.uses_prompt:
        names = [c for t in tasks for c in t.record["class_names"]]
        net.class_head = PromptLearner(
            net, cfg.prompt, class_names=names, seed=_epoch_seed(cfg.seed, "prompt-init", 0)
        )
    return modules


def _prompt_heads(
    net: ModelAdapter, tasks: Sequence[_Task], cfg: AdaptConfig
) -> PromptHeads | None:
    """The learned context and the class names of each head (one joint head: all, in order)."""
    if not cfg.uses_prompt:
        return None
    classes = [list(t.record["class_names"]) for t in tasks]
    if cfg.joint_labels:
        classes = [[c for names in classes for c in names]]
    return PromptHeads(net.class_head, classes, cfg.prompt_lr)


@dataclass
class _RecordParts:
    """What the adapter's JSON record is assembled from."""

    cfg: AdaptConfig
    out: Path
    base: dict[str, Any]
    net: ModelAdapter
    modules: list[str]
    tasks: Sequence[_Task]
    augmentation: dict[str, Any] | None
    joint_keys: list[str] | None
    resize_to: int | None
    amp: torch.dtype | None
    trainer: LoraTrainer
    steps_per_epoch: int
    total_steps: int


def _adapter_record(p: _RecordParts) -> dict[str, Any]:
    """The adapter's JSON record (its keys are the on-disk format: keep them) and the run's
    fingerprint, which identifies the same run when resuming."""
    cfg, settings = p.cfg, p.cfg.lora
    lora = None
    if cfg.uses_lora:
        lora = {
            **settings.to_dict(),
            "lora_alpha": settings.lora_alpha,
            "scaling": settings.scaling,
            "architecture": getattr(detect_architecture(p.net.vision_module), "name", None),
            "modules": p.modules,
        }
    prompt = p.net.class_head.describe() if cfg.uses_prompt else None
    record: dict[str, Any] = {
        "label": cfg.label or p.out.name,
        "source": {"kind": "trained"},
        "method": cfg.method,
        "base": p.base,
        "lora": lora,
        "prompt": prompt,
        "data": {
            "datasets": [t.record for t in p.tasks],
            "fewshot": cfg.fewshot,
            "shots": cfg.shots,
            "fewshot_split": cfg.fewshot_split,
            "val_split": cfg.val_split,
            "val_limit": cfg.val_limit,
            "split_ratios": list(cfg.split_ratios),
            "data_size": cfg.data_size,
            "resize_to": p.resize_to,
            "templates": cfg.templates,
            "data_options": cfg.data_options.to_dict(),
            "prompts": {t.name: t.classifier.prompts for t in p.tasks},
            "label_space": "joint" if cfg.joint_labels else "per-dataset",
            "joint_classes": p.joint_keys,
        },
        "augmentation": p.augmentation,
        "training": {
            **{k: getattr(cfg, k) for k in (
                "epochs", "lr", "weight_decay", "batch_size", "grad_accum", "warmup",
                "patience", "monitor", "precision",
            )},
            "optimizer": "AdamW",
            "schedule": "linear warm-up, then cosine decay to 0 (per optimizer step)",
            "amp": str(p.amp).replace("torch.", "") if p.amp is not None else None,
            "steps_per_epoch": p.steps_per_epoch,
            "total_steps": p.total_steps,
            "warmup_steps": cfg.warmup_steps(p.total_steps),
            "trainable_parameters": sum(q.numel() for q in p.trainer.params),
            **({"lr_prompt": cfg.prompt_lr} if prompt else {}),
        },
        "seeds": {
            "seed": cfg.seed,
            "fewshot_sampling": "numpy default_rng([seed, crc32(dataset), class])",
            "lora_init": _epoch_seed(cfg.seed, "lora-init", 0),
            **({"prompt_init": _epoch_seed(cfg.seed, "prompt-init", 0)} if prompt else {}),
            "per_epoch": "derive_seed(seed, 'adapt/<batches|augment|dropout>', 0, epoch)",
        },
    }
    identity = {
        "base": {k: p.base[k] for k in ("name", "weights_hash", "vision_sha256")},
        "lora": record["lora"],
        **({"prompt": prompt} if prompt else {}),
        "cfg": cfg.run_settings(),
        "amp": str(p.amp),
        "data": [{k: v for k, v in t.record.items() if k != "source"} for t in p.tasks],
    }
    record["run_fingerprint"] = hashlib.sha256(
        json.dumps(identity, sort_keys=True, default=str).encode()
    ).hexdigest()
    return record


@dataclass
class _Run:
    """One adaptation run, ready to train."""

    net: ModelAdapter
    tasks: Sequence[_Task]
    trainer: LoraTrainer
    cfg: AdaptConfig
    record: dict[str, Any]
    out: Path
    dev: torch.device
    resize_to: int | None

    @property
    def fingerprint(self) -> str:
        return self.record["run_fingerprint"]


@dataclass
class _Progress:
    """Where the epoch loop stands (and what a resumed run restores)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    best_lora: dict[str, Tensor] = field(default_factory=dict)
    bad_epochs: int = 0
    start: int = 0
    finished: bool = False


def _restore(run: _Run, resume: bool, say: Callable[[str], None]) -> _Progress:
    """Resume from the run's state file, refuse a folder holding another run, or start."""
    out, state_path = run.out, run.out / STATE_FILE
    remove_orphans(out)  # temporary files of killed runs
    if state_path.is_file():
        state = load_train_state(state_path)
        if state.get("fingerprint") != run.fingerprint:
            raise FileExistsError(
                f"{out} holds a different adaptation run (other model, data or settings); "
                "choose another out_dir"
            )
        if not resume:
            raise FileExistsError(f"{out} already holds this run; pass resume=True to continue")
        if state.get("finished"):
            say(f"{out}: already trained ({state['epoch']} epochs); nothing to do")
            return _Progress(finished=True)
        load_adapter_tensors(run.net, state["lora"])
        run.trainer.load_state_dict(state["trainer"])
        say(f"{out}: resuming after epoch {state['epoch']}")
        return _Progress(list(state["history"]), dict(state["best"]), dict(state["best_lora"]),
                         int(state["bad_epochs"]), int(state["epoch"]) + 1)
    if (out / ADAPTER_CONFIG).exists():
        previous = json.loads((out / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        if previous.get("run_fingerprint") != run.fingerprint:
            raise FileExistsError(f"{out} already holds an adapter; choose another out_dir")
    return _Progress()


def _train(
    run: _Run,
    *,
    resume: bool,
    progress: bool,
    say: Callable[[str], None],
    callback: Callable[[dict[str, Any]], None] | None,
) -> Path:
    """The epoch loop: resume, train, validate, select, checkpoint, stop early, finish."""
    cfg, out, state_path = run.cfg, run.out, run.out / STATE_FILE
    main = run.trainer.world.main
    done = _restore(run, resume, say)
    if done.finished:
        return out
    patience_spent = cfg.patience is not None and done.bad_epochs >= cfg.patience
    stopped_early = patience_spent and done.start <= cfg.epochs
    for epoch in range(done.start, 0 if patience_spent else cfg.epochs + 1):
        record = _run_epoch(run, epoch, done, progress)
        stop = cfg.patience is not None and done.bad_epochs >= cfg.patience
        lora = record.pop("_lora")
        if main:  # under torchrun every process holds the same state: the first writes it
            save_train_state(state_path, {
                "fingerprint": run.fingerprint,
                "epoch": epoch,
                "finished": False,
                "lora": lora,
                "best_lora": done.best_lora,
                "trainer": run.trainer.state_dict(),
                "history": done.history,
                "best": done.best,
                "bad_epochs": done.bad_epochs,
                "rng": {"seed": cfg.seed, "next_epoch": epoch + 1},
            })
        if main and record["improved"]:  # after the state: the state alone finishes the run
            save_adapter(run.net, out, _final_config(run.record, done, cfg, complete=False))
        loss = record["train_loss"]
        say(f"epoch {epoch}/{cfg.epochs}: train loss {'-' if loss is None else f'{loss:.4f}'}, "
            f"val {cfg.monitor} {done.history[-1]['validation']['mean'][cfg.monitor]:.4f}"
            f"{' (best)' if record['improved'] else ''}")
        if callback is not None:
            callback(record)
        if stop and epoch != cfg.epochs:
            stopped_early = True
            say(f"early stop: no improvement for {cfg.patience} epochs")
        if stop or epoch == cfg.epochs:
            break

    best = done.best
    assert best is not None
    load_adapter_tensors(run.net, done.best_lora)
    if main:
        final = _final_config(run.record, done, cfg, complete=True, stopped_early=stopped_early)
        save_adapter(run.net, out, final)
        state = load_train_state(state_path)
        save_train_state(state_path, {**state, "finished": True})
    run.trainer.world.barrier()  # every process returns once the adapter is written
    say(f"adapter written to {out} (best epoch {best['epoch']}: {cfg.monitor} {best['value']:.4f})")
    reason = unchanged_reason(best["epoch"], done.best_lora)
    if reason:
        say(f"note: adaptation did nothing: {reason}")
    return out


def _run_epoch(run: _Run, epoch: int, done: _Progress, progress: bool) -> dict[str, Any]:
    """Train one epoch (epoch 0: none, the base model), validate it and update ``done``.
    Returns the epoch's history record, with its LoRA weights under ``_lora``."""
    cfg = run.cfg
    started = time.perf_counter()
    train_loss = None
    if epoch > 0:
        train_loss = _train_epoch(run.net, run.tasks, run.trainer, cfg, epoch, run.dev, progress)
    set_lora_training(run.net, False)
    head = run.net.class_head
    if head is not None:  # the epoch's learned context makes the validation prototypes
        for t in run.tasks:
            t.classifier.text_features = head.class_weights(run.net, t.classifier.class_names)
    val = _validate(run.tasks, cfg.batch_size, run.resize_to, run.dev)
    value = val["mean"][cfg.monitor]
    best_value = None if done.best is None else done.best["value"]
    better = improved(value, best_value, higher_is_better=cfg.monitor == "balanced_accuracy")
    record = {
        "epoch": epoch,
        "train_loss": train_loss,
        "lr": run.trainer.scheduler.get_last_lr()[0],
        "optimizer_steps": run.trainer.steps,
        "validation": val,
        "improved": better,
        "seconds": time.perf_counter() - started,
    }
    done.history.append(record)
    lora = adapter_tensors(run.net)
    if better:
        done.best = {"epoch": epoch, "value": value, "validation": val}
        done.best_lora, done.bad_epochs = lora, 0
    else:
        done.bad_epochs += 1
    return {**record, "_lora": lora}


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
            share = share_of_batch(len(rows), trainer.world) if trainer.world.distributed else None
            part = rows if share is None else rows[share.positions]
            index = part.to(t.images.device)
            # corruptions are drawn for the whole global batch; this process takes its rows'
            whole = {} if share is None else {"rows": share.positions, "batch_size": share.batch_size}
            augment = (None if t.augment is None
                       else functools.partial(t.augment, generator=aug_gen, **whole))
            loss = trainer.train_step(t.images[index], t.labels[index], t.head, augment=augment,
                                      weight=1.0 if share is None else share.weight)
            counted = len(part) if share is None else share.rows
            total += loss * counted
            count += counted
            if progress and i % 10 == 0:
                lr = trainer.scheduler.get_last_lr()[0]
                bar.set_postfix(loss=f"{float(loss):.4f}", lr=f"{lr:.2e}")
        trainer.flush()
    set_lora_training(net, False)
    # the mean over every process's rows: the epoch's loss as one process would report it
    total = reduce_sum(torch.stack([total, torch.tensor(float(count), device=dev)]), trainer.world)
    return float(total[0]) / float(total[1])


def unchanged_reason(best_epoch: int, lora: Mapping[str, Tensor]) -> str | None:
    """Why an adapter leaves its base model unchanged (None if it changes it): the initial
    checkpoint was chosen, or every LoRA B matrix is zero (then B @ A adds nothing)."""
    if best_epoch == 0:
        return ("the initial checkpoint (epoch 0, the untouched base model) scored best on "
                "validation, so the adapter changes nothing")
    b = [t for k, t in lora.items() if "lora_B" in k]
    if b and all(not bool(t.any()) for t in b):
        return "every LoRA B matrix is zero, so the adapter changes nothing"
    return None


def _final_config(
    config: Mapping[str, Any],
    done: _Progress,
    cfg: AdaptConfig,
    *,
    complete: bool,
    stopped_early: bool = False,
) -> dict[str, Any]:
    best = done.best
    assert best is not None
    return {
        **config,
        "unchanged": unchanged_reason(best["epoch"], done.best_lora),
        "validation": {
            "monitor": cfg.monitor,
            "best_epoch": best["epoch"],
            "best": best["validation"],
            "epochs_run": done.history[-1]["epoch"],
            "stopped_early": stopped_early,
            "history": done.history,
        },
        "complete": complete,
    }
