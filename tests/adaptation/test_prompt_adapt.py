"""adapt() with a prompt context: what trains, save -> load, resume, merge, evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medrobust.adaptation import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    AdaptConfig,
    LoraSettings,
    PromptSettings,
    adapt,
    export_merged,
    load_adapted_model,
)
from medrobust.adaptation.checkpoint import PROMPT_KEY, STATE_FILE
from medrobust.adaptation.lora import vision_fingerprint
from medrobust.adaptation.prompt import PromptLearner
from medrobust.adaptation.training import load_train_state
from medrobust.data import load_medmnist
from medrobust.data.fewshot import sample_fewshot
from medrobust.evaluation import GridSpec, ResultsStore, run_grid
from medrobust.models import create_model
from medrobust.models.zeroshot import ZeroShotClassifier

TINY = {"pretrained": False, "tiny": True}
DATASETS = ["breastmnist", "retinamnist"]


def _cfg(method: str, **changes) -> AdaptConfig:
    options = {
        "fewshot": 0.1, "epochs": 3, "lr": 1e-2, "prompt_lr": 1e-2, "batch_size": 16, "warmup": 1,
        "patience": None, "val_limit": 32, "resize": False, "monitor": "loss", "seed": 0,
        "method": method, "lora": LoraSettings(rank=2),
        "prompt": PromptSettings(context="class", init="random", tokens=3),
    }
    return AdaptConfig(**{**options, **changes})


def _adapt(out: Path, cfg: AdaptConfig, root, **runtime) -> Path:
    return adapt("medrobust-mini", DATASETS, cfg, out_dir=out, data_root=root, model_kwargs=TINY,
                 progress=False, log=None, **runtime)


def _config(folder: Path) -> dict:
    return json.loads((folder / ADAPTER_CONFIG).read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prompt-adapt")
    return {m: _adapt(root / m, _cfg(m), shared_data) for m in ("prompt", "lora+prompt")}


def _val_loss(model, shared_data, name: str) -> float:
    val = load_medmnist(name, "val", root=shared_data, download=False)
    val = sample_fewshot(val, fraction=32 / len(val), seed=0)
    out = ZeroShotClassifier(model, val.class_names, None, val.modality).predict_batch(
        val.to_tensor())
    return torch.nn.functional.cross_entropy(out.logits, val.labels_tensor()).item()


@pytest.mark.parametrize("method", ["prompt", "lora+prompt"])
def test_saved_context_reloads_to_the_recorded_scores(runs, shared_data, method: str) -> None:
    folder = runs[method]
    config = _config(folder)
    assert config["method"] == method and config["format_version"] == 2
    assert config["prompt"]["shape"] == [7, 3, 32]  # 2 + 5 class names, M = 3, width 32
    assert (config["lora"] is None) == (method == "prompt")
    assert config["training"]["lr_prompt"] == 1e-2
    best = config["validation"]["best_epoch"]
    assert best > 0  # the learned context beat the random start on validation
    assert config["data"]["prompts"]["breastmnist"][0] == [
        "[3 learned class-specific context tokens, random init] malignant."]
    model = load_adapted_model(folder)
    assert model.name == f"medrobust-mini+{method}:{method}"
    assert isinstance(model.class_head, PromptLearner)
    stored = load_file(str(folder / ADAPTER_WEIGHTS))
    assert torch.equal(model.class_head.ctx.detach(), stored[PROMPT_KEY])
    assert any(".lora_" in k for k in stored) == (method == "lora+prompt")
    recorded = config["validation"]["best"]["datasets"]
    for name in DATASETS:  # the reloaded adapter scores validation exactly as training did
        assert _val_loss(model, shared_data, name) == pytest.approx(recorded[name]["loss"],
                                                                    rel=1e-5)
    again = load_adapted_model(folder)
    pixels = model.preprocess(torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8))
    names = config["data"]["datasets"][1]["class_names"]
    a = ZeroShotClassifier(model, names).logits(pixels)
    b = ZeroShotClassifier(again, names).logits(pixels)
    assert torch.equal(a, b)


def test_only_the_context_trains_with_method_prompt(runs) -> None:
    folder = runs["prompt"]
    base = create_model("medrobust-mini", **TINY)
    model = load_adapted_model(folder)
    assert vision_fingerprint(model) == vision_fingerprint(base)
    trained = {k: v for k, v in model.model.state_dict().items()}
    assert all(torch.equal(v, trained[k]) for k, v in base.model.state_dict().items())
    init = PromptLearner(base, PromptSettings(context="class", init="random", tokens=3),
                         class_names=model.class_head.class_names,
                         seed=_config(folder)["seeds"]["prompt_init"])
    assert not torch.equal(init.ctx, model.class_head.ctx)


def test_resume_after_a_kill_repeats_the_run(runs, tmp_path: Path, shared_data) -> None:
    out = tmp_path / "lora+prompt"

    class _Kill(Exception):
        pass

    def kill_after_first(record: dict) -> None:
        if record["epoch"] == 1:
            raise _Kill

    with pytest.raises(_Kill):
        _adapt(out, _cfg("lora+prompt"), shared_data, callback=kill_after_first)
    assert PROMPT_KEY in load_train_state(out / STATE_FILE)["lora"]
    _adapt(out, _cfg("lora+prompt"), shared_data)
    a, b = load_file(str(runs["lora+prompt"] / ADAPTER_WEIGHTS)), load_file(str(out / ADAPTER_WEIGHTS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(FileExistsError, match="different adaptation run"):
        _adapt(out, _cfg("lora+prompt", prompt_lr=1e-3), shared_data)


def test_merge_keeps_the_context_and_export_refuses(runs, tmp_path: Path) -> None:
    folder = runs["lora+prompt"]
    model, merged = load_adapted_model(folder), load_adapted_model(folder, merge=True)
    assert merged.name.endswith(":merged") and isinstance(merged.class_head, PromptLearner)
    pixels = model.preprocess(torch.randint(0, 256, (4, 3, 28, 28), dtype=torch.uint8))
    names = _config(folder)["data"]["datasets"][0]["class_names"]
    torch.testing.assert_close(ZeroShotClassifier(merged, names).logits(pixels),
                               ZeroShotClassifier(model, names).logits(pixels),
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="learned prompt context, which a plain model folder"):
        export_merged(folder, tmp_path / "merged")


def test_runner_scores_with_the_learned_context(runs, tmp_path: Path, shared_data) -> None:
    model = load_adapted_model(runs["prompt"])
    spec = GridSpec(models=[model], datasets=["breastmnist"], corruptions=["pixelate"],
                    severities=(2,), limit=16, data_root=shared_data, resize=False)
    run_grid(spec, tmp_path / "run", progress=False)
    with ResultsStore(tmp_path / "run") as store:
        rows = store.rows()
    assert {r["model"] for r in rows} == {"medrobust-mini+prompt:prompt"} and len(rows) == 2
    prompts = json.loads(rows[0]["config"])["prompts"]
    assert prompts[0] == ["[3 learned class-specific context tokens, random init] malignant."]


def test_lora_only_runs_keep_their_fingerprint_settings() -> None:
    settings = AdaptConfig().run_settings()
    assert not {"method", "prompt", "prompt_lr"} & set(settings)
    assert {"method", "prompt", "prompt_lr"} <= set(AdaptConfig(method="prompt").run_settings())
    with pytest.raises(ValueError, match="method must be one of"):
        AdaptConfig(method="adapter")
    with pytest.raises(ValueError, match="prompt_lr must lie"):
        AdaptConfig(prompt_lr=0.0)
    restored = AdaptConfig.from_dict(_cfg("lora+prompt").to_dict())
    assert restored == _cfg("lora+prompt")


def test_config_reads_back_from_the_adapter(runs) -> None:
    for method, folder in runs.items():  # method 'prompt' records no LoRA settings (unused)
        lora = LoraSettings() if method == "prompt" else LoraSettings(rank=2)
        assert AdaptConfig.from_adapter(_config(folder)) == _cfg(method, label=method, lora=lora)
