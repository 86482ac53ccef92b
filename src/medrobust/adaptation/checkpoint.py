"""Adapter files, training state and loading an adapted model for evaluation.

An adapter folder holds only what training changed plus what is needed to rebuild the rest:

- ``adapter_model.safetensors``: the LoRA weights (peft key names);
- ``medrobust_adapter.json``: base model (name, how to rebuild it, its weights hash and the
  sha256 of its vision-tower weights), LoRA settings and adapted modules, data, seeds, training
  settings, validation metrics, code version and the adapter's own sha256;
- ``checkpoints/train_state.pt`` while/after training: adapter, optimizer, scheduler, epoch
  and early-stopping state for resuming (``training.save_train_state``, written atomically
  each epoch and read with ``torch.load(weights_only=True)``).

:func:`load_adapted_model` rebuilds the base, checks it is bit-identical to the one trained
on, injects the LoRA layers and loads the weights: the result reproduces the trained model's
outputs exactly and works with the evaluation runner like any model.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from medrobust import __version__
from medrobust._files import atomic_path, write_failure
from medrobust.models import ModelAdapter, WeightsMismatchError, create_model, save_model
from medrobust.models.weights import RANDOM_INIT, read_safetensors

from .lora import (
    LoraSettings,
    apply_lora,
    has_lora,
    load_lora_state_dict,
    lora_state_dict,
    merge_lora,
    tensors_sha256,
    vision_fingerprint,
)
from .prompt import PromptLearner

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_FORMAT",
    "ADAPTER_WEIGHTS",
    "PROMPT_KEY",
    "STATE_FILE",
    "adapter_tensors",
    "atomic_path",
    "base_source",
    "export_merged",
    "load_adapted_model",
    "load_adapter_tensors",
    "prepare_base",
    "read_adapter_config",
    "save_adapter",
    "seen_image_hashes",
]

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "medrobust_adapter.json"
STATE_FILE = Path("checkpoints") / "train_state.pt"
ADAPTER_FORMAT = "medrobust-lora"
FORMAT_VERSION = 2  # 2: a learned prompt context (its own tensor and config section)
PROMPT_KEY = "prompt_context"


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def base_source(model_arg: str | ModelAdapter, model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """How :func:`load_adapted_model` can rebuild the base model later.

    A name is rebuilt with ``create_model(name, **model_kwargs)``; a model produced by
    ``load_adapted_model(..., merge=True)`` from its adapter folder; another ready model only
    if its weights are published or local (random weights need ``base_model=`` at load time).
    """
    if isinstance(model_arg, str):
        kwargs = {k: (str(v) if isinstance(v, Path) else v) for k, v in model_kwargs.items()}
        return {"kind": "create_model", "name": model_arg, "kwargs": kwargs}
    adapter = model_arg.spec.get("adapter")
    if adapter and adapter.get("merged"):
        return {"kind": "adapter", "dir": adapter["dir"], "merge": True}
    if model_arg.weights_hash != RANDOM_INIT:
        kwargs: dict[str, Any] = {}
        if Path(model_arg.weights_id).exists():
            kwargs["weights"] = model_arg.weights_id
        return {"kind": "create_model", "name": model_arg.name, "kwargs": kwargs}
    return {"kind": "instance", "name": model_arg.name}


def prepare_base(
    model: str | ModelAdapter, device: torch.device, model_kwargs: Mapping[str, Any]
) -> ModelAdapter:
    """The base model to adapt, in eval mode on ``device``: built from a name with
    ``create_model(name, device=device, **model_kwargs)``, or a copy of a ready model (the
    caller's object is never modified)."""
    if isinstance(model, ModelAdapter):
        if model_kwargs:
            raise ValueError("model_kwargs only apply when the model is given by name")
        return copy.deepcopy(model).to(device).eval()
    if not isinstance(model, str):
        raise TypeError(f"model must be a name or a ModelAdapter, got {type(model).__name__}")
    return create_model(model, device=device, **dict(model_kwargs))


def adapter_tensors(model: ModelAdapter) -> dict[str, torch.Tensor]:
    """What training changed: the LoRA weights (peft names) and a learned prompt context
    (``PROMPT_KEY``), as contiguous CPU float32 copies."""
    state = lora_state_dict(model) if has_lora(model) else {}
    if isinstance(model.class_head, PromptLearner):
        state[PROMPT_KEY] = model.class_head.ctx.detach().to("cpu", torch.float32).contiguous()
        state[PROMPT_KEY] = state[PROMPT_KEY].clone()
    return state


def load_adapter_tensors(model: ModelAdapter, state: Mapping[str, torch.Tensor]) -> None:
    """Set the LoRA weights and the prompt context from :func:`adapter_tensors`' output."""
    state = dict(state)
    ctx = state.pop(PROMPT_KEY, None)
    head = model.class_head
    if (ctx is None) != (not isinstance(head, PromptLearner)):
        raise ValueError("adapter weights and model disagree on whether a prompt context is learned")
    if ctx is not None:
        if tuple(ctx.shape) != tuple(head.ctx.shape):
            raise ValueError(f"prompt context of shape {tuple(ctx.shape)} does not fit "
                             f"{tuple(head.ctx.shape)}")
        with torch.no_grad():
            head.ctx.copy_(ctx.to(head.ctx.device, head.ctx.dtype))
    if state or has_lora(model):
        load_lora_state_dict(model, state)


def save_adapter(model: ModelAdapter, out_dir: str | Path, config: Mapping[str, Any]) -> Path:
    """Write the model's LoRA weights and ``config`` (completed with the adapter's sha256 and
    format) to ``out_dir``; weights first, config last, each atomically. Returns ``out_dir``."""
    out = Path(out_dir)
    state = adapter_tensors(model)
    try:
        with atomic_path(out / ADAPTER_WEIGHTS) as tmp:
            save_file(state, str(tmp), metadata={"format": ADAPTER_FORMAT})
    except SafetensorError as exc:  # how safetensors reports a failed write
        raise write_failure(out / ADAPTER_WEIGHTS, exc) from exc
    full = {
        "format": ADAPTER_FORMAT,
        "format_version": FORMAT_VERSION if PROMPT_KEY in state else 1,
        "code_version": __version__,
        **config,
        "adapter_sha256": tensors_sha256(state),
    }
    _write_json(out / ADAPTER_CONFIG, full)
    return out


def read_adapter_config(adapter_dir: str | Path) -> dict[str, Any]:
    """The adapter folder's config, validated (format, version, required sections)."""
    folder = Path(adapter_dir).expanduser()
    path = folder / ADAPTER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} is not a medrobust adapter folder: {ADAPTER_CONFIG} is missing"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}): the adapter folder is damaged") from None
    if config.get("format") != ADAPTER_FORMAT:
        raise ValueError(
            f"{path} is not a {ADAPTER_FORMAT} config (format {config.get('format')!r})"
        )
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {config['format_version']}; this medrobust reads up to "
            f"{FORMAT_VERSION}: upgrade medrobust"
        )
    for key in ("base", "lora", "adapter_sha256"):
        if key not in config:
            raise ValueError(f"{path} lacks the {key!r} section")
    return config


