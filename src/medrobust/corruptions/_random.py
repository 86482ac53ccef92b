"""Per-image random streams.

Every random draw a corruption makes for one image comes from a generator keyed by
``(seed, corruption, severity, dataset index)``. The output for an image therefore never
depends on batch size, batch order or worker count, and two seeds give different noise.
Draws for a whole batch are written into one preallocated tensor; only the per-image
generator call loops in Python, all arithmetic on the images is batched. On the CPU, where
torch's generator is sequential, large draws are spread over ``torch.get_num_threads()``
threads, each filling whole rows with their own generators (so the bytes do not change).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from medrobust.corruptions._threads import run_chunks
from medrobust.seeding import derive_seed

__all__ = ["ImageRandom", "derive_seed"]

_PARALLEL_MIN_ELEMENTS = 1 << 16  # per-row draws smaller than this stay on one thread


class ImageRandom:
    """One independent random stream per image of a batch.

    Methods return tensors whose first dimension is the batch; row ``i`` holds draws from
    image ``i``'s stream only. Calls must happen in the same order for every image, which
    holds for batched corruption code by construction.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.seeds = [int(s) for s in seeds]
        self._generators = [
            torch.Generator(device=self.device).manual_seed(s) for s in self.seeds
        ]
        self._host: ImageRandom | None = None

    @classmethod
    def for_images(
        cls,
        seed: int,
        corruption: str,
        severity: int,
        indices: Sequence[int],
        device: torch.device | str = "cpu",
    ) -> ImageRandom:
        """Streams for the images at ``indices`` of a dataset."""
        return cls([derive_seed(seed, corruption, severity, i) for i in indices], device)

    def __len__(self) -> int:
        return len(self._generators)

    def on_host(self) -> ImageRandom:
        """The streams for draws needed on the host (angles, words, counts): ``self`` on the CPU.

        On another device, CPU generators with the same seeds (made once, so that their state
        carries from call to call): such draws then cost no device sync, and give what the
        CPU gives.
        """
        if self.device.type == "cpu":
            return self
        if self._host is None:
            self._host = ImageRandom(self.seeds)
        return self._host

    def _rows(self, out: torch.Tensor, fill: Callable[[int], None]) -> torch.Tensor:
        """Call ``fill(i)`` for every row, on several CPU threads when rows are large."""
        workers = min(torch.get_num_threads(), len(self))
        per_row = math.prod(out.shape[1:])
        if self.device.type != "cpu" or workers < 2 or per_row < _PARALLEL_MIN_ELEMENTS:
            for i in range(len(self)):
                fill(i)
            return out
        chunk = math.ceil(len(self) / workers)

        def fill_rows(rows: slice) -> None:
            for i in range(rows.start, rows.stop):
                fill(i)

        run_chunks(fill_rows, [slice(i, min(i + chunk, len(self))) for i in range(0, len(self), chunk)])
        return out

    def _fill(self, shape: Sequence[int], draw: str, **kwargs: float) -> torch.Tensor:
        out = torch.empty((len(self), *shape), dtype=torch.float32, device=self.device)
        return self._rows(out, lambda i: getattr(out[i], draw)(generator=self._generators[i], **kwargs))

    def normal(self, shape: Sequence[int] = ()) -> torch.Tensor:
        """Standard normal draws, shape ``(N, *shape)``, float32."""
        return self._fill(shape, "normal_")

    def uniform(self, shape: Sequence[int] = (), low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        """Uniform draws on ``[low, high)``, shape ``(N, *shape)``, float32."""
        return self._fill(shape, "uniform_", **{"from": low, "to": high})

    def integers(self, low: int, high: int, shape: Sequence[int] = ()) -> torch.Tensor:
        """Integers uniform on ``[low, high]`` (both inclusive), shape ``(N, *shape)``, int64."""
        if high < low:
            raise ValueError(f"empty integer range [{low}, {high}]")
        out = torch.empty((len(self), *shape), dtype=torch.int64, device=self.device)
        return self._rows(out, lambda i: out[i].random_(low, high + 1, generator=self._generators[i]))

    def bits31(self, shape: Sequence[int] = ()) -> torch.Tensor:
        """31 uniform random bits per element: int32 in ``[0, 2**31)``, shape ``(N, *shape)``.

        Each 64-bit draw of a stream fills two elements, half the generator work of
        ``integers`` for table sampling.
        """
        count = math.prod(shape)
        words = torch.empty((len(self), (count + 1) // 2), dtype=torch.int64, device=self.device)
        self._rows(words, lambda i: words[i].random_(generator=self._generators[i]))
        halves = words.view(torch.int32)[:, :count]
        return halves.bitwise_and(0x7FFFFFFF).reshape(len(self), *shape)

    def poisson(self, rates: torch.Tensor) -> torch.Tensor:
        """Poisson draws with per-element ``rates`` of shape ``(N, ...)``, float32."""
        if rates.shape[0] != len(self):
            raise ValueError(f"rates has {rates.shape[0]} rows for {len(self)} streams")
        rates = rates.to(torch.float32)
        out = torch.empty_like(rates)

        def fill(i: int) -> None:
            out[i] = torch.poisson(rates[i], generator=self._generators[i])

        return self._rows(out, fill)
