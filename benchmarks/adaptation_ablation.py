"""Ablation of few-shot adaptation: what LoRA, prompt tuning and both bring, against a linear probe.

methods {none (zero-shot), lora, prompt, lora+prompt, linear-probe} x shots per class x seeds,
with medrobust-mini adapted jointly on the chosen MedMNIST datasets (one adapter per method,
shots and seed, as ``medrobust adapt`` trains them), then evaluated by the library's runner on
clean + the MedMNIST-C suite of each dataset into one run folder, with the library's report.

Numbers: balanced accuracy, clean and the mean over every corruption x severity cell, per
dataset and averaged over datasets; for each (method, shots) the mean and standard deviation
across seeds (training noise) and a 95 % percentile bootstrap CI over test images of the
seed-mean (test-set noise): each resample draws every class's test images with replacement
(stratified), the same draw for every seed and every corruption cell (paired).

Run: ``python benchmarks/adaptation_ablation.py [--shots 1,4,16] [--seeds 0,1,2]
[--datasets ...] [--severities 3] [--limit 120] [--epochs 15] [--out runs/adaptation_ablation]``
(the defaults are the published configuration, sized for a 2-core CPU); finished adapters and
evaluation cells are reused when rerun. Writes
``benchmarks/results/adaptation_ablation.{json,md}`` (``--results``).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import medrobust
from _common import to_jsonable
from medrobust.adaptation import AdaptConfig, LoraSettings, adapt, load_adapted_model
from medrobust.adaptation.linear_probe import fit_linear_probe
from medrobust.adaptation.prompt import PromptSettings
from medrobust.evaluation import GridSpec, ResultsStore, run_grid
from medrobust.models import ModelAdapter, create_model
from medrobust.reporting import write_report

BASE = "medrobust-mini"
TRAINED = ("lora", "prompt", "lora+prompt")
METHODS = ("none", *TRAINED, "linear-probe")
DATASETS = ("breastmnist", "pneumoniamnist", "retinamnist")
RESULTS = Path(__file__).resolve().parent / "results" / "adaptation_ablation"
# medrobust-mini's default templates are the 'clip' set, whose first is "a medical image of {}."
CONTEXT_INIT = "a medical image of"


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--shots", type=_ints, default=[1, 4, 16])
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--severities", type=_ints, default=[3])
    p.add_argument("--limit", type=int, default=120,
                   help="test images per dataset (the first N; 0: all)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--lr", type=float, default=5e-4, help="LoRA learning rate")
    p.add_argument("--prompt-lr", type=float, default=2e-3, help="context learning rate")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--val-limit", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a shared machine more threads only contend)")
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("runs/adaptation_ablation"))
    p.add_argument("--results", type=Path, default=RESULTS, help="output path without suffix")
    args = p.parse_args(argv)
    args.limit = args.limit or None
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    return args


def _config(args: argparse.Namespace, method: str, shots: int, seed: int) -> AdaptConfig:
    return AdaptConfig(
        shots=shots, seed=seed, method=method, epochs=args.epochs, patience=args.patience,
        lr=args.lr, prompt_lr=args.prompt_lr, batch_size=args.batch_size,
        val_limit=args.val_limit, label=f"{method}-k{shots}-s{seed}",
        lora=LoraSettings(rank=args.rank), prompt=PromptSettings(init=CONTEXT_INIT),
    )


def build_models(args: argparse.Namespace) -> tuple[list[ModelAdapter], dict[str, dict]]:
    """The base, every adapter (trained here unless already in ``--out``) and the probes;
    and what each model name stands for."""
    base = create_model(BASE)
    models: list[ModelAdapter] = [base]
    meaning = {base.name: {"method": "none", "shots": 0, "seed": None}}
    for method in (m for m in TRAINED if m in args.methods):
        for shots in args.shots:
            for seed in args.seeds:
                cfg = _config(args, method, shots, seed)
                folder = args.out / "adapters" / cfg.label
                started = time.perf_counter()
                adapt(BASE, list(args.datasets), cfg, out_dir=folder, data_root=args.data_root,
                      progress=False, log=None)
                model = load_adapted_model(folder)
                meaning[model.name] = {"method": method, "shots": shots, "seed": seed,
                                       "train_seconds": time.perf_counter() - started}
                models.append(model)
                print(f"  {cfg.label}: {meaning[model.name]['train_seconds']:.1f} s", flush=True)
    if "linear-probe" in args.methods:
        for shots in args.shots:
            for seed in args.seeds:
                cfg = _config(args, "lora", shots, seed)
                probe = fit_linear_probe(base, list(args.datasets), cfg,
                                         data_root=args.data_root, label=f"k{shots}-s{seed}")
                meaning[probe.name] = {"method": "linear-probe", "shots": shots, "seed": seed,
                                       "C": {r["name"]: r["C"] for r in probe.record["data"]}}
                models.append(probe)
    return models, meaning


def _correct(store: ResultsStore, row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = store.predictions(row)
    return probs.argmax(axis=1) == labels, labels


def collect(run_dir: Path, meaning: dict[str, dict]) -> dict[tuple, dict[str, Any]]:
    """Per (method, shots, dataset): labels, and per seed the correctness of every test image
    clean (N,) and in every corruption cell (C, N), cells in one order for every model."""
    out: dict[tuple, dict[str, Any]] = {}
    with ResultsStore(run_dir) as store:
        for row in store.rows(corruption="clean"):
            if row["model"] not in meaning:
                continue
            m = meaning[row["model"]]
            clean, labels = _correct(store, row)
            cells = sorted((r for r in store.rows(model=row["model"], dataset=row["dataset"])
                            if r["corruption"] != "clean"),
                           key=lambda r: (r["corruption"], r["severity"]))
            corrupted = np.stack([_correct(store, r)[0] for r in cells])
            entry = out.setdefault((m["method"], m["shots"], row["dataset"]),
                                   {"labels": labels, "seeds": [], "clean": [], "corrupted": []})
            assert np.array_equal(entry["labels"], labels)
            entry["seeds"].append(m["seed"])
            entry["clean"].append(clean)
            entry["corrupted"].append(corrupted)
    return out


def balanced_accuracy(correct: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean per-class recall over the last axis (images)."""
    classes = np.unique(labels)
    return np.mean([correct[..., labels == c].mean(axis=-1) for c in classes], axis=0)


