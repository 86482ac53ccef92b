"""LoRA on the vision tower of a medrobust model, through peft.

Targets are resolved against ``model.vision_module`` (the text tower is never touched) and
handed to peft as one exact regex of full module names, so a short name can never hit an
unintended layer (bare ``proj`` would also match a ViT's patch embedding). Defaults per
vision-tower architecture:

======================  =========================================================
timm ViT (BiomedCLIP)   ``trunk.blocks.N.attn.qkv`` (the fused q/k/v projection)
open_clip ViT (CLIP)    ``transformer.resblocks.N.attn`` (peft's nn.MultiheadAttention
                        support: in_proj = q/k/v and out_proj)
open_clip ModifiedRN    ``layerL.N.conv1/2/3`` (Conv2d LoRA; BatchNorm stays in eval)
torchvision ResNet      ``model.layerL.N.conv1/2/3`` (MedCLIP ResNet-50)
transformers CLIP/SigLIP ``encoder.layers.N.self_attn.q_proj/k_proj/v_proj``
transformers Swin       ``...blocks.N.attention.q/k/v`` (MedCLIP Swin-T)
======================  =========================================================

Every adapted layer is checked to influence the image embedding (one forward/backward with
B = 0: the gradient of a random projection of the output w.r.t. each ``lora_B`` must be
non-zero); a layer the model calls functionally (``MultiheadAttention.out_proj``, the
attention pool of open_clip's ResNet) would otherwise train and save weights that do nothing.

peft 0.21's nn.MultiheadAttention layer has two defects: it adds ``BA`` to the frozen weights
before each forward and subtracts it after, so the base weights drift by rounding at every call
(a saved adapter then no longer reproduces the trained model), and it applies the out_proj
update twice (``W_out + 2 s B A``: once directly, once more through the out_proj layer's own
merge), in its forward and in its merge. :class:`ExactMultiheadAttention` computes with
``W + s B A`` for in_proj and out_proj, once each, while leaving ``W`` untouched, and merges the
same update once.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora.layer import LoraLayer
from peft.tuners.lora.layer import MultiheadAttention as _PeftMultiheadAttention
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import Tensor, nn

from medrobust.models.base import ModelAdapter

__all__ = [
    "ADAPTER_NAME",
    "ARCHITECTURES",
    "ExactMultiheadAttention",
    "InertTargetError",
    "LoraSettings",
    "apply_lora",
    "detect_architecture",
    "has_lora",
    "load_lora_state_dict",
    "lora_parameters",
    "lora_state_dict",
    "merge_lora",
    "resolve_targets",
    "set_lora_training",
    "tensors_sha256",
    "verify_lora_effective",
    "vision_fingerprint",
]

ADAPTER_NAME = "default"
SUPPORTED_LAYERS = (nn.Linear, nn.Conv2d, nn.MultiheadAttention)


class InertTargetError(ValueError):
    """A LoRA target that cannot change the model's output."""


