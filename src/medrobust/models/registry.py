"""``create_model``: one entry point for every model, like open_clip's factory or timm's.

Names:

- registry names (``list_models()``), each described by ``configs/<name>.json``: architecture,
  published weights, preprocessing, tokenizer, templates, licence and a ``tiny`` override;
- ``open_clip:ARCH/TAG`` (open_clip's pretrained table), ``hf-hub:REPO`` (an open_clip model on
  the Hugging Face Hub), ``hf:REPO`` (a transformers CLIP/SigLIP repository);
- a local folder: one written by :func:`save_model`, an open_clip folder
  (``open_clip_config.json`` + weights) or a transformers folder (``config.json`` + weights).

``pretrained=False`` builds the same architecture with random weights, offline; ``tiny=True``
builds the small config of the same family used by the tests.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from . import hf, medclip, openclip
from .base import ClipBpeTokenizer, HFTextTokenizer, ImagePreprocess, ModelAdapter, ModelInfo
from .prompts import resolve_templates
from .weights import (
    RANDOM_INIT,
    WeightsSource,
    WeightsUnavailableError,
    fetch_weights,
    hub_offline_if_unreachable,
    save_state_dict,
    sha256_files,
)

__all__ = ["create_model", "list_models", "model_spec", "save_model", "tiny_wordpiece_tokenizer"]

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
SAVED_SPEC = "medrobust_model.json"
SAVED_WEIGHTS = "model.safetensors"
_FAMILIES: dict[str, tuple[ModuleType, type[ModelAdapter]]] = {
    openclip.FAMILY: (openclip, openclip.OpenClipAdapter),
    hf.FAMILY: (hf, hf.HFClipAdapter),
    medclip.FAMILY: (medclip, medclip.MedCLIPAdapter),
}
_announced: set[str] = set()


def list_models() -> list[str]:
    """Registry names (each has a config in ``configs/``); generic schemes are listed in the docs."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: nested dicts merge, anything else in ``override`` replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _unknown_name(name: str) -> ValueError:
    return ValueError(
        f"unknown model {name!r}. Known names: {', '.join(list_models())}; or 'open_clip:ARCH/TAG', "
        "'hf-hub:REPO' (open_clip format), 'hf:REPO' (transformers CLIP/SigLIP) or a local folder"
    )


def model_spec(name: str) -> dict[str, Any]:
    """The registry config of ``name`` (a copy), e.g. to inspect its architecture or weights."""
    path = CONFIG_DIR / f"{name}.json"
    if "/" in name or not path.is_file():
        raise _unknown_name(name)
    spec = json.loads(path.read_text(encoding="utf-8"))
    spec["name"] = name
    return spec


def _folder_spec(folder: Path) -> tuple[dict[str, Any], Path]:
    """Spec and weights path of a local model folder (medrobust, open_clip or transformers)."""
    if (folder / SAVED_SPEC).is_file():
        spec = json.loads((folder / SAVED_SPEC).read_text(encoding="utf-8"))
        return spec, folder / SAVED_WEIGHTS
    name = str(folder)
    if (folder / "open_clip_config.json").is_file():
        config = json.loads((folder / "open_clip_config.json").read_text(encoding="utf-8"))
        model_cfg = config.get("model_cfg", config)
        spec = {
            "family": openclip.FAMILY,
            "name": name,
            "architecture": {"model_cfg": model_cfg},
            "preprocess": openclip._preprocess_from(
                config.get("preprocess_cfg", {}), openclip._image_size(model_cfg)
            ),
            "tokenizer": openclip._tokenizer_for(model_cfg, f"local-dir:{folder}"),
            "templates": "clip",
            "licence": f"Local open_clip model at {folder}; licence unknown.",
        }
        return spec, folder
    if (folder / "config.json").is_file():
        spec = hf.hub_spec("local", name, None, pretrained=True)
        spec["licence"] = f"Local transformers model at {folder}; licence unknown."
        return hf.adopt_folder(spec, folder), folder
    raise ValueError(
        f"{folder} is not a model folder: expected {SAVED_SPEC}, open_clip_config.json or config.json"
    )


