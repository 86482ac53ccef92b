"""Zero-shot classification with a medical vision-language model.

Scoring done right: image and text embeddings are both L2-normalised, logits are
``logit_scale * cosine`` (``+ logit_bias`` for SigLIP), probabilities are their softmax
(sigmoid for SigLIP); a prompt ensemble is the renormalised mean of its normalised text
embeddings; images go through the model's own preprocessing exactly once (``predict_batch``
accepts uint8 images only); the model must be in eval mode.

Text prototypes are computed once per (model, prompts) and kept in memory; with a
``cache_dir`` they are also stored on disk under a hash of the model's weights, text
architecture and prompts (never for randomly initialised weights).
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from medrobust.data.datasets import check_images
from medrobust.models.base import ModelAdapter
from medrobust.models.prompts import build_prompts
from medrobust.models.weights import RANDOM_INIT

__all__ = [
    "PRECISIONS",
    "ZeroShotClassifier",
    "ZeroShotOutput",
    "clear_text_cache",
    "scores",
    "text_prototypes",
]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
TEXT_BATCH = 256

_memory_cache: weakref.WeakKeyDictionary[ModelAdapter, dict[tuple, Tensor]] = (
    weakref.WeakKeyDictionary()
)


class ZeroShotOutput(NamedTuple):
    """Per-image class logits and probabilities, (N, K) float32."""

    logits: Tensor
    probabilities: Tensor


def _disk_key(model: ModelAdapter, prompts: tuple[tuple[str, ...], ...]) -> str:
    ident = {
        "name": model.name,
        "weights_hash": model.weights_hash,
        "architecture": model.spec.get("architecture"),
        "tokenizer": model.spec.get("tokenizer"),
        "prompts": prompts,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def _encode_prompts(model: ModelAdapter, prompts: tuple[tuple[str, ...], ...]) -> Tensor:
    flat = [p for per_class in prompts for p in per_class]
    with torch.no_grad():
        chunks = [
            model.encode_text(model.tokenize(flat[i : i + TEXT_BATCH])).float()
            for i in range(0, len(flat), TEXT_BATCH)
        ]
    embeddings = F.normalize(torch.cat(chunks), dim=-1)
    per_class = torch.split(embeddings, [len(p) for p in prompts])
    return F.normalize(torch.stack([e.mean(dim=0) for e in per_class]), dim=-1)


def text_prototypes(
    model: ModelAdapter,
    prompts: Sequence[Sequence[str]],
    *,
    cache_dir: str | Path | None = None,
) -> Tensor:
    """One unit-norm text embedding per class, (K, D) float32 on the model's device.

    ``prompts[k]`` lists class k's prompts (an ensemble: the renormalised mean of their
    normalised embeddings). Computed once per (model instance, prompts); call
    :func:`clear_text_cache` after changing the text tower's weights.
    """
    key = tuple(tuple(p) for p in prompts)
    if not key or any(not p for p in key):
        raise ValueError("prompts must give at least one prompt for every class")
    cached = _memory_cache.setdefault(model, {})
    if key in cached:
        return cached[key].to(model.device)
    disk = None
    if cache_dir is not None and model.weights_hash != RANDOM_INIT:
        disk = Path(cache_dir) / "text_prototypes" / f"{_disk_key(model, key)}.safetensors"
    if disk is not None and disk.is_file():
        protos = load_file(str(disk))["prototypes"].to(model.device)
    else:
        model.check_eval()
        protos = _encode_prompts(model, key)
        if disk is not None:
            disk.parent.mkdir(parents=True, exist_ok=True)
            save_file({"prototypes": protos.cpu().contiguous()}, str(disk))
    cached[key] = protos
    return protos


def clear_text_cache(model: ModelAdapter) -> None:
    """Forget the in-memory text prototypes of ``model`` (e.g. after tuning its text tower)."""
    _memory_cache.pop(model, None)


def scores(logits: Tensor, score_fn: str) -> Tensor:
    """Probabilities from logits: softmax over classes, or per-class sigmoid (SigLIP)."""
    if score_fn == "softmax":
        return logits.softmax(dim=-1)
    if score_fn == "sigmoid":
        return torch.sigmoid(logits)
    raise ValueError(f"score_fn must be 'softmax' or 'sigmoid', got {score_fn!r}")


class ZeroShotClassifier:
    """Classify images against text prototypes of class names.

    Args:
        model: a model adapter (from ``medrobust.models.create_model``), in eval mode.
        class_names: one name per class, in label order.
        templates: template-set name(s) and/or literal templates (default: the model's own);
            several templates form an ensemble.
        dataset_label: fills the second field of two-field templates (the paper's
            "a medical image of a {} belonging to {}").
        prompts: explicit prompt lists per class (e.g. descriptive prompts), instead of templates.
        precision: ``'fp32'``, ``'bf16'`` or ``'fp16'`` autocast for the image tower.
        cache_dir: also keep text prototypes on disk there.

    A model with a ``class_head`` (a learned prompt context, a linear probe) is scored with
    the head's class weights instead of prompts; templates and prompts are then unused.
    """

    def __init__(
        self,
        model: ModelAdapter,
        class_names: Sequence[str],
        templates: str | Sequence[str] | None = None,
        dataset_label: str | None = None,
        *,
        prompts: Sequence[Sequence[str]] | None = None,
        precision: str = "fp32",
        cache_dir: str | Path | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if prompts is None:
            prompts = build_prompts(
                class_names, dataset_label, templates if templates else model.default_templates
            )
        elif len(prompts) != len(class_names) or any(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must hold one list of prompts per class name")
        self.model = model
        self.class_names = list(class_names)
        self.precision = precision
        head = getattr(model, "class_head", None)
        if head is not None:  # learned class weights (a prompt context, a linear probe)
            self.prompts = head.prompts(self.class_names)
            self.text_features = head.class_weights(model, self.class_names).float()
            return
        self.prompts = [list(p) for p in prompts]
        self.text_features = text_prototypes(model, self.prompts, cache_dir=cache_dir)

    @property
    def logit_scale(self) -> float:
        return self.model.logit_scale

    @property
    def logit_bias(self) -> float | None:
        return self.model.logit_bias

    def image_features(self, pixels: Tensor) -> Tensor:
        """Preprocessed pixels -> unit-norm image embeddings (N, D) float32."""
        dtype = PRECISIONS[self.precision]
        pixels = pixels.to(self.model.device)
        with torch.autocast(pixels.device.type, dtype=dtype, enabled=dtype is not None):
            features = self.model.encode_image(pixels)
        return F.normalize(features.float(), dim=-1)

    def logits(self, pixels: Tensor) -> Tensor:
        """Preprocessed pixels -> ``logit_scale * cosine (+ logit_bias)``, (N, K) float32."""
        features = self.image_features(pixels)
        logits = self.logit_scale * features @ self.text_features.to(features.device).T
        bias = self.logit_bias
        return logits if bias is None else logits + bias

    def probabilities(self, pixels: Tensor) -> Tensor:
        """Preprocessed pixels -> class probabilities (softmax, or sigmoid for SigLIP)."""
        return scores(self.logits(pixels), self.model.score_fn)

    def predict_batch(self, images: Tensor) -> ZeroShotOutput:
        """uint8 images (N, C, H, W), any size, grey or RGB -> logits and probabilities.

        Runs the model's preprocessing on its device, then scores, under inference mode.
        """
        check_images(images)
        self.model.check_eval()
        with torch.inference_mode():
            pixels = self.model.preprocess(images.to(self.model.device, non_blocking=True))
            logits = self.logits(pixels)
            return ZeroShotOutput(logits, scores(logits, self.model.score_fn))
