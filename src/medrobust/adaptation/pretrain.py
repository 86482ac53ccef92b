"""Train ``medrobust-mini``: a small CLIP-style model on the MedMNIST train splits, on a CPU.

No pretrained medical vision-language model can be downloaded everywhere, so medrobust trains
its own small one: the ``medrobust-mini`` registry architecture (an open_clip ``CLIP`` with a
small ViT image tower and open_clip's text transformer with CLIP's BPE tokenizer), so that it
goes through exactly the same adapter, zero-shot and LoRA code as the published models.

Recipe: images take the evaluation path (28 px -> 224 px bicubic as the corruption engine
does, then the model's own preprocessing) and are lightly augmented (random resized crop,
horizontal flip); captions fill the class name and modality into several templates, including
every named template set the benchmark uses. The loss is CLIP's symmetric contrastive loss with
all pairs of the same class counted as positives (UniCL, Yang et al. 2022), since many images
of a batch share a caption. Batches are class-balanced within each dataset and the datasets
are equally weighted. After every epoch the model is scored as the benchmark scores it
(``ZeroShotClassifier`` with its default templates) on the validation splits; the epoch with
the best mean balanced accuracy is kept. Test splits are never read.

All randomness (initialisation, sampling, templates, augmentation) comes from ``seed``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from medrobust.corruptions import prepare_images
from medrobust.data import ImageDataset, load_medmnist
from medrobust.evaluation.metrics import accuracy, balanced_accuracy
from medrobust.models import ModelAdapter, create_model, save_model
from medrobust.models.prompts import build_prompts
from medrobust.models.weights import sha256_files
from medrobust.models.zeroshot import ZeroShotClassifier, clear_text_cache

from .config import DEFAULT_PRETRAIN_DATASETS, PretrainConfig
from .training import Stepper, improved, warmup_cosine_scheduler

__all__ = [
    "CAPTION_TEMPLATES",
    "DEFAULT_DATASETS",
    "PretrainConfig",
    "PretrainResult",
    "batch_loss",
    "build_captions",
    "contrastive_loss",
    "pretrain",
    "random_resized_crop_flip",
]

MODEL_NAME = "medrobust-mini"
DEFAULT_DATASETS = DEFAULT_PRETRAIN_DATASETS
# The evaluation resizes 28 px images to the corruption suites' reference size first.
REFERENCE_SIZE = 224
# Caption templates with named fields; the named template sets below are added to them so that
# every prompt style of the benchmark (and the model's default templates) is seen in training.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a {modality} image showing {label}.",
    "{label} on a {modality}.",
    "a {modality} with {label}.",
    "{label} seen in a {modality} image.",
)
TEMPLATE_SETS_SEEN: tuple[str, ...] = ("clip", "paper", "biomedclip", "classname")
LOG_NAME = "pretrain_log.json"
_MAX_LOGIT_SCALE = math.log(100.0)
_EVAL_BATCH = 256


def build_captions(class_names: Sequence[str], modality: str) -> list[list[str]]:
    """Captions of each class: ``CAPTION_TEMPLATES`` and the ``TEMPLATE_SETS_SEEN`` prompts.

    Every class gets the same number of captions, in the same template order.
    """
    named = build_prompts(class_names, modality, TEMPLATE_SETS_SEEN)
    return [
        [t.format(label=name, modality=modality) for t in CAPTION_TEMPLATES] + prompts
        for name, prompts in zip(class_names, named, strict=True)
    ]


def contrastive_loss(
    image_features: Tensor, text_features: Tensor, labels: Tensor, logit_scale: Tensor
) -> Tensor:
    """CLIP's symmetric contrastive loss where every pair of the same label is a positive.

    Row ``i`` of both feature matrices is one (image, caption) pair; the targets of image ``i``
    are spread evenly over the captions whose label equals ``labels[i]`` (and likewise for
    captions), as in UniCL. With all labels distinct it is exactly CLIP's loss.
    """
    if image_features.shape != text_features.shape or image_features.ndim != 2:
        raise ValueError(
            f"image and text features must both be (N, D), got {tuple(image_features.shape)} "
            f"and {tuple(text_features.shape)}"
        )
    if labels.shape != image_features.shape[:1]:
        raise ValueError(f"labels must have shape ({image_features.shape[0]},)")
    image = F.normalize(image_features, dim=-1)
    text = F.normalize(text_features, dim=-1)
    logits = logit_scale * image @ text.T
    positives = (labels[:, None] == labels[None, :]).to(logits.dtype)
    targets = positives / positives.sum(dim=1, keepdim=True)  # symmetric: columns alike
    per_image = -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()
    per_text = -(targets * logits.log_softmax(dim=0)).sum(dim=0).mean()
    return 0.5 * (per_image + per_text)


def batch_loss(
    model: ModelAdapter,
    pixels: Tensor,
    tokens: Mapping[str, Tensor],
    captions: Tensor,
    labels: Tensor,
) -> Tensor:
    """The contrastive loss of one batch of an open_clip adapter (with gradients).

    ``pixels`` are preprocessed images (N, 3, S, S), ``tokens`` the tokenizer output of the
    caption bank, ``captions`` (N,) the bank row of each image's caption and ``labels`` (N,)
    the class of each pair. Each distinct caption goes through the text tower once.
    """
    device = model.device
    unique, inverse = torch.unique(captions, return_inverse=True)
    text = model.encode_text({k: v[unique.to(v.device)] for k, v in tokens.items()})
    return contrastive_loss(
        model.encode_image(pixels.to(device)), text[inverse.to(device)], labels.to(device),
        model.model.logit_scale.exp(),
    )


def random_resized_crop_flip(
    pixels: Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.6, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
) -> Tensor:
    """Batched random resized crop (area ``scale``, aspect ``ratio``) and horizontal flip.

    ``pixels`` (N, C, H, W) float; each image gets its own crop, drawn from ``generator``
    (CPU), resampled bilinearly to the input size; crops stay inside the image.
    """
    n = pixels.shape[0]
    u = torch.rand(n, 5, generator=generator, dtype=torch.float64)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    w = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)  # fractions of the side
    h = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
    cx = (1.0 - w) * (2.0 * u[:, 2] - 1.0)  # centre in [-1, 1] coordinates, crop inside
    cy = (1.0 - h) * (2.0 * u[:, 3] - 1.0)
    flip = torch.where(u[:, 4] < flip_p, -1.0, 1.0)
    zero = torch.zeros_like(w)
    theta = torch.stack(
        [torch.stack([w * flip, zero, cx], dim=1), torch.stack([zero, h, cy], dim=1)], dim=1
    ).to(device=pixels.device, dtype=pixels.dtype)
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)


@dataclass
class _Split:
    """Model inputs of one split of several datasets, ready for training or scoring."""

    pixels: Tensor  # (N, 3, S, S) float16, the model's preprocessed input
    labels: Tensor  # (N,) int64, class index within its dataset
    classes: Tensor  # (N,) int64, class index over all datasets (dataset offset + label)
    dataset_ids: Tensor  # (N,) int64
    datasets: list[ImageDataset] = field(default_factory=list)


def _model_inputs(model: ModelAdapter, dataset: ImageDataset) -> Tensor:
    """The evaluation path: 28 px -> 224 px bicubic -> the model's preprocess, float16."""
    chunks = [
        model.preprocess(prepare_images(images, REFERENCE_SIZE)).to(torch.float16)
        for _, images, _ in dataset.iter_batches(_EVAL_BATCH)
    ]
    return torch.cat(chunks)


