"""LoRA through peft: exact at initialisation, live, options used, inert targets refused."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

from medrobust.adaptation import InertTargetError, LoraSettings, LoraTrainer, apply_lora, merge_lora
from medrobust.adaptation.lora import (
    has_lora,
    lora_parameters,
    lora_state_dict,
    set_lora_training,
)

FAMILIES = {  # registry name -> expected default targets (regex over full module names)
    "clip-vit-b16": r"transformer\.resblocks\.\d+\.attn",  # open_clip ViT, nn.MultiheadAttention
    "biomedclip": r"trunk\.blocks\.\d+\.attn\.qkv",  # timm ViT
    "clip-rn50": r"layer[1-4]\.\d+\.conv[123]",  # open_clip ModifiedResNet, Conv2d
    "pubmedclip-vit-b32": r"encoder\.layers\.\d+\.self_attn\.[qkv]_proj",  # transformers CLIP
    "medclip-resnet50": r"model\.layer[1-4]\.\d+\.conv[123]",  # torchvision ResNet
    "medsiglip-448": r"encoder\.layers\.\d+\.self_attn\.[qkv]_proj",  # transformers SigLIP
}


def _random_head(classes: int = 2, dim: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.nn.functional.normalize(torch.randn(classes, dim, generator=g), dim=-1)


def _pixels(model, n: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return model.preprocess(torch.randint(0, 256, (n, 3, 28, 28), dtype=torch.uint8, generator=g))


def _embed(model, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.encode_image(pixels)


def _randomise_b(model, seed: int = 0, std: float = 0.2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in lora_parameters(model):
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_init_is_exact_and_adapter_is_live(tiny, name: str) -> None:
    model = tiny(name)
    pixels = _pixels(model)
    model.requires_grad_(False)  # frozen base (MultiheadAttention picks its path by requires_grad)
    base = _embed(model, pixels)
    layers = (nn.Linear, nn.Conv2d, nn.MultiheadAttention)
    expected = [n for n, m in model.vision_module.named_modules()
                if isinstance(m, layers) and re.fullmatch(FAMILIES[name], n)]
    modules = apply_lora(model, LoraSettings(rank=4))
    assert modules == expected and len(modules) >= 2
    assert torch.equal(_embed(model, pixels), base)  # B = 0: bit-identical
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for _, p in lora_parameters(model)}  # text tower frozen too
    per_module = 4 if name == "clip-vit-b16" else 2  # MHA: in_proj and out_proj A and B
    assert len(trainable) == per_module * len(modules)
    _randomise_b(model)
    assert not torch.allclose(_embed(model, pixels), base, atol=1e-4)


@pytest.mark.parametrize("name", ["clip-vit-b16", "biomedclip", "clip-rn50", "pubmedclip-vit-b32"])
def test_merge_keeps_outputs(tiny, name: str) -> None:
    model = tiny(name)
    base_keys = set(model.state_dict())
    apply_lora(model, LoraSettings(rank=4, alpha=8))
    _randomise_b(model)
    pixels = _pixels(model)
    adapted = _embed(model, pixels)
    merge_lora(model)
    assert not has_lora(model) and set(model.state_dict()) == base_keys
    torch.testing.assert_close(_embed(model, pixels), adapted, rtol=1e-5, atol=1e-5)
    model.check_eval()


def test_multihead_attention_base_weights_never_drift(tiny) -> None:
    """peft's own MHA layer adds then subtracts BA around each call; ours leaves W untouched."""
    model = tiny("clip-vit-b16")
    apply_lora(model, LoraSettings(rank=4))
    _randomise_b(model, std=1.0)
    mha = model.vision_module.transformer.resblocks[0].attn.get_base_layer()
    out_weight = mha.out_proj.get_base_layer().weight
    before = mha.in_proj_weight.detach().clone(), out_weight.detach().clone()
    pixels = _pixels(model)
    first = _embed(model, pixels)
    for _ in range(10):
        _embed(model, pixels)
    after = mha.in_proj_weight, mha.out_proj.get_base_layer().weight
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert torch.equal(_embed(model, pixels), first)
    # the textbook LoRA on a plain copy: W_in + s B A and W_out + s B A, each added once
    layer = model.vision_module.transformer.resblocks[0].attn
    reference = copy.deepcopy(mha)
    reference.out_proj = copy.deepcopy(mha.out_proj.get_base_layer())
    with torch.no_grad():
        reference.in_proj_weight += layer.get_delta_weight("default")
        reference.out_proj.weight += mha.out_proj.get_delta_weight("default")
        x = torch.randn(5, 2, 64)
        torch.testing.assert_close(layer(x, x, x)[0], reference(x, x, x)[0])
    # gradients reach both the in_proj and the out_proj LoRA of the attention layer
    out = model.encode_image(pixels).sum()
    out.backward()
    grads = {n: p.grad for n, p in lora_parameters(model) if "resblocks.0" in n}
    assert len(grads) == 4 and all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_rank_alpha_targets_are_used(tiny) -> None:
    model = tiny("biomedclip")
    apply_lora(model, LoraSettings(rank=3, alpha=6))
    state = lora_state_dict(model)
    a = state["trunk.blocks.0.attn.qkv.lora_A.weight"]
    assert a.shape == (3, 64) and state["trunk.blocks.0.attn.qkv.lora_B.weight"].shape == (192, 3)
    # alpha scales the update: same A and B, alpha 6 gives twice the update of alpha 3
    _randomise_b(model)
    layer = model.vision_module.trunk.blocks[0].attn.qkv
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        delta6 = layer(x) - layer.get_base_layer()(x)
    other = tiny("biomedclip")
    apply_lora(other, LoraSettings(rank=3, alpha=3))
    with torch.no_grad():
        for (_, p), (_, q) in zip(lora_parameters(other), lora_parameters(model), strict=True):
            p.copy_(q)
        layer3 = other.vision_module.trunk.blocks[0].attn.qkv
        delta3 = layer3(x) - layer3.get_base_layer()(x)
    torch.testing.assert_close(delta6, 2 * delta3)
    assert delta3.abs().max() > 0
    # targets: the 'attention+mlp' preset adapts the MLPs as well, and they are live
    wide = tiny("biomedclip")
    modules = apply_lora(wide, LoraSettings(rank=2, targets="attention+mlp"))
    assert {m.rsplit(".", 1)[-1] for m in modules} == {"qkv", "proj", "fc1", "fc2"}
    assert "trunk.patch_embed.proj" not in modules  # a bare 'proj' would have hit it


