"""Corruptions on a CUDA device: images/s per corruption and agreement with the CPU.

For every corruption of the chosen suites (severity ``--severity``, 224 px real MedMNIST test
images, batches of ``--batch``) it reports

* device images/s: median (and range) of ``--repeats`` timed passes over the images, after a
  warm-up, timed with ``torch.cuda.synchronize`` around the pass (host-side work such as
  drawing random numbers included);
* CPU images/s: one timed pass on the CPU (the device's own numbers when it is the CPU);
* agreement with the CPU on the same images, seed and indices: deterministic corruptions,
  mean and max absolute difference in grey levels; stochastic ones (the device's random
  streams differ from the CPU's, but for those drawn on the host), the gap between the mean
  PSNR to the clean image on the device and on the CPU, in dB.

A whole-dataset run times ``generate_benchmark(device=...)`` on the pneumoniamnist test
split (all its MedMNIST-C corruptions x 5 severities, 224 px; ``--whole-limit`` images of it)
against the same on the CPU.

Run on a machine with a GPU: ``python benchmarks/corruption_cuda.py``. A small run on the CPU:
``python benchmarks/corruption_cuda.py --device cpu --n 32 --batch 32 --repeats 3 --skip-whole
--threads 1 --corruptions jpeg_compression motion_blur characters``.
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
HEADERS = ("corruption", "function", "device img/s (range)", "CPU img/s", "device/CPU", "agreement")


def _timed(fn: Any, repeats: int, device: torch.device) -> list[float]:
    """Seconds of ``fn()`` in each of ``repeats`` runs, after one warm-up."""
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
    return times


def _rates(n: int, seconds: list[float]) -> dict[str, float]:
    """Images/s of the median run, and of the slowest and the fastest."""
    return {"median": n / statistics.median(seconds), "min": n / max(seconds), "max": n / min(seconds)}


def _run_suite(entry: Any, images: torch.Tensor, severity: int, batch: int) -> torch.Tensor:
    outs = []
    for lo in range(0, len(images), batch):
        chunk = images[lo : lo + batch]
        outs.append(entry.apply(chunk, severity, seed=0, indices=range(lo, lo + len(chunk))))
    return torch.cat(outs)


def _measure(
    entry: Any, cpu_images: torch.Tensor, gpu_images: torch.Tensor, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """Images/s of one corruption on the device and the CPU, and their agreement."""
    n = len(cpu_images)
    device_rates = _rates(n, _timed(lambda: _run_suite(entry, gpu_images, args.severity, args.batch),
                                    args.repeats, device))
    row: dict[str, Any] = {"function": entry.function, "stochastic": entry.stochastic,
                           "device_images_per_s": device_rates}
    if device.type == "cpu":
        row["cpu_images_per_s"] = device_rates["median"]
        return row
    cpu_seconds = _timed(lambda: _run_suite(entry, cpu_images, args.severity, args.batch), 1, torch.device("cpu"))
    row["cpu_images_per_s"] = _rates(n, cpu_seconds)["median"]
    on_gpu = _run_suite(entry, gpu_images, args.severity, args.batch).cpu().numpy()
    on_cpu = _run_suite(entry, cpu_images, args.severity, args.batch).numpy()
    row["mean_abs_diff"] = mean_abs_diff(on_gpu, on_cpu)
    row["max_abs_diff"] = int(np.abs(on_gpu.astype(np.int16) - on_cpu.astype(np.int16)).max())
    if entry.stochastic:
        clean = cpu_images.numpy()
        row["psnr_gap_db"] = float(psnr(clean, on_gpu).mean() - psnr(clean, on_cpu).mean())
    return row


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
        if args.corruptions and corruption not in args.corruptions:
            continue
        try:
            rows[corruption] = _measure(entry, cpu_images, gpu_images, args, device)
        except Exception as exc:  # report the failure, go on with the others
            rows[corruption] = {"function": entry.function, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"suite": spec, "n": len(cpu_images), "corruptions": rows}


def measure_whole(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from medrobust.corruptions import get_suite
    from medrobust.corruptions.generate import GenerateConfig, generate_benchmark
    from medrobust.data import load_medmnist

    dataset = load_medmnist("pneumoniamnist", split="test", size=28, root=args.data_root, download=False)
    if args.whole_limit:
        dataset = dataset.subset(slice(0, args.whole_limit))
    suite = get_suite("medmnist-c", dataset="pneumoniamnist")
    seconds = {}
    targets = [("device", device)] + ([("cpu", torch.device("cpu"))] if device.type != "cpu" else [])
    for label, target in targets:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            config = GenerateConfig(layout="medmnist-c", seed=0, batch_size=args.batch, resize=True)
            generate_benchmark(dataset, suite, out, config, device=str(target), progress=False)
            seconds[label] = time.perf_counter() - start
    return {"dataset": "pneumoniamnist", "images": len(dataset), "corruptions": len(suite.corruptions),
            "severities": 5, "seconds": seconds}


def _agreement(row: dict[str, Any]) -> str:
    if "mean_abs_diff" not in row:
        return "(the device is the CPU)"
    mad = f"MAD {row['mean_abs_diff']:.3f}, max {row['max_abs_diff']}"
    return mad if "psnr_gap_db" not in row else f"PSNR gap {row['psnr_gap_db']:+.2f} dB; {mad}"


def to_markdown(payload: dict[str, Any]) -> str:
    lines = [f"# Corruptions on {payload['device']}", "",
             f"Device: {payload['device']}; torch {payload['torch']}; severity {payload['severity']}, "
             f"batch {payload['batch']}, 224 px real MedMNIST test images, {payload['repeats']} timed "
             f"passes; {payload['cpu_threads']} torch threads on the machine's CPU.", ""]
    for result in payload["suites"]:
        lines += [f"## {result['suite']} ({result['n']} images)", ""]
        rows, ratios = [], []
        for name, row in result["corruptions"].items():
            if "error" in row:
                rows.append((name, row["function"], "error", "", "", row["error"]))
                continue
            rate = row["device_images_per_s"]
            ratio = rate["median"] / row["cpu_images_per_s"]
            ratios.append(ratio)
            rows.append((name, row["function"], f"{rate['median']:.0f} ({rate['min']:.0f}-{rate['max']:.0f})",
                         f"{row['cpu_images_per_s']:.0f}", f"{ratio:.1f}", _agreement(row)))
        rows.append(("geometric mean", "", "", "", f"{geometric_mean(ratios):.1f}" if ratios else "", ""))
        lines += [markdown_table(HEADERS, rows), ""]
    whole = payload.get("whole")
    if whole:
        times = ", ".join(f"{label} {seconds:.1f} s" for label, seconds in whole["seconds"].items())
        lines += ["## Whole-dataset generation", "",
                  f"{whole['dataset']} test split ({whole['images']} images), {whole['corruptions']} "
                  f"corruptions x {whole['severities']} severities at 224 px, medmnist-c layout: {times}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suites", nargs="+", default=list(DEFAULT_SUITES))
    parser.add_argument("--n", type=int, default=512, help="images per suite")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--severity", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--corruptions", nargs="+", help="only these corruptions (default: all)")
    parser.add_argument("--skip-whole", action="store_true")
    parser.add_argument("--whole-limit", type=int, help="the whole-dataset run on this many images only")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cuda", help="the accelerator (cpu for a run without one)")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--out", type=Path, help="results base path (default: results/corruption_<device>)")
    args = parser.parse_args()
    keep_freed_memory()  # as the medrobust CLI does
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("corruption_cuda.py: no CUDA device here (--device cpu for a run on the CPU)")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or Path(__file__).parent / "results" / f"corruption_{device.type}"
    payload: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
        "severity": args.severity, "batch": args.batch, "repeats": args.repeats,
        "cpu_threads": torch.get_num_threads(), "suites": [],
    }
    for spec in args.suites:
        payload["suites"].append(measure_suite(spec, args, device))
        print(to_markdown(payload), flush=True)
    if not args.skip_whole:
        payload["whole"] = measure_whole(args, device)
    markdown = to_markdown(payload)
    print(markdown)
    write_results(out, payload, markdown)


if __name__ == "__main__":
    main()
