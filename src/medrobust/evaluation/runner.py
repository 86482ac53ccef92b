"""The evaluation grid: models x datasets x (clean + corruptions x severities).

Each cell is scored independently and recorded in the run's :class:`ResultsStore`; finished
cells are skipped, so re-running a command resumes it, and several processes can share a
grid (a cell is claimed before it is computed). Images are corrupted on the fly with the
corruption engine on the model's device, or read from a generated benchmark folder. One
background thread makes the images of the run and the models' inputs from them (resized,
normalised), a cell ahead, while the model scores, and another writes the results
(:mod:`medrobust.evaluation.pipeline`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..corruptions import CorruptedDataset, Suite, get_suite
from ..data import DataOptions, ImageDataset, image_hashes, open_dataset
from ..data.layouts import get_layout
from ..models import ModelAdapter, create_model
from ..models.kernels import EngineSettings, prepare_for_inference
from ..models.zeroshot import PRECISIONS, ZeroShotClassifier
from ..runtime import to_device
from ..severity import CLEAN, SEVERITIES, Condition, conditions, is_clean
from .merge import write_shard_info
from .pipeline import Producer, ResultWriter
from .sharding import Shard, grid_digest, partition
from .store import CLAIM_TIMEOUT, CellKey, ResultsStore

__all__ = ["CLEAN", "GridSpec", "ImageOverlapError", "RunSummary", "run_grid"]


@dataclass(frozen=True)
class GridSpec:
    """What to evaluate. Models are registry names (or ready adapters), datasets are names
    that :func:`medrobust.data.open_dataset` resolves (or ready :class:`ImageDataset`s)."""

    models: Sequence[str | ModelAdapter]
    datasets: Sequence[str | ImageDataset]
    suite: str = "medmnist-c"
    corruptions: Sequence[str] | None = None
    severities: Sequence[int] = SEVERITIES
    split: str = "test"
    seed: int = 0
    templates: str | Sequence[str] | None = None
    benchmark_dir: Path | None = None
    layout: str = "medimeta-c"
    batch_size: int = 128
    device: str = "cpu"
    precision: str = "auto"
    kernels: str = "auto"
    """Inference kernels of the image towers: ``auto``, ``fused`` or ``plain``
    (:mod:`medrobust.models.kernels`); recorded with the run, not part of a cell's identity."""
    compile: bool = False
    """``torch.compile`` the image towers (cached; recorded like ``kernels``)."""
    data_root: Path | None = None
    size: int = 28
    resize: bool = True
    pretrained: bool = True
    limit: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data_options: DataOptions = field(default_factory=DataOptions)
    seen_images: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Per model name, content hashes of the images it was trained or validated on (adapters)."""
    allow_overlap: bool = False
    """Evaluate even when test images are among ``seen_images`` (flagged in every such cell)."""
    test_parts: Mapping[str, Sequence[int]] = field(default_factory=dict)
    """Per source of a dataset without splits (its resolved path), the positions of the test
    part an adapter left out of its train/val/test partition: only these are evaluated."""


@dataclass
class RunSummary:
    """What a run did, and whether its grid is complete in the store afterwards."""

    computed: int = 0
    skipped: int = 0  # cells already done (before this run, or by another process)
    busy: int = 0  # cells found claimed by another live process
    seconds: float = 0.0
    images: int = 0
    total: int = 0  # cells (model x dataset x corruption x severity) of this run's grid
    missing: list[str] = field(default_factory=list)  # cells not in the store at the end

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    @property
    def complete(self) -> bool:
        return not self.missing


def _precision(spec: GridSpec, device: torch.device) -> str:
    if spec.precision != "auto":
        return spec.precision
    return "bf16" if device.type == "cuda" else "fp32"


def _suite_for(spec: GridSpec, dataset: ImageDataset) -> tuple[Suite, Suite]:
    """The whole suite of ``dataset`` and the part of it ``spec`` evaluates."""
    suite = get_suite(spec.suite, dataset.name, dataset.modality)
    return suite, suite.select(spec.corruptions)


def _suite_name(suite: Suite, dataset: ImageDataset) -> str:
    """The suite's name in results; one borrowed from another dataset (a folder's modality ->
    MedMNIST-C) says whose: ``medmnist-c/breastmnist``."""
    return suite.name if suite.dataset in (None, dataset.name) else f"{suite.name}/{suite.dataset}"


def suite_key(suite: str, dataset: str) -> str:
    """The name a suite's info is stored under: a suite (medmnist-c) can differ per dataset."""
    return f"{suite}/{dataset}"


