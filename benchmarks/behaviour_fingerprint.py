"""Fingerprint what `corrupt` and `eval` produce on the shared data, to show a refactor changed nothing.

Runs the commands a user runs (as subprocesses of the installed ``medrobust`` CLI) on real
images, then hashes every output that carries a result:

* ``corrupt``: the SHA-256 of every array in every written ``.npz`` (images and labels), for
  breastmnist (MedMNIST-C suite, 224 px, grey) and retinamnist (MediMeta-C suite, RGB);
* ``eval``: per cell of a medrobust-mini grid (breastmnist, MedMNIST-C, severities 1 and 5),
  the SHA-256 of the stored probabilities and labels and every metric column, exactly.

Timestamps, timings, code versions and paths are left out on purpose: they differ per run.

    python benchmarks/behaviour_fingerprint.py --out benchmarks/results/fingerprint_after.json \
        --compare benchmarks/results/fingerprint_before.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

METRICS = ("n", "accuracy", "balanced_accuracy", "auc", "ece", "error", "balanced_error")


def _array_hashes(path: Path) -> dict[str, str]:
    with np.load(path) as f:
        return {
            key: hashlib.sha256(
                f[key].dtype.str.encode() + str(f[key].shape).encode() + f[key].tobytes()
            ).hexdigest()
            for key in sorted(f.files)
        }


def _run(args: list[str], data_root: Path) -> None:
    cmd = [sys.executable, "-m", "medrobust.cli", *args, "--data-root", str(data_root)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONHASHSEED": "0"})


def corrupt_fingerprint(work: Path, data_root: Path) -> dict[str, dict[str, str]]:
    out = work / "corrupt"
    _run(["corrupt", "breastmnist", "--suite", "medmnist-c", "--out", str(out)], data_root)
    _run(["corrupt", "retinamnist", "--suite", "medimeta-c", "--severities", "1,5",
          "--out", str(out)], data_root)
    return {str(p.relative_to(out)): _array_hashes(p) for p in sorted(out.rglob("*.npz"))}


def eval_fingerprint(work: Path, data_root: Path) -> dict[str, dict[str, object]]:
    run_dir = work / "eval"
    _run(["eval", "--model", "medrobust-mini", "--dataset", "breastmnist", "--suite", "medmnist-c",
          "--severities", "1,5", "--run-dir", str(run_dir)], data_root)
    con = sqlite3.connect(run_dir / "results.sqlite")
    con.row_factory = sqlite3.Row
    cells: dict[str, dict[str, object]] = {}
    for row in con.execute("SELECT * FROM cells"):
        key = f"{row['model']}/{row['dataset']}/{row['split']}/{row['corruption']}/{row['severity']}"
        entry: dict[str, object] = {m: row[m] for m in METRICS}
        entry["predictions"] = _array_hashes(run_dir / row["predictions"])
        cells[key] = entry
    con.close()
    return dict(sorted(cells.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path,
                        default=Path(os.environ.get("MEDROBUST_DATA", "../shared/data")))
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--compare", type=Path, help="an earlier fingerprint to compare with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result = {"corrupt": corrupt_fingerprint(work, args.data_root),
                  "eval": eval_fingerprint(work, args.data_root)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    n_files, n_cells = len(result["corrupt"]), len(result["eval"])
    print(f"{n_files} corrupted files, {n_cells} eval cells fingerprinted -> {args.out}")
    if args.compare is None:
        return 0
    before = json.loads(args.compare.read_text())
    differing = [f"corrupt:{k}" for k in sorted(set(before["corrupt"]) | set(result["corrupt"]))
                 if before["corrupt"].get(k) != result["corrupt"].get(k)]
    differing += [f"eval:{k}" for k in sorted(set(before["eval"]) | set(result["eval"]))
                  if before["eval"].get(k) != result["eval"].get(k)]
    if differing:
        print(f"DIFFERENT: {len(differing)} outputs: " + ", ".join(differing[:20]))
        return 1
    print(f"identical to {args.compare}: {n_files} files, {n_cells} cells")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
