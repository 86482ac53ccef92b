"""Speed of medrobust's corruptions against the references, side by side on the same images.

1. Per corruption of a suite (one severity, default 3): the reference's ms/image (per-image
   pipeline, median, 1 thread; also 2 threads on a subset) vs ours ms/image on a batch of
   ``--batch`` images at ``torch.set_num_threads(1)`` and ``(2)``; speedups and their
   geometric mean. Inputs: real MedMNIST test images upsampled to 224 px (PIL bicubic).
2. Whole dataset: the pneumoniamnist test split upsampled to 224 px and written as
   ``pneumoniamnist_224.npz`` (MedMNIST file format) in a temporary MedMNIST root; medmnistc's
   ``DatasetManager(...).create_dataset('pneumoniamnist')`` vs our
   ``generate_benchmark(..., GenerateConfig(layout='medmnist-c'))`` at 1 and 2 threads; and the
   command a user runs, ``medrobust corrupt pneumoniamnist --suite medmnist-c``, timed as a
   process (wall time, start-up included) with an empty and with a warm user cache, against the
   reference process.
3. Peak memory of ours for an input and a 4x larger one (same batch size): bounded by the batch.

Every measurement runs in its own subprocess (reference: .refenv via _reference_runner.py;
ours: this script's ``--worker`` mode) so thread settings and peak memory are clean.

Run: ``python benchmarks/corruption_speed.py [--quick]`` (see README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from _common import (
    DEFAULT_DATA_ROOT,
    DEFAULT_REFENV,
    SPEED_SUITES,
    AnonPeak,
    format_table,
    format_versions,
    geometric_mean,
    load_average,
    load_real_images,
    markdown_table,
    maxrss_mib,
    medrobust_status,
    run_reference,
    thread_env,
    write_medmnist_root,
    write_results,
)

DEFAULT_SUITES = SPEED_SUITES
WHOLE_DATASET = "pneumoniamnist"
MEMORY_CORRUPTIONS = ("gaussian_noise", "pixelate", "gaussian_blur")
SPEED_HEADERS = ("corruption", "function", "ref 1t", "ref 2t", "ours 1t", "ours 2t",
                 "speedup 1t", "speedup 2t")


# ------------------------------------------------------------------ our side (worker processes)


def _suite(spec: str) -> Any:
    from medrobust.corruptions import get_suite

    name, _, dataset = spec.partition("/")
    return get_suite(name, dataset=dataset or None)


def worker_suite(spec: dict[str, Any]) -> dict[str, Any]:
    """ms/image of every corruption of a suite on a batch, at the current thread count."""
    import torch

    from medrobust.corruptions.api import to_channels_first

    suite = _suite(spec["suite"])
    with np.load(spec["images"], allow_pickle=False) as data:
        images = to_channels_first(data[spec["key"]])
    n, batch, severity = len(images), spec["batch"], spec["severity"]
    results = {}
    for name, entry in suite.entries.items():
        try:
            entry.apply(images[: min(8, n)], severity, seed=0)  # warm-up: kernels, caches
            times = []
            for _ in range(spec["repeats"]):
                start = time.perf_counter()
                for lo in range(0, n, batch):
                    entry.apply(images[lo : lo + batch], severity, seed=0, indices=range(lo, min(n, lo + batch)))
                times.append(time.perf_counter() - start)
            results[name] = {"ms_per_image": 1e3 * float(np.median(times)) / n, "function": entry.function}
        except Exception as exc:  # report our failure, keep timing the others
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:200], "function": entry.function}
    return {"threads": torch.get_num_threads(), "n": n, "corruptions": results}


def worker_generate(spec: dict[str, Any]) -> dict[str, Any]:
    """Time our whole-dataset generation; peak memory of this process."""
    import torch

    from medrobust.corruptions.generate import GenerateConfig, generate_benchmark
    from medrobust.data import load_medmnist

    suite = _suite(spec["suite"])
    if spec.get("corruptions"):
        suite = suite.select(spec["corruptions"])
    dataset = load_medmnist(spec["dataset"], split="test", size=224, root=spec["root"], download=False)
    baseline, anon_before = maxrss_mib(), AnonPeak.current_mib()
    start = time.perf_counter()
    with AnonPeak() as anon:
        config = GenerateConfig(layout="medmnist-c", seed=0, batch_size=spec["batch"], resize=True,
                                compress=spec["compress"])
        generate_benchmark(dataset, suite, spec["out"], config, device="cpu", progress=False)
    seconds = time.perf_counter() - start
    files = list(Path(spec["out"]).rglob("*.npz"))
    return {
        "threads": torch.get_num_threads(), "seconds": seconds, "n": len(dataset),
        "maxrss_before_mib": baseline, "maxrss_mib": maxrss_mib(),
        "anon_before_mib": anon_before, "anon_peak_mib": anon.peak_mib,
        "files": len(files), "bytes": sum(f.stat().st_size for f in files),
    }


WORKERS = {"suite": worker_suite, "generate": worker_generate}


def run_worker(kind: str, spec: dict[str, Any], threads: int, workdir: Path) -> dict[str, Any]:
    """Run one of our measurements in a fresh process with ``threads`` threads."""
    spec_path = workdir / f"spec_{kind}_{time.monotonic_ns()}.json"
    report = spec_path.with_suffix(".report.json")
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", kind, "--spec", str(spec_path), "--report", str(report),
         "--threads", str(threads)],
        env=thread_env(threads), capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"our {kind} worker failed (exit {proc.returncode}):\n{tail}")
    return json.loads(report.read_text())


# ------------------------------------------------------------------ reference side


def reference_suite_times(
    suite_spec: str, names: Sequence[str], images_path: Path, key: str, severity: int, n: int,
    threads: int, args: argparse.Namespace, workdir: Path,
) -> dict[str, Any]:
    """Reference ms/image (median over images) per corruption; errors as strings."""
    suite, _, dataset = suite_spec.partition("/")
    package = "medmnistc" if suite == "medmnist-c" else "imagecorruptions"
    jobs = [{"id": c, "package": package, "dataset": dataset or None, "corruption": c,
             "severity": severity, "images": key, "save": False, "n": n} for c in names]
    tag = f"{suite_spec.replace('/', '_')}_{threads}t"
    jobs_path, report = workdir / f"ref_{tag}_jobs.json", workdir / f"ref_{tag}.json"
    jobs_path.write_text(json.dumps(jobs))
    result = run_reference(args.refenv, ["apply", "--images", str(images_path), "--jobs", str(jobs_path),
                                         "--report", str(report)], threads=threads)
    return {c: (j["ms_median"] if j["ok"] else f"reference fails: {j['error']}")
            for c, j in result["jobs"].items()}


def reference_names(suite_spec: str, describe: dict[str, Any] | None) -> list[str]:
    """Corruption names of a suite as the reference defines them."""
    if describe is None:
        return []
    suite, _, dataset = suite_spec.partition("/")
    packages = describe["packages"]
    if suite == "medmnist-c":
        info = packages["medmnistc"]
        return list(info["datasets"][dataset]) if info.get("available") else []
    info = packages["imagecorruptions"]
    if not info.get("available"):
        return []
    if suite == "medimeta-c":
        return [n for n in _suite(suite).entries if n in info["corruptions"]]
    return list(info["corruptions"])


# ------------------------------------------------------------------ measurements


def measure_suite(
    suite_spec: str, image_set: str, describe: dict[str, Any] | None, ours_ok: bool,
    args: argparse.Namespace, workdir: Path,
) -> dict[str, Any]:
    """Per-corruption table of one suite on one image set."""
    images = load_real_images(image_set, args.n, args.data_root)
    images_path = workdir / f"{image_set}_{len(images)}.npz"
    np.savez(images_path, **{image_set: images})
    names = reference_names(suite_spec, describe)
    ours: dict[int, dict[str, Any]] = {}
    if ours_ok:
        spec = {"suite": suite_spec, "images": str(images_path), "key": image_set,
                "batch": args.batch, "severity": args.severity, "repeats": args.repeats}
        for threads in (1, 2):
            ours[threads] = run_worker("suite", spec, threads, workdir)["corruptions"]
        names = list(dict.fromkeys([*ours[1], *names]))
    ref: dict[int, dict[str, Any]] = {}
    ref_names = reference_names(suite_spec, describe)
    if ref_names:
        ref[1] = reference_suite_times(suite_spec, ref_names, images_path, image_set, args.severity,
                                       len(images), 1, args, workdir)
        ref[2] = reference_suite_times(suite_spec, ref_names, images_path, image_set, args.severity,
                                       min(len(images), args.ref_2t_n), 2, args, workdir)
    rows = []
    for name in names:
        row: dict[str, Any] = {"corruption": name, "function": ours.get(1, {}).get(name, {}).get("function")}
        for t in (1, 2):
            row[f"ref_{t}t"] = ref.get(t, {}).get(name, "n/a (no reference)")
            mine = ours.get(t, {}).get(name)
            row[f"ours_{t}t"] = None if mine is None else mine.get("ms_per_image", mine.get("error"))
            r, o = row[f"ref_{t}t"], row[f"ours_{t}t"]
            ok = isinstance(r, float) and isinstance(o, float) and o > 0
            row[f"speedup_{t}t"] = r / o if ok else None
        rows.append(row)
    return {
        "suite": suite_spec, "images": image_set, "n": len(images), "severity": args.severity,
        "rows": rows,
        "geomean_speedup_1t": geometric_mean(r["speedup_1t"] for r in rows if r["speedup_1t"]),
        "geomean_speedup_2t": geometric_mean(r["speedup_2t"] for r in rows if r["speedup_2t"]),
        "ref_2t_n": min(len(images), args.ref_2t_n),
    }


def measure_whole_dataset(ours_ok: bool, ref_ok: bool, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Reference DatasetManager vs our generate_benchmark on the (upsampled) test split."""
    from medrobust.data import load_medmnist

    data = load_medmnist(WHOLE_DATASET, split="test", size=28, root=args.data_root, download=False)
    n = len(data.images) if args.whole_n is None else min(args.whole_n, len(data.images))
    images = load_real_images(WHOLE_DATASET, n, args.data_root)
    labels = np.asarray(data.labels)[: len(images)].reshape(len(images), -1)
    root = workdir / "medmnist_root"
    write_medmnist_root(root, WHOLE_DATASET, images, labels)
    out: dict[str, Any] = {"dataset": WHOLE_DATASET, "n": len(images), "runs": {}}
    if ref_ok:
        start = time.perf_counter()
        report = run_reference(args.refenv, ["dataset-manager", "--medmnist-root", str(root), "--output",
                                             str(workdir / "ref_out"), "--dataset", WHOLE_DATASET,
                                             "--report", str(workdir / "ref_dm.json")], threads=1)
        process = time.perf_counter() - start  # what a user waits for: start-up and imports too
        out["runs"]["reference DatasetManager (1t, savez_compressed)"] = {
            **report, "n": len(images), "process_seconds": process}
        shutil.rmtree(workdir / "ref_out", ignore_errors=True)
    if ours_ok:
        out["command"] = measure_command(data, n, workdir)
    if ours_ok:
        variants = [(1, False), (2, False), (1, True)]
        for threads, compress in variants:
            target = workdir / f"ours_{threads}_{compress}"
            spec = {"suite": f"medmnist-c/{WHOLE_DATASET}", "dataset": WHOLE_DATASET, "root": str(root),
                    "out": str(target), "batch": args.batch, "compress": compress}
            label = f"ours generate_benchmark ({threads}t, {'compressed' if compress else 'uncompressed'})"
            out["runs"][label] = run_worker("generate", spec, threads, workdir)
            shutil.rmtree(target, ignore_errors=True)
    ref_run = out["runs"].get("reference DatasetManager (1t, savez_compressed)")
    for run in out["runs"].values():
        run["ratio_vs_reference"] = ref_run["seconds"] / run["seconds"] if ref_run else None
    for run in out.get("command", {}).get("runs", []):
        run["ratio_vs_reference_process"] = ref_run["process_seconds"] / run["seconds"] if ref_run else None
    return out