class ExactMultiheadAttention(_PeftMultiheadAttention):
    """peft's MultiheadAttention LoRA, corrected (see the module docstring).

    The attention runs with ``in_proj_weight + delta`` and ``out_proj.weight + delta`` as
    plain tensors; the original Parameters are put back untouched afterwards. LoRA dropout
    cannot act on a merged weight, so :func:`apply_lora` rejects ``dropout > 0`` for this layer.
    """

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise NotImplementedError(
            "in-place merge of a MultiheadAttention LoRA is not supported (peft's adds the "
            "out_proj update twice); use medrobust.adaptation.merge_lora"
        )

    def unload_and_optionally_merge_module(
        self, merge: bool, safe_merge: bool, adapter_names: list[str] | None
    ) -> nn.MultiheadAttention:
        """The plain nn.MultiheadAttention, with the LoRA update added once if ``merge``."""
        self._restore_weights()
        base = self.get_base_layer()
        out_lora = base.out_proj
        out_base = out_lora.get_base_layer()
        if merge:
            names = adapter_names or [a for a in self.active_adapters if a in self.lora_A]
            with torch.no_grad():
                new_in = base.in_proj_weight + sum(self.get_delta_weight(a) for a in names)
                new_out = out_base.weight + sum(out_lora.get_delta_weight(a) for a in names)
                if safe_merge and not (new_in.isfinite().all() and new_out.isfinite().all()):
                    raise ValueError("non-finite values in the merged MultiheadAttention weights")
                base.in_proj_weight.copy_(new_in)
                out_base.weight.copy_(new_out)
        base.out_proj = out_base
        return base

    def forward(self, query: Tensor, *args: Any, **kwargs: Any) -> Any:
        active = [a for a in self.active_adapters if a in self.lora_A]
        if self.disable_adapters or self.merged or not active:
            return super().forward(query, *args, **kwargs)
        self._check_forward_args(query, *args, **kwargs)
        base = self.get_base_layer()
        out_lora = base.out_proj
        out_base = out_lora.get_base_layer()
        w_in, w_out = base.in_proj_weight, out_base.weight
        d_in = sum(self.get_delta_weight(a) for a in active)
        d_out = sum(out_lora.get_delta_weight(a) for a in active)
        del base.in_proj_weight, out_base.weight
        base.in_proj_weight = w_in + d_in.to(w_in.dtype)
        out_base.weight = w_out + d_out.to(w_out.dtype)
        try:
            result = base(query, *args, **kwargs)
        finally:
            del base.in_proj_weight, out_base.weight
            base.register_parameter("in_proj_weight", w_in)
            out_base.register_parameter("weight", w_out)
        weights = result[1].to(query.dtype) if result[1] is not None else None
        return result[0].to(query.dtype), weights


@dataclass(frozen=True)
class Architecture:
    """A vision-tower layout: how to recognise it and its named target presets (regexes)."""

    name: str
    detect: str
    presets: Mapping[str, str]
    default: str


_HF = r"(?:vision_model\.)?encoder\.layers\.\d+\."
_SWIN = r"model\.encoder\.layers\.\d+\.blocks\.\d+\."
ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(
        "timm-vit",
        r"trunk\.blocks\.0\.attn\.qkv",
        {
            "attention": r"trunk\.blocks\.\d+\.attn\.qkv",
            "attention+mlp": r"trunk\.blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)",
        },
        "attention",
    ),
    Architecture(
        "open_clip-vit",
        r"transformer\.resblocks\.0\.attn",
        {
            "attention": r"transformer\.resblocks\.\d+\.attn",
            "attention+mlp": r"transformer\.resblocks\.\d+\.(attn|mlp\.c_fc|mlp\.c_proj)",
        },
        "attention",
    ),
    Architecture(
        "open_clip-resnet",
        r"layer1\.0\.conv1",
        {"conv": r"layer[1-4]\.\d+\.conv[123]"},
        "conv",
    ),
    Architecture(
        "torchvision-resnet",
        r"model\.layer1\.0\.conv1",
        {"conv": r"model\.layer[1-4]\.\d+\.conv[123]"},
        "conv",
    ),
    Architecture(
        "hf-vit",
        _HF + r"self_attn\.q_proj",
        {
            "attention": _HF + r"self_attn\.(q_proj|k_proj|v_proj)",
            "attention+mlp": _HF
            + r"(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.fc1|mlp\.fc2)",
        },
        "attention",
    ),
    Architecture(
        "hf-swin",
        _SWIN + r"attention\.(q_proj|self\.query)",
        {
            "attention": _SWIN
            + r"attention\.(q_proj|k_proj|v_proj|self\.query|self\.key|self\.value)",
            "attention+mlp": _SWIN
            + r"(attention\.(q_proj|k_proj|v_proj|o_proj|self\.query|self\.key|self\.value"
            r"|output\.dense)|mlp\.fc1|mlp\.fc2|intermediate\.dense|output\.dense)",
        },
        "attention",
    ),
)
_ALL_PRESETS = sorted({p for a in ARCHITECTURES for p in a.presets})

