"""The ``medrobust`` command line: a thin layer over the library."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from medrobust._errors import user_message
from medrobust.runtime import KERNELS, check_device, keep_freed_memory
from medrobust.severity import SEVERITIES, parse_severities

if TYPE_CHECKING:
    from medrobust.adaptation import AdaptConfig, PretrainConfig

__all__ = ["main"]

C = TypeVar("C")


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _ratios(text: str) -> tuple[float, ...]:
    """Comma-separated train,val,test ratios, e.g. 0.6,0.2,0.2."""
    try:
        return tuple(float(v) for v in _names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"give ratios such as 0.6,0.2,0.2; got {text!r}") from None


def _seeds(text: str) -> list[int]:
    """Comma-separated distinct integer seeds, e.g. 0,1,2."""
    try:
        seeds = [int(v) for v in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers such as 0,1,2; got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"give distinct seeds such as 0,1,2; got {text!r}")
    return seeds


def _add_dataset_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="MedMNIST flag (e.g. breastmnist), a .npz file or an image folder")
    p.add_argument("--split", default="test", help="dataset split (default: test)")
    p.add_argument("--size", type=int, default=28, help="MedMNIST file size to read: 28, 64, 128 or 224")
    p.add_argument("--data-root", help="data folder (default: $MEDROBUST_DATA, else the user cache)")
    p.add_argument("--suite", default="medmnist-c",
                   help="medmnist-c (of the dataset, or of its --modality; as published), "
                        "medmnist-c-fixed (its StainDeposit/BlackCorner quirks corrected), "
                        "medmnist-c/<flag> (a MedMNIST dataset's set on any data), imagenet-c, "
                        "medimeta-c, or a .toml/.yaml file")
    p.add_argument("--corruptions", type=_names, help="comma-separated subset of the suite")
    p.add_argument("--severities", type=parse_severities, default=SEVERITIES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--native-size", action="store_true",
                   help="keep the native image size (size-dependent parameters are scaled) "
                        "instead of resizing to the suite's 224 px")
    _add_data_options(p)


def _add_data_options(p: argparse.ArgumentParser) -> None:
    """What a user says about their data: modality, class names, grey, squaring, slices."""
    g = p.add_argument_group("describing your data (image folders, DICOM, NIfTI, .npz)")
    g.add_argument("--modality",
                   help="x-ray, ultrasound, ct, mri, oct, fundus, dermatoscopy, pathology, "
                        "blood-smear or microscopy: used in prompts, and picks the default suite "
                        "(that modality's MedMNIST-C corruptions)")
    g.add_argument("--class-names", type=_names,
                   help="comma-separated class names in label order (image folders: in the "
                        "sorted folder order; default: the folder names)")
    g.add_argument("--grey", action="store_true",
                   help="convert colour images to one channel before corrupting (grey images "
                        "stored as RGB, e.g. ultrasound or X-ray PNGs)")
    g.add_argument("--resize", dest="resize_mode", default="stretch",
                   help="how non-square images become square: stretch (default: the aspect "
                        "ratio is distorted), pad (centred on black) or crop (centred square)")
    g.add_argument("--slice-axis", type=int, default=2,
                   help="NIfTI volumes: slice along axis 0 (sagittal), 1 (coronal) or 2 (axial, "
                        "default) of the RAS+ volume; multi-frame DICOM: its frames")
    g.add_argument("--slices", default="middle",
                   help="middle (default: one slice per volume, index n // 2) or all")


def _data_options(args: argparse.Namespace):
    from .data import DataOptions
    from .data.readers import Slicing

    return DataOptions(
        grey=args.grey, resize=args.resize_mode, slicing=Slicing(args.slice_axis, args.slices),
        class_names=None if args.class_names is None else tuple(args.class_names),
        modality=args.modality,
    )


def _open(args: argparse.Namespace):
    from .data import open_dataset

    return open_dataset(args.dataset, split=args.split, size=args.size, root=args.data_root,
                        options=_data_options(args))


def _suite_for(args: argparse.Namespace, dataset):
    from .corruptions import get_suite

    return get_suite(args.suite, dataset.name, dataset.modality).select(args.corruptions)


def cmd_corrupt(args: argparse.Namespace) -> int:
    from .corruptions.generate import GenerateConfig, generate_benchmark

    dataset = _open(args)
    suite = _suite_for(args, dataset)
    config = _config(GenerateConfig, args, resize=not args.native_size)
    manifest = generate_benchmark(dataset, suite, args.out, config, device=args.device,
                                  progress=not args.quiet)
    print(f"wrote {dataset.name} ({dataset.split}, {len(dataset)} images) x {len(suite.corruptions)} "
          f"corruptions x {len(args.severities)} severities; manifest: {manifest}")
    return 0


def cmd_corruptions(args: argparse.Namespace) -> int:
    from .corruptions import get_suite, list_functions
    from .corruptions.suites import medmnist_c_datasets

    if args.suite:
        suites = [get_suite(args.suite, args.dataset)]
    else:
        suites = [get_suite("imagenet-c"), get_suite("medimeta-c")]
        suites += [get_suite("medmnist-c", d) for d in medmnist_c_datasets()]
    if args.json:
        print(json.dumps([s.to_dict() for s in suites], indent=2))
        return 0
    for suite in suites:
        title = suite.name + (f" / {suite.dataset}" if suite.dataset else "")
        print(f"{title}: {len(suite.corruptions)} corruptions at {suite.reference_size} px")
        for name, entry in suite.entries.items():
            params = ", ".join(str(p) for p in entry.params)
            flag = "" if entry.benchmark else " (held out)"
            print(f"  {name:<18} {entry.function:<22} {params}{flag}")
    if not args.suite:
        print(f"functions: {', '.join(list_functions())}")
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from .reporting.montage import corruption_montage, save_png_atomic

    dataset = _open(args)
    suite = _suite_for(args, dataset)
    if not 1 <= args.samples <= len(dataset):
        raise ValueError(f"--samples must be in 1..{len(dataset)}")
    sample = dataset.subset(list(range(args.start, args.start + args.samples)))
    indices, images, _ = next(sample.iter_batches(args.samples))
    montage = corruption_montage(
        images, suite, indices=indices.tolist(), severities=args.severities, seed=args.seed,
        resize=not args.native_size,
    )
    path = save_png_atomic(montage, args.out)
    print(f"wrote {path} ({montage.width}x{montage.height})")
    return 0


def _weights(args: argparse.Namespace) -> dict[str, str]:
    """``--weights MODEL=PATH`` (repeatable) as {model: path}; a bare ``PATH`` belongs to the
    one ``--model`` of the command."""
    models = args.model if isinstance(args.model, list) else [args.model] if args.model else []
    chosen: dict[str, str] = {}
    for item in args.weights or []:
        name, sep, path = item.partition("=")
        if not sep or (name not in models and Path(item).exists()):
            if len(models) != 1:
                raise ValueError(f"--weights {item}: with several --model options (or none), "
                                 "write --weights MODEL=PATH")
            name, path = models[0], item
        if name not in models:
            raise ValueError(f"--weights {item}: there is no --model {name} in this command "
                             f"(models: {', '.join(models) or 'none'})")
        chosen[name] = path
    return chosen


def _add_weights_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", action="append", metavar="MODEL=PATH",
                   help="use a local copy of a model's weights (a file or folder) instead of "
                        "downloading them; repeatable; a bare PATH if there is one --model")


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation.merge import merge_when_done
    from .evaluation.runner import GridSpec, run_grid
    from .evaluation.sharding import parse_shard, shard_from_env
    from .models import create_model

    if not args.model and not args.adapter:
        raise ValueError("give at least one --model or --adapter")
    shard = parse_shard(args.shard) if args.shard else shard_from_env()
    device = shard.device(args.device) if shard else args.device
    weights = _weights(args)
    models: list = [
        create_model(m, device=device, weights=weights[m]) if m in weights else m
        for m in args.model or []
    ]
    seen: dict[str, frozenset[str]] = {}
    parts: dict[str, frozenset[int]] = {}
    if args.adapter:
        from .adaptation import load_adapted_model
        from .adaptation.checkpoint import seen_image_hashes, test_parts

        for folder in args.adapter:
            model = load_adapted_model(folder, device, merge=args.merge)
            seen[model.name] = seen_image_hashes(folder)
            models.append(model)
            for source, part in test_parts(folder).items():  # several adapters: their common part
                parts[source] = parts[source] & part if source in parts else part
    spec = _config(
        GridSpec, args, models=models, datasets=args.dataset, device=device, seen_images=seen,
        test_parts=parts,
        benchmark_dir=Path(args.benchmark_dir) if args.benchmark_dir else None,
        data_root=Path(args.data_root) if args.data_root else None,
        resize=not args.native_size, pretrained=not args.random_weights,
        data_options=_data_options(args),
    )
    summary = run_grid(spec, args.run_dir, progress=not args.quiet, shard=shard, wait=args.wait,
                       claim_timeout=args.claim_timeout)
    store_dir = shard.store_dir(args.run_dir) if shard else Path(args.run_dir)
    where = f"shard {shard.index}/{shard.count}: " if shard else ""
    print(f"{where}{summary.computed} cells computed, {summary.skipped} already done; "
          f"{summary.images_per_second:.1f} images/s; results in {store_dir / 'results.sqlite'}")
    if shard is not None and shard.launcher == "torchrun":
        store_dir = Path(args.run_dir)
        merged = merge_when_done(args.run_dir, shard)  # rank 0 merges, the others wait for it
        if merged is not None:
            print(f"{merged.describe()}; results in {store_dir / 'results.sqlite'}")
    elif shard is not None:
        print(f"when every shard is done: medrobust merge {args.run_dir}")
    if args.export:
        from .evaluation.store import ResultsStore

        with ResultsStore(store_dir) as store:
            print(f"exported {store.export(args.export)}")
    return _completeness(summary, where)


def _completeness(summary: Any, where: str = "") -> int:
    """Say whether the grid is complete; exit status 1 (naming the missing cells) if not."""
    done = summary.total - len(summary.missing)
    if summary.missing:
        print(f"{where}incomplete: {done} of {summary.total} cells; missing "
              f"{len(summary.missing)}: " + "; ".join(summary.missing), file=sys.stderr)
        print("rerun the same command to finish them", file=sys.stderr)
        return 1
    print(f"{where}complete: {done} of {summary.total} cells")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from .evaluation.merge import merge_run

    summary = merge_run(args.run_dir)
    print(f"{summary.describe()}; results in {Path(args.run_dir) / 'results.sqlite'}")
    return 0


def _config(cls: type[C], args: argparse.Namespace, **derived: Any) -> C:
    """Build the config dataclass ``cls`` from the parsed options whose ``dest`` is one of its
    fields, plus ``derived`` values (nested configs, converted options, defaults that depend
    on other options), which take the place of an option of the same name."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{**{k: v for k, v in vars(args).items() if k in names}, **derived})


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def _warmup(text: str) -> float | int:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"--warmup must be >= 0, got {text}")
    return int(value) if value >= 1 else value


