"""Faster inference kernels for a model's image tower: fused attention, fused QuickGELU and
``torch.compile``, swapped in place without changing a single state-dict key.

* :class:`FusedMultiheadAttention` is an ``nn.MultiheadAttention`` (the same parameters and
  keys; the module's class is swapped) whose forward is one packed in-projection,
  ``F.scaled_dot_product_attention`` and the out-projection, batch-first without the transposes
  and copies of ``F.multi_head_attention_forward`` (the path ``nn.MultiheadAttention`` takes
  under autocast or with gradients). It reads ``in_proj_weight`` and ``out_proj.weight`` from
  the module at call time, so the LoRA layer of :mod:`medrobust.adaptation.lora` (which sets
  ``W + delta`` as those attributes for the call) and peft's ``isinstance`` checks keep working,
  and adapters trained on the plain module load unchanged. open_clip 3.x uses
  ``nn.MultiheadAttention`` in its ViT blocks; newer open_clip code and its ``Attention`` class
  (raw q/k/v parameters) already call ``scaled_dot_product_attention`` and are left as they are,
  as are timm attention with ``fused_attn`` on (BiomedCLIP) and transformers' ``sdpa`` attention
  (timm's ``fused_attn`` is switched on and a CLIP/SigLIP tower built with ``eager`` attention is
  switched to ``sdpa`` where they are off).
* :class:`FusedQuickGELU` replaces open_clip's and transformers' QuickGELU
  (``x * sigmoid(1.702 x)``, three elementwise kernels) by one ``torch.compile``'d elementwise
  kernel (Triton on CUDA, C++ on CPU). Where that kernel cannot be built (no compiler), the
  activation is left as it is and the reason is reported.
* :func:`compile_image_encoder` applies ``torch.compile`` to the image tower in place
  (``nn.Module.compile``, keys unchanged), with the inductor cache in the user cache
  (``$MEDROBUST_CACHE/inductor``), proven by one warm-up batch; if compiling fails it is undone
  and the reason reported in one line.

:func:`prepare_for_inference` applies a ``kernels`` choice (``auto``, ``fused``, ``plain``) and
``compile`` to an adapter and returns what it did, for the run's record.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._cache import cache_dir
from ..runtime import KERNELS

__all__ = [
    "KERNELS",
    "EngineSettings",
    "FusedMultiheadAttention",
    "FusedQuickGELU",
    "compile_image_encoder",
    "fuse_model",
    "inductor_cache_dir",
    "prepare_for_inference",
    "resolve_kernels",
]

logger = logging.getLogger(__name__)

_QUICK_GELU_SCALE = 1.702
# transformers vision towers whose attention reads config._attn_implementation at call time
_SDPA_VISION_TYPES = ("clip_vision_model", "siglip_vision_model")


class FusedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` computed with ``scaled_dot_product_attention`` (module docstring).

    Self-attention (query is key is value) and attention whose key is its value (pooling
    heads) with equal embedding sizes are fused; anything else (``need_weights``, separate
    k/v sizes, ``bias_k``, ``add_zero_attn``, unbatched input) runs the parent's forward.
    """

    def _fusable(self, query: Tensor, key: Tensor, value: Tensor, need_weights: bool) -> bool:
        return (
            not need_weights
            and key is value
            and query.dim() == 3
            and self._qkv_same_embed_dim
            and self.bias_k is None
            and not self.add_zero_attn
        )

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        if not self._fusable(query, key, value, need_weights) or (is_causal and attn_mask is None):
            return super().forward(query, key, value, key_padding_mask, need_weights, attn_mask,
                                   average_attn_weights, is_causal)
        self_attention = query is key
        if not self.batch_first:
            query, key = query.transpose(0, 1), key.transpose(0, 1)
        n, length, embed = query.shape
        heads = self.num_heads
        weight, bias = self.in_proj_weight, self.in_proj_bias
        if self_attention:
            qkv = F.linear(query, weight, bias).view(n, length, 3, heads, -1).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
        else:
            b_q, b_kv = (None, None) if bias is None else (bias[:embed], bias[embed:])
            q = F.linear(query, weight[:embed], b_q).view(n, length, heads, -1).transpose(1, 2)
            kv = F.linear(key, weight[embed:], b_kv).view(n, key.shape[1], 2, heads, -1)
            k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        mask = _attention_mask(attn_mask, key_padding_mask, n, heads, q.dtype)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        out = F.linear(out.transpose(1, 2).reshape(n, length, embed),
                       self.out_proj.weight, self.out_proj.bias)
        return (out if self.batch_first else out.transpose(0, 1)), None


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """An nn.MultiheadAttention mask (bool: True = not allowed; float: added) as a float mask."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
            mask, float("-inf")
        )
    return mask.to(dtype)


def _attention_mask(
    attn_mask: Tensor | None, key_padding_mask: Tensor | None, n: int, heads: int,
    dtype: torch.dtype,
) -> Tensor | None:
    """nn.MultiheadAttention's ``attn_mask`` ((L, S) or (N*H, L, S)) and ``key_padding_mask``
    ((N, S)) as one additive mask broadcastable to SDPA's (N, H, L, S)."""
    mask = None
    if attn_mask is not None:
        mask = _additive(attn_mask, dtype)
        if mask.dim() == 3:
            mask = mask.view(n, heads, *mask.shape[1:])
    if key_padding_mask is not None:
        padding = _additive(key_padding_mask, dtype).view(n, 1, 1, -1)
        mask = padding if mask is None else mask + padding
    return mask