# Layers whose weights a parent module uses functionally: LoRA on them is never called.
_INERT_PARENTS = {
    "MultiheadAttention": "nn.MultiheadAttention uses its out_proj weight directly (target the "
    "MultiheadAttention module itself, e.g. 'attn', which adapts in_proj and out_proj)",
    "AttentionPool2d": "open_clip's attention pool passes q/k/v/c_proj weights to "
    "F.multi_head_attention_forward, never calling the layers",
}


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters. ``alpha=None`` means ``alpha = rank`` (scaling 1).

    ``targets``: None (the architecture's default preset), a preset name (``'attention'``,
    ``'attention+mlp'``, ``'conv'``), a regex matched in full against module names of the
    vision tower, or a list of module names / dotted suffixes (as peft's list form).
    """

    rank: int = 16
    alpha: float | None = None
    dropout: float = 0.0
    targets: str | tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"rank must be a positive int, got {self.rank!r}")
        if self.alpha is not None:
            if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)):
                raise TypeError(f"alpha must be a number or None (= rank), got {self.alpha!r}")
            if not (self.alpha > 0 and self.alpha < float("inf")):
                raise ValueError(f"alpha must be a positive finite number, got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            raise TypeError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout!r}")
        targets = self.targets
        if targets is not None and not isinstance(targets, str):
            if not isinstance(targets, Sequence) or not targets:
                raise TypeError("targets must be None, a preset name, a regex or a list of names")
            if not all(isinstance(t, str) and t for t in targets):
                raise TypeError(f"targets must be non-empty strings, got {targets!r}")
            object.__setattr__(self, "targets", tuple(targets))
        elif isinstance(targets, str) and not targets.strip():
            raise ValueError("targets must not be an empty string")

    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = list(self.targets) if isinstance(self.targets, tuple) else self.targets
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoraSettings:
        targets = d.get("targets")
        return cls(
            rank=int(d["rank"]),
            alpha=d.get("alpha"),
            dropout=float(d.get("dropout", 0.0)),
            targets=tuple(targets) if isinstance(targets, list) else targets,
        )


def _candidates(vision: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in vision.named_modules() if n and isinstance(m, SUPPORTED_LAYERS)}


def detect_architecture(vision: nn.Module) -> Architecture | None:
    """The known layout ``vision`` follows (first match), or None."""
    names = [n for n, _ in vision.named_modules()]
    for arch in ARCHITECTURES:
        pattern = re.compile(arch.detect)
        if any(pattern.fullmatch(n) for n in names):
            return arch
    return None


def _regex_matches(vision: nn.Module, pattern: str) -> list[str]:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"targets {pattern!r} is not a valid regular expression: {exc}") from exc
    return [n for n, _ in vision.named_modules() if n and compiled.fullmatch(n)]


def _describe_candidates(vision: nn.Module) -> str:
    names = list(_candidates(vision))
    shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
    return f"adaptable layers (Linear, Conv2d, MultiheadAttention) include: {shown}"


def resolve_targets(vision: nn.Module, targets: str | Sequence[str] | None) -> list[str]:
    """Full names of the vision-tower modules ``targets`` selects (validated, in model order).

    Raises ValueError for an unknown preset, a regex or name matching nothing, or a match that
    is not a Linear, Conv2d or MultiheadAttention layer; InertTargetError for a layer known to
    be called functionally by its parent.
    """
    arch = detect_architecture(vision)
    if targets is None:
        if arch is None:
            raise ValueError(
                f"no default LoRA targets for a {type(vision).__name__} vision tower; pass "
                f"targets= (a regex or module names). {_describe_candidates(vision)}"
            )
        targets = arch.default
    if isinstance(targets, str):
        if arch is not None and targets in arch.presets:
            names = _regex_matches(vision, arch.presets[targets])
        elif targets in _ALL_PRESETS:
            allowed = sorted(arch.presets) if arch else []
            raise ValueError(
                f"target preset {targets!r} does not apply to this "
                f"{arch.name if arch else 'unknown'} vision tower; presets here: {allowed}, or "
                "pass a regex / module names"
            )
        else:
            names = _regex_matches(vision, targets)
            if not names:
                raise ValueError(
                    f"targets regex {targets!r} matches no module of the vision tower (it must "
                    f"match a full module name). {_describe_candidates(vision)}"
                )
    else:
        all_names = [n for n, _ in vision.named_modules() if n]
        matched: set[str] = set()
        for t in targets:
            hits = [n for n in all_names if n == t or n.endswith("." + t)]
            if not hits:
                raise ValueError(
                    f"unknown LoRA target {t!r}: no module of the vision tower is named so. "
                    f"{_describe_candidates(vision)}"
                )
            matched.update(hits)
        names = [n for n in all_names if n in matched]
    modules = dict(vision.named_modules())
    for name in names:
        module = modules[name]
        if not isinstance(module, SUPPORTED_LAYERS):
            raise ValueError(
                f"LoRA target {name!r} is a {type(module).__name__}; only Linear, Conv2d and "
                f"MultiheadAttention layers can be adapted. {_describe_candidates(vision)}"
            )
        parent = modules[name.rpartition(".")[0]] if "." in name else vision
        why = _INERT_PARENTS.get(type(parent).__name__)
        if why is not None:
            raise InertTargetError(f"LoRA target {name!r} would be inert: {why}")
    return names


def _lora_layers(vision: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Outermost peft LoRA layers of ``vision`` (an MHA layer's own out_proj is inside it)."""
    outer: list[str] = []
    for name, module in vision.named_modules():
        if isinstance(module, LoraLayer) and not any(name.startswith(o + ".") for o in outer):
            outer.append(name)
            yield name, module


def has_lora(model: ModelAdapter) -> bool:
    """Whether the model's vision tower holds (unmerged) LoRA layers."""
    return hasattr(model.vision_module, "peft_config") or any(
        True for _ in _lora_layers(model.vision_module)
    )


def apply_lora(
    model: ModelAdapter, settings: LoraSettings, *, seed: int = 0, verify: bool = True
) -> list[str]:
    """Inject LoRA layers into ``model.vision_module`` in place; return the adapted names.

    Every parameter of the model is frozen except the LoRA ones; A is initialised
    (Kaiming-uniform, from ``seed``, the global RNG untouched) and B = 0, so the outputs equal
    the base model's. With ``verify`` each adapted layer is proven to influence the output.
    """
    if not isinstance(settings, LoraSettings):
        raise TypeError(f"settings must be LoraSettings, got {type(settings).__name__}")
    vision = model.vision_module
    if has_lora(model):
        raise ValueError(f"model {model.name!r} already holds LoRA layers; merge them first")
    names = resolve_targets(vision, settings.targets)
    modules = dict(vision.named_modules())
    mha = [n for n in names if isinstance(modules[n], nn.MultiheadAttention)]
    if mha and settings.dropout > 0:
        raise ValueError(
            f"dropout={settings.dropout} cannot apply to nn.MultiheadAttention targets ({mha[0]}, "
            "...): their LoRA acts through merged weights. Use dropout=0 or other targets"
        )
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.dropout,
        target_modules="|".join(re.escape(n) for n in names),
        bias="none",
        init_lora_weights=True,
    )
    config._register_custom_module({nn.MultiheadAttention: ExactMultiheadAttention})
    model.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, vision, adapter_name=ADAPTER_NAME)
    device = next(p.device for p in model.parameters())
    for _, param in lora_parameters(model):
        param.data = param.data.to(device=device, dtype=torch.float32)
        param.requires_grad_(True)
    model.eval()
    if verify:
        verify_lora_effective(model)
    return names


