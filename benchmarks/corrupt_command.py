"""``medrobust corrupt pneumoniamnist --suite medmnist-c`` as a user waits for it, against medmnistc.

Every run is a separate process, timed from start to exit (interpreter start-up, imports,
reading and resizing the 28 px file, corrupting, writing 2 GB, fsync, hashing), with its CPU
time (user + system) beside the wall time: a run whose CPU time is far below its wall time
was waiting (for the disk, or for cores taken by other work on the machine).

Where the time goes is measured by taking one cost away at a time, each as the real command:

* ``start-up``: the interpreter importing what the command imports, and nothing else;
* ``no disk``: the command writing to a RAM disk (``/dev/shm``), so no disk wait and no
  fsync cost;
* ``no fsync``: the command on the normal disk with ``os.fsync`` made a no-op (durability
  against power loss is what it buys);
* ``cold cache``: an empty user cache, so the noise tables are built first (once per machine).

The reference is medmnistc 0.1.0's ``DatasetManager.create_dataset`` (its own pipeline,
``savez_compressed``) on the same 624 test images, upsampled to 224 px as it expects, run as
a process in the reference environment (``benchmarks/setup_reference_env.sh``). Ours and the
variants alternate ``--repeats`` times; the headline is ours (warm cache) per image against
the reference per image, median and range.

Run: ``python benchmarks/corrupt_command.py [--repeats 3] [--reference-repeats 1]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from _common import (
    DEFAULT_DATA_ROOT,
    DEFAULT_REFENV,
    format_table,
    load_average,
    markdown_table,
    refenv_python,
    run_reference,
    upsample,
    write_medmnist_root,
    write_results,
)

DATASET = "pneumoniamnist"
SUITE = "medmnist-c"
COMMAND = ["corrupt", DATASET, "--suite", SUITE, "--quiet"]
# the variants of our command: (name, extra Python run before the CLI, output on a RAM disk)
_NO_FSYNC = "import os; os.fsync = lambda fd: None"
VARIANTS = {
    "ours": ("", False),
    "ours, no fsync": (_NO_FSYNC, False),
    "ours, no disk (RAM disk)": ("", True),
}
_IMPORTS = "import medrobust.cli, medrobust.corruptions.generate, medrobust.corruptions"


def _timed(run: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    """``run()``'s result, and its wall and CPU seconds (CPU: the rusage delta of the child
    processes it waited for) with the load average after it."""
    before, start = os.times(), time.perf_counter()
    result = run()
    wall, after = time.perf_counter() - start, os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return result, {"seconds": wall, "cpu_seconds": cpu, "load_1min": os.getloadavg()[0]}


def _process(command: Sequence[str], env: dict[str, str]) -> dict[str, float]:
    """Wall and CPU seconds of one child process, which must succeed."""
    proc, timing = _timed(lambda: subprocess.run(command, env=env, capture_output=True, text=True, check=False))
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed: {proc.stderr.strip()[-2000:]}")
    return timing


def _our_command(prelude: str, out: Path, data_root: Path) -> list[str]:
    cli = ["--out", str(out), "--data-root", str(data_root)]
    code = f"{prelude}\nimport sys\nfrom medrobust.cli import main\nsys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, *COMMAND, *cli]


def _output_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*.npz"))


def run_ours(variant: str, workdir: Path, data_root: Path, cache: Path) -> dict[str, Any]:
    prelude, ram_disk = VARIANTS[variant]
    out = Path(tempfile.mkdtemp(prefix="medrobust-cmd-", dir="/dev/shm")) if ram_disk else workdir / "out"
    shutil.rmtree(out, ignore_errors=True)
    try:
        result = _process(_our_command(prelude, out, data_root), {**os.environ, "MEDROBUST_CACHE": str(cache)})
        result["bytes"] = _output_bytes(out)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return result


def run_start_up(cache: Path) -> dict[str, Any]:
    return _process([sys.executable, "-c", _IMPORTS], {**os.environ, "MEDROBUST_CACHE": str(cache)})


def run_reference_process(refenv: Path, root: Path, workdir: Path) -> dict[str, Any]:
    out = workdir / "reference_out"
    shutil.rmtree(out, ignore_errors=True)
    args = ["dataset-manager", "--medmnist-root", str(root), "--output", str(out), "--dataset", DATASET,
            "--report", str(workdir / "reference.json")]
    report, timing = _timed(lambda: run_reference(refenv, args))
    result = {**timing, "inner_seconds": report["seconds"], "bytes": _output_bytes(out)}
    shutil.rmtree(out, ignore_errors=True)
    return result


def _summary(runs: list[dict[str, Any]], n: int) -> dict[str, Any]:
    seconds = [r["seconds"] for r in runs]
    return {
        "runs": len(runs), "median_seconds": statistics.median(seconds), "min_seconds": min(seconds),
        "max_seconds": max(seconds), "median_cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs),
        "median_ms_per_image": 1000 * statistics.median(seconds) / n,
        "load_1min": [round(r["load_1min"], 2) for r in runs], "all_seconds": seconds,
    }


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from medrobust.data import load_medmnist

    data = load_medmnist(DATASET, split="test", size=28, root=args.data_root, download=False)
    n = len(data.images)
    cache = workdir / "user_cache"
    runs: dict[str, list[dict[str, Any]]] = {"ours, cold cache": [], "start-up": []}
    runs.update({name: [] for name in VARIANTS})
    runs["ours, cold cache"].append(run_ours("ours", workdir, args.data_root, cache))  # fills the cache
    for _ in range(args.repeats):
        for name in VARIANTS:
            runs[name].append(run_ours(name, workdir, args.data_root, cache))
        runs["start-up"].append(run_start_up(cache))
    shutil.rmtree(cache)
    runs["ours, cold cache"].append(run_ours("ours", workdir, args.data_root, cache))
    result: dict[str, Any] = {"n": n, "summary": {k: _summary(v, n) for k, v in runs.items()}, "runs": runs}
    if args.reference_repeats and refenv_python(args.refenv) is not None:
        root = workdir / "medmnist_root"
        labels = np.asarray(data.labels).reshape(n, -1)
        write_medmnist_root(root, DATASET, upsample(np.asarray(data.images)), labels)
        reference = [run_reference_process(args.refenv, root, workdir) for _ in range(args.reference_repeats)]
        result["summary"]["medmnistc DatasetManager"] = _summary(reference, n)
        result["runs"]["medmnistc DatasetManager"] = reference
        ref_ms = result["summary"]["medmnistc DatasetManager"]["median_ms_per_image"]
        for row in result["summary"].values():
            row["reference_per_image_ratio"] = ref_ms / row["median_ms_per_image"]
    else:
        result["reference"] = f"unavailable: no reference environment at {args.refenv}"
    return result


def render(payload: dict[str, Any]) -> str:
    summary, meta = payload["result"]["summary"], payload["meta"]
    headers = ("run", "runs", "median s", "range s", "CPU s (median)", "ms per image", "medmnistc / this")
    rows = [[name, s["runs"], f"{s['median_seconds']:.2f}", f"{s['min_seconds']:.2f}-{s['max_seconds']:.2f}",
             f"{s['median_cpu_seconds']:.2f}", f"{s['median_ms_per_image']:.1f}",
             f"{s['reference_per_image_ratio']:.1f}x" if "reference_per_image_ratio" in s else "n/a"]
            for name, s in summary.items()]
    intro = (f"`medrobust {' '.join(COMMAND)}`: {payload['result']['n']} test images, 13 corruptions x 5 "
             f"severities at 224 px (uncompressed npz, 2 GB); every run a process, wall time start to exit. "
             f"Machine: {meta['machine']}; load average at start {meta['load_at_start']}, at end "
             f"{meta['load_at_end']}. medmnistc writes `savez_compressed` (its default), ours uncompressed "
             f"(our default); start-up = importing what the command imports.")
    return "\n".join(["# The corrupt command against medmnistc", "", intro, "", markdown_table(headers, rows)]), \
        format_table(headers, rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="alternated runs of each variant (default 3)")
    parser.add_argument("--reference-repeats", type=int, default=1,
                        help="medmnistc runs (about 3 minutes each on 2 cores; 0 skips)")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--refenv", type=Path, default=DEFAULT_REFENV)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "corrupt_command_cpu")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.reference_repeats < 0:
        parser.error("--repeats must be >= 1 and --reference-repeats >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    import platform

    args = parse_args(argv)
    meta = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "load_at_start": load_average(), "repeats": args.repeats, "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory(prefix="medrobust-cmd-") as tmp:
        result = measure(args, Path(tmp))
    meta["load_at_end"] = load_average()
    payload = {"meta": meta, "result": result}
    markdown, text = render(payload)
    print(text)
    json_path, md_path = write_results(args.out, payload, markdown)
    print(f"\nwrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