def _patience(text: str) -> int | None:
    """``--patience 0`` turns early stopping off (``patience=None``)."""
    return int(text) or None


def _targets(text: str) -> str | list[str]:
    return _names(text) if "," in text else text


def adapt_config(args: argparse.Namespace) -> AdaptConfig:
    """The ``AdaptConfig`` (with its ``LoraSettings`` and ``PromptSettings``) of parsed
    ``adapt`` options."""
    from .adaptation import AdaptConfig, LoraSettings, PromptSettings

    return _config(AdaptConfig, args, lora=_config(LoraSettings, args),
                   data_options=_data_options(args), prompt=_config(PromptSettings, args))


def pretrain_config(args: argparse.Namespace) -> PretrainConfig:
    """The ``PretrainConfig`` of parsed ``pretrain`` options."""
    from .adaptation import PretrainConfig

    return _config(PretrainConfig, args, datasets=tuple(args.dataset or PretrainConfig.datasets))


def cmd_adapt(args: argparse.Namespace) -> int:
    from .adaptation import adapt, convert_robustmedclip

    model_kwargs: dict = {"pretrained": not args.random_weights}
    weights = _weights(args)
    if weights:
        model_kwargs["weights"] = next(iter(weights.values()))
    if args.import_robustmedclip:
        out = convert_robustmedclip(
            args.import_robustmedclip, args.out, base_model=args.model or "biomedclip",
            model_kwargs=model_kwargs,
            blocks=[int(b) for b in _names(args.blocks)] if args.blocks else None,
        )
        print(f"imported RobustMedCLIP LoRA weights into {out}")
        return 0
    if not args.model or not args.dataset:
        raise ValueError("adapt needs --model and at least one --dataset")
    if args.seeds:
        folders = []
        for seed in args.seeds:
            # one adapter per seed: a fresh few-shot draw and training; the report groups them
            one = argparse.Namespace(**{**vars(args), "seeds": None, "seed": seed,
                                        "out": str(Path(args.out) / f"seed-{seed}"),
                                        "label": f"{args.label or Path(args.out).name}-seed-{seed}"})
            cmd_adapt(one)
            folders.append(one.out)
        print(f"{len(folders)} adapters (seeds {', '.join(map(str, args.seeds))}): evaluate them "
              f"together with medrobust eval {' '.join(f'--adapter {f}' for f in folders)} ...")
        return 0
    out = adapt(args.model, args.dataset, adapt_config(args), out_dir=args.out,
                data_root=args.data_root,
                device=args.device, model_kwargs=model_kwargs, resume=not args.no_resume,
                progress=not args.quiet)
    from .adaptation import read_adapter_config

    unchanged = read_adapter_config(out).get("unchanged")
    if unchanged:
        print(f"warning: adaptation did nothing: {unchanged}; the adapter's results will equal "
              "the base model's (try more shots, epochs or another learning rate)", file=sys.stderr)
    print(f"evaluate it with: medrobust eval --adapter {out} --dataset ... --run-dir ...")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoSettings, run_demo
    from .reporting.uncertainty import BootstrapSettings

    settings = DemoSettings.quick() if args.quick else DemoSettings()
    out = args.out or ("runs/demo-quick" if args.quick else "runs/demo")
    bootstrap = BootstrapSettings(n_resamples=args.bootstrap, seed=args.bootstrap_seed,
                                  min_degradation_images=args.min_degradation_images)
    run_demo(out, data_root=args.data_root, extra_models=args.model or (), settings=settings,
             device=args.device, seed=args.seed, progress=not args.quiet, weights=_weights(args),
             bootstrap=bootstrap)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .adaptation import pretrain

    result = pretrain(args.out, pretrain_config(args), data_root=args.data_root,
                      device=args.device)
    print(f"best epoch {result.best_epoch} (val mean balanced accuracy {result.best_score:.3f}); "
          f"weights {result.weights_file}; evaluate with --model {result.out_dir}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import list_models, model_spec

    for name in list_models():
        spec = model_spec(name)
        weights = spec.get("weights", {})
        source = weights.get("repo") or weights.get("url") or weights.get("filename") or ""
        print(f"{name:<22} {spec.get('display_name', ''):<44} {source}")
    print("also: open_clip:ARCH/TAG, hf-hub:REPO (open_clip format), hf:REPO (transformers), a folder")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .reporting import write_report
    from .reporting.uncertainty import BootstrapSettings

    settings = BootstrapSettings(n_resamples=args.bootstrap, seed=args.bootstrap_seed,
                                 min_degradation_images=args.min_degradation_images)
    error_type = {"plain": "error", "balanced": "balanced_error"}.get(args.error, args.error)
    paths = write_report(args.run_dir, out_dir=args.out, baseline=args.baseline,
                         error_type=error_type, bootstrap=settings)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def _add_bootstrap_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                   help="bootstrap resamples of the test images for 95%% intervals (0: off)")
    p.add_argument("--bootstrap-seed", type=int, default=0)
    p.add_argument("--min-degradation-images", type=float, default=5.0, metavar="K",
                   help="leave a corruption out of the relative mCE when the baseline degrades "
                        "by fewer than K test images' worth (default 5)")


