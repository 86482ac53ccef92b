"""Data-parallel LoRA training under torchrun (DistributedDataParallel; gloo on CPU, NCCL on GPU).

Every process builds the same model, LoRA initialisation and batch plan from the same seeds.
Each global batch is split across the processes (process r takes rows r, r + W, r + 2W, ...);
each scales its mean loss by its share of the batch, so the gradient DDP averages over the W
processes is exactly the gradient of the whole batch's mean loss, and W processes train the
adapter one process would (to float rounding), with the same global batch size. Random
corruptions are drawn for the whole batch and each process uses its rows' draws. LoRA dropout
draws differ (the masks follow the split), so exact equality holds for dropout 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._distributed import World

__all__ = ["BatchShare", "ImageTower", "reduce_sum", "share_of_batch", "wrap_image_tower"]


class ImageTower(nn.Module):
    """A model's image encoder as a module, so DistributedDataParallel can wrap its forward."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model  # a ModelAdapter: registered so DDP sees its trainable (LoRA) parameters

    def forward(self, pixels: Tensor) -> Tensor:
        return self.model.encode_image(pixels)


def wrap_image_tower(model: Any, world: World) -> nn.Module:
    """The image encoder, inside DistributedDataParallel when ``world`` has several processes."""
    tower = ImageTower(model)
    if not world.distributed:
        return tower
    from torch.nn.parallel import DistributedDataParallel

    device = next(p.device for p in model.parameters() if p.requires_grad)
    # frozen buffers never change: no broadcast before every forward
    return DistributedDataParallel(tower, device_ids=[device] if device.type == "cuda" else None,
                                   broadcast_buffers=False)


@dataclass(frozen=True)
class BatchShare:
    """A process's part of a global batch: its ``positions`` in the batch of ``batch_size``
    rows, and ``weight``, the factor that turns its mean loss into its part of the batch mean
    (``W * rows / batch_size``; DDP divides the summed gradients by W). ``weight`` 0: a process
    left without rows, which still joins the gradient exchange with one row."""

    positions: Tensor
    batch_size: int
    weight: float

    @property
    def rows(self) -> int:
        """Rows that count (0 for a weight-0 share)."""
        return len(self.positions) if self.weight else 0


def share_of_batch(batch_size: int, world: World) -> BatchShare:
    """This process's rows of a global batch: rows rank, rank + W, rank + 2W, ..."""
    positions = torch.arange(world.rank, batch_size, world.size)
    if len(positions) == 0:
        return BatchShare(torch.zeros(1, dtype=torch.long), batch_size, 0.0)
    return BatchShare(positions, batch_size, world.size * len(positions) / batch_size)


def reduce_sum(value: Tensor, world: World) -> Tensor:
    """Sum of ``value`` over all processes (itself for one process)."""
    if world.distributed:
        import torch.distributed as dist

        value = value.clone()
        dist.all_reduce(value)
    return value