def measure_command(data: Any, n: int, workdir: Path, warm_runs: int = 2) -> dict[str, Any]:
    """``medrobust corrupt pneumoniamnist --suite medmnist-c`` timed as a user runs it: wall time
    of the process (start-up, imports, reading and resizing the 28 px file, corrupting, writing,
    fsync, hashing), first with an empty user cache, then ``warm_runs`` times with the noise
    tables of the first run in the cache (best of those is the headline)."""
    root = workdir / "cli_root"
    root.mkdir(exist_ok=True)
    labels = np.asarray(data.labels)[:n].reshape(n, -1)
    images = np.asarray(data.images[:n])
    empty = np.zeros((0, *images.shape[1:]), np.uint8)
    np.savez(root / f"{WHOLE_DATASET}.npz", train_images=empty, train_labels=labels[:0], val_images=empty,
             val_labels=labels[:0], test_images=images, test_labels=labels)
    env = {**os.environ, "MEDROBUST_CACHE": str(workdir / "user_cache")}
    runs = []
    for label in ["cold cache", *[f"warm cache {i + 1}" for i in range(warm_runs)]]:
        target = workdir / "cli_out"
        shutil.rmtree(target, ignore_errors=True)
        command = [sys.executable, "-m", "medrobust.cli", "corrupt", WHOLE_DATASET, "--suite", "medmnist-c",
                   "--out", str(target), "--data-root", str(root), "--quiet"]
        start = time.perf_counter()
        proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"medrobust corrupt failed: {proc.stderr[-2000:]}")
        files = list(target.rglob("*.npz"))
        runs.append({"run": label, "seconds": seconds, "n": n, "ms_per_image": 1000 * seconds / n,
                     "files": len(files), "bytes": sum(f.stat().st_size for f in files)})
        shutil.rmtree(target, ignore_errors=True)
    warm = min((r for r in runs if r["run"] != "cold cache"), key=lambda r: r["seconds"])
    return {"command": " ".join(command[2:]), "runs": runs, "best_warm_seconds": warm["seconds"]}


