"""Fused attention / QuickGELU and torch.compile: the same predictions as the plain forward on
every model family, the same state-dict keys, and LoRA working on the fused path."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medrobust.models import ModelAdapter, create_model
from medrobust.models import kernels as kernels_module
from medrobust.models.kernels import (
    EngineSettings,
    FusedMultiheadAttention,
    FusedQuickGELU,
    compile_image_encoder,
    fuse_model,
    prepare_for_inference,
    resolve_kernels,
)

# registry name -> what fusing must swap in its tiny vision tower (substrings of the report)
FAMILIES = {
    "clip-vit-b16": ["nn.MultiheadAttention -> FusedMultiheadAttention", "QuickGELU -> Fused"],
    "unimedclip-vit-b16": ["nn.MultiheadAttention -> FusedMultiheadAttention", "QuickGELU -> Fused"],
    "medrobust-mini": ["nn.MultiheadAttention -> FusedMultiheadAttention"],
    "quiltnet-b32": ["nn.MultiheadAttention -> FusedMultiheadAttention"],
    "biomedclip": ["timm Attention: fused_attn"],
    "clip-rn50": [],  # ModifiedResNet: convolutions and an attention pool (SDPA already)
    "pubmedclip-vit-b32": ["transformers attention: sdpa", "QuickGELU -> Fused"],
    "plip": ["transformers attention: sdpa", "QuickGELU -> Fused"],
    "medsiglip-448": ["transformers attention: sdpa", "SiglipMultiheadAttentionPoolingHead left"],
    "medclip-resnet50": [],
    "medclip-swin": [],
}
N_IMAGES = 256
CLASSES = 10


def _build(name: str) -> ModelAdapter:
    return create_model(name, pretrained=False, tiny=True)


def _pixels(model: ModelAdapter, n: int = N_IMAGES, seed: int = 0) -> torch.Tensor:
    """Varied images (random low-frequency colour fields plus noise), preprocessed: pure noise
    images all look alike to a random tiny model, leaving its top-1 margins at rounding level."""
    g = torch.Generator().manual_seed(seed)
    size = model.preprocess.size
    low = torch.rand(n, 3, 4, 4, generator=g) * 255
    images = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    images = images + torch.randn(n, 3, size, size, generator=g) * 20
    return model.preprocess(images.clamp(0, 255).to(torch.uint8))


def _logits(model: ModelAdapter, pixels: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """100 * cosine against fixed random class directions (a zero-shot head without text)."""
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        features = F.normalize(model.encode_image(pixels).float(), dim=-1)
    g = torch.Generator().manual_seed(1)
    head = F.normalize(torch.randn(CLASSES, features.shape[1], generator=g), dim=-1)
    return 100.0 * features @ head.T


def assert_agree(plain: ModelAdapter, other: ModelAdapter, pixels: torch.Tensor) -> None:
    """fp32: top-1 agreement >= 99.9 % and logits within 1e-3. bf16 autocast: ``other`` is no
    further from plain bf16 than bf16 rounding itself moves plain (``noise``, plain bf16 vs plain
    fp32), and agrees >= 99.9 % on the images whose fp32 top-1 margin exceeds twice that noise
    (at least half of them; below it bf16 alone flips predictions)."""
    a, b = _logits(plain, pixels, None), _logits(other, pixels, None)
    assert (a.argmax(1) == b.argmax(1)).float().mean().item() >= 0.999
    assert (a - b).abs().max().item() <= 1e-3
    a16, b16 = _logits(plain, pixels, torch.bfloat16), _logits(other, pixels, torch.bfloat16)
    noise = (a16 - a).abs().max().item()
    assert (b16 - a16).abs().max().item() <= 1.5 * noise + 0.05, ((b16 - a16).abs().max(), noise)
    top = a.topk(2, dim=1).values
    decided = top[:, 0] - top[:, 1] > 2 * noise
    assert decided.float().mean().item() >= 0.5
    agreement = (a16.argmax(1) == b16.argmax(1))[decided].float().mean().item()
    assert agreement >= 0.999, agreement


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_fused_agrees_with_plain(name: str) -> None:
    plain, fused = _build(name), _build(name)
    keys = list(fused.state_dict())
    swapped = fuse_model(fused.vision_module)
    for expected in FAMILIES[name]:
        assert any(expected in s for s in swapped), (expected, swapped)
    assert list(fused.state_dict()) == keys
    fused.check_eval()  # swapped-in modules keep eval mode
    assert_agree(plain, fused, _pixels(plain))


@pytest.mark.parametrize("name", ["plip", "medsiglip-448"])
def test_eager_transformers_attention_becomes_sdpa(name: str) -> None:
    plain, fused = _build(name), _build(name)
    for model in (plain, fused):
        model.vision_module.config._attn_implementation = "eager"
    assert "1 x transformers attention: eager -> sdpa" in fuse_model(fused.vision_module)
    assert fused.vision_module.config._attn_implementation == "sdpa"
    assert_agree(plain, fused, _pixels(plain, 64))


def test_open_clip_sdpa_attention_is_left_as_is() -> None:
    """open_clip's own Attention (raw q/k/v parameters, the newer layout) already calls
    scaled_dot_product_attention: reported, not swapped; its QuickGELU is still fused."""
    from open_clip.transformer import Attention, CustomTransformer, QuickGELU

    torch.manual_seed(0)
    tower = CustomTransformer(32, 2, 4, act_layer=QuickGELU).eval()
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        expected = tower(x)
        swapped = fuse_model(tower)
        torch.testing.assert_close(tower(x), expected)
    assert "2 x open_clip Attention (scaled_dot_product_attention already)" in swapped
    assert sum(isinstance(m, Attention) for m in tower.modules()) == 2


def test_fused_path_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under autocast and with gradients (where nn.MultiheadAttention takes its slow path) the
    fused module never calls the parent forward, and it feeds scaled_dot_product_attention."""
    model = _build("clip-vit-b16")
    fuse_model(model.vision_module)
    assert all(type(m) is not nn.MultiheadAttention for m in model.vision_module.modules())
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("fell back to nn.MultiheadAttention.forward")

    monkeypatch.setattr(nn.MultiheadAttention, "forward", refuse)
    pixels = _pixels(model, 4).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.encode_image(pixels).float().sum().backward()
    assert len(calls) == 2 and pixels.grad is not None


