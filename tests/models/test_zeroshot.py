"""Zero-shot scoring: checked by hand in float64 on tiny offline models."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from medrobust.models import ModelAdapter, create_model, save_model
from medrobust.models.zeroshot import ZeroShotClassifier, clear_text_cache, text_prototypes

CLASSES = ["normal", "pneumonia", "tumor"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("MEDROBUST_OFFLINE", "1")
    yield


@pytest.fixture(scope="module")
def clip() -> ModelAdapter:
    return create_model("clip-vit-b16", pretrained=False, tiny=True, seed=11)


@pytest.fixture(scope="module")
def siglip() -> ModelAdapter:
    model = create_model("medsiglip-448", pretrained=False, tiny=True, seed=12)
    with torch.no_grad():  # a non-trivial scale and bias, so both enter the check
        model.model.logit_scale.fill_(math.log(7.0))
        model.model.logit_bias.fill_(-0.75)
    return model


def _images(n: int = 4, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 37, 45), dtype=torch.uint8, generator=gen)


def _unit(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x / x.norm(dim=-1, keepdim=True)


def _manual_prototypes(model: ModelAdapter, prompts: list[list[str]]) -> torch.Tensor:
    rows = []
    with torch.no_grad():
        for per_class in prompts:
            emb = _unit(model.encode_text(model.tokenize(per_class)))
            rows.append(_unit(emb.mean(dim=0)))
    return torch.stack(rows)


def test_logits_are_scale_times_cosine(clip: ModelAdapter) -> None:
    clf = ZeroShotClassifier(clip, CLASSES, templates="paper", dataset_label="chest x ray")
    images = _images()
    out = clf.predict_batch(images)
    with torch.no_grad():
        image = _unit(clip.encode_image(clip.preprocess(images)))
    text = _manual_prototypes(clip, clf.prompts)
    expected = clip.logit_scale * image @ text.T
    torch.testing.assert_close(out.logits.double(), expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out.probabilities.sum(dim=1), torch.ones(4), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        out.probabilities, expected.softmax(dim=1).float(), atol=1e-5, rtol=0
    )
    assert clf.prompts[1] == ["a medical image of a pneumonia belonging to chest x ray"]


def test_siglip_adds_bias_and_uses_sigmoid(siglip: ModelAdapter) -> None:
    clf = ZeroShotClassifier(siglip, CLASSES)
    images = _images(3, seed=1)
    out = clf.predict_batch(images)
    with torch.no_grad():
        image = _unit(siglip.encode_image(siglip.preprocess(images)))
    expected = 7.0 * image @ _manual_prototypes(siglip, clf.prompts).T - 0.75
    torch.testing.assert_close(out.logits.double(), expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(
        out.probabilities, torch.sigmoid(expected).float(), atol=1e-5, rtol=0
    )
    assert not torch.allclose(out.probabilities.sum(dim=1), torch.ones(3))


def test_prompt_ensemble_is_renormalised_mean_of_normalised_embeddings(clip: ModelAdapter) -> None:
    clf = ZeroShotClassifier(clip, CLASSES, templates=["clip", "biomedclip"])
    assert all(len(p) == 6 for p in clf.prompts)
    torch.testing.assert_close(
        clf.text_features.double(), _manual_prototypes(clip, clf.prompts), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(clf.text_features.norm(dim=1), torch.ones(3), atol=1e-6, rtol=0)


def test_default_templates_are_the_models_own(clip: ModelAdapter) -> None:
    clf = ZeroShotClassifier(clip, CLASSES)
    assert clf.prompts[0] == [t.format("normal") for t in clip.default_templates]


def test_text_prototypes_are_computed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    model = create_model("clip-vit-b16", pretrained=False, tiny=True)
    calls: list[int] = []
    original = model.encode_text

    def counting(tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        calls.append(tokens["input_ids"].shape[0])
        return original(tokens)

    monkeypatch.setattr(model, "encode_text", counting)
    first = ZeroShotClassifier(model, CLASSES, templates="clip")
    assert calls == [3 * 5]  # one batch with every prompt of every class
    second = ZeroShotClassifier(model, CLASSES, templates="clip")
    assert len(calls) == 1 and torch.equal(first.text_features, second.text_features)
    ZeroShotClassifier(model, CLASSES, templates="biomedclip")  # other prompts: computed
    assert len(calls) == 2
    clear_text_cache(model)
    ZeroShotClassifier(model, CLASSES, templates="clip")
    assert len(calls) == 3


def test_text_prototypes_on_disk_are_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = save_model(create_model("clip-rn50", pretrained=False, tiny=True), tmp_path / "m")
    first = create_model(str(folder))
    protos = text_prototypes(first, [["normal"], ["pneumonia"]], cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache" / "text_prototypes").glob("*.safetensors"))) == 1
    second = create_model(str(folder))

    def fail(tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        raise AssertionError("text prototypes should come from the disk cache")

    monkeypatch.setattr(second, "encode_text", fail)
    again = text_prototypes(second, [["normal"], ["pneumonia"]], cache_dir=tmp_path / "cache")
    assert torch.equal(protos, again)


def test_random_weights_are_never_cached_on_disk(clip: ModelAdapter, tmp_path: Path) -> None:
    text_prototypes(clip, [["a"], ["b"]], cache_dir=tmp_path)
    assert not (tmp_path / "text_prototypes").exists()


def test_scoring_requires_eval_mode_and_keeps_it() -> None:
    model = create_model("medclip-resnet50", pretrained=False, tiny=True)
    clf = ZeroShotClassifier(model, CLASSES)
    clf.predict_batch(_images(2))
    assert not model.training and not any(m.training for m in model.modules())
    model.vision_module.train()  # e.g. left over from fine-tuning: BatchNorm on batch statistics
    with pytest.raises(RuntimeError, match=r"model\.eval\(\)"):
        clf.predict_batch(_images(2))
    model.eval()
    clf.predict_batch(_images(2))


def test_predict_batch_matches_the_manual_pipeline_and_is_batch_invariant(
    clip: ModelAdapter,
) -> None:
    clf = ZeroShotClassifier(clip, CLASSES)
    images = _images(4, seed=3)
    out = clf.predict_batch(images)
    torch.testing.assert_close(out.logits, clf.logits(clip.preprocess(images)))
    singles = torch.cat([clf.predict_batch(images[i : i + 1]).logits for i in range(4)])
    torch.testing.assert_close(out.logits, singles, atol=1e-5, rtol=1e-5)
    grey = images[:, :1]
    assert clf.predict_batch(grey).logits.shape == (4, 3)


def test_predict_batch_refuses_preprocessed_floats(clip: ModelAdapter) -> None:
    clf = ZeroShotClassifier(clip, CLASSES)
    with pytest.raises(TypeError, match="uint8"):
        clf.predict_batch(clip.preprocess(_images(1)))


def test_bf16_autocast_stays_close_to_fp32(clip: ModelAdapter) -> None:
    fp32 = ZeroShotClassifier(clip, CLASSES).predict_batch(_images(2))
    bf16 = ZeroShotClassifier(clip, CLASSES, precision="bf16").predict_batch(_images(2))
    assert bf16.logits.dtype == torch.float32
    torch.testing.assert_close(bf16.probabilities, fp32.probabilities, atol=0.05, rtol=0)


def test_bad_arguments_raise(clip: ModelAdapter) -> None:
    with pytest.raises(ValueError, match="dataset label"):
        ZeroShotClassifier(clip, CLASSES, templates="paper")
    with pytest.raises(ValueError, match="precision"):
        ZeroShotClassifier(clip, CLASSES, precision="int8")
    with pytest.raises(ValueError, match="one list of prompts per class"):
        ZeroShotClassifier(clip, CLASSES, prompts=[["a"], ["b"]])
    explicit = ZeroShotClassifier(clip, ["a", "b"], prompts=[["x-ray, normal"], ["x-ray, sick"]])
    assert explicit.prompts == [["x-ray, normal"], ["x-ray, sick"]]
