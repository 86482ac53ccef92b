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
    format_versions,
    load_average,
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
HEADERS = ("corruption", "sev", "metric", "value", "±2SE", "ours", "reference", "ref ms/img", "status")
STATUSES = ("pass", "FAIL", "inconclusive", "deviation", "reference fails", "ours unavailable")


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
    entry: Any = None  # our SuiteEntry
    plan: dict[int, tuple[int, str | None]] = field(default_factory=dict)  # sev -> (ref sev, note)
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


def _suite_names(suite: str, reference_names: Sequence[str]) -> list[str]:
    """Our suite's corruption names, plus (ImageNet-C) any the reference has and we lack."""
    try:
        from medrobust.corruptions import get_suite

        ours = list(get_suite(suite).entries)
    except Exception:  # our side unavailable: the reference's names only
        ours = []
    return list(dict.fromkeys([*ours, *(reference_names if suite == "imagenet-c" else [])]))


# ------------------------------------------------------------------ our entries and the plan


def attach_entries(cases: Sequence[Case]) -> None:
    """Set ``case.entry`` to our suite entry (None when our suite lacks the corruption)."""
    from medrobust.corruptions import get_suite

    suites: dict[tuple[str, str | None], Any] = {}
    for case in cases:
        key = (case.suite, case.param_dataset)
        if key not in suites:
            suites[key] = get_suite(case.suite, dataset=case.param_dataset)
        case.entry = suites[key].entries.get(case.corruption)


def plan_case(case: Case, severities: Sequence[int]) -> None:
    """Which reference severity each of our severities is compared with, and why.

    Normally the same severity. Where our parameters deliberately differ from the reference
    registry (corruptions.md defects), the row says so: a reordered list (BlackCorner,
    defect 7) is compared with the reference severity that has the same parameter; the
    StainDeposit ink size (defect 6) is a deviation shown for information. Any other
    difference is a parameter mismatch (a failure).
    """
    for s in severities:
        case.plan[s] = (s, None)
        if case.entry is None or case.ref_params is None:
            continue
        ours, ref = case.entry.params[s - 1], case.ref_params[s - 1]
        if case.entry.function == "stain_deposit":
            marks, ink = ours
            if not params_equal(marks, ref):
                case.plan[s] = (s, f"FAIL param mismatch: ours {marks} marks, reference {ref}")
            elif ink != REFERENCE_STAIN_INK[s - 1]:
                case.plan[s] = (s, f"deviation: ink {ink} px, reference {REFERENCE_STAIN_INK[s - 1]} px "
                                   "(defect 6)")
        elif not params_equal(ours, ref):
            same = [k for k in range(1, 6) if params_equal(ours, case.ref_params[k - 1])]
            if same:
                case.plan[s] = (same[0], f"note: ours = reference severity {same[0]} (defect 7 reorder)")
            else:
                case.plan[s] = (s, f"FAIL param mismatch: ours {to_jsonable(ours)}, "
                                   f"reference {to_jsonable(ref)}")


# ------------------------------------------------------------------ reference side


