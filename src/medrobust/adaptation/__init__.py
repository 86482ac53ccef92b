"""Few-shot adaptation of medical vision-language models (RobustMedCLIP-style).

``adapt(model, datasets, AdaptConfig(...), out_dir=...)`` trains LoRA on the vision tower, a
CoOp-style prompt context (``PromptLearner``), or both jointly (``method``), with few-shot
data and writes the adapter (weights + JSON config) to a folder;
``load_adapted_model(folder)`` returns a model usable by the evaluation runner like any other;
``convert_robustmedclip`` imports the official RobustMedCLIP LoRA files;
``fit_linear_probe`` fits the linear-probe baseline on the same few-shot data;
``pretrain(out_dir, PretrainConfig(...))`` trains medrobust-mini. Both trainings share the
pieces of ``training`` (schedule, optimizer stepping, training state).
"""

from .checkpoint import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    export_merged,
    load_adapted_model,
    read_adapter_config,
)
from .config import AdaptConfig, PretrainConfig
from .linear_probe import LinearProbeModel, fit_linear_probe
from .lora import (
    InertTargetError,
    LoraSettings,
    apply_lora,
    lora_state_dict,
    merge_lora,
    resolve_targets,
)
from .pretrain import pretrain
from .prompt import PromptLearner, PromptSettings
from .robustmedclip import convert_robustmedclip, read_robustmedclip_lora
from .train import LoraTrainer, adapt
from .training import warmup_cosine

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "AdaptConfig",
    "InertTargetError",
    "LinearProbeModel",
    "LoraSettings",
    "LoraTrainer",
    "PretrainConfig",
    "PromptLearner",
    "PromptSettings",
    "adapt",
    "apply_lora",
    "convert_robustmedclip",
    "export_merged",
    "fit_linear_probe",
    "load_adapted_model",
    "lora_state_dict",
    "merge_lora",
    "pretrain",
    "read_adapter_config",
    "read_robustmedclip_lora",
    "resolve_targets",
    "warmup_cosine",
]
