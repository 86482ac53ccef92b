"""End-to-end speed of the evaluation against the model's bare forward pass, side by side.

Three sides, measured alternately ``--repeats`` times (so each sees the same machine load), on
the same model, batch size, precision, input size and number of images:

* bare: the classifier's forward pass (``encode_image`` + normalisation + scoring) on one
  ready batch, already preprocessed to the model's input and on the device, repeated as many
  times as the grid has batches; the ceiling of any evaluation pipeline;
* pipeline: ``run_grid`` in this process over clean + every corruption of the suite at one
  severity (data -> corruption -> preprocessing -> model -> metrics -> predictions + SQLite),
  in a fresh run folder, model already loaded (the wall time of the grid);
* command: ``medrobust eval`` with the same options as a subprocess, timed from start to exit:
  what a user waits for, start-up (imports, model loading, prompt embedding) included.

Figures of merit: pipeline / bare and command / bare images per second per round (median,
min, max; target >= 0.90; the command's start-up is a fixed cost that weighs less the more
images a run scores), and the ratio of each side's best round to the bare side's best. Also
reported: CPU seconds per image of each side (on a busy machine the wall ratio tends to the
CPU ratio, as the background threads then take CPU from the model), peak host memory (this
process's and the command's maximum RSS, and the pipeline's sampled peak anonymous memory)
and, on CUDA, peak device memory. Usage::

    python benchmarks/eval_speed.py --model medrobust-mini --pretrained --n 512 --threads 1
    python benchmarks/eval_speed.py --device cuda --precision bf16 --batch-size 512  # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from _common import AnonPeak, add_model_arguments, maxrss_mib
from medrobust.corruptions import get_suite, prepare_images
from medrobust.data import open_dataset
from medrobust.evaluation import GridSpec, run_grid
from medrobust.models import ModelAdapter, ZeroShotClassifier, create_model
from medrobust.models.kernels import EngineSettings, prepare_for_inference
from medrobust.models.zeroshot import PRECISIONS
from medrobust.runtime import keep_freed_memory


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_side(classifier: ZeroShotClassifier, pixels: torch.Tensor, batches: int) -> dict[str, float]:
    """Images/s and CPU s/image of the model alone on one preprocessed batch on the device."""
    device = pixels.device
    with torch.inference_mode():
        classifier.probabilities(pixels)  # warm-up
        _sync(device)
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(batches):
            classifier.probabilities(pixels)
        _sync(device)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    images = batches * len(pixels)
    return {"images_per_s": images / wall, "cpu_ms_per_image": 1000 * cpu / images}


def pipeline_side(spec: GridSpec, device: torch.device) -> dict[str, Any]:
    """``run_grid`` in this process, in a fresh run folder: images/s, CPU, peak memory."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as run_dir, AnonPeak() as anon:
        before = AnonPeak.current_mib()
        start, cpu = time.perf_counter(), time.process_time()
        summary = run_grid(spec, run_dir, progress=False)
        _sync(device)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "images": summary.images, "cells": summary.computed,
        "images_per_s": summary.images / wall, "cpu_ms_per_image": 1000 * cpu / summary.images,
        "peak_anon_growth_mib": None if before is None else anon.peak_mib - before,
        "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    }


