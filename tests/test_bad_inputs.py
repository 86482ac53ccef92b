"""Every failure a user can cause, as the user meets it: ``medrobust`` run as a real process
exits 2 with one line saying what is wrong and what to do, shows no traceback, and leaves no
partial output (no temporary file, no torn or half-written file). ``MEDROBUST_DEBUG=1`` adds
the traceback.

Each case is one row of ``CASES``: the arguments (``{data}`` the real data, ``{fx}`` the
prepared bad files, ``{out}`` a fresh output folder), a fragment the message must hold, and
options for the fork server (``fsize`` limits the size of any file written, which fails
writes as a full disk does; ``env`` sets variables).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from medrobust.adaptation.checkpoint import ADAPTER_CONFIG, ADAPTER_WEIGHTS, FORMAT_VERSION
from medrobust.adaptation.lora import vision_fingerprint
from medrobust.data.npz import NpzFormatError, npz_array_info
from medrobust.models import create_model

MINI_EVAL = ["eval", "--model", "medrobust-mini", "--dataset", "breastmnist", "--data-root",
             "{data}", "--limit", "16", "--corruptions", "pixelate", "--severities", "1"]
MINI_ADAPT = ["adapt", "--model", "medrobust-mini", "--dataset", "breastmnist", "--data-root",
              "{data}", "--shots", "4", "--epochs", "1", "--val-limit", "16", "--batch-size", "8"]
CORRUPT = ["corrupt", "breastmnist", "--data-root", "{data}", "--corruptions", "pixelate",
           "--severities", "1"]
NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}
OFFLINE = {"MEDROBUST_OFFLINE": "1", "MEDROBUST_MODELS": "{fx}/empty-cache",
           "HF_HOME": "{fx}/empty-cache/hf", "HF_HUB_CACHE": None, "HUGGINGFACE_HUB_CACHE": None}

# (id, arguments, fragment of the message, fork server options)
CASES = [
    # corrupt
    ("corrupt-unknown-dataset", ["corrupt", "nomnist", "--out", "{out}"], "unknown dataset", {}),
    ("corrupt-unknown-suite", [*CORRUPT[:4], "--suite", "nosuite", "--out", "{out}"],
     "unknown suite", {}),
    ("corrupt-corruption-not-in-suite", [*CORRUPT[:4], "--corruptions", "fog", "--out", "{out}"],
     "has no corruption 'fog'", {}),
    ("corrupt-severity-range", [*CORRUPT[:4], "--severities", "0-6", "--out", "{out}"],
     "severities must be in 1..5", {}),
    ("corrupt-severity-text", [*CORRUPT[:4], "--severities", "high", "--out", "{out}"],
     "severities must look like", {}),
    ("corrupt-missing-split", [*CORRUPT[:4], "--split", "nosplit", "--out", "{out}"],
     "splits present", {}),
    ("corrupt-split-absent-from-file", ["corrupt", "pathmnist", "--data-root", "{data}",
                                        "--split", "train", "--out", "{out}"], "splits present",
     {}),
    ("corrupt-dataset-offline-missing", ["corrupt", "octmnist", "--data-root", "{fx}",
                                         "--out", "{out}"], "octmnist.npz", {}),
    ("corrupt-unwritable-out", [*CORRUPT, "--out", "/proc/medrobust-out"], "cannot write", {}),
    ("corrupt-broken-npz", ["corrupt", "{fx}/broken.npz", "--out", "{out}"], "broken.npz", {}),
    ("corrupt-mismatched-labels", ["corrupt", "{fx}/mismatched.npz", "--out", "{out}"],
     "label", {}),
    ("corrupt-batch-size-0", [*CORRUPT, "--batch-size", "0", "--out", "{out}"],
     "batch_size must be >= 1", {}),
    ("corrupt-bad-layout", [*CORRUPT, "--layout", "flat", "--out", "{out}"],
     "invalid choice", {}),
    ("corrupt-other-settings", [*CORRUPT, "--out", "{fx}/other-settings"],
     "made with other settings", {}),
    ("corrupt-disk-full", [*CORRUPT, "--out", "{out}"], "disk is full", {"fsize": 200_000}),
    ("corrupt-no-gpu", [*CORRUPT, "--device", "cuda", "--out", "{out}"], "--device cpu",
     {"env": NO_GPU}),
    ("corrupt-negative-threads", ["--threads", "-1", *CORRUPT, "--out", "{out}"],
     "--threads must be >= 0", {}),
    ("corrupt-missing-data-root", ["corrupt", "breastmnist", "--data-root", "{fx}/nowhere",
                                   "--out", "{out}"], "breastmnist.npz", {}),
    # preview
    ("preview-zero-samples", ["preview", "breastmnist", "--data-root", "{data}", "--samples", "0",
                              "--out", "{out}/m.png"], "--samples must be in", {}),
    ("preview-unknown-dataset", ["preview", "nomnist", "--out", "{out}/m.png"],
     "unknown dataset", {}),
    # eval
    ("eval-unknown-model", ["eval", "--model", "nomodel", "--dataset", "breastmnist",
                            "--data-root", "{data}", "--run-dir", "{out}"], "biomedclip", {}),
    ("eval-unknown-kernels", [*MINI_EVAL, "--kernels", "fast", "--run-dir", "{out}"],
     "invalid choice: 'fast'", {}),
    ("eval-compile-takes-no-value", [*MINI_EVAL, "--compile=yes", "--run-dir", "{out}"],
     "--compile: ignored explicit argument", {}),
    ("eval-no-model", ["eval", "--dataset", "breastmnist", "--run-dir", "{out}"],
     "give at least one --model", {}),
    ("eval-weights-not-cached", [*MINI_EVAL[:1], "--model", "biomedclip", *MINI_EVAL[3:],
                                 "--run-dir", "{out}"], "--weights biomedclip=", {"env": OFFLINE}),
    ("eval-garbage-weights", [*MINI_EVAL, "--weights", "medrobust-mini={fx}/garbage.safetensors",
                              "--run-dir", "{out}"], "garbage.safetensors is not a readable .safetensors file", {}),
    ("eval-missing-weights-file", [*MINI_EVAL, "--weights", "medrobust-mini={fx}/absent.bin",
                                   "--run-dir", "{out}"], "absent.bin", {}),
    ("eval-weights-for-no-model", [*MINI_EVAL, "--weights", "biomedclip={fx}/garbage.safetensors",
                                   "--run-dir", "{out}"], "no --model biomedclip", {}),
    ("eval-damaged-database", [*MINI_EVAL, "--run-dir", "{fx}/damaged-run"],
     "not a medrobust results database", {}),
    ("eval-wrong-schema-database", [*MINI_EVAL, "--run-dir", "{fx}/wrong-schema-run"],
     "not a medrobust results database", {}),
    ("eval-disk-full", [*MINI_EVAL, "--run-dir", "{out}"], "disk is full", {"fsize": 3_000}),
    ("eval-database-disk-full", [*MINI_EVAL, "--run-dir", "{out}"], "disk is full",
     {"fsize": 40_000}),
    ("eval-no-gpu", [*MINI_EVAL, "--device", "cuda", "--run-dir", "{out}"], "--device cpu",
     {"env": NO_GPU}),
    ("eval-incomplete-benchmark", [*MINI_EVAL, "--benchmark-dir", "{fx}", "--run-dir", "{out}"],
     "benchmark files missing", {}),
    ("eval-export-format", [*MINI_EVAL, "--export", "{out}/cells.xlsx", "--run-dir", "{out}"],
     "export to .csv or .parquet", {}),
    ("eval-missing-adapter", ["eval", "--adapter", "{fx}/no-adapter", "--dataset", "breastmnist",
                              "--run-dir", "{out}"], "not a medrobust adapter folder", {}),
    ("eval-garbage-adapter", [*MINI_EVAL[:1], "--adapter", "{fx}/garbage-adapter",
                              *MINI_EVAL[3:], "--run-dir", "{out}"],
     "adapter_model.safetensors is not a readable .safetensors file", {}),
    ("eval-self-referring-adapter", [*MINI_EVAL[:1], "--adapter", "{fx}/self-adapter",
                                     *MINI_EVAL[3:], "--run-dir", "{out}"], "refers to itself",
     {}),
    ("eval-claim-timeout-0", [*MINI_EVAL, "--claim-timeout", "0", "--run-dir", "{out}"],
     "claim_timeout must be > 0", {}),
    ("eval-bad-precision", [*MINI_EVAL, "--precision", "fp8", "--run-dir", "{out}"],
     "invalid choice", {}),
    # report
    ("report-missing-run", ["report", "{fx}/nothing"], "nothing", {}),
    ("report-damaged-database", ["report", "{fx}/damaged-run", "--out", "{out}"],
     "not a medrobust results database", {}),
    # adapt
    ("adapt-no-dataset", ["adapt", "--model", "medrobust-mini", "--out", "{out}"],
     "adapt needs --model and at least one --dataset", {}),
    ("adapt-negative-warmup", [*MINI_ADAPT, "--warmup", "-1", "--out", "{out}"],
     "--warmup must be >= 0", {}),
    ("adapt-fewshot-above-1", [*MINI_ADAPT[:7], "--fewshot", "2", "--out", "{out}"],
     "fewshot", {}),
    ("adapt-other-run", [*MINI_ADAPT, "--out", "{fx}/other-adapt"],
     "holds a different adaptation run", {}),
    ("adapt-disk-full", [*MINI_ADAPT, "--out", "{out}"], "disk is full", {"fsize": 20_000}),
    ("adapt-no-gpu", [*MINI_ADAPT, "--device", "cuda", "--out", "{out}"], "--device cpu",
     {"env": NO_GPU}),
    ("adapt-weights-not-cached", ["adapt", "--model", "biomedclip", *MINI_ADAPT[3:],
                                  "--out", "{out}"], "--weights biomedclip=", {"env": OFFLINE}),
    ("adapt-garbage-weights", [*MINI_ADAPT, "--weights", "{fx}/garbage.safetensors",
                               "--out", "{out}"], "is not a readable .safetensors file", {}),
    ("adapt-import-garbage", ["adapt", "--import-robustmedclip", "{fx}/garbage.safetensors",
                              "--model", "medrobust-mini", "--out", "{out}"],
     "is not a readable .safetensors file", {}),
    ("adapt-unknown-model", [*MINI_ADAPT[:1], "--model", "nomodel", *MINI_ADAPT[3:],
                             "--out", "{out}"], "biomedclip", {}),
    # demo and pretrain
    ("demo-no-gpu", ["demo", "--data-root", "{data}", "--quick", "--device", "cuda",
                     "--out", "{out}"], "--device cpu", {"env": NO_GPU}),
    ("demo-garbage-weights", ["demo", "--data-root", "{data}", "--quick", "--model",
                              "clip-vit-b16", "--weights", "clip-vit-b16={fx}/garbage.safetensors",
                              "--out", "{out}"],
     "is not a readable .safetensors file", {}),
    ("pretrain-no-gpu", ["pretrain", "--data-root", "{data}", "--device", "cuda",
                         "--out", "{out}"], "--device cpu", {"env": NO_GPU}),
]


def _adapter_config(folder: Path, source: dict, vision_sha256: str) -> dict:
    return {
        "format": "medrobust-lora", "format_version": FORMAT_VERSION, "label": folder.name,
        "base": {"name": "medrobust-mini", "source": source, "vision_sha256": vision_sha256},
        "lora": {"rank": 4, "alpha": 4, "dropout": 0.0,
                 "modules": ["transformer.resblocks.0.mlp.c_fc"]},
        "adapter_sha256": "0" * 64,
    }


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Path:
    """The bad files and folders the cases use."""
    root = tmp_path_factory.mktemp("bad-inputs")
    (root / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    np.savez(root / "mismatched.npz", test_images=np.zeros((4, 8, 8), np.uint8),
             test_labels=np.zeros((3, 1), np.uint8))
    (root / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json" * 8)
    (root / "empty-cache" / "hf").mkdir(parents=True)
    (root / "damaged-run").mkdir()
    (root / "damaged-run" / "results.sqlite").write_bytes(b"this is not sqlite" * 100)
    (root / "wrong-schema-run").mkdir()
    with sqlite3.connect(root / "wrong-schema-run" / "results.sqlite") as conn:
        conn.execute("CREATE TABLE cells (name TEXT, value REAL)")
    manifest = root / "other-settings" / "breastmnist" / "test-manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"config": {"seed": 99}, "files": {}}))
    (root / "other-adapt" / "checkpoints").mkdir(parents=True)
    torch.save({"fingerprint": "another run"}, root / "other-adapt" / "checkpoints" / "train_state.pt")
    vision = vision_fingerprint(create_model("medrobust-mini"))
    for name, source in (
        ("self-adapter", {"kind": "adapter", "dir": str(root / "self-adapter"), "merge": True}),
        ("garbage-adapter", {"kind": "create_model", "name": "medrobust-mini", "kwargs": {}}),
    ):
        (root / name).mkdir()
        config = _adapter_config(root / name, source, vision)
        (root / name / ADAPTER_CONFIG).write_text(json.dumps(config))
        (root / name / ADAPTER_WEIGHTS).write_bytes((root / "garbage.safetensors").read_bytes())
    return root


def _fill(value, **places):
    if value is None:
        return None
    for key, text in places.items():
        value = value.replace("{" + key + "}", text)
    return value


def _partial_files(folder: Path) -> list[str]:
    """Temporary files, and .npz files that are not complete, under ``folder``."""
    if not folder.exists():
        return []
    bad = [str(p) for p in folder.rglob(".*") if p.is_file()]
    for path in folder.rglob("*.npz"):
        try:
            npz_array_info(path)
        except (NpzFormatError, OSError, ValueError):
            bad.append(str(path))
    return bad


@pytest.mark.parametrize(("args", "fragment", "options"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_a_bad_input_is_one_clear_line_and_exit_2(forkserver, shared_data, fx, tmp_path,
                                                   args, fragment, options):
    out = tmp_path / "out"
    places = {"data": str(shared_data), "fx": str(fx), "out": str(out)}
    argv = [_fill(a, **places) for a in args]
    env = {k: _fill(v, **places) for k, v in options.get("env", {}).items()}
    log = tmp_path / "log.txt"
    status, _ = forkserver.run(argv, log, env=env, fsize=options.get("fsize"))
    text = log.read_text()
    errors = [line for line in text.splitlines() if ": error:" in line]
    assert status == 2, text
    assert "Traceback" not in text, text
    assert len(errors) == 1 and fragment in errors[0], text
    assert _partial_files(out) == []


def test_debug_shows_the_traceback(forkserver, tmp_path):
    log = tmp_path / "log.txt"
    status, _ = forkserver.run(["corrupt", "nomnist", "--out", str(tmp_path / "o")], log,
                               env={"MEDROBUST_DEBUG": "1"})
    text = log.read_text()
    assert status == 2 and "Traceback" in text and "unknown dataset" in text


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_read_only_run_is_reported_elsewhere_and_never_written(forkserver, shared_data):
    """A run folder the user cannot write: ``report RUN`` says to use --out (exit 2), and
    ``report RUN --out DIR`` works and changes nothing in RUN. As root, whom permissions do
    not stop, the report runs as the user nobody."""
    base = Path(tempfile.mkdtemp(prefix="medrobust-readonly-"))
    try:
        base.chmod(0o755)
        run, out = base / "run", base / "elsewhere"
        status, _ = forkserver.run(
            [_fill(a, data=str(shared_data)) for a in MINI_EVAL] + ["--run-dir", str(run)],
            base / "eval.log")
        assert status == 0, (base / "eval.log").read_text()
        out.mkdir(mode=0o777)
        out.chmod(0o777)
        for path in [run, *run.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        before = _snapshot(run)
        as_user = {"uid": 65534} if os.geteuid() == 0 else {}
        env = {"MPLCONFIGDIR": str(out / ".mpl")}
        status, _ = forkserver.run(["report", str(run)], out / "a.log", env=env, **as_user)
        text = (out / "a.log").read_text()
        assert status == 2 and "Traceback" not in text and "--out DIR" in text, text
        status, _ = forkserver.run(["report", str(run), "--out", str(out / "report")],
                                   out / "b.log", env=env, **as_user)
        assert status == 0, (out / "b.log").read_text()
        assert (out / "report" / "report.html").is_file()
        assert _snapshot(run) == before
    finally:
        for path in [base, *base.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(base)