def _build_base(
    config: Mapping[str, Any],
    device: str | torch.device,
    base_model: str | ModelAdapter | None,
    cache_dir: str | Path | None,
    chain: tuple[Path, ...] = (),
) -> ModelAdapter:
    cache = {"cache_dir": cache_dir} if cache_dir is not None else {}
    if base_model is not None:
        kwargs = cache if isinstance(base_model, str) else {}
        return prepare_base(base_model, torch.device(device), kwargs)
    source = config["base"].get("source", {})
    kind = source.get("kind")
    if kind == "create_model":
        return create_model(source["name"], device=device, **{**source["kwargs"], **cache})
    if kind == "adapter":
        base_dir = Path(source["dir"]).expanduser().resolve()
        if base_dir in chain:
            loop = " -> ".join(str(p) for p in (*chain, base_dir))
            raise ValueError(
                f"adapter {chain[-1]} refers to itself as its base model ({loop}); its "
                f"{ADAPTER_CONFIG} is damaged: train or import the adapter again"
            )
        return _load_adapted(base_dir, device, True, None, cache_dir, chain)
    raise ValueError(
        f"the adapter's base model {config['base'].get('name')!r} was a ready model with random "
        "weights that cannot be rebuilt from its name: pass base_model= (the same model)"
    )


def _adapter_note(config: Mapping[str, Any], base: str) -> str:
    """Which base model and which images an adapter was trained on, for the report."""
    data = config.get("data") or {}
    used = ", ".join(f"{d['name']} ({d['n_train']} {d.get('fewshot_split', 'train')} images, "
                     f"validated on {d.get('validation', 'a validation split')})"
                     for d in data.get("datasets", ()) if "n_train" in d)
    seed = (config.get("seeds") or {}).get("seed")
    return (f"LoRA adapter of {base}" + (f" trained on {used}" if used else " (imported)")
            + ("" if seed is None else f", seed {seed}") + ".")


def _adapted_identity(
    model: ModelAdapter, config: Mapping[str, Any], folder: Path, merged: bool
) -> None:
    """Give the adapted model its own name, weights id/hash and spec (provenance)."""
    label = config.get("label") or folder.name
    name = f"{model.name}+{config.get('method', 'lora')}:{label}" + (":merged" if merged else "")
    parts = (model.weights_hash, config["base"]["vision_sha256"], config["adapter_sha256"])
    combined = hashlib.sha256("|".join(parts).encode()).hexdigest()
    unchanged = config.get("unchanged")
    notes = " ".join(n for n in (model.info.notes, _adapter_note(config, model.name)) if n)
    if unchanged:  # the report shows a model's notes: it marks this adapter
        notes = f"adaptation did nothing: {unchanged}." + (f" {notes}" if notes else "")
    model.info = dataclasses.replace(
        model.info,
        name=name,
        notes=notes,
        weights_id=f"{model.weights_id} + lora {folder.resolve()}",
        weights_hash=combined,
    )
    model.spec = {
        **copy.deepcopy(model.spec),
        "name": name,
        "adapter": {
            "dir": str(folder.resolve()),
            "label": label,
            "adapter_sha256": config["adapter_sha256"],
            "base_weights_hash": config["base"].get("weights_hash"),
            "merged": merged,
            "unchanged": unchanged,
        },
    }


