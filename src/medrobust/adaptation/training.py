"""Training pieces shared by LoRA adaptation and pretraining.

One learning-rate schedule (linear warm-up, then cosine decay to 0), one optimizer-step helper
(gradient accumulation, schedule step, a post-step hook) with one state format, one rule for
"did validation improve", and one way to write and read a resumable training state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._files import atomic_path, write_failure

__all__ = [
    "Stepper",
    "improved",
    "load_train_state",
    "save_train_state",
    "warmup_cosine",
    "warmup_cosine_scheduler",
]


def warmup_cosine(step: int, *, warmup: int, total: int, peak_in_warmup: bool = False) -> float:
    """Learning-rate factor of optimizer step ``step``: linear warm-up over ``warmup`` steps,
    then cosine decay from 1 to 0 at step ``total``.

    The warm-up's last factor is ``warmup / (warmup + 1)`` (the peak 1 comes at step ``warmup``,
    as adaptation has always trained), or 1 with ``peak_in_warmup=True`` (the schedule that
    trained the shipped medrobust-mini weights).
    """
    if step < warmup:
        return (step + 1) / (warmup if peak_in_warmup else warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, *, warmup: int, total: int, peak_in_warmup: bool = False
) -> torch.optim.lr_scheduler.LambdaLR:
    """``optimizer``'s LR times :func:`warmup_cosine` of the step count."""
    factor = partial(warmup_cosine, warmup=warmup, total=total, peak_in_warmup=peak_in_warmup)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Stepper:
    """The optimizer side of a training loop: backward of each batch's loss, and every
    ``grad_accum`` batches an optimizer step, a schedule step, zeroed gradients and
    ``after_step`` (for example a clamp of a learned temperature)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        *,
        grad_accum: int = 1,
        after_step: Callable[[], None] | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.grad_accum = int(grad_accum)
        self.after_step = after_step
        self.pending = 0  # batches accumulated since the last optimizer step
        self.steps = 0  # optimizer steps taken

    def backward(self, loss: Tensor) -> None:
        """Accumulate the gradient of one batch's mean loss; step when ``grad_accum`` are in."""
        (loss / self.grad_accum).backward()
        self.pending += 1
        if self.pending == self.grad_accum:
            self.step()

    def flush(self, params: Sequence[Tensor]) -> None:
        """Apply a partial accumulation (end of epoch), rescaled to a mean over its batches."""
        if self.pending:
            factor = self.grad_accum / self.pending
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(factor)
            self.step()

    def step(self) -> None:
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.after_step is not None:
            with torch.no_grad():
                self.after_step()
        self.pending = 0
        self.steps += 1

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "steps": self.steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps = int(state["steps"])
        self.pending = 0


def improved(value: float, best: float | None, *, higher_is_better: bool) -> bool:
    """Whether a validation ``value`` beats the ``best`` so far (None: nothing yet)."""
    if best is None:
        return True
    return value > best if higher_is_better else value < best


def save_train_state(path: Path, state: Mapping[str, Any]) -> None:
    """Write a resumable training state atomically (a crash never leaves a torn file).

    ``torch.save`` reports a failed write (a full disk) as a RuntimeError; it becomes the
    OSError behind it."""
    try:
        with atomic_path(path) as tmp:
            torch.save(dict(state), tmp)
    except RuntimeError as exc:
        raise write_failure(path, exc) from exc


def load_train_state(path: Path) -> dict[str, Any]:
    """Read a training state safely (tensors and plain containers only; no pickled code)."""
    return torch.load(path, map_location="cpu", weights_only=True)
