"""End-to-end speed of the evaluation runner against the model's bare forward pass.

Measured side by side in one process on the same batch size:

* bare: ``encode_image`` (+ normalisation and scoring) on one ready, preprocessed batch,
  repeated; the ceiling of any evaluation pipeline;
* end to end: ``run_grid`` over clean + every corruption of a suite at one severity, i.e.
  data -> corruption -> preprocessing -> model -> metrics -> store, in a fresh run folder.

The ratio end-to-end / bare images per second is the figure of merit (target >= 0.90); the
two are measured alternately ``--repeats`` times and the median, min and max are reported.
Usage::

    python benchmarks/eval_speed.py --model clip-vit-b16 --dataset pneumoniamnist --n 512
    python benchmarks/eval_speed.py --device cuda --precision bf16 --batch-size 512  # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from medrobust.corruptions import get_suite, prepare_images
from medrobust.data import open_dataset
from medrobust.evaluation import GridSpec, run_grid
from medrobust.models import ZeroShotClassifier, create_model
from medrobust.models.kernels import EngineSettings, prepare_for_inference
from medrobust.models.zeroshot import PRECISIONS
from medrobust.runtime import KERNELS

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_rate(classifier: ZeroShotClassifier, pixels: torch.Tensor, repeats: int) -> float:
    """Images/s of the model alone on one preprocessed batch already on the device."""
    device = pixels.device
    with torch.inference_mode():
        classifier.probabilities(pixels)  # warm-up
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            classifier.probabilities(pixels)
        _sync(device)
    return repeats * len(pixels) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="clip-vit-b16")
    parser.add_argument("--tiny", action="store_true", help="the tiny test config instead of full size")
    parser.add_argument("--pretrained", action="store_true",
                        help="load the model's weights (e.g. the shipped medrobust-mini); default random")
    parser.add_argument("--dataset", default="pneumoniamnist")
    parser.add_argument("--data-root", default=os.environ.get("MEDROBUST_DATA", str(DEFAULT_DATA)))
    parser.add_argument("--suite", default="medmnist-c")
    parser.add_argument("--severity", type=int, default=3)
    parser.add_argument("--n", type=int, default=256, help="images of the dataset to use")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--kernels", default="auto", choices=KERNELS, help="as medrobust eval --kernels")
    parser.add_argument("--compile", action="store_true", help="as medrobust eval --compile")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    parser.add_argument("--repeats", type=int, default=3, help="bare / end-to-end pairs (spread)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = create_model(args.model, pretrained=args.pretrained, tiny=args.tiny, device=device)
    dataset = open_dataset(args.dataset, root=args.data_root).subset(range(args.n))
    suite = get_suite(args.suite, dataset.name)
    engine = prepare_for_inference(model, EngineSettings(args.kernels, args.compile),
                                   batch_size=args.batch_size, autocast_dtype=PRECISIONS[args.precision])
    classifier = ZeroShotClassifier(model, dataset.class_names, None, dataset.modality,
                                    precision=args.precision)

    batch = next(dataset.iter_batches(args.batch_size))[1]
    pixels = model.preprocess(prepare_images(batch, suite.reference_size).to(device))
    cells = 1 + len(suite.corruptions)
    repeats = max(3, cells * args.n // args.batch_size)
    spec = GridSpec(models=[model], datasets=[dataset], suite=args.suite, severities=(args.severity,),
                    batch_size=args.batch_size, device=args.device, precision=args.precision,
                    kernels=args.kernels, compile=args.compile)
    runs = []
    for _ in range(args.repeats):  # alternated, so both sides see the same machine load
        bare = bare_rate(classifier, pixels, repeats)
        with tempfile.TemporaryDirectory() as run_dir:
            start = time.perf_counter()
            summary = run_grid(spec, run_dir, progress=False)
            _sync(device)
            wall = time.perf_counter() - start
        end_to_end = summary.images / wall
        runs.append({"bare_images_per_s": round(bare, 1), "end_to_end_images_per_s": round(end_to_end, 1),
                     "ratio": round(end_to_end / bare, 3)})
        print(json.dumps(runs[-1]), flush=True)
    ratios = sorted(r["ratio"] for r in runs)
    result = {
        "model": args.model + (" (tiny)" if args.tiny else ""),
        "device": str(device),
        "precision": args.precision,
        "engine": engine.to_dict(),
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "cells": summary.computed,
        "images": summary.images,
        "ratio_median": statistics.median(ratios),
        "ratio_min": ratios[0],
        "ratio_max": ratios[-1],
        "load_average_1min": os.getloadavg()[0],
        "runs": runs,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
