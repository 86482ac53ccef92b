"""The vocabulary of an evaluation condition: severity levels and the clean condition.

Every package (data layouts, corruption suites, the evaluation grid, reports and the CLI)
uses these names, so the default levels, the validation rule and the encoding of "clean"
are written once:

* a corruption severity is an integer in ``1..NUM_SEVERITIES`` (``check_severity``);
* the clean (uncorrupted) condition is the pair ``(CLEAN, CLEAN_SEVERITY)`` =
  ``("clean", 0)``: the key that result stores, benchmark folders and tables use for it.
  APIs that take an optional corruption also accept ``None`` for clean at their boundary
  and turn it into that pair with ``clean_condition``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "CLEAN",
    "CLEAN_SEVERITY",
    "NUM_SEVERITIES",
    "SEVERITIES",
    "Condition",
    "check_severity",
    "clean_condition",
    "conditions",
    "is_clean",
    "parse_severities",
]

NUM_SEVERITIES = 5
SEVERITIES: tuple[int, ...] = tuple(range(1, NUM_SEVERITIES + 1))
CLEAN = "clean"
CLEAN_SEVERITY = 0

Condition = tuple[str, int]
"""``(corruption, severity)``; ``(CLEAN, CLEAN_SEVERITY)`` for clean images."""


def check_severity(severity: Any) -> int:
    """``severity`` as an int when it is an integer in 1..5; anything else is a clear error."""
    if (
        isinstance(severity, bool)
        or not isinstance(severity, int | np.integer)
        or not 1 <= severity <= NUM_SEVERITIES
    ):
        raise ValueError(f"severity must be an integer in 1..{NUM_SEVERITIES}, got {severity!r}")
    return int(severity)


def parse_severities(text: str) -> tuple[int, ...]:
    """``"1-5"``, ``"3"`` or ``"1,3,5"`` -> sorted unique severities (an argparse ``type``)."""
    values: list[int] = []
    try:
        for part in text.split(","):
            lo, sep, hi = part.strip().partition("-")
            values.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"severities must look like 1-5, 3 or 1,3,5; got {text!r}"
        ) from None
    try:
        if not values:
            raise ValueError("no severity given")
        return tuple(sorted({check_severity(v) for v in values}))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"severities must be in 1..{NUM_SEVERITIES}, got {text!r}"
        ) from None


def is_clean(corruption: str | None) -> bool:
    """True for the clean condition, named ``CLEAN`` or (at optional-argument APIs) ``None``."""
    return corruption is None or corruption == CLEAN


def clean_condition(corruption: str | None, severity: int | None) -> Condition:
    """The canonical ``(corruption, severity)`` pair: clean -> ``("clean", 0)``, else checked."""
    if is_clean(corruption):
        if severity not in (None, CLEAN_SEVERITY):
            raise ValueError(f"the clean condition has no severity; got severity={severity!r}")
        return CLEAN, CLEAN_SEVERITY
    if not isinstance(corruption, str) or not corruption:
        raise ValueError(f"corruption must be a non-empty name, got {corruption!r}")
    if severity is None:
        raise ValueError(f"corruption {corruption!r} needs a severity (1..{NUM_SEVERITIES})")
    return corruption, check_severity(severity)


def conditions(
    corruptions: Iterable[str], severities: Sequence[int] = SEVERITIES, *, clean: bool = True
) -> list[Condition]:
    """The grid of conditions: clean first (when ``clean``), then each corruption x severity."""
    levels = [check_severity(s) for s in severities]
    grid: list[Condition] = [(CLEAN, CLEAN_SEVERITY)] if clean else []
    return grid + [(c, s) for c in corruptions for s in levels]
