"""Reference parity of medrobust's corruptions against medmnistc and imagecorruptions.

Real MedMNIST test images (28 px, shared/data) are upsampled to 224 px with PIL bicubic;
the same input goes to the reference (``_reference_runner.py`` in .refenv) and to ours
(``SuiteEntry.apply``) at every severity.

* Deterministic corruptions: mean absolute difference in grey levels, target <= 1.
* Stochastic corruptions: mean PSNR to the clean input, ours minus reference, target
  |gap| <= 0.5 dB (the random streams differ by design).
* Reference defects (corruptions.md) are reported as ``reference fails: <error>``; intended
  deviations from a reference defect as ``deviation``; neither counts as a failure.

Cases: the MedMNIST-C suite of every real dataset; "extras": other datasets' MedMNIST-C
parameters that those suites do not cover, on a real dataset of the same colour (e.g.
``medmnist-c/dermamnist@retinamnist``); ImageNet-C on a grey and an RGB dataset.

Run: ``python benchmarks/parity.py [--quick] [--strict]`` (see README.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from _common import (
    DEFAULT_DATA_ROOT,
    DEFAULT_REFENV,
    REAL_DATASETS,
    format_table,
    load_real_images,
    markdown_table,
    mean_abs_diff,
    medrobust_status,
    params_equal,
    psnr,
    run_reference,
    to_jsonable,
    write_results,
)

MAD_TARGET = 1.0
PSNR_GAP_TARGET = 0.5
SUITE_KINDS = ("medmnist-c", "medmnist-c-extras", "imagenet-c", "medimeta-c")
DEFAULT_IMAGENET_DATASETS = ("pneumoniamnist", "pathmnist")
# Real dataset that hosts other datasets' parameters, by colour (first one selected wins).
EXTRA_HOSTS = {"grey": ("pneumoniamnist", "breastmnist"), "rgb": ("retinamnist", "pathmnist")}
# medmnistc StainDeposit picks inks[str(max(3, severity_index))]: 24 px inks at severities 1-4,
# 32 px at 5 (corruptions.md defect 6). medrobust uses 12, 16, 24, 32, 42 px on purpose.
REFERENCE_STAIN_INK = (24, 24, 24, 24, 32)
HEADERS = ("corruption", "sev", "metric", "value", "ours", "reference", "ref ms/img", "status")


@dataclass
class Case:
    """One corruption of one suite applied to one real image set."""

    label: str  # e.g. medmnist-c/dermamnist@retinamnist
    package: str  # reference package
    suite: str  # our suite name
    param_dataset: str | None  # MedMNIST-C dataset whose parameters are used
    images: str  # real dataset providing the images
    corruption: str
    ref_params: Sequence[Any] | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)


# ------------------------------------------------------------------ case selection


def _colour_of(dataset: str, ref: dict[str, Any] | None) -> str:
    if ref is not None:
        return "rgb" if ref["rgb"][dataset] else "grey"
    from medrobust.corruptions import get_suite

    return str(get_suite("medmnist-c", dataset=dataset).metadata["colour"]).replace("gray", "grey")


def medmnist_c_tables(ref: dict[str, Any] | None) -> dict[str, dict[str, tuple[str, list]]]:
    """dataset -> corruption -> (kind, 5 params), from the reference registry if available."""
    if ref is not None:
        return {
            ds: {name: (c["class"], c["params"]) for name, c in table.items()}
            for ds, table in ref["datasets"].items()
        }
    from medrobust.corruptions import get_suite
    from medrobust.corruptions.suites import medmnist_c_datasets

    return {
        ds: {n: (e.function, list(e.params)) for n, e in get_suite("medmnist-c", ds).entries.items()}
        for ds in medmnist_c_datasets()
    }


def build_cases(
    kinds: Sequence[str],
    datasets: Sequence[str],
    imagenet_datasets: Sequence[str],
    extras_level: str,
    ref_describe: dict[str, Any] | None,
    imagenet_names: Sequence[str],
) -> list[Case]:
    """All cases to compare, in report order."""
    mm_ref = ref_describe["packages"]["medmnistc"] if ref_describe else None
    mm_ref = mm_ref if mm_ref and mm_ref.get("available") else None
    tables = medmnist_c_tables(mm_ref) if {"medmnist-c", "medmnist-c-extras"} & set(kinds) else {}
    cases: list[Case] = []
    covered: set[tuple[str, ...]] = set()
    for ds in datasets:
        colour = REAL_DATASETS[ds]
        for name, (kind, params) in tables.get(ds, {}).items():
            covered.update(_coverage_keys(colour, kind, params))
            if "medmnist-c" in kinds:
                cases.append(Case(f"medmnist-c/{ds}", "medmnistc", "medmnist-c", ds, ds, name, params))
    if "medmnist-c-extras" in kinds and extras_level != "none":
        for ds, table in tables.items():
            if ds in datasets:
                continue
            colour = _colour_of(ds, mm_ref)
            host = next((h for h in EXTRA_HOSTS[colour] if h in datasets), None)
            if host is None:
                continue
            for name, (kind, params) in table.items():
                keys = _coverage_keys(colour, kind, params)
                key = keys[0] if extras_level == "functions" else keys[1]
                if key in covered:
                    continue
                covered.update(keys)
                cases.append(
                    Case(f"medmnist-c/{ds}@{host}", "medmnistc", "medmnist-c", ds, host, name, params)
                )
    for suite in ("imagenet-c", "medimeta-c"):
        if suite not in kinds:
            continue
        names = _suite_names(suite, imagenet_names)
        for ds in imagenet_datasets:
            cases += [Case(f"{suite}@{ds}", "imagecorruptions", suite, None, ds, n) for n in names]
    return cases


def _coverage_keys(colour: str, kind: str, params: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(function-level key, parameter-level key) of a corruption on images of ``colour``."""
    return (colour, kind), (colour, kind, json.dumps(to_jsonable(params)))


