"""Data-parallel adaptation: the split of a global batch, and torchrun with 2 CPU processes
(gloo, DistributedDataParallel) training the adapter one process trains."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from medrobust._distributed import World
from medrobust.adaptation.checkpoint import ADAPTER_WEIGHTS, STATE_FILE
from medrobust.adaptation.distributed import share_of_batch
from medrobust.adaptation.training import load_train_state
from medrobust.cli import main


@pytest.mark.parametrize("batch", [1, 2, 5, 8])
def test_weighted_shares_average_to_the_batch_mean(batch):
    values = torch.arange(batch, dtype=torch.float64) ** 2
    shares = [share_of_batch(batch, World(rank, 2)) for rank in range(2)]
    assert sorted(i for s in shares for i in s.positions.tolist() if s.weight) == list(range(batch))
    ddp_average = sum(s.weight * values[s.positions].mean() for s in shares) / 2
    assert float(ddp_average) == pytest.approx(float(values.mean()))
    assert sum(s.rows for s in shares) == batch


_ADAPT = ["adapt", "--model", "medrobust-mini", "--dataset", "breastmnist", "--shots", "6",
          "--epochs", "2", "--batch-size", "5", "--val-limit", "12", "--rank", "2", "--patience", "0",
          "--warmup", "1", "--lr", "5e-3", "--augment-suite", "medmnist-c", "--augment-p", "0.5",
          "--quiet"]


def test_torchrun_two_processes_train_the_adapter_of_one(shared_data, tmp_path):
    assert main([*_ADAPT, "--data-root", str(shared_data), "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "MEDROBUST_DATA": str(shared_data), "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "medrobust.cli", *_ADAPT, "--out", str(tmp_path / "two")]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (load_file(tmp_path / d / ADAPTER_WEIGHTS) for d in ("one", "two"))
    assert one.keys() == two.keys() and one
    for name in one:  # the selected adapter
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-6)
    states = [load_train_state(tmp_path / d / STATE_FILE) for d in ("one", "two")]
    last = [s["lora"] for s in states]  # the last epoch's weights, trained whatever was selected
    assert any(float(t.abs().max()) > 0 for k, t in last[0].items() if "lora_B" in k)
    for name in last[0]:
        torch.testing.assert_close(last[1][name], last[0][name], rtol=1e-3, atol=1e-5)  # float sums
    for h1, h2 in zip(states[0]["history"], states[1]["history"], strict=True):
        assert h1["epoch"] == h2["epoch"] and (h1["train_loss"] is None) == (h2["train_loss"] is None)
        if h1["train_loss"] is not None:
            assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-5)
