"""The one interface every medical vision-language model is used through.

A :class:`ModelAdapter` wraps one model family behind ``encode_image`` / ``encode_text``
(unnormalised embeddings), a logit scale (and bias for SigLIP), the model's own batched image
preprocessing (:class:`ImagePreprocess`), its tokenizer and context length, its default prompt
templates, licence and the identity of its weights. The vision tower LoRA targets is exposed
as ``vision_module``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.datasets import check_images

__all__ = [
    "ClassHead",
    "ClipBpeTokenizer",
    "HFTextTokenizer",
    "ImagePreprocess",
    "ModelAdapter",
    "ModelInfo",
    "TextEmbeddingUnsupportedError",
    "TextTokenizer",
]

RESIZE_MODES = ("shortest", "squash", "pad_square")
INTERPOLATIONS = ("bicubic", "bilinear")
# ITU-R 601-2 luma, as PIL's convert("L").
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class ImagePreprocess:
    """A model's image preprocessing as one batched tensor transform.

    uint8 (N, C, H, W), any size, C = 1 or 3, on any device -> normalised float32
    (N, 3, size, size) on the same device. ``resize_mode``:

    - ``shortest``: resize the short side to ``size`` (long side ``int(size * long / short)``,
      as torchvision), then centre-crop ``size`` x ``size`` (CLIP, BiomedCLIP, ...);
    - ``squash``: resize straight to ``size`` x ``size`` (SigLIP processors);
    - ``pad_square``: zero-pad to a centred square, then resize (MedCLIP).

    ``grey`` converts RGB input to one luma channel first (MedCLIP was trained on grey
    X-rays); one-channel results are repeated to three channels after normalisation. Resizing
    uses ``torch.nn.functional.interpolate`` (antialiased by default, PIL's kernel), clamped
    to the uint8 range as PIL's output is; this is the only normalisation an image receives.
    """

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"
    antialias: bool = True
    grey: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size must be a positive int, got {self.size!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode {self.resize_mode!r} not in {RESIZE_MODES}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r} not in {INTERPOLATIONS}")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.mean) not in (1, 3) or len(self.std) != len(self.mean):
            raise ValueError(
                f"mean and std need 1 or 3 values each, got {self.mean} and {self.std}"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")
        if len(self.mean) == 1 and not self.grey:
            raise ValueError("a single mean/std value is only allowed with grey=True")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ImagePreprocess:
        """Build from a config's ``preprocess`` section."""
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """The config section this preprocessing is rebuilt from."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def __call__(self, images: Tensor) -> Tensor:
        check_images(images)
        x = images.to(torch.float32)  # kept on the 0..255 scale; 1/255 folds into the normalisation
        if self.grey and x.shape[1] == 3:
            luma = x.new_tensor(_LUMA).view(1, 3, 1, 1)
            x = (x * luma).sum(dim=1, keepdim=True)
        if self.resize_mode == "pad_square":
            x = _pad_to_square(x)
        x = self._resize(x)
        std = x.new_tensor(self.std).view(1, -1, 1, 1)
        shift = -x.new_tensor(self.mean).view(1, -1, 1, 1) / std
        x = torch.addcmul(shift, x, 1.0 / (255.0 * std))
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return x.contiguous()

    def _resize(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        s = self.size
        if self.resize_mode == "shortest":
            out = (int(s * h / w), s) if w <= h else (s, int(s * w / h))
        else:
            out = (s, s)
        if (h, w) != out:
            x = F.interpolate(
                x, size=out, mode=self.interpolation, align_corners=False, antialias=self.antialias
            ).clamp_(0.0, 255.0)
        if self.resize_mode == "shortest":
            top = round((out[0] - s) / 2.0)
            left = round((out[1] - s) / 2.0)
            x = x[..., top : top + s, left : left + s]
        return x


def _pad_to_square(x: Tensor) -> Tensor:
    """Zero-pad (black) to a square of side max(H, W), the image centred as PIL's paste does."""
    h, w = x.shape[-2:]
    side = max(h, w)
    left, top = (side - w) // 2, (side - h) // 2
    return F.pad(x, (left, side - w - left, top, side - h - top), value=0.0)


class TextTokenizer(Protocol):
    """Texts -> a dict of (N, context_length) int64 tensors (``input_ids``, ``attention_mask``)."""

    context_length: int

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]: ...

    def save(self, folder: Path) -> dict[str, Any]:
        """Write what is needed to rebuild this tokenizer; return its config section."""
        ...