@pytest.mark.parametrize("batch_first", [True, False])
def test_fused_attention_masks_and_pooling(batch_first: bool) -> None:
    """Masks (bool, float, per head, key padding), seq-first input and key-is-value pooling give
    nn.MultiheadAttention's result."""
    torch.manual_seed(0)
    plain = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    fused = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    fused.load_state_dict(plain.state_dict())
    fused.__class__ = FusedMultiheadAttention
    x, probe = torch.randn(3, 5, 16), torch.randn(3, 2, 16)
    if not batch_first:
        x, probe = x.transpose(0, 1), probe.transpose(0, 1)
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    padding = torch.zeros(3, 5, dtype=torch.bool)
    padding[0, -2:] = True
    cases = [
        dict(attn_mask=causal), dict(attn_mask=causal.float().masked_fill(causal, -1e4)),
        dict(attn_mask=torch.randn(12, 5, 5)), dict(key_padding_mask=padding),
        dict(attn_mask=causal, key_padding_mask=padding), dict(attn_mask=causal, is_causal=True),
    ]
    with torch.no_grad():
        for kwargs in cases:
            expected = plain(x, x, x, need_weights=False, **kwargs)[0]
            torch.testing.assert_close(fused(x, x, x, need_weights=False, **kwargs)[0], expected)
        expected = plain(probe, x, x, need_weights=False)[0]
        torch.testing.assert_close(fused(probe, x, x, need_weights=False)[0], expected)
        _out, weights = fused(x, x, x)  # attention weights asked for: the parent's path
        assert weights is not None


def test_fused_quick_gelu_is_exact_within_rounding() -> None:
    model = _build("clip-vit-b16")
    fuse_model(model.vision_module)
    gelu = next(m for m in model.vision_module.modules() if isinstance(m, FusedQuickGELU))
    x = torch.linspace(-8, 8, 4097)
    torch.testing.assert_close(gelu(x), x * torch.sigmoid(1.702 * x))
    xb = x.bfloat16()
    torch.testing.assert_close(gelu(xb).float(), (x * torch.sigmoid(1.702 * x)), rtol=8e-3, atol=8e-3)