Subparsers = Any  # argparse's _SubParsersAction (private)


def _add_corrupt(sub: Subparsers) -> None:
    p = sub.add_parser("corrupt", help="write a corrupted benchmark (clean + corruptions x severities)")
    _add_dataset_options(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--layout", choices=("medimeta-c", "medmnist-c"), default="medimeta-c")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--compress", action="store_true", help="deflate the .npz files (smaller, slower)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_corrupt)


def _add_corruptions(sub: Subparsers) -> None:
    p = sub.add_parser("corruptions", help="list suites, corruptions and their parameters")
    p.add_argument("--suite", help="one suite (default: all)")
    p.add_argument("--dataset", help="MedMNIST flag for the medmnist-c suite")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_corruptions)


def _add_preview(sub: Subparsers) -> None:
    p = sub.add_parser("preview", help="montage of sample images: corruptions x severities")
    _add_dataset_options(p)
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--samples", type=int, default=1, help="images per corruption (default 1)")
    p.add_argument("--start", type=int, default=0, help="index of the first sample")
    p.set_defaults(func=cmd_preview)


def _add_eval(sub: Subparsers) -> None:
    p = sub.add_parser("eval", help="zero-shot evaluation grid: models x datasets x corruptions")
    p.add_argument("--model", action="append",
                   help="model name (repeatable); see `medrobust models`")
    p.add_argument("--adapter", action="append",
                   help="a LoRA adapter folder from `medrobust adapt` (repeatable)")
    p.add_argument("--merge", action="store_true", help="merge adapters into the base weights")
    _add_weights_option(p)
    p.add_argument("--allow-overlap", action="store_true",
                   help="evaluate an adapter even on test images it saw in training or "
                        "validation (refused otherwise; the report flags every such row)")
    p.add_argument("--dataset", action="append", required=True, help="dataset (repeatable)")
    p.add_argument("--split", default="test")
    p.add_argument("--size", type=int, default=28, help="MedMNIST file size to read")
    p.add_argument("--data-root")
    p.add_argument("--suite", default="medmnist-c",
                   help="as for corrupt: medmnist-c (of each dataset or its --modality), "
                        "medmnist-c/<flag>, imagenet-c, medimeta-c, or a .toml/.yaml file")
    p.add_argument("--corruptions", type=_names)
    p.add_argument("--severities", type=parse_severities, default=SEVERITIES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--templates", type=_names, help="template sets or literal templates")
    p.add_argument("--benchmark-dir", help="read a generated benchmark instead of corrupting on the fly")
    p.add_argument("--layout", choices=("medimeta-c", "medmnist-c"), default="medimeta-c")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    p.add_argument("--kernels", choices=KERNELS, default="auto",
                   help="image-tower kernels: fused (scaled-dot-product attention, one-kernel "
                        "QuickGELU), plain (as built) or auto (fused on CUDA or with bf16/fp16; "
                        "plain for fp32 on the CPU, already fused there by torch); recorded "
                        "with the run")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the image towers (compiled code cached in the user cache; "
                        "falls back with a warning where compiling fails)")
    p.add_argument("--native-size", action="store_true")
    p.add_argument("--random-weights", action="store_true",
                   help="build the architecture with random weights (offline smoke tests)")
    p.add_argument("--limit", type=int, help="only the first N images of each dataset")
    p.add_argument("--run-dir", required=True, help="run folder (results.sqlite + predictions)")
    p.add_argument("--export", help="also export all rows to this .csv or .parquet file")
    p.add_argument("--shard", metavar="I/N",
                   help="evaluate shard I of N (0-based) of the grid's cells into RUN/shards/ "
                        "(default under torchrun or a SLURM array: from the environment)")


    p.add_argument("--wait", type=_seconds,
                   help="wait at most this many seconds for cells another live process is "
                        "computing (default: until they are done; 0: do not wait)")
    p.add_argument("--claim-timeout", type=_seconds, default=300.0,
                   help="seconds without a heartbeat after which another host's claim on a "
                        "cell is stale and taken over (default 300; same-host claims are "
                        "taken over as soon as their process is gone)")
    p.add_argument("--quiet", action="store_true")
    _add_data_options(p)
    p.set_defaults(func=cmd_eval)


def _add_merge(sub: Subparsers) -> None:
    p = sub.add_parser("merge", help="combine the shard stores of a sharded eval into RUN/results.sqlite")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_merge)


