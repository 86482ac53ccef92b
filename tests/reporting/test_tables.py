"""build_tables: the per-corruption, severity and modality tables; the MedCLIP name check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medrobust.reporting.tables import is_medclip


def test_other_tables(grid, run: Path):
    errors = grid.errors(run)
    tables = grid.table(run)
    ce = tables["corruption_ce"]
    want = np.mean([sum(errors[("medclip-resnet50", d, "blur_a", s)] for s in grid.SEVERITIES)
                    / sum(errors[("clip-vit-b16", d, "blur_a", s)] for s in grid.SEVERITIES)
                    for d, _ in grid.DATASETS]) * 100
    assert ce.value("blur_a", "medclip-resnet50") == pytest.approx(want)
    assert ce.value("blur_a", "Datasets") == 2
    severity = tables["severity"]
    want = np.mean([np.mean([1 - errors[("clip-vit-b16", d, c, 3)] for c in grid.CORRUPTIONS])
                    for d, _ in grid.DATASETS])
    assert severity.value("clip-vit-b16", "Severity 3") == pytest.approx(want)
    modality = tables["modality"]  # modalities from the package's MedMNIST metadata
    mce = grid.hand_mce(errors, "medclip-resnet50", datasets={"breastmnist"})
    assert modality.value("breast ultrasound / medclip-resnet50", "mCE", key_columns=2) == (
        pytest.approx(mce))
    assert modality.value("chest X-ray / clip-vit-b16", "Datasets", key_columns=2) == (
        "pneumoniamnist")


def test_is_medclip():
    assert is_medclip("medclip-resnet50") and is_medclip("MedCLIP-Swin")
    assert not is_medclip("biomedclip") and not is_medclip("robustmedclip-r8")