def _load_split(
    model: ModelAdapter,
    flags: Sequence[str],
    split: str,
    data_root: str | Path | None,
    limit: int | None,
) -> _Split:
    pixels, labels, classes, ids, datasets = [], [], [], [], []
    offset = 0
    for i, flag in enumerate(flags):
        dataset = load_medmnist(flag, split, root=data_root)
        if dataset.task not in ("binary", "multi-class", "ordinal"):
            raise ValueError(f"{flag} is a {dataset.task} dataset; only single-label ones train")
        if limit is not None:
            dataset = dataset.subset(slice(0, limit))
        y = dataset.labels_tensor()
        pixels.append(_model_inputs(model, dataset))
        labels.append(y)
        classes.append(y + offset)
        ids.append(torch.full_like(y, i))
        datasets.append(dataset)
        offset += dataset.num_classes
    return _Split(torch.cat(pixels), torch.cat(labels), torch.cat(classes), torch.cat(ids), datasets)


def _sampling_weights(split: _Split) -> Tensor:
    """Per-image weights: datasets equally likely, classes equally likely within a dataset."""
    counts = torch.bincount(split.classes).to(torch.float64)
    classes_per_dataset = torch.zeros(len(split.datasets), dtype=torch.float64)
    for i, d in enumerate(split.datasets):
        classes_per_dataset[i] = int(torch.unique(d.labels_tensor()).numel())
    return 1.0 / (counts[split.classes] * classes_per_dataset[split.dataset_ids] * len(split.datasets))