def _suite_names(suite: str, fallback: Sequence[str]) -> list[str]:
    try:
        from medrobust.corruptions import get_suite

        return list(get_suite(suite).entries)
    except Exception:  # our side unavailable: the reference's names (medimeta-c: none known)
        return list(fallback) if suite == "imagenet-c" else []


# ------------------------------------------------------------------ reference side


def run_reference_side(
    cases: Sequence[Case],
    images: dict[str, np.ndarray],
    severities: Sequence[int],
    stochastic: dict[tuple[str, str, str], bool] | None,
    args: argparse.Namespace,
    workdir: Path,
) -> dict[str, tuple[dict[str, Any], Path]]:
    """Run the reference for every case label; label -> (runner report, outputs npz)."""
    results = {}
    for label in dict.fromkeys(c.label for c in cases):
        group = [c for c in cases if c.label == label]
        jobs = [
            {
                "id": f"{c.corruption}/{s}",
                "package": c.package,
                "dataset": c.param_dataset,
                "corruption": c.corruption,
                "severity": s,
                "images": c.images,
                # Only deterministic outputs are compared pixel-wise; stochastic ones by PSNR.
                "save": stochastic is not None and not stochastic[_skey(c)],
            }
            for c in group
            for s in severities
        ]
        tag = label.replace("/", "_").replace("@", "_")
        in_path, jobs_path = workdir / f"{tag}_in.npz", workdir / f"{tag}_jobs.json"
        out_path, report_path = workdir / f"{tag}_out.npz", workdir / f"{tag}_report.json"
        np.savez(in_path, **{group[0].images: images[group[0].images]})
        jobs_path.write_text(json.dumps(jobs))
        start = time.perf_counter()
        report = run_reference(
            args.refenv,
            ["apply", "--images", str(in_path), "--jobs", str(jobs_path), "--out", str(out_path),
             "--report", str(report_path), "--seed", str(args.seed)],
            threads=args.threads,
        )
        print(f"  reference {label}: {len(jobs)} jobs in {time.perf_counter() - start:.1f} s",
              flush=True)
        results[label] = (report, out_path)
    return results


def _skey(case: Case) -> tuple[str, str, str]:
    return case.suite, case.param_dataset or "", case.corruption


# ------------------------------------------------------------------ our side and comparison


def our_entries(cases: Sequence[Case]) -> tuple[dict[tuple[str, str, str], Any], dict[str, str]]:
    """Our suite entry per case key, and 'missing' errors for corruptions we do not have."""
    from medrobust.corruptions import get_suite

    entries, missing = {}, {}
    for case in cases:
        key = _skey(case)
        suite = get_suite(case.suite, dataset=case.param_dataset) if case.param_dataset else get_suite(case.suite)
        if case.corruption in suite.entries:
            entries[key] = suite.entries[case.corruption]
        else:
            missing[case.corruption] = f"not in our suite {suite.name}"
    return entries, missing


def _param_status(case: Case, entry: Any, severity: int) -> str | None:
    """None if parameters agree; 'deviation: ...' or 'param mismatch: ...' otherwise."""
    if case.ref_params is None:
        return None
    ours, ref = entry.params[severity - 1], case.ref_params[severity - 1]
    if entry.function == "stain_deposit":
        marks, ink = ours
        if not params_equal(marks, ref):
            return f"param mismatch: ours {marks} marks, reference {ref}"
        if ink != REFERENCE_STAIN_INK[severity - 1]:
            return f"deviation: ink {ink} px vs reference {REFERENCE_STAIN_INK[severity - 1]} px (defect 6)"
        return None
    if not params_equal(ours, ref):
        return f"param mismatch: ours {to_jsonable(ours)}, reference {to_jsonable(ref)}"
    return None