class ClipBpeTokenizer:
    """OpenAI CLIP's byte-pair tokenizer (shipped inside open_clip, so it works offline).

    ``attention_mask`` marks the tokens up to and including the end-of-text token (the pad id
    0 is also the id of '!', so ``ids != 0`` would be wrong).
    """

    def __init__(self, context_length: int = 77) -> None:
        from open_clip.tokenizer import SimpleTokenizer

        self.context_length = int(context_length)
        self._tok = SimpleTokenizer(context_length=self.context_length)

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]:
        ids = self._tok(list(texts), context_length=self.context_length)
        eot = (ids == self._tok.eot_token_id).int().argmax(dim=1, keepdim=True)
        mask = (torch.arange(ids.shape[1]).unsqueeze(0) <= eot).long()
        return {"input_ids": ids.long(), "attention_mask": mask}

    def save(self, folder: Path) -> dict[str, Any]:
        return {"kind": "clip_bpe", "context_length": self.context_length}


class HFTextTokenizer:
    """A transformers tokenizer padded/truncated to ``context_length`` (``padding='max_length'``).

    ``clean='whitespace'`` applies open_clip's text cleaning first, as open_clip's HFTokenizer
    does for BiomedCLIP-style towers; ``source`` is recorded for provenance.
    """

    def __init__(
        self, tokenizer: Any, context_length: int, source: str, clean: str | None = None
    ) -> None:
        from open_clip.tokenizer import get_clean_fn

        self.tokenizer = tokenizer
        self.context_length = int(context_length)
        self.source = source
        self.clean = clean
        self._clean_fn = get_clean_fn(clean) if clean else None

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]:
        texts = [self._clean_fn(t) for t in texts] if self._clean_fn else list(texts)
        enc = self.tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )
        ids = enc["input_ids"].long()
        mask = enc.get("attention_mask")
        mask = (torch.ones_like(ids) if mask is None else mask).long()
        return {"input_ids": ids, "attention_mask": mask}

    def save(self, folder: Path) -> dict[str, Any]:
        self.tokenizer.save_pretrained(str(folder / "tokenizer"))
        return {
            "kind": "hf",
            "source": "tokenizer",
            "context_length": self.context_length,
            "clean": self.clean,
        }


class ClassHead(Protocol):
    """Learned class weights that replace a model's fixed text prompts in zero-shot scoring.

    Set as ``model.class_head`` (for example a learned prompt context); the zero-shot head
    then scores ``logit_scale * normalize(image) @ class_weights(model, names).T (+ bias)``.
    """

    def class_weights(self, model: ModelAdapter, class_names: Sequence[str]) -> Tensor:
        """(K, D) float32 weights, one row per class name (unit-norm text prototypes for a
        learned prompt)."""
        ...

    def prompts(self, class_names: Sequence[str]) -> list[list[str]]:
        """What stands in for each class's prompts, in words (recorded with results)."""
        ...


class TextEmbeddingUnsupportedError(NotImplementedError):
    """A model whose text tower cannot be run from token embeddings (no prompt tuning)."""


@dataclass(frozen=True)
class ModelInfo:
    """What a model is and where its weights come from (recorded with every result)."""

    name: str
    family: str
    weights_id: str
    weights_hash: str  # sha256 of the loaded weight file(s), or 'random-init'
    licence: str
    default_templates: tuple[str, ...]
    notes: str = ""


