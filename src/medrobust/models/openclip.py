"""open_clip families: OpenAI CLIP (ViT-B/16, RN50), BiomedCLIP, UniMed-CLIP, QuiltNet and any
``open_clip:ARCH/TAG`` or ``hf-hub:REPO`` model.

Architectures are open_clip model configs (``CLIP`` for open_clip's own text tower,
``CustomTextCLIP`` for a Hugging Face text tower such as PubMedBERT). A Hugging Face text
tower is built from a local ``config.json``-style file (``text_cfg.hf_model_name`` may name
one), so random-weight builds never touch the Hub.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .base import ModelAdapter
from .weights import (
    WeightsMismatchError,
    WeightsSource,
    fetch_weights,
    hub_offline_if_unreachable,
    load_state_dict_strict,
    read_state_dict,
)

__all__ = [
    "OpenClipAdapter",
    "build_module",
    "hub_spec",
    "load_into",
    "resolve_model_cfg",
    "tag_spec",
]

FAMILY = "open_clip"
_CHECKPOINT_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
)


class OpenClipAdapter(ModelAdapter):
    """An open_clip ``CLIP`` / ``CustomTextCLIP`` behind the common interface."""

    family = FAMILY

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())

    @property
    def logit_bias(self) -> float | None:
        bias = getattr(self.model, "logit_bias", None)
        return None if bias is None else float(bias.detach())

    @property
    def vision_module(self) -> nn.Module:
        return self.model.visual

    def encode_image(self, pixels: Tensor) -> Tensor:
        return self.model.encode_image(pixels)

    def encode_text(self, tokens: Mapping[str, Tensor]) -> Tensor:
        return self.model.encode_text(self._tokens_on_device(tokens)["input_ids"])

    @property
    def text_token_embedding(self) -> nn.Embedding:
        text = getattr(self.model, "text", None)
        if text is None:  # CLIP keeps its text tower's parts on the model itself
            return self.model.token_embedding
        hf_model = getattr(text, "transformer", None)
        if hasattr(hf_model, "get_input_embeddings"):  # HFTextEncoder (PubMedBERT, ...)
            return hf_model.get_input_embeddings()
        if getattr(text, "cls_emb", None) is None and not getattr(text, "use_pad_mask", False):
            table = getattr(text, "token_embedding", None)  # plain TextTransformer
            if isinstance(table, nn.Embedding):
                return table
        return super().text_token_embedding


def _resolve_path(value: str, base_dir: Path) -> str:
    """A relative file/folder name existing under ``base_dir`` -> its absolute path; else as is."""
    candidate = Path(value)
    if not candidate.is_absolute():
        candidate = base_dir / candidate
    return str(candidate.resolve()) if candidate.exists() else value


def resolve_model_cfg(architecture: Mapping[str, Any], base_dir: Path) -> dict[str, Any]:
    """The open_clip model config of an ``architecture`` section (inline or a built-in name)."""
    import open_clip

    if "model_cfg" in architecture:
        cfg = copy.deepcopy(dict(architecture["model_cfg"]))
    elif "open_clip_arch" in architecture:
        name = architecture["open_clip_arch"]
        cfg = open_clip.get_model_config(name)
        if cfg is None:
            raise ValueError(
                f"unknown open_clip architecture {name!r}; known: {open_clip.list_models()}"
            )
    else:
        raise ValueError("an open_clip architecture needs 'model_cfg' or 'open_clip_arch'")
    if "multimodal_cfg" in cfg:
        raise ValueError("CoCa (captioning) models are not supported; use a contrastive model")
    text_cfg = cfg.get("text_cfg", {})
    if text_cfg.get("hf_model_name"):
        text_cfg["hf_model_name"] = _resolve_path(text_cfg["hf_model_name"], base_dir)
    return cfg


def build_module(spec: Mapping[str, Any], base_dir: Path) -> nn.Module:
    """A randomly initialised open_clip model of the spec's architecture (no download).

    ``spec['architecture']['model_cfg']`` is resolved in place of a built-in name so that the
    adapter's spec records the full architecture.
    """
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = resolve_model_cfg(spec["architecture"], base_dir)
    spec["architecture"]["model_cfg"] = copy.deepcopy(cfg)
    vision_cfg, text_cfg = cfg["vision_cfg"], cfg["text_cfg"]
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False
    hf_text = bool(text_cfg.get("hf_model_name"))
    if hf_text:
        text_cfg["hf_model_pretrained"] = False
    custom_text = cfg.pop("custom_text", False) or hf_text
    cls = CustomTextCLIP if custom_text else CLIP
    hub_text = hf_text and not Path(text_cfg["hf_model_name"]).exists()
    with hub_offline_if_unreachable() if hub_text else contextlib.nullcontext():
        model = cls(**cfg)  # a Hub text config (generic hf-hub: models) is read from the cache
    size = _image_size(cfg)
    patch_embed = getattr(getattr(model.visual, "trunk", None), "patch_embed", None)
    if patch_embed is not None and tuple(patch_embed.img_size) != (size, size):
        model.visual.set_input_size(size)  # open_clip leaves timm trunks at their default size
    return model


def _checkpoint_in(folder: Path) -> Path:
    for name in _CHECKPOINT_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(
        p for ext in ("*.safetensors", "*.pt", "*.pth", "*.bin") for p in folder.glob(ext)
    )
    if len(found) != 1:
        raise WeightsMismatchError(
            f"cannot tell which file in {folder} holds the weights (found {[p.name for p in found]}); "
            "pass the file itself"
        )
    return found[0]


def load_into(module: nn.Module, spec: Mapping[str, Any], path: Path) -> list[Path]:
    """Load an open_clip checkpoint (file, or folder holding one) strictly; return the file used.

    ``architecture.checkpoint_prefixes`` renames key prefixes of forks (UniMed-CLIP's
    ``text_encoder.`` is upstream's ``text.``).
    """
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict

    file = _checkpoint_in(path) if path.is_dir() else path
    state = read_state_dict(file)
    for old, new in spec["architecture"].get("checkpoint_prefixes", {}).items():
        state = {(new + k[len(old) :] if k.startswith(old) else k): v for k, v in state.items()}
    state = convert_state_dict(module, state)
    if "positional_embedding" in state and not hasattr(module, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        param = getattr(module, key, None)
        if key in state and isinstance(param, torch.Tensor):
            state[key] = state[key].reshape(param.shape)
    load_state_dict_strict(module, state, f"from {file}")
    return [file]


def export_files(spec: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Copy a local Hugging Face text config next to a saved model and point the spec at it."""
    text_cfg = spec["architecture"]["model_cfg"].get("text_cfg", {})
    source = text_cfg.get("hf_model_name")
    if source and Path(source).exists():
        src = Path(source)
        src = src / "config.json" if src.is_dir() else src
        shutil.copyfile(src, folder / "text_config.json")
        text_cfg["hf_model_name"] = "text_config.json"
    return spec


def _preprocess_from(open_clip_preprocess: Mapping[str, Any], size: int) -> dict[str, Any]:
    mode = open_clip_preprocess.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash"):
        raise ValueError(f"open_clip resize_mode {mode!r} is not supported (shortest, squash)")
    return {
        "size": int(size),
        "mean": list(open_clip_preprocess.get("mean", (0.48145466, 0.4578275, 0.40821073))),
        "std": list(open_clip_preprocess.get("std", (0.26862954, 0.26130258, 0.27577711))),
        "resize_mode": mode,
        "interpolation": open_clip_preprocess.get("interpolation", "bicubic"),
    }


def _image_size(model_cfg: Mapping[str, Any]) -> int:
    size = model_cfg["vision_cfg"].get("image_size", 224)
    if isinstance(size, (list, tuple)):
        if size[0] != size[1]:
            raise ValueError(f"non-square model input {size} is not supported")
        size = size[0]
    return int(size)


def _tokenizer_for(model_cfg: Mapping[str, Any], open_clip_name: str) -> dict[str, Any]:
    """CLIP's BPE, or open_clip's own tokenizer for ``open_clip_name`` (its HF tokenizer,
    cleaning and special-token options as open_clip applies them)."""
    text_cfg = model_cfg.get("text_cfg", {})
    context = int(text_cfg.get("context_length", 77))
    if text_cfg.get("hf_tokenizer_name"):
        return {"kind": "open_clip", "source": open_clip_name, "context_length": context}
    return {"kind": "clip_bpe", "context_length": context}


def _prefetch_text_config(model_cfg: dict[str, Any], name: str, cache_dir: Path | None) -> None:
    """Replace a Hub id in ``text_cfg.hf_model_name`` by a cached local copy of its config."""
    text_cfg = model_cfg.get("text_cfg", {})
    hub_id = text_cfg.get("hf_model_name")
    if hub_id and not Path(hub_id).exists():
        source = WeightsSource(kind="hf_file", repo=hub_id, filename="config.json")
        text_cfg["hf_model_name"] = str(
            fetch_weights(f"{name} (text config)", source, cache_dir)[0]
        )


def adopt_hub_config(
    spec: dict[str, Any], repo: str, name: str, cache_dir: Path | None
) -> dict[str, Any]:
    """Take architecture, preprocessing and tokenizer from a Hub repo's open_clip_config.json."""
    source = WeightsSource(kind="hf_file", repo=repo, filename="open_clip_config.json")
    path = fetch_weights(f"{name} (open_clip config)", source, cache_dir)[0]
    config = json.loads(Path(path).read_text(encoding="utf-8"))
    model_cfg = copy.deepcopy(config.get("model_cfg", config))
    _prefetch_text_config(model_cfg, name, cache_dir)
    spec["architecture"] = {
        **{k: v for k, v in spec["architecture"].items() if k != "open_clip_arch"},
        "model_cfg": model_cfg,
    }
    spec["preprocess"] = _preprocess_from(config.get("preprocess_cfg", {}), _image_size(model_cfg))
    spec["tokenizer"] = _tokenizer_for(model_cfg, f"hf-hub:{repo}")
    return spec


def hub_spec(repo: str, name: str, cache_dir: Path | None) -> dict[str, Any]:
    """The spec of a generic ``hf-hub:REPO`` open_clip model (fetches its config)."""
    spec: dict[str, Any] = {
        "family": FAMILY,
        "display_name": name,
        "architecture": {},
        "weights": {
            "kind": "hf_file",
            "repo": repo,
            "filename": "open_clip_pytorch_model.bin",
            "homepage": f"https://huggingface.co/{repo}",
        },
        "templates": "clip",
        "licence": f"See the model card https://huggingface.co/{repo}.",
    }
    return adopt_hub_config(spec, repo, name, cache_dir)


def tag_spec(arch: str, tag: str | None, name: str) -> dict[str, Any]:
    """The spec of a generic ``open_clip:ARCH/TAG`` model from open_clip's pretrained table."""
    import open_clip

    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise ValueError(
            f"unknown open_clip architecture {arch!r}; known: {open_clip.list_models()}"
        )
    weights: dict[str, str] = {
        "kind": "manual",
        "homepage": "https://github.com/mlfoundations/open_clip",
    }
    pre_cfg: Mapping[str, Any] = {}
    if tag:
        pre_cfg = open_clip.get_pretrained_cfg(arch, tag)
        if not pre_cfg:
            raise ValueError(
                f"unknown pretrained tag {tag!r} for {arch}; known: "
                f"{open_clip.list_pretrained_tags_by_model(arch)}"
            )
        if pre_cfg.get("hf_hub"):
            repo, filename = pre_cfg["hf_hub"].rstrip("/"), "open_clip_pytorch_model.bin"
            if not pre_cfg["hf_hub"].endswith("/"):
                repo, filename = repo.rsplit("/", 1)
            weights = {
                "kind": "hf_file",
                "repo": repo,
                "filename": filename,
                "homepage": f"https://huggingface.co/{repo}",
            }
        elif pre_cfg.get("url"):
            weights = {"kind": "url", "url": pre_cfg["url"], "homepage": pre_cfg["url"]}
    return {
        "family": FAMILY,
        "display_name": name,
        "architecture": {"open_clip_arch": arch},
        "weights": weights,
        "preprocess": _preprocess_from(pre_cfg, _image_size(model_cfg)),
        "tokenizer": _tokenizer_for(model_cfg, arch),
        "templates": "clip",
        "licence": "See the open_clip pretrained model table (README) for this tag's licence.",
    }
