"""Adapter files: exact reload, merge/export, base identity, safe training state, runner use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from medrobust.adaptation import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LoraSettings,
    LoraTrainer,
    apply_lora,
    export_merged,
    load_adapted_model,
)
from medrobust.adaptation.checkpoint import base_source, save_adapter
from medrobust.adaptation.lora import has_lora, lora_state_dict, vision_fingerprint
from medrobust.models import WeightsMismatchError, create_model
from medrobust.models.zeroshot import ZeroShotClassifier

TINY = {"pretrained": False, "tiny": True}


def _trained(name: str, breast_batch, steps: int = 3, **lora) -> tuple:
    """A tiny model with a few real training steps on its LoRA, and its adapter config."""
    model = create_model(name, **TINY)
    fingerprint = vision_fingerprint(model)
    classifier = ZeroShotClassifier(model, ["malignant", "normal, benign"], None, "ultrasound")
    settings = LoraSettings(**{"rank": 4, **lora})
    modules = apply_lora(model, settings)
    trainer = LoraTrainer(model, [classifier.text_features], lr=5e-2, weight_decay=1e-4,
                          total_steps=steps, warmup_steps=0)
    images, labels = breast_batch
    for _ in range(steps):
        trainer.train_step(images, labels, 0)
    model.eval()
    config = {
        "label": "unit",
        "base": {"name": model.name, "weights_hash": model.weights_hash,
                 "vision_sha256": fingerprint, "source": base_source(name, TINY)},
        "lora": {**settings.to_dict(), "modules": modules},
    }
    return model, config


def _embed(model, breast_batch) -> torch.Tensor:
    with torch.no_grad():
        return model.encode_image(model.preprocess(breast_batch[0][:8]))


@pytest.mark.parametrize("name", ["clip-vit-b16", "biomedclip", "pubmedclip-vit-b32"])
def test_save_load_round_trip_is_exact(tmp_path: Path, breast_batch, name: str) -> None:
    model, config = _trained(name, breast_batch)
    expected = _embed(model, breast_batch)
    save_adapter(model, tmp_path / "a", config)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [ADAPTER_WEIGHTS, ADAPTER_CONFIG]
    stored = load_file(str(tmp_path / "a" / ADAPTER_WEIGHTS))
    assert all(".lora_" in k for k in stored)  # the adapter only, no base weights
    assert any(v.abs().sum() > 0 for k, v in stored.items() if ".lora_B." in k)
    loaded = load_adapted_model(tmp_path / "a")
    assert torch.equal(_embed(loaded, breast_batch), expected)
    loaded.check_eval()
    base = create_model(name, **TINY)
    assert loaded.name == f"{base.name}+lora:unit"
    assert loaded.weights_hash not in (base.weights_hash, "") and len(loaded.weights_hash) == 64
    assert load_adapted_model(tmp_path / "a").weights_hash == loaded.weights_hash
    assert not torch.allclose(_embed(base, breast_batch), expected, atol=1e-4)


def test_merge_and_export(tmp_path: Path, breast_batch) -> None:
    model, config = _trained("clip-vit-b16", breast_batch)
    save_adapter(model, tmp_path / "a", config)
    adapted = load_adapted_model(tmp_path / "a")
    merged = load_adapted_model(tmp_path / "a", merge=True)
    assert not has_lora(merged) and merged.name.endswith(":merged")
    torch.testing.assert_close(_embed(merged, breast_batch), _embed(adapted, breast_batch),
                               rtol=1e-5, atol=1e-5)
    folder = export_merged(tmp_path / "a", tmp_path / "export")
    exported = create_model(str(folder))
    assert torch.equal(_embed(exported, breast_batch), _embed(merged, breast_batch))


def test_wrong_base_or_tampered_adapter_is_refused(tmp_path: Path, breast_batch) -> None:
    model, config = _trained("biomedclip", breast_batch, steps=1)
    save_adapter(model, tmp_path / "a", config)
    other = create_model("biomedclip", seed=1, **TINY)
    with pytest.raises(WeightsMismatchError, match="not the one adapter"):
        load_adapted_model(tmp_path / "a", base_model=other)
    same = create_model("biomedclip", **TINY)
    assert load_adapted_model(tmp_path / "a", base_model=same).name.startswith("biomedclip+lora")
    assert not has_lora(same)  # a ready base model is copied, never modified
    state = load_file(str(tmp_path / "a" / ADAPTER_WEIGHTS))
    key = next(k for k in state if ".lora_B." in k)
    state[key] = state[key] + 1.0
    save_file(state, str(tmp_path / "a" / ADAPTER_WEIGHTS))
    with pytest.raises(ValueError, match="does not match the sha256"):
        load_adapted_model(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="not a medrobust adapter folder"):
        load_adapted_model(tmp_path)


def test_random_ready_model_needs_base_model(tmp_path: Path, breast_batch) -> None:
    model, config = _trained("biomedclip", breast_batch, steps=1)
    config["base"]["source"] = base_source(create_model("biomedclip", **TINY), {})
    assert config["base"]["source"]["kind"] == "instance"
    save_adapter(model, tmp_path / "a", config)
    with pytest.raises(ValueError, match="pass base_model="):
        load_adapted_model(tmp_path / "a")


def test_adapted_model_in_the_runner(tmp_path: Path, breast_batch, shared_data) -> None:
    from medrobust.data import load_medmnist
    from medrobust.evaluation import GridSpec, ResultsStore, run_grid

    model, config = _trained("clip-vit-b16", breast_batch)
    save_adapter(model, tmp_path / "a", config)
    adapted = load_adapted_model(tmp_path / "a")
    test = load_medmnist("breastmnist", "test", root=shared_data, download=False).subset(range(12))
    spec = GridSpec(models=[adapted], datasets=[test], corruptions=["pixelate"], severities=(1,),
                    batch_size=6, resize=False)
    summary = run_grid(spec, tmp_path / "run", progress=False)
    assert summary.computed == 2
    with ResultsStore(tmp_path / "run") as store:
        rows = store.rows()
    assert {(r["model"], r["weights_hash"]) for r in rows} == {(adapted.name, adapted.weights_hash)}
    # the cells are the adapted model's scores, not the base's
    classifier = ZeroShotClassifier(adapted, test.class_names, None, test.modality)
    clean = next(r for r in rows if r["corruption"] == "clean")
    expected = classifier.predict_batch(test.to_tensor()).probabilities.argmax(1)
    assert clean["accuracy"] == pytest.approx(float((expected.numpy() == test.labels).mean()))


def test_config_records_base_and_lora(tmp_path: Path, breast_batch) -> None:
    model, config = _trained("biomedclip", breast_batch, steps=1, alpha=8, dropout=0.1)
    save_adapter(model, tmp_path / "a", config)
    saved = json.loads((tmp_path / "a" / ADAPTER_CONFIG).read_text())
    assert saved["format"] == "medrobust-lora" and saved["code_version"]
    assert saved["lora"]["rank"] == 4 and saved["lora"]["alpha"] == 8
    assert saved["lora"]["dropout"] == 0.1
    assert saved["base"]["source"] == {"kind": "create_model", "name": "biomedclip", "kwargs": TINY}
    from medrobust.adaptation.lora import tensors_sha256

    assert saved["adapter_sha256"] == tensors_sha256(lora_state_dict(model))