def command_side(args: argparse.Namespace, images: int) -> dict[str, Any]:
    """``medrobust eval`` as a subprocess: wall-clock images/s, its CPU and maximum RSS."""
    with tempfile.TemporaryDirectory() as run_dir:
        cmd = [sys.executable, "-m", "medrobust.cli", "--threads", str(torch.get_num_threads()),
               "eval", "--model", args.model, "--dataset", args.dataset, "--data-root", str(args.data_root),
               "--suite", args.suite, "--severities", str(args.severity), "--limit", str(args.n),
               "--batch-size", str(args.batch_size), "--device", args.device,
               "--precision", args.precision, "--kernels", args.kernels, "--run-dir", run_dir, "--quiet"]
        if args.compile:
            cmd.append("--compile")
        if not args.pretrained:
            cmd.append("--random-weights")
        start = time.perf_counter()
        process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"eval_speed: {' '.join(cmd)} exited with {process.returncode}")
    return {"images_per_s": images / wall, "seconds": wall,
            "cpu_ms_per_image": 1000 * (usage.ru_utime + usage.ru_stime) / images,
            "max_rss_mib": usage.ru_maxrss / 1024}


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def _best_ratio(runs: list[dict[str, Any]], side: str) -> float:
    """Best rate of ``side`` over best bare rate: on a shared machine, where load comes and
    goes between the sides of a round, each side's best round is the one least disturbed."""
    return round(max(r[side]["images_per_s"] for r in runs)
                 / max(r["bare"]["images_per_s"] for r in runs), 3)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, batch_size=64, precision="fp32")
    parser.add_argument("--dataset", default="pneumoniamnist")
    parser.add_argument("--suite", default="medmnist-c")
    parser.add_argument("--severity", type=int, default=3)
    parser.add_argument("--n", type=int, default=256, help="images of the dataset to use (its first N)")
    parser.add_argument("--repeats", type=int, default=3, help="alternated rounds of the sides (spread)")
    parser.add_argument("--no-command", action="store_true",
                        help="skip the `medrobust eval` side (always skipped with --tiny)")
    parser.add_argument("--json", help="write the results here")
    return parser.parse_args()


def _bare_input(args: argparse.Namespace, model: ModelAdapter, device: torch.device
                ) -> tuple[ZeroShotClassifier, torch.Tensor]:
    """The classifier as the grid builds it, and the dataset's first batch as the model takes it."""
    dataset = open_dataset(args.dataset, root=args.data_root, named_classes=True)
    suite = get_suite(args.suite, dataset.name, dataset.modality)
    classifier = ZeroShotClassifier(model, dataset.class_names, None, dataset.modality,
                                    precision=args.precision)
    batch = next(dataset.subset(range(args.n)).iter_batches(args.batch_size))[1]
    return classifier, model.preprocess(prepare_images(batch, suite.reference_size).to(device))


def main() -> None:
    args = _parse()
    keep_freed_memory()  # as the command line does
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = create_model(args.model, pretrained=args.pretrained, tiny=args.tiny, device=device)
    engine = prepare_for_inference(model, EngineSettings(args.kernels, args.compile),
                                   batch_size=args.batch_size, autocast_dtype=PRECISIONS[args.precision])
    classifier, pixels = _bare_input(args, model, device)
    spec = GridSpec(models=[model], datasets=[args.dataset], suite=args.suite,
                    severities=(args.severity,), batch_size=args.batch_size, device=args.device,
                    precision=args.precision, data_root=args.data_root, limit=args.n,
                    kernels=args.kernels, compile=args.compile)
    command = not (args.no_command or args.tiny)
    runs = []
    for _ in range(args.repeats):
        pipeline = pipeline_side(spec, device)
        bare = bare_side(classifier, pixels, -(-pipeline["images"] // args.batch_size))
        run = {"bare": bare, "pipeline": pipeline, "pipeline_ratio": pipeline["images_per_s"] / bare["images_per_s"]}
        if command:
            run["command"] = command_side(args, pipeline["images"])
            run["command_ratio"] = run["command"]["images_per_s"] / bare["images_per_s"]
        run["load_average_1min"] = os.getloadavg()[0]
        runs.append(json.loads(json.dumps(run), parse_float=lambda x: round(float(x), 3)))
        print(json.dumps(runs[-1]), flush=True)
    result = {
        "model": args.model + (" (tiny)" if args.tiny else ""), "dataset": args.dataset, "n": args.n,
        "device": str(device), "precision": args.precision, "engine": engine.to_dict(),
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size, "cells": runs[0]["pipeline"]["cells"],
        "images": runs[0]["pipeline"]["images"],
        "pipeline_ratio": _spread([r["pipeline_ratio"] for r in runs]),
        "command_ratio": _spread([r["command_ratio"] for r in runs]) if command else None,
        "best_rates_ratio": _best_ratio(runs, "pipeline"),
        "command_best_rates_ratio": _best_ratio(runs, "command") if command else None,
        "cpu_ratio": _spread([r["bare"]["cpu_ms_per_image"] / r["pipeline"]["cpu_ms_per_image"] for r in runs]),
        "peak_rss_mib": round(maxrss_mib()),
        "load_average_1min": _spread([r["load_average_1min"] for r in runs]),
        "cpu_count": os.cpu_count(),
        "runs": runs,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