def compare_case(
    case: Case,
    entry: Any,
    clean: np.ndarray,
    severities: Sequence[int],
    ref_report: dict[str, Any],
    ref_outputs: Any,
    seed: int,
) -> None:
    """Fill ``case.rows`` with one row per severity."""
    from medrobust.corruptions.api import from_channels_first, to_channels_first

    tensor = to_channels_first(clean)
    for s in severities:
        job = ref_report["jobs"][f"{case.corruption}/{s}"]
        row: dict[str, Any] = {
            "corruption": case.corruption, "severity": s, "ref_ms": job.get("ms_median"),
            "ref_param": job.get("param"),
        }
        stochastic = entry.stochastic
        row["metric"] = "PSNR gap dB" if stochastic else "MAD"
        try:
            ours = from_channels_first(entry.apply(tensor, s, seed=seed, indices=range(len(clean))), clean)
        except Exception as exc:  # our bug: a failure, reported with its message
            row["status"] = f"FAIL ours fails: {type(exc).__name__}: {exc}"[:200]
            case.rows.append(row)
            continue
        if not job["ok"]:
            row["status"] = f"reference fails: {job['error']}"
        elif stochastic:
            ours_psnr, ref_psnr = float(psnr(clean, ours).mean()), float(np.mean(job["psnr"]))
            row.update(value=ours_psnr - ref_psnr, ours=ours_psnr, reference=ref_psnr)
            row["status"] = "pass" if abs(row["value"]) <= PSNR_GAP_TARGET else "FAIL"
        else:
            ref_out = ref_outputs[job_id(case, s)]
            diff = np.abs(ours.astype(np.int16) - ref_out.astype(np.int16))
            row.update(value=mean_abs_diff(ours, ref_out), ours=float(psnr(clean, ours).mean()),
                       reference=float(np.mean(job["psnr"])), max_abs=int(diff.max()))
            row["status"] = "pass" if row["value"] <= MAD_TARGET else "FAIL"
        param_status = _param_status(case, entry, s)
        if param_status is not None and not row["status"].startswith("reference fails"):
            kind = "deviation" if param_status.startswith("deviation") else "FAIL"
            row["status"] = f"{kind} ({row['status']}); {param_status}"
        case.rows.append(row)


def job_id(case: Case, severity: int) -> str:
    return f"{case.corruption}/{severity}"


def reference_only_rows(case: Case, severities: Sequence[int], report: dict[str, Any]) -> None:
    for s in severities:
        job = report["jobs"][job_id(case, s)]
        case.rows.append({
            "corruption": case.corruption, "severity": s, "metric": "ref PSNR dB",
            "reference": float(np.mean(job["psnr"])) if job["ok"] else None,
            "ref_ms": job.get("ms_median"), "ref_param": job.get("param"),
            "status": f"reference fails: {job['error']}" if not job["ok"] else "ours unavailable",
        })


# ------------------------------------------------------------------ reporting


def _row_cells(row: dict[str, Any]) -> list[Any]:
    return [row["corruption"], row["severity"], row["metric"], row.get("value"), row.get("ours"),
            row.get("reference"), row.get("ref_ms"), row["status"]]


def summarise(cases: Iterable[Case]) -> dict[str, int]:
    counts = {"pass": 0, "FAIL": 0, "deviation": 0, "reference fails": 0, "ours unavailable": 0}
    for case in cases:
        for row in case.rows:
            for key in counts:
                if row["status"].startswith(key):
                    counts[key] += 1
                    break
    return counts


def render(cases: Sequence[Case], meta: dict[str, Any], summary: dict[str, int]) -> tuple[str, str]:
    """(plain-text report for the terminal, Markdown report)."""
    text, md = [], [
        "# Reference parity of medrobust corruptions",
        "",
        f"N = {meta['n']} real test images per dataset, upsampled 28 -> 224 px (PIL bicubic); "
        f"severities {meta['severities']}; seed {meta['seed']}{' (--quick)' if meta['quick'] else ''}.",
        f"Targets: deterministic mean |ours - reference| <= {MAD_TARGET} grey level (MAD); "
        f"stochastic |mean PSNR(ours) - mean PSNR(reference)| <= {PSNR_GAP_TARGET} dB. "
        "Columns 'ours'/'reference' are mean PSNR to the clean input (dB).",
        f"Reference: {meta['reference_versions']}.",
        f"Ours: {meta['ours']}.",
        "",
        "Summary: " + ", ".join(f"{k}: {v}" for k, v in summary.items()),
    ]
    for label in dict.fromkeys(c.label for c in cases):
        rows = [_row_cells(r) for c in cases if c.label == label for r in c.rows]
        text += ["", f"== {label} ==", format_table(HEADERS, rows)]
        md += ["", f"## {label}", "", markdown_table(HEADERS, rows)]
    return "\n".join(text), "\n".join(md)


