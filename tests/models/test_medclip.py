"""MedCLIP's towers against its published formulas, re-computed by hand."""

from __future__ import annotations

import math

import torch

from medrobust.models import create_model


def test_text_embedding_is_medclip_layer_mean_of_the_prompt_alone() -> None:
    model = create_model("medclip-resnet50", pretrained=False, tiny=True, seed=1)
    prompts = ["pneumonia", "a chest x ray showing normal lung tissue"]
    tokens = model.tokenize(prompts)
    with torch.no_grad():
        ours = model.encode_text(tokens)
        bert = model.model.text_model.model
        for i, n_real in enumerate(tokens["attention_mask"].sum(dim=1).tolist()):
            ids = tokens["input_ids"][i : i + 1, :n_real]  # the prompt alone: no padding at all
            hidden = bert(input_ids=ids, output_hidden_states=True).hidden_states
            # MedCLIP: stack layers 1, 2 and last, mean over tokens, then over layers, project
            stacked = torch.stack([hidden[1], hidden[2], hidden[-1]])
            embed = stacked.permute(1, 0, 2, 3).mean(2).mean(1)
            expected = model.model.text_model.projection_head(embed)[0]
            torch.testing.assert_close(ours[i], expected, atol=1e-5, rtol=1e-5)


def test_text_embedding_does_not_depend_on_batch_mates() -> None:
    model = create_model("medclip-swin", pretrained=False, tiny=True, seed=2)
    with torch.no_grad():
        alone = model.encode_text(model.tokenize(["benign"]))
        together = model.encode_text(model.tokenize(["benign", "a malignant mass in the breast"]))
    torch.testing.assert_close(alone[0], together[0], atol=1e-5, rtol=1e-5)


def test_logit_scale_is_clamped_like_medclip() -> None:
    model = create_model("medclip-resnet50", pretrained=False, tiny=True)
    assert abs(model.logit_scale - 1 / 0.07) < 1e-4  # float32 parameter
    with torch.no_grad():
        model.model.logit_scale.fill_(10.0)
    assert abs(model.logit_scale - math.exp(4.6052)) < 1e-4  # MedCLIP's clamp, about 100


def test_grey_images_enter_as_three_equal_channels() -> None:
    model = create_model("medclip-resnet50", pretrained=False, tiny=True)
    rgb = torch.randint(
        0, 256, (1, 3, 20, 30), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    pixels = model.preprocess(rgb)
    assert torch.equal(pixels[:, 0], pixels[:, 1]) and torch.equal(pixels[:, 1], pixels[:, 2])
