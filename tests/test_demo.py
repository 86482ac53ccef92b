"""`medrobust demo --quick` end to end: the whole story on the shipped model and real data."""

from __future__ import annotations

import os
import subprocess
import sys

from medrobust.evaluation import ResultsStore


def test_demo_quick_end_to_end(shared_data, tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "medrobust.cli", "demo", "--quick", "--quiet",
           "--data-root", str(shared_data), "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "MEDROBUST_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    html = out / "run" / "report" / "report.html"
    assert html.is_file() and "data:image/png;base64" in html.read_text()
    assert "Clean" in result.stdout and "mCE" in result.stdout
    with ResultsStore(out / "run") as store:
        rows = store.rows()
    models = {r["model"] for r in rows}
    assert "medrobust-mini" in models and len(models) == 5  # base + 4 adapters
    # 3 datasets x (clean + each MedMNIST-C corruption x 3 severities) per model
    per_model = 3 + 3 * (7 + 13 + 8)
    assert len(rows) == 5 * per_model
    # resumable: a second run finds every cell and adapter done
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "MEDROBUST_OFFLINE": "1"})
    assert again.returncode == 0, again.stderr[-3000:]
    with ResultsStore(out / "run") as store:
        assert len(store.rows()) == len(rows)