def seen_image_hashes(adapter_dir: str | Path) -> frozenset[str]:
    """Content hashes of every training and validation image an adapter saw (all datasets).

    Adapters written before the hashes were recorded give an empty set.
    """
    config = read_adapter_config(adapter_dir)
    return frozenset(h for record in config.get("data", {}).get("datasets", ())
                     for key in ("train_image_sha256", "val_image_sha256")
                     for h in record.get(key, ()))


def test_parts(adapter_dir: str | Path) -> dict[str, frozenset[int]]:
    """Per resolved source path of a dataset without splits that the adapter partitioned,
    the positions of its held-out test part (eval of the adapter scores only these)."""
    config = read_adapter_config(adapter_dir)
    return {str(Path(record["source"]).resolve()): frozenset(record["partition"]["test_indices"])
            for record in config.get("data", {}).get("datasets", ())
            if record.get("partition") and record.get("source")}


def load_adapted_model(
    adapter_dir: str | Path,
    device: str | torch.device = "cpu",
    *,
    merge: bool = False,
    base_model: str | ModelAdapter | None = None,
    cache_dir: str | Path | None = None,
) -> ModelAdapter:
    """The base model with the folder's adapter, in eval mode on ``device``.

    The adapter holds LoRA weights, a learned prompt context (set as the model's
    ``class_head``: zero-shot scoring then takes the class prototypes from it), or both.
    Its ``name`` is ``<base>+<method>:<label>`` (method ``lora``, ``prompt`` or
    ``lora+prompt``) and its ``weights_hash`` combines the base's hash,
    its vision-tower fingerprint and the adapter's sha256, so results stored by the runner
    never mix with the base's. ``merge`` folds the adapter into the base weights (plain
    layers, same outputs up to float rounding; use :func:`export_merged` to write a model
    folder). ``base_model`` overrides how the base is built (a name or a ready model, which
    is copied); it must be bit-identical to the base trained on.

    Raises:
        WeightsMismatchError: the base's vision tower differs from the one trained on.
        ValueError: a malformed folder or weights that do not fit the LoRA layers.
    """
    return _load_adapted(Path(adapter_dir), device, merge, base_model, cache_dir, ())


def _load_adapted(
    adapter_dir: Path,
    device: str | torch.device,
    merge: bool,
    base_model: str | ModelAdapter | None,
    cache_dir: str | Path | None,
    chain: tuple[Path, ...],
) -> ModelAdapter:
    """:func:`load_adapted_model`; ``chain`` holds the adapter folders whose base this is."""
    folder = adapter_dir.expanduser()
    config = read_adapter_config(folder)
    model = _build_base(config, device, base_model, cache_dir, (*chain, folder.resolve()))
    expected = config["base"]["vision_sha256"]
    found = vision_fingerprint(model)
    if found != expected:
        raise WeightsMismatchError(
            f"base model {model.name!r} is not the one adapter {folder} was trained on: its "
            f"vision-tower weights hash {found[:16]}... differs from {expected[:16]}... "
            "(other weights, or another random seed); pass base_model= with the right model"
        )
    lora = config["lora"]
    if lora:
        settings = LoraSettings(
            rank=int(lora["rank"]), alpha=lora["alpha"], dropout=float(lora["dropout"]),
            targets="|".join(re.escape(m) for m in lora["modules"]),  # exactly the trained layers
        )
        apply_lora(model, settings, verify=False)
    else:
        model.requires_grad_(False)
    state = read_safetensors(folder / ADAPTER_WEIGHTS, "an adapter")
    if tensors_sha256(state) != config["adapter_sha256"]:
        raise ValueError(
            f"{folder / ADAPTER_WEIGHTS} does not match the sha256 recorded in its config "
            "(modified or partially written)"
        )
    if config.get("prompt"):
        if PROMPT_KEY not in state:
            raise ValueError(f"{folder / ADAPTER_WEIGHTS} lacks the learned prompt context")
        model.class_head = PromptLearner.from_description(model, config["prompt"], state[PROMPT_KEY])
    load_adapter_tensors(model, state)
    if merge and lora:
        merge_lora(model)
    _adapted_identity(model, config, folder, merge)
    return model.to(device).eval()


def export_merged(
    adapter_dir: str | Path, folder: str | Path, device: str | torch.device = "cpu", **kwargs: Any
) -> Path:
    """Write base + adapter, merged into plain weights, as a model folder that
    ``create_model(folder)`` loads like any model. ``kwargs`` go to :func:`load_adapted_model`."""
    model = load_adapted_model(adapter_dir, device, merge=True, **kwargs)
    if model.class_head is not None:
        raise ValueError(
            f"adapter {adapter_dir} holds a learned prompt context, which a plain model folder "
            "cannot hold; evaluate it with the adapter itself (eval --adapter, --merge for its "
            "LoRA part)"
        )
    return save_model(model, folder)