def _param_groups(model: ModelAdapter, weight_decay: float) -> list[dict[str, Any]]:
    """open_clip's split: no weight decay on gains, biases, norms and the logit scale (the
    parameters with fewer than two dimensions)."""
    decay, no_decay = [], []
    for p in model.model.parameters():
        (no_decay if p.ndim < 2 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _validate(model: ModelAdapter, val: _Split) -> dict[str, dict[str, float]]:
    """Zero-shot scores per dataset, as the benchmark computes them (default templates)."""
    model.eval()
    clear_text_cache(model)
    out = {}
    for i, dataset in enumerate(val.datasets):
        rows = val.dataset_ids == i
        classifier = ZeroShotClassifier(model, dataset.class_names, None, dataset.modality)
        with torch.inference_mode():
            probs = torch.cat([
                classifier.probabilities(chunk.float())
                for chunk in val.pixels[rows].split(_EVAL_BATCH)
            ])
        y = val.labels[rows]
        out[dataset.name] = {
            "balanced_accuracy": balanced_accuracy(probs, y, dataset.task),
            "accuracy": accuracy(probs, y, dataset.task),
        }
    clear_text_cache(model)
    return out


@dataclass
class PretrainResult:
    """What :func:`pretrain` produced: the trained adapter (best epoch, eval mode) and its log."""

    model: ModelAdapter
    out_dir: Path
    weights_file: Path
    best_epoch: int
    best_score: float
    log: dict[str, Any]


@dataclass
class _Captions:
    """The caption bank: tokens of every (class, template) caption, ``per_class`` per class."""

    tokens: dict[str, Tensor]
    per_class: int
    count: int


def _caption_bank(model: ModelAdapter, train: _Split, device: torch.device) -> _Captions:
    captions = [c for d in train.datasets for per_class in build_captions(
        d.class_names, d.modality) for c in per_class]
    per_class = len(captions) // int(train.classes.max() + 1)
    tokens = {k: v.to(device) for k, v in model.tokenize(captions).items()}
    return _Captions(tokens, per_class, len(captions))


def _stepper(model: ModelAdapter, cfg: PretrainConfig, total: int) -> Stepper:
    """AdamW (open_clip's betas and eps) with the shared warm-up + cosine schedule (the peak
    reached within the warm-up, as the shipped weights were trained), the learned temperature
    clamped after every step."""
    optimizer = torch.optim.AdamW(
        _param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6
    )
    scheduler = warmup_cosine_scheduler(
        optimizer, warmup=min(cfg.warmup_steps, total), total=total, peak_in_warmup=True
    )
    logit_scale = model.model.logit_scale
    return Stepper(optimizer, scheduler,
                   after_step=lambda: logit_scale.clamp_(0.0, _MAX_LOGIT_SCALE))


def _train_epoch(
    model: ModelAdapter,
    train: _Split,
    bank: _Captions,
    stepper: Stepper,
    cfg: PretrainConfig,
    generator: torch.Generator,
) -> list[float]:
    """One epoch of class-balanced batches; returns the loss of each step."""
    model.train()
    weights = _sampling_weights(train)
    order = torch.multinomial(weights, len(train.labels), replacement=True, generator=generator)
    losses = []
    for batch in range(math.ceil(len(train.labels) / cfg.batch_size)):
        rows = order[batch * cfg.batch_size : (batch + 1) * cfg.batch_size]
        pixels = random_resized_crop_flip(train.pixels[rows].float(), generator)
        classes = train.classes[rows]
        # A few templates per step keep the text tower's batch (unique captions) small.
        step_templates = torch.randperm(bank.per_class, generator=generator)
        step_templates = step_templates[: cfg.templates_per_step]
        pick = torch.randint(len(step_templates), (len(rows),), generator=generator)
        caption = classes * bank.per_class + step_templates[pick]
        loss = batch_loss(model, pixels, bank.tokens, caption, classes)
        stepper.backward(loss)
        losses.append(float(loss.detach()))
    return losses


def pretrain(
    out_dir: str | Path,
    config: PretrainConfig | None = None,
    *,
    data_root: str | Path | None = None,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] = print,
) -> PretrainResult:
    """Train ``medrobust-mini`` and write it to ``out_dir`` (``create_model(out_dir)`` loads it).

    Args:
        out_dir: output folder: ``medrobust_model.json`` + ``model.safetensors`` (float16
            weights of the best epoch, the file shipped as the registry's weights) and
            ``pretrain_log.json`` (settings, per-epoch loss and validation scores, timing;
            ``PretrainConfig.from_log`` reads the settings back).
        config: what to train (see ``PretrainConfig``); None: the defaults that trained the
            shipped weights.
        data_root: data folder (default ``$MEDROBUST_DATA``); files are downloaded if absent.
        log: progress lines go here.
    """
    cfg = PretrainConfig() if config is None else config
    if not isinstance(cfg, PretrainConfig):
        raise TypeError(f"config must be a PretrainConfig, got {type(cfg).__name__}")
    start, cpu_start = time.perf_counter(), time.process_time()
    out = Path(out_dir).expanduser()
    device = torch.device(device)
    model = create_model(MODEL_NAME, pretrained=False, device=device, tiny=cfg.tiny, seed=cfg.seed)
    train = _load_split(model, cfg.datasets, "train", data_root, cfg.limit)
    val = _load_split(model, cfg.datasets, "val", data_root, cfg.limit)
    bank = _caption_bank(model, train, device)
    generator = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = math.ceil(len(train.labels) / cfg.batch_size)
    stepper = _stepper(model, cfg, cfg.epochs * steps_per_epoch)
    log(f"pretrain {MODEL_NAME}: {len(train.labels)} train / {len(val.labels)} val images, "
        f"{bank.count} captions, {cfg.epochs} epochs x {steps_per_epoch} steps of "
        f"{cfg.batch_size}")

    history: list[dict[str, Any]] = []
    best_state: dict[str, Tensor] = {}
    best_epoch, best_score = 0, None
    for epoch in range(1, cfg.epochs + 1):
        losses = _train_epoch(model, train, bank, stepper, cfg, generator)
        scores = _validate(model, val)
        score = sum(s["balanced_accuracy"] for s in scores.values()) / len(scores)
        history.append({
            "epoch": epoch, "loss": sum(losses) / len(losses), "step_losses": losses,
            "val": scores, "val_mean_balanced_accuracy": score,
            "logit_scale": float(model.model.logit_scale.detach().exp()),
            "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu_start,
        })
        per_dataset = ", ".join(f"{k} {v['balanced_accuracy']:.3f}" for k, v in scores.items())
        log(f"epoch {epoch}/{cfg.epochs}: loss {history[-1]['loss']:.4f}, val balanced accuracy "
            f"{per_dataset} (mean {score:.3f}), {history[-1]['seconds']:.0f} s")
        if improved(score, best_score, higher_is_better=True):
            best_epoch, best_score = epoch, score
            best_state = {k: v.detach().clone() for k, v in model.model.state_dict().items()}

    model.model.load_state_dict(best_state)
    model.eval()
    model.info = dataclasses.replace(
        model.info, weights_id=f"medrobust-pretrain(seed={cfg.seed}, epoch={best_epoch})"
    )
    save_model(copy.deepcopy(model).half(), out)  # float16 file: half the size, same scores
    record = _log_record(cfg, device, train, val, bank, history, best_epoch, out)
    record.update(seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu_start)
    (out / LOG_NAME).write_text(json.dumps(record, indent=2), encoding="utf-8")
    log(f"best epoch {best_epoch} (val mean balanced accuracy {best_score:.3f}); "
        f"wrote {out} in {record['seconds']:.0f} s")
    return PretrainResult(model, out, out / "model.safetensors", best_epoch, best_score, record)


def _log_record(
    cfg: PretrainConfig,
    device: torch.device,
    train: _Split,
    val: _Split,
    bank: _Captions,
    history: list[dict[str, Any]],
    best_epoch: int,
    out: Path,
) -> dict[str, Any]:
    """``pretrain_log.json``: the settings (under "arguments", as the shipped log has them),
    data, best epoch, weights hash, environment and history; timing is filled in after."""
    settings = {k: v for k, v in cfg.to_dict().items() if k != "tiny"}
    return {
        "model": MODEL_NAME,
        "tiny": cfg.tiny,
        "arguments": {**settings, "device": str(device)},
        "train_images": {d.name: len(d) for d in train.datasets},
        "val_images": {d.name: len(d) for d in val.datasets},
        "captions_per_class": bank.per_class,
        "best_epoch": best_epoch,
        "best_val_mean_balanced_accuracy": history[best_epoch - 1]["val_mean_balanced_accuracy"],
        "seconds": None,
        "cpu_seconds": None,
        "weights_sha256": sha256_files([out / "model.safetensors"]),
        "environment": {
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "machine": platform.machine(),
        },
        "history": history,
    }
