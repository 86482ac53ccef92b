"""Linear probe: logistic regression on a model's frozen image features.

The standard few-shot baseline next to prompt learning (CoOp and BiomedCoOp report it): if
adaptation does not beat it, adaptation is not worth its cost. :func:`fit_linear_probe` draws
exactly the few-shot sample ``adapt`` draws with the same data settings (the same function,
split, shots or fraction, and seed), fits one scikit-learn ``LogisticRegression`` per dataset
on the L2-normalised image embeddings, picks its inverse regularisation ``C`` on the same
validation data ``adapt`` selects its epoch on (balanced accuracy; the stronger regularisation
wins ties), and returns a :class:`LinearProbeModel`. That model scores like any other in the
evaluation runner: its class head holds the regression, and its image embedding is the
normalised base embedding with a constant 1 appended, so that
``logit_scale * normalize(embedding) @ weights.T`` is exactly the regression's decision
function ``W x + b`` (logit scale 1; the weights are ``sqrt(2) [W, b]``, because appending 1
to a unit vector makes a vector of norm sqrt(2)).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medrobust.corruptions import prepare_images
from medrobust.corruptions.suites import REFERENCE_SIZE
from medrobust.data import ImageDataset
from medrobust.evaluation.metrics import cell_metrics
from medrobust.models import ModelAdapter

from .config import AdaptConfig
from .train import _prepare_task

__all__ = ["DEFAULT_CS", "LinearProbeHead", "LinearProbeModel", "fit_linear_probe"]

DEFAULT_CS = (0.1, 1.0, 10.0, 100.0, 1000.0)


class LinearProbeHead(nn.Module):
    """One fitted regression per label space (keyed by its class names), as a ``ClassHead``."""

    def __init__(self, heads: Mapping[tuple[str, ...], tuple[Tensor, Tensor]]) -> None:
        super().__init__()
        self.keys = list(heads)
        for i, (weight, bias) in enumerate(heads.values()):
            self.register_buffer(f"weight_{i}", weight.float())
            self.register_buffer(f"bias_{i}", bias.float())

    def class_weights(self, model: ModelAdapter, class_names: Sequence[str]) -> Tensor:
        key = tuple(class_names)
        if key not in self.keys:
            raise ValueError(
                f"no linear probe was fitted for the classes {list(key)}; fitted for "
                f"{[list(k) for k in self.keys]}"
            )
        i = self.keys.index(key)
        weight, bias = getattr(self, f"weight_{i}"), getattr(self, f"bias_{i}")
        return math.sqrt(2.0) * torch.cat([weight, bias[:, None]], dim=1)

    def prompts(self, class_names: Sequence[str]) -> list[list[str]]:
        return [["(linear probe: logistic regression on image features)"] for _ in class_names]

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()


class LinearProbeModel(ModelAdapter):
    """A base model whose classes are scored by a fitted linear probe (see the module doc)."""

    family = "linear-probe"

    def __init__(self, base: ModelAdapter, head: LinearProbeHead, label: str, record: dict) -> None:
        name = f"{base.name}+linear-probe:{label}"
        combined = hashlib.sha256(f"{base.weights_hash}|{head.sha256()}".encode()).hexdigest()
        info = dataclasses.replace(
            base.info, name=name, weights_id=f"{base.weights_id} + linear probe {label}",
            weights_hash=combined,
        )
        spec = {**base.spec, "name": name, "linear_probe": record}
        super().__init__(base.model, info=info, preprocess=base.preprocess,
                         tokenizer=base.tokenizer, spec=spec)
        self.base = base
        self.class_head = head
        self.record = record

    @property
    def logit_scale(self) -> float:
        return 1.0

    @property
    def vision_module(self) -> nn.Module:
        return self.base.vision_module

    def encode_image(self, pixels: Tensor) -> Tensor:
        features = F.normalize(self.base.encode_image(pixels).float(), dim=-1)
        return torch.cat([features, features.new_ones(features.shape[0], 1)], dim=1)

    def encode_text(self, tokens: Mapping[str, Tensor]) -> Tensor:
        raise NotImplementedError(f"{self.name} scores classes with a linear probe, not text")


def _features(
    model: ModelAdapter, images: Tensor, resize_to: int | None, batch_size: int
) -> np.ndarray:
    """L2-normalised image embeddings (N, D) of uint8 images, float64 for scikit-learn."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].to(model.device)
            if resize_to is not None:
                x = prepare_images(x, resize_to)
            out.append(F.normalize(model.encode_image(model.preprocess(x)).float(), dim=-1).cpu())
    return torch.cat(out).double().numpy()


