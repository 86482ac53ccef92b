"""The benchmark scripts stay runnable: each imports (a script importing a helper another
script renamed would otherwise break unnoticed until someone runs it, on a lent GPU say)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py") if p.stem != "_reference_runner")


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_script_imports(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.delitem(sys.modules, name, raising=False)
    module = importlib.import_module(name)
    assert name.startswith("_") or callable(getattr(module, "main", None))


def test_every_benchmark_script_is_checked() -> None:
    assert {"corrupt_command", "eval_speed", "kernel_speed", "headline", "corruption_cuda"} <= set(SCRIPTS)
