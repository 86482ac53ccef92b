"""Benchmark generation: layouts, manifest, determinism, resume and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medrobust.corruptions import corrupt, get_suite
from medrobust.corruptions.generate import GenerateConfig, generate_benchmark
from medrobust.data import load_medmnist


@pytest.fixture
def breast(shared_data):
    return load_medmnist("breastmnist", split="test", root=shared_data, download=False).subset(range(10))


def _suite():
    return get_suite("medmnist-c/breastmnist").select(["pixelate", "speckle_noise"])


def test_medimeta_c_layout_is_complete_and_pixel_aligned(breast, tmp_path):
    manifest = generate_benchmark(
        breast, _suite(), tmp_path,
        GenerateConfig(layout="medimeta-c", severities=(1, 5), batch_size=4), progress=False,
    )
    folder = tmp_path / "breastmnist" / "test"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["clean.npz", "pixelate_severity_1.npz", "pixelate_severity_5.npz",
                     "speckle_noise_severity_1.npz", "speckle_noise_severity_5.npz"]
    with np.load(folder / "clean.npz") as f:
        clean, labels = f["images"], f["labels"]
    assert clean.shape == (10, 224, 224) and clean.dtype == np.uint8
    assert np.array_equal(labels, breast.labels)
    with np.load(folder / "speckle_noise_severity_5.npz") as f:
        noisy = f["images"]
    # speckle noise is multiplicative: black stays black, pixel for pixel
    assert np.all(noisy[clean == 0] == 0)
    info = json.loads(manifest.read_text())
    assert info["complete"] and info["config"]["seed"] == 0
    assert info["config"]["suite"]["corruptions"]["pixelate"]["params"][0] == 0.3
    assert len(info["files"]) == 5 and all(len(v["sha256"]) == 64 for v in info["files"].values())
    assert {"torch", "numpy", "medrobust"} <= set(info["versions"])


def test_rgb_dataset_every_medimeta_c_corruption(shared_data, tmp_path):
    """RGB batches reach the corruptions as channels-last views; every MediMeta-C corruption
    writes a complete file whose images equal the same corruption applied in memory."""
    retina = load_medmnist("retinamnist", split="test", root=shared_data, download=False).subset(range(6))
    suite = get_suite("medimeta-c")
    generate_benchmark(retina, suite, tmp_path, GenerateConfig(severities=(3,), batch_size=4),
                       progress=False)
    folder = tmp_path / "retinamnist" / "test"
    with np.load(folder / "clean.npz") as f:
        clean = f["images"]
    assert clean.shape == (6, 224, 224, 3)
    for name in suite.corruptions:
        with np.load(folder / f"{name}_severity_3.npz") as f:
            written = f["images"]
        assert written.shape == clean.shape and written.dtype == np.uint8, name
        assert np.array_equal(written, corrupt(clean, name, 3, seed=0, suite=suite)), name


def test_medmnist_c_layout_is_severity_major(breast, tmp_path):
    generate_benchmark(breast, _suite(), tmp_path, GenerateConfig(layout="medmnist-c"), progress=False)
    with np.load(tmp_path / "breastmnist" / "pixelate.npz") as f:
        images, labels = f["test_images"], f["test_labels"]
    assert images.shape == (50, 224, 224) and labels.shape == (50, 1)
    assert np.array_equal(labels[10:20, 0], breast.labels)
    # stronger pixelation deviates more from clean, block by block
    with np.load(tmp_path / "breastmnist" / "clean.npz") as f:
        clean = f["test_images"].astype(float)
    dev = [np.abs(images[10 * k : 10 * (k + 1)] - clean).mean() for k in range(5)]
    assert dev == sorted(dev)


def test_same_seed_byte_identical_independent_of_batch_size(breast, tmp_path):
    for name, bs in (("a", 3), ("b", 10)):
        generate_benchmark(breast, _suite(), tmp_path / name,
                           GenerateConfig(severities=(2,), batch_size=bs), progress=False)
    for f in ("clean.npz", "speckle_noise_severity_2.npz"):
        a = (tmp_path / "a" / "breastmnist" / "test" / f).read_bytes()
        b = (tmp_path / "b" / "breastmnist" / "test" / f).read_bytes()
        assert a == b


def test_resume_skips_finished_files_and_refuses_other_settings(breast, tmp_path):
    generate_benchmark(breast, _suite(), tmp_path, GenerateConfig(severities=(1,)), progress=False)
    target = tmp_path / "breastmnist" / "test" / "pixelate_severity_1.npz"
    before = target.stat().st_mtime_ns
    (tmp_path / "breastmnist" / "test" / "speckle_noise_severity_1.npz").unlink()
    generate_benchmark(breast, _suite(), tmp_path, GenerateConfig(severities=(1,)), progress=False)
    assert target.stat().st_mtime_ns == before
    assert (tmp_path / "breastmnist" / "test" / "speckle_noise_severity_1.npz").is_file()
    generate_benchmark(breast, _suite(), tmp_path, GenerateConfig(severities=(1,)), progress=False)  # all done
    assert target.stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="other settings"):
        generate_benchmark(breast, _suite(), tmp_path, GenerateConfig(severities=(1,), seed=1),
                           progress=False)


def test_native_size_keeps_28px(breast, tmp_path):
    suite = get_suite("medmnist-c/breastmnist")
    generate_benchmark(breast, suite, tmp_path, GenerateConfig(severities=(5,), resize=False),
                       progress=False)
    for path in (tmp_path / "breastmnist" / "test").iterdir():
        with np.load(path) as f:
            assert f["images"].shape == (10, 28, 28)


def test_failure_leaves_no_partial_file(breast, tmp_path, monkeypatch):
    suite = _suite()
    entry = suite["speckle_noise"]

    def boom(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(type(entry), "apply", boom)
    with pytest.raises(RuntimeError):
        generate_benchmark(breast, suite, tmp_path, GenerateConfig(severities=(1,)), progress=False)
    files = sorted(p.name for p in (tmp_path / "breastmnist" / "test").iterdir())
    assert files == ["clean.npz"]


def test_writer_thread_failure_surfaces_and_leaves_no_partial_file(breast, tmp_path, monkeypatch):
    """An error while writing (disk full, say) on the background writer reaches the caller."""
    from medrobust.data import NpzWriter

    real_write, calls = NpzWriter.write, []

    def failing_write(self, name, chunk):
        calls.append(self.path.name)
        if self.path.name.startswith("pixelate"):
            raise OSError(28, "No space left on device")
        return real_write(self, name, chunk)

    monkeypatch.setattr(NpzWriter, "write", failing_write)
    with pytest.raises(OSError, match="No space left"):
        generate_benchmark(breast, _suite(), tmp_path, GenerateConfig(severities=(1,), batch_size=4),
                           progress=False)
    files = sorted(p.name for p in (tmp_path / "breastmnist" / "test").iterdir())
    assert files == ["clean.npz"]
    manifest = json.loads((tmp_path / "breastmnist" / "test-manifest.json").read_text())
    assert list(manifest["files"]) == ["breastmnist/test/clean.npz"]


def test_finisher_failure_surfaces_and_keeps_only_finished_files(breast, tmp_path, monkeypatch):
    """An error while finishing a file (fsync, rename) on the second thread reaches the caller;
    files finished before it are kept and recorded, nothing partial is left."""
    from medrobust.data import NpzWriter

    real_close = NpzWriter.close

    def failing_close(self):
        if self.path.name.startswith("pixelate"):
            self.abort()
            raise OSError(5, "Input/output error")
        return real_close(self)

    monkeypatch.setattr(NpzWriter, "close", failing_close)
    with pytest.raises(OSError, match="Input/output error"):
        generate_benchmark(breast, _suite(), tmp_path, GenerateConfig(severities=(1,), batch_size=4),
                           progress=False)
    folder = tmp_path / "breastmnist" / "test"
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["clean.npz"], files  # no temporary or later file survives
    manifest = json.loads((tmp_path / "breastmnist" / "test-manifest.json").read_text())
    assert list(manifest["files"]) == ["breastmnist/test/clean.npz"]
    assert "complete" not in manifest
