"""CoOp-style prompt learning: exact at a template init, only the context learns, every family."""

from __future__ import annotations

import pytest
import torch

from medrobust.adaptation import LoraSettings, LoraTrainer, apply_lora
from medrobust.adaptation.lora import lora_parameters
from medrobust.adaptation.prompt import PromptLearner, PromptSettings, locate_context
from medrobust.adaptation.train import PromptHeads
from medrobust.models.zeroshot import ZeroShotClassifier

FAMILIES = (  # one model per text-tower kind (see tests/models/test_text_embeddings.py)
    "medrobust-mini",
    "clip-vit-b16",
    "biomedclip",
    "pubmedclip-vit-b32",
    "medsiglip-448",
    "medclip-resnet50",
)
NAMES = ["benign", "malignant tumor", "normal"]


def _pixels(model, n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return model.preprocess(torch.randint(0, 256, (n, 3, 28, 28), dtype=torch.uint8, generator=g))


def _logits(model, image_features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    logits = model.logit_scale * image_features @ prototypes.T
    return logits if model.logit_bias is None else logits + model.logit_bias


@pytest.mark.parametrize("context", ["shared", "class"])
@pytest.mark.parametrize("name", FAMILIES)
def test_template_init_reproduces_the_fixed_prompt(tiny, name: str, context: str) -> None:
    model = tiny(name)
    fixed = ZeroShotClassifier(model, NAMES, ("a photo of a {}.",))
    learner = PromptLearner(model, PromptSettings(context=context), class_names=NAMES)
    assert learner.n_tokens == 4
    with torch.no_grad():
        prototypes = learner.text_features(model, NAMES)
        features = fixed.image_features(_pixels(model))
    torch.testing.assert_close(prototypes, fixed.text_features, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        _logits(model, features, prototypes), fixed.logits(_pixels(model)), rtol=0, atol=1e-4
    )


def _train_step(model, learner) -> LoraTrainer:
    """One step of the trainer adapt uses, on 4 uint8 images, LoRA (if applied) and context."""
    trainer = LoraTrainer(model, PromptHeads(learner, [NAMES], lr=3e-2), lr=1e-2,
                          weight_decay=0.0, total_steps=10, warmup_steps=0)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 28, 28), dtype=torch.uint8, generator=g)
    trainer.train_step(images, torch.tensor([0, 1, 2, 0]), 0)
    assert trainer.steps == 1
    return trainer


@pytest.mark.parametrize("name", FAMILIES)
def test_only_the_context_changes_in_a_step(tiny, name: str) -> None:
    model = tiny(name)
    model.requires_grad_(False)
    learner = PromptLearner(model, PromptSettings())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = learner.ctx.detach().clone()
    trainer = _train_step(model, learner)
    assert trainer.params == [learner.ctx]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(learner.ctx.detach(), ctx)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", ["medrobust-mini", "biomedclip", "medsiglip-448"])
def test_lora_and_context_learn_jointly(tiny, name: str) -> None:
    model = tiny(name)
    apply_lora(model, LoraSettings(rank=2))  # freezes the base, LoRA trainable
    with torch.no_grad():  # B = 0 at init: give B values so A gets gradients too
        for key, p in lora_parameters(model):
            if ".lora_B." in key:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    learner = PromptLearner(model, PromptSettings(context="class"), class_names=NAMES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = learner.ctx.detach().clone()
    trainer = _train_step(model, learner)
    groups = trainer.optimizer.param_groups
    assert [g["initial_lr"] for g in groups] == [1e-2, 3e-2]  # LoRA, context: own rates
    assert groups[1]["params"] == [learner.ctx]
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".lora_" in k for k in changed)
    assert {".lora_A." in k for k in changed} == {True, False}
    assert not (learner.ctx.detach() == ctx).all(dim=(1, 2)).any()  # every class's row moved


