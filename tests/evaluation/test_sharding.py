"""Shards: parsing, the launchers' environments, and the balanced deterministic partition."""

from __future__ import annotations

import random

import pytest

from medrobust.evaluation.sharding import Shard, grid_digest, parse_shard, partition, shard_from_env


def test_parse_shard_and_its_store_folder(tmp_path):
    shard = parse_shard("1/4")
    assert (shard.index, shard.count, shard.launcher) == (1, 4, "cli")
    assert shard.store_dir(tmp_path) == tmp_path / "shards" / "shard-1-of-4"
    assert shard.device("cuda") == "cuda" and shard.device("cpu") == "cpu"


@pytest.mark.parametrize("text", ["4/4", "-1/2", "1", "a/b", "0/0", "1/2/3"])
def test_bad_shard_is_a_clear_error(text):
    with pytest.raises(ValueError, match="I/N"):
        parse_shard(text)


def test_torchrun_environment_gives_rank_and_local_device():
    shard = shard_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (shard.index, shard.count, shard.local_rank, shard.launcher) == (3, 4, 1, "torchrun")
    assert shard.device("cuda") == "cuda:1" and shard.device("cpu") == "cpu"
    assert shard_from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert shard_from_env({}) is None


def test_slurm_array_index_counts_from_the_first_task():
    env = {"SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "1"}
    shard = shard_from_env(env)
    assert (shard.index, shard.count, shard.launcher) == (7, 8, "slurm-array")
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "3"}).index == 0
    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_COUNT"):
        shard_from_env({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "x"})


def test_partition_covers_every_item_once_balanced_and_deterministic():
    rng = random.Random(0)
    weights = [rng.choice([624, 546, 400, 7180, 16]) for _ in range(131)]
    for count in (1, 2, 3, 7):
        owner = partition(weights, count)
        assert owner == partition(list(weights), count)
        assert sorted(set(owner)) == list(range(min(count, len(weights))))
        loads = [sum(w for w, o in zip(weights, owner, strict=True) if o == s) for s in range(count)]
        assert max(loads) - min(loads) <= max(weights)
        assert sum(loads) == sum(weights)


def test_partition_of_equal_items_is_round_robin_and_rejects_bad_input():
    assert partition([5] * 5, 2) == [0, 1, 0, 1, 0]
    with pytest.raises(ValueError):
        partition([1], 0)
    with pytest.raises(ValueError):
        partition([-1], 2)


def test_grid_digest_ignores_order_and_sees_any_change():
    assert grid_digest(["a", "b"]) == grid_digest(["b", "a"])
    assert grid_digest(["a", "b"]) != grid_digest(["a", "c"])


def test_shard_validates_itself():
    with pytest.raises(ValueError):
        Shard(2, 2)
