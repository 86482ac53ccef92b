"""The user cache of arrays: hits return the stored array, damage and bad folders rebuild."""

from __future__ import annotations

import numpy as np
import pytest

from medrobust._cache import CACHE_ENV, cache_dir, cached_array


def _builder(calls: list[int], value: int = 7):
    def build() -> np.ndarray:
        calls.append(1)
        return np.full((4, 3), value, np.int32)
    return build


def test_second_call_reads_the_stored_array(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    calls: list[int] = []
    first = cached_array("t", ["k", 1], _builder(calls), shape=(4, 3), dtype=np.int32)
    second = cached_array("t", ["k", 1], _builder(calls), shape=(4, 3), dtype=np.int32)
    assert len(calls) == 1 and np.array_equal(first, second)
    other = cached_array("t", ["k", 2], _builder(calls, 9), shape=(4, 3), dtype=np.int32)
    assert len(calls) == 2 and other[0, 0] == 9
    assert len(list(tmp_path.glob("t-*.npy"))) == 2 and not list(tmp_path.glob(".*tmp*"))


def test_damaged_entry_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    calls: list[int] = []
    cached_array("t", "k", _builder(calls), shape=(4, 3), dtype=np.int32)
    (entry,) = tmp_path.glob("t-*.npy")
    entry.write_bytes(entry.read_bytes()[:40])
    again = cached_array("t", "k", _builder(calls), shape=(4, 3), dtype=np.int32)
    assert len(calls) == 2 and again.shape == (4, 3)
    np.save(entry, np.zeros((2, 2), np.int32))  # wrong shape: rebuilt too
    assert cached_array("t", "k", _builder(calls), shape=(4, 3), dtype=np.int32)[0, 0] == 7
    assert len(calls) == 3


def test_unwritable_or_disabled_cache_still_builds(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    calls: list[int] = []
    assert cached_array("t", "k", _builder(calls), shape=(4, 3), dtype=np.int32)[0, 0] == 7
    monkeypatch.setenv(CACHE_ENV, "off")
    assert cache_dir() is None
    cached_array("t", "k", _builder(calls), shape=(4, 3), dtype=np.int32)
    assert len(calls) == 2


def test_build_of_another_shape_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    with pytest.raises(ValueError, match="expected"):
        cached_array("t", "k", _builder([]), shape=(5, 3), dtype=np.int32)
