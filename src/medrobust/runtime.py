"""Process-wide settings for fast batched image work on the CPU.

glibc's allocator serves every block above 32 MiB with a fresh ``mmap`` and unmaps it on
free. A batch of 256 RGB images at 224 px is 38 MiB as uint8 (150 MiB as float32), so
each batch would fault its pages in again: about 0.35 ms per MiB, which is more than a
cheap corruption such as a brightness change costs. ``keep_freed_memory`` makes the
allocator serve large blocks from its heap and keep freed memory for the next batch. Memory
stays bounded by the batch, though freed blocks are kept rather than returned, so the
process keeps its high-water mark until it exits (generate_benchmark on pneumoniamnist peaked
at 697 MiB of anonymous memory for the whole MedMNIST-C set, and at 671 / 717 MiB for 624 /
2496 images of three corruptions: benchmarks/results/speed.md).

The ``medrobust`` command line calls it at start. Scripts that call the corruption
functions in a loop can call it once themselves; it is never applied on import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache
from typing import Any

__all__ = ["KERNELS", "check_device", "keep_freed_memory", "to_device"]

KERNELS = ("auto", "fused", "plain")
"""Choices of ``medrobust eval --kernels`` (see :mod:`medrobust.models.kernels`)."""

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1  # give the heap's top back only beyond 2 GiB free (int max)
_TOP_PAD = 64 << 20  # grow the heap in steps of 64 MiB


@cache
def keep_freed_memory() -> bool:
    """Serve large blocks from the heap and keep freed memory; True where applied (glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return all((
        mallopt(_M_MMAP_MAX, 0) == 1,
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1,
        mallopt(_M_TOP_PAD, _TOP_PAD) == 1,
    ))


def to_device(tensor: Any, device: Any) -> Any:
    """Copy a CPU tensor to ``device``; to a GPU through pinned memory without blocking the host.

    The copy is queued on the current CUDA stream, so work queued after it on that stream sees
    the data; a consumer on another stream must wait for it (an event). On the CPU (or for a
    tensor already there) it is the tensor itself.
    """
    import torch

    device = torch.device(device)
    if tensor.device == device or (device.type == "cpu" and tensor.device.type == "cpu"):
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def check_device(device: str) -> str:
    """``device`` if torch can use it here; else a ValueError that says what to use instead
    (asked for a GPU on a machine without one, torch fails deep inside with a traceback)."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"--device {device!r} is not a device name ({exc}); use cpu or cuda") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "torch was built without CUDA" if torch.version.cuda is None else "no GPU or driver found"
            raise ValueError(f"--device {device}: no CUDA GPU is usable here ({why}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} "
                             "CUDA GPU(s), numbered from 0")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: Apple's MPS is not available here; use --device cpu")
    return device
