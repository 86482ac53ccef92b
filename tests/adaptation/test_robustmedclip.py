"""Import of official RobustMedCLIP LoRA files, checked against the official forward rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from medrobust.adaptation import (
    ADAPTER_CONFIG,
    convert_robustmedclip,
    load_adapted_model,
    read_robustmedclip_lora,
)
from medrobust.models import WeightsMismatchError, create_model

TINY = {"pretrained": False, "tiny": True}
RANK = 2


def _official_file(path: Path, model, blocks, *, seed: int = 0, fc: bool = True) -> dict:
    """Write LoRA weights as the official LoRA_ViT_timm saves them: per adapted block, a q pair
    then a v pair; w_a_XXX (r, dim), w_b_XXX (dim, r); plus the frozen visual projection."""
    g = torch.Generator().manual_seed(seed)
    dim = model.vision_module.trunk.embed_dim
    tensors = {}
    for j, _ in enumerate(blocks):
        for branch in (0, 1):  # q, v
            i = 2 * j + branch
            tensors[f"w_a_{i:03d}"] = torch.randn(RANK, dim, generator=g) * 0.3
            tensors[f"w_b_{i:03d}"] = torch.randn(dim, RANK, generator=g) * 0.3
    if fc:
        proj = model.vision_module.head.proj.weight
        tensors[f"fc_{proj.shape[1]}in_{proj.shape[0]}out"] = proj.detach().clone()
    save_file(tensors, str(path))
    return tensors


def _official_forward(model, tensors: dict, blocks, pixels: torch.Tensor) -> torch.Tensor:
    """The official _LoRA_qkv_timm rule, as forward hooks: qkv[..., :dim] += B_q A_q x and
    qkv[..., -dim:] += B_v A_v x (no scaling; k unchanged)."""
    hooks = []
    for j, block in enumerate(blocks):
        a_q, b_q = tensors[f"w_a_{2 * j:03d}"], tensors[f"w_b_{2 * j:03d}"]
        a_v, b_v = tensors[f"w_a_{2 * j + 1:03d}"], tensors[f"w_b_{2 * j + 1:03d}"]

        def hook(module, inputs, output, a_q=a_q, b_q=b_q, a_v=a_v, b_v=b_v):
            x, dim = inputs[0], a_q.shape[1]
            output = output.clone()
            output[..., :dim] += x @ a_q.T @ b_q.T
            output[..., -dim:] += x @ a_v.T @ b_v.T
            return output

        hooks.append(model.vision_module.trunk.blocks[block].attn.qkv.register_forward_hook(hook))
    try:
        with torch.no_grad():
            return model.encode_image(pixels)
    finally:
        for h in hooks:
            h.remove()


def _pixels(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return model.preprocess(torch.randint(0, 256, (4, 3, 28, 28), dtype=torch.uint8, generator=g))


def test_import_reproduces_the_official_model(tmp_path: Path) -> None:
    base = create_model("biomedclip", **TINY)
    blocks = list(range(len(base.vision_module.trunk.blocks)))
    tensors = _official_file(tmp_path / "lora_weights.safetensors", base, blocks)
    folder = convert_robustmedclip(tmp_path / "lora_weights.safetensors", tmp_path / "rmc",
                                   model_kwargs=TINY)
    pixels = _pixels(base)
    expected = _official_forward(base, tensors, blocks, pixels)
    model = load_adapted_model(folder)
    with torch.no_grad():
        got = model.encode_image(pixels)
        plain = base.encode_image(pixels)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(plain, expected, atol=1e-3)  # the adapter matters
    merged = load_adapted_model(folder, merge=True)
    with torch.no_grad():
        torch.testing.assert_close(merged.encode_image(pixels), expected, rtol=1e-5, atol=1e-5)
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    assert config["lora"]["rank"] == 2 * RANK and config["lora"]["scaling"] == 1.0
    assert config["source"]["kind"] == "robustmedclip" and config["source"]["blocks"] == blocks
    assert model.name == "biomedclip+lora:rmc"


def test_subset_of_blocks_needs_their_indices(tmp_path: Path) -> None:
    base = create_model("biomedclip", **TINY)
    tensors = _official_file(tmp_path / "f.safetensors", base, [3], fc=False)
    with pytest.raises(ValueError, match=r"adapts 1 blocks but .* has 6: pass blocks="):
        convert_robustmedclip(tmp_path / "f.safetensors", tmp_path / "x", model_kwargs=TINY)
    folder = convert_robustmedclip(tmp_path / "f.safetensors", tmp_path / "y", model_kwargs=TINY,
                                   blocks=[3])
    pixels = _pixels(base)
    with torch.no_grad():
        got = load_adapted_model(folder).encode_image(pixels)
    torch.testing.assert_close(got, _official_forward(base, tensors, [3], pixels),
                               rtol=1e-5, atol=1e-6)


def test_reader_validates_the_format(tmp_path: Path) -> None:
    base = create_model("biomedclip", **TINY)
    good = _official_file(tmp_path / "good.safetensors", base, range(6))
    lora = read_robustmedclip_lora(tmp_path / "good.safetensors")
    assert (lora.blocks, lora.rank, lora.dim) == (6, RANK, 64) and lora.projection is not None

    def write(name: str, tensors: dict) -> Path:
        save_file(tensors, str(tmp_path / name))
        return tmp_path / name

    odd = {k: v for k, v in good.items() if k not in ("w_a_011", "w_b_011")}
    with pytest.raises(ValueError, match="q and v per block"):
        read_robustmedclip_lora(write("odd.safetensors", odd))
    gap = {k: v for k, v in good.items() if k not in ("w_a_004", "w_b_004")}
    with pytest.raises(ValueError, match="without gaps"):
        read_robustmedclip_lora(write("gap.safetensors", gap))
    with pytest.raises(ValueError, match="unexpected key 'w_k_000'"):
        extra = {**good, "w_k_000": good["w_a_000"].clone()}
        read_robustmedclip_lora(write("extra.safetensors", extra))
    shape = {**good, "w_b_003": torch.zeros(64, RANK + 1)}
    with pytest.raises(ValueError, match="pair 3 has"):
        read_robustmedclip_lora(write("shape.safetensors", shape))
    fc_key = next(k for k in good if k.startswith("fc_"))
    wrong_fc = {**good, fc_key: good[fc_key] + 1.0}
    with pytest.raises(WeightsMismatchError, match="visual projection differs"):
        convert_robustmedclip(write("fc.safetensors", wrong_fc), tmp_path / "z", model_kwargs=TINY)
    with pytest.raises(ValueError, match="fit BiomedCLIP's timm ViT"):
        convert_robustmedclip(tmp_path / "good.safetensors", tmp_path / "w",
                              base_model="clip-vit-b16", model_kwargs=TINY, blocks=range(6))