def _quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(_QUICK_GELU_SCALE * x)


_quick_gelu_kernels: dict[str, tuple[Callable[[Tensor], Tensor] | None, str]] = {}


def _quick_gelu_kernel(device: torch.device) -> tuple[Callable[[Tensor], Tensor] | None, str]:
    """The compiled one-kernel QuickGELU for ``device``'s type, or None and why not (probed
    once per device type on a small tensor, so a missing compiler shows here, not mid-run)."""
    if device.type not in _quick_gelu_kernels:
        use_inductor_cache()
        kernel = torch.compile(_quick_gelu, dynamic=True, fullgraph=True)
        try:
            probe = torch.linspace(-4.0, 4.0, 64, device=device)
            if not torch.allclose(kernel(probe), _quick_gelu(probe), rtol=1e-5, atol=1e-6):
                raise RuntimeError("the compiled kernel disagrees with x * sigmoid(1.702 x)")
            _quick_gelu_kernels[device.type] = (kernel, "compiled")
        except Exception as exc:  # any compiler/toolchain failure: keep the eager activation
            _quick_gelu_kernels[device.type] = (None, _reason(exc))
    return _quick_gelu_kernels[device.type]


class FusedQuickGELU(nn.Module):
    """QuickGELU, ``x * sigmoid(1.702 x)``, as one compiled elementwise kernel (the kernel
    :func:`fuse_model` built for the input's device type; the eager formula on any other)."""

    def forward(self, x: Tensor) -> Tensor:
        kernel = _quick_gelu_kernels.get(x.device.type, (None, ""))[0]
        return _quick_gelu(x) if kernel is None else kernel(x)


def _quick_gelu_types() -> tuple[type[nn.Module], ...]:
    types: list[type[nn.Module]] = []
    with contextlib.suppress(ImportError):
        from open_clip.transformer import QuickGELU

        types.append(QuickGELU)
    with contextlib.suppress(ImportError):
        from transformers.activations import QuickGELUActivation

        types.append(QuickGELUActivation)
    return tuple(types)


def _count(done: dict[str, int], what: str) -> None:
    done[what] = done.get(what, 0) + 1


def _asks_for_weights(module: nn.Module) -> dict[int, str]:
    """id -> owner name of the nn.MultiheadAttention layers inside transformers modules: these
    call it with the default ``need_weights=True`` (SigLIP's pooling head), so fusing is moot."""
    return {id(child): type(parent).__name__ for parent in module.modules()
            if type(parent).__module__.startswith("transformers.")
            for child in parent.children() if type(child) is nn.MultiheadAttention}


def _fuse_attention(module: nn.Module, done: dict[str, int]) -> None:
    moot = _asks_for_weights(module)
    for sub in module.modules():
        if id(sub) in moot:
            _count(done, f"nn.MultiheadAttention of {moot[id(sub)]} left as is (asks for the "
                         "attention weights)")
        elif type(sub) is nn.MultiheadAttention:
            sub.__class__ = FusedMultiheadAttention
            _count(done, "nn.MultiheadAttention -> FusedMultiheadAttention")
        elif isinstance(sub, FusedMultiheadAttention):
            _count(done, "FusedMultiheadAttention (already)")
        elif type(sub).__module__.startswith("timm.") and isinstance(
            getattr(sub, "fused_attn", None), bool
        ):
            _count(done, f"timm {type(sub).__name__}: fused_attn "
                         f"{'(already)' if sub.fused_attn else 'switched on'}")
            sub.fused_attn = True
        elif type(sub).__module__.startswith("open_clip.") and type(sub).__name__ == "Attention":
            _count(done, "open_clip Attention (scaled_dot_product_attention already)")
    config = getattr(module, "config", None)
    implementation = getattr(config, "_attn_implementation", None)
    if implementation == "eager" and getattr(config, "model_type", "") in _SDPA_VISION_TYPES:
        config._attn_implementation = implementation = "sdpa"
        _count(done, "transformers attention: eager -> sdpa")
    elif implementation is not None:
        _count(done, f"transformers attention: {implementation}")


def _fuse_activation(module: nn.Module, done: dict[str, int], device: torch.device) -> None:
    types = _quick_gelu_types()
    targets = [(parent, name, child.training) for parent in module.modules()
               for name, child in parent.named_children() if type(child) in types]
    if not targets:
        return
    kernel, how = _quick_gelu_kernel(device)
    if kernel is None:
        _count(done, f"QuickGELU left as is (no compiled kernel: {how})")
        return
    for parent, name, training in targets:
        setattr(parent, name, FusedQuickGELU().train(training))
        _count(done, "QuickGELU -> FusedQuickGELU (one compiled kernel)")


