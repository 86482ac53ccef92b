"""Figures: the corruption heatmap with missing values and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from medrobust.reporting import plot_corruption_heatmap


def test_heatmap_with_missing_values(tmp_path: Path):
    path = plot_corruption_heatmap({"c1": {"a": 100.0, "b": None}, "c2": {"a": 90.0, "b": 120.0}},
                                   tmp_path / "h.png", label="CE", center=100.0)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.info["dpi"][0] == pytest.approx(120, abs=1)
    with pytest.raises(ValueError, match="no corruptions"):
        plot_corruption_heatmap({}, tmp_path / "e.png", label="CE")
