"""Process-wide runtime settings."""

from __future__ import annotations

import platform
import sys

import pytest
import torch

from medrobust.runtime import keep_freed_memory


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_keep_freed_memory_applies_on_glibc_and_large_blocks_still_work() -> None:
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # idempotent
    for _ in range(3):  # larger than glibc's 32 MiB mmap ceiling, allocated and freed repeatedly
        block = torch.ones(48 << 20, dtype=torch.uint8)
        assert int(block.sum()) == 48 << 20
        del block