def _add_report(sub: Subparsers) -> None:
    p = sub.add_parser("report", help="Markdown + HTML report of an evaluation run")
    p.add_argument("run_dir")
    p.add_argument("--out", help="output folder (default RUN/report)")
    p.add_argument("--baseline", default="clip-vit-b16", help="model whose errors are 100")
    p.add_argument("--error", "--error-type", dest="error", default="plain",
                   choices=("plain", "balanced", "error", "balanced_error"),
                   help="error of CE/mCE: plain (1 - accuracy, default) or balanced (1 - balanced "
                        "accuracy, as MedMNIST-C reports it)")
    _add_bootstrap_options(p)
    p.set_defaults(func=cmd_report)


def _add_adapt(sub: Subparsers) -> None:
    """``adapt``: the run's options, then one argument group per config (each option's
    ``dest`` is the config field it sets)."""
    p = sub.add_parser("adapt", help="few-shot adaptation: LoRA on the vision encoder and/or "
                       "a learned prompt context (CoOp)")
    p.add_argument("--model", help="base model name (default biomedclip for --import-robustmedclip)")
    p.add_argument("--dataset", action="append", help="training dataset (repeatable)")
    p.add_argument("--out", required=True, help="adapter folder to write")
    _add_weights_option(p)
    p.add_argument("--data-root")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seeds", type=_seeds,
                   help="comma-separated seeds: one adapter per seed (its own few-shot draw and "
                        "training) in OUT/seed-N; the report shows their mean and spread")
    p.add_argument("--random-weights", action="store_true")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--import-robustmedclip", metavar="LORA_FILE",
                   help="convert an official RobustMedCLIP lora_weights.safetensors instead of training")
    p.add_argument("--blocks", help="block indices of the imported file (default: all)")
    _add_adapt_data(p.add_argument_group("data (AdaptConfig)"))
    lora = p.add_argument_group("LoRA (LoraSettings)")
    lora.add_argument("--rank", type=int, default=16)
    lora.add_argument("--alpha", type=float, help="LoRA alpha (default: the rank)")
    lora.add_argument("--dropout", type=float, default=0.0)
    lora.add_argument("--targets", type=_targets, help="preset, regex, or comma-separated module names")
    _add_adapt_prompt(p.add_argument_group("prompt context (PromptSettings)"))
    _add_adapt_optimisation(p.add_argument_group("optimisation (AdaptConfig)"))
    _add_data_options(p)
    p.set_defaults(func=cmd_adapt)


