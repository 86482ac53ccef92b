"""MedCLIP (Wang et al., EMNLP 2022) without the ``medclip`` package.

The architecture is rebuilt with the published module names, so the released state dict
(``pytorch_model.bin`` inside the authors' zips) loads strictly:

- vision: torchvision ResNet-50 whose ``fc`` is a bias-free Linear 2048 -> 512
  (``vision_model.model.*``), or a transformers Swin-T (``microsoft/swin-tiny-patch4-window7-224``
  architecture) whose pooled output goes through a bias-free Linear 768 -> 512
  (``vision_model.model.*``, ``vision_model.projection_head``);
- text: Bio_ClinicalBERT; the mean over tokens of hidden layers 1, 2 and the last, averaged over
  the three layers, then a bias-free Linear 768 -> 512 (``text_model.*``);
- ``logit_scale`` clamped to [0, ln 100] as MedCLIP's ``compute_logits`` does.

MedCLIP's own code averages over padding tokens too, so a prompt's embedding depends on the
other prompts padded with it; here the token mean covers the real tokens only, which equals
MedCLIP's result for a prompt encoded on its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .base import ModelAdapter
from .weights import (
    WeightsMismatchError,
    extract_zip_member,
    load_state_dict_strict,
    read_state_dict,
)

__all__ = ["MedCLIPAdapter", "MedCLIPModule", "build_module", "load_into"]

FAMILY = "medclip"
MAX_LOGIT_SCALE = 4.6052  # ln(100), MedCLIP's clamp


class MedCLIPVision(nn.Module):
    """MedCLIP's image tower: ResNet-50 (``kind='resnet'``) or Swin-T (``kind='swin'``)."""

    def __init__(self, cfg: Mapping[str, Any], embed_dim: int) -> None:
        super().__init__()
        self.kind = cfg.get("kind")
        if self.kind == "resnet":
            from torchvision.models.resnet import Bottleneck, ResNet

            self.model = ResNet(Bottleneck, list(cfg.get("layers", (3, 4, 6, 3))))
            self.model.fc = nn.Linear(self.model.fc.in_features, embed_dim, bias=False)
        elif self.kind == "swin":
            from transformers import SwinConfig, SwinModel

            self.model = SwinModel(SwinConfig(**cfg.get("config", {})))
            self.projection_head = nn.Linear(self.model.num_features, embed_dim, bias=False)
        else:
            raise ValueError(f"MedCLIP vision kind must be 'resnet' or 'swin', got {self.kind!r}")

    def forward(self, pixels: Tensor) -> Tensor:
        if self.kind == "resnet":
            return self.model(pixels)
        return self.projection_head(self.model(pixel_values=pixels).pooler_output)


class MedCLIPText(nn.Module):
    """MedCLIP's text tower: BERT, mean of hidden layers 1, 2 and last, then a projection."""

    def __init__(self, bert_config: Mapping[str, Any], embed_dim: int) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        config = dict(bert_config)
        config.pop("model_type", None)
        self.model = BertModel(BertConfig(**config))  # with pooler: the checkpoint holds it
        if self.model.config.num_hidden_layers < 2:
            raise ValueError("MedCLIP's text pooling needs at least 2 BERT layers")
        self.projection_head = nn.Linear(self.model.config.hidden_size, embed_dim, bias=False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True
        )
        hidden = out.hidden_states
        layers = torch.stack([hidden[1], hidden[2], hidden[-1]])  # (3, N, L, H)
        mask = attention_mask.to(layers.dtype)[None, :, :, None]
        token_mean = (layers * mask).sum(dim=2) / mask.sum(dim=2).clamp_min(1.0)
        return self.projection_head(token_mean.mean(dim=0))


class MedCLIPModule(nn.Module):
    """The MedCLIP dual encoder with the published parameter names."""

    def __init__(self, architecture: Mapping[str, Any]) -> None:
        super().__init__()
        embed_dim = int(architecture.get("embed_dim", 512))
        self.vision_model = MedCLIPVision(architecture["vision"], embed_dim)
        self.text_model = MedCLIPText(architecture["text_config"], embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))


class MedCLIPAdapter(ModelAdapter):
    """MedCLIP behind the common interface (see the module docstring for the caveats)."""

    family = FAMILY

    @property
    def logit_scale(self) -> float:
        return math.exp(float(self.model.logit_scale.detach().clamp(0.0, MAX_LOGIT_SCALE)))

    @property
    def vision_module(self) -> nn.Module:
        return self.model.vision_model

    def encode_image(self, pixels: Tensor) -> Tensor:
        return self.model.vision_model(pixels)

    @property
    def text_token_embedding(self) -> nn.Embedding:
        return self.model.text_model.model.get_input_embeddings()

    def encode_text(self, tokens: Mapping[str, Tensor]) -> Tensor:
        tokens = self._tokens_on_device(tokens)
        mask = tokens.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(tokens["input_ids"])
        return self.model.text_model(tokens["input_ids"], mask)


def build_module(spec: Mapping[str, Any], base_dir: Path) -> nn.Module:
    """A randomly initialised MedCLIP of the spec's architecture."""
    return MedCLIPModule(spec["architecture"])


def load_into(module: nn.Module, spec: Mapping[str, Any], path: Path) -> list[Path]:
    """Load MedCLIP's ``pytorch_model.bin`` (a file, its folder or release zip) strictly."""
    if path.is_dir():
        candidates = [path / "pytorch_model.bin", path / "model.safetensors"]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise WeightsMismatchError(f"no pytorch_model.bin or model.safetensors in {path}")
        path = found[0]
    elif path.suffix == ".zip":  # the authors' release zip itself
        path = extract_zip_member(path, "pytorch_model.bin")
    load_state_dict_strict(module, read_state_dict(path), f"from {path}")
    return [path]
