"""Fixtures for the model-zoo tests: tiny offline builds, never a network access."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from medrobust.models import ModelAdapter, create_model
from medrobust.models import weights as weights_module


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests never download: every Hub/URL access sees the network as unreachable."""
    monkeypatch.setenv(weights_module.OFFLINE_ENV, "1")
    yield


@pytest.fixture(scope="session")
def tiny_model() -> Callable[[str], ModelAdapter]:
    """Tiny random-weight build of a registry model, built once per session (do not mutate)."""
    cache: dict[str, ModelAdapter] = {}

    def get(name: str) -> ModelAdapter:
        if name not in cache:
            cache[name] = create_model(name, pretrained=False, tiny=True)
        return cache[name]

    return get