def _add_adapt_data(g: argparse._ArgumentGroup) -> None:
    shots = g.add_mutually_exclusive_group()
    shots.add_argument("--fewshot", type=float, help="fraction of the split per class, e.g. 0.01")
    shots.add_argument("--shots", type=int, help="images per class")
    g.add_argument("--fewshot-split", default="train", choices=("train", "val"))
    g.add_argument("--val-split", default="val")
    g.add_argument("--val-limit", type=int)
    g.add_argument("--split-ratios", type=_ratios, default=(0.6, 0.2, 0.2),
                   help="train,val,test ratios partitioning a dataset without splits (an image "
                        "folder, a split-less npz); eval of the adapter then uses its test part")
    g.add_argument("--augment-suite", help="train with random corruptions from this suite")
    g.add_argument("--exclude-corruptions", type=_names, default=(),
                   help="corruptions left out of augmentation")
    g.add_argument("--augment-p", type=float, default=0.5)
    g.add_argument("--joint-labels", action="store_true", help="one label space over all datasets")
    g.add_argument("--templates", type=_names)
    g.add_argument("--size", dest="data_size", metavar="SIZE", type=int, default=28)
    g.add_argument("--native-size", dest="resize", action="store_false")
    g.add_argument("--label", help="name of the adapter (default from its settings)")