def _resolve(
    name: str, pretrained: bool, cache_dir: Path | None
) -> tuple[dict[str, Any], Path, Path | None]:
    """(spec, base folder for relative paths, local weights path or None) of a model name."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"model name must be a non-empty string, got {name!r}")
    if name.startswith("open_clip:"):
        arch, _, tag = name[len("open_clip:") :].partition("/")
        return openclip.tag_spec(arch, tag or None, name), CONFIG_DIR, None
    if name.startswith("hf-hub:"):
        return openclip.hub_spec(name[len("hf-hub:") :], name, cache_dir), CONFIG_DIR, None
    if name.startswith("hf:"):
        return hf.hub_spec(name[len("hf:") :], name, cache_dir, pretrained), CONFIG_DIR, None
    path = Path(name).expanduser()
    if path.is_dir():
        spec, weights = _folder_spec(path)
        return spec, path, weights
    return model_spec(name), CONFIG_DIR, None


def tiny_wordpiece_tokenizer(context_length: int) -> HFTextTokenizer:
    """A BERT word-piece tokenizer over the small built-in vocabulary (tests, random weights).

    Not a substitute for a model's real tokenizer: only its ids fit the tiny text configs.
    """
    from transformers import BertTokenizer

    words = json.loads((CONFIG_DIR / "text" / "tiny_vocab.json").read_text(encoding="utf-8"))
    vocab = {w: i for i, w in enumerate(words)}
    return HFTextTokenizer(
        BertTokenizer(vocab=vocab, do_lower_case=True), context_length, source="wordpiece_tiny"
    )


def _hf_tokenizer(
    cfg: Mapping[str, Any], base_dir: Path, cache_dir: Path | None
) -> HFTextTokenizer:
    from transformers import AutoTokenizer

    source = openclip._resolve_path(str(cfg["source"]), base_dir)
    hub_cache = str(cache_dir / "hf") if cache_dir is not None else None
    local = Path(source).exists()
    with contextlib.nullcontext() if local else hub_offline_if_unreachable():
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, cache_dir=hub_cache)
        except Exception as exc:
            raise WeightsUnavailableError(
                f"tokenizer '{source}' is not cached and cannot be downloaded ({exc}). Run once "
                "with network access, or save it with tokenizer.save_pretrained(folder) and pass "
                "config_override={'tokenizer': {'source': folder}}"
            ) from exc
    return HFTextTokenizer(tokenizer, cfg["context_length"], source=source, clean=cfg.get("clean"))


class _OpenClipTokenizer:
    """open_clip's own tokenizer of a model name (generic open_clip models with an HF text
    tokenizer). open_clip text towers derive their own masks: ``attention_mask`` is all ones."""

    def __init__(self, source: str, context_length: int) -> None:
        import open_clip

        with hub_offline_if_unreachable():
            try:
                self._tok = open_clip.get_tokenizer(source, context_length=context_length)
            except Exception as exc:
                raise WeightsUnavailableError(
                    f"open_clip tokenizer of '{source}' is not cached and cannot be downloaded "
                    f"({exc}); run once with network access"
                ) from exc
        self.source = source
        self.context_length = int(context_length)

    def __call__(self, texts: Any) -> dict[str, torch.Tensor]:
        ids = self._tok(list(texts)).long()
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def save(self, folder: Path) -> dict[str, Any]:
        return {"kind": "open_clip", "source": self.source, "context_length": self.context_length}


def _build_tokenizer(
    cfg: Mapping[str, Any], base_dir: Path, cache_dir: Path | None, random_weights: bool
) -> Any:
    kind = cfg.get("kind")
    context = int(cfg.get("context_length", 77))
    if kind == "clip_bpe":
        return ClipBpeTokenizer(context)
    if kind == "wordpiece_tiny":
        return tiny_wordpiece_tokenizer(context)
    if kind not in ("hf", "open_clip"):
        raise ValueError(
            f"unknown tokenizer kind {kind!r}; allowed: clip_bpe, wordpiece_tiny, open_clip, hf"
        )
    try:
        if kind == "hf":
            return _hf_tokenizer(cfg, base_dir, cache_dir)
        return _OpenClipTokenizer(cfg["source"], context)
    except WeightsUnavailableError:
        if not random_weights:
            raise
        logger.warning(
            "tokenizer %s unavailable offline; random weights use the built-in word-piece "
            "vocabulary instead (token ids differ from the real tokenizer's)",
            cfg["source"],
        )
        return tiny_wordpiece_tokenizer(context)


def _announce(info: ModelInfo) -> None:
    """Show a model's licence (and caveats) the first time it is loaded in this process."""
    if info.name in _announced:
        return
    _announced.add(info.name)
    logger.warning("model %s: licence: %s", info.name, info.licence)
    if info.notes:
        logger.warning("model %s: NOTE: %s", info.name, info.notes)