def _record_info(
    store: ResultsStore, dataset: ImageDataset, models: Sequence[ModelAdapter], whole: Suite
) -> None:
    """Store what the run's dataset, models and suite are, for the report to read back."""
    store.set_info("dataset", dataset.name, {
        "modality": dataset.modality, "task": dataset.task,
        "class_names": list(dataset.class_names), "source": str(dataset.source),
    })  # fmt: skip
    for model in models:
        store.set_info("model", model.name, {"notes": model.info.notes})
    store.set_info("suite", suite_key(_suite_name(whole, dataset), dataset.name), {
        "corruptions": list(whole.corruptions),
        "benchmark_corruptions": list(whole.benchmark_corruptions),
    })  # fmt: skip


def _open_dataset(spec: GridSpec, item: str | ImageDataset) -> ImageDataset:
    dataset = item if isinstance(item, ImageDataset) else open_dataset(
        item, split=spec.split, size=spec.size, root=spec.data_root, options=spec.data_options,
        named_classes=True,
    )
    part = spec.test_parts.get(str(Path(dataset.source).resolve())) if dataset.source else None
    if part is not None:
        whole = len(dataset)
        dataset = dataset.subset(np.asarray(sorted(part), dtype=np.int64))
        dataset.reading["test_part"] = {"of": whole, "n": len(dataset)}
        print(f"{dataset.name}: no splits of its own; evaluating only the adapter's held-out "
              f"test part ({len(dataset)} of {whole} images)")
    if spec.limit is not None:
        dataset = dataset.subset(range(min(spec.limit, len(dataset))))
    return dataset


class _Source:
    """Where a cell's images come from: the engine on the fly, or a benchmark folder."""

    def __init__(self, spec: GridSpec, dataset: ImageDataset, suite: Suite, device: torch.device):
        self.spec, self.dataset, self.suite, self.device = spec, dataset, suite, device
        self.root = Path(spec.benchmark_dir) if spec.benchmark_dir else None
        self.layout = get_layout(spec.layout, self.root) if self.root is not None else None
        if self.layout is not None:
            self.layout.require(dataset.name, dataset.split, suite.corruptions, spec.severities)

    def describe(self) -> str:
        return f"benchmark:{self.spec.layout}:{self.root}" if self.root else "on-the-fly"

    def batches(self, cell: Condition) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 images on the device, labels) for the cell ``(corruption, severity)``."""
        bs = self.spec.batch_size
        if self.layout is None:
            view = CorruptedDataset(
                self.dataset, self.suite, *cell, seed=self.spec.seed, resize=self.spec.resize
            )
            for _, images, labels in view.iter_batches(bs, self.device):
                yield images, labels
            return
        stored = self._stored(cell)
        if self.spec.limit is not None:
            stored = stored.subset(range(min(self.spec.limit, len(stored))))
        for _, images, labels in stored.iter_batches(bs):
            yield to_device(images, self.device), labels

    def _stored(self, cell: Condition) -> ImageDataset:
        """The cell's images from the benchmark folder; a layout that need not hold clean
        images (official MedMNIST-C) falls back to the dataset itself for clean."""
        name, split = self.dataset.name, self.dataset.split
        if is_clean(cell[0]) and not self.layout.path_for(name, split, *cell).is_file():
            return self.dataset
        return self.layout.read(name, split, *cell, info=self.dataset.info)


def _input_key(model: ModelAdapter) -> tuple[str, str]:
    """Models with equal keys take the same pixels (e.g. a base model and its adapters)."""
    return repr(model.preprocess), str(model.device)


def model_inputs(
    classifiers: Sequence[ZeroShotClassifier], batches: Iterable[tuple[torch.Tensor, Any]]
) -> Iterator[tuple[dict[tuple[str, str], torch.Tensor], Any]]:
    """Each batch of uint8 images preprocessed once per distinct preprocessing of the
    classifiers' models: ``({input key: pixels}, labels)``. The run makes these on its
    producer thread, so resizing and normalising stay off the model's critical path."""
    models = {_input_key(c.model): c.model for c in classifiers}
    for images, labels in batches:
        with torch.inference_mode():
            pixels = {key: model.preprocess(images.to(model.device, non_blocking=True))
                      for key, model in models.items()}
        yield pixels, labels