def test_class_context_rows_are_looked_up_by_name(tiny) -> None:
    model = tiny("medrobust-mini")
    learner = PromptLearner(
        model, PromptSettings(context="class", init="random", tokens=3), class_names=NAMES
    )
    assert learner.ctx.shape == (3, 3, 32)
    learner.text_features(model, ["normal", "benign"]).sum().backward()
    grad = learner.ctx.grad.abs().sum(dim=(1, 2))
    assert grad[0] > 0 and grad[2] > 0 and grad[1] == 0  # 'malignant tumor' was not used
    with pytest.raises(ValueError, match=r"no learned context for classes \['glioma'\]"):
        learner.text_features(model, ["glioma", "normal"])


def test_random_init_is_seeded_and_scaled(tiny) -> None:
    model = tiny("medrobust-mini")
    state = torch.random.get_rng_state()
    a = PromptLearner(model, PromptSettings(init="random", tokens=16), seed=3)
    b = PromptLearner(model, PromptSettings(init="random", tokens=16), seed=3)
    c = PromptLearner(model, PromptSettings(init="random", tokens=16), seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a.ctx.shape == (16, 32) and torch.equal(a.ctx, b.ctx) and not torch.equal(a.ctx, c.ctx)
    assert 0.017 < float(a.ctx.detach().std()) < 0.023 and abs(float(a.ctx.detach().mean())) < 0.005
    assert PromptLearner(model, PromptSettings(init="random")).n_tokens == 4  # CoOp's default M
    prompts = a.prompts(["benign"])
    assert prompts == [["[16 learned shared context tokens, random init] benign."]]


@pytest.mark.parametrize("name", ["medrobust-mini", "biomedclip", "medsiglip-448"])
def test_context_tokens_sit_after_the_start_tokens(tiny, name: str) -> None:
    model = tiny(name)
    start, ids = locate_context(model, "a photo of a")
    full = model.tokenize(["a photo of a benign."])["input_ids"][0]
    assert start == 1 and torch.equal(full[start : start + 4], ids)
    learner = PromptLearner(model, PromptSettings(init="random", tokens=5))
    tokens = learner.tokens(model, ["benign"])
    plain = model.tokenize(["benign."])
    assert torch.equal(tokens["input_ids"][0, 6:], plain["input_ids"][0, 1:-5])
    assert tokens["attention_mask"].sum() == plain["attention_mask"].sum() + 5


def test_prompt_too_long_for_the_context_is_refused(tiny) -> None:
    model = tiny("medsiglip-448")  # 16 tokens
    learner = PromptLearner(model, PromptSettings(init="random", tokens=8))
    with pytest.raises(ValueError, match="exceed its context length 16"):
        learner.text_features(model, ["a very long class name with many words in it"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"context": "dataset"}, "context must be one of"),
        ({"init": ""}, "non-empty text"),
        ({"init": "a photo of a {}"}, "goes into class_template"),
        ({"tokens": 0}, "tokens must be an int >= 1"),
        ({"tokens": True}, "tokens must be an int >= 1"),
        ({"class_template": "{} of {}"}, "exactly one"),
        ({"class_template": "benign"}, "must have one"),
        ({"init_std": 0.0}, "init_std must be positive"),
        ({"init_std": float("nan")}, "finite"),
    ],
)
def test_bad_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PromptSettings(**kwargs)


def test_text_init_fixes_the_number_of_tokens(tiny) -> None:
    model = tiny("medrobust-mini")
    with pytest.raises(ValueError, match=r"'a photo of a' is 4 tokens .* not tokens=8"):
        PromptLearner(model, PromptSettings(tokens=8))
    assert PromptLearner(model, PromptSettings(init="an image of", tokens=3)).n_tokens == 3
    with pytest.raises(ValueError, match="needs the class names"):
        PromptLearner(model, PromptSettings(context="class"))


def test_prompt_tuning_is_refused_under_torchrun(tiny) -> None:
    from medrobust._distributed import World

    model = tiny("medrobust-mini")
    learner = PromptLearner(model, PromptSettings())
    with pytest.raises(ValueError, match="prompt tuning under torchrun is not supported"):
        LoraTrainer(model, PromptHeads(learner, [NAMES], lr=1e-2), lr=1e-2, weight_decay=0.0,
                    total_steps=1, warmup_steps=0, world=World(rank=0, size=2))