def test_no_compiler_leaves_quick_gelu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the one-kernel QuickGELU cannot be built, the activation stays and says why."""

    def fail(*args: object, **kwargs: object) -> Callable[..., None]:
        def run(*a: object, **k: object) -> None:
            raise RuntimeError("no working C++ compiler found")
        return run

    monkeypatch.setattr(kernels_module, "_quick_gelu_kernels", {})
    monkeypatch.setattr(torch, "compile", fail)
    model = _build("clip-vit-b16")
    swapped = fuse_model(model.vision_module)
    assert any("QuickGELU left as is" in s and "C++ compiler" in s for s in swapped), swapped
    assert not any(isinstance(m, FusedQuickGELU) for m in model.modules())


def test_auto_means_fused_on_cuda_or_under_autocast() -> None:
    assert resolve_kernels("auto", "cpu") == "plain"
    assert resolve_kernels("auto", "cpu", autocast=True) == "fused"
    assert resolve_kernels("auto", "cuda:1") == "fused"
    assert resolve_kernels("fused", "cpu") == "fused"
    assert resolve_kernels("plain", "cuda") == "plain"
    with pytest.raises(ValueError, match="kernels must be one of auto, fused, plain"):
        resolve_kernels("fast", "cpu")
    with pytest.raises(ValueError, match="kernels must be one of"):
        EngineSettings("fast")


def test_compile_failure_falls_back(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    model = _build("medrobust-mini")
    pixels = _pixels(model, 8)
    expected = _logits(model, pixels, None)

    def broken(module_call: Callable[..., object], *args: object, **kwargs: object) -> Callable[..., None]:
        def run(*a: object, **k: object) -> None:
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    with caplog.at_level(logging.WARNING, logger="medrobust.models.kernels"):
        record = prepare_for_inference(model, EngineSettings("plain", compile=True), batch_size=8,
                                       autocast_dtype=None)
    assert record.compile.startswith("not compiled (RuntimeError: InvalidCxxCompiler")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "running without it" in warnings[0]
    torch.testing.assert_close(_logits(model, pixels, None), expected)
    assert compile_image_encoder.__name__  # the public entry point exists


# --- LoRA on the fused path -------------------------------------------------------------


def _randomise_lora(model: ModelAdapter) -> None:
    from medrobust.adaptation.lora import lora_parameters

    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.mark.parametrize("fuse_first", [True, False])
def test_plain_adapter_loads_into_fused_model(fuse_first: bool) -> None:
    """An adapter trained on the plain model gives the same logits on the fused one, whether
    the model is fused before LoRA is injected or after (eval loads adapters, then fuses)."""
    from medrobust.adaptation import LoraSettings, apply_lora
    from medrobust.adaptation.lora import load_lora_state_dict, lora_state_dict

    plain = _build("clip-vit-b16")
    names = apply_lora(plain, LoraSettings(rank=4))
    _randomise_lora(plain)
    state = lora_state_dict(plain)
    fused = _build("clip-vit-b16")
    if fuse_first:
        fuse_model(fused.vision_module)
    assert apply_lora(fused, LoraSettings(rank=4)) == names  # peft detects the same targets
    load_lora_state_dict(fused, state)
    if not fuse_first:
        assert any("FusedMultiheadAttention" in s for s in fuse_model(fused.vision_module))
    assert lora_state_dict(fused).keys() == state.keys()
    assert_agree(plain, fused, _pixels(plain))


def test_lora_trains_on_fused_path() -> None:
    from medrobust.adaptation import LoraSettings, apply_lora
    from medrobust.adaptation.lora import lora_parameters, verify_lora_effective

    model = _build("clip-vit-b16")
    fuse_model(model.vision_module)
    apply_lora(model, LoraSettings(rank=4))  # verifies every layer reaches the output
    verify_lora_effective(model)
    params = lora_parameters(model)
    before = {n: p.detach().clone() for n, p in params}
    optimiser = torch.optim.SGD([p for _, p in params], lr=0.1)
    pixels = _pixels(model, 8)
    for _ in range(2):  # B starts at 0: the first step moves B, the second A too
        optimiser.zero_grad()
        model.encode_image(pixels).pow(2).mean().backward()
        optimiser.step()
    changed = {n for n, p in params if not torch.equal(p, before[n])}
    assert changed == set(before), sorted(set(before) - changed)


def test_unmerged_lora_is_not_compiled(caplog: pytest.LogCaptureFixture) -> None:
    """An unmerged LoRA layer swaps weight attributes per call, which torch.compile cannot
    trace: such a tower runs uncompiled (fused kernels still apply), with one warning."""
    from medrobust.adaptation import LoraSettings, apply_lora

    model = _build("medrobust-mini")
    apply_lora(model, LoraSettings(rank=4))
    with caplog.at_level(logging.WARNING, logger="medrobust.models.kernels"):
        record = prepare_for_inference(model, EngineSettings("fused", compile=True), batch_size=4,
                                       autocast_dtype=None)
    assert record.compile.startswith("not compiled (unmerged LoRA layers, e.g. transformer.")
    assert record.swapped == ["1 x nn.MultiheadAttention -> FusedMultiheadAttention"]
    assert getattr(model.vision_module, "_compiled_call_impl", None) is None
    assert len(caplog.records) == 1 and "merge them to compile" in caplog.records[0].getMessage()
