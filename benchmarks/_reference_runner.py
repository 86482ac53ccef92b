"""Run the reference corruption packages exactly as their own pipelines do (reference side).

Runs under the reference environment (``.refenv/bin/python``, see setup_reference_env.sh)
and never imports medrobust. Called by parity.py and corruption_speed.py, which set the
BLAS/OpenMP thread variables in the child environment; ``--threads`` also limits torch,
OpenCV and threadpoolctl pools here.

Sub-commands:

* ``describe --report R``: the medmnistc registry (class and 5 parameters per dataset and
  corruption), the imagecorruptions names and package versions.
* ``apply --images IN.npz --jobs JOBS.json --out OUT.npz --report R``: apply jobs to clean
  224 px images and record per-image wall time and PSNR to the clean image. ``IN.npz`` holds
  one array per image set, (N, H, W) grey or (N, H, W, 3) RGB uint8. ``JOBS.json`` is a list
  of ``{"id", "package": "medmnistc"|"imagecorruptions", "corruption", "severity": 1..5,
  "images": <array name>, "dataset": <medmnistc registry dataset>, "save": bool, "n": int,
  "repeats": int}`` (``n`` limits the images, ``repeats`` passes over them continue one
  seeded stream: more draws for stochastic corruptions).
  Outputs of jobs with ``save`` go to ``OUT.npz`` under the job id.
* ``dataset-manager --medmnist-root DIR --output DIR --dataset FLAG --report R``: time
  medmnistc's own ``DatasetManager(...).create_dataset(FLAG)`` and its peak memory.

Per image the pipelines are:

* medmnistc (``DatasetManager``): ``Image.fromarray(img).convert('RGB')`` ->
  ``corruptor.apply(img, severity - 1)`` (0-based) -> ``Image.fromarray(out).convert('L')`` for
  grey images. Seeding as DatasetManager: ``seed_everything(seed)`` and its returned generator
  injected as ``ImpulseNoise.rng``, here once per job (DatasetManager: once per dataset).
* imagecorruptions: ``corrupt(rgb_array, corruption_name=..., severity=k)`` after
  ``np.random.seed(seed)`` per job; impulse_noise and glass_blur, which otherwise draw an
  unseeded generator, get a per-image seed from that stream. Grey images are fed as RGB and
  converted back with PIL ``convert('L')``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from _common import AnonPeak, maxrss_mib, psnr, to_jsonable

PACKAGES = ("medmnistc", "imagecorruptions")
SEEDED_IMAGECORRUPTIONS = ("impulse_noise", "glass_blur")
VERSIONED = ("medmnistc", "imagecorruptions-imaug", "imagecorruptions", "medmnist", "numpy",
             "scikit-image", "scipy", "opencv-python", "Pillow", "torch", "torchvision", "Wand")


def _installed_fromstring_shim() -> bool:
    """medmnistc's MotionBlur calls ``np.fromstring(blob, np.uint8)``, removed in numpy 2.3.

    With numpy >= 2.3 that binary use is routed to ``np.frombuffer`` (text mode untouched);
    with older numpy (the pinned reference environment) nothing is changed.
    """
    major, minor = (int(p) for p in np.__version__.split(".")[:2])
    if (major, minor) < (2, 3):
        return False
    original = np.fromstring

    def fromstring(string: Any, dtype: Any = float, count: int = -1, *, sep: str = "", **kw: Any):
        if sep == "" and isinstance(string, bytes | bytearray | memoryview):
            return np.frombuffer(string, dtype=dtype, count=count).copy()
        return original(string, dtype=dtype, count=count, sep=sep, **kw)

    np.fromstring = fromstring
    return True


def _limit_threads(threads: int) -> dict[str, Any]:
    """Limit torch, OpenCV and BLAS pools to ``threads`` (env variables are set by the caller)."""
    applied: dict[str, Any] = {"threads": threads}
    with contextlib.suppress(ImportError):
        import torch

        torch.set_num_threads(threads)
        applied["torch"] = torch.get_num_threads()
    with contextlib.suppress(ImportError):
        import cv2

        cv2.setNumThreads(threads)
        applied["cv2"] = cv2.getNumThreads()
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
        applied["threadpoolctl"] = True
    return applied


def _versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for name in VERSIONED:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _medmnistc_registry() -> tuple[dict[str, Any], dict[str, bool]]:
    from medmnistc.corruptions.registry import CORRUPTIONS_DS, DATASET_RGB

    return CORRUPTIONS_DS, DATASET_RGB


# ---------------------------------------------------------------- describe


def describe() -> dict[str, Any]:
    """What the reference packages provide (parameters as the registry holds them)."""
    out: dict[str, Any] = {"versions": _versions(), "packages": {}}
    try:
        registry, rgb = _medmnistc_registry()
        out["packages"]["medmnistc"] = {
            "available": True,
            "rgb": rgb,
            "datasets": {
                ds: {
                    name: {"class": type(c).__name__, "params": to_jsonable(c.severity_params[:5])}
                    for name, c in corruptions.items()
                }
                for ds, corruptions in registry.items()
            },
        }
    except Exception as exc:  # report, so our side still runs
        out["packages"]["medmnistc"] = {"available": False, "error": _error(exc)}
    try:
        from imagecorruptions import get_corruption_names

        out["packages"]["imagecorruptions"] = {
            "available": True, "corruptions": get_corruption_names("all"),
        }
    except Exception as exc:
        out["packages"]["imagecorruptions"] = {"available": False, "error": _error(exc)}
    return out


# ---------------------------------------------------------------- apply


def _medmnistc_pipeline(job: dict[str, Any], seed: int) -> tuple[Callable, Any]:
    """Per-image function and parameter for a medmnistc job, seeded like DatasetManager."""
    from medmnistc.utils.utils import seed_everything

    registry, _ = _medmnistc_registry()
    corruptor = registry[job["dataset"]][job["corruption"]]
    index = job["severity"] - 1  # medmnistc severities are 0-based
    rng = seed_everything(seed)
    if type(corruptor).__name__ == "ImpulseNoise":
        corruptor.rng = rng  # as DatasetManager does (apply() alone lacks .rng: defect 4)

    def run(img: np.ndarray, grey: bool) -> np.ndarray:
        out = corruptor.apply(Image.fromarray(img).convert("RGB"), index)
        if grey:
            out = Image.fromarray(out).convert("L")
        return np.asarray(out, dtype=np.uint8)

    return run, corruptor.severity_params[index]


def _imagecorruptions_pipeline(job: dict[str, Any], seed: int) -> tuple[Callable, Any]:
    from imagecorruptions import corrupt

    name, severity = job["corruption"], job["severity"]
    np.random.seed(seed)  # imagecorruptions draws from the global numpy stream

    def run(img: np.ndarray, grey: bool) -> np.ndarray:
        rgb = np.asarray(Image.fromarray(img).convert("RGB"))
        kwargs = {"seed": int(np.random.randint(2**31 - 1))} if name in SEEDED_IMAGECORRUPTIONS else {}
        out = corrupt(rgb, corruption_name=name, severity=severity, **kwargs)
        if grey:
            out = Image.fromarray(out).convert("L")
        return np.asarray(out, dtype=np.uint8)

    return run, None


PIPELINES = {"medmnistc": _medmnistc_pipeline, "imagecorruptions": _imagecorruptions_pipeline}


def run_job(job: dict[str, Any], images: np.ndarray, seed: int) -> tuple[dict[str, Any], np.ndarray | None]:
    """Apply one job to every image, ``repeats`` times over (one seeded stream).

    Returns (report, outputs of the first pass or None on failure). ``psnr`` lists
    repeat-major values: pass r, image i at ``r * n + i``.
    """
    report: dict[str, Any] = {"ok": False}
    n = min(len(images), int(job.get("n") or len(images)))
    repeats = int(job.get("repeats") or 1)
    grey = images.ndim == 3
    try:
        run, param = PIPELINES[job["package"]](job, seed)
        report["param"] = to_jsonable(param)
        outputs, times, psnrs = [], [], []
        for _ in range(repeats):
            for img in images[:n]:
                start = time.perf_counter()
                out = run(img, grey)
                times.append((time.perf_counter() - start) * 1e3)
                if out.shape != img.shape:
                    raise ValueError(f"output shape {out.shape} != input shape {img.shape}")
                psnrs.append(float(psnr(img[None], out[None])[0]))
                if len(outputs) < n:
                    outputs.append(out)
    except Exception as exc:  # a reference defect: report it, the caller compares the rest
        report["error"] = _error(exc)
        return report, None
    report.update(
        ok=True,
        n=n,
        repeats=repeats,
        ms_per_image=[round(t, 4) for t in times],
        ms_median=float(np.median(times)),
        ms_mean=float(np.mean(times)),
        psnr=[round(v, 4) for v in psnrs],
    )
    return report, np.stack(outputs)


def apply_jobs(images_path: Path, jobs_path: Path, out_path: Path | None, seed: int) -> dict[str, Any]:
    jobs = json.loads(jobs_path.read_text())
    saved: dict[str, np.ndarray] = {}
    results: dict[str, Any] = {}
    with np.load(images_path, allow_pickle=False) as data:
        sets = {key: data[key] for key in data.files}
    for job in jobs:
        if job["package"] not in PIPELINES:
            raise ValueError(f"unknown package {job['package']!r}; allowed: {PACKAGES}")
        report, outputs = run_job(job, sets[job["images"]], seed)
        results[job["id"]] = report
        if outputs is not None and job.get("save", False):
            saved[job["id"]] = outputs
    if out_path is not None:
        np.savez(out_path, **saved)
    return {"jobs": results}


# ---------------------------------------------------------------- dataset-manager


def dataset_manager(medmnist_root: Path, output: Path, dataset: str, seed: int) -> dict[str, Any]:
    """Time medmnistc's own whole-dataset generation (all corruptions x 5 severities)."""
    from medmnistc.dataset_manager import DatasetManager

    manager = DatasetManager(medmnist_path=str(medmnist_root), output_path=str(output), random_seed=seed)
    baseline, anon_before = maxrss_mib(), AnonPeak.current_mib()
    start = time.perf_counter()
    with (
        AnonPeak() as anon,
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),  # silence its prints and tqdm bars
    ):
        manager.create_dataset(dataset)
    seconds = time.perf_counter() - start
    files = sorted((output / dataset).glob("*.npz"))
    return {
        "seconds": seconds,
        "maxrss_before_mib": baseline,
        "anon_before_mib": anon_before,
        "anon_peak_mib": anon.peak_mib,
        "files": [f.name for f in files],
        "bytes": sum(f.stat().st_size for f in files),
    }


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("describe", "apply", "dataset-manager"))
    parser.add_argument("--report", type=Path, required=True, help="JSON report to write")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=Path, help="apply: input npz of clean images")
    parser.add_argument("--jobs", type=Path, help="apply: JSON list of jobs")
    parser.add_argument("--out", type=Path, help="apply: npz for the outputs of 'save' jobs")
    parser.add_argument("--medmnist-root", type=Path, help="dataset-manager: MedMNIST root")
    parser.add_argument("--output", type=Path, help="dataset-manager: output folder")
    parser.add_argument("--dataset", help="dataset-manager: MedMNIST flag")
    args = parser.parse_args(argv)
    needed = {"apply": ("images", "jobs"), "dataset-manager": ("medmnist_root", "output", "dataset")}
    missing = [f"--{n.replace('_', '-')}" for n in needed.get(args.command, ()) if getattr(args, n) is None]
    if missing:
        parser.error(f"{args.command} needs {', '.join(missing)}")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    meta = {
        "fromstring_shim": _installed_fromstring_shim(),
        "thread_limits": _limit_threads(args.threads),
        "thread_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
        "versions": _versions(),
        "seed": args.seed,
    }
    if args.command == "describe":
        report = describe()
    elif args.command == "apply":
        report = apply_jobs(args.images, args.jobs, args.out, args.seed)
    else:
        report = dataset_manager(args.medmnist_root, args.output, args.dataset, args.seed)
    report["meta"] = meta
    report["maxrss_mib"] = maxrss_mib()
    args.report.write_text(json.dumps(to_jsonable(report), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