def fuse_model(module: nn.Module, *, attention: bool = True, activation: bool = True) -> list[str]:
    """Swap ``module``'s attention and QuickGELU layers in place for fused ones (see the module
    docstring); return what was swapped or found already fused, as ``"<count> x <what>"``.

    Parameters and state-dict keys are unchanged; the result agrees with the plain forward
    within float tolerance (not bit for bit).
    """
    done: dict[str, int] = {}
    if attention:
        _fuse_attention(module, done)
    if activation:
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        _fuse_activation(module, done, device)
    return [f"{n} x {what}" for what, n in done.items()]


def resolve_kernels(kernels: str, device: torch.device | str, autocast: bool = False) -> str:
    """``fused`` or ``plain``: what ``kernels`` (one of :data:`KERNELS`) means on ``device``.

    ``plain``: the modules as the model was built; ``fused``: :func:`fuse_model`; ``auto``:
    fused on CUDA and under (bf16/fp16) ``autocast``, where ``nn.MultiheadAttention`` takes its
    slow path; plain for fp32 on the CPU, whose inference path torch already fuses (fusing
    measured no faster there, and plain keeps those results bit for bit: README, "Speed")."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
    if kernels != "auto":
        return kernels
    return "fused" if torch.device(device).type == "cuda" or autocast else "plain"


def inductor_cache_dir() -> str | None:
    """Where compiled kernels are cached: ``<medrobust cache>/inductor``, unless
    ``TORCHINDUCTOR_CACHE_DIR`` is set (then that) or the cache is off (torch's default)."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return os.environ["TORCHINDUCTOR_CACHE_DIR"]
    folder = cache_dir()
    return None if folder is None else str(folder / "inductor")


def use_inductor_cache() -> None:
    """Point torch's inductor (and Triton) cache at :func:`inductor_cache_dir`."""
    folder = inductor_cache_dir()
    if folder is not None:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", folder)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160] if text else ''}".rstrip(": ")


def _unmerged_adapter(tower: nn.Module) -> str | None:
    """The first module of ``tower`` that holds unmerged LoRA/peft layers, if any: their forward
    swaps weight attributes per call, which torch.compile cannot trace."""
    for name, sub in tower.named_modules():
        if type(sub).__module__.startswith("peft.") or isinstance(sub, _peft_layer_types()):
            return name or type(sub).__name__
    return None


def _peft_layer_types() -> tuple[type, ...]:
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return ()
    return (BaseTunerLayer,)


def compile_image_encoder(model: Any, example: Tensor, autocast_dtype: torch.dtype | None) -> str:
    """``torch.compile`` ``model.vision_module`` in place and run ``example`` (preprocessed
    pixels, a batch of the size the run uses) through ``model.encode_image`` under the run's
    autocast, so compiling happens now; return ``"compiled"``, or undo it and return why not.

    The batch dimension is compiled as dynamic, so a smaller last batch reuses the same code.
    A tower holding unmerged LoRA layers is not compiled (merge them: ``eval --merge``)."""
    use_inductor_cache()
    tower = model.vision_module
    if getattr(tower, "_compiled_call_impl", None) is not None:
        return "compiled"
    adapter = _unmerged_adapter(tower)
    if adapter is not None:
        return f"not compiled (unmerged LoRA layers, e.g. {adapter}: merge them to compile)"
    tower.compile()
    try:
        torch._dynamo.mark_dynamic(example, 0)
        with torch.inference_mode(), torch.autocast(
            example.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
        ):
            model.encode_image(example)
    except Exception as exc:  # a compiler/toolchain failure: the eager model still works
        tower._compiled_call_impl = None
        return f"not compiled ({_reason(exc)})"
    return "compiled"


@dataclass(frozen=True)
class EngineSettings:
    """How a model's forward runs (not part of a result's identity; recorded with a run)."""

    kernels: str = "auto"
    compile: bool = False

    def __post_init__(self) -> None:
        if self.kernels not in KERNELS:
            raise ValueError(f"kernels must be one of {', '.join(KERNELS)}, got {self.kernels!r}")


@dataclass
class EngineRecord:
    """What :func:`prepare_for_inference` did to one model."""

    kernels: str
    compile: str
    swapped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"kernels": self.kernels, "compile": self.compile, "swapped": list(self.swapped)}


def prepare_for_inference(
    model: Any, settings: EngineSettings, *, batch_size: int, autocast_dtype: torch.dtype | None,
) -> EngineRecord:
    """Apply ``settings`` to an adapter's image tower in place (fused kernels, then compile,
    warmed up on a batch of ``batch_size`` zero images); say what was done. A compile that
    fails is logged in one line and the model runs uncompiled."""
    kernels = resolve_kernels(settings.kernels, model.device, autocast_dtype is not None)
    swapped = fuse_model(model.vision_module) if kernels == "fused" else []
    compiled = "off"
    if settings.compile:
        size = model.preprocess.size
        example = torch.zeros((batch_size, 3, size, size), device=model.device)
        compiled = compile_image_encoder(model, example, autocast_dtype)
        if compiled != "compiled":
            logger.warning("model %s: --compile: %s; running without it", model.name, compiled)
    return EngineRecord(kernels, compiled, swapped)
