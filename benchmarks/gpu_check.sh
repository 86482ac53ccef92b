#!/usr/bin/env bash
# The one prepared script for a lent GPU (issue 15): the CPU-checked code run on CUDA, each
# step under its own share of the time, every result as JSON (and a log) under OUT:
#   1. the CUDA-only tests (skipped on the development CPUs);
#   2. eval_speed: end to end / bare forward ratio, clip-vit-b16 bf16, plain and fused kernels;
#   3. kernel_speed: plain / fused / fused + compile forward img/s, with agreement to plain;
#   4. corruption_cuda: img/s per corruption at 224 px;
#   5. headline: the whole MedMNIST-C grid of clip-vit-b16 (--limit), images/s and projection;
#   6. sharding: two processes on one GPU under torchrun, merged by rank 0, against one process.
#
# Usage (repository root; random weights: nothing is downloaded):
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh                     # on the GPU machine
#   DEVICE=cpu QUICK=1 OUT=/tmp/gpu bash benchmarks/gpu_check.sh  # smoke run of the script on a CPU
# Environment:
#   MEDROBUST_DATA  data root (default ../shared/data); where the machine has no ../shared,
#                   copy breastmnist.npz and pneumoniamnist.npz into a carried folder
#   PYTHON          interpreter with torch and medrobust's requirements (default python3).
#                   A machine that cannot reach an index gets the missing ones as wheels, made
#                   beside the checkout and carried (the lent H100's image, 2026-11, lacked
#                   open-clip-torch, ftfy, wcwidth, platformdirs and medmnist with its fire and
#                   termcolor): pip download --no-deps --only-binary=:all: -d .whl NAME==VERSION,
#                   then there: pip install --no-index --no-deps --target /tmp/site .whl/*.whl
#                   and PYTHONPATH=/tmp/site
#   BUDGET          seconds for the whole script (default 540); each step gets its share
set -u -o pipefail

OUT="${OUT:?set OUT to the folder for the results}"
DEVICE="${DEVICE:-cuda}"
QUICK="${QUICK:-0}"
PYTHON="${PYTHON:-python3}"
BUDGET="${BUDGET:-540}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export MEDROBUST_DATA="${MEDROBUST_DATA:-$ROOT/../shared/data}"
export MEDROBUST_CACHE="${MEDROBUST_CACHE:-$OUT/cache}"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
cd "$ROOT" || exit 2
START=$(date +%s)
STATUS="$OUT/steps.txt"
: > "$STATUS"

# the benchmarks take --pretrained (load shipped weights), eval takes --random-weights
if [ "$DEVICE" = cpu ]; then
    PRECISION=fp32; MODEL=(--model medrobust-mini --pretrained); EVAL_MODEL=(--model medrobust-mini)
else
    PRECISION=bf16; MODEL=(--model clip-vit-b16); EVAL_MODEL=(--model clip-vit-b16 --random-weights)
fi
if [ "$QUICK" = 1 ]; then N=32; BATCH=16; LIMIT=4; REPEATS=1; else N=2048; BATCH=512; LIMIT=256; REPEATS=3; fi

# step NAME SHARE CMD...: run CMD with SHARE percent of BUDGET as its limit (at most what is left)
step() {
    local name=$1 share=$2
    shift 2
    local left=$((BUDGET - ($(date +%s) - START)))
    local limit=$((BUDGET * share / 100))
    [ "$limit" -gt "$left" ] && limit=$left
    if [ "$limit" -lt 10 ]; then
        echo "$name skipped: no time left" | tee -a "$STATUS"
        return
    fi
    local t0
    t0=$(date +%s)
    timeout --kill-after=5 "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "$name rc=$? seconds=$(($(date +%s) - t0)) limit=$limit" | tee -a "$STATUS"
    tail -n 12 "$OUT/$name.log"
}

"$PYTHON" -c "
import json, platform, torch
info = {'torch': torch.__version__, 'python': platform.python_version(), 'cuda': torch.cuda.is_available()}
if torch.cuda.is_available():
    info.update(gpu=torch.cuda.get_device_name(0), cuda_version=torch.version.cuda)
print(json.dumps(info))" | tee "$OUT/device.json"

if [ "$DEVICE" != cpu ]; then
    step cuda_tests 20 "$PYTHON" -m pytest -q -rs tests/corruptions tests/evaluation/test_pipeline.py \
        tests/models/test_kernels.py
fi
for kernels in plain fused; do
    step "eval_speed_$kernels" 11 "$PYTHON" benchmarks/eval_speed.py "${MODEL[@]}" --device "$DEVICE" \
        --precision "$PRECISION" --n "$N" --batch-size "$BATCH" --repeats "$REPEATS" --kernels "$kernels" \
        --json "$OUT/eval_speed_$kernels.json"
done
step kernel_speed 12 "$PYTHON" benchmarks/kernel_speed.py "${MODEL[@]}" --device "$DEVICE" \
    --precision "$PRECISION" --batch-size "$BATCH" --repeats "$REPEATS" --json "$OUT/kernel_speed.json"
step corruption_speed 15 "$PYTHON" benchmarks/corruption_cuda.py --device "$DEVICE" --n "$N" --batch "$BATCH" \
    --repeats "$REPEATS" --whole-limit "$N" --out "$OUT/corruption_speed"
step headline 15 "$PYTHON" benchmarks/headline.py "${MODEL[@]}" --device "$DEVICE" --precision "$PRECISION" \
    --batch-size "$BATCH" --limit "$LIMIT" --json "$OUT/headline.json"

# both processes on the one device (an explicit index is kept under torchrun)
SHARD_DEVICE="$DEVICE"
[ "$DEVICE" = cuda ] && SHARD_DEVICE=cuda:0
GRID=(eval "${EVAL_MODEL[@]}" --dataset breastmnist --corruptions speckle_noise,pixelate --severities 1,5
      --device "$SHARD_DEVICE" --precision "$PRECISION" --batch-size "$BATCH" --quiet)
rm -rf "$OUT/one" "$OUT/two"
step shard_one 5 "$PYTHON" -m medrobust.cli "${GRID[@]}" --run-dir "$OUT/one"
step shard_two 8 "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node 2 -m medrobust.cli \
    "${GRID[@]}" --run-dir "$OUT/two"
"$PYTHON" - "$OUT" <<'PY' | tee "$OUT/sharding.json"
import json, sys
from pathlib import Path

import numpy as np

from medrobust.evaluation.store import ResultsStore

out = Path(sys.argv[1])


def predictions(run: Path) -> dict[str, np.ndarray]:
    if not (run / "results.sqlite").is_file():
        return {}
    with ResultsStore(run) as store:
        return {row["cell_id"]: store.predictions(row)[0] for row in store.rows()}


one, two = predictions(out / "one"), predictions(out / "two")
same = sorted(one) == sorted(two) and bool(one)
print(json.dumps({
    "cells_one_process": len(one), "cells_two_processes_merged": len(two), "same_cells": same,
    "byte_identical": same and all(one[c].tobytes() == two[c].tobytes() for c in one),
    "max_abs_difference": max((float(np.abs(one[c] - two[c]).max()) for c in one), default=None) if same else None,
}))
PY
rm -rf "$OUT/one" "$OUT/two" "$OUT/cache"
echo "total seconds: $(($(date +%s) - START))" | tee -a "$STATUS"