def score_cell(
    classifiers: Sequence[ZeroShotClassifier],
    inputs: Iterable[tuple[dict[tuple[str, str], torch.Tensor], Any]],
) -> tuple[list[np.ndarray], np.ndarray]:
    """Probabilities (N, K) of each classifier and the labels (N,), streamed from
    :func:`model_inputs` batches.

    The images of a cell are produced (read or corrupted) once and scored by every model;
    models with the same preprocessing share it.
    """
    probs = [_Rows() for _ in classifiers]
    labels = _Rows()
    for classifier in classifiers:
        classifier.model.check_eval()
    for pixels, y in inputs:
        with torch.inference_mode():
            for out, classifier in zip(probs, classifiers, strict=True):
                out.append(classifier.probabilities(pixels[_input_key(classifier.model)])
                           .float().cpu().numpy())
        labels.append(np.asarray(y))
    return [p.array() for p in probs], labels.array()


class _Rows:
    """Rows appended batch by batch into one array that doubles when full.

    A cell's results live in a few blocks rather than one small block per batch: small
    long-lived blocks between the batches' large ones pin the heap, which then grows with the
    number of batches (glibc, more so with :func:`medrobust.runtime.keep_freed_memory`).
    """

    def __init__(self) -> None:
        self._rows: np.ndarray | None = None
        self._n = 0

    def append(self, rows: np.ndarray) -> None:
        end = self._n + len(rows)
        if self._rows is None or end > len(self._rows):
            grown = np.empty((max(end, 2 * self._n, 1), *rows.shape[1:]), rows.dtype)
            if self._rows is not None:
                grown[: self._n] = self._rows[: self._n]
            self._rows = grown
        self._rows[self._n : end] = rows
        self._n = end

    def array(self) -> np.ndarray:
        """The rows so far, as one array of their own."""
        if self._rows is None:
            raise ValueError("no images to score")
        return self._rows[: self._n].copy()


@dataclass
class _DatasetWork:
    """One dataset's part of the grid: where its images come from and which cells to score."""

    dataset: ImageDataset
    whole: Suite  # the dataset's whole suite (recorded in the run)
    suite: Suite  # the part of it evaluated
    source: _Source
    classifiers: list[ZeroShotClassifier]
    cells: list[Condition]
    seen_test_images: dict[str, int] = field(default_factory=dict)
    """Per model name, how many of these test images it saw in training (allow_overlap)."""


def _plan(spec: GridSpec, models: Sequence[ModelAdapter], device: torch.device) -> list[_DatasetWork]:
    plan = []
    for item in spec.datasets:
        dataset = _open_dataset(spec, item)
        whole, suite = _suite_for(spec, dataset)
        classifiers = [
            ZeroShotClassifier(model, dataset.class_names, spec.templates, dataset.modality,
                               precision=_precision(spec, device))
            for model in models
        ]
        plan.append(_DatasetWork(dataset, whole, suite, _Source(spec, dataset, suite, device),
                                 classifiers, list(conditions(suite.corruptions, spec.severities))))
    return plan


