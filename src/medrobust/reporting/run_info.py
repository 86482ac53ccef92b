"""What a run recorded about its datasets, models and suites, read back for the report.

``run_grid`` stores each dataset's modality (from the dataset catalog), each model's notes
(from its registry config, e.g. that medrobust-mini saw the test datasets' classes in
pretraining) and each suite's corruption lists in the run's store. The report takes them
from there. Runs recorded before these fields existed fall back to the old guesses (modality
by dataset name, the MedCLIP caveat by model name), and the report says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..severity import is_clean
from .tables import MEDCLIP_CAVEAT, is_medclip

__all__ = ["RunInfo", "engine_notes", "engine_summary", "model_notes"]


@dataclass(frozen=True)
class RunInfo:
    """The ``ResultsStore.info()`` of a run: ``{kind: {name: info}}`` (kinds may be empty)."""

    datasets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    suites: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    engines: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Per invocation of ``run_grid`` (its start time and process), how it ran the models."""

    @classmethod
    def from_store(cls, info: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> RunInfo:
        return cls(dict(info.get("dataset", {})), dict(info.get("model", {})),
                   dict(info.get("suite", {})), dict(info.get("engine", {})))

    def modalities(self) -> dict[str, str]:
        """Dataset -> modality, as recorded with the run."""
        return {name: str(d["modality"]) for name, d in self.datasets.items() if "modality" in d}

    def expected_corruptions(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
        """Dataset -> the benchmark corruptions of its suite, for datasets run under one suite
        whose lists were recorded (others are left to the report's own lookup)."""
        suites: dict[str, set[str]] = {}
        for r in rows:
            if not is_clean(r["corruption"]):
                suites.setdefault(str(r["dataset"]), set()).add(str(r["suite"]))
        out = {}
        for dataset, names in suites.items():
            recorded = self.suites.get(f"{next(iter(names))}/{dataset}")
            if len(names) == 1 and recorded and "benchmark_corruptions" in recorded:
                out[dataset] = list(recorded["benchmark_corruptions"])
        return out

    def guessed(self, datasets: Sequence[str]) -> list[str]:
        """The datasets whose modality the run did not record (older runs)."""
        return [d for d in datasets if d not in self.modalities()]


def model_notes(models: Sequence[str], info: RunInfo) -> list[str]:
    """``"<model>: <note>"`` for each model with a note: the notes recorded with the run, or
    for models the run recorded nothing about, the MedCLIP caveat guessed from the name."""
    out = []
    for label in models:
        name = label.split(" [")[0]  # "name [hash8]" when a model has several weights
        if name in info.models:
            note = str(info.models[name].get("notes") or "")
            out += [f"{label}: {note.rstrip('.')}."] if note else []
        elif is_medclip(name):
            out.append(f"{label}: {MEDCLIP_CAVEAT} (guessed from the model name: this run "
                       "predates recorded model notes).")
    return out


def _describe_engine(engine: Mapping[str, Any]) -> str:
    models = engine.get("models", {})
    per_model = "; ".join(
        f"{name}: kernels {m.get('kernels')}"
        + (f" ({', '.join(m['swapped'])})" if m.get("swapped") else "")
        + f", compile {m.get('compile')}"
        for name, m in sorted(models.items()))
    return (f"--kernels {engine.get('kernels')}{' --compile' if engine.get('compile') else ''}, "
            f"precision {engine.get('precision')} on {engine.get('device')}, torch "
            f"{engine.get('torch')}" + (f" [{per_model}]" if per_model else ""))


def engine_notes(info: RunInfo) -> list[str]:
    """One line per distinct engine setting the run's invocations used (kernels, compile,
    precision, device), with how many cells each computed; a warning line when they differ."""
    groups: dict[str, list[int]] = {}
    for _, engine in sorted(info.engines.items()):
        groups.setdefault(_describe_engine(engine), []).append(int(engine.get("cells_computed", 0)))
    out = [f"Engine ({len(cells)} invocation(s), {sum(cells)} cell(s) computed): {text}."
           for text, cells in groups.items()]
    if sum(1 for cells in groups.values() if sum(cells)) > 1:
        out.append("Cells of this run were computed under different engine settings: their "
                   "predictions agree within float tolerance, not bit for bit.")
    return out


def engine_summary(info: RunInfo) -> str:
    """The engine settings in a few words (details in :func:`engine_notes`)."""
    settings = sorted({
        f"kernels {e.get('kernels')}{', compile' if e.get('compile') else ''}, "
        f"{e.get('precision')} on {e.get('device')}"
        for e in info.engines.values()
    })
    if not settings:
        return "not recorded (a run from before engine settings were stored)"
    return "; ".join(settings) + ("" if len(settings) == 1 else " (mixed: see the notes)")
