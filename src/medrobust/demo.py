"""``medrobust demo``: the whole story on a laptop CPU, with no model hub.

1. the MedMNIST-C test sets of three real datasets are corrupted on the fly;
2. ``medrobust-mini`` (and any other model whose weights are present) is evaluated on clean
   + every corruption x severity;
3. ``medrobust-mini`` is adapted with LoRA at two few-shot fractions, with and without
   corruption augmentation, and the adapted models are evaluated the same way;
4. a report (HTML, Markdown, PNG) is written and the headline table printed: Clean Error and
   mCE relative to the unadapted model (= 100).

Every step resumes: finished adapters and evaluation cells are kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .adaptation import AdaptConfig, adapt, load_adapted_model
from .adaptation.checkpoint import seen_image_hashes
from .corruptions import get_suite
from .data import ImageDataset, open_dataset
from .evaluation import GridSpec, run_grid
from .models import ModelAdapter, create_model
from .reporting import write_report
from .reporting.montage import corruption_montage, save_png_atomic
from .reporting.uncertainty import BootstrapSettings
from .severity import SEVERITIES

__all__ = ["DEMO_DATASETS", "DemoSettings", "run_demo"]

DEMO_DATASETS = ("breastmnist", "pneumoniamnist", "retinamnist")
BASE_MODEL = "medrobust-mini"


@dataclass(frozen=True)
class DemoSettings:
    """The demo's grid (whole test sets); ``quick()`` is the reduced one CI runs end to end."""

    fractions: tuple[float, ...] = (0.01, 0.10)
    severities: tuple[int, ...] = SEVERITIES
    test_limit: int | None = None
    epochs: int = 10
    patience: int | None = 4
    lr: float = 5e-4
    # validation loss, not balanced accuracy: medrobust-mini already fits these classes, and
    # the smoother loss lets the adapted epochs be chosen when they genuinely help
    monitor: str = "loss"
    val_limit: int | None = 256
    batch_size: int = 64
    augment_suite: str = "imagenet-c"

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(severities=(1, 3, 5), test_limit=32, epochs=1, patience=None, val_limit=32)


def _adapter_name(fraction: float, augmented: bool) -> str:
    return f"lora-{round(fraction * 100)}pct" + ("-corruption-aug" if augmented else "")


def _test_corruptions(datasets: Sequence[str]) -> list[str]:
    return sorted({c for d in datasets for c in get_suite("medmnist-c", d).corruptions})


def _write_reports(run_dir: Path, datasets: Sequence[ImageDataset], settings: DemoSettings,
                   seed: int, bootstrap: BootstrapSettings | None,
                   log: Callable[[str], None]) -> dict[str, Path]:
    """Montages, then the report with plain error and one with balanced error (MedMNIST-C's;
    RobustMedCLIP uses plain error; they can disagree), and their headlines printed."""
    montages = {}
    for dataset in datasets:
        _, images, _ = next(dataset.subset([0]).iter_batches(1))
        montage = corruption_montage(images, get_suite("medmnist-c", dataset.name), indices=[0],
                                     severities=settings.severities, seed=seed, tile=96)
        montages[f"{dataset.name} (test image 0)"] = save_png_atomic(
            montage, run_dir / "montages" / f"{dataset.name}.png")
    paths = write_report(run_dir, baseline=BASE_MODEL, montage_images=montages,
                         bootstrap=bootstrap)
    balanced = write_report(run_dir, run_dir / "report-balanced", baseline=BASE_MODEL,
                            error_type="balanced_error", montage_images=montages,
                            bootstrap=bootstrap)
    for report in (paths, balanced):
        log("")
        log(report["headline"].read_text().strip())
    log("")
    log(f"report: {paths['html']}  (Markdown: {paths['markdown']}; summary: {paths['summary']})")
    log(f"the same with balanced error: {balanced['html']}")
    return paths


def run_demo(
    out_dir: str | Path = "runs/demo",
    *,
    data_root: str | Path | None = None,
    extra_models: Sequence[str] = (),
    settings: DemoSettings | None = None,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
    weights: Mapping[str, str | Path] | None = None,
    bootstrap: BootstrapSettings | None = None,
) -> dict[str, Path]:
    """Run the demo into ``out_dir``; returns the report's paths. ``weights`` maps extra
    models to local weight files (a model given weights must load; others are skipped with a
    note when their weights are absent)."""
    settings = settings or DemoSettings()
    out = Path(out_dir)
    started = time.perf_counter()
    datasets = [open_dataset(d, split="test", root=data_root) for d in DEMO_DATASETS]
    log("[1/4] data: " + ", ".join(f"{d.name} ({len(d)} test images, {d.modality})" for d in datasets))

    models: list[str | ModelAdapter] = [BASE_MODEL]
    weights = dict(weights or {})
    for name in extra_models:
        if name in weights:
            models.append(create_model(name, device=device, weights=weights[name]))
            continue
        try:
            models.append(create_model(name, device=device))
        except Exception as exc:  # weights absent: the demo goes on without that model
            log(f"      skipping {name}: {str(exc).splitlines()[0]}")
    # adapt() leaves out the whole family of every evaluated corruption (corruptions.families)
    augment_exclude = _test_corruptions(DEMO_DATASETS)
    adapters = []
    for fraction in settings.fractions:
        for augmented in (False, True):
            name = _adapter_name(fraction, augmented)
            folder = out / "adapters" / name
            log(f"[2/4] adapting {BASE_MODEL}: {name}")
            config = AdaptConfig(
                fewshot=fraction, augment_suite=settings.augment_suite if augmented else None,
                exclude_corruptions=augment_exclude if augmented else (),
                epochs=settings.epochs, patience=settings.patience, lr=settings.lr,
                monitor=settings.monitor, val_limit=settings.val_limit,
                batch_size=settings.batch_size, seed=seed, label=name,
            )
            adapt(BASE_MODEL, list(DEMO_DATASETS), config, out_dir=folder, data_root=data_root,
                  device=device, progress=progress, log=lambda _msg: None)
            adapters.append(folder)

    seen = {}
    for folder in adapters:
        model = load_adapted_model(folder, device)
        seen[model.name] = seen_image_hashes(folder)
        models.append(model)
    run_dir = out / "run"
    spec = GridSpec(models=models, datasets=datasets, suite="medmnist-c",
                    severities=settings.severities, seed=seed, device=device,
                    limit=settings.test_limit, batch_size=128,
                    # MedMNIST splits share a few identical images (breastmnist: one test
                    # image is also in train): evaluate, and let the report flag such rows
                    seen_images=seen, allow_overlap=True)
    log(f"[3/4] evaluating {len(models)} models on clean + MedMNIST-C "
        f"(severities {','.join(map(str, settings.severities))})")
    run_grid(spec, run_dir, progress=progress)

    log("[4/4] writing the report")
    paths = _write_reports(run_dir, datasets, settings, seed, bootstrap, log)
    log(f"demo finished in {time.perf_counter() - started:.0f} s")
    return paths
