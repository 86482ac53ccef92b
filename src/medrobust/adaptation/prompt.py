"""CoOp-style prompt tuning: learned context vectors in the text tower's token-embedding space.

A class's prompt is ``[V_1 ... V_M] <class_template filled with the class name>`` (for example
``[V_1 V_2 V_3 V_4] benign.``): the M context vectors are parameters, the class-name tokens
and the whole text tower stay frozen, and the class prototype is the tower's (normalised)
output for that sequence. The context is initialised from the token embeddings of a text
(``"a photo of a"``: then M is its number of tokens, and before training the prototypes equal
those of the fixed prompt ``"a photo of a {}."``) or drawn from N(0, 0.02^2) with a seeded
generator; it is shared by all classes or learned per class (CoOp's class-specific context).

The tower runs through :meth:`ModelAdapter.encode_text_from_embeddings`: its own code, with
the token-embedding lookup's output replaced. Token ids are assembled so that the tower's
id-derived behaviour (padding mask, end-token pooling) sees a prompt of the right length: the
context's ids (the init text's own, or a placeholder word for a random init) are inserted
after the tokenizer's start tokens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medrobust.models.base import ModelAdapter
from medrobust.models.prompts import template_fields

__all__ = ["CONTEXT_MODES", "RANDOM_INIT", "PromptLearner", "PromptSettings"]

CONTEXT_MODES = ("shared", "class")
RANDOM_INIT = "random"
DEFAULT_RANDOM_TOKENS = 4
_PLACEHOLDER = "x"  # stands in for the context in the token ids of a random init (CoOp: "X")


@dataclass(frozen=True)
class PromptSettings:
    """What the learned context is: how many vectors, their initialisation, who shares them.

    Args:
        context: ``'shared'`` (one context for every class) or ``'class'`` (one per class
            name, CoOp's class-specific context).
        init: the text whose token embeddings initialise the context (e.g. ``"a photo of a"``),
            or ``'random'`` for N(0, ``init_std``^2).
        tokens: M, the number of context vectors. With a text init it is the text's number of
            tokens (None, or that number); with a random init None means 4.
        class_template: what follows the context for each class, with one ``{}`` field.
        init_std: standard deviation of a random init.
    """

    context: str = "shared"
    init: str = "a photo of a"
    tokens: int | None = None
    class_template: str = "{}."
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.context not in CONTEXT_MODES:
            raise ValueError(f"context must be one of {CONTEXT_MODES}, got {self.context!r}")
        if not isinstance(self.init, str) or not self.init.strip():
            raise ValueError(f"init must be a non-empty text or {RANDOM_INIT!r}, got {self.init!r}")
        if self.init != RANDOM_INIT and "{" in self.init:
            raise ValueError(
                f"init {self.init!r} is the context's own text (e.g. 'a photo of a'); the class "
                "name goes into class_template"
            )
        if self.tokens is not None and (
            isinstance(self.tokens, bool) or not isinstance(self.tokens, int) or self.tokens < 1
        ):
            raise ValueError(f"tokens must be an int >= 1 or None, got {self.tokens!r}")
        if template_fields(self.class_template) != 1:
            raise ValueError(
                f"class_template {self.class_template!r} must have exactly one '{{}}' (the class)"
            )
        std = self.init_std
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not math.isfinite(std):
            raise ValueError(f"init_std must be a finite number, got {std!r}")
        if std <= 0:
            raise ValueError(f"init_std must be positive, got {std!r}")

    @property
    def random_init(self) -> bool:
        return self.init == RANDOM_INIT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PromptSettings:
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(
                f"unknown PromptSettings {unknown}; known: {sorted(cls.__dataclass_fields__)}"
            )
        return cls(**d)


def _ids(model: ModelAdapter, text: str) -> Tensor:
    return model.tokenize([text])["input_ids"][0].cpu()


def locate_context(model: ModelAdapter, text: str) -> tuple[int, Tensor]:
    """Where a text's own tokens sit in its token ids: ``(start, ids)``.

    ``start`` is the number of leading special tokens (CLIP's start-of-text, BERT's [CLS],
    none for SigLIP) and ``ids`` the text's M tokens, found by comparing with the ids of an
    empty text: they share the first ``start`` ids, and the text's ids after its M tokens are
    the empty text's shifted by M (end token, padding).
    """
    empty, filled = _ids(model, ""), _ids(model, text)
    length = len(empty)
    differ = (empty != filled).nonzero()
    if len(differ) == 0:
        raise ValueError(f"model {model.name!r}: the text {text!r} has no tokens")
    start = int(differ[0])
    for m in range(1, length - start):
        if torch.equal(filled[start + m :], empty[start : length - m]):
            return start, filled[start : start + m].clone()
    raise ValueError(
        f"model {model.name!r}: cannot locate the tokens of {text!r} in its token ids "
        f"(too long for the context length {length}?)"
    )


class PromptLearner(nn.Module):
    """The learned context (``ctx``: (M, W) shared, or (C, M, W) per class name).

    Args:
        model: the model whose text tower the context feeds (used for its tokenizer and
            token embeddings; not stored).
        settings: see :class:`PromptSettings`.
        class_names: the classes that get their own context (``context='class'``); a name
            that appears in several datasets shares one context. Ignored for a shared context.
        seed: seed of a random initialisation.

    :meth:`text_features` gives unit-norm class prototypes whose gradient reaches ``ctx``
    only (when the model's parameters are frozen, as the trainer leaves them).
    """

    def __init__(
        self,
        model: ModelAdapter,
        settings: PromptSettings | None = None,
        *,
        class_names: Sequence[str] = (),
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.settings = settings or PromptSettings()
        s = self.settings
        if s.context == "class":
            names = list(dict.fromkeys(class_names))
            if not names or not all(isinstance(n, str) for n in names):
                raise ValueError("a class-specific context needs the class names it is learned for")
            self.class_names: tuple[str, ...] = tuple(names)
        else:
            self.class_names = ()
        if s.random_init:
            m = s.tokens or DEFAULT_RANDOM_TOKENS
            self.start, self.context_ids = locate_context(model, " ".join([_PLACEHOLDER] * m))
            if len(self.context_ids) != m:
                raise ValueError(
                    f"model {model.name!r}: its tokenizer does not split the placeholder "
                    f"{_PLACEHOLDER!r} into one token per context vector"
                )
        else:
            self.start, self.context_ids = locate_context(model, s.init)
            if s.tokens is not None and s.tokens != len(self.context_ids):
                raise ValueError(
                    f"init {s.init!r} is {len(self.context_ids)} tokens for model {model.name!r}, "
                    f"not tokens={s.tokens}: drop tokens (it follows from the text) or use a "
                    "random init"
                )
        self.ctx = nn.Parameter(self._initial_context(model, seed))
        self._layouts: dict[tuple[str, ...], dict[str, Tensor]] = {}

    @property
    def n_tokens(self) -> int:
        return len(self.context_ids)

    def _initial_context(self, model: ModelAdapter, seed: int) -> Tensor:
        with torch.no_grad():
            table = model.embed_text_tokens(self.context_ids).float().cpu()
        if self.settings.random_init:
            g = torch.Generator().manual_seed(int(seed))
            table = torch.randn(table.shape, generator=g) * self.settings.init_std
        if self.class_names:
            table = table.unsqueeze(0).repeat(len(self.class_names), 1, 1)
        return table.to(model.device)

    def tokens(self, model: ModelAdapter, class_names: Sequence[str]) -> dict[str, Tensor]:
        """Token ids (K, L) (and mask) of each class's prompt with the context's ids inserted."""
        key = tuple(class_names)
        if key not in self._layouts:
            template = self.settings.class_template
            enc = model.tokenize([template.format(name) for name in key])
            empty = _ids(model, "")
            length, start, m = empty.shape[0], self.start, self.n_tokens
            ids = enc["input_ids"].cpu()
            dropped = ids[:, length - m :]
            if not torch.equal(dropped, empty[length - m :].expand_as(dropped)):
                too_long = [n for n, row in zip(key, dropped, strict=True)
                            if not torch.equal(row, empty[length - m :])]
                raise ValueError(
                    f"model {model.name!r}: the prompts of {too_long[:3]} with {m} context "
                    f"tokens exceed its context length {length}; use fewer context tokens"
                )
            ctx_ids = self.context_ids.expand(len(key), m)
            layout = {"input_ids": torch.cat([ids[:, :start], ctx_ids, ids[:, start:-m]], dim=1)}
            mask = enc.get("attention_mask")
            if mask is not None:
                mask = mask.cpu()
                ones = torch.ones_like(ctx_ids)
                layout["attention_mask"] = torch.cat([mask[:, :start], ones, mask[:, start:-m]], 1)
            self._layouts[key] = layout
        return self._layouts[key]

    def context(self, class_names: Sequence[str]) -> Tensor:
        """The context of each class, (K, M, W)."""
        if not self.class_names:
            return self.ctx.unsqueeze(0).expand(len(class_names), -1, -1)
        rows = {n: i for i, n in enumerate(self.class_names)}
        unknown = [n for n in class_names if n not in rows]
        if unknown:
            raise ValueError(
                f"no learned context for classes {unknown}: this class-specific context was "
                f"learned for {list(self.class_names)}"
            )
        index = torch.tensor([rows[n] for n in class_names], device=self.ctx.device)
        return self.ctx.index_select(0, index)

    def text_features(self, model: ModelAdapter, class_names: Sequence[str]) -> Tensor:
        """Unit-norm class prototypes (K, D) float32 from the learned context."""
        if isinstance(class_names, str) or not class_names:
            raise ValueError("class_names must be a non-empty sequence of names")
        tokens = self.tokens(model, class_names)
        start, m = self.start, self.n_tokens
        with torch.no_grad():
            frozen = model.embed_text_tokens(tokens["input_ids"])
        ctx = self.context(class_names).to(device=frozen.device, dtype=frozen.dtype)
        embeddings = torch.cat([frozen[:, :start], ctx, frozen[:, start + m :]], dim=1)
        features = model.encode_text_from_embeddings(tokens, embeddings)
        return F.normalize(features.float(), dim=-1)

    def class_weights(self, model: ModelAdapter, class_names: Sequence[str]) -> Tensor:
        """The prototypes without gradient: what zero-shot scoring uses (``ClassHead``)."""
        with torch.no_grad():
            return self.text_features(model, class_names)

    def prompts(self, class_names: Sequence[str]) -> list[list[str]]:
        """What each class's prompt is, in words (recorded with results)."""
        s = self.settings
        origin = "random init" if s.random_init else f"init {s.init!r}"
        scope = "class-specific" if self.class_names else "shared"
        ctx = f"[{self.n_tokens} learned {scope} context tokens, {origin}]"
        return [[f"{ctx} {s.class_template.format(name)}"] for name in class_names]

    def describe(self) -> dict[str, Any]:
        """The config section this context is rebuilt from (with its weights)."""
        return {
            "settings": self.settings.to_dict(),
            "n_tokens": self.n_tokens,
            "start": self.start,
            "context_ids": self.context_ids.tolist(),
            "class_names": list(self.class_names),
            "shape": list(self.ctx.shape),
        }

    @classmethod
    def from_description(
        cls, model: ModelAdapter, description: Mapping[str, Any], ctx: Tensor
    ) -> PromptLearner:
        """Rebuild a saved context for ``model`` (whose tokenizer must place it the same way)."""
        settings = PromptSettings.from_dict(description["settings"])
        learner = cls(model, settings, class_names=description.get("class_names", ()))
        same = learner.start == description["start"] and (
            learner.context_ids.tolist() == list(description["context_ids"])
        )
        if not same:
            raise ValueError(
                f"model {model.name!r} tokenizes the context differently from the model it was "
                "learned with (another tokenizer?)"
            )
        if tuple(ctx.shape) != tuple(learner.ctx.shape):
            raise ValueError(
                f"saved context of shape {tuple(ctx.shape)} does not fit {tuple(learner.ctx.shape)}"
            )
        with torch.no_grad():
            learner.ctx.copy_(ctx.to(learner.ctx.device, learner.ctx.dtype))
        return learner
