"""The functional API: ``medrobust.corruptions.functional`` exports every public function."""

from __future__ import annotations

import inspect

from medrobust.corruptions import functional as F
from medrobust.corruptions.registry import FUNCTIONS

FAMILIES = (F.blur, F.color, F.digital, F.geometric, F.medical, F.noise, F.weather)


def test_every_registered_corruption_is_exported() -> None:
    for name, entry in FUNCTIONS.items():
        assert getattr(F, name) is entry.fn, name
        if entry.scale_param is not None:
            assert getattr(F, entry.scale_param.__name__) is entry.scale_param


def test_every_public_function_of_a_family_is_exported_once() -> None:
    assert len(F.__all__) == len(set(F.__all__))
    for module in FAMILIES:
        public = {name for name, obj in vars(module).items()
                  if inspect.isfunction(obj) and obj.__module__ == module.__name__
                  and not name.startswith("_")}
        assert public <= set(module.__all__), f"{module.__name__}: {public - set(module.__all__)}"
        for name in module.__all__:
            assert name in F.__all__ and getattr(F, name) is getattr(module, name)