def _keys(
    spec: GridSpec, models: Sequence[ModelAdapter], work: _DatasetWork, cell: Condition
) -> list[CellKey]:
    return [_cell_key(spec, model, work.dataset, work.suite, cell, classifier, work.source,
                      work.seen_test_images.get(model.name, 0))
            for model, classifier in zip(models, work.classifiers, strict=True)]


def _take_shard(
    spec: GridSpec, models: Sequence[ModelAdapter], plan: list[_DatasetWork], shard: Shard,
    store: ResultsStore,
) -> None:
    """Keep in ``plan`` only the shard's cells (balanced by images) and note them in its store."""
    items = [(work, cell) for work in plan for cell in work.cells]
    keys = [_keys(spec, models, work, cell) for work, cell in items]
    owner = partition([len(work.dataset) * len(models) for work, _ in items], shard.count)
    mine = [i for i, o in enumerate(owner) if o == shard.index]
    write_shard_info(store, grid_digest(k.cell_id for ks in keys for k in ks), shard,
                     [k.cell_id for i in mine for k in keys[i]])
    for work in plan:
        work.cells = []
    for i in mine:
        work, cell = items[i]
        work.cells.append(cell)


def run_grid(
    spec: GridSpec,
    run_dir: str | Path,
    *,
    progress: bool = True,
    model_factory: Callable[..., ModelAdapter] = create_model,
    shard: Shard | None = None,
    wait: float | None = None,
    claim_timeout: float = CLAIM_TIMEOUT,
    log: Callable[[str], None] = print,
) -> RunSummary:
    """Evaluate every cell of ``spec`` not yet in ``run_dir``'s store.

    All models are loaded once; each cell's images are made once and scored by every model
    that still needs the cell, so corruption work does not grow with the number of models.
    With a ``shard``, only that shard's cells are evaluated, into the shard's own store
    (``run_dir/shards/shard-I-of-N``; see :mod:`medrobust.evaluation.sharding`).
    Cells that another live process is computing are waited for, at most ``wait`` seconds
    (None: until they are done); a dead owner's cells are taken over and computed here.
    ``RunSummary.missing`` names the cells that are not in the store at the end.
    """
    device = torch.device(spec.device)
    summary = RunSummary()
    models = [
        item if isinstance(item, ModelAdapter)
        else model_factory(item, pretrained=spec.pretrained, device=device, **spec.model_kwargs)
        for item in spec.models
    ]
    for model in models:
        model.to(device).eval()
    engine = _prepare_engine(spec, models, device)
    plan = _plan(spec, models, device)
    seen = _overlaps(spec, models, [work.dataset for work in plan])
    for work in plan:
        work.seen_test_images = {m: n for (m, d), n in seen.items() if d == work.dataset.name}
    store_dir = shard.store_dir(run_dir) if shard else Path(run_dir)
    with ResultsStore(store_dir, claim_timeout=claim_timeout) as store, store.heartbeat():
        for work in plan:
            _record_info(store, work.dataset, models, work.whole)
        invocation = f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {store.owner}"
        store.set_info("engine", invocation, engine)
        if shard is not None:
            _take_shard(spec, models, plan, shard, store)
        grid = [(work, cell) for work in plan for cell in work.cells]
        _run_cells(spec, models, plan, store, summary, progress)
        store.set_info("engine", invocation, {**engine, "cells_computed": summary.computed})
        _wait_for_others(spec, models, plan, store, summary, wait, log)
        keys = [key for work, cell in grid for key in _keys(spec, models, work, cell)]
        summary.total = len(keys)
        summary.missing = [_describe(k, store.holder(k)) for k in keys if not store.is_done(k)]
        summary.skipped = summary.total - summary.computed - len(summary.missing)
    return summary


