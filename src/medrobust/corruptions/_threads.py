"""Spreading CPU work of one call over ``torch.get_num_threads()`` threads.

One thread pool per worker count serves the per-image random draws (``ImageRandom``) and the
NumPy / OpenCV chunks of the corruption functions (``run_chunks``).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["run_chunks"]


@functools.cache
def _thread_pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medrobust-cpu")


_torch_threads_lock = threading.Lock()
_torch_threads_users = 0
_torch_threads_saved = 1


@contextlib.contextmanager
def _torch_single_threaded() -> Iterator[None]:
    """torch at one thread while any caller is inside; the first in saves the thread count and
    the last out restores it, so concurrent callers cannot leave it at 1."""
    global _torch_threads_users, _torch_threads_saved
    with _torch_threads_lock:
        if _torch_threads_users == 0:
            _torch_threads_saved = torch.get_num_threads()
            torch.set_num_threads(1)
        _torch_threads_users += 1
    try:
        yield
    finally:
        with _torch_threads_lock:
            _torch_threads_users -= 1
            if _torch_threads_users == 0:
                torch.set_num_threads(_torch_threads_saved)


def run_chunks(fn: Callable[[slice], object], slices: Sequence[slice]) -> None:
    """Call ``fn(sl)`` for every slice, spread over ``torch.get_num_threads()`` threads.

    For CPU code made of NumPy, OpenCV and small torch calls, which release the GIL: ``fn``
    writes its own part of the output, so the result does not depend on the thread count.
    torch runs single-threaded meanwhile (process-wide: the thread count is global), so that
    its calls in the workers do not each start a full team of threads; the caller waits, idle,
    until all chunks are done. ``fn`` must not call ``run_chunks`` again: the pool is shared.
    """
    workers = min(torch.get_num_threads(), len(slices))
    if workers <= 1:
        for sl in slices:
            fn(sl)
        return
    with _torch_single_threaded():
        for _ in _thread_pool(workers).map(fn, slices):
            pass
