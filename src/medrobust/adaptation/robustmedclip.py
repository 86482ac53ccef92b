"""Import of the official RobustMedCLIP LoRA files (``lora_weights.safetensors``).

The official code (``LoRA_ViT_timm`` of BioMedIA-MBZUAI/RobustMedCLIP) wraps the fused ``qkv``
layer of each adapted block of BiomedCLIP's timm ViT (all blocks, in order, by default) and
appends two LoRA pairs per block to its lists: q, then v. Pair ``i`` is saved as ``w_a_{i:03d}``
(A, shape (r, dim)) and ``w_b_{i:03d}`` (B, shape (dim, r)); so block ``j``'s q pair is
``i = 2j`` and its v pair ``i = 2j + 1``. The update is added without scaling:
``q += B_q A_q x`` and ``v += B_v A_v x``. An optional ``fc_{in}in_{out}out`` key holds the
visual projection ``head.proj.weight`` (frozen there, so it must equal the base's). The
official K branch is trained but never saved, so it cannot be recovered from these files;
the imported model is what the published file defines.

In peft terms a block's two branches are one LoRA on ``qkv`` of rank 2r with alpha 2r
(scaling 1): ``A = [A_q; A_v]`` and ``B = [[B_q, 0], [0, 0], [0, B_v]]`` - exactly the same
function. :func:`convert_robustmedclip` writes that as a medrobust adapter folder, which
``load_adapted_model`` / ``medrobust eval --adapter`` then use like any trained adapter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from medrobust.models import ModelAdapter, WeightsMismatchError
from medrobust.models.weights import read_safetensors

from .._files import file_sha256
from .checkpoint import ADAPTER_CONFIG, base_source, prepare_base, save_adapter
from .lora import (
    LoraSettings,
    apply_lora,
    detect_architecture,
    load_lora_state_dict,
    vision_fingerprint,
)

__all__ = ["RobustMedClipLora", "convert_robustmedclip", "read_robustmedclip_lora"]

_PAIR_KEY = re.compile(r"w_(?P<ab>[ab])_(?P<index>\d{3,})")
_FC_KEY = re.compile(r"fc_(?P<fan_in>\d+)in_(?P<fan_out>\d+)out")


@dataclass(frozen=True)
class RobustMedClipLora:
    """The contents of an official LoRA file: ``pairs[i] = (A_i, B_i)`` in file order."""

    pairs: tuple[tuple[Tensor, Tensor], ...]
    projection: Tensor | None
    rank: int
    dim: int
    sha256: str
    path: str

    @property
    def blocks(self) -> int:
        """Number of adapted blocks (two pairs, q and v, per block)."""
        return len(self.pairs) // 2


def read_robustmedclip_lora(path: str | Path) -> RobustMedClipLora:
    """Read and validate an official ``lora_weights.safetensors`` (safetensors only, no pickle).

    Raises ValueError for unknown keys, gaps in the numbering, an odd number of pairs (q and v
    come together) or inconsistent shapes.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"RobustMedCLIP LoRA file not found: {file}")
    a: dict[int, Tensor] = {}
    b: dict[int, Tensor] = {}
    projection = None
    for key, tensor in read_safetensors(file, "RobustMedCLIP LoRA weights").items():
        pair, fc = _PAIR_KEY.fullmatch(key), _FC_KEY.fullmatch(key)
        if pair:
            target = a if pair["ab"] == "a" else b
            target[int(pair["index"])] = tensor.to(torch.float32)
        elif fc:
            projection = tensor.to(torch.float32)
        else:
            raise ValueError(
                f"{file}: unexpected key {key!r}; a RobustMedCLIP LoRA file holds only "
                "w_a_XXX, w_b_XXX and fc_<in>in_<out>out"
            )
    n = len(a)
    if n == 0 or sorted(a) != list(range(n)) or sorted(b) != list(range(n)):
        raise ValueError(
            f"{file}: expected keys w_a_000..w_a_{n - 1:03d} and w_b_000..w_b_{n - 1:03d} without "
            f"gaps, found A indices {sorted(a)[:6]}... and B indices {sorted(b)[:6]}..."
        )
    if n % 2:
        raise ValueError(f"{file}: {n} LoRA pairs; the official format stores q and v per block")
    rank, dim = a[0].shape
    for i in range(n):
        if a[i].shape != (rank, dim) or b[i].shape != (dim, rank):
            raise ValueError(
                f"{file}: pair {i} has A {tuple(a[i].shape)} and B {tuple(b[i].shape)}; "
                f"expected A ({rank}, {dim}) and B ({dim}, {rank}) as pair 0"
            )
    return RobustMedClipLora(
        pairs=tuple((a[i], b[i]) for i in range(n)),
        projection=projection,
        rank=int(rank),
        dim=int(dim),
        sha256=file_sha256(file),
        path=str(file.resolve()),
    )


