"""medrobust-mini: the training loop (tiny config, few images) and the shipped weights."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from open_clip.loss import ClipLoss

from medrobust.adaptation import PretrainConfig
from medrobust.adaptation.pretrain import (
    CAPTION_TEMPLATES,
    PretrainResult,
    batch_loss,
    build_captions,
    contrastive_loss,
    pretrain,
    random_resized_crop_flip,
)
from medrobust.corruptions import prepare_images
from medrobust.data import load_medmnist
from medrobust.evaluation.metrics import balanced_accuracy
from medrobust.models import WeightsUnavailableError, create_model, model_spec
from medrobust.models.prompts import build_prompts
from medrobust.models.weights import PACKAGE_DIR, WeightsSource, fetch_weights
from medrobust.models.zeroshot import ZeroShotClassifier

SHIPPED = PACKAGE_DIR / "pretrained" / "medrobust-mini.safetensors"
CARD = PACKAGE_DIR / "pretrained" / "MEDROBUST_MINI.md"
SMOKE = PretrainConfig(datasets=("breastmnist", "retinamnist"), epochs=2, batch_size=16,
                       limit=12, tiny=True, warmup_steps=1)


def _features(n: int, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64),
            torch.randn(n, d, generator=g, dtype=torch.float64))


def test_contrastive_loss_is_clip_loss_when_labels_are_distinct() -> None:
    image, text = _features(6)
    scale = torch.tensor(20.0, dtype=torch.float64)
    ours = contrastive_loss(image, text, torch.arange(6), scale)
    reference = ClipLoss()(
        torch.nn.functional.normalize(image, dim=-1), torch.nn.functional.normalize(text, dim=-1),
        scale,
    )
    torch.testing.assert_close(ours, reference)


def test_contrastive_loss_spreads_targets_over_same_label_pairs() -> None:
    image, text = _features(5, seed=1)
    labels = torch.tensor([0, 1, 0, 2, 1])
    scale = 10.0
    a = (image / image.norm(dim=1, keepdim=True)).numpy()
    b = (text / text.norm(dim=1, keepdim=True)).numpy()
    logits = scale * a @ b.T
    same = (labels[:, None] == labels[None, :]).numpy().astype(float)

    def soft_ce(z: np.ndarray) -> float:  # rows of z against rows of the targets
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-(same / same.sum(1, keepdims=True) * log_p).sum(1).mean())

    expected = 0.5 * (soft_ce(logits) + soft_ce(logits.T))
    ours = contrastive_loss(image, text, labels, torch.tensor(scale, dtype=torch.float64))
    assert float(ours) == pytest.approx(expected, rel=1e-12)


def test_contrastive_loss_rejects_mismatched_shapes() -> None:
    image, text = _features(4)
    with pytest.raises(ValueError, match="features"):
        contrastive_loss(image, text[:3], torch.arange(4), torch.tensor(1.0))
    with pytest.raises(ValueError, match="labels"):
        contrastive_loss(image, text, torch.arange(3), torch.tensor(1.0))


def test_crop_flip_identity_flip_and_reproducibility() -> None:
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    same = random_resized_crop_flip(x, torch.Generator().manual_seed(1), (1.0, 1.0), (1.0, 1.0), 0.0)
    torch.testing.assert_close(same, x)
    flipped = random_resized_crop_flip(x, torch.Generator().manual_seed(1), (1.0, 1.0), (1.0, 1.0), 1.0)
    torch.testing.assert_close(flipped, x.flip(-1))
    a = random_resized_crop_flip(x, torch.Generator().manual_seed(2))
    b = random_resized_crop_flip(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and a.shape == x.shape
    # Crops are resampled inside the image: values stay within its range.
    assert a.min() >= x.min() - 1e-6 and a.max() <= x.max() + 1e-6


def test_captions_cover_the_default_and_paper_prompts() -> None:
    names = ["no diabetic retinopathy", "mild diabetic retinopathy"]
    captions = build_captions(names, "fundus photography")
    assert len({len(c) for c in captions}) == 1
    assert captions[0][0] == "a fundus photography image showing no diabetic retinopathy."
    assert len(captions[0]) > len(CAPTION_TEMPLATES)
    defaults = create_model("medrobust-mini", pretrained=False, tiny=True).default_templates
    for templates in (defaults, "paper"):
        for per_class, prompts in zip(
            captions, build_prompts(names, "fundus photography", templates), strict=True
        ):
            assert set(prompts) <= set(per_class)


def test_training_steps_lower_the_batch_loss(shared_data: Path) -> None:
    """The loss pretrain optimises, on one fixed batch of real images of two datasets."""
    model = create_model("medrobust-mini", pretrained=False, tiny=True).train()
    parts = [load_medmnist(f, "train", root=shared_data).subset(slice(0, 8))
             for f in ("breastmnist", "retinamnist")]
    pixels = torch.cat([model.preprocess(prepare_images(d.to_tensor(), 224)) for d in parts])
    bank = [c for d in parts for per_class in build_captions(d.class_names, d.modality)
            for c in per_class]
    per_class = len(bank) // 7
    labels = torch.cat([parts[0].labels_tensor(), parts[1].labels_tensor() + 2])
    captions = labels * per_class + torch.arange(16) % per_class
    tokens = model.tokenize(bank)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = batch_loss(model, pixels, tokens, captions, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach().item())
    # The loss cannot go below the entropy of its targets (uniform over same-class pairs).
    floor = float(torch.log(torch.bincount(labels)[labels].double()).mean())
    excess = np.array(losses) - floor
    assert np.all(np.isfinite(excess)) and excess.min() > 0
    assert excess[-1] < 0.5 * excess[0], losses


@pytest.fixture(scope="module")
def smoke_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> PretrainResult:
    out = tmp_path_factory.mktemp("pretrain") / "a"
    return pretrain(out, SMOKE, data_root=shared_data, log=lambda _: None)


def test_pretrain_runs_and_writes_a_loadable_folder(smoke_run: PretrainResult) -> None:
    history = smoke_run.log["history"]
    assert len(history) == SMOKE.epochs
    assert all(np.isfinite(h["step_losses"]).all() and len(h["step_losses"]) == 2 for h in history)
    out = smoke_run.out_dir
    assert {"medrobust_model.json", "model.safetensors", "pretrain_log.json"} <= {
        p.name for p in out.iterdir()
    }
    logged = json.loads((out / "pretrain_log.json").read_text())
    assert logged["best_epoch"] == smoke_run.best_epoch
    assert logged["train_images"] == {"breastmnist": 12, "retinamnist": 12}
    loaded = create_model(str(out))
    assert not any(m.training for m in loaded.modules())
    # The folder holds the best epoch's weights in float16.
    for (name, trained), (_, shipped) in zip(
        smoke_run.model.model.state_dict().items(), loaded.model.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(shipped, trained.half().float(), rtol=0, atol=0, msg=name)


def test_pretrain_is_reproducible_with_a_seed(
    smoke_run: PretrainResult, shared_data: Path, tmp_path: Path
) -> None:
    again = pretrain(tmp_path / "b", SMOKE, data_root=shared_data, log=lambda _: None)
    first = [h["step_losses"] for h in smoke_run.log["history"]]
    assert [h["step_losses"] for h in again.log["history"]] == first
    assert again.log["weights_sha256"] == smoke_run.log["weights_sha256"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"epochs": 0}, "epochs"), ({"batch_size": 1.5}, "batch_size"), ({"lr": 0.0}, "lr"),
     ({"weight_decay": -0.1}, "weight_decay"), ({"warmup_steps": -1}, "warmup_steps"),
     ({"datasets": "breastmnist"}, "datasets"), ({"templates_per_step": 0}, "templates"),
     ({"limit": 0}, "limit")],
)
def test_pretrain_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PretrainConfig(**kwargs)


def test_pretrain_config_is_saved_in_the_log_and_loaded_back(smoke_run: PretrainResult) -> None:
    logged = json.loads((smoke_run.out_dir / "pretrain_log.json").read_text())
    assert PretrainConfig.from_log(logged) == SMOKE
    assert PretrainConfig.from_dict(json.loads(json.dumps(SMOKE.to_dict()))) == SMOKE
    with pytest.raises(ValueError, match="unknown PretrainConfig settings"):
        PretrainConfig.from_dict({"epochs": 2, "epoch": 3})


def test_missing_package_file_says_what_to_do() -> None:
    source = WeightsSource(kind="package_file", filename="pretrained/absent.safetensors")
    with pytest.raises(WeightsUnavailableError, match="reinstall medrobust"):
        fetch_weights("x", source)
    with pytest.raises(ValueError, match="filename"):
        WeightsSource(kind="package_file")


def test_shipped_weights_are_small_and_load_offline() -> None:
    assert model_spec("medrobust-mini")["weights"]["kind"] == "package_file"
    assert SHIPPED.stat().st_size <= 20 * 2**20
    model = create_model("medrobust-mini")
    assert not any(m.training for m in model.modules())
    assert model.weights_hash == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    assert model.weights_id == "package:medrobust/models/pretrained/medrobust-mini.safetensors"


def test_model_card_and_training_log_document_the_shipped_weights() -> None:
    digest = hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    assert digest in CARD.read_text(encoding="utf-8")
    log = json.loads(SHIPPED.with_name("medrobust-mini.pretrain_log.json").read_text())
    assert log["weights_sha256"] == digest
    assert log["arguments"]["epochs"] == len(log["history"]) and log["tiny"] is False
    assert PretrainConfig.from_log(log) == PretrainConfig()  # the defaults trained them


def test_shipped_model_classifies_pneumonia_above_chance(shared_data: Path) -> None:
    """64 test images through the evaluation path (224 px, default templates)."""
    model = create_model("medrobust-mini")
    data = load_medmnist("pneumoniamnist", "test", root=shared_data).subset(slice(0, 64))
    classifier = ZeroShotClassifier(model, data.class_names, None, data.modality)
    probs = classifier.predict_batch(prepare_images(data.to_tensor(), 224)).probabilities
    assert balanced_accuracy(probs, data.labels, "binary") >= 0.75  # the target; chance 0.5


def test_model_card_quotes_the_benchmark_results() -> None:
    results = json.loads(
        (Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "mini_zero_shot.json")
        .read_text(encoding="utf-8")
    )
    card = CARD.read_text(encoding="utf-8")
    assert results["weights_sha256"] == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    for row in results["rows"]:
        if row["setting"] == "default templates, 224 px":
            assert re.search(rf"{row['dataset']}.*{row['balanced_accuracy']:.3f}", card), row
