"""Model zoo: medical vision-language models behind one adapter interface.

``create_model(name)`` returns a :class:`ModelAdapter` (eval mode) with ``encode_image``,
``encode_text``, ``tokenize``, ``preprocess`` (batched uint8 -> normalised tensors), logit
scale/bias, default prompt templates, licence and weights identity. ``list_models()`` gives the
registry names; ``open_clip:ARCH/TAG``, ``hf-hub:REPO``, ``hf:REPO`` and local folders also work.
:class:`ZeroShotClassifier` turns a model's image and text embeddings into class logits.
"""

from . import base
from .base import *  # noqa: F403
from .prompts import TEMPLATE_SETS, build_prompts, resolve_templates
from .registry import create_model, list_models, model_spec, save_model
from .weights import (
    MODEL_CACHE_ENV,
    OFFLINE_ENV,
    WeightsMismatchError,
    WeightsUnavailableError,
    default_cache_dir,
)
from .zeroshot import ZeroShotClassifier, clear_text_cache, text_prototypes

__all__ = [
    "MODEL_CACHE_ENV",
    "OFFLINE_ENV",
    "TEMPLATE_SETS",
    "WeightsMismatchError",
    "WeightsUnavailableError",
    "ZeroShotClassifier",
    "build_prompts",
    "clear_text_cache",
    "create_model",
    "default_cache_dir",
    "list_models",
    "model_spec",
    "resolve_templates",
    "save_model",
    "text_prototypes",
]
__all__ += base.__all__  # the adapter interface: base.py's one list of its names
