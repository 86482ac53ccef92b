"""Write a complete corrupted benchmark (clean + every corruption x severity) to disk.

Memory is bounded by the batch: the prepared clean images are streamed once into a
temporary memory-mapped cache, every output file is streamed batch by batch into a
temporary name and renamed when complete. A finished file is never rewritten, so a killed
run resumes where it stopped; a folder made with other settings is refused.

File work runs on two background threads, each in order: one writes batches (hashing the
bytes as they go out, so no file is read back for its SHA-256), the other finishes complete
files (fsync, rename, manifest update), so that the disk works on earlier batches while the
next is corrupted; at most ``_WRITE_QUEUE`` batches (and file calls) wait for each.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from .._files import file_sha256, remove_orphans, temp_prefix, write_text_atomic
from ..data import ImageDataset, NpzWriter
from ..data.layouts import LAYOUTS, BenchmarkFile, Layout, get_layout
from ..severity import SEVERITIES, check_severity, is_clean
from .api import prepare_images
from .suites import Suite

__all__ = ["LAYOUTS", "BenchmarkFile", "GenerateConfig", "generate_benchmark", "plan_benchmark"]

_WRITE_QUEUE = 6  # calls (mostly batch writes) queued ahead of the writer thread: bounds memory


def plan_benchmark(
    root: Path, dataset: str, split: str, suite: Suite, layout: str, severities: Sequence[int]
) -> list[BenchmarkFile]:
    """The files a benchmark consists of, in the order they are written."""
    return get_layout(layout, root).files(dataset, split, suite.corruptions, severities)


def _dataset_hash(dataset: ImageDataset, batch_size: int) -> str:
    """SHA-256 of the input images and labels, streamed (the source file may hold other splits)."""
    digest = hashlib.sha256()
    for start in range(0, len(dataset), batch_size):
        digest.update(np.ascontiguousarray(dataset.images[start : start + batch_size]).tobytes())
    digest.update(np.ascontiguousarray(dataset.labels).tobytes())
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    return {
        "medrobust": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def _dataset_record(dataset: ImageDataset) -> dict[str, Any]:
    """What the benchmark's images are: class names, modality, task, and how they were read."""
    return {"class_names": list(dataset.class_names), "modality": dataset.modality,
            "task": dataset.task, "reading": dict(dataset.reading)}


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    write_text_atomic(json.dumps(payload, indent=2, sort_keys=True), path)


def _manifest_entry(file: BenchmarkFile, n: int) -> dict[str, Any]:
    """A file's manifest record; the clean file's corruption is stored as null (as before)."""
    return {"corruption": None if is_clean(file.corruption) else file.corruption,
            "severities": list(file.severities), "images": file.blocks * n}


@dataclass(frozen=True)
class GenerateConfig:
    """How a benchmark is made: the settings recorded in its manifest (a folder made with
    other settings is refused). ``resize`` False keeps the native size and scales the
    size-dependent parameters; ``batch_size`` bounds memory and does not change any image."""

    layout: str = "medimeta-c"
    severities: tuple[int, ...] = SEVERITIES
    seed: int = 0
    batch_size: int = 256
    resize: bool = True
    compress: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "severities", tuple(check_severity(s) for s in self.severities))


@dataclass
class _Job:
    """One generation run: what it reads, where it writes, and its manifest."""

    dataset: ImageDataset
    suite: Suite
    config: GenerateConfig
    layout: Layout
    root: Path
    device: torch.device
    manifest_path: Path
    manifest: dict[str, Any]

    @property
    def outputs(self) -> dict[str, Any]:
        return self.manifest["files"]

    @property
    def size(self) -> int | None:
        """The side the clean images are resized to (None: native size)."""
        return self.suite.reference_size if self.config.resize else None


