"""adapt(): learning on real images, checkpoint selection on validation, resume, options."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medrobust.adaptation import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    AdaptConfig,
    LoraSettings,
    LoraTrainer,
    adapt,
    apply_lora,
    load_adapted_model,
)
from medrobust.adaptation.checkpoint import STATE_FILE
from medrobust.adaptation.lora import lora_parameters
from medrobust.adaptation.training import load_train_state
from medrobust.corruptions import RandomCorruption, get_suite
from medrobust.data import ImageDataset, load_medmnist
from medrobust.data.fewshot import sample_fewshot
from medrobust.models.zeroshot import ZeroShotClassifier

RUN = {  # a short run on real breast ultrasound images with a tiny random-weight CLIP ViT
    "fewshot": 0.1, "rank": 4, "epochs": 3, "lr": 1e-2, "batch_size": 16, "warmup": 1,
    "patience": None, "val_limit": 32, "resize": False, "progress": False, "log": None,
    "monitor": "loss", "model_kwargs": {"pretrained": False, "tiny": True},
}


_RUNTIME = ("data_root", "device", "model_kwargs", "resume", "progress", "log", "callback")
_LORA = ("rank", "alpha", "dropout", "targets")


def _adapt(model, datasets, *, out_dir, **options) -> Path:
    """``adapt`` with the options of both configs and the runtime given flat, as in RUN."""
    runtime = {k: options.pop(k) for k in _RUNTIME if k in options}
    lora = LoraSettings(**{k: options.pop(k) for k in _LORA if k in options})
    return adapt(model, datasets, AdaptConfig(**options, lora=lora), out_dir=out_dir, **runtime)


class _Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def run_a(tmp_path_factory, shared_data) -> Path:
    out = tmp_path_factory.mktemp("adapt") / "run-a"
    return _adapt("clip-vit-b16", ["breastmnist"], out_dir=out, data_root=shared_data, **RUN)


def _random_head() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.nn.functional.normalize(torch.randn(2, 32, generator=g), dim=-1)


def _config(folder: Path) -> dict:
    return json.loads((folder / ADAPTER_CONFIG).read_text())


def test_loss_decreases_and_selection_uses_validation(run_a: Path) -> None:
    config = _config(run_a)
    history = config["validation"]["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]  # epoch 0 = the untouched base
    losses = [h["train_loss"] for h in history[1:]]
    assert losses[-1] < 0.75 * losses[0] and losses == sorted(losses, reverse=True)
    val = [h["validation"]["mean"]["loss"] for h in history]
    assert config["validation"]["monitor"] == "loss"
    assert config["validation"]["best_epoch"] == int(np.argmin(val)) > 0  # first best wins ties
    assert config["validation"]["best"] == history[config["validation"]["best_epoch"]]["validation"]
    data = config["data"]
    assert data["fewshot_split"] == "train" and data["val_split"] == "val"
    record = data["datasets"][0]
    assert record["n_train"] == sum(record["train_class_counts"]) == 55
    assert record["validation"] == "the 'val' split" and record["n_val"] <= 32
    assert config["complete"] and config["training"]["total_steps"] == 3 * 4
    assert config["lora"]["modules"] == [f"transformer.resblocks.{i}.attn" for i in (0, 1)]
    assert config["seeds"]["seed"] == 0 and config["code_version"]
    assert config["base"]["weights_hash"] == "random-init"


def test_output_is_the_best_epoch_and_reloads(run_a: Path, shared_data) -> None:
    config = _config(run_a)
    best = config["validation"]["best_epoch"]
    state = load_train_state(run_a / STATE_FILE)
    assert state["finished"] and state["epoch"] == 3 and best < 3
    stored = load_file(str(run_a / ADAPTER_WEIGHTS))
    assert not all(torch.equal(stored[k], state["lora"][k]) for k in stored)  # not the last epoch
    # the reloaded adapter scores the validation images exactly as recorded for its epoch
    model = load_adapted_model(run_a)
    assert model.name == "clip-vit-b16+lora:run-a"
    val = load_medmnist("breastmnist", "val", root=shared_data, download=False)
    val = sample_fewshot(val, fraction=32 / len(val), seed=0)
    classifier = ZeroShotClassifier(model, val.class_names, None, val.modality)
    out = classifier.predict_batch(val.to_tensor())
    loss = torch.nn.functional.cross_entropy(out.logits, val.labels_tensor()).item()
    assert loss == pytest.approx(config["validation"]["best"]["mean"]["loss"], rel=1e-5)


def test_resume_repeats_an_uninterrupted_run(run_a: Path, tmp_path: Path, shared_data) -> None:
    out = tmp_path / "run-b"

    def stop_after_first(record: dict) -> None:
        if record["epoch"] == 1:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        _adapt("clip-vit-b16", ["breastmnist"], out_dir=out, data_root=shared_data,
              callback=stop_after_first, **RUN)
    assert load_train_state(out / STATE_FILE)["epoch"] == 1
    seen: list[int] = []
    _adapt("clip-vit-b16", ["breastmnist"], out_dir=out, data_root=shared_data,
          callback=lambda r: seen.append(r["epoch"]), **RUN)
    assert seen == [2, 3]
    a, b = load_file(str(run_a / ADAPTER_WEIGHTS)), load_file(str(out / ADAPTER_WEIGHTS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last_a, last_b = load_train_state(run_a / STATE_FILE), load_train_state(out / STATE_FILE)
    assert all(torch.equal(last_a["lora"][k], last_b["lora"][k]) for k in last_a["lora"])
    hist_a, hist_b = _config(run_a)["validation"]["history"], _config(out)["validation"]["history"]
    assert [h["validation"] for h in hist_a] == [h["validation"] for h in hist_b]
    # finished: a third call returns at once; other settings in the same folder are refused
    assert _adapt("clip-vit-b16", ["breastmnist"], out_dir=out, data_root=shared_data, **RUN) == out
    with pytest.raises(FileExistsError, match="different adaptation run"):
        _adapt("clip-vit-b16", ["breastmnist"], out_dir=out, data_root=shared_data,
              **{**RUN, "lr": 2e-2})


def test_restart_after_a_crash_before_the_first_state(tmp_path: Path, shared_data) -> None:
    out = tmp_path / "run-c"
    options = {**RUN, "epochs": 1}
    _adapt("clip-vit-b16", ["breastmnist"], out_dir=out, data_root=shared_data, **options)
    expected = load_file(str(out / ADAPTER_WEIGHTS))
    (out / STATE_FILE).unlink()  # as if it had crashed right after writing the epoch-0 adapter
    _adapt("clip-vit-b16", ["breastmnist"], out_dir=out, data_root=shared_data, **options)
    got = load_file(str(out / ADAPTER_WEIGHTS))
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    (out / STATE_FILE).unlink()
    with pytest.raises(FileExistsError, match="already holds an adapter"):
        _adapt("clip-vit-b16", ["breastmnist"], out_dir=out, data_root=shared_data,
              **{**options, "rank": 2})


def test_joint_label_space_keeps_same_names_apart(tmp_path: Path, breast_train) -> None:
    half = len(breast_train) // 2
    first = breast_train.subset(range(half))
    second = breast_train.subset(range(half, len(breast_train)))
    second = ImageDataset("breast_b", "train", second.images, second.labels,
                          second.class_names, second.modality, second.task, "synthetic split")
    first.name = "breast_a"
    with pytest.warns(UserWarning, match="identical prompts"):
        out = _adapt("clip-vit-b16", [first, second], out_dir=tmp_path / "joint", joint_labels=True,
                    **{**RUN, "epochs": 1, "fewshot": 0.2})
    data = _config(out)["data"]
    assert data["label_space"] == "joint"
    assert data["joint_classes"] == ["breast_a/malignant", "breast_a/normal, benign",
                                     "breast_b/malignant", "breast_b/normal, benign"]
    assert all(d["validation"] == "held-out rest of the 'train' split" for d in data["datasets"])


def test_corruption_augmentation(tmp_path: Path, shared_data, breast_batch) -> None:
    out = _adapt("clip-vit-b16", ["breastmnist"], out_dir=tmp_path / "aug", data_root=shared_data,
                augment_suite="medmnist-c", exclude_corruptions=["pixelate", "motion_blur"],
                augment_p=1.0, **{**RUN, "epochs": 1})
    aug = _config(out)["augmentation"]
    suite = get_suite("medmnist-c", "breastmnist")
    assert aug["per_dataset"]["breastmnist"] == [
        c for c in suite.corruptions if c not in ("pixelate", "motion_blur")
    ]
    assert aug["suite"] == "medmnist-c" and aug["excluded"] == ["pixelate", "motion_blur"]
    # the adapter records the content of every image it saw (eval refuses them as test images)
    from medrobust.adaptation.checkpoint import seen_image_hashes

    (record,) = _config(out)["data"]["datasets"]
    assert len(record["train_image_sha256"]) == record["n_train"]
    assert len(record["val_image_sha256"]) == record["n_val"]
    assert len(seen_image_hashes(out)) >= record["n_train"]
    assert aug["corruptions"] == sorted(aug["per_dataset"]["breastmnist"])
    # the augmentation really changes what the model is trained on
    from medrobust.models import create_model

    model = create_model("clip-vit-b16", pretrained=False, tiny=True)
    apply_lora(model, LoraSettings(rank=2))
    trainer = LoraTrainer(model, [_random_head()], lr=1e-3, weight_decay=0.0, total_steps=1,
                          warmup_steps=0)
    images, labels = breast_batch
    corrupt = RandomCorruption(suite, p=1.0)
    with torch.no_grad():
        plain = trainer.loss(images, labels, 0)
        augmented = trainer.loss(images, labels, 0,
                                 augment=partial(corrupt, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(plain, augmented)


def test_exclusion_removes_the_whole_family(tmp_path: Path, shared_data) -> None:
    """brightness_up (a MedMNIST-C name) keeps ImageNet-C's brightness out of training too."""
    out = _adapt("clip-vit-b16", ["breastmnist"], out_dir=tmp_path / "fam", data_root=shared_data,
                augment_suite="imagenet-c", exclude_corruptions=["brightness_up", "speckle_noise"],
                **{**RUN, "epochs": 1})
    aug = _config(out)["augmentation"]
    assert set(aug["excluded"]) == {"brightness", "gaussian_noise", "shot_noise",
                                    "impulse_noise", "speckle_noise"}
    assert aug["excluded_families"] == ["brightness", "noise"]
    assert not set(aug["corruptions"]) & set(aug["excluded"])
    assert "contrast" in aug["corruptions"]


