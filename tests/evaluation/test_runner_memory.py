"""The runner's memory is bounded by the batch size and prefetch depth, not by the dataset.

Measured in a fresh process (the pytest process's heap would hide growth) with one malloc
arena: the peak of the anonymous resident memory (``RssAnon``, sampled) while ``run_grid``
evaluates 4N images, after runs over N images have sized the heap. A runner that keeps a
cell's images (or runs a whole cell ahead) needs about 3N reference-size images more for that
run; a bounded one needs nothing more. (A runner that kept one small block per batch grew the
heap by ~40 KB per image: the freed batches' large blocks could no longer be reused.) The same
measurement on a runner made to keep each cell's images shows that it sees such growth.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

N = 256
IMAGE_BYTES = 224 * 224  # one grey image at the MedMNIST-C reference size, uint8

_MEASURE = r"""
import json, sys, tempfile, threading
import numpy as np, torch
from medrobust.runtime import keep_freed_memory
keep_freed_memory()  # as the command line does
torch.set_num_threads(1)
from medrobust.data import ImageDataset
from medrobust.evaluation import GridSpec, run_grid, runner
from medrobust.models import create_model

def rss_anon():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("RssAnon:"))

class Peak:
    def __enter__(self):
        self.peak, self._stop = rss_anon(), threading.Event()
        self._thread = threading.Thread(target=self._sample)
        self._thread.start()
        return self
    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_anon())
    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon())

if sys.argv[1] == "keep-images":  # the mistake the measurement must see
    real = runner._Source.batches
    runner._Source.batches = lambda self, cell: iter(list(real(self, cell)))
model = create_model("clip-vit-b16", pretrained=False, tiny=True)
rng = np.random.default_rng(0)

def growth(n):
    dataset = ImageDataset("breastmnist", "test", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                           rng.integers(0, 2, n), ["benign", "malignant"], "ultrasound", "binary",
                           "synthetic")
    spec = GridSpec(models=[model], datasets=[dataset], corruptions=["brightness_down"],
                    severities=(1,), batch_size=8)
    with tempfile.TemporaryDirectory() as run_dir:
        before = rss_anon()
        with Peak() as peak:
            run_grid(spec, run_dir, progress=False)
    return peak.peak - before

n = int(sys.argv[2])
first = [growth(n), growth(n)]  # the heap sized by a run over N images
print(json.dumps({"first": first, "second": growth(4 * n)}))
"""


def _growth(mode: str) -> dict[str, int]:
    # one malloc arena: the producer thread's blocks come from the heap the main thread's do,
    # which keep_freed_memory keeps, so a second run reuses the first one's memory
    env = {**os.environ, "MALLOC_ARENA_MAX": "1"}
    out = subprocess.run([sys.executable, "-c", _MEASURE, mode, str(N)], capture_output=True,
                         text=True, timeout=300, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads RssAnon from /proc")
def test_peak_memory_does_not_grow_with_the_dataset():
    kept = 3 * N * IMAGE_BYTES  # what keeping the extra 3N images of a cell would take
    bounded = _growth("bounded")
    assert bounded["second"] < kept / 4, bounded
    keeping = _growth("keep-images")  # the measurement sees a runner that keeps images
    assert keeping["second"] > kept * 0.8, keeping