def run_reference_side(
    cases: Sequence[Case], images: dict[str, np.ndarray], args: argparse.Namespace, workdir: Path
) -> dict[str, tuple[dict[str, Any], Path]]:
    """Run the reference for every case label; label -> (runner report, outputs npz)."""
    results = {}
    for label in dict.fromkeys(c.label for c in cases):
        group = [c for c in cases if c.label == label]
        jobs = [
            {
                "id": job_id(c, s),
                "package": c.package,
                "dataset": c.param_dataset,
                "corruption": c.corruption,
                "severity": s,
                "images": c.images,
                # Deterministic outputs are compared pixel-wise, stochastic ones by PSNR.
                "save": c.entry is not None and not c.entry.stochastic,
                "repeats": args.stochastic_repeats if c.entry is None or c.entry.stochastic else 1,
            }
            for c in group
            for s in sorted({ref_s for ref_s, _ in c.plan.values()})
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


def job_id(case: Case, severity: int) -> str:
    return f"{case.corruption}/{severity}"


# ------------------------------------------------------------------ comparison


def _stochastic_metrics(clean: np.ndarray, ours_psnr: np.ndarray, ref_psnr: np.ndarray) -> dict[str, Any]:
    """PSNR gap with a paired standard error; arrays are (repeats, N)."""
    per_image = ours_psnr.mean(axis=0) - ref_psnr.mean(axis=0)
    se = float(per_image.std(ddof=1) / np.sqrt(len(per_image))) if len(per_image) > 1 else float("nan")
    gap = float(ours_psnr.mean() - ref_psnr.mean())
    if abs(gap) <= PSNR_GAP_TARGET:
        status = "pass"
    elif abs(gap) - 2 * se <= PSNR_GAP_TARGET:
        status = "inconclusive: |gap| > target but within 2 SE of it (raise --n)"
    else:
        status = "FAIL"
    return {"value": gap, "two_se": 2 * se, "ours": float(ours_psnr.mean()),
            "reference": float(ref_psnr.mean()), "status": status}


def compare_case(
    case: Case, clean: np.ndarray, ref_report: dict[str, Any], ref_outputs: Any, args: argparse.Namespace
) -> None:
    """Fill ``case.rows`` with one row per severity."""
    from medrobust.corruptions.api import from_channels_first, to_channels_first

    entry, tensor, n = case.entry, to_channels_first(clean), len(clean)
    for s, (ref_s, note) in case.plan.items():
        job = ref_report["jobs"][job_id(case, ref_s)]
        row: dict[str, Any] = {"corruption": case.corruption, "severity": s, "ref_severity": ref_s,
                               "ref_ms": job.get("ms_median"), "ref_param": job.get("param"),
                               "metric": "PSNR gap dB" if entry.stochastic else "MAD"}
        repeats = args.stochastic_repeats if entry.stochastic else 1
        try:
            outs = [from_channels_first(entry.apply(tensor, s, seed=args.seed + r, indices=range(n)), clean)
                    for r in range(repeats)]
        except Exception as exc:  # our bug: a failure, reported with its message
            row["status"] = f"FAIL ours fails: {type(exc).__name__}: {exc}"[:200]
            case.rows.append(row)
            continue
        if not job["ok"]:
            row["status"] = f"reference fails: {job['error']}"
        elif entry.stochastic:
            ref_psnr = np.asarray(job["psnr"]).reshape(job["repeats"], n)
            row.update(_stochastic_metrics(clean, np.stack([psnr(clean, o) for o in outs]), ref_psnr))
        else:
            ref_out = ref_outputs[job_id(case, ref_s)]
            row.update(value=mean_abs_diff(outs[0], ref_out), ours=float(psnr(clean, outs[0]).mean()),
                       reference=float(np.mean(job["psnr"])),
                       max_abs=int(np.abs(outs[0].astype(np.int16) - ref_out).max()))
            row["status"] = "pass" if row["value"] <= MAD_TARGET else "FAIL"
        if note and not row["status"].startswith("reference fails"):
            row["status"] = note if note.startswith("deviation") else f"{row['status']}; {note}"
            if note.startswith("FAIL"):
                row["status"] = f"{note} ({row['status']})"
        case.rows.append(row)


def reference_only_rows(case: Case, report: dict[str, Any]) -> None:
    for s in case.plan:
        job = report["jobs"][job_id(case, s)]
        case.rows.append({
            "corruption": case.corruption, "severity": s, "metric": "ref PSNR dB",
            "reference": float(np.mean(job["psnr"])) if job["ok"] else None,
            "ref_ms": job.get("ms_median"), "ref_param": job.get("param"),
            "status": f"reference fails: {job['error']}" if not job["ok"] else "ours unavailable",
        })


# ------------------------------------------------------------------ reporting


def _row_cells(row: dict[str, Any]) -> list[Any]:
    return [row["corruption"], row["severity"], row["metric"], row.get("value"), row.get("two_se"),
            row.get("ours"), row.get("reference"), row.get("ref_ms"), row["status"]]


def summarise(cases: Iterable[Case]) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for case in cases:
        for row in case.rows:
            counts[next(k for k in STATUSES if row["status"].startswith(k))] += 1
    return counts


def render(cases: Sequence[Case], meta: dict[str, Any], summary: dict[str, int]) -> tuple[str, str]:
    """(plain-text report for the terminal, Markdown report)."""
    text, md = [], [
        "# Reference parity of medrobust corruptions",
        "",
        f"N = {meta['n']} real test images per dataset, upsampled 28 -> 224 px (PIL bicubic); "
        f"severities {meta['severities']}; seed {meta['seed']}; stochastic corruptions over "
        f"{meta['stochastic_repeats']} draws per image{' (--quick)' if meta['quick'] else ''}.",
        f"Targets: deterministic mean |ours - reference| <= {MAD_TARGET} grey level (MAD); "
        f"stochastic |mean PSNR(ours) - mean PSNR(reference)| <= {PSNR_GAP_TARGET} dB (PSNR gap, "
        "'±2SE' its paired 2-standard-error noise). 'ours'/'reference' are mean PSNR to the "
        "clean input (dB).",
        f"Reference: {format_versions(meta['reference_versions'])}.",
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
    parser.add_argument("--stochastic-repeats", type=int, default=None,
                        help="draws per image for stochastic corruptions (default 2; 1 with --quick)")
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
    args.stochastic_repeats = args.stochastic_repeats or (1 if args.quick else 2)
    if any(not 1 <= s <= 5 for s in args.severities) or min(args.n, args.stochastic_repeats) < 1:
        parser.error("severities must lie in 1..5; --n and --stochastic-repeats must be >= 1")
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
        if not ours_error:
            attach_entries(cases)
        for case in cases:
            plan_case(case, args.severities)
        runnable = [c for c in cases if ours_error or c.entry is not None]
        needed = sorted({c.images for c in runnable})
        images = {ds: load_real_images(ds, args.n, args.data_root) for ds in needed}
        print(f"{len(cases)} corruption cases x {len(args.severities)} severities on {needed}", flush=True)
        reference = run_reference_side(runnable, images, args, workdir)
        for case in cases:
            if not ours_error and case.entry is None:
                case.rows = [{"corruption": case.corruption, "severity": s, "metric": "-",
                              "status": f"FAIL not in our suite {case.suite}"} for s in case.plan]
            elif ours_error:
                reference_only_rows(case, reference[case.label][0])
            else:
                report, out_path = reference[case.label]
                with np.load(out_path, allow_pickle=False) as ref_outputs:
                    compare_case(case, images[case.images], report, ref_outputs, args)
    summary = summarise(cases)
    meta = {
        "n": args.n, "severities": args.severities, "seed": args.seed, "quick": args.quick,
        "stochastic_repeats": args.stochastic_repeats, "threads": args.threads,
        "datasets": args.datasets, "suites": args.suites, "extras": args.extras,
        "ours": ours_error or "ok", "load_average": load_average(),
        "reference_versions": (describe or {}).get("versions", "unavailable"),
    }
    text, md = render(cases, meta, summary)
    print(text)
    payload = {"meta": meta, "summary": summary,
               "cases": [{"label": c.label, "images": c.images, "corruption": c.corruption,
                          "function": c.entry.function if c.entry is not None else None,
                          "reference_params": c.ref_params, "rows": c.rows} for c in cases]}
    json_path, md_path = write_results(args.out, payload, md)
    print(f"\nsummary: {summary}\nwrote {json_path} and {md_path}")
    failed = summary["FAIL"] + summary["inconclusive"] + (1 if ours_error else 0)
    return 1 if args.strict and failed else 0


if __name__ == "__main__":
    sys.exit(main())