def measure_memory(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Our peak memory for N and 4N images (same batch): it should not grow with N."""
    from medrobust.data import load_medmnist

    n = args.memory_n
    images = load_real_images(WHOLE_DATASET, n, args.data_root)
    labels = np.asarray(load_medmnist(WHOLE_DATASET, root=args.data_root, download=False).labels)
    results = {}
    for factor in (1, 4):
        root = workdir / f"mem_root_{factor}"
        tiled = np.concatenate([images] * factor)
        write_medmnist_root(root, WHOLE_DATASET, tiled, np.resize(labels, len(tiled)).reshape(-1, 1))
        target = workdir / f"mem_out_{factor}"
        spec = {"suite": f"medmnist-c/{WHOLE_DATASET}", "dataset": WHOLE_DATASET, "root": str(root),
                "out": str(target), "batch": args.batch, "compress": False,
                "corruptions": list(MEMORY_CORRUPTIONS)}
        results[f"{len(tiled)} images"] = run_worker("generate", spec, 1, workdir)
        for folder in (target, root):
            shutil.rmtree(folder, ignore_errors=True)
    return {"corruptions": list(MEMORY_CORRUPTIONS), "batch": args.batch, "runs": results}


# ------------------------------------------------------------------ reporting


def _ms(value: Any) -> Any:
    return value if not isinstance(value, float) else round(value, 3)


def _speed_rows(result: dict[str, Any]) -> list[list[Any]]:
    rows = [[r["corruption"], r["function"], _ms(r["ref_1t"]), _ms(r["ref_2t"]), _ms(r["ours_1t"]),
             _ms(r["ours_2t"]), r["speedup_1t"], r["speedup_2t"]] for r in result["rows"]]
    rows.append(["geometric mean", "", "", "", "", "", result["geomean_speedup_1t"],
                 result["geomean_speedup_2t"]])
    return rows


def _run_rows(runs: dict[str, Any]) -> list[list[Any]]:
    return [[label, run.get("n", "-"), round(run["seconds"], 2), run.get("ratio_vs_reference"),
             _mib(run.get("maxrss_before_mib")), _mib(run.get("maxrss_mib")),
             _mib(run.get("anon_before_mib")), _mib(run.get("anon_peak_mib"))]
            for label, run in runs.items()]


def _mib(value: float | None) -> int | None:
    return None if value is None else round(value)


def render(payload: dict[str, Any]) -> tuple[str, str]:
    meta = payload["meta"]
    intro = (
        f"Images: real MedMNIST test images upsampled 28 -> 224 px (PIL bicubic); severity "
        f"{meta['severity']}; ours on batches of {meta['batch']}, median of {meta['repeats']} runs; "
        f"reference per image (median), 2-thread reference on the first {meta['ref_2t_n']} images. "
        f"ms/image; speedup = reference / ours at the same thread count (torch and OpenCV "
        f"limited to it; our whole-dataset runs also have two background file threads, a batch writer and a file finisher). "
        f"Both sides run with the same glibc allocator settings (medrobust.runtime.keep_freed_memory)."
        + (" QUICK smoke run (few images): numbers are indicative only." if meta["quick"] else "")
    )
    text, md = [intro], ["# Corruption speed: medrobust vs reference", "", intro, "",
                         f"Machine: {meta['machine']}; load average (1/5/15 min) at start "
                         f"{meta.get('load_at_start', '?')}, at end {meta.get('load_at_end', '?')}. "
                         f"Reference: {format_versions(meta['reference_versions'])}."]
    for result in payload["suites"]:
        title = f"{result['suite']} on {result['images']} ({result['n']} images)"
        text += ["", f"== {title} ==", format_table(SPEED_HEADERS, _speed_rows(result))]
        md += ["", f"## {title}", "", markdown_table(SPEED_HEADERS, _speed_rows(result))]
    run_headers = ("run", "images", "seconds", "reference/this", "maxrss before MiB", "maxrss MiB",
                   "anon before MiB", "peak anon MiB")
    for key, title in (("whole_dataset", "Whole-dataset MedMNIST-C generation"),
                       ("memory", "Peak memory of ours vs input size")):
        if payload.get(key):
            section = payload[key]
            note = (f"{section.get('dataset', WHOLE_DATASET)} test split, 13 corruptions x 5 severities"
                    if key == "whole_dataset" else
                    f"corruptions {section['corruptions']}, batch {section['batch']}; maxrss includes "
                    "touched pages of memory-mapped input/cache files, 'peak anon' excludes them")
            rows = _run_rows(section["runs"])
            text += ["", f"== {title} ({note}) ==", format_table(run_headers, rows)]
            md += ["", f"## {title}", "", note, "", markdown_table(run_headers, rows)]
    command = (payload.get("whole_dataset") or {}).get("command")
    if command:
        headers = ("run", "images", "process seconds", "ms/image", "reference process / this")
        rows = [[r["run"], r["n"], f"{r['seconds']:.2f}", f"{r['ms_per_image']:.1f}",
                 f"{r['ratio_vs_reference_process']:.1f}x" if r.get("ratio_vs_reference_process") else "n/a"]
                for r in command["runs"]]
        note = (f"`{command['command']}` as a user runs it: wall time of the process (start-up, imports, "
                "reading and resizing the 28 px file, corruption, writing, fsync, hashing); the "
                "reference likewise as a process (DatasetManager, start-up included)")
        text += ["", "== The command a user runs ==", note, format_table(headers, rows)]
        md += ["", "## The command a user runs", "", note, "", markdown_table(headers, rows)]
    return "\n".join(text), "\n".join(md)


# ------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suites", nargs="+", default=list(DEFAULT_SUITES),
                        help="SUITE[/DATASET]@IMAGES, e.g. medmnist-c/dermamnist@retinamnist")
    parser.add_argument("--n", type=int, default=256, help="images per suite (default 256)")
    parser.add_argument("--batch", type=int, default=256, help="our batch size (default 256)")
    parser.add_argument("--severity", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of ours (median)")
    parser.add_argument("--ref-2t-n", type=int, default=64, help="images for the 2-thread reference")
    parser.add_argument("--whole-n", type=int, default=None, help="test images for the whole-dataset run")
    parser.add_argument("--memory-n", type=int, default=624, help="images of the small memory run")
    parser.add_argument("--skip", nargs="*", default=[], choices=("suites", "whole", "memory"))
    parser.add_argument("--quick", action="store_true", help="smoke run with few images")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--refenv", type=Path, default=DEFAULT_REFENV)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "speed",
                        help="results base path: writes <out>.json and <out>.md")
    parser.add_argument("--worker", choices=tuple(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.batch, args.repeats = min(args.n, 16), min(args.batch, 16), 1
        args.ref_2t_n = min(args.ref_2t_n, 8)
        args.whole_n = min(args.whole_n or 32, 32)
        args.memory_n = min(args.memory_n, 32)
    for spec in args.suites:
        if "@" not in spec:
            parser.error(f"--suites entries look like SUITE[/DATASET]@IMAGES, got {spec!r}")
    if min(args.n, args.batch, args.repeats, args.ref_2t_n, args.memory_n) < 1 or not 1 <= args.severity <= 5:
        parser.error("--n/--batch/--repeats/--ref-2t-n/--memory-n must be >= 1, --severity in 1..5")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        result = WORKERS[args.worker](json.loads(args.spec.read_text()))
        args.report.write_text(json.dumps(result, indent=1))
        return 0
    ours_error = medrobust_status()
    if ours_error:
        print(f"our side unavailable ({ours_error}): reference side only", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="medrobust-speed-") as tmp:
        workdir = Path(tmp)
        try:
            describe = run_reference(args.refenv, ["describe", "--report", str(workdir / "d.json")])
        except RuntimeError as exc:
            describe = None
            print(f"reference unavailable: {exc}", file=sys.stderr)
        payload: dict[str, Any] = {"meta": {
            "quick": args.quick, "severity": args.severity, "batch": args.batch, "repeats": args.repeats,
            "ref_2t_n": args.ref_2t_n, "ours": ours_error or "ok",
            "machine": f"{_cpu_name()}, {_cores()} cores", "load_at_start": load_average(),
            "reference_versions": (describe or {}).get("versions", "unavailable"),
        }, "suites": []}
        if "suites" not in args.skip:
            for spec in args.suites:
                suite_spec, _, image_set = spec.partition("@")
                start = time.perf_counter()
                payload["suites"].append(measure_suite(suite_spec, image_set, describe, ours_error is None,
                                                       args, workdir))
                print(f"measured {spec} in {time.perf_counter() - start:.0f} s", flush=True)
        ref_ok = bool(describe and describe["packages"]["medmnistc"].get("available"))
        if "whole" not in args.skip:
            payload["whole_dataset"] = measure_whole_dataset(ours_error is None, ref_ok, args, workdir)
            print("measured whole-dataset generation", flush=True)
        if "memory" not in args.skip and ours_error is None:
            payload["memory"] = measure_memory(args, workdir)
    payload["meta"]["load_at_end"] = load_average()
    text, md = render(payload)
    print(text)
    json_path, md_path = write_results(args.out, payload, md)
    print(f"\nwrote {json_path} and {md_path}")
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _cores() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