def _fit_one(
    train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], num_classes: int,
    task: str, cs: Sequence[float], seed: int,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """The regression with the best validation balanced accuracy, as (K, D) weights, (K,) bias."""
    from sklearn.linear_model import LogisticRegression

    best: tuple[float, Any, float] | None = None
    scores = {}
    for c in sorted(cs):
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
        clf.fit(*train)
        probs = np.zeros((len(val[1]), num_classes))
        probs[:, clf.classes_] = clf.predict_proba(val[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # AUC of a one-class validation set
            score = float(cell_metrics(probs, val[1], task)["balanced_accuracy"])
        scores[str(c)] = score
        if best is None or score > best[0]:
            best = (score, clf, c)
    assert best is not None
    clf = best[1]
    weight = torch.zeros(num_classes, train[0].shape[1], dtype=torch.float64)
    bias = torch.full((num_classes,), -1e4, dtype=torch.float64)  # classes absent from the sample
    coef, intercept = torch.from_numpy(clf.coef_), torch.from_numpy(clf.intercept_)
    if len(clf.classes_) == 2:  # one decision w.x + b: the softmax of (0, w.x + b) is its sigmoid
        coef = torch.cat([torch.zeros_like(coef), coef])
        intercept = torch.cat([torch.zeros_like(intercept), intercept])
    weight[clf.classes_], bias[clf.classes_] = coef, intercept
    return weight, bias, {"C": best[2], "val_balanced_accuracy_by_C": scores}


def fit_linear_probe(
    model: ModelAdapter,
    datasets: Sequence[str | ImageDataset],
    cfg: AdaptConfig,
    *,
    data_root: str | Path | None = None,
    cs: Sequence[float] = DEFAULT_CS,
    label: str | None = None,
) -> LinearProbeModel:
    """Fit a linear probe per dataset on ``cfg``'s few-shot sample (see the module docstring).

    ``cfg`` supplies the data settings as ``adapt`` reads them (fewshot or shots,
    fewshot_split, val_split, val_limit, data_size, resize, batch_size, seed); the model is
    not modified.
    """
    if isinstance(datasets, (str, ImageDataset)) or not datasets:
        raise ValueError("datasets must be a non-empty list of dataset names or ImageDatasets")
    if not cs or any(not (isinstance(c, (int, float)) and c > 0) for c in cs):
        raise ValueError(f"cs must be positive numbers, got {cs!r}")
    model.eval()
    resize_to = REFERENCE_SIZE if cfg.resize else None
    heads: dict[tuple[str, ...], tuple[Tensor, Tensor]] = {}
    records = []
    for item in datasets:
        task = _prepare_task(item, cfg, data_root)
        names = tuple(task.record["class_names"])
        if names in heads:
            raise ValueError(f"two datasets have the classes {list(names)}; fit them separately")
        train = (_features(model, task.images, resize_to, cfg.batch_size), task.labels.numpy())
        val_images, val_labels = task.val.to_tensor(), task.val.labels
        val = (_features(model, val_images, resize_to, cfg.batch_size), np.asarray(val_labels))
        weight, bias, chosen = _fit_one(train, val, len(names), task.val.task, cs, cfg.seed)
        heads[names] = (weight, bias)
        records.append({**task.record, **chosen})
    record = {"data": records, "shots": cfg.shots, "fewshot": cfg.fewshot, "seed": cfg.seed,
              "cs": list(cs), "features": "L2-normalised image embeddings",
              "classifier": "sklearn LogisticRegression (lbfgs, L2), C chosen on validation"}
    head = LinearProbeHead(heads).to(model.device)
    return LinearProbeModel(model, head, label or f"seed{cfg.seed}", record).eval()