def test_bf16_autocast_step(tiny, breast_batch) -> None:
    model = tiny("biomedclip")
    apply_lora(model, LoraSettings(rank=2))
    trainer = LoraTrainer(model, [_random_head()], lr=1e-2, weight_decay=0.0, total_steps=2,
                          warmup_steps=0, amp_dtype=torch.bfloat16)
    before = {n: p.detach().clone() for n, p in lora_parameters(model)}
    loss = trainer.train_step(*breast_batch, 0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    after = dict(lora_parameters(model))
    assert all(after[n].dtype == torch.float32 for n in before)  # master weights stay fp32
    assert any(not torch.equal(before[n], after[n]) for n in before if ".lora_B." in n)


def test_gradient_accumulation_matches_a_large_batch(tiny, breast_batch) -> None:
    images, labels = breast_batch
    head = _random_head()
    results = []
    for accumulate in (1, 4):
        model = tiny("clip-vit-b16")
        apply_lora(model, LoraSettings(rank=2), seed=3)
        trainer = LoraTrainer(model, [head], lr=1e-2, weight_decay=0.0, total_steps=2,
                              warmup_steps=0, grad_accum=accumulate)
        for chunk in range(0, 48, 48 // accumulate):
            trainer.train_step(images[chunk:chunk + 48 // accumulate],
                               labels[chunk:chunk + 48 // accumulate], 0)
        assert trainer.steps == 1
        results.append({n: p.detach().clone() for n, p in lora_parameters(model)})
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"fewshot": 0.1, "shots": 4}, ValueError, "not both"),
        ({"fewshot": 0.0}, ValueError, r"fewshot must lie in \(0.0, 1.0\]"),
        ({"fewshot": 1.5}, ValueError, r"fewshot must lie in \(0.0, 1.0\]"),
        ({"shots": 0}, ValueError, "shots must be an int >= 1"),
        ({"fewshot_split": "test"}, ValueError, "'test' split"),
        ({"val_split": "test"}, ValueError, "'test' split"),
        ({"rank": 0}, ValueError, "rank must be a positive int"),
        ({"dropout": 1.0}, ValueError, "dropout must lie"),
        ({"epochs": 0}, ValueError, "epochs must be an int >= 1"),
        ({"grad_accum": 0}, ValueError, "grad_accum must be an int >= 1"),
        ({"warmup": 1.5}, ValueError, "warmup as a float"),
        ({"monitor": "accuracy"}, ValueError, "monitor must be one of"),
        ({"precision": "fp16"}, ValueError, "precision must be one of"),
        ({"exclude_corruptions": ["pixelate"]}, ValueError, "needs augment_suite"),
        ({"augment_suite": "medmnist-c", "exclude_corruptions": ["nope"]}, KeyError,
         "no known family"),
        ({"targets": ["nonexistent"]}, ValueError, "unknown LoRA target"),
        ({"targets": ["out_proj"]}, ValueError, "inert"),
    ],
)
def test_bad_options(tmp_path: Path, shared_data, kwargs: dict, error: type, match: str) -> None:
    options = {**RUN, "fewshot": None, **kwargs}
    if "fewshot" not in kwargs and "shots" not in kwargs:
        options["fewshot"] = 0.1
    with pytest.raises(error, match=match):
        _adapt("clip-vit-b16", ["breastmnist"], out_dir=tmp_path / "x", data_root=shared_data,
              **options)
    assert not (tmp_path / "x" / ADAPTER_CONFIG).exists()


def test_test_split_dataset_refused(tmp_path: Path, shared_data) -> None:
    test = load_medmnist("breastmnist", "test", root=shared_data, download=False)
    with pytest.raises(ValueError, match="'test' split"):
        _adapt("clip-vit-b16", [test], out_dir=tmp_path / "x", **RUN)


def test_config_is_saved_with_the_adapter_and_loaded_back(run_a: Path) -> None:
    options = {k: v for k, v in RUN.items() if k not in _RUNTIME and k not in _LORA}
    expected = AdaptConfig(**options, lora=LoraSettings(rank=RUN["rank"]))
    assert AdaptConfig.from_adapter(_config(run_a)) == replace(expected, label=run_a.name)
    assert AdaptConfig.from_dict(json.loads(json.dumps(expected.to_dict()))) == expected


def test_an_adapter_that_changes_nothing_is_named():
    import torch

    from medrobust.adaptation.train import unchanged_reason

    zero = {"m.lora_A.weight": torch.ones(2, 3), "m.lora_B.weight": torch.zeros(3, 2)}
    trained = {**zero, "m.lora_B.weight": torch.full((3, 2), 1e-3)}
    assert "initial checkpoint" in unchanged_reason(0, trained)
    assert "every LoRA B matrix is zero" in unchanged_reason(3, zero)
    assert unchanged_reason(3, trained) is None