def _final_spec(
    name: str, spec: dict[str, Any], tiny: bool, config_override: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The model's config with its tiny variant and the caller's overrides merged in."""
    spec.setdefault("name", name)
    if tiny:
        if "tiny" not in spec:
            raise ValueError(f"model {name!r} has no tiny config")
        spec = _merge(spec, spec["tiny"])
    spec.pop("tiny", None)
    if config_override:
        spec = _merge(spec, config_override)
    if spec.get("family") not in _FAMILIES:
        raise ValueError(
            f"unknown model family {spec.get('family')!r}; allowed: {sorted(_FAMILIES)}"
        )
    return spec


def _locate_weights(
    spec: dict[str, Any], local: Path | None, pretrained: bool, cache: Path | None
) -> tuple[dict[str, Any], Path | None, str | None]:
    """``(spec, weights path, weights id)``: a local file or folder, else the published
    weights (fetched into the cache), else none (random weights)."""
    if local is not None:
        if not local.exists():
            raise FileNotFoundError(f"weights {local} do not exist")
        return spec, local, str(local.resolve())
    if not pretrained:
        return spec, None, None
    source = WeightsSource.from_dict(spec["weights"])
    hub_repo = spec["architecture"].get("hub_config") if "architecture" in spec else None
    if hub_repo:
        spec = openclip.adopt_hub_config(spec, hub_repo, spec["name"], cache)
    return spec, fetch_weights(spec["name"], source, cache)[0], source.weights_id


def create_model(
    name: str,
    pretrained: bool = True,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    config_override: Mapping[str, Any] | None = None,
    *,
    tiny: bool = False,
    weights: str | Path | None = None,
    seed: int = 0,
) -> ModelAdapter:
    """Build a model adapter in eval mode on ``device``.

    Args:
        name: a registry name, ``open_clip:ARCH/TAG``, ``hf-hub:REPO``, ``hf:REPO`` or a folder.
        pretrained: load the published weights (fetched into the cache on first use); False
            builds the same architecture with random weights (seeded by ``seed``), offline.
        cache_dir: where downloads are cached (default ``$MEDROBUST_MODELS`` or the user cache;
            Hugging Face files go to ``cache_dir/hf`` or the default Hugging Face cache).
        config_override: merged (recursively) into the model's config, e.g.
            ``{'preprocess': {'size': 256}}`` or ``{'tokenizer': {'source': '/local/tok'}}``.
        tiny: build the family's small test config (random weights unless ``weights`` is given).
        weights: a local weight file or folder used instead of the published source.
        seed: seed of the random initialisation (the global RNG state is left untouched).

    Raises:
        ValueError: unknown name (the message lists the known ones) or inconsistent arguments.
        WeightsUnavailableError: published weights neither cached nor downloadable; the message
            names the weights, their source and how to point the tool at a local copy.
        WeightsMismatchError: weights that do not fit the architecture.
    """
    if weights is not None and not pretrained:
        raise ValueError("weights=... loads weights; it cannot be combined with pretrained=False")
    if tiny and pretrained and weights is None:
        raise ValueError(
            "published weights do not fit a tiny config: use tiny=True with pretrained=False "
            "(or pass weights=...)"
        )
    cache = Path(cache_dir).expanduser() if cache_dir is not None else None
    spec, base_dir, local_weights = _resolve(name, pretrained, cache)
    spec = _final_spec(name, spec, tiny, config_override)
    family, adapter_cls = _FAMILIES[spec["family"]]
    if weights is not None:
        local_weights = Path(weights).expanduser()
    elif not pretrained:
        local_weights = None
    spec, weights_path, weights_id = _locate_weights(spec, local_weights, pretrained, cache)
    if weights_path is None:
        weights_id = f"{RANDOM_INIT}(seed={seed})"
    if weights_path is not None and weights_path.is_dir() and family is hf:
        spec = hf.adopt_folder(spec, weights_path)

    tokenizer = _build_tokenizer(spec["tokenizer"], base_dir, cache, weights_path is None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = family.build_module(spec, base_dir)
    weights_hash = RANDOM_INIT
    if weights_path is not None:
        weights_hash = sha256_files(family.load_into(module, spec, weights_path))
    info = ModelInfo(
        name=spec["name"],
        family=spec["family"],
        weights_id=weights_id,
        weights_hash=weights_hash,
        licence=spec.get("licence", ""),
        default_templates=resolve_templates(spec.get("templates", "clip")),
        notes=spec.get("notes", ""),
    )
    adapter = adapter_cls(
        module,
        info=info,
        preprocess=ImagePreprocess.from_dict(spec["preprocess"]),
        tokenizer=tokenizer,
        spec=spec,
    )
    adapter.to(device).eval()
    if weights_path is not None:
        _announce(info)
    return adapter


def save_model(model: ModelAdapter, folder: str | Path) -> Path:
    """Write ``model`` (config, preprocessing, tokenizer, safetensors weights) to ``folder``.

    ``create_model(folder)`` rebuilds it with identical outputs. Returns the folder.
    """
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    spec = copy.deepcopy(model.spec)
    if spec["family"] == openclip.FAMILY:
        spec = openclip.export_files(spec, folder)
    spec["tokenizer"] = model.tokenizer.save(folder)
    spec["preprocess"] = model.preprocess.to_dict()
    spec["templates"] = list(model.default_templates)
    spec.pop("weights", None)
    spec["architecture"].pop("hub_config", None)
    spec["saved_from"] = {"weights_id": model.weights_id, "weights_hash": model.weights_hash}
    save_state_dict(model.model, folder / SAVED_WEIGHTS)
    (folder / SAVED_SPEC).write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return folder
