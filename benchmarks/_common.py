"""Helpers shared by the benchmark scripts and the reference runner.

Only numpy, Pillow and the standard library at import time: ``_reference_runner.py`` imports
this module inside the reference environment (.refenv), where medrobust is not installed.
Functions that need medrobust import it lazily and are only called by the medrobust side.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_REFENV = REPO_ROOT / ".refenv"
DEFAULT_DATA_ROOT = Path(os.environ.get("MEDROBUST_DATA") or REPO_ROOT.parent / "shared" / "data")
RUNNER = BENCH_DIR / "_reference_runner.py"
REFERENCE_SIZE = 224
PSNR_CAP_DB = 100.0  # PSNR of an unchanged image (MSE 0) is reported as this value
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMBA_NUM_THREADS",
)
# The suites the speed benchmarks time, as SUITE[/DATASET]@IMAGES (images: a REAL_DATASETS key).
SPEED_SUITES = (
    "medmnist-c/pneumoniamnist@pneumoniamnist",
    "medmnist-c/pathmnist@pathmnist",
    "medmnist-c/dermamnist@retinamnist",
    "imagenet-c@pathmnist",
)
# Datasets with real images in shared/data and their colour (MedMNIST DATASET_RGB).
REAL_DATASETS: dict[str, str] = {
    "breastmnist": "grey",
    "pneumoniamnist": "grey",
    "retinamnist": "rgb",
    "pathmnist": "rgb",
}


# glibc allocator settings of ``medrobust.runtime.keep_freed_memory`` (which the medrobust CLI
# applies), given to the reference and to our workers alike so both run under the same allocator.
ALLOCATOR_ENV = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1),
    "MALLOC_TOP_PAD_": str(64 << 20),
}


def thread_env(threads: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A child-process environment whose BLAS/OpenMP pools use ``threads`` threads, with the
    shared ``ALLOCATOR_ENV``."""
    env = dict(os.environ if base is None else base)
    for name in THREAD_VARIABLES:
        env[name] = str(threads)
    env.update(ALLOCATOR_ENV)
    return env


def upsample(images: np.ndarray, size: int = REFERENCE_SIZE) -> np.ndarray:
    """(N, h, w[, 3]) uint8 -> (N, size, size[, 3]) with PIL bicubic, as a user of the
    reference would feed MedMNIST 28 px images to it (same input for both sides)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(f"expected uint8 (N, H, W[, 3]) images, got {images.dtype} {images.shape}")
    out = [np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC)) for img in images]
    return np.stack(out).astype(np.uint8)


def spread_indices(total: int, n: int) -> np.ndarray:
    """``n`` indices spread evenly over ``range(total)`` (covers classes better than a head)."""
    if total < 1:
        raise ValueError("dataset is empty")
    return np.unique(np.linspace(0, total - 1, min(n, total)).round().astype(np.int64))


def add_model_arguments(parser: Any, *, batch_size: int, precision: str) -> None:
    """The model and engine options the evaluation benchmarks share, named as ``medrobust eval``
    names them (medrobust side only: the kernel choices come from medrobust)."""
    from medrobust.runtime import KERNELS

    parser.add_argument("--model", default="clip-vit-b16")
    parser.add_argument("--tiny", action="store_true", help="the model's tiny test config instead of full size")
    parser.add_argument("--pretrained", action="store_true",
                        help="load the model's weights (e.g. the shipped medrobust-mini); default random")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default=precision)
    parser.add_argument("--kernels", default="auto", choices=KERNELS, help="as medrobust eval --kernels")
    parser.add_argument("--compile", action="store_true", help="as medrobust eval --compile")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")


def write_medmnist_root(root: Path, dataset: str, images: np.ndarray, labels: np.ndarray) -> Path:
    """``<root>/<dataset>_224.npz`` in MedMNIST format (train/val present, empty: only test is used)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{dataset}_224.npz"
    empty = np.zeros((0, *images.shape[1:]), np.uint8)
    no_labels = np.zeros((0, labels.shape[1]), labels.dtype)
    np.savez(path, train_images=empty, train_labels=no_labels, val_images=empty, val_labels=no_labels,
             test_images=images, test_labels=labels)
    return path


def load_real_images(dataset: str, n: int, data_root: Path, size: int = REFERENCE_SIZE) -> np.ndarray:
    """``n`` real test images of a MedMNIST dataset (28 px files in shared/data), upsampled."""
    from medrobust.data import load_medmnist  # medrobust side only

    data = load_medmnist(dataset, split="test", size=28, root=data_root, download=False)
    return upsample(np.asarray(data.images[spread_indices(len(data.images), n)]), size)