def _prepare_engine(
    spec: GridSpec, models: Sequence[ModelAdapter], device: torch.device
) -> dict[str, Any]:
    """Apply the run's kernels/compile settings to every model; what was done, for the record
    (the run's engine info: shown by the report, never part of a cell's identity)."""
    settings = EngineSettings(spec.kernels, spec.compile)
    precision = _precision(spec, device)
    records = {
        model.name: prepare_for_inference(model, settings, batch_size=spec.batch_size,
                                          autocast_dtype=PRECISIONS.get(precision)).to_dict()
        for model in models
    }
    return {"kernels": spec.kernels, "compile": spec.compile, "precision": precision,
            "device": str(device), "torch": torch.__version__, "models": records}


def _busy(
    spec: GridSpec, models: Sequence[ModelAdapter], plan: list[_DatasetWork], store: ResultsStore
) -> list[tuple[_DatasetWork, Condition]]:
    """The cells of ``plan`` some model still needs and another process has claimed."""
    return [(work, cell) for work in plan for cell in work.cells
            if any(not store.is_done(k) for k in _keys(spec, models, work, cell))]


def _wait_for_others(
    spec: GridSpec,
    models: Sequence[ModelAdapter],
    plan: list[_DatasetWork],
    store: ResultsStore,
    summary: RunSummary,
    wait: float | None,
    log: Callable[[str], None],
    poll: float = 1.0,
) -> None:
    """Wait for the cells other live processes compute; take over those whose owner dies."""
    waiting = _busy(spec, models, plan, store)
    summary.busy = len(waiting)
    if not waiting or (wait is not None and wait <= 0):
        return
    owners = sorted({h for w, c in waiting for k in _keys(spec, models, w, c) if (h := store.holder(k))})
    log(f"waiting for {len(waiting)} cell(s) that another process is computing "
        f"({', '.join(owners) or 'owner unknown'})")
    deadline = None if wait is None else time.monotonic() + wait
    while waiting and (deadline is None or time.monotonic() < deadline):
        time.sleep(poll)
        orphaned = [(w, c) for w, c in waiting if any(
            not store.is_done(k) and store.holder(k) is None for k in _keys(spec, models, w, c))]
        if orphaned:  # their owner died: compute them here
            for work in plan:
                work.cells = [c for w, c in orphaned if w is work]
            _run_cells(spec, models, plan, store, summary, progress=False)
        waiting = [(w, c) for w, c in waiting
                   if any(not store.is_done(k) for k in _keys(spec, models, w, c))]


def _describe(key: CellKey, holder: str | None) -> str:
    cell = key.corruption if is_clean(key.corruption) else f"{key.corruption} severity {key.severity}"
    where = f" (claimed by live process {holder})" if holder else ""
    return f"{key.model} / {key.dataset} ({key.split}) / {cell}{where}"


_Item = tuple[_DatasetWork, Condition, list[tuple[CellKey, ZeroShotClassifier]]]


def _claimed(
    spec: GridSpec, models: Sequence[ModelAdapter], plan: list[_DatasetWork], store: ResultsStore,
    summary: RunSummary, bar: tqdm,
) -> Iterator[_Item]:
    """The cells some model still needs, claimed for this process one at a time."""
    for work in plan:
        for cell in work.cells:
            todo = []
            for key, classifier in zip(_keys(spec, models, work, cell), work.classifiers, strict=True):
                if store.is_done(key):
                    summary.skipped += 1
                elif not store.claim(key):
                    summary.busy += 1
                else:
                    todo.append((key, classifier))
            if todo:
                yield work, cell, todo
            else:
                bar.update()


def _run_cells(
    spec: GridSpec, models: Sequence[ModelAdapter], plan: list[_DatasetWork], store: ResultsStore,
    summary: RunSummary, progress: bool,
) -> None:
    """Score every cell of ``plan`` not done: claimed one cell ahead, so the producer thread
    makes the next cell's model inputs while the model scores this one; results are written
    by the writer thread."""
    # a short label: a bar wider than the terminal is cut down to its label, counts and all
    label = f"{len(models)} model{'s' if len(models) > 1 else ''} x {len(plan)} dataset(s)"
    bar = tqdm(total=sum(len(w.cells) for w in plan), desc=label, unit="cell",
               disable=not progress)
    pending = _claimed(spec, models, plan, store, summary, bar)
    current = upcoming = None
    with Producer(torch.device(spec.device)) as producer, ResultWriter(store.run_dir) as writer:
        try:
            current = next(pending, None)
            if current is not None:
                producer.request(_making(current))
            while current is not None:
                upcoming = next(pending, None)
                if upcoming is not None:
                    producer.request(_making(upcoming))
                _score(current, producer, writer, summary)
                bar.update()
                current, upcoming = upcoming, None
        except BaseException:
            for item in (current, upcoming):
                for key, _ in item[2] if item is not None else ():
                    store.release(key)
            raise
        finally:
            bar.close()


