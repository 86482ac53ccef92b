"""Throughput of a LoRA training step against the bare forward + backward of the same model.

For each configuration the same LoRA-wrapped model and the same batch are timed two ways,
interleaved in rounds (median of the rounds, so a noisy shared machine hits both alike):

- ``bare``: forward under the same autocast on already preprocessed pixels, the same loss
  (cross-entropy of ``logit_scale x cosine`` against fixed prototypes), backward, grads cleared;
- ``train step``: ``LoraTrainer.train_step`` as ``adapt`` runs it: uint8 images as ``adapt``
  stages them (28 px MedMNIST images resized once to the suite's 224 px, as ``medrobust eval``
  sees them, kept on the GPU), the model's own preprocessing, forward under autocast, loss,
  backward, AdamW step and the cosine schedule.

The ratio (train-step images/s over bare images/s) is the cost of the training machinery;
the target is >= 0.85. Configurations: small models on CPU (always) and ViT-B/16 with LoRA
r = 16 in bf16 (BiomedCLIP's timm ViT and CLIP's open_clip ViT) when a GPU is present.
Weights are random (same architecture and cost as the published ones; nothing is downloaded).

Run: ``python benchmarks/adapt_speed.py [--quick] [--device cpu|cuda|auto] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from _common import format_table

HEADERS = ("device", "model", "lora", "batch", "input", "bare img/s", "train img/s", "ratio")
TARGET = 0.85


# The tiny CLIP ViT's architecture at 224 px (patch 16: 196 tokens), a small model for CPU.
SMALL_224 = {
    "architecture": {"model_cfg": {"vision_cfg": {"image_size": 224, "patch_size": 16}}},
    "preprocess": {"size": 224},
}


@dataclass(frozen=True)
class Config:
    device: str
    model: str
    label: str
    tiny: bool
    batch: int
    rank: int
    resize_to: int | None
    amp: bool
    override: dict | None = None


def _configs(device: str, quick: bool) -> list[Config]:
    cpu = [
        Config("cpu", "clip-vit-b16", "open_clip ViT tiny 32px", True, 64, 8, None, False),
        Config("cpu", "biomedclip", "timm ViT tiny 32px", True, 64, 8, None, False),
        Config("cpu", "clip-vit-b16", "open_clip ViT small 224px", True, 16, 8, 224, False,
               SMALL_224),
    ]
    gpu = [
        Config("cuda", "biomedclip", "BiomedCLIP ViT-B/16 (timm)", False, 128, 16, 224, True),
        Config("cuda", "clip-vit-b16", "CLIP ViT-B/16 (open_clip)", False, 128, 16, 224, True),
    ]
    chosen = {"cpu": cpu, "cuda": gpu, "auto": cpu + (gpu if torch.cuda.is_available() else [])}
    configs = chosen[device]
    return configs[:1] + configs[-1:] if quick and len(configs) > 2 else configs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], steps: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return time.perf_counter() - start


def measure(cfg: Config, steps: int, rounds: int, warmup: int) -> dict[str, Any]:
    """Images/s of the bare step and of the training step for one configuration."""
    from medrobust.adaptation import LoraSettings, LoraTrainer, apply_lora
    from medrobust.corruptions import prepare_images
    from medrobust.models import create_model

    device = torch.device(cfg.device)
    model = create_model(cfg.model, pretrained=False, tiny=cfg.tiny, device=device,
                         config_override=cfg.override)
    apply_lora(model, LoraSettings(rank=cfg.rank))
    g = torch.Generator().manual_seed(0)
    head = F.normalize(torch.randn(8, _embedding_dim(model), generator=g), dim=-1)
    amp = torch.bfloat16 if cfg.amp else None
    trainer = LoraTrainer(model, [head], lr=1e-4, weight_decay=1e-4, total_steps=10**6,
                          warmup_steps=0, amp_dtype=amp)
    images = torch.randint(0, 256, (cfg.batch, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 8, (cfg.batch,), generator=g)
    if cfg.resize_to is not None:  # adapt resizes the few-shot sample once, up front
        images = prepare_images(images, cfg.resize_to)
    if device.type == "cuda":  # and keeps it on the accelerator
        images, labels = images.to(device), labels.to(device)
    with torch.no_grad():
        pixels = model.preprocess(images.to(device))
    target, scale, weights = labels.to(device), model.logit_scale, trainer.heads[0]
    params = trainer.params

    def bare() -> None:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            features = model.encode_image(pixels)
        logits = scale * F.normalize(features.float(), dim=-1) @ weights.T
        F.cross_entropy(logits, target).backward()
        for p in params:
            p.grad = None

    def train() -> None:
        trainer.train_step(images, labels, 0)

    model.eval()
    _timed(bare, warmup, device)
    _timed(train, warmup, device)
    bare_s, train_s = [], []
    for _ in range(rounds):
        bare_s.append(_timed(bare, steps, device))
        train_s.append(_timed(train, steps, device))
    bare_ips = steps * cfg.batch / statistics.median(bare_s)
    train_ips = steps * cfg.batch / statistics.median(train_s)
    return {
        **cfg.__dict__,
        "bare_images_per_s": bare_ips,
        "train_images_per_s": train_ips,
        "ratio": train_ips / bare_ips,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
    }


def _embedding_dim(model: Any) -> int:
    size = model.preprocess.size
    with torch.no_grad():
        return int(model.encode_image(torch.zeros(1, 3, size, size, device=model.device)).shape[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (shared machines: 1)")
    parser.add_argument("--quick", action="store_true", help="fewer configurations and steps")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU available")
    steps, rounds = (max(2, args.steps // 2), 3) if args.quick else (args.steps, args.rounds)
    results, rows = [], []
    for cfg in _configs(args.device, args.quick):
        r = measure(cfg, steps, rounds, args.warmup)
        results.append(r)
        size = f"{cfg.resize_to} (from 28)" if cfg.resize_to else "28"
        lora = f"r{cfg.rank}" + (" bf16" if cfg.amp else " fp32")
        name = cfg.label
        rows.append((r["device_name"], name, lora, cfg.batch, size, r["bare_images_per_s"],
                     r["train_images_per_s"], r["ratio"]))
        print(f"measured {name} on {cfg.device}: ratio {r['ratio']:.3f}", file=sys.stderr)
    print(format_table(HEADERS, rows))
    worst = min(r["ratio"] for r in results)
    print(f"\nworst ratio {worst:.3f} (target >= {TARGET})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
