"""Corruptions on a CUDA device: images/s per corruption and agreement with the CPU.

For every corruption of the chosen suites (severity ``--severity``, 224 px real MedMNIST test
images, batches of ``--batch``) it reports

* CUDA images/s: median of ``--repeats`` timed passes over the images, after a warm-up,
  timed with ``torch.cuda.synchronize`` around the pass (host-side work such as drawing
  random numbers included);
* agreement with the CPU on the same images, seed and indices: deterministic corruptions,
  mean and max absolute difference in grey levels; stochastic ones (the device's random
  streams differ from the CPU's), the gap between the mean PSNR to the clean image on CUDA
  and on the CPU, in dB.

A whole-dataset run times ``generate_benchmark(device='cuda')`` on the pneumoniamnist test
split (all its MedMNIST-C corruptions x 5 severities, 224 px) against the same on the CPU.

Run on a machine with a GPU: ``python benchmarks/corruption_cuda.py``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import (
    DEFAULT_DATA_ROOT,
    SPEED_SUITES,
    geometric_mean,
    load_real_images,
    markdown_table,
    mean_abs_diff,
    psnr,
    write_results,
)
from medrobust.runtime import keep_freed_memory

DEFAULT_SUITES = SPEED_SUITES
HEADERS = ("corruption", "function", "CUDA img/s", "CPU img/s", "CUDA/CPU", "agreement")


def _timed(fn: Any, repeats: int, device: torch.device) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs, after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _run_suite(entry: Any, images: torch.Tensor, severity: int, batch: int) -> torch.Tensor:
    outs = []
    for lo in range(0, len(images), batch):
        chunk = images[lo : lo + batch]
        outs.append(entry.apply(chunk, severity, seed=0, indices=range(lo, lo + len(chunk))))
    return torch.cat(outs)


def measure_suite(spec: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from medrobust.corruptions import get_suite
    from medrobust.corruptions.api import to_channels_first

    suite_spec, _, image_set = spec.partition("@")
    name, _, dataset = suite_spec.partition("/")
    suite = get_suite(name, dataset=dataset or None)
    cpu_images = to_channels_first(load_real_images(image_set, args.n, args.data_root))
    gpu_images = cpu_images.to(device)
    rows = {}
    for corruption, entry in suite.entries.items():
        try:
            gpu_seconds = _timed(lambda e=entry: _run_suite(e, gpu_images, args.severity, args.batch),
                                 args.repeats, device)
            cpu_seconds = _timed(lambda e=entry: _run_suite(e, cpu_images, args.severity, args.batch),
                                 1, torch.device("cpu"))
            on_gpu = _run_suite(entry, gpu_images, args.severity, args.batch).cpu().numpy()
            on_cpu = _run_suite(entry, cpu_images, args.severity, args.batch).numpy()
            clean = cpu_images.numpy()
            row: dict[str, Any] = {
                "function": entry.function,
                "stochastic": entry.stochastic,
                "cuda_images_per_s": len(cpu_images) / gpu_seconds,
                "cpu_images_per_s": len(cpu_images) / cpu_seconds,
            }
            if entry.stochastic:
                row["psnr_gap_db"] = float(psnr(clean, on_gpu).mean() - psnr(clean, on_cpu).mean())
            else:
                row["mean_abs_diff"] = mean_abs_diff(on_gpu, on_cpu)
                row["max_abs_diff"] = int(np.abs(on_gpu.astype(np.int16) - on_cpu.astype(np.int16)).max())
            rows[corruption] = row
        except Exception as exc:  # report the failure, go on with the others
            rows[corruption] = {"function": entry.function, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"suite": spec, "n": len(cpu_images), "corruptions": rows}


def measure_whole(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from medrobust.corruptions import get_suite
    from medrobust.corruptions.generate import GenerateConfig, generate_benchmark
    from medrobust.data import load_medmnist

    dataset = load_medmnist("pneumoniamnist", split="test", size=28, root=args.data_root, download=False)
    suite = get_suite("medmnist-c", dataset="pneumoniamnist")
    seconds = {}
    for label, target in (("cuda", device), ("cpu", torch.device("cpu"))):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            config = GenerateConfig(layout="medmnist-c", seed=0, batch_size=args.batch, resize=True)
            generate_benchmark(dataset, suite, out, config, device=str(target), progress=False)
            seconds[label] = time.perf_counter() - start
    return {"dataset": "pneumoniamnist", "images": len(dataset), "corruptions": len(suite.corruptions),
            "severities": 5, "seconds": seconds}


def _agreement(row: dict[str, Any]) -> str:
    if "psnr_gap_db" in row:
        return f"PSNR gap {row['psnr_gap_db']:+.2f} dB"
    return f"MAD {row['mean_abs_diff']:.3f}, max {row['max_abs_diff']}"


def to_markdown(payload: dict[str, Any]) -> str:
    lines = ["# Corruptions on CUDA", "",
             f"Device: {payload['device']}; torch {payload['torch']}; severity {payload['severity']}, "
             f"batch {payload['batch']}, 224 px real MedMNIST test images; CPU column: "
             f"{payload['cpu_threads']} torch threads on the GPU machine's CPU.", ""]
    for result in payload["suites"]:
        lines += [f"## {result['suite']} ({result['n']} images)", ""]
        rows, ratios = [], []
        for name, row in result["corruptions"].items():
            if "error" in row:
                rows.append((name, row["function"], "error", "", "", row["error"]))
                continue
            ratio = row["cuda_images_per_s"] / row["cpu_images_per_s"]
            ratios.append(ratio)
            rows.append((name, row["function"], f"{row['cuda_images_per_s']:.0f}",
                         f"{row['cpu_images_per_s']:.0f}", f"{ratio:.1f}", _agreement(row)))
        rows.append(("geometric mean", "", "", "", f"{geometric_mean(ratios):.1f}" if ratios else "", ""))
        lines += [markdown_table(HEADERS, rows), ""]
    whole = payload.get("whole")
    if whole:
        s = whole["seconds"]
        lines += ["## Whole-dataset generation", "",
                  f"{whole['dataset']} test split ({whole['images']} images), {whole['corruptions']} "
                  f"corruptions x {whole['severities']} severities at 224 px, medmnist-c layout: "
                  f"CUDA {s['cuda']:.1f} s, CPU {s['cpu']:.1f} s.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suites", nargs="+", default=list(DEFAULT_SUITES))
    parser.add_argument("--n", type=int, default=512, help="images per suite")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--severity", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-whole", action="store_true")
    parser.add_argument("--device", default="cuda", help="the accelerator (cpu only for a smoke test)")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cuda")
    args = parser.parse_args()
    keep_freed_memory()  # as the medrobust CLI does
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("corruption_cuda.py: no CUDA device here (--device cpu for a smoke test)")
    payload: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
        "severity": args.severity, "batch": args.batch, "cpu_threads": torch.get_num_threads(),
        "suites": [],
    }
    for spec in args.suites:
        payload["suites"].append(measure_suite(spec, args, device))
        print(to_markdown(payload), flush=True)
    if not args.skip_whole:
        payload["whole"] = measure_whole(args, device)
    markdown = to_markdown(payload)
    print(markdown)
    write_results(args.out, payload, markdown)


if __name__ == "__main__":
    main()
