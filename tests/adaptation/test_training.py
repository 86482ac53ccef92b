"""The training pieces adaptation and pretraining share: the schedule, the stepper, states."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from medrobust.adaptation.checkpoint import atomic_path
from medrobust.adaptation.training import (
    Stepper,
    improved,
    load_train_state,
    save_train_state,
    warmup_cosine,
    warmup_cosine_scheduler,
)


def _cosine(step: int, warmup: int, total: int) -> float:
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _old_adapt_factor(step: int, *, warmup: int, total: int) -> float:
    """adaptation/train.py's ``cosine_warmup`` before the schedules were unified."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return _cosine(step, warmup, total)


def _old_pretrain_factor(step: int, warmup: int, total: int) -> float:
    """models/pretrain.py's ``_lr_factor`` (which trained medrobust-mini) before unification."""
    if step < warmup:
        return (step + 1) / warmup
    return _cosine(step, warmup, total)


def _lrs(factor, base_lr: float, steps: int) -> list[float]:
    """The learning rates LambdaLR gives an optimizer over ``steps`` steps."""
    p = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([p], lr=base_lr)
    scheduler = factor(optimizer)
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize(("warmup", "total"), [(4, 20), (0, 12), (1, 3), (7, 7), (30, 600)])
def test_schedule_equals_the_adaptation_schedule(warmup: int, total: int) -> None:
    new = [warmup_cosine(s, warmup=warmup, total=total) for s in range(total + 2)]
    old = [_old_adapt_factor(s, warmup=warmup, total=total) for s in range(total + 2)]
    assert new == old  # exact: the same floats, so adapters train as before
    lr_new = _lrs(lambda o: warmup_cosine_scheduler(o, warmup=warmup, total=total), 1e-4, total)
    lr_old = _lrs(lambda o: torch.optim.lr_scheduler.LambdaLR(
        o, lambda s: _old_adapt_factor(s, warmup=warmup, total=total)), 1e-4, total)
    assert lr_new == lr_old


@pytest.mark.parametrize(
    ("warmup_steps", "total"),
    [(50, 30 * 51), (50, 20), (1, 4), (0, 5)],  # 30 x 51: the shipped medrobust-mini run's shape
)
def test_schedule_equals_the_pretraining_schedule(warmup_steps: int, total: int) -> None:
    warmup = min(warmup_steps, total)  # as pretrain() has always clipped it
    new = [warmup_cosine(s, warmup=warmup, total=total, peak_in_warmup=True)
           for s in range(total + 2)]
    assert new == [_old_pretrain_factor(s, warmup, total) for s in range(total + 2)]
    lr_new = _lrs(lambda o: warmup_cosine_scheduler(
        o, warmup=warmup, total=total, peak_in_warmup=True), 1e-3, total)
    lr_old = _lrs(lambda o: torch.optim.lr_scheduler.LambdaLR(
        o, lambda s: _old_pretrain_factor(s, warmup, total)), 1e-3, total)
    assert lr_new == lr_old


def test_schedule_shape() -> None:
    factors = [warmup_cosine(s, warmup=4, total=20) for s in range(20)]
    assert factors[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert factors[4] == pytest.approx(1.0) and factors[12] == pytest.approx(0.5)
    assert all(a >= b for a, b in itertools.pairwise(factors[4:]))
    peaked = [warmup_cosine(s, warmup=4, total=20, peak_in_warmup=True) for s in range(5)]
    assert peaked == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])


def _quadratic_stepper(grad_accum: int, after_step=None) -> tuple[torch.nn.Parameter, Stepper]:
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = torch.optim.SGD([p], lr=0.1)
    scheduler = warmup_cosine_scheduler(optimizer, warmup=0, total=100)
    return p, Stepper(optimizer, scheduler, grad_accum=grad_accum, after_step=after_step)


def test_stepper_accumulates_flushes_and_runs_the_hook() -> None:
    targets = torch.tensor([[0.0, 0.0], [2.0, 2.0], [4.0, 0.0]])
    p1, one = _quadratic_stepper(1)
    loss = sum(((p1 - t) ** 2).sum() for t in targets) / 3
    one.backward(loss)
    p3, acc = _quadratic_stepper(2, after_step=lambda: p3.clamp_(max=0.5))
    for t in targets:
        acc.backward(((p3 - t) ** 2).sum())
    assert acc.steps == 1 and acc.pending == 1
    acc.flush([p3])  # the third batch alone, rescaled as a mean over itself
    assert acc.steps == 2 and acc.pending == 0 and p3.grad is None
    assert float(p3.detach().max()) <= 0.5  # the hook ran after each step
    assert one.steps == 1 and one.lr == pytest.approx(0.1 * warmup_cosine(1, warmup=0, total=100))


def test_stepper_state_round_trips(tmp_path: Path) -> None:
    p, stepper = _quadratic_stepper(1)
    for _ in range(3):
        stepper.backward((p ** 2).sum())
    save_train_state(tmp_path / "s" / "state.pt", {"trainer": stepper.state_dict()})
    _, again = _quadratic_stepper(1)
    again.load_state_dict(load_train_state(tmp_path / "s" / "state.pt")["trainer"])
    assert again.steps == 3 and again.lr == stepper.lr
    assert not list((tmp_path / "s").glob(".*.tmp"))


def test_improved() -> None:
    assert improved(0.5, None, higher_is_better=True)
    assert improved(0.6, 0.5, higher_is_better=True) and not improved(0.5, 0.5, higher_is_better=True)
    assert improved(0.4, 0.5, higher_is_better=False) and not improved(0.6, 0.5, higher_is_better=False)


def test_train_state_is_atomic_and_safe(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / "state.pt"
    save_train_state(path, {"epoch": 1, "lora": {"w": torch.ones(2)}, "history": [{"a": 0.5}]})
    with pytest.raises(RuntimeError, match="boom"), atomic_path(path) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    state = load_train_state(path)  # the failed write left the previous state intact
    assert state["epoch"] == 1 and torch.equal(state["lora"]["w"], torch.ones(2))
    assert [p.name for p in path.parent.iterdir()] == ["state.pt"]
