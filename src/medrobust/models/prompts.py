"""Prompt templates for zero-shot classification and the prompts they make.

A template has one ``{}`` field (the class name) or two (class name, dataset label), filled
positionally. Template sets are named (``paper``, ``clip``, ``biomedclip``, ...); several
templates for a class form an ensemble (their normalised text embeddings are averaged).
"""

from __future__ import annotations

import string
from collections.abc import Sequence

__all__ = ["TEMPLATE_SETS", "build_prompts", "resolve_templates", "template_fields"]

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    # Imam et al. 2025 (RobustMedCLIP) evaluation prompt: class name and dataset.
    "paper": ("a medical image of a {} belonging to {}",),
    # BiomedCLIP model card.
    "biomedclip": ("this is a photo of {}",),
    # OpenAI-style templates adapted to medical images.
    "clip": (
        "a medical image of {}.",
        "a medical image showing {}.",
        "a photo of {}.",
        "an image of {}.",
        "a close-up medical image of {}.",
    ),
    # SigLIP / MedSigLIP model card style.
    "siglip": ("a photo of {}",),
    # PLIP / QuiltNet papers: pathology captions.
    "pathology": ("an H&E image of {}.", "a histopathology image of {}."),
    "classname": ("{}",),
}


def template_fields(template: str) -> int:
    """Number of ``{}`` fields; raises ValueError unless they are 1 or 2 positional fields."""
    if not isinstance(template, str):
        raise TypeError(f"a template must be a string, got {type(template).__name__}")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ValueError(f"malformed template {template!r}: {exc}") from exc
    if any(f != "" for f in fields) or len(fields) not in (1, 2):
        raise ValueError(
            f"template {template!r} must have one '{{}}' (class) or two '{{}}' (class, dataset) "
            "positional fields"
        )
    return len(fields)


def resolve_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """Template-set names and/or literal templates -> a flat tuple of templates.

    A string is a set name from :data:`TEMPLATE_SETS` or one literal template (it contains
    ``{}``); a sequence may mix both and is concatenated (an ensemble).
    """
    items = [templates] if isinstance(templates, str) else list(templates)
    if not items:
        raise ValueError("no templates given")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"templates must be strings, got {type(item).__name__}")
        if item in TEMPLATE_SETS:
            out.extend(TEMPLATE_SETS[item])
        elif "{" in item:
            template_fields(item)
            out.append(item)
        else:
            raise ValueError(
                f"{item!r} is neither a template (no '{{}}') nor a template set; "
                f"known sets: {sorted(TEMPLATE_SETS)}"
            )
    return tuple(dict.fromkeys(out))


def build_prompts(
    class_names: Sequence[str],
    dataset_label: str | None,
    templates: str | Sequence[str],
) -> list[list[str]]:
    """One list of prompts per class: every template filled with the class name (and dataset).

    Two-field templates (the paper's) need ``dataset_label``; it is ignored by one-field ones.
    """
    if isinstance(class_names, str) or not class_names:
        raise ValueError("class_names must be a non-empty sequence of strings")
    if not all(isinstance(c, str) and c.strip() for c in class_names):
        raise ValueError(f"class names must be non-empty strings, got {list(class_names)}")
    resolved = resolve_templates(templates)
    prompts: list[list[str]] = []
    for name in class_names:
        per_class = []
        for t in resolved:
            if template_fields(t) == 2:
                if not dataset_label:
                    raise ValueError(
                        f"template {t!r} needs a dataset label (e.g. 'fundus photography')"
                    )
                per_class.append(t.format(name, dataset_label))
            else:
                per_class.append(t.format(name))
        prompts.append(per_class)
    return prompts