def _making(item: _Item) -> Callable[[], Iterator[tuple[dict, Any]]]:
    """What the producer runs for a cell: its images, made and preprocessed for its models."""
    work, cell, todo = item
    return lambda: model_inputs([c for _, c in todo], work.source.batches(cell))


def _score(item: _Item, producer: Producer, writer: ResultWriter, summary: RunSummary) -> None:
    work, _, todo = item
    start = time.perf_counter()
    all_probs, labels = score_cell([c for _, c in todo], producer.batches())
    seconds = (time.perf_counter() - start) / len(todo)
    for (key, _), probs in zip(todo, all_probs, strict=True):
        writer.submit(key, probs, labels, work.dataset.task, seconds)
    summary.computed += len(todo)
    summary.seconds += seconds * len(todo)
    summary.images += len(labels) * len(todo)


class ImageOverlapError(ValueError):
    """Test images are among the images an adapter was trained or validated on."""


def _overlaps(spec: GridSpec, models: Sequence[ModelAdapter], datasets: Sequence[ImageDataset]
              ) -> dict[tuple[str, str], int]:
    """How many test images of each dataset each model saw in training or validation.

    Raises :class:`ImageOverlapError` when any did, unless ``spec.allow_overlap``.
    """
    found: dict[tuple[str, str], int] = {}
    sizes = {}
    for dataset in datasets:
        hashes = None
        for model in models:
            seen = spec.seen_images.get(model.name)
            if not seen:
                continue
            hashes = hashes if hashes is not None else image_hashes(dataset.images)
            n = sum(h in seen for h in hashes)
            if n:
                found[(model.name, dataset.name)] = n
                sizes[dataset.name] = len(hashes)
    if found and not spec.allow_overlap:
        what = "; ".join(f"{m} saw {n} of the {sizes[d]} test images of {d}"
                         for (m, d), n in found.items())
        raise ImageOverlapError(
            f"{what} (in its training or validation data): refusing to evaluate an adapter on "
            "images it has seen; evaluate on other images, or pass --allow-overlap to go on "
            "(the report then flags every row concerned)")
    return found


def _cell_key(
    spec: GridSpec,
    model: ModelAdapter,
    dataset: ImageDataset,
    suite: Suite,
    cell: Condition,
    classifier: ZeroShotClassifier,
    source: _Source,
    seen_test_images: int = 0,
) -> CellKey:
    corruption, severity = cell
    params = None if is_clean(corruption) else suite[corruption].params[severity - 1]
    config = {
        "prompts": classifier.prompts,
        "class_names": list(dataset.class_names),
        "preprocess": model.preprocess.to_dict(),
        "source": source.describe(),
        "dataset_source": str(dataset.source),
        "n_images": len(dataset),
        "resize": suite.reference_size if spec.resize else None,
        "corruption_function": None if params is None else suite[corruption].function,
        "corruption_params": params,
        "precision": classifier.precision,
        "code_version": __version__,
    }
    if dataset.reading:  # only where files were read by choice: old runs keep their cell ids
        config["reading"] = dataset.reading
    if seen_test_images:  # evaluated with allow_overlap: the report flags the cell
        config["seen_test_images"] = seen_test_images
    return CellKey(model.name, model.weights_hash, dataset.name, dataset.split, corruption,
                   severity, spec.seed, _suite_name(suite, dataset), config)
