"""Running each family's text tower from token embeddings (what prompt tuning feeds it)."""

from __future__ import annotations

import pytest
import torch

from medrobust.models import ModelAdapter, TextEmbeddingUnsupportedError

FAMILIES = (  # one model per text-tower kind
    "medrobust-mini",  # open_clip CLIP, its own text transformer
    "clip-vit-b16",  # open_clip CLIP (OpenAI architecture)
    "biomedclip",  # open_clip CustomTextCLIP with a Hugging Face BERT (PubMedBERT) tower
    "pubmedclip-vit-b32",  # transformers CLIPModel
    "medsiglip-448",  # transformers SiglipModel (no attention mask)
    "medclip-resnet50",  # MedCLIP's Bio_ClinicalBERT tower
)
TEXTS = ["a photo of a benign lesion.", "malignant", "normal breast tissue"]


@pytest.mark.parametrize("name", FAMILIES)
def test_own_embeddings_reproduce_encode_text(tiny_model, name: str) -> None:
    model = tiny_model(name)
    tokens = model.tokenize(TEXTS)
    with torch.no_grad():
        expected = model.encode_text(tokens)
        embeddings = model.embed_text_tokens(tokens["input_ids"])
        got = model.encode_text_from_embeddings(tokens, embeddings)
    assert embeddings.shape[:2] == tokens["input_ids"].shape
    assert torch.equal(got, expected)


@pytest.mark.parametrize("name", FAMILIES)
def test_gradient_reaches_the_embeddings_and_changes_the_output(tiny_model, name: str) -> None:
    model = tiny_model(name)
    tokens = model.tokenize(TEXTS)
    with torch.no_grad():
        base = model.embed_text_tokens(tokens["input_ids"])
        expected = model.encode_text(tokens)
    embeddings = base.clone().requires_grad_(True)
    model.encode_text_from_embeddings(tokens, embeddings).square().sum().backward()
    assert embeddings.grad is not None and embeddings.grad[:, 1].abs().sum() > 0
    shifted = base.clone()  # move the first real token of every text (not by a constant:
    g = torch.Generator().manual_seed(0)  # BERT's embedding LayerNorm would remove that)
    shifted[:, 1] += torch.randn(shifted[:, 1].shape, generator=g)
    with torch.no_grad():
        got = model.encode_text_from_embeddings(tokens, shifted)
    assert not torch.allclose(got, expected)


def test_shape_mismatch_is_refused(tiny_model) -> None:
    model = tiny_model("medrobust-mini")
    tokens = model.tokenize(TEXTS)
    embeddings = model.embed_text_tokens(tokens["input_ids"])[:, :-1]
    with pytest.raises(ValueError, match="do not match the token embeddings"):
        model.encode_text_from_embeddings(tokens, embeddings)


class _NoLookup(ModelAdapter):
    """A family that never says where its token embeddings are."""

    family = "opaque"

    @property
    def logit_scale(self) -> float:
        return 1.0

    @property
    def vision_module(self) -> torch.nn.Module:
        return self.model

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.flatten(1)

    def encode_text(self, tokens) -> torch.Tensor:
        return tokens["input_ids"].float()


def test_family_without_a_lookup_names_the_model(tiny_model) -> None:
    base = tiny_model("medrobust-mini")
    model = _NoLookup(base.model, info=base.info, preprocess=base.preprocess,
                      tokenizer=base.tokenizer, spec=base.spec)
    with pytest.raises(TextEmbeddingUnsupportedError, match=r"'medrobust-mini' .*family opaque"):
        model.embed_text_tokens(torch.zeros(1, 4, dtype=torch.long))


def test_tower_that_skips_the_lookup_is_refused(tiny_model) -> None:
    base = tiny_model("medrobust-mini")

    class _Bypass(_NoLookup):
        @property
        def text_token_embedding(self) -> torch.nn.Embedding:
            return base.text_token_embedding  # never called by this encode_text

    model = _Bypass(base.model, info=base.info, preprocess=base.preprocess,
                    tokenizer=base.tokenizer, spec=base.spec)
    tokens = model.tokenize(TEXTS)
    with pytest.raises(TextEmbeddingUnsupportedError, match="0 times"):
        model.encode_text_from_embeddings(tokens, torch.zeros(3, 32, 32))