def lora_parameters(model: ModelAdapter) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every LoRA weight of the vision tower, sorted by name."""
    params = [(n, p) for n, p in model.vision_module.named_parameters() if ".lora_" in n]
    return sorted(params, key=lambda item: item[0])


def set_lora_training(model: ModelAdapter, training: bool) -> None:
    """Keep the whole model in eval mode (BatchNorm frozen, base dropout off) and switch only
    the LoRA dropout layers to training mode when ``training``."""
    model.eval()
    if training:
        for name, sub in model.vision_module.named_modules():
            if isinstance(sub, nn.Dropout) and ".lora_dropout." in f".{name}":
                sub.train()


def verify_lora_effective(model: ModelAdapter) -> None:
    """Raise InertTargetError unless every LoRA layer changes the image embedding.

    One fp32 forward/backward on random pixels: the gradient of a random projection of the
    output w.r.t. each layer's ``lora_B`` is non-zero exactly when the layer's update reaches
    the output (B = 0 at initialisation, so the gradient is the first-order effect of any B).
    """
    params = [(n, p) for n, p in lora_parameters(model) if ".lora_B." in n]
    if not params:
        raise InertTargetError("the model has no LoRA layers to verify")
    size = model.preprocess.size
    device = params[0][1].device
    was_training = [m.training for m in model.modules()]
    model.eval()
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn((2, 3, size, size), generator=generator).to(device)
    with torch.enable_grad(), torch.autocast(device.type, enabled=False):
        out = model.encode_image(pixels).float()
        weights = torch.randn(out.shape, generator=generator).to(device)
        grads = torch.autograd.grad(
            (out * weights).sum(), [p for _, p in params], allow_unused=True
        )
    for module, flag in zip(model.modules(), was_training, strict=True):
        module.training = flag
    pairs = [(n.split(".lora_B.")[0], g) for (n, _), g in zip(params, grads, strict=True)]
    unused = sorted({n for n, g in pairs if g is None})
    zero = sorted({n for n, g in pairs if g is not None and not bool(torch.any(g != 0))})
    problems = []
    if unused:
        problems.append(
            f"{', '.join(unused)} never reach the output (the layer's forward is not called: its "
            "weight is used functionally, or its output is discarded)"
        )
    if zero:
        problems.append(
            f"{', '.join(zero)} reach the output only through frozen zero weights (e.g. a "
            "zero-initialised BatchNorm scale in a randomly initialised ResNet), so training "
            "them cannot change it"
        )
    if problems:
        raise InertTargetError(
            f"LoRA targets of {model.name!r} are inert: {'; '.join(problems)}. Choose other targets"
        )


def _peft_state_dict(vision: nn.Module) -> dict[str, Tensor]:
    if not hasattr(vision, "peft_config"):
        raise ValueError("the vision tower holds no LoRA adapter")
    return get_peft_model_state_dict(vision, adapter_name=ADAPTER_NAME, save_embedding_layers=False)


def lora_state_dict(model: ModelAdapter) -> dict[str, Tensor]:
    """The adapter weights only (peft key names, e.g. ``trunk.blocks.0.attn.qkv.lora_A.weight``),
    as contiguous CPU float32 copies."""
    state = _peft_state_dict(model.vision_module)
    return {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in state.items()}


def load_lora_state_dict(model: ModelAdapter, state: Mapping[str, Tensor]) -> None:
    """Set the adapter weights from ``state`` (as written by :func:`lora_state_dict`), strictly:
    every key must be present with the right shape, and no other key may appear."""
    expected = _peft_state_dict(model.vision_module)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"adapter weights do not fit the model's LoRA layers: missing {missing[:4]}"
            f"{' ...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
            f"{' ...' if len(unexpected) > 4 else ''}"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"adapter weight {key} has shape {tuple(value.shape)}, the model's LoRA layer "
                f"expects {tuple(expected[key].shape)} (different rank or base model?)"
            )
    result = set_peft_model_state_dict(model.vision_module, dict(state), adapter_name=ADAPTER_NAME)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"peft did not use adapter keys {result.unexpected_keys[:4]}")


def merge_lora(model: ModelAdapter) -> None:
    """Fold every LoRA update into its base weight and remove the LoRA layers (peft's
    merge-and-unload, layer by layer); the model keeps its outputs up to float rounding."""
    vision = model.vision_module
    layers = list(_lora_layers(vision))
    if not layers:
        raise ValueError(f"model {model.name!r} holds no LoRA layers to merge")
    for name, layer in layers:
        if isinstance(layer.get_base_layer(), nn.MultiheadAttention):
            base = layer.unload_and_optionally_merge_module(
                merge=True, safe_merge=True, adapter_names=None
            )
        else:
            layer.merge(safe_merge=True)
            base = layer.get_base_layer()
        parent_name, _, child = name.rpartition(".")
        parent = vision.get_submodule(parent_name) if parent_name else vision
        setattr(parent, child, base)
    if hasattr(vision, "peft_config"):
        del vision.peft_config
    model.requires_grad_(False)
    model.eval()


def tensors_sha256(state: Mapping[str, Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes of ``state`` (sorted by name)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        header = json.dumps([key, str(tensor.dtype), list(tensor.shape)])
        digest.update(header.encode("utf-8"))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def vision_fingerprint(model: ModelAdapter) -> str:
    """sha256 of the vision tower's weights and buffers (before LoRA is injected): identifies
    the exact base an adapter was trained on, random initialisations included."""
    if has_lora(model):
        raise ValueError("fingerprint the base model before LoRA layers are injected")
    return tensors_sha256(model.vision_module.state_dict())
