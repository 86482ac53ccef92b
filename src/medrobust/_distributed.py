"""torch.distributed for processes started by torchrun: join the group, wait for the others.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.
The backend is gloo for CPU work (and for a barrier between processes whatever their device)
and NCCL for CUDA tensors. A single process (no ``WORLD_SIZE`` or 1) runs without a group, so
every caller works the same with and without torchrun.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

__all__ = ["World", "process_group", "world"]


class World:
    """Rank, size and local rank of this process (0, 1, 0 outside torchrun)."""

    def __init__(self, rank: int = 0, size: int = 1, local_rank: int = 0) -> None:
        self.rank, self.size, self.local_rank = rank, size, local_rank

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every process arrives (no-op for a single process)."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def __repr__(self) -> str:
        return f"World(rank={self.rank}, size={self.size}, local_rank={self.local_rank})"


def world() -> World:
    """This process's place as torchrun describes it in the environment."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


@contextmanager
def process_group(backend: str = "gloo", timeout: timedelta = timedelta(minutes=30)) -> Iterator[World]:
    """Join torchrun's process group for the block (none for a single process).

    ``timeout`` bounds every collective, barriers included: a barrier after uneven work (one
    rank's shard takes longer) needs it as long as the longest wait.
    """
    current = world()
    if not current.distributed:
        yield current
        return
    import torch.distributed as dist

    if dist.is_initialized():  # an enclosing block (or the caller) owns the group
        yield current
        return
    dist.init_process_group(backend, timeout=timeout)
    try:
        yield current
    finally:
        dist.destroy_process_group()
