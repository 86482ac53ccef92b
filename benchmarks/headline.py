"""The whole MedMNIST-C grid for one model, corrupted on the fly: images/s and projected minutes.

For each of the 12 MedMNIST 2D datasets, its MedMNIST-C suite (clean + every corruption x 5
severities) on the test split, scored by ``run_grid`` exactly as ``medrobust eval`` does:
real images where the data root holds the dataset, else synthetic images of the official
test-set size, native shape and label space (random uint8 from a seeded generator: they cost
the same to corrupt and score as real ones; their accuracy means nothing). ``--limit N``
scores the first N images of each dataset only; each dataset's measured rate is then scaled to
its full test set for the projection. Every figure printed is measured, none estimated.
Peak memory: this process's maximum RSS (the imports alone are ~850 MiB), and per dataset the
growth of anonymous memory during its run and, on CUDA, the peak allocated device memory; these
follow the batch size and prefetch depth, not the dataset's size.

Usage::

    python benchmarks/headline.py --model medrobust-mini --pretrained --limit 16        # CPU, short
    python benchmarks/headline.py --model clip-vit-b16 --device cuda --precision bf16 \\
        --batch-size 512 --json benchmarks/results/headline_cuda.json                  # one GPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import AnonPeak, add_model_arguments
from medrobust.corruptions import get_suite
from medrobust.data import DataNotFoundError, ImageDataset, load_medmnist, medmnist_info
from medrobust.data.medmnist import MEDMNIST_2D_FLAGS, _medmnist_info
from medrobust.evaluation import GridSpec, run_grid
from medrobust.models import create_model


def synthetic_test_set(flag: str, seed: int = 0) -> ImageDataset:
    """Random images of ``flag``'s official test-set size, native 28 px shape and label space."""
    official = _medmnist_info()[flag]
    info = medmnist_info(flag)
    n, channels, k = official["n_samples"]["test"], official["n_channels"], len(info.class_names)
    rng = np.random.default_rng([seed, MEDMNIST_2D_FLAGS.index(flag)])
    shape = (n, 28, 28) if channels == 1 else (n, 28, 28, 3)
    labels = rng.integers(0, 2, (n, k)) if info.task == "multi-label" else rng.integers(0, k, n)
    return ImageDataset(flag, "test", rng.integers(0, 256, shape, dtype=np.uint8), labels,
                        list(info.class_names), info.modality, info.task, "synthetic")


def test_set(flag: str, root: Path) -> ImageDataset:
    """The real test split where the data root holds all of it, else a synthetic one of its
    official size (a subset, such as ``medmnist-subsets/``, would shrink the projection)."""
    try:
        real = load_medmnist(flag, split="test", root=root, download=False)
    except DataNotFoundError:
        return synthetic_test_set(flag)
    official = _medmnist_info()[flag]["n_samples"]["test"]
    return real if len(real) == official else synthetic_test_set(flag)


def measure(model: Any, dataset: ImageDataset, args: argparse.Namespace) -> dict[str, Any]:
    """One dataset's grid (limited to ``--limit`` images): measured rate, projection to its size,
    and the run's peak memory (anonymous host memory above the start of the run, GPU)."""
    suite = get_suite("medmnist-c", dataset.name)
    cells = 1 + 5 * len(suite.corruptions)
    spec = GridSpec(models=[model], datasets=[dataset], suite="medmnist-c", batch_size=args.batch_size,
                    device=args.device, precision=args.precision, limit=args.limit,
                    kernels=args.kernels, compile=args.compile)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as run_dir, AnonPeak() as anon:
        before = AnonPeak.current_mib()
        start = time.perf_counter()
        summary = run_grid(spec, run_dir, progress=False)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    rate = summary.images / seconds
    full = len(dataset) * cells
    return {"dataset": dataset.name, "data": "real" if dataset.source != "synthetic" else "synthetic",
            "test_images": len(dataset), "cells": cells, "images_scored": summary.images,
            "seconds": round(seconds, 2), "images_per_s": round(rate, 1), "grid_images": full,
            "projected_minutes": round(full / rate / 60, 2),
            "peak_anon_growth_mib": None if before is None else round(anon.peak_mib - before, 1),
            "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, batch_size=128, precision="auto")
    parser.add_argument("--datasets", default=",".join(MEDMNIST_2D_FLAGS))
    parser.add_argument("--limit", type=int, help="score only the first N images of each dataset")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = create_model(args.model, pretrained=args.pretrained, tiny=args.tiny, device=args.device)
    rows = []
    skipped = {}
    for flag in args.datasets.split(","):
        dataset = test_set(flag, args.data_root)
        if dataset.task == "multi-label":  # the per-cell metrics score single-label tasks only
            skipped[flag] = "multi-label task: the evaluation's metrics do not score it"
            continue
        rows.append(measure(model, dataset, args))
        print(json.dumps(rows[-1]), flush=True)
    scored = sum(r["images_scored"] for r in rows)
    seconds = sum(r["seconds"] for r in rows)
    result = {
        "model": args.model + (" (tiny)" if args.tiny else ""), "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "precision": args.precision, "kernels": args.kernels, "compile": args.compile,
        "batch_size": args.batch_size, "limit": args.limit,
        "threads": torch.get_num_threads(), "load_average_1min": os.getloadavg()[0],
        "images_scored": scored, "seconds": round(seconds, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_anon_growth_mib": max((r["peak_anon_growth_mib"] or 0) for r in rows) if rows else None,
        "peak_gpu_mib": max(r["peak_gpu_mib"] for r in rows) if rows and args.device.startswith("cuda") else None,
        "images_per_s": round(scored / seconds, 1),
        "grid_images": sum(r["grid_images"] for r in rows),
        "projected_minutes": round(sum(r["projected_minutes"] for r in rows), 1),
        "datasets": rows,
        "skipped": skipped,
    }
    print(f"{result['images_per_s']} images/s over {scored} images; whole grid "
          f"({result['grid_images']:,} images): {result['projected_minutes']} minutes projected"
          + (f"; skipped: {skipped}" if skipped else ""))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
