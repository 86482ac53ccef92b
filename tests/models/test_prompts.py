"""Prompt templates: resolution of names, filling, validation."""

from __future__ import annotations

import pytest

from medrobust.models import TEMPLATE_SETS, build_prompts, resolve_templates


def test_paper_template_fills_class_and_dataset() -> None:
    prompts = build_prompts(["normal", "pneumonia"], "chest x-ray", "paper")
    assert prompts == [
        ["a medical image of a normal belonging to chest x-ray"],
        ["a medical image of a pneumonia belonging to chest x-ray"],
    ]


def test_paper_template_needs_a_dataset_label() -> None:
    with pytest.raises(ValueError, match="dataset label"):
        build_prompts(["normal"], None, "paper")


def test_ensemble_of_sets_and_literals_keeps_order_without_duplicates() -> None:
    resolved = resolve_templates(["biomedclip", "a scan of {}", "biomedclip"])
    assert resolved == ("this is a photo of {}", "a scan of {}")
    prompts = build_prompts(["benign", "malignant"], "breast ultrasound", ["clip", "paper"])
    assert all(len(p) == len(TEMPLATE_SETS["clip"]) + 1 for p in prompts)
    assert prompts[1][0] == "a medical image of malignant."
    assert prompts[1][-1] == "a medical image of a malignant belonging to breast ultrasound"


def test_one_field_templates_ignore_the_dataset_label() -> None:
    assert build_prompts(["tumor"], "pathology", "{}") == [["tumor"]]


@pytest.mark.parametrize(
    "bad",
    ["no field at all", "{} {} {}", "a {name} image", "unknown-set"],
)
def test_bad_templates_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        resolve_templates(bad)


def test_bad_class_names_are_rejected() -> None:
    with pytest.raises(ValueError):
        build_prompts([], None, "clip")
    with pytest.raises(ValueError):
        build_prompts("normal", None, "clip")  # a string is not a list of names
    with pytest.raises(ValueError):
        build_prompts(["normal", " "], None, "clip")
