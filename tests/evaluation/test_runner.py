"""The evaluation grid on a tiny model and real images: cells, resume, sources, bad input."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from medrobust._process import Owner, _start_token, current_owner
from medrobust.corruptions import get_suite
from medrobust.corruptions.generate import GenerateConfig, generate_benchmark
from medrobust.data import IncompleteBenchmarkError, load_medmnist
from medrobust.evaluation import GridSpec, ResultsStore, run_grid
from medrobust.evaluation.metrics import accuracy
from medrobust.models import ZeroShotClassifier, create_model


@pytest.fixture(scope="module")
def tiny_clip():
    return create_model("clip-vit-b16", pretrained=False, tiny=True)


@pytest.fixture(scope="module")
def breast(shared_data):
    return load_medmnist("breastmnist", root=shared_data, download=False).subset(range(24))


def _spec(model, dataset, **kw):
    base = dict(models=[model], datasets=[dataset], corruptions=["pixelate", "speckle_noise"],
                severities=(1, 5), batch_size=10)
    base.update(kw)
    return GridSpec(**base)


def test_grid_cells_metrics_and_resume(tiny_clip, breast, tmp_path):
    summary = run_grid(_spec(tiny_clip, breast), tmp_path, progress=False)
    assert summary.computed == 5 and summary.images == 5 * 24
    # every connection (store, heartbeat, writer thread) is closed: the last close checkpoints
    # SQLite's write-ahead log and removes it
    assert sorted(p.name for p in tmp_path.glob("results.sqlite*")) == ["results.sqlite"]
    with ResultsStore(tmp_path) as store:
        rows = store.rows()
        assert sorted((r["corruption"], r["severity"]) for r in rows) == [
            ("clean", 0), ("pixelate", 1), ("pixelate", 5), ("speckle_noise", 1), ("speckle_noise", 5)]
        for row in rows:
            probs, labels = store.predictions(row)
            assert probs.shape == (24, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
            assert row["accuracy"] == pytest.approx(accuracy(probs, labels, task="binary"))
            np.testing.assert_array_equal(labels, breast.labels)
    assert tiny_clip.training is False
    again = run_grid(_spec(tiny_clip, breast), tmp_path, progress=False)
    assert again.computed == 0 and again.skipped == 5


def test_clean_cell_matches_direct_scoring(tiny_clip, breast, tmp_path):
    run_grid(_spec(tiny_clip, breast, corruptions=[]), tmp_path, progress=False)
    with ResultsStore(tmp_path) as store:
        (row,) = store.rows()
        probs, _ = store.predictions(row)
    clf = ZeroShotClassifier(tiny_clip, breast.class_names, None, breast.modality)
    from medrobust.corruptions import prepare_images

    direct = clf.predict_batch(prepare_images(breast.to_tensor(), 224)).probabilities.numpy()
    np.testing.assert_allclose(probs, direct, atol=1e-5)


def test_several_models_share_each_cell_and_resume_per_model(tiny_clip, breast, tmp_path):
    other = create_model("clip-vit-b16", pretrained=False, tiny=True, seed=1)
    other_name = "clip-vit-b16-seed1"
    other.info = dataclasses.replace(other.info, name=other_name)
    run_grid(_spec(tiny_clip, breast), tmp_path, progress=False)
    summary = run_grid(_spec(tiny_clip, breast, models=[tiny_clip, other]), tmp_path, progress=False)
    assert summary.skipped == 5 and summary.computed == 5
    with ResultsStore(tmp_path) as store:
        assert len(store.rows(model=other_name)) == 5


def test_model_inputs_are_made_once_per_batch_on_the_producer_thread(
    tiny_clip, breast, tmp_path, monkeypatch
):
    """The model's thread only runs the forward pass: preprocessing (resize, normalise) is done
    by the producer, once per batch for models that share it."""
    from medrobust.models.base import ImagePreprocess

    other = create_model("clip-vit-b16", pretrained=False, tiny=True, seed=1)
    other.info = dataclasses.replace(other.info, name="clip-vit-b16-seed1")
    threads = []
    real = ImagePreprocess.__call__

    def recording(self, images):
        threads.append(threading.current_thread().name)
        return real(self, images)

    monkeypatch.setattr(ImagePreprocess, "__call__", recording)
    run_grid(_spec(tiny_clip, breast, models=[tiny_clip, other], corruptions=["pixelate"],
                   severities=(1,)), tmp_path, progress=False)
    assert threads == ["medrobust-producer"] * 2 * 3  # 2 cells x 3 batches of 10, one model input each


def test_rows_of_batches_make_one_array():
    from medrobust.evaluation.runner import _Rows

    rows = _Rows()
    batches = [np.arange(6, dtype=np.float32).reshape(3, 2) + i for i in range(5)]
    for batch in batches:
        rows.append(batch)
    out = rows.array()
    np.testing.assert_array_equal(out, np.concatenate(batches))
    assert out.dtype == np.float32 and out.base is None
    with pytest.raises(ValueError, match="no images"):
        _Rows().array()


def test_benchmark_folder_gives_the_same_results_as_on_the_fly(tiny_clip, breast, tmp_path):
    suite = get_suite("medmnist-c/breastmnist").select(["pixelate", "speckle_noise"])
    generate_benchmark(breast, suite, tmp_path / "bench", GenerateConfig(severities=(1, 5)),
                       progress=False)
    run_grid(_spec(tiny_clip, breast), tmp_path / "fly", progress=False)
    run_grid(_spec(tiny_clip, breast, benchmark_dir=tmp_path / "bench"), tmp_path / "disk", progress=False)
    with ResultsStore(tmp_path / "fly") as a, ResultsStore(tmp_path / "disk") as b:
        for ra, rb in zip(a.rows(), b.rows(), strict=True):
            assert (ra["corruption"], ra["severity"]) == (rb["corruption"], rb["severity"])
            np.testing.assert_allclose(a.predictions(ra)[0], b.predictions(rb)[0], atol=1e-5)


def test_incomplete_benchmark_folder_names_missing_files(tiny_clip, breast, tmp_path):
    suite = get_suite("medmnist-c/breastmnist").select(["pixelate"])
    generate_benchmark(breast, suite, tmp_path / "bench", GenerateConfig(severities=(1,)),
                       progress=False)
    with pytest.raises(IncompleteBenchmarkError, match="speckle_noise_severity_1"):
        run_grid(_spec(tiny_clip, breast, benchmark_dir=tmp_path / "bench", severities=(1,)),
                 tmp_path / "run", progress=False)


def test_failure_in_a_cell_leaves_no_row(tiny_clip, breast, tmp_path, monkeypatch):
    import medrobust.evaluation.runner as runner

    calls = {"n": 0}
    real = runner.score_cell

    def flaky(classifiers, batches):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")
        return real(classifiers, batches)

    monkeypatch.setattr(runner, "score_cell", flaky)
    with pytest.raises(RuntimeError):
        run_grid(_spec(tiny_clip, breast), tmp_path, progress=False)
    with ResultsStore(tmp_path) as store:
        assert [r["corruption"] for r in store.rows()] == ["clean"]
    monkeypatch.setattr(runner, "score_cell", real)
    assert run_grid(_spec(tiny_clip, breast), tmp_path, progress=False).computed == 4


def test_run_records_dataset_model_and_suite_info(tiny_clip, breast, tmp_path):
    run_grid(_spec(tiny_clip, breast, corruptions=["pixelate"], severities=(1,)), tmp_path,
             progress=False)
    with ResultsStore(tmp_path) as store:
        info = store.info()
    assert info["dataset"]["breastmnist"]["modality"] == breast.modality
    assert info["dataset"]["breastmnist"]["class_names"] == list(breast.class_names)
    assert info["model"][tiny_clip.name] == {"notes": tiny_clip.info.notes}
    whole = get_suite("medmnist-c/breastmnist")
    (suite,) = info["suite"].values()  # the whole suite, not just the corruptions evaluated
    assert suite["benchmark_corruptions"] == list(whole.benchmark_corruptions)


def test_one_producer_thread_for_the_whole_run(tiny_clip, breast, shared_data, tmp_path, monkeypatch):
    import medrobust.evaluation.runner as runner

    started = []
    real = runner.Producer

    class Counting(real):
        def __init__(self, *args, **kwargs):
            started.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(runner, "Producer", Counting)
    pneumonia = load_medmnist("pneumoniamnist", root=shared_data, download=False).subset(range(12))
    summary = run_grid(_spec(tiny_clip, breast, datasets=[breast, pneumonia]), tmp_path, progress=False)
    assert summary.computed == 10 and started == [1]


@pytest.fixture()
def scan_folder(tmp_path):
    """Six non-square grey-as-RGB PNGs in two class folders, as ultrasound often comes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "scans"
    for cls in ("benign", "malignant"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            grey = rng.integers(0, 256, (30, 44), dtype=np.uint8)
            Image.fromarray(np.stack([grey] * 3, -1)).save(root / cls / f"{i}.png")
    return root


def test_image_folder_grid_follows_modality_and_records_reading(tiny_clip, scan_folder, tmp_path):
    from medrobust.data import DataOptions

    options = DataOptions(grey=True, resize="pad", modality="ultrasound")
    spec = _spec(tiny_clip, str(scan_folder), corruptions=["pixelate"], severities=(1,),
                 data_options=options)
    assert run_grid(spec, tmp_path / "fly", progress=False).computed == 2
    with ResultsStore(tmp_path / "fly") as store:
        rows, info = store.rows(), store.info()
    assert {r["suite"] for r in rows} == {"medmnist-c/breastmnist"}
    assert info["dataset"]["scans"]["modality"] == "ultrasound"
    assert list(info["suite"]) == ["medmnist-c/breastmnist/scans"]  # where the report looks
    config = json.loads(rows[0]["config"])
    assert config["reading"] == {"grey": True, "resize": "pad"}
    assert config["class_names"] == ["benign", "malignant"]

    # a benchmark generated from the folder is read back by the same grid
    from medrobust.data import open_dataset

    dataset = open_dataset(scan_folder, options=options)
    suite = get_suite("medmnist-c", dataset.name, dataset.modality).select(["pixelate"])
    generate_benchmark(dataset, suite, tmp_path / "bench", GenerateConfig(severities=(1,)),
                       progress=False)
    disk = dataclasses.replace(spec, benchmark_dir=tmp_path / "bench")
    assert run_grid(disk, tmp_path / "disk", progress=False).computed == 2
    with ResultsStore(tmp_path / "fly") as a, ResultsStore(tmp_path / "disk") as b:
        for ra, rb in zip(a.rows(), b.rows(), strict=True):
            np.testing.assert_allclose(a.predictions(ra)[0], b.predictions(rb)[0], atol=1e-5)


def test_folder_without_modality_and_unnamed_classes_are_refused(tiny_clip, scan_folder, tmp_path):
    with pytest.raises(KeyError, match=r"no default corruption suite for dataset 'scans'.*--modality"):
        run_grid(_spec(tiny_clip, str(scan_folder)), tmp_path / "a", progress=False)
    np.savez(tmp_path / "mine.npz", test_images=np.zeros((4, 8, 8), np.uint8),
             test_labels=np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="no class names"):
        run_grid(_spec(tiny_clip, str(tmp_path / "mine.npz"), suite="imagenet-c"),
                 tmp_path / "b", progress=False)


def test_a_live_owners_cell_is_reported_or_waited_for_and_a_dead_ones_taken_over(
    tiny_clip, breast, tmp_path
):
    """Another live process's cell is never silently skipped: without waiting it is named
    as missing; waiting, it is computed here once its owner dies."""
    first = run_grid(_spec(tiny_clip, breast), tmp_path, progress=False)
    assert first.complete and first.total == 5
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = Owner(current_owner().host, other.pid, _start_token(other.pid))
        with ResultsStore(tmp_path) as store:
            (row,) = store.rows(corruption="pixelate", severity=5)
            store._conn.execute("DELETE FROM cells WHERE cell_id = ?", (row["cell_id"],))
            store._conn.execute("INSERT INTO claims VALUES (?, ?, ?)",
                                (row["cell_id"], str(owner), time.time()))
        report = run_grid(_spec(tiny_clip, breast), tmp_path, progress=False, wait=0)
        assert report.computed == 0 and report.busy == 1 and report.total == 5
        assert len(report.missing) == 1 and "pixelate severity 5" in report.missing[0]
        assert str(owner) in report.missing[0]
        threading.Timer(1.0, other.kill).start()
        waited = run_grid(_spec(tiny_clip, breast), tmp_path, progress=False,
                          log=lambda _m: None)
        assert waited.computed == 1 and waited.complete and waited.skipped == 4
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize("name", ["clip-vit-b16", "biomedclip", "plip", "medsiglip-448",
                                  "medclip-resnet50"])
def test_stored_error_is_the_argmax_error_for_every_model_family(name, breast, tmp_path):
    """One scoring rule: softmax (CLIP, BiomedCLIP, PLIP, MedCLIP) and sigmoid (SigLIP) alike."""
    model = create_model(name, pretrained=False, tiny=True)
    run_grid(_spec(model, breast.subset(range(12)), corruptions=[]), tmp_path, progress=False)
    with ResultsStore(tmp_path) as store:
        (row,) = store.rows()
        probs, labels = store.predictions(row)
    wrong = probs.argmax(axis=1) != labels
    assert row["error"] == pytest.approx(float(np.mean(wrong)), abs=1e-12)
    assert row["accuracy"] == pytest.approx(1.0 - float(np.mean(wrong)), abs=1e-12)


def test_test_images_an_adapter_saw_are_refused_unless_allowed(tiny_clip, breast, tmp_path):
    from medrobust.data import image_hashes
    from medrobust.evaluation.runner import ImageOverlapError

    seen = {tiny_clip.name: frozenset(image_hashes(breast.images[[0, 5, 7]]))}
    spec = _spec(tiny_clip, breast, corruptions=[], seen_images=seen)
    with pytest.raises(ImageOverlapError, match="saw 3 of the 24 test images of breastmnist"):
        run_grid(spec, tmp_path / "refused", progress=False)
    assert not (tmp_path / "refused" / "results.sqlite").exists()
    run_grid(dataclasses.replace(spec, allow_overlap=True), tmp_path / "ok", progress=False)
    with ResultsStore(tmp_path / "ok") as store:
        (row,) = store.rows()
    assert '"seen_test_images": 3' in row["config"]
    # images nobody saw: no flag, the same cell as without the check
    other = {tiny_clip.name: frozenset(image_hashes(breast.images[:0]))}
    run_grid(_spec(tiny_clip, breast, corruptions=[], seen_images=other), tmp_path / "clean",
             progress=False)
    with ResultsStore(tmp_path / "clean") as store:
        assert "seen_test_images" not in store.rows()[0]["config"]
