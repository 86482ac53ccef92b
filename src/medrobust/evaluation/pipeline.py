"""The two background threads of an evaluation run, so the model never waits on anything else.

* :class:`Producer`: one thread for the whole run makes the batches of the cells it is asked
  for (images, or the models' inputs made from them), in order, ``depth`` batches ahead, so
  the next cell's first batches are ready when the model finishes a cell. On a GPU it works
  on its own CUDA stream (copies from pinned memory without blocking, corruption kernels
  beside the model's) and hands each batch over with an event the model's stream waits on;
  on the CPU these are plain tensors.
* :class:`ResultWriter`: one thread computes each finished cell's metrics and writes its
  predictions file and row (its own SQLite connection), in order, at most ``depth`` cells
  behind. A run killed at any moment loses only the cells in flight: each cell is still written
  file first, then its row in one transaction.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .metrics import cell_metrics
from .store import CellKey, ResultsStore

__all__ = ["Producer", "ResultWriter"]

_END = object()  # closes a cell's batches
_STOP = object()  # ends a thread


class Producer:
    """Batches of requested cells from one background thread (see the module docstring)."""

    def __init__(self, device: torch.device, depth: int = 2) -> None:
        self.device = device
        self._requests: queue.Queue[Any] = queue.Queue()
        self._out: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._thread = threading.Thread(target=self._run, name="medrobust-producer", daemon=True)
        self._thread.start()

    def request(self, batches: Callable[[], Iterable[tuple[torch.Tensor, Any]]]) -> None:
        """Queue a cell: ``batches()`` yields its (tensor or {name: tensor} on the device, labels)."""
        self._requests.put(batches)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        context = torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext()
        with context:
            while (make := self._requests.get()) is not _STOP:
                try:
                    for images, labels in make():
                        event = None
                        if self._stream is not None:
                            event = torch.cuda.Event()
                            event.record(self._stream)
                        if not self._put((images, labels, event)):
                            return
                    if not self._put(_END):
                        return
                except BaseException as exc:  # handed to the consumer
                    if not self._put(exc):
                        return

    def batches(self) -> Iterator[tuple[torch.Tensor, Any]]:
        """The next requested cell's batches, ready for use on the current stream."""
        while (item := self._out.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            images, labels, event = item
            if event is not None:
                stream = torch.cuda.current_stream(self.device)
                stream.wait_event(event)
                for tensor in images.values() if isinstance(images, dict) else (images,):
                    tensor.record_stream(stream)  # not reused before the model is done with it
            yield images, labels

    def close(self) -> None:
        self._stop.set()
        self._requests.put(_STOP)
        self._thread.join()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ResultWriter:
    """Metrics and store writes of finished cells on one background thread (module docstring).

    ``submit`` blocks while ``depth`` cells wait and re-raises the first error of an earlier
    write; leaving the ``with`` block writes every queued cell, then re-raises such an error.
    """

    def __init__(self, store_dir: str | Path, depth: int = 2) -> None:
        self.store_dir = Path(store_dir)
        self._jobs: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="medrobust-results", daemon=True)
        self._thread.start()

    def submit(self, key: CellKey, probabilities: np.ndarray, labels: np.ndarray, task: str,
               seconds: float) -> None:
        if self._error is not None:
            raise self._error
        self._jobs.put((key, probabilities, labels, task, seconds))

    def _run(self) -> None:
        store = None
        try:
            store = ResultsStore(self.store_dir)
            while (job := self._jobs.get()) is not _STOP:
                if self._error is None:
                    key, probs, labels, task, seconds = job
                    store.add(key, cell_metrics(probs, labels, task), probs, labels, seconds=seconds)
        except BaseException as exc:  # handed to the submitting thread
            self._error = exc
            while self._jobs.get() is not _STOP:
                pass
        finally:
            if store is not None:
                store.close()

    def close(self) -> None:
        self._jobs.put(_STOP)
        self._thread.join()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.close()
        if self._error is not None and exc_type is None:
            raise self._error