def bootstrap_draws(labels: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Per class, (n, n_c) indices of its test images drawn with replacement (stratified)."""
    draws = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        draws.append(members[rng.integers(0, len(members), size=(n, len(members)))])
    return draws


def resampled_balanced_accuracy(correct: np.ndarray, draws: list[np.ndarray]) -> np.ndarray:
    """Balanced accuracy of each resample: ``correct`` (..., N) -> (..., n)."""
    return np.mean([correct[..., d].mean(axis=-1) for d in draws], axis=0)


def summarise(data: dict[tuple, dict[str, Any]], n_boot: int, seed: int = 0) -> list[dict]:
    """Mean, std over seeds and bootstrap CI of clean and corrupted balanced accuracy, and the
    paired bootstrap CI of each row's difference from the zero-shot base ('none')."""
    rng = np.random.default_rng(seed)
    draws = {}
    rows = []
    mean_boots = {}
    keys = sorted({(m, s) for m, s, _ in data}, key=lambda k: (METHODS.index(k[0]), k[1]))
    datasets = sorted({d for _, _, d in data})
    for method, shots in keys:
        row: dict[str, Any] = {"method": method, "shots": shots, "datasets": {}}
        boots = {"clean": [], "corrupted": []}
        for dataset in datasets:
            entry = data.get((method, shots, dataset))
            if entry is None:
                continue
            labels = entry["labels"]
            if dataset not in draws:  # the same resamples for every method: paired
                draws[dataset] = bootstrap_draws(labels, n_boot, rng)
            clean = np.stack(entry["clean"])  # (S, N)
            corrupted = np.stack(entry["corrupted"])  # (S, C, N)
            per_seed = {"clean": balanced_accuracy(clean, labels),
                        "corrupted": balanced_accuracy(corrupted, labels).mean(axis=1)}
            boot = {"clean": resampled_balanced_accuracy(clean, draws[dataset]).mean(axis=0),
                    "corrupted": resampled_balanced_accuracy(corrupted, draws[dataset])
                    .mean(axis=(0, 1))}
            row["datasets"][dataset] = _stats(per_seed, boot, entry["seeds"], corrupted.shape[1])
            for k in boots:
                boots[k].append((per_seed[k], boot[k]))
        per_seed = {k: np.mean([p for p, _ in v], axis=0) for k, v in boots.items()}
        boot = {k: np.mean([b for _, b in v], axis=0) for k, v in boots.items()}
        row["mean"] = _stats(per_seed, boot, None, None)
        mean_boots[(method, shots)] = boot
        rows.append(row)
    none = next((mean_boots[k] for k in mean_boots if k[0] == "none"), None)
    for row in rows:
        if none is None or row["method"] == "none":
            continue
        boot = mean_boots[(row["method"], row["shots"])]
        none_mean = next(r for r in rows if r["method"] == "none")["mean"]
        row["vs_none"] = {
            k: {"difference": row["mean"][k]["mean"] - none_mean[k]["mean"],
                "ci95": [float(np.percentile(boot[k] - none[k], q)) for q in (2.5, 97.5)]}
            for k in ("clean", "corrupted")
        }
    return rows


def _stats(per_seed: dict, boot: dict, seeds: list | None, cells: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in ("clean", "corrupted"):
        values = np.asarray(per_seed[k], dtype=float)
        out[k] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "per_seed": values.tolist(),
            "ci95": [float(np.percentile(boot[k], 2.5)), float(np.percentile(boot[k], 97.5))],
        }
    if seeds is not None:
        out["seeds"], out["corruption_cells"] = seeds, cells
    return out


def _fmt(stat: dict[str, Any]) -> str:
    lo, hi = stat["ci95"]
    return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _fmt_diff(row: dict[str, Any], key: str) -> str:
    if "vs_none" not in row:
        return "-"
    d = row["vs_none"][key]
    lo, hi = d["ci95"]
    return f"{100 * d['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def markdown(rows: list[dict], header: dict[str, Any]) -> str:
    lines = [
        "# Few-shot adaptation ablation (medrobust-mini)",
        "",
        f"Datasets: {', '.join(header['datasets'])}; test images per dataset: "
        f"{header['limit'] or 'all'}; MedMNIST-C severities {header['severities']}; seeds "
        f"{header['seeds']}; {header['epochs']} epochs max (patience {header['patience']}, "
        "checkpoint on validation balanced accuracy, epoch 0 = the base included). "
        f"Measured in {header['seconds']:.0f} s ({header['threads']} thread) by "
        f"`python benchmarks/adaptation_ablation.py {header['argv']}`. "
        "Balanced accuracy in %: mean ± std over seeds "
        f"[95 % bootstrap CI over test images, {header['bootstrap']} stratified resamples, of "
        "the seed-mean]. 'corrupted' is the mean over every corruption x severity cell; the "
        "Δ columns give the difference from the zero-shot base in points with its paired "
        "bootstrap CI (the same resampled test images for both).",
        "",
        "| method | shots/class | clean | corrupted | Δ clean vs none | Δ corrupted vs none |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['method']} | {r['shots'] or '-'} | {_fmt(r['mean']['clean'])} | "
              f"{_fmt(r['mean']['corrupted'])} | {_fmt_diff(r, 'clean')} | "
              f"{_fmt_diff(r, 'corrupted')} |" for r in rows]
    datasets = header["datasets"]
    lines += ["", "Per dataset (clean / corrupted, mean ± std [CI]):", "",
              "| method | shots | " + " | ".join(datasets) + " |",
              "|---|---|" + "---|" * len(datasets)]
    for r in rows:
        cells = [f"{_fmt(r['datasets'][d]['clean'])} / {_fmt(r['datasets'][d]['corrupted'])}"
                 if d in r["datasets"] else "-" for d in datasets]
        lines.append(f"| {r['method']} | {r['shots'] or '-'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    models, meaning = build_models(args)
    trained = time.perf_counter()
    run_dir = args.out / "run"
    spec = GridSpec(models=models, datasets=list(args.datasets), suite="medmnist-c",
                    severities=tuple(args.severities), limit=args.limit, batch_size=256,
                    data_root=args.data_root)
    run_grid(spec, run_dir, progress=False)
    evaluated = time.perf_counter()
    write_report(run_dir, baseline=BASE, error_type="balanced_error")
    rows = summarise(collect(run_dir, meaning), args.bootstrap)
    header = {
        "datasets": args.datasets, "limit": args.limit, "severities": args.severities,
        "seeds": args.seeds, "shots": args.shots, "epochs": args.epochs,
        "patience": args.patience, "bootstrap": args.bootstrap, "threads": args.threads,
        "seconds": time.perf_counter() - started,
        "argv": " ".join(sys.argv[1:] if argv is None else argv),
    }
    result = {
        "benchmark": "adaptation_ablation",
        "settings": {**header, "methods": args.methods, "base": BASE, "lr_lora": args.lr,
                     "lr_prompt": args.prompt_lr, "rank": args.rank, "val_limit": args.val_limit,
                     "batch_size": args.batch_size, "context_init": CONTEXT_INIT,
                     "threads": args.threads, "run_dir": str(run_dir)},
        "models": meaning,
        "seconds": {"train": trained - started, "evaluate": evaluated - trained,
                    "total": time.perf_counter() - started},
        "versions": {"medrobust": medrobust.__version__, "git_commit": _git_commit(),
                     "torch": torch.__version__,
                     "python": platform.python_version(), "machine": platform.machine()},
        "rows": rows,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.with_suffix(".json").write_text(json.dumps(to_jsonable(result), indent=2) + "\n")
    args.results.with_suffix(".md").write_text(markdown(rows, header))
    print(markdown(rows, header))
    print(f"total {result['seconds']['total']:.0f} s; run folder {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