class ModelAdapter(nn.Module, ABC):
    """One medical vision-language model behind a uniform interface.

    ``encode_image`` takes preprocessed pixels (the output of ``preprocess``) and
    ``encode_text`` the output of ``tokenize``; both return unnormalised embeddings.
    Scoring (normalisation, scale, softmax/sigmoid) lives in
    :mod:`medrobust.models.zeroshot`. ``spec`` is the resolved config the adapter was
    built from (used to save and rebuild it). ``class_head``, when set, replaces the fixed
    text prompts in zero-shot scoring (see :class:`ClassHead`).
    """

    family: str = ""

    def __init__(
        self,
        model: nn.Module,
        *,
        info: ModelInfo,
        preprocess: ImagePreprocess,
        tokenizer: TextTokenizer,
        spec: dict[str, Any],
    ) -> None:
        super().__init__()
        self.model = model
        self.info = info
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.spec = spec
        self.class_head: ClassHead | None = None

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def licence(self) -> str:
        return self.info.licence

    @property
    def weights_id(self) -> str:
        return self.info.weights_id

    @property
    def weights_hash(self) -> str:
        return self.info.weights_hash

    @property
    def default_templates(self) -> tuple[str, ...]:
        return self.info.default_templates

    @property
    def context_length(self) -> int:
        return self.tokenizer.context_length

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def score_fn(self) -> str:
        """``'sigmoid'`` for models trained with a sigmoid loss (a logit bias), else ``'softmax'``."""
        return "sigmoid" if self.logit_bias is not None else "softmax"

    @property
    @abstractmethod
    def logit_scale(self) -> float:
        """The learned temperature, already exponentiated (e.g. 100 for CLIP)."""

    @property
    def logit_bias(self) -> float | None:
        """The learned logit bias of sigmoid-loss models (SigLIP); None otherwise."""
        return None

    @property
    @abstractmethod
    def vision_module(self) -> nn.Module:
        """The image tower (the module LoRA adapts)."""

    @abstractmethod
    def encode_image(self, pixels: Tensor) -> Tensor:
        """Preprocessed pixels (N, 3, S, S) -> unnormalised image embeddings (N, D)."""

    @abstractmethod
    def encode_text(self, tokens: Mapping[str, Tensor]) -> Tensor:
        """Tokenizer output -> unnormalised text embeddings (N, D)."""

    def forward(self, pixels: Tensor) -> Tensor:
        return self.encode_image(pixels)

    @property
    def text_token_embedding(self) -> nn.Embedding:
        """The lookup table that turns the text tower's input ids into token embeddings.

        Families whose ``encode_text`` starts with one such lookup override this; prompt
        tuning (learned context vectors) needs it.
        """
        raise TextEmbeddingUnsupportedError(
            f"model {self.name!r} (family {self.family or type(self).__name__}) cannot run its "
            "text tower from token embeddings, so prompt tuning is not available for it"
        )

    def embed_text_tokens(self, input_ids: Tensor) -> Tensor:
        """Token ids (N, L) -> the text tower's token embeddings (N, L, W), before positions."""
        return self.text_token_embedding(input_ids.to(self.device))

    def encode_text_from_embeddings(
        self, tokens: Mapping[str, Tensor], embeddings: Tensor
    ) -> Tensor:
        """``encode_text(tokens)`` with the token-embedding lookup replaced by ``embeddings``.

        ``embeddings`` (N, L, W) stand in for ``embed_text_tokens(tokens['input_ids'])``; the
        ids still drive everything else the tower derives from them (padding mask, end-token
        pooling), so the ids must mark real tokens where the embeddings do. The tower's own
        code runs unchanged (a forward hook swaps the lookup's output), and gradients flow
        back into ``embeddings``. Given the lookup's own output, the result equals
        ``encode_text(tokens)`` exactly.
        """
        table = self.text_token_embedding
        calls = 0

        def swap(_module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
            nonlocal calls
            calls += 1
            if output.shape != embeddings.shape:
                raise ValueError(
                    f"model {self.name!r}: embeddings of shape {tuple(embeddings.shape)} do not "
                    f"match the token embeddings {tuple(output.shape)} of these tokens"
                )
            return embeddings.to(device=output.device, dtype=output.dtype)

        handle = table.register_forward_hook(swap)
        try:
            features = self.encode_text(tokens)
        finally:
            handle.remove()
        if calls != 1:
            raise TextEmbeddingUnsupportedError(
                f"model {self.name!r}: its text tower looked up token embeddings {calls} times "
                "for one encode_text call (expected once), so they cannot be replaced"
            )
        return features

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Texts -> ``{'input_ids', 'attention_mask'}`` of shape (N, context_length)."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a sequence of strings")
        if len(texts) == 0:
            raise ValueError("texts is empty")
        return self.tokenizer(texts)

    def _tokens_on_device(self, tokens: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if "input_ids" not in tokens:
            raise ValueError(f"tokens need 'input_ids', got keys {sorted(tokens)}")
        device = self.device
        return {k: v.to(device) for k, v in tokens.items()}

    def check_eval(self) -> None:
        """Raise unless every submodule is in eval mode (dropout off, BatchNorm frozen)."""
        training = [n or "<root>" for n, m in self.named_modules() if m.training]
        if training:
            raise RuntimeError(
                f"model '{self.name}' has modules in training mode ({', '.join(training[:5])}"
                f"{' ...' if len(training) > 5 else ''}); call model.eval() before scoring"
            )