def _peft_state(lora: RobustMedClipLora, blocks: Sequence[int]) -> dict[str, Tensor]:
    """The file's q/v branches as one rank-2r LoRA per fused qkv layer (peft key names)."""
    r, dim = lora.rank, lora.dim
    state: dict[str, Tensor] = {}
    for j, block in enumerate(blocks):
        (a_q, b_q), (a_v, b_v) = lora.pairs[2 * j], lora.pairs[2 * j + 1]
        big_b = torch.zeros(3 * dim, 2 * r)
        big_b[:dim, :r] = b_q
        big_b[2 * dim :, r:] = b_v
        prefix = f"trunk.blocks.{block}.attn.qkv"
        state[f"{prefix}.lora_A.weight"] = torch.cat([a_q, a_v]).contiguous()
        state[f"{prefix}.lora_B.weight"] = big_b
    return state


def _check_base(model: ModelAdapter, lora: RobustMedClipLora, blocks: Sequence[int]) -> None:
    vision = model.vision_module
    arch = detect_architecture(vision)
    if arch is None or arch.name != "timm-vit":
        raise ValueError(
            f"RobustMedCLIP adapters fit BiomedCLIP's timm ViT; {model.name!r} has a "
            f"{arch.name if arch else type(vision).__name__} vision tower"
        )
    n_blocks = len(vision.trunk.blocks)
    if len(set(blocks)) != len(blocks) or any(not 0 <= b < n_blocks for b in blocks):
        raise ValueError(f"blocks must be distinct indices in [0, {n_blocks}), got {list(blocks)}")
    qkv = vision.trunk.blocks[blocks[0]].attn.qkv
    if (qkv.in_features, qkv.out_features) != (lora.dim, 3 * lora.dim):
        raise WeightsMismatchError(
            f"the file's LoRA width {lora.dim} does not fit {model.name!r}'s qkv layers "
            f"({qkv.in_features} -> {qkv.out_features})"
        )
    if lora.projection is not None:
        head = vision.head.proj.weight.detach().to("cpu", torch.float32)
        if head.shape != lora.projection.shape or not torch.allclose(
            head, lora.projection, rtol=0.0, atol=1e-6
        ):
            raise WeightsMismatchError(
                f"the file's visual projection differs from {model.name!r}'s head.proj: the "
                "adapter was trained on other base weights (the official code keeps it frozen)"
            )


def convert_robustmedclip(
    path: str | Path,
    out_dir: str | Path,
    *,
    base_model: str | ModelAdapter = "biomedclip",
    model_kwargs: Mapping[str, Any] | None = None,
    blocks: Sequence[int] | None = None,
    label: str | None = None,
) -> Path:
    """Convert an official RobustMedCLIP LoRA file into a medrobust adapter folder.

    Args:
        path: the official ``lora_weights.safetensors`` (e.g. from ``exp-rank-16/``).
        out_dir: the adapter folder to write (must not hold an adapter yet).
        base_model: the BiomedCLIP the file was trained on (name or ready model, not modified).
        model_kwargs: passed to ``create_model`` with a name.
        blocks: the adapted block indices in file order, when the file adapts fewer blocks
            than the model has (the official ``lora_layer`` option); default all blocks.
        label: the adapter's label in model names (default: the folder name).

    Returns the folder; ``load_adapted_model(folder)`` gives the RobustMedCLIP model.
    """
    out = Path(out_dir).expanduser()
    if (out / ADAPTER_CONFIG).exists():
        raise FileExistsError(f"{out} already holds an adapter; choose another out_dir")
    lora = read_robustmedclip_lora(path)
    kwargs = dict(model_kwargs or {})
    model = prepare_base(base_model, torch.device("cpu"), kwargs)
    if blocks is None:
        n_blocks = len(getattr(getattr(model.vision_module, "trunk", None), "blocks", ()))
        if lora.blocks != n_blocks:
            raise ValueError(
                f"the file adapts {lora.blocks} blocks but {model.name!r} has {n_blocks}: pass "
                "blocks= (the adapted block indices, in order)"
            )
        blocks = range(n_blocks)
    blocks = [int(b) for b in blocks]
    if len(blocks) != lora.blocks:
        raise ValueError(f"blocks lists {len(blocks)} indices; the file adapts {lora.blocks}")
    _check_base(model, lora, blocks)
    fingerprint = vision_fingerprint(model)
    settings = LoraSettings(
        rank=2 * lora.rank,
        alpha=float(2 * lora.rank),
        targets=tuple(f"trunk.blocks.{b}.attn.qkv" for b in blocks),
    )
    modules = apply_lora(model, settings)
    load_lora_state_dict(model, _peft_state(lora, blocks))
    config = {
        "label": label or out.name,
        "source": {
            "kind": "robustmedclip",
            "file": lora.path,
            "sha256": lora.sha256,
            "rank_per_branch": lora.rank,
            "blocks": blocks,
            "branches": ["q", "v"],
            "note": "official K branch is not stored in lora_weights.safetensors",
        },
        "base": {
            "name": model.name,
            "family": model.family,
            "weights_id": model.weights_id,
            "weights_hash": model.weights_hash,
            "vision_sha256": fingerprint,
            "source": base_source(base_model, kwargs),
        },
        "lora": {
            **settings.to_dict(),
            "lora_alpha": settings.lora_alpha,
            "scaling": settings.scaling,
            "architecture": "timm-vit",
            "modules": modules,
        },
        "complete": True,
    }
    return save_adapter(model, out, config)