def _add_adapt_prompt(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--method", choices=("lora", "prompt", "lora+prompt"), default="lora",
                   help="train LoRA on the vision encoder, a prompt context, or both jointly")
    g.add_argument("--prompt-context", dest="context", choices=("shared", "class"),
                   default="shared", help="one context for all classes, or one per class")
    g.add_argument("--context-tokens", dest="tokens", type=int, metavar="M",
                   help="context vectors (default: the tokens of --context-init; 4 if random)")
    g.add_argument("--context-init", dest="init", default="a photo of a",
                   help="text whose token embeddings start the context, or 'random' (N(0, 0.02))")
    g.add_argument("--class-template", default="{}.",
                   help="what follows the context for each class ({} = the class name)")


def _add_adapt_optimisation(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--epochs", type=int, default=20)
    g.add_argument("--lr", type=float, default=1e-4, help="learning rate of the LoRA weights")
    g.add_argument("--prompt-lr", type=float, default=2e-3,
                   help="learning rate of the prompt context")
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--grad-accum", type=int, default=1)
    g.add_argument("--warmup", type=_warmup, default=0.05, help="steps (>= 1) or fraction")
    g.add_argument("--patience", type=_patience, default=5, help="early stopping (0: off)")
    g.add_argument("--monitor", choices=("balanced_accuracy", "loss"), default="balanced_accuracy")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    g.add_argument("--seed", type=int, default=0)


def _add_demo(sub: Subparsers) -> None:
    p = sub.add_parser("demo", help="corrupt, evaluate, adapt and report with medrobust-mini")
    p.add_argument("--out", help="output folder (default runs/demo, or runs/demo-quick with "
                                 "--quick: the two grids never share a folder)")
    p.add_argument("--data-root")
    p.add_argument("--model", action="append", help="also evaluate this model if its weights are present")
    _add_weights_option(p)
    p.add_argument("--quick", action="store_true", help="a reduced grid (under 2 minutes)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    _add_bootstrap_options(p)
    p.set_defaults(func=cmd_demo)


def _add_pretrain(sub: Subparsers) -> None:
    p = sub.add_parser("pretrain", help="train medrobust-mini (small medical CLIP) on MedMNIST train splits")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--data-root")
    p.add_argument("--device", default="cpu")
    g = p.add_argument_group("training (PretrainConfig)")
    g.add_argument("--dataset", action="append", help="training dataset (repeatable; default: the three shipped)")
    g.add_argument("--epochs", type=int, default=30)
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--limit", type=int, help="only the first N train images per dataset (smoke tests)")
    p.set_defaults(func=cmd_pretrain)


def _add_models(sub: Subparsers) -> None:
    p = sub.add_parser("models", help="list the model registry")
    p.set_defaults(func=cmd_models)


COMMANDS = (_add_corrupt, _add_corruptions, _add_preview, _add_eval, _add_merge, _add_report,
            _add_adapt, _add_demo, _add_pretrain, _add_models)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="medrobust",
        description="Corruption benchmarks and robustness evaluation of medical vision-language models.",
    )
    parser.add_argument("--version", action="version", version=f"medrobust {__version__}")
    parser.add_argument(
        "--threads", type=int, default=0,
        help="CPU threads for torch (default: 1 on machines with <= 2 cores, where a second "
             "OpenMP thread was measured to slow the corruption kernels down; else torch's default)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def _set_threads(threads: int) -> None:
    import torch

    if threads < 0:
        raise ValueError(f"--threads must be >= 0, got {threads}")
    if threads == 0 and (os.cpu_count() or 1) <= 2:
        threads = 1
    if threads:
        torch.set_num_threads(threads)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 an incomplete evaluation grid, 2 bad
    input or a failure the user can fix). ``MEDROBUST_DEBUG=1`` adds the traceback."""
    args = build_parser().parse_args(argv)
    try:
        _set_threads(args.threads)
        keep_freed_memory()
        if getattr(args, "device", None):
            check_device(args.device)
        return args.func(args)
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except Exception as exc:
        message = user_message(exc)
        if message is None:
            raise
        if os.environ.get("MEDROBUST_DEBUG", "") not in ("", "0"):
            traceback.print_exc()
        print(f"medrobust {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished files are kept and a rerun resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
