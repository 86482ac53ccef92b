"""Bare forward speed of one model with plain kernels, fused kernels and fused + torch.compile.

Each variant is a fresh build of the same model (same seed or weights) prepared by
``medrobust.models.kernels.prepare_for_inference``; its zero-shot probabilities on one
preprocessed batch (random pixels, seeded) are timed the way ``eval_speed.py`` times the bare
side. Variants are alternated ``--repeats`` times (median, min, max img/s, and the speed-up over
the first variant within each round, which a drifting machine load affects least); each is checked
against plain on the batch: top-1 agreement and the largest logit difference. Usage::

    python benchmarks/kernel_speed.py --model medrobust-mini --pretrained --threads 1
    python benchmarks/kernel_speed.py --model clip-vit-b16 --device cuda --precision bf16 \\
        --batch-size 512 --json benchmarks/results/kernel_speed_cuda.json   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from eval_speed import bare_side
from medrobust.models import ZeroShotClassifier, create_model
from medrobust.models.kernels import EngineSettings, prepare_for_inference
from medrobust.models.zeroshot import PRECISIONS

VARIANTS = {
    "plain": EngineSettings("plain"),
    "fused": EngineSettings("fused"),
    "compiled": EngineSettings("fused", compile=True),
}


def build(args: argparse.Namespace, variant: str) -> tuple[ZeroShotClassifier, dict[str, Any]]:
    """A fresh model prepared as ``variant``, its classifier and what preparing it did."""
    model = create_model(args.model, pretrained=args.pretrained, tiny=args.tiny, device=args.device)
    start = time.perf_counter()
    record = prepare_for_inference(model, VARIANTS[variant], batch_size=args.batch_size,
                                   autocast_dtype=PRECISIONS[args.precision])
    prepared = {**record.to_dict(), "prepare_seconds": round(time.perf_counter() - start, 1)}
    names = [f"class {i}" for i in range(args.classes)]
    return ZeroShotClassifier(model, names, precision=args.precision), prepared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="clip-vit-b16")
    parser.add_argument("--tiny", action="store_true", help="the tiny test config instead of full size")
    parser.add_argument("--pretrained", action="store_true", help="load the model's weights; default random")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed batches per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="alternated rounds (spread)")
    parser.add_argument("--classes", type=int, default=10, help="zero-shot classes (random names)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    built = {v: build(args, v) for v in variants}
    size = built[variants[0]][0].model.preprocess.size
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn((args.batch_size, 3, size, size), generator=generator).to(args.device)
    rates: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.repeats):
        for v in variants:
            rates[v].append(bare_side(built[v][0], pixels, args.steps)["images_per_s"])
    with torch.inference_mode():
        logits = {v: built[v][0].logits(pixels).float().cpu() for v in variants}
    reference = logits[variants[0]]
    result: dict[str, Any] = {
        "model": args.model + (" (tiny)" if args.tiny else ""),
        "device": str(torch.device(args.device)), "precision": args.precision,
        "threads": torch.get_num_threads(), "batch_size": args.batch_size,
        "torch": torch.__version__, "load_average_1min": round(os.getloadavg()[0], 2),
        "variants": {},
    }
    for v in variants:
        r = sorted(rates[v])
        paired = sorted(a / b for a, b in zip(rates[v], rates[variants[0]], strict=True))
        result["variants"][v] = {
            **built[v][1],
            "images_per_s_median": round(statistics.median(r), 1),
            "images_per_s_min": round(r[0], 1), "images_per_s_max": round(r[-1], 1),
            f"speedup_vs_{variants[0]}_median": round(statistics.median(paired), 3),
            f"speedup_vs_{variants[0]}_min": round(paired[0], 3),
            f"speedup_vs_{variants[0]}_max": round(paired[-1], 3),
            f"top1_agreement_with_{variants[0]}": float(
                (logits[v].argmax(1) == reference.argmax(1)).float().mean()),
            f"max_abs_logit_diff_from_{variants[0]}": float((logits[v] - reference).abs().max()),
        }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
