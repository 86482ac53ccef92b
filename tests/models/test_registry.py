"""create_model: every family builds offline, loads weights strictly, saves and reloads."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from medrobust.models import (
    ModelAdapter,
    WeightsMismatchError,
    WeightsUnavailableError,
    create_model,
    list_models,
    model_spec,
    save_model,
)
from medrobust.models.weights import host_reachable

REGISTRY = [
    "biomedclip",
    "clip-rn50",
    "clip-vit-b16",
    "medclip-resnet50",
    "medclip-swin",
    "medsiglip-448",
    "plip",
    "pubmedclip-vit-b32",
    "quiltnet-b32",
    "unimedclip-vit-b16",
]
PROMPTS = ["a medical image of pneumonia", "normal", "a histopathology image of tumor tissue"]


def _images(n: int = 2, channels: int = 3, h: int = 40, w: int = 52, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, h, w), dtype=torch.uint8, generator=gen)


def _encode(model: ModelAdapter) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        image = model.encode_image(model.preprocess(_images()))
        text = model.encode_text(model.tokenize(PROMPTS))
    return image, text


def test_list_models_has_every_registry_name() -> None:
    assert set(REGISTRY) <= set(list_models())


@pytest.mark.parametrize("name", REGISTRY)
def test_tiny_build_encodes_with_consistent_shapes(
    name: str, tiny_model: Callable[[str], ModelAdapter]
) -> None:
    model = tiny_model(name)
    pixels = model.preprocess(_images())
    size = model.preprocess.size
    assert pixels.shape == (2, 3, size, size)
    image, text = _encode(model)
    assert image.ndim == 2 and image.shape[0] == 2
    assert text.shape == (len(PROMPTS), image.shape[1])
    assert torch.isfinite(image).all() and torch.isfinite(text).all()
    tokens = model.tokenize(PROMPTS)
    assert tokens["input_ids"].shape == (len(PROMPTS), model.context_length)
    assert not model.training and not any(m.training for m in model.modules())
    assert any(m is model.vision_module for m in model.model.modules())
    assert model.weights_hash == "random-init"
    assert model.logit_scale > 0 and model.licence and model.default_templates


@pytest.mark.parametrize("name", REGISTRY)
def test_builds_are_deterministic_and_seeded(
    name: str, tiny_model: Callable[[str], ModelAdapter]
) -> None:
    a = tiny_model(name)
    state = torch.random.get_rng_state()
    b = create_model(name, pretrained=False, tiny=True)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    for x, y in zip(_encode(a), _encode(b), strict=True):
        assert torch.equal(x, y)
    image_a, _ = _encode(a)
    assert torch.equal(image_a, _encode(a)[0])  # eval mode: no dropout
    other = create_model(name, pretrained=False, tiny=True, seed=1)
    assert not torch.equal(image_a, _encode(other)[0])


def test_families_use_the_published_architectures(
    tiny_model: Callable[[str], ModelAdapter],
) -> None:
    from open_clip.model import CLIP, CustomTextCLIP
    from transformers import CLIPModel, SiglipModel

    assert isinstance(tiny_model("clip-vit-b16").model, CLIP)
    biomed = tiny_model("biomedclip").model
    assert isinstance(biomed, CustomTextCLIP)
    assert any(n.endswith("attn.qkv") for n, _ in biomed.visual.named_modules())  # timm ViT
    assert isinstance(tiny_model("plip").model, CLIPModel)
    siglip = tiny_model("medsiglip-448")
    assert isinstance(siglip.model, SiglipModel) and siglip.score_fn == "sigmoid"
    assert siglip.logit_bias is not None
    assert tiny_model("clip-vit-b16").score_fn == "softmax"
    medclip = tiny_model("medclip-resnet50")
    keys = medclip.model.state_dict().keys()
    assert "vision_model.model.fc.weight" in keys and "text_model.projection_head.weight" in keys
    assert "MedCLIP" in medclip.info.notes or "random" in medclip.info.notes


def test_medclip_flags_its_weights() -> None:
    notes = model_spec("medclip-resnet50")["notes"]
    assert "random" in notes


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ValueError) as err:
        create_model("no-such-model", pretrained=False)
    for name in REGISTRY:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        create_model("open_clip:No-Such-Arch", pretrained=False)


@pytest.mark.parametrize("name", REGISTRY)
def test_pretrained_offline_fails_fast_with_a_clear_message(name: str, tmp_path: Path) -> None:
    spec = model_spec(name)["weights"]
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as err:
        create_model(name, cache_dir=tmp_path)
    assert time.monotonic() - start < 5.0
    message = str(err.value)
    assert name in message
    where = spec.get("repo") or spec.get("url") or spec["homepage"]
    assert where.split(" ")[0] in message
    assert "weights=" in message and "pretrained=False" in message


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("open_clip:ViT-B-32/openai", "timm/vit_base_patch32_clip_224.openai"),
        ("hf-hub:wisdomik/QuiltNet-B-16", "wisdomik/QuiltNet-B-16"),
        ("hf:openai/clip-vit-base-patch16", "openai/clip-vit-base-patch16"),
    ],
)
def test_generic_names_fail_fast_offline(name: str, where: str, tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match=where):
        create_model(name, cache_dir=tmp_path)
    assert time.monotonic() - start < 5.0


def test_unreachable_host_is_detected_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDROBUST_OFFLINE")
    start = time.monotonic()
    assert host_reachable("http://127.0.0.1:9/", timeout=1.0) is False  # discard port: closed
    assert time.monotonic() - start < 2.0


def test_argument_conflicts_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tiny"):
        create_model("clip-vit-b16", tiny=True)
    with pytest.raises(ValueError, match="pretrained=False"):
        create_model("clip-vit-b16", pretrained=False, weights=tmp_path)
    with pytest.raises(FileNotFoundError):
        create_model("clip-vit-b16", tiny=True, weights=tmp_path / "missing.bin")
    with pytest.raises(ValueError, match="no tiny config"):
        create_model("open_clip:ViT-B-32", pretrained=False, tiny=True)


def test_config_override_is_merged() -> None:
    model = create_model(
        "clip-vit-b16",
        pretrained=False,
        tiny=True,
        config_override={"architecture": {"model_cfg": {"embed_dim": 24}}, "templates": "paper"},
    )
    image, text = _encode(model)
    assert image.shape[1] == 24 and text.shape[1] == 24
    assert model.default_templates == ("a medical image of a {} belonging to {}",)


SAVE_ROUND_TRIP = [
    "clip-vit-b16",
    "clip-rn50",
    "biomedclip",
    "medclip-swin",
    "medclip-resnet50",
    "medsiglip-448",
    "pubmedclip-vit-b32",
]


@pytest.mark.parametrize("name", SAVE_ROUND_TRIP)
def test_save_and_reload_from_a_folder_gives_identical_outputs(name: str, tmp_path: Path) -> None:
    model = create_model(name, pretrained=False, tiny=True, seed=3)
    folder = save_model(model, tmp_path / name)
    reloaded = create_model(str(folder))
    for x, y in zip(_encode(model), _encode(reloaded), strict=True):
        assert torch.equal(x, y)
    assert reloaded.preprocess == model.preprocess
    assert reloaded.default_templates == model.default_templates
    assert reloaded.logit_scale == pytest.approx(model.logit_scale)
    expected_hash = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert reloaded.weights_hash == expected_hash
    assert not reloaded.training
    assert torch.equal(
        model.tokenize(PROMPTS)["input_ids"], reloaded.tokenize(PROMPTS)["input_ids"]
    )


def _tiny_state_file(tmp_path: Path) -> tuple[ModelAdapter, Path, dict[str, torch.Tensor]]:
    model = create_model("clip-vit-b16", pretrained=False, tiny=True, seed=5)
    folder = save_model(model, tmp_path / "src")
    return model, folder / "model.safetensors", load_file(str(folder / "model.safetensors"))


def test_weights_file_loads_into_the_architecture(tmp_path: Path) -> None:
    model, file, _ = _tiny_state_file(tmp_path)
    loaded = create_model("clip-vit-b16", tiny=True, weights=file)
    assert torch.equal(_encode(model)[0], _encode(loaded)[0])
    assert loaded.weights_id == str(file.resolve())


def test_missing_keys_raise_a_clear_error(tmp_path: Path) -> None:
    _, _, state = _tiny_state_file(tmp_path)
    del state["visual.proj"]
    bad = tmp_path / "missing.safetensors"
    save_file(state, str(bad))
    with pytest.raises(WeightsMismatchError, match=r"1 missing: visual\.proj"):
        create_model("clip-vit-b16", tiny=True, weights=bad)


def test_wrong_shapes_and_unexpected_keys_raise(tmp_path: Path) -> None:
    _, _, state = _tiny_state_file(tmp_path)
    state["visual.proj"] = torch.zeros(3, 3)
    state["extra.weight"] = torch.zeros(2)
    bad = tmp_path / "shapes.safetensors"
    save_file(state, str(bad))
    with pytest.raises(WeightsMismatchError) as err:
        create_model("clip-vit-b16", tiny=True, weights=bad)
    assert "wrong shape: visual.proj" in str(err.value) and "unexpected: extra.weight" in str(
        err.value
    )


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "pickled.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "config": nn.Linear(1, 1)}, bad)
    with pytest.raises(WeightsMismatchError, match="weights_only"):
        create_model("clip-vit-b16", tiny=True, weights=bad)


def test_torch_checkpoint_with_module_prefix_loads(tmp_path: Path) -> None:
    model = create_model("medclip-resnet50", pretrained=False, tiny=True, seed=2)
    state = {f"module.{k}": v for k, v in model.model.state_dict().items()}
    state["module.text_model.model.embeddings.position_ids"] = torch.arange(16)[None]  # old format
    file = tmp_path / "pytorch_model.bin"
    torch.save({"state_dict": state}, file)
    loaded = create_model("medclip-resnet50", tiny=True, weights=tmp_path)
    for x, y in zip(_encode(model), _encode(loaded), strict=True):
        assert torch.equal(x, y)


def test_unimed_fork_checkpoint_keys_are_renamed(tmp_path: Path) -> None:
    model = create_model("unimedclip-vit-b16", pretrained=False, tiny=True, seed=4)
    state = {
        ("text_encoder." + k[len("text.") :] if k.startswith("text.") else k): v
        for k, v in model.model.state_dict().items()
    }
    file = tmp_path / "unimed_clip_vit_b16.pt"
    torch.save(state, file)
    loaded = create_model("unimedclip-vit-b16", tiny=True, weights=file)
    for x, y in zip(_encode(model), _encode(loaded), strict=True):
        assert torch.equal(x, y)


def test_open_clip_folder_loads(tmp_path: Path) -> None:
    model = create_model("clip-vit-b16", pretrained=False, tiny=True, seed=6)
    config = {
        "model_cfg": model.spec["architecture"]["model_cfg"],
        "preprocess_cfg": {"mean": list(model.preprocess.mean), "std": list(model.preprocess.std)},
    }
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    torch.save(model.model.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    loaded = create_model(str(tmp_path))
    assert loaded.preprocess == model.preprocess
    for x, y in zip(_encode(model), _encode(loaded), strict=True):
        assert torch.equal(x, y)


def test_transformers_folder_loads(tmp_path: Path) -> None:
    model = create_model("pubmedclip-vit-b32", pretrained=False, tiny=True, seed=7)
    model.model.save_pretrained(tmp_path)
    loaded = create_model(str(tmp_path))
    assert loaded.family == "hf"
    for x, y in zip(_encode(model), _encode(loaded), strict=True):
        assert torch.equal(x, y)


def test_licence_is_shown_once_when_weights_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medrobust.models import registry

    monkeypatch.setattr(registry, "_announced", set())
    model = create_model("medclip-swin", pretrained=False, tiny=True)
    folder = save_model(model, tmp_path / "m")
    with caplog.at_level("WARNING", logger="medrobust.models.registry"):
        create_model(str(folder))
        create_model(str(folder))
    licence_lines = [r for r in caplog.records if "licence" in r.getMessage()]
    assert len(licence_lines) == 1 and "MedCLIP" in licence_lines[0].getMessage()
    assert any("random" in r.getMessage() for r in caplog.records)
