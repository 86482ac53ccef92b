"""The functional API: batched corruption functions on uint8 image tensors, by family.

Each corruption takes a uint8 tensor ``(N, C, H, W)`` (C = 1 or 3) and its parameters and
returns a uint8 tensor of the same shape on the same device; random ones take
a keyword ``rng`` (:class:`~medrobust.corruptions._random.ImageRandom`). ``scale_*`` functions
rescale a parameter for another image size. Like ``torchvision.transforms.v2.functional``: the
suites and registry build on these; call them directly for one corruption with exact parameters.
"""

from __future__ import annotations

from . import blur, color, digital, geometric, medical, noise, weather
from .blur import *  # noqa: F403
from .color import *  # noqa: F403
from .digital import *  # noqa: F403
from .geometric import *  # noqa: F403
from .medical import *  # noqa: F403
from .noise import *  # noqa: F403
from .weather import *  # noqa: F403

# each family module's own __all__ is the one list of its public names
__all__: list[str] = []
__all__ += blur.__all__
__all__ += color.__all__
__all__ += digital.__all__
__all__ += geometric.__all__
__all__ += medical.__all__
__all__ += noise.__all__
__all__ += weather.__all__