def generate_benchmark(
    dataset: ImageDataset,
    suite: Suite,
    out_dir: str | Path,
    config: GenerateConfig = GenerateConfig(),
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Path:
    """Generate ``suite`` on ``dataset`` under ``out_dir``; returns the manifest's path.

    ``clean`` holds the images exactly as they enter the corruptions (after any resize), so
    clean and corrupted files compare pixel for pixel. Image ``i`` at severity ``s`` is
    keyed by ``(seed, corruption, s, i)`` and does not depend on ``batch_size`` or device
    placement of other images.
    """
    layout = get_layout(config.layout, out_dir)
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {config.batch_size}")
    if len(dataset) == 0:
        raise ValueError(f"dataset {dataset.name!r} ({dataset.split}) has no images")
    root = Path(out_dir)
    _check_writable(root)
    job = _start(dataset, suite, config, layout, root, torch.device(device))
    files = layout.files(dataset.name, dataset.split, suite.corruptions, config.severities)
    _write_pending([f for f in files if not f.path.is_file()], job, progress)
    n = len(dataset)
    for file in files:
        key = str(file.path.relative_to(root))
        if key not in job.outputs:
            job.outputs[key] = {**_manifest_entry(file, n), "sha256": file_sha256(file.path)}
    job.manifest["complete"] = True
    _write_json_atomic(job.manifest_path, job.manifest)
    return job.manifest_path


def _check_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise PermissionError(f"cannot write to output folder {root}: {exc}") from exc


def _start(
    dataset: ImageDataset, suite: Suite, config: GenerateConfig, layout: Layout, root: Path,
    device: torch.device,
) -> _Job:
    """Write the run's manifest (keeping the files of an earlier run with the same settings;
    refusing a folder made with other settings) and return the job."""
    recorded = {
        "suite": suite.to_dict(),
        "dataset": dataset.name,
        "split": dataset.split,
        "source": str(dataset.source),
        "input_sha256": _dataset_hash(dataset, config.batch_size),
        "layout": config.layout,
        "severities": list(config.severities),
        "seed": config.seed,
        "resize": suite.reference_size if config.resize else None,
        "compress": config.compress,
    }
    manifest_path = layout.manifest_path(dataset.name, dataset.split)
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(manifest_path.parent)  # temporary files of killed runs
    previous = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    if previous is not None and previous.get("config") != recorded:
        raise ValueError(
            f"{root} already holds a benchmark of {dataset.name} made with other settings "
            f"(see {manifest_path}); choose another --out or delete that folder"
        )
    outputs: dict[str, Any] = dict(previous.get("files", {})) if previous else {}
    manifest = {"config": recorded, "dataset": _dataset_record(dataset), "versions": _versions(),
                "device": str(device), "files": outputs}
    _write_json_atomic(manifest_path, manifest)
    return _Job(dataset, suite, config, layout, root, device, manifest_path, manifest)


def _cache_clean(job: _Job, cache_path: Path, image_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The prepared clean images in a memory-mapped cache, and each row's dataset index
    (which keys its random streams)."""
    n = len(job.dataset)
    clean = np.lib.format.open_memmap(cache_path, mode="w+", dtype=np.uint8, shape=(n, *image_shape))
    positions = np.empty(n, dtype=np.int64)
    offset = 0
    for indices, images, _ in job.dataset.iter_batches(job.config.batch_size):
        clean[offset : offset + len(indices)] = _to_numpy(prepare_images(images, job.size))
        positions[offset : offset + len(indices)] = indices
        offset += len(indices)
    clean.flush()
    return clean, positions


def _write_pending(pending: list[BenchmarkFile], job: _Job, progress: bool) -> None:
    """Write the files not on disk yet, each entered in the manifest once complete."""
    dataset, config = job.dataset, job.config
    n = len(dataset)
    first = prepare_images(next(dataset.iter_batches(1))[1], job.size)
    image_shape = tuple(first.shape[-2:]) + ((3,) if first.shape[1] == 3 else ())
    factor = 1.0 if config.resize else first.shape[-1] / job.suite.reference_size
    labels = np.asarray(dataset.labels)
    cache_path = job.root / dataset.name / f"{temp_prefix(f'{dataset.split}-clean-cache')}npy"
    total = sum(f.blocks for f in pending) * n
    bar = tqdm(total=total, unit="img", desc=f"{dataset.name} {job.suite.name}", disable=not progress)
    try:
        if not pending:
            return
        clean, positions = _cache_clean(job, cache_path, image_shape)
        # the finisher is left last: the batch writer's queued hand-overs reach it first
        with _Writer("medrobust-finisher") as finisher, _Writer("medrobust-writer") as background:
            for file in pending:
                writer = NpzWriter(file.path, compress=config.compress)
                finisher.own(writer)
                background.submit(job.layout.start_file, writer, file, labels, image_shape)
                for s in file.severities or (None,):
                    for start in range(0, n, config.batch_size):
                        stop = min(n, start + config.batch_size)
                        batch = _corrupted(job, clean, positions, start, stop, file.corruption, s, factor)
                        background.submit(writer.write, job.layout.image_key, _to_numpy(batch))
                        bar.update(stop - start)
                entry = _manifest_entry(file, n)
                background.submit(finisher.submit, writer.close)
                background.submit(finisher.submit, _record, job, writer, entry)
    finally:
        bar.close()
        cache_path.unlink(missing_ok=True)


def _corrupted(
    job: _Job, clean: np.ndarray, positions: np.ndarray, start: int, stop: int,
    corruption: str, severity: int | None, factor: float,
) -> torch.Tensor:
    """Rows ``start:stop`` of the clean cache on the device, corrupted (severity None: clean)."""
    batch = torch.from_numpy(np.ascontiguousarray(clean[start:stop])).to(job.device)
    batch = batch[:, None] if batch.ndim == 3 else batch.permute(0, 3, 1, 2)
    if severity is None:
        return batch
    return job.suite[corruption].apply(
        batch, severity, seed=job.config.seed, indices=positions[start:stop].tolist(),
        size_factor=factor,
    )


def _record(job: _Job, writer: NpzWriter, entry: dict[str, Any]) -> None:
    """Enter a finished file with its SHA-256 (hashed as it was written) in the manifest and
    save the manifest."""
    job.outputs[str(writer.path.relative_to(job.root))] = {**entry, "sha256": writer.sha256}
    _write_json_atomic(job.manifest_path, job.manifest)


class _Writer:
    """One background thread that runs submitted calls in order (file work).

    ``submit`` blocks while ``_WRITE_QUEUE`` calls wait, and re-raises the first error of an
    earlier call, after which the remaining calls are dropped. Leaving the ``with`` block
    waits for the queued calls (files completed before a failure in the caller are kept);
    after any error, every owned ``NpzWriter`` that did not finish is aborted, so no partial
    file is left. Calls may submit to another ``_Writer`` (a later stage), whose errors then
    surface through this one.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = queue.Queue(
            maxsize=_WRITE_QUEUE
        )
        self._error: BaseException | None = None
        self._owned: list[NpzWriter] = []
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> _Writer:
        self._thread.start()
        return self

    def own(self, writer: NpzWriter) -> None:
        """Abort ``writer`` on failure unless it was closed."""
        self._owned = [w for w in self._owned if not w.closed]
        self._owned.append(writer)

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._error is not None:
            raise self._error
        self._jobs.put((fn, args))

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self._error is None:
                fn, args = job
                try:
                    fn(*args)
                except BaseException as exc:  # handed to the submitting thread
                    self._error = exc

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._jobs.put(None)  # queued calls still run: earlier files are complete
        self._thread.join()
        if self._error is not None or exc_type is not None:
            for writer in self._owned:
                if not writer.closed:
                    writer.abort()
            if exc_type is None:
                raise self._error


def _to_numpy(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) tensor -> (N, H, W) or (N, H, W, 3) array on the CPU."""
    array = images.cpu().numpy()
    return array[:, 0] if array.shape[1] == 1 else array.transpose(0, 2, 3, 1)
