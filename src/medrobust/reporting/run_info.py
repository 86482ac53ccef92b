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

__all__ = ["RunInfo", "model_notes"]


@dataclass(frozen=True)
class RunInfo:
    """The ``ResultsStore.info()`` of a run: ``{kind: {name: info}}`` (kinds may be empty)."""

    datasets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    suites: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_store(cls, info: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> RunInfo:
        return cls(dict(info.get("dataset", {})), dict(info.get("model", {})),
                   dict(info.get("suite", {})))

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
