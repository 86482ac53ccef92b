"""The one severity rule and the one encoding of the clean condition."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from medrobust.severity import (
    CLEAN,
    CLEAN_SEVERITY,
    SEVERITIES,
    check_severity,
    clean_condition,
    conditions,
    is_clean,
    parse_severities,
)


def test_check_severity_accepts_integers_1_to_5_only():
    assert SEVERITIES == (1, 2, 3, 4, 5)
    assert [check_severity(s) for s in (1, np.int64(5))] == [1, 5]
    assert type(check_severity(np.int32(3))) is int
    for bad in (0, 6, -1, True, 2.0, "3", None):
        with pytest.raises(ValueError, match=r"severity must be an integer in 1\.\.5"):
            check_severity(bad)


def test_parse_severities_ranges_lists_and_errors():
    assert parse_severities("1-5") == SEVERITIES
    assert parse_severities("5,1,3,3") == (1, 3, 5)
    assert parse_severities("2") == (2,)
    for bad, message in (("0-2", "in 1..5"), ("6", "in 1..5"), ("a", "look like"), ("", "look like")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse_severities(bad)


def test_clean_has_one_canonical_pair():
    assert (CLEAN, CLEAN_SEVERITY) == ("clean", 0)
    assert is_clean(None) and is_clean("clean") and not is_clean("pixelate")
    assert clean_condition(None, None) == clean_condition("clean", 0) == ("clean", 0)
    assert clean_condition("pixelate", np.int64(2)) == ("pixelate", 2)
    with pytest.raises(ValueError, match="clean condition has no severity"):
        clean_condition(None, 3)
    with pytest.raises(ValueError, match="needs a severity"):
        clean_condition("pixelate", None)
    with pytest.raises(ValueError, match=r"1\.\.5"):
        clean_condition("pixelate", 0)


def test_conditions_grid_is_clean_first_then_corruption_major():
    assert conditions(["a", "b"], (1, 5)) == [("clean", 0), ("a", 1), ("a", 5), ("b", 1), ("b", 5)]
    assert conditions(["a"], (2,), clean=False) == [("a", 2)]
    with pytest.raises(ValueError):
        conditions(["a"], (0,))
