"""Per-image random streams: draws depend only on an image's own seed, never on threads."""

from __future__ import annotations

import pytest
import torch

from medrobust.corruptions._random import ImageRandom, derive_seed


def test_derive_seed_is_stable_and_distinguishes_its_key() -> None:
    seed = derive_seed(0, "gaussian_noise", 3, 17)
    assert seed == derive_seed(0, "gaussian_noise", 3, 17)
    others = {
        derive_seed(1, "gaussian_noise", 3, 17),
        derive_seed(0, "shot_noise", 3, 17),
        derive_seed(0, "gaussian_noise", 4, 17),
        derive_seed(0, "gaussian_noise", 3, 18),
    }
    assert seed not in others and len(others) == 4
    assert 0 <= seed < 2**63


@pytest.mark.parametrize("shape", [(1, 224, 224), (3, 5, 7), ()])
def test_bits31_are_uniform_31_bit_integers(shape: tuple[int, ...]) -> None:
    bits = ImageRandom([1, 2]).bits31(shape)
    assert bits.dtype == torch.int32 and bits.shape == (2, *shape)
    assert bits.min() >= 0
    if bits[0].numel() > 10_000:
        ones = torch.stack([(bits >> b) & 1 for b in range(31)]).float().mean(dim=(1, 2, 3, 4))
        assert torch.all((ones - 0.5).abs() < 0.01), ones


def test_each_row_depends_only_on_its_own_seed() -> None:
    both = ImageRandom([5, 9]).bits31((3, 33, 17))
    assert torch.equal(both[1:], ImageRandom([9]).bits31((3, 33, 17)))
    assert not torch.equal(both[0], both[1])


@pytest.mark.parametrize("draw", ["bits31", "normal", "uniform"])
def test_threads_do_not_change_the_bytes(draw: str) -> None:
    """Large draws are spread over threads, each filling whole rows with their own streams."""
    seeds, shape = list(range(6)), (1, 300, 300)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = getattr(ImageRandom(seeds), draw)(shape)
        torch.set_num_threads(2)
        two = getattr(ImageRandom(seeds), draw)(shape)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(one, two)


def test_host_streams_are_the_cpu_streams_and_keep_their_state(data_free_streams) -> None:
    """On the CPU ``on_host`` is the streams themselves; on another device CPU generators of
    the same seeds, made once, so consecutive calls continue the stream as on the CPU."""
    cpu = ImageRandom([3, 4])
    assert cpu.on_host() is cpu
    device = data_free_streams(2, "characters")
    host = device.on_host()
    assert host is device.on_host() and host.device.type == "cpu"
    reference = ImageRandom(device.seeds)
    for _ in range(2):
        assert torch.equal(device.on_host().uniform((5,)), reference.uniform((5,)))
    assert device.uniform((5,)).device.type == "meta"
