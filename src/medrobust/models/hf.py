"""transformers families: CLIPModel (PubMedCLIP, PLIP, any ``hf:REPO`` CLIP) and SiglipModel
(MedSigLIP, any ``hf:REPO`` SigLIP).

Models are built from a config dict (random weights, offline) and published weights are then
loaded strictly from the repository's safetensors/bin files, so a checkpoint that does not fit
raises instead of leaving tensors randomly initialised as ``from_pretrained`` would.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .base import ModelAdapter
from .weights import (
    WeightsMismatchError,
    WeightsSource,
    fetch_weights,
    load_state_dict_strict,
    read_state_dict,
)

__all__ = ["HFClipAdapter", "adopt_folder", "build_module", "hub_spec", "load_into"]

FAMILY = "hf"
MODEL_TYPES = ("clip", "siglip")
_PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}


def _model_classes(model_type: str) -> tuple[type, type]:
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    classes = {"clip": (CLIPConfig, CLIPModel), "siglip": (SiglipConfig, SiglipModel)}
    if model_type not in classes:
        raise ValueError(f"model_type {model_type!r} is not supported; allowed: {MODEL_TYPES}")
    return classes[model_type]


def _pooled(output: Any) -> Tensor:
    """``get_*_features`` returns a tensor (transformers 4) or an output object (5)."""
    return output if isinstance(output, Tensor) else output.pooler_output


class HFClipAdapter(ModelAdapter):
    """A transformers CLIPModel or SiglipModel behind the common interface."""

    family = FAMILY

    @property
    def is_siglip(self) -> bool:
        return self.spec["architecture"]["model_type"] == "siglip"

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())

    @property
    def logit_bias(self) -> float | None:
        return float(self.model.logit_bias.detach()) if self.is_siglip else None

    @property
    def vision_module(self) -> nn.Module:
        return self.model.vision_model

    def encode_image(self, pixels: Tensor) -> Tensor:
        return _pooled(self.model.get_image_features(pixel_values=pixels))

    @property
    def text_token_embedding(self) -> nn.Embedding:
        return self.model.text_model.get_input_embeddings()

    def encode_text(self, tokens: Mapping[str, Tensor]) -> Tensor:
        tokens = self._tokens_on_device(tokens)
        if self.is_siglip:  # SigLIP was trained on max_length-padded ids without a mask
            return _pooled(self.model.get_text_features(input_ids=tokens["input_ids"]))
        return _pooled(
            self.model.get_text_features(
                input_ids=tokens["input_ids"], attention_mask=tokens.get("attention_mask")
            )
        )


def build_module(spec: Mapping[str, Any], base_dir: Path) -> nn.Module:
    """A randomly initialised CLIPModel / SiglipModel from ``architecture.config``."""
    arch = spec["architecture"]
    config_cls, model_cls = _model_classes(arch.get("model_type", ""))
    config = dict(arch["config"])
    config.pop("model_type", None)
    config.pop("architectures", None)
    return model_cls(config_cls(**config))


def load_into(module: nn.Module, spec: Mapping[str, Any], path: Path) -> list[Path]:
    """Load the weight file(s) of a repository folder (or one file) strictly."""
    if path.is_dir():
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
        files = [f for f in files if not f.name.startswith("training_args")]
        if not files:
            raise WeightsMismatchError(f"no *.safetensors or *.bin weight files in {path}")
    else:
        files = [path]
    state: dict[str, Tensor] = {}
    for f in files:
        state.update(read_state_dict(f))
    load_state_dict_strict(module, state, f"from {path}")
    return files


def _preprocess_from(processor: Mapping[str, Any], image_size: int) -> dict[str, Any]:
    """A transformers image-processor config -> an ImagePreprocess config section."""
    size = processor.get("size", image_size)
    crop = processor.get("crop_size", size) if processor.get("do_center_crop", False) else None
    resample = processor.get("resample", 3)
    if resample not in _PIL_RESAMPLE:
        raise ValueError(f"processor resample {resample} is not supported (2 bilinear, 3 bicubic)")
    mean = processor.get("image_mean", (0.48145466, 0.4578275, 0.40821073))
    std = processor.get("image_std", (0.26862954, 0.26130258, 0.27577711))
    common = {"mean": list(mean), "std": list(std), "interpolation": _PIL_RESAMPLE[resample]}
    if isinstance(size, Mapping) and "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        crop_side = crop if not isinstance(crop, Mapping) else crop.get("height")
        if crop_side is not None and int(crop_side) != edge:
            raise ValueError(f"resize {edge} then crop {crop_side} is not supported")
        return {"size": edge, "resize_mode": "shortest", **common}
    if isinstance(size, Mapping):
        if size.get("height") != size.get("width"):
            raise ValueError(f"non-square processor size {size} is not supported")
        size = size["height"]
    return {"size": int(size), "resize_mode": "squash", **common}


def adopt_folder(spec: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Take config, preprocessing and tokenizer from a transformers model folder (snapshot)."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise WeightsMismatchError(f"{folder} has no config.json (not a transformers model folder)")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    model_type = config.get("model_type", "")
    _model_classes(model_type)
    spec["architecture"] = {"model_type": model_type, "config": config}
    processor = folder / "preprocessor_config.json"
    image_size = int(config.get("vision_config", {}).get("image_size", 224))
    if processor.is_file():
        spec["preprocess"] = _preprocess_from(
            json.loads(processor.read_text(encoding="utf-8")), image_size
        )
    else:
        spec["preprocess"] = {**spec["preprocess"], "size": image_size}
    if any(
        (folder / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer_config.json")
    ):
        context = int(config.get("text_config", {}).get("max_position_embeddings", 77))
        spec["tokenizer"] = {"kind": "hf", "source": str(folder), "context_length": context}
    return spec


def hub_spec(repo: str, name: str, cache_dir: Path | None, pretrained: bool) -> dict[str, Any]:
    """The spec of a generic ``hf:REPO`` model; without weights only its config is fetched."""
    spec: dict[str, Any] = {
        "family": FAMILY,
        "display_name": name,
        "weights": {
            "kind": "hf_snapshot",
            "repo": repo,
            "homepage": f"https://huggingface.co/{repo}",
        },
        "preprocess": {
            "size": 224,
            "mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711],
        },
        "tokenizer": {"kind": "clip_bpe", "context_length": 77},
        "templates": "clip",
        "licence": f"See the model card https://huggingface.co/{repo}.",
    }
    if pretrained:
        return spec  # the snapshot is fetched and adopted with the weights
    source = WeightsSource(kind="hf_file", repo=repo, filename="config.json")
    config_path = fetch_weights(f"{name} (config)", source, cache_dir)[0]
    return adopt_folder(spec, config_path.parent)