def psnr(clean: np.ndarray, corrupted: np.ndarray) -> np.ndarray:
    """Per-image PSNR (dB) of uint8 images (N, ...) against their clean versions."""
    diff = clean.astype(np.float64) - corrupted.astype(np.float64)
    mse = (diff**2).reshape(len(diff), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        values = 10.0 * np.log10(255.0**2 / mse)
    return np.minimum(values, PSNR_CAP_DB)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference in grey levels of two uint8 arrays of the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def geometric_mean(values: Iterable[float]) -> float:
    """Geometric mean of the positive finite values (NaN when there are none)."""
    logs = [math.log(v) for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(logs) / len(logs)) if logs else float("nan")


def to_jsonable(value: Any) -> Any:
    """Tuples, numpy scalars and arrays -> plain JSON values."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def params_equal(a: Any, b: Any, tol: float = 1e-9) -> bool:
    """Whether two (nested) numeric parameters are equal, tuples/lists/arrays alike."""
    flat_a = np.asarray(to_jsonable(a), dtype=np.float64).ravel()
    flat_b = np.asarray(to_jsonable(b), dtype=np.float64).ravel()
    return flat_a.shape == flat_b.shape and bool(np.allclose(flat_a, flat_b, rtol=0, atol=tol))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with aligned columns."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return "\n".join(out)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3g}" if abs(value) >= 1000 else f"{value:.2f}"
    return str(value)


def format_versions(versions: Mapping[str, str] | str) -> str:
    """``{"numpy": "2.2.6", ...}`` -> ``numpy 2.2.6, ...`` (strings pass through)."""
    if isinstance(versions, str):
        return versions
    return ", ".join(f"{name} {version}" for name, version in versions.items())


def refenv_python(refenv: Path) -> Path | None:
    """The reference environment's interpreter, or None when it is not set up."""
    python = refenv / "bin" / "python"
    return python if python.is_file() else None


def run_reference(
    refenv: Path, args: Sequence[str], *, threads: int = 1, timeout: float | None = None
) -> dict[str, Any]:
    """Run ``_reference_runner.py ARGS`` under the reference interpreter; its JSON report.

    The runner writes its report to the path after ``--report``. Raises RuntimeError with the
    runner's stderr tail when it fails, or when the reference environment is missing.
    """
    python = refenv_python(refenv)
    if python is None:
        raise RuntimeError(
            f"reference environment not found at {refenv}: run benchmarks/setup_reference_env.sh"
        )
    report = Path(args[list(args).index("--report") + 1])
    proc = subprocess.run(
        [str(python), str(RUNNER), *args, "--threads", str(threads)],
        env=thread_env(threads),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0 or not report.is_file():
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"reference runner failed (exit {proc.returncode}):\n{tail}")
    return json.loads(report.read_text())


def write_results(out: Path, payload: Mapping[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``<out>.json`` and ``<out>.md`` (``out`` given with or without a suffix)."""
    base = out.with_suffix("") if out.suffix in (".json", ".md") else out
    base.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = base.with_suffix(".json"), base.with_suffix(".md")
    json_path.write_text(json.dumps(to_jsonable(payload), indent=2) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    return json_path, md_path


def medrobust_status() -> str | None:
    """None when medrobust's corruption suites import, else the import error (one line)."""
    try:
        from medrobust.corruptions import get_suite  # noqa: F401
    except Exception as exc:  # any import-time failure means "our side unavailable"
        return f"{type(exc).__name__}: {exc}"
    return None


def maxrss_mib() -> float:
    """Peak resident set size of this process so far (MiB; file-backed pages included)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class AnonPeak:
    """Peak anonymous RSS (heap, tensors; not memory-mapped file pages) while active.

    ``ru_maxrss`` also counts pages of memory-mapped files that were touched, which grow
    with the data set even when the working memory does not; ``RssAnon`` from
    /proc/self/status is sampled every ``interval`` seconds in a background thread.
    ``peak_mib`` is None where /proc is unavailable.
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak_mib: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def current_mib() -> float | None:
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("RssAnon:"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            return None
        return None

    def _run(self) -> None:
        while True:
            value = self.current_mib()
            if value is not None:
                self.peak_mib = max(self.peak_mib or 0.0, value)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def load_average() -> str:
    """The 1/5/15-minute load averages and core count: timings on a busy machine are noisy."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.1f}/{five:.1f}/{fifteen:.1f} on {os.cpu_count()} cores"
