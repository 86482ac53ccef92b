"""The command line as a user runs it: outputs and exit codes (bad inputs: test_bad_inputs.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from medrobust.cli import main


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "medrobust.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_corrupt_writes_benchmark_and_manifest(shared_data, tmp_path, capsys):
    rc = main(["corrupt", "breastmnist", "--data-root", str(shared_data), "--out", str(tmp_path),
               "--corruptions", "pixelate,contrast_down", "--severities", "1,3", "--quiet"])
    assert rc == 0
    folder = tmp_path / "breastmnist" / "test"
    assert len(list(folder.glob("*.npz"))) == 5
    manifest = json.loads((tmp_path / "breastmnist" / "test-manifest.json").read_text())
    assert manifest["complete"] and manifest["config"]["severities"] == [1, 3]
    assert "manifest" in capsys.readouterr().out


def test_corruptions_lists_suites(capsys):
    assert main(["corruptions", "--suite", "medimeta-c"]) == 0
    out = capsys.readouterr().out
    assert "zoom_blur" in out and "medimeta-c" in out
    assert main(["corruptions", "--json"]) == 0
    suites = json.loads(capsys.readouterr().out)
    assert sum(len(s["corruptions"]) for s in suites if s["name"] == "medmnist-c") == 131


def test_preview_montage(shared_data, tmp_path):
    out = tmp_path / "m.png"
    rc = main(["preview", "retinamnist", "--data-root", str(shared_data), "--out", str(out),
               "--corruptions", "pixelate,gaussian_noise"])
    assert rc == 0
    from PIL import Image

    image = Image.open(out)
    assert image.width > 6 * 100 and image.height > 2 * 100


def test_eval_and_report_end_to_end_with_random_weights(shared_data, tmp_path):
    run = tmp_path / "run"
    result = _run("eval", "--model", "clip-vit-b16", "--dataset", "breastmnist", "--random-weights",
                  "--corruptions", "pixelate", "--severities", "1,5", "--limit", "16",
                  "--data-root", str(shared_data), "--run-dir", str(run), "--quiet",
                  "--export", str(tmp_path / "cells.csv"), env={"MEDROBUST_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert "3 cells computed" in result.stdout and (tmp_path / "cells.csv").is_file()
    result = _run("report", str(run))
    assert result.returncode == 0, result.stderr
    assert (run / "report" / "report.html").is_file()


@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None,
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_eval_kernels_and_compile_are_recorded_and_agree_with_plain(shared_data, tmp_path, capsys):
    """--kernels fused --compile runs (a full batch and a smaller last one), is recorded per
    invocation (not in the cells' identity: a rerun with other kernels resumes), shows in the
    report, and predicts as plain does."""
    from medrobust.evaluation.store import ResultsStore

    base = ["eval", "--model", "medrobust-mini", "--dataset", "breastmnist", "--data-root",
            str(shared_data), "--limit", "40", "--batch-size", "32", "--severities", "1", "--quiet"]
    fast, plain = tmp_path / "fast", tmp_path / "plain"
    assert main([*base, "--corruptions", "pixelate", "--run-dir", str(fast), "--kernels", "fused",
                 "--compile"]) == 0
    assert main([*base, "--corruptions", "pixelate", "--run-dir", str(plain), "--kernels", "plain"]) == 0
    assert main([*base, "--corruptions", "pixelate,contrast_down", "--run-dir", str(fast)]) == 0
    assert "1 cells computed, 2 already done" in capsys.readouterr().out
    with ResultsStore(fast) as store:
        engines = sorted(store.info()["engine"].values(), key=lambda e: e["kernels"])
        rows = {r["cell_id"]: store.predictions(r)[0] for r in store.rows()}
    with ResultsStore(plain) as store:
        reference = {r["cell_id"]: store.predictions(r)[0] for r in store.rows()}
    assert [(e["kernels"], e["compile"], e["cells_computed"]) for e in engines] == [
        ("auto", False, 1), ("fused", True, 2)]
    mini = engines[1]["models"]["medrobust-mini"]
    assert mini["compile"] == "compiled" and mini["kernels"] == "fused"
    assert mini["swapped"] == ["4 x nn.MultiheadAttention -> FusedMultiheadAttention"]
    assert engines[0]["models"]["medrobust-mini"] == {"kernels": "plain", "compile": "off", "swapped": []}
    assert set(reference) <= set(rows)  # same cell ids whatever the kernels
    for cell, probs in reference.items():
        np.testing.assert_allclose(rows[cell], probs, atol=1e-4)
        assert (rows[cell].argmax(1) == probs.argmax(1)).all()
    assert main(["report", str(fast)]) == 0
    page = (fast / "report" / "report.md").read_text()
    assert "**Engine:** kernels auto, fp32 on cpu; kernels fused, compile, fp32 on cpu" in page
    assert "computed under different engine settings" in page


def test_adapt_options_map_onto_the_config_objects() -> None:
    from medrobust.adaptation import AdaptConfig, LoraSettings
    from medrobust.cli import adapt_config, build_parser

    base = ["adapt", "--model", "m", "--dataset", "d", "--out", "o"]
    assert adapt_config(build_parser().parse_args(base)) == AdaptConfig()  # same defaults
    args = build_parser().parse_args([
        *base, "--shots", "8", "--rank", "4", "--alpha", "8", "--targets", "qkv,proj",
        "--native-size", "--size", "64", "--patience", "0", "--augment-suite", "medmnist-c",
        "--exclude-corruptions", "pixelate,snow", "--warmup", "3", "--label", "x", "--seed", "2",
    ])
    assert adapt_config(args) == AdaptConfig(
        shots=8, resize=False, data_size=64, patience=None, augment_suite="medmnist-c",
        exclude_corruptions=("pixelate", "snow"), warmup=3, label="x", seed=2,
        lora=LoraSettings(rank=4, alpha=8.0, targets=("qkv", "proj")),
    )


def test_pretrain_options_map_onto_the_config_object() -> None:
    from medrobust.adaptation import PretrainConfig
    from medrobust.cli import build_parser, pretrain_config

    args = build_parser().parse_args(["pretrain", "--out", "o"])
    assert pretrain_config(args) == PretrainConfig()
    args = build_parser().parse_args(["pretrain", "--out", "o", "--dataset", "pneumoniamnist",
                                      "--epochs", "2", "--limit", "5"])
    assert pretrain_config(args) == PretrainConfig(datasets=("pneumoniamnist",), epochs=2, limit=5)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--lr", "0"], "lr must lie in"), (["--shots", "0"], "shots must be an int >= 1"),
     (["--val-split", "test"], "'test' split")],
)
def test_adapt_bad_settings_exit_2_with_one_line(tmp_path, args, message, capsys) -> None:
    code = main(["adapt", "--model", "medrobust-mini", "--dataset", "breastmnist",
                 "--out", str(tmp_path / "a"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()


def test_adapt_writes_its_config_with_the_adapter(shared_data, tmp_path) -> None:
    from medrobust.adaptation import AdaptConfig, read_adapter_config
    from medrobust.cli import adapt_config, build_parser

    options = ["adapt", "--model", "medrobust-mini", "--dataset", "breastmnist", "--shots", "2",
               "--epochs", "1", "--val-limit", "8", "--out", str(tmp_path / "a"),
               "--data-root", str(shared_data), "--quiet"]
    assert main(options) == 0
    saved = AdaptConfig.from_adapter(read_adapter_config(tmp_path / "a"))
    expected = adapt_config(build_parser().parse_args(options))
    assert saved == AdaptConfig.from_dict({**expected.to_dict(), "label": "a"})


@pytest.fixture()
def busi_folder(shared_data, tmp_path):
    """Five real BUSI ultrasound PNGs (grey stored as RGB, not square) as <tmp>/busi/<class>/."""
    root = tmp_path / "busi"
    files = sorted((shared_data / "highres" / "busi").glob("*.png"))
    for src in [f for f in files if "malignant_1" in f.name][:2] + files[:2] + files[-1:]:
        (root / src.name.split("_")[0]).mkdir(parents=True, exist_ok=True)
        (root / src.name.split("_")[0] / src.name).symlink_to(src)
    return root


def test_image_folder_corrupt_then_eval_from_its_benchmark(busi_folder, tmp_path, capsys):
    data = ["--modality", "ultrasound", "--grey", "--resize", "pad"]
    grid = ["--corruptions", "speckle_noise", "--severities", "1", "--quiet"]
    assert main(["corrupt", str(busi_folder), *data, *grid, "--out", str(tmp_path / "bench")]) == 0
    clean = np.load(tmp_path / "bench" / "busi" / "test" / "clean.npz")["images"]
    assert clean.shape == (5, 224, 224)  # one channel: --grey
    # padded: landscape images above and below, portrait ones left and right
    assert all((image[:5] == 0).all() or (image[:, :5] == 0).all() for image in clean)
    manifest = json.loads((tmp_path / "bench" / "busi" / "test-manifest.json").read_text())
    assert manifest["config"]["suite"]["dataset"] == "breastmnist"
    assert manifest["dataset"] == {"class_names": ["benign", "malignant", "normal"],
                                   "modality": "ultrasound", "task": "multi-class",
                                   "reading": {"grey": True, "resize": "pad"}}
    runs = {}
    for name, extra in (("fly", []), ("disk", ["--benchmark-dir", str(tmp_path / "bench")])):
        runs[name] = tmp_path / name
        assert main(["eval", "--model", "medrobust-mini", "--dataset", str(busi_folder), *data,
                     *grid, *extra, "--run-dir", str(runs[name])]) == 0
    from medrobust.evaluation.store import ResultsStore

    with ResultsStore(runs["fly"]) as fly, ResultsStore(runs["disk"]) as disk:
        assert len(fly.rows()) == len(disk.rows()) == 2
        for a, b in zip(fly.rows(), disk.rows(), strict=True):
            assert a["suite"] == "medmnist-c/breastmnist" and a["corruption"] == b["corruption"]
            config = json.loads(a["config"])
            assert config["reading"] == {"grey": True, "resize": "pad"}
            assert config["class_names"] == ["benign", "malignant", "normal"]
            np.testing.assert_allclose(fly.predictions(a)[0], disk.predictions(b)[0], atol=1e-5)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "no default corruption suite for dataset 'busi' (no known modality): give --modality"),
        (["--modality", "sonar"], "unknown modality 'sonar'; choose one of x-ray, ultrasound"),
        (["--modality", "mri"], "(modality 'MRI'): give --modality"),
        (["--suite", "medmnist-c/busi"], "MedMNIST-C has no dataset 'busi'"),
        (["--modality", "ultrasound", "--resize", "fit"], "resize must be one of stretch, pad, crop"),
        (["--modality", "ultrasound", "--slice-axis", "3"], "slice axis must be 0, 1 or 2"),
        (["--modality", "ultrasound", "--class-names", "a,b"], "2 class names given for the 3 class folders"),
    ],
)
def test_bad_data_options_one_line_exit_2(busi_folder, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert main(["corrupt", str(busi_folder), *extra, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() or not any(out.rglob("*.npz"))


def test_damaged_dicom_in_a_folder_is_named(tmp_path, capsys):
    pytest.importorskip("pydicom")
    for cls in ("a", "b"):
        (tmp_path / "scans" / cls).mkdir(parents=True)
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "scans" / "a" / "x.png")
    (tmp_path / "scans" / "b" / "scan.dcm").write_bytes(b"\0" * 200)
    assert main(["corrupt", str(tmp_path / "scans"), "--modality", "ct", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "cannot read DICOM file" in err and "scan.dcm" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_eval_of_an_npz_without_class_names(tmp_path, capsys):
    path = tmp_path / "mine.npz"
    np.savez(path, test_images=np.zeros((4, 8, 8), np.uint8), test_labels=np.array([0, 1, 2, 1]))
    argv = ["eval", "--model", "medrobust-mini", "--dataset", str(path), "--suite", "imagenet-c",
            "--corruptions", "pixelate", "--severities", "1", "--run-dir", str(tmp_path / "r"), "--quiet"]
    assert main(argv) == 2
    assert "--class-names with 3 names" in capsys.readouterr().err
    assert main([*argv, "--class-names", "cyst,tumour,normal tissue"]) == 0
    from medrobust.evaluation.store import ResultsStore

    with ResultsStore(tmp_path / "r") as store:
        config = json.loads(store.rows()[0]["config"])
    assert config["class_names"] == ["cyst", "tumour", "normal tissue"]


def test_adapt_on_an_image_folder_records_its_data_options(busi_folder, tmp_path) -> None:
    from medrobust.adaptation import AdaptConfig, read_adapter_config
    from medrobust.cli import adapt_config, build_parser
    from medrobust.data import DataOptions

    options = ["adapt", "--model", "medrobust-mini", "--dataset", str(busi_folder), "--shots", "1",
               "--val-split", "train", "--epochs", "1", "--augment-suite", "medmnist-c",
               "--modality", "ultrasound", "--grey", "--resize", "pad", "--out", str(tmp_path / "a"),
               "--quiet"]
    expected = adapt_config(build_parser().parse_args(options))
    assert expected.data_options == DataOptions(grey=True, resize="pad", modality="ultrasound")
    assert main(options) == 0
    record = read_adapter_config(tmp_path / "a")
    (task,) = record["data"]["datasets"]
    assert task["reading"] == {"grey": True, "resize": "pad"} and task["modality"] == "ultrasound"
    assert record["augmentation"]["suite"] == "medmnist-c"
    saved = AdaptConfig.from_adapter(record)
    assert saved == AdaptConfig.from_dict({**expected.to_dict(), "label": "a"})


def test_adapt_prompt_then_eval_the_adapter(shared_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDROBUST_OFFLINE", "1")
    out = tmp_path / "adapter"
    rc = main(["adapt", "--model", "medrobust-mini", "--random-weights", "--dataset", "breastmnist",
               "--data-root", str(shared_data), "--out", str(out), "--method", "lora+prompt",
               "--shots", "2", "--epochs", "1", "--val-limit", "8", "--native-size", "--rank", "2",
               "--prompt-context", "class", "--context-init", "random", "--context-tokens", "2",
               "--prompt-lr", "0.01", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    config = json.loads((out / "medrobust_adapter.json").read_text())
    assert config["method"] == "lora+prompt" and config["training"]["lr_prompt"] == 0.01
    assert config["prompt"]["settings"] == {"context": "class", "init": "random", "tokens": 2,
                                            "class_template": "{}.", "init_std": 0.02}
    rc = main(["eval", "--adapter", str(out), "--dataset", "breastmnist", "--data-root",
               str(shared_data), "--corruptions", "pixelate", "--severities", "1", "--limit", "8",
               "--run-dir", str(tmp_path / "run"), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert "2 cells computed" in capsys.readouterr().out


def test_adapt_prompt_options_are_checked(shared_data, tmp_path, capsys):
    common = ["adapt", "--model", "medrobust-mini", "--random-weights", "--dataset", "breastmnist",
              "--data-root", str(shared_data), "--out", str(tmp_path / "a"), "--shots", "2"]
    assert main([*common, "--method", "prompt", "--context-tokens", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'a photo of a' is 4 tokens" in err
    assert not (tmp_path / "a" / "medrobust_adapter.json").exists()
    with pytest.raises(SystemExit) as exc:
        main([*common, "--method", "coop"])
    assert exc.value.code == 2


def test_adapt_partitions_a_folder_without_splits_and_eval_scores_its_test_part(
    tmp_path, capsys, monkeypatch
):
    from PIL import Image

    from medrobust.adaptation import read_adapter_config
    from medrobust.data import image_hashes, open_dataset
    from medrobust.data.fewshot import partition_indices
    from medrobust.evaluation.store import ResultsStore

    monkeypatch.setenv("MEDROBUST_OFFLINE", "1")
    rng = np.random.default_rng(0)
    folder = tmp_path / "scans"
    for name, n in (("cyst", 10), ("tumour", 8)):
        (folder / name).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (16, 16), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / name / f"{i:02d}.png")
    out = tmp_path / "adapter"
    rc = main(["adapt", "--model", "medrobust-mini", "--random-weights", "--dataset", str(folder),
               "--out", str(out), "--epochs", "1", "--rank", "2", "--seed", "5",
               "--split-ratios", "0.5,0.25,0.25", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    (task,) = read_adapter_config(out)["data"]["datasets"]
    whole = open_dataset(folder)
    parts = partition_indices(whole.labels, (0.5, 0.25, 0.25), seed=5, key="scans")
    hashes = np.asarray(image_hashes(whole.images))
    split = task["partition"]
    assert split["ratios"] == [0.5, 0.25, 0.25] and split["seed"] == 5
    assert split["test_indices"] == parts["test"].tolist()
    assert split["test_image_sha256"] == hashes[parts["test"]].tolist()
    assert sorted(task["train_image_sha256"]) == sorted(hashes[parts["train"]])  # all of train
    assert sorted(task["val_image_sha256"]) == sorted(hashes[parts["val"]])  # selected on val
    capsys.readouterr()

    rc = main(["eval", "--adapter", str(out), "--dataset", str(folder), "--suite", "imagenet-c",
               "--corruptions", "pixelate",
               "--severities", "1", "--run-dir", str(tmp_path / "run"), "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err  # the overlap check found none of the adapter's images
    assert f"only the adapter's held-out test part ({len(parts['test'])} of 18 images)" in captured.out
    with ResultsStore(tmp_path / "run") as store:
        configs = [json.loads(row["config"]) for row in store.rows()]
    assert len(configs) == 2
    for config in configs:
        assert config["n_images"] == len(parts["test"]) == 5
        assert config["reading"]["test_part"] == {"of": 18, "n": 5}
        assert "seen_test_images" not in config
