"""Prompt-based ("zero-shot") scores of medrobust-mini on the clean MedMNIST test splits.

Runs the evaluation runner (``run_grid``, clean cells only: 28 px -> 224 px -> the model's
preprocessing, ``ZeroShotClassifier`` with the model's default templates; also with the
paper's template, and from the native 28 px images) and writes
``results/mini_zero_shot.{json,md}``: balanced accuracy, accuracy and ROC-AUC per dataset, the
numbers quoted in the model card.

The classes of these datasets were seen in training (train splits only), so these scores are
not zero-shot in the paper's sense.

Run: ``python benchmarks/mini_zero_shot.py [--model FOLDER] [--data-root DIR]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import BENCH_DIR, DEFAULT_DATA_ROOT, format_table, markdown_table
from medrobust.evaluation.runner import GridSpec, run_grid
from medrobust.evaluation.store import ResultsStore
from medrobust.models import ModelAdapter, create_model

DATASETS = ("breastmnist", "pneumoniamnist", "retinamnist")
# (label, templates, resize to 224 px first): the benchmark's path with the model's default
# templates (the numbers of the model card), the paper's prompt, and the native 28 px input.
SETTINGS: tuple[tuple[str, str | None, bool], ...] = (
    ("default templates, 224 px", None, True),
    ("paper template, 224 px", "paper", True),
    ("default templates, native 28 px", None, False),
)
METRICS = ("balanced_accuracy", "accuracy", "auc")


def evaluate(model: ModelAdapter, data_root: Path, run_root: Path) -> list[dict[str, Any]]:
    """One row per (setting, dataset): the runner's clean-cell metrics on the test split."""
    rows = []
    for i, (label, templates, resize) in enumerate(SETTINGS):
        run_dir = run_root / str(i)
        spec = GridSpec(models=[model], datasets=list(DATASETS), corruptions=[], split="test",
                        templates=templates, resize=resize, data_root=data_root,
                        precision="fp32")
        run_grid(spec, run_dir, progress=False)
        with ResultsStore(run_dir) as store:
            for row in store.rows(corruption="clean", split="test"):
                rows.append({
                    "setting": label, "dataset": row["dataset"], "n": row["n"],
                    **{m: row[m] for m in METRICS},
                })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="medrobust-mini", help="registry name or folder")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "mini_zero_shot",
                        help="output path without suffix (.json and .md are written)")
    args = parser.parse_args(argv)

    model = create_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        rows = evaluate(model, args.data_root, Path(tmp))
    headers = ["setting", "dataset", "n", *METRICS]
    table = [[r[h] if not isinstance(r[h], float) else f"{r[h]:.4f}" for h in headers]
             for r in rows]
    print(format_table(headers, table))
    record = {
        "model": args.model,
        "weights_id": model.weights_id,
        "weights_sha256": model.weights_hash,
        "split": "test",
        "default_templates": list(model.default_templates),
        "note": "classes seen in training (train splits); not zero-shot in the paper's sense",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    args.out.with_suffix(".md").write_text(
        f"# {args.model}: prompt-based scores on the clean test splits\n\n"
        f"Weights sha256 `{model.weights_hash}`. Classes seen in training: not zero-shot.\n\n"
        + markdown_table(headers, table) + "\n",
        encoding="utf-8",
    )
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
