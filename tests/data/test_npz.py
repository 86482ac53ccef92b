"""NpzWriter / load_npz: np.load compatibility, atomicity, bounded reads, clear errors."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from medrobust._files import file_sha256
from medrobust.data import (
    NpzFormatError,
    NpzWriter,
    load_npz,
    load_npz_rows,
    npz_array_info,
    npz_is_complete,
    save_npz_atomic,
)


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "images": rng.integers(0, 256, size=(12, 9, 7, 3), dtype=np.uint8),
        "labels": rng.integers(0, 5, size=(12, 1)).astype(np.uint8),
        "scores": rng.normal(size=(12, 4)).astype(np.float32),
    }


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("compress", [False, True])
def test_streamed_chunks_read_back_identically_by_np_load(tmp_path: Path, compress: bool) -> None:
    ref = _arrays()
    path = tmp_path / "out.npz"
    with NpzWriter(path, compress=compress) as w:
        w.add("labels", ref["labels"])
        w.declare("images", ref["images"].shape, np.uint8)
        for start in range(0, 12, 5):  # uneven chunks: 5, 5, 2
            w.write("images", ref["images"][start : start + 5])
        w.declare("scores", ref["scores"].shape, np.float32)
        w.write("scores", ref["scores"][:3])
        w.write("scores", ref["scores"][3:])
        assert not path.exists()  # nothing under the final name before close
    assert _leftovers(tmp_path) == ["out.npz"]
    with np.load(path, allow_pickle=False) as f:
        assert sorted(f.files) == ["images", "labels", "scores"]
        for key, value in ref.items():
            assert f[key].dtype == value.dtype
            np.testing.assert_array_equal(f[key], value)
    loaded = load_npz(path)
    for key, value in ref.items():
        np.testing.assert_array_equal(loaded[key], value)
    kinds = {i.filename: i.compress_type for i in zipfile.ZipFile(path).infolist()}
    want = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    assert set(kinds.values()) == {want}
    # stored members are memory-mapped, compressed ones read into memory
    assert isinstance(loaded["images"], np.memmap) is (not compress)


@pytest.mark.parametrize("compress", [False, True])
def test_sha256_taken_while_writing_is_the_files_digest(tmp_path: Path, compress: bool) -> None:
    ref = _arrays(3)
    path = tmp_path / "hashed.npz"
    writer = NpzWriter(path, compress=compress)
    writer.add("labels", ref["labels"])
    writer.declare("images", ref["images"].shape, np.uint8)
    with pytest.raises(ValueError, match="has not completed"):
        _ = writer.sha256
    for start in range(0, 12, 4):
        writer.write("images", ref["images"][start : start + 4])
    writer.close()
    assert writer.sha256 == file_sha256(path)
    # the zip crc of every member is still checked on read
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None


def test_aborted_writer_has_no_digest(tmp_path: Path) -> None:
    writer = NpzWriter(tmp_path / "gone.npz")
    writer.add("labels", np.arange(3))
    writer.abort()
    with pytest.raises(ValueError, match="has not completed"):
        _ = writer.sha256


def test_load_npz_reads_np_savez_files(tmp_path: Path) -> None:
    ref = _arrays(1)
    np.savez(tmp_path / "a.npz", **ref)
    np.savez_compressed(tmp_path / "b.npz", **ref)
    for name in ("a.npz", "b.npz"):
        got = load_npz(tmp_path / name, ["scores", "images"])
        assert sorted(got) == ["images", "scores"]
        np.testing.assert_array_equal(got["images"], ref["images"])
        np.testing.assert_array_equal(got["scores"], ref["scores"])
    assert npz_array_info(tmp_path / "b.npz")["images"] == ((12, 9, 7, 3), np.dtype(np.uint8))


@pytest.mark.parametrize("compress", [False, True])
def test_load_rows_matches_slice(tmp_path: Path, compress: bool) -> None:
    ref = _arrays(2)["images"]
    path = save_npz_atomic(tmp_path / "r.npz", compress=compress, images=ref)
    np.testing.assert_array_equal(load_npz_rows(path, "images", 4, 9), ref[4:9])
    np.testing.assert_array_equal(load_npz_rows(path, "images", 0, 0), ref[:0])
    with pytest.raises(IndexError, match=r"rows 10:13 out of range for 'images' of shape \(12,"):
        load_npz_rows(path, "images", 10, 13)


def test_exception_inside_with_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    with pytest.raises(RuntimeError, match="boom"), NpzWriter(path) as w:
        w.declare("images", (4, 2, 2), np.uint8)
        w.write("images", np.zeros((2, 2, 2), np.uint8))
        raise RuntimeError("boom")
    assert _leftovers(tmp_path) == []


def test_incomplete_write_raises_and_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    w = NpzWriter(path)
    w.declare("images", (4, 2, 2), np.uint8)
    w.declare("labels", (4,), np.int64)
    w.write("images", np.zeros((3, 2, 2), np.uint8))
    with pytest.raises(ValueError, match=r"not fully written.*images.*3/4.*labels.*0/4"):
        w.close()
    assert _leftovers(tmp_path) == []


def test_incomplete_write_in_with_block_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not fully written"), NpzWriter(tmp_path / "x.npz") as w:
        w.declare("images", (4, 2, 2), np.uint8)
    assert _leftovers(tmp_path) == []


def test_existing_file_is_kept_when_rewrite_fails(tmp_path: Path) -> None:
    path = save_npz_atomic(tmp_path / "x.npz", a=np.arange(3))
    with pytest.raises(RuntimeError), NpzWriter(path) as w:
        w.add("a", np.arange(5))
        raise RuntimeError
    np.testing.assert_array_equal(load_npz(path)["a"], np.arange(3))
    assert _leftovers(tmp_path) == ["x.npz"]


def test_writer_rejects_bad_chunks(tmp_path: Path) -> None:
    w = NpzWriter(tmp_path / "x.npz")
    w.declare("images", (4, 2, 2), np.uint8)
    w.declare("labels", (4,), np.int64)
    with pytest.raises(TypeError, match="dtype float32, declared uint8"):
        w.write("images", np.zeros((1, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"shape \(1, 3, 2\)"):
        w.write("images", np.zeros((1, 3, 2), np.uint8))
    with pytest.raises(ValueError, match="too many rows"):
        w.write("images", np.zeros((5, 2, 2), np.uint8))
    with pytest.raises(KeyError, match="not declared"):
        w.write("other", np.zeros(1))
    w.write("images", np.zeros((1, 2, 2), np.uint8))
    assert w.rows_written("images") == 1
    with pytest.raises(ValueError, match=r"'images' is incomplete \(1 of 4 rows\)"):
        w.write("labels", np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="already declared"):
        w.declare("images", (1,), np.uint8)
    with pytest.raises(TypeError, match="object"):
        w.declare("objs", (2,), object)
    w.abort()
    assert _leftovers(tmp_path) == []


def test_empty_arrays_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "e.npz"
    with NpzWriter(path) as w:
        w.declare("images", (0, 5, 5), np.uint8)
        w.add("labels", np.zeros((0,), np.int64))
    with np.load(path) as f:
        assert f["images"].shape == (0, 5, 5)
        assert f["labels"].shape == (0,)


def test_corrupt_and_truncated_files_get_clear_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(NpzFormatError, match=r"garbage\.npz is not a readable npz"):
        load_npz(garbage)
    good = save_npz_atomic(tmp_path / "good.npz", images=np.ones((50, 20, 20), np.uint8))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(NpzFormatError, match=r"cut\.npz"):
        load_npz(cut)
    assert not npz_is_complete(cut, ["images"])
    assert not npz_is_complete(garbage, ["images"])
    assert npz_is_complete(good, ["images"], rows=50)
    assert not npz_is_complete(good, ["images"], rows=49)
    assert not npz_is_complete(good, ["images", "labels"])
    with pytest.raises(FileNotFoundError, match="not found"):
        load_npz(tmp_path / "absent.npz")


def test_missing_keys_and_pickled_objects_refused(tmp_path: Path) -> None:
    path = save_npz_atomic(tmp_path / "k.npz", images=np.ones((2, 3), np.uint8))
    with pytest.raises(
        NpzFormatError, match=r"lacks array\(s\) \['labels'\]; arrays present: \['images'\]"
    ):
        load_npz(path, ["images", "labels"])
    objs = tmp_path / "objs.npz"
    np.savez(objs, a=np.array([{"x": 1}, None], dtype=object))
    with pytest.raises(NpzFormatError, match=r"Python objects.*pickle"):
        load_npz(objs)
    with pytest.raises(NpzFormatError, match="Python objects"):
        load_npz(objs, mmap=False)
