"""Atomic writes: a file appears complete or not at all."""

from __future__ import annotations

import numpy as np
import pytest

from medrobust._files import atomic_path, write_bytes_atomic, write_text_atomic


def test_atomic_path_renames_on_success_and_keeps_the_suffix(tmp_path):
    target = tmp_path / "sub" / "a.npz"
    with atomic_path(target, suffix=".npz") as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".npz") and tmp.exists()
        np.savez(tmp, x=np.arange(3))  # would append .npz to a name without it
    with np.load(target) as f:
        np.testing.assert_array_equal(f["x"], np.arange(3))
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.npz"]
    assert (target.stat().st_mode & 0o777) == 0o644


def test_atomic_path_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.md"
    write_text_atomic("old", target)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]
    assert write_bytes_atomic(b"new", target) == target and target.read_bytes() == b"new"
