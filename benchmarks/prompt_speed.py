"""Training speed on CPU: LoRA alone against LoRA + prompt context (and the context alone).

The trainer ``adapt`` uses (``LoraTrainer``) takes the same steps on the same real images for
each method: medrobust-mini (its shipped weights), batches of 32 MedMNIST images staged as
``adapt`` stages them (resized once to 224 px), the model's own preprocessing, forward, loss,
backward and AdamW step. With a prompt context every step also runs the frozen text tower
forward and backward for the dataset's K class prompts. Methods are timed in interleaved
rounds on fresh copies of the model (median over rounds), so a noisy shared machine hits all
alike; the ratio lora+prompt / lora is the cost of learning the context jointly.

Run: ``python benchmarks/prompt_speed.py [--steps 10] [--rounds 5] [--threads 1]``; writes
``benchmarks/results/prompt_speed_cpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

import medrobust
from _common import format_table, to_jsonable
from medrobust.adaptation import (
    LoraSettings,
    LoraTrainer,
    PromptLearner,
    PromptSettings,
    apply_lora,
)
from medrobust.adaptation.train import PromptHeads
from medrobust.corruptions import prepare_images
from medrobust.data import open_dataset
from medrobust.data.fewshot import sample_fewshot
from medrobust.models import ModelAdapter, create_model
from medrobust.models.zeroshot import ZeroShotClassifier

RESULTS = Path(__file__).resolve().parent / "results" / "prompt_speed_cpu"
METHODS = ("lora", "lora+prompt", "prompt")
BATCH = 32


def _trainer(base: ModelAdapter, method: str, class_names: list[str]) -> LoraTrainer:
    model = copy.deepcopy(base)
    model.requires_grad_(False)
    if "lora" in method.split("+"):
        apply_lora(model, LoraSettings(rank=8))
    if "prompt" in method.split("+"):
        learner = PromptLearner(model, PromptSettings(init="a medical image of"))
        heads = PromptHeads(learner, [class_names], lr=2e-3)
    else:  # fixed prototypes of the prompt the context starts from
        heads = [ZeroShotClassifier(model, class_names, ("a medical image of {}.",)).text_features]
    return LoraTrainer(model, heads, lr=5e-4, weight_decay=1e-4, total_steps=10_000,
                       warmup_steps=0)


def _time_steps(trainer: LoraTrainer, images: torch.Tensor, labels: torch.Tensor,
                steps: int) -> float:
    """Seconds per step of ``steps`` train steps (batches cycled through the images)."""
    started = time.perf_counter()
    for i in range(steps):
        rows = torch.arange(i * BATCH, (i + 1) * BATCH) % len(labels)
        trainer.train_step(images[rows], labels[rows], 0)
    return (time.perf_counter() - started) / steps


def measure(dataset: str, steps: int, rounds: int, root: Path | None) -> dict:
    base = create_model("medrobust-mini")
    pool = sample_fewshot(open_dataset(dataset, split="train", root=root), shots=16, seed=0)
    images = prepare_images(pool.to_tensor(), 224)  # staged as adapt stages them
    labels = pool.labels_tensor()
    trainers = {m: _trainer(base, m, list(pool.class_names)) for m in METHODS}
    for trainer in trainers.values():  # warm-up: allocator, first-call costs
        _time_steps(trainer, images, labels, 2)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for _ in range(rounds):
        for m in METHODS:
            times[m].append(_time_steps(trainers[m], images, labels, steps))
    median = {m: statistics.median(v) for m, v in times.items()}
    return {
        "dataset": dataset, "classes": len(pool.class_names), "batch": BATCH, "steps": steps,
        "rounds": rounds, "seconds_per_step": times,
        "median_seconds_per_step": median,
        "images_per_s": {m: BATCH / t for m, t in median.items()},
        "ratio_lora_prompt_over_lora": median["lora+prompt"] / median["lora"],
        "trainable_parameters": {m: sum(p.numel() for p in t.params) for m, t in trainers.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="breastmnist,retinamnist")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = [measure(d, args.steps, args.rounds, args.data_root)
               for d in args.datasets.split(",")]
    rows = [(r["dataset"], r["classes"], *(f"{1000 * r['median_seconds_per_step'][m]:.0f}"
                                           for m in METHODS),
             f"{r['ratio_lora_prompt_over_lora']:.2f}") for r in results]
    headers = ("dataset", "K", *(f"{m} ms/step" for m in METHODS), "lora+prompt / lora")
    table = format_table(headers, rows)
    out = {
        "benchmark": "prompt_speed", "device": "cpu", "threads": args.threads,
        "model": "medrobust-mini", "lora_rank": 8, "context_tokens": 4, "results": results,
        "versions": {"medrobust": medrobust.__version__, "torch": torch.__version__,
                     "python": platform.python_version(), "machine": platform.machine()},
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.with_suffix(".json").write_text(json.dumps(to_jsonable(out), indent=2) + "\n")
    md = ("# Training speed on CPU: LoRA vs LoRA + prompt context (medrobust-mini)\n\n"
          f"Batch {BATCH} real images (16 shots per class, staged at 224 px), LoRA rank 8, "
          f"4 context tokens, {args.threads} thread, median of {args.rounds} interleaved rounds "
          f"of {args.steps} steps each on a shared machine.\n\n```\n{table}\n```\n")
    args.results.with_suffix(".md").write_text(md)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