def test_dropout_is_used_in_training_only(tiny) -> None:
    model = tiny("biomedclip")
    apply_lora(model, LoraSettings(rank=4, dropout=0.5))
    _randomise_b(model)
    pixels = _pixels(model)
    set_lora_training(model, True)
    assert not torch.equal(_embed(model, pixels), _embed(model, pixels))  # dropout draws differ
    set_lora_training(model, False)
    model.check_eval()
    assert torch.equal(_embed(model, pixels), _embed(model, pixels))
    no_drop = tiny("biomedclip")
    apply_lora(no_drop, LoraSettings(rank=4, dropout=0.0))
    _randomise_b(no_drop)
    set_lora_training(no_drop, True)
    assert torch.equal(_embed(no_drop, pixels), _embed(no_drop, pixels))


def test_seeded_initialisation_leaves_global_rng_alone(tiny) -> None:
    a, b, c = tiny("biomedclip"), tiny("biomedclip"), tiny("biomedclip")
    state = torch.random.get_rng_state()
    apply_lora(a, LoraSettings(rank=2), seed=5)
    apply_lora(b, LoraSettings(rank=2), seed=5)
    apply_lora(c, LoraSettings(rank=2), seed=6)
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb, sc = lora_state_dict(a), lora_state_dict(b), lora_state_dict(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    key = "trunk.blocks.0.attn.qkv.lora_A.weight"
    assert not torch.equal(sa[key], sc[key])


def test_only_adapter_parameters_change_in_a_step(tiny, breast_batch) -> None:
    model = tiny("clip-vit-b16")
    apply_lora(model, LoraSettings(rank=4))
    heads = [_random_head()]
    trainer = LoraTrainer(model, heads, lr=1e-2, weight_decay=1e-4, total_steps=10, warmup_steps=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels = breast_batch
    trainer.train_step(images[:16], labels[:16], 0)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".lora_" in k for k in changed)
    assert any(".lora_B." in k for k in changed)
    assert trainer.steps == 1


@pytest.mark.parametrize(
    ("settings", "error", "match"),
    [
        ({"rank": 0}, ValueError, "rank must be a positive int"),
        ({"rank": -2}, ValueError, "rank must be a positive int"),
        ({"rank": 2.0}, ValueError, "rank must be a positive int"),
        ({"rank": True}, ValueError, "rank must be a positive int"),
        ({"alpha": 0}, ValueError, "alpha must be a positive"),
        ({"alpha": "8"}, TypeError, "alpha must be a number"),
        ({"dropout": 1.0}, ValueError, r"dropout must lie in \[0, 1\)"),
        ({"dropout": -0.1}, ValueError, r"dropout must lie in \[0, 1\)"),
        ({"targets": []}, TypeError, "targets must be"),
        ({"targets": ""}, ValueError, "empty"),
    ],
)
def test_bad_settings(settings: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        LoraSettings(**settings)


@pytest.mark.parametrize(
    ("name", "targets", "error", "match"),
    [
        ("clip-vit-b16", ("nonexistent",), ValueError, "unknown LoRA target 'nonexistent'"),
        ("clip-vit-b16", r"transformer\.blocks\.\d+", ValueError, "matches no module"),
        ("clip-vit-b16", "conv", ValueError, "preset 'conv' does not apply"),
        ("clip-vit-b16", "(", ValueError, "not a valid regular expression"),
        ("clip-vit-b16", r"transformer\.resblocks\.0", ValueError, "is a ResidualAttentionBlock"),
        ("clip-vit-b16", ("out_proj",), InertTargetError, "uses its out_proj weight directly"),
        ("clip-rn50", r"attnpool\.[qkv]_proj", InertTargetError, "attention pool"),
    ],
)
def test_bad_targets(tiny, name: str, targets, error: type, match: str) -> None:
    model = tiny(name)
    with pytest.raises(error, match=match):
        apply_lora(model, LoraSettings(rank=2, targets=targets))


def test_inert_layers_found_by_the_probe(tiny) -> None:
    # A layer whose output is discarded: its LoRA never reaches the embedding.
    model = tiny("biomedclip")
    model.vision_module.trunk.blocks[0].attn.unused = nn.Linear(64, 64)
    with pytest.raises(InertTargetError, match="never reach the output"):
        apply_lora(model, LoraSettings(rank=2, targets=("unused", "qkv")))
    # A randomly initialised open_clip ResNet (zero BatchNorm scales ending each block).
    from medrobust.models import create_model

    rn = create_model("clip-rn50", pretrained=False, tiny=True)
    with pytest.raises(InertTargetError, match="frozen zero weights"):
        apply_lora(rn, LoraSettings(rank=2))


def test_dropout_refused_for_multihead_attention_and_double_injection(tiny) -> None:
    model = tiny("clip-vit-b16")
    with pytest.raises(ValueError, match=r"cannot apply to nn\.MultiheadAttention"):
        apply_lora(model, LoraSettings(rank=2, dropout=0.1))
    apply_lora(model, LoraSettings(rank=2))
    with pytest.raises(ValueError, match="already holds LoRA layers"):
        apply_lora(model, LoraSettings(rank=2))