# ------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=32, help="real images per dataset (default 32)")
    parser.add_argument("--datasets", nargs="+", default=list(REAL_DATASETS), choices=list(REAL_DATASETS),
                        help="real datasets whose MedMNIST-C suites are compared")
    parser.add_argument("--imagenet-datasets", nargs="+", default=list(DEFAULT_IMAGENET_DATASETS),
                        choices=list(REAL_DATASETS), help="real datasets for the ImageNet-C suite")
    parser.add_argument("--suites", nargs="+", default=["medmnist-c", "medmnist-c-extras", "imagenet-c"],
                        choices=SUITE_KINDS)
    parser.add_argument("--extras", choices=("none", "functions", "params"), default=None,
                        help="other datasets' parameters: uncovered functions or parameter sets "
                             "(default params; functions with --quick)")
    parser.add_argument("--severities", nargs="+", type=int, default=None)
    parser.add_argument("--corruptions", nargs="+", default=None, help="only these corruption names")
    parser.add_argument("--quick", action="store_true", help="smoke run: n=8, severities 1 3 5")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any target fails")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="threads for both sides")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--refenv", type=Path, default=DEFAULT_REFENV)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "parity",
                        help="results base path: writes <out>.json and <out>.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.n = min(args.n, 8)
    args.severities = args.severities or ([1, 3, 5] if args.quick else [1, 2, 3, 4, 5])
    args.extras = args.extras or ("functions" if args.quick else "params")
    if any(not 1 <= s <= 5 for s in args.severities) or args.n < 1:
        parser.error("severities must lie in 1..5 and --n must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    ours_error = medrobust_status()
    if ours_error:
        print(f"our side unavailable ({ours_error}): reference side only", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="medrobust-parity-") as tmp:
        workdir = Path(tmp)
        try:
            describe = run_reference(args.refenv, ["describe", "--report", str(workdir / "d.json")])
        except RuntimeError as exc:
            describe = None
            print(f"reference unavailable: {exc}", file=sys.stderr)
        ic = (describe or {}).get("packages", {}).get("imagecorruptions", {})
        cases = build_cases(args.suites, args.datasets, args.imagenet_datasets, args.extras, describe,
                            ic.get("corruptions", []))
        if args.corruptions:
            cases = [c for c in cases if c.corruption in args.corruptions]
        for package in ("medmnistc", "imagecorruptions"):
            info = (describe or {}).get("packages", {}).get(package, {"error": "no reference env"})
            if not info.get("available"):
                print(f"reference {package} unavailable: {info.get('error')}", file=sys.stderr)
                cases = [c for c in cases if c.package != package]
        needed = sorted({c.images for c in cases})
        images = {ds: load_real_images(ds, args.n, args.data_root) for ds in needed}
        entries, missing = ({}, {}) if ours_error else our_entries(cases)
        stochastic = None if ours_error else {k: e.stochastic for k, e in entries.items()}
        print(f"{len(cases)} corruption cases x {len(args.severities)} severities on {needed}", flush=True)
        reference = run_reference_side(
            [c for c in cases if stochastic is None or _skey(c) in entries],
            images, args.severities, stochastic, args, workdir,
        )
        for case in cases:
            if case.label not in reference or (stochastic is not None and _skey(case) not in entries):
                case.rows = [{"corruption": case.corruption, "severity": s, "metric": "-",
                              "status": f"FAIL {missing.get(case.corruption, 'not run')}"}
                             for s in args.severities]
                continue
            report, out_path = reference[case.label]
            if ours_error:
                reference_only_rows(case, args.severities, report)
                continue
            with np.load(out_path, allow_pickle=False) as ref_outputs:
                compare_case(case, entries[_skey(case)], images[case.images], args.severities,
                             report, ref_outputs, args.seed)
    summary = summarise(cases)
    meta = {
        "n": args.n, "severities": args.severities, "seed": args.seed, "quick": args.quick,
        "threads": args.threads, "datasets": args.datasets, "suites": args.suites, "extras": args.extras,
        "ours": ours_error or "ok",
        "reference_versions": (describe or {}).get("versions", "unavailable"),
    }
    text, md = render(cases, meta, summary)
    print(text)
    payload = {"meta": meta, "summary": summary,
               "cases": [{"label": c.label, "images": c.images, "corruption": c.corruption,
                          "reference_params": c.ref_params, "rows": c.rows} for c in cases]}
    json_path, md_path = write_results(args.out, payload, md)
    print(f"\nsummary: {summary}\nwrote {json_path} and {md_path}")
    return 1 if args.strict and (summary["FAIL"] or ours_error) else 0


if __name__ == "__main__":
    sys.exit(main())
