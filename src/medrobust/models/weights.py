"""Where published weights come from, how they are fetched and cached, and how they are loaded.

Every adapter has a real path (a Hugging Face Hub file or snapshot, a URL, or a file the user
downloaded) and an offline path (random weights). Fetching never hangs: the Hub host is probed
once with a short timeout, and where it cannot be reached the Hub libraries run in offline mode,
so a cached copy is used and a missing one raises :class:`WeightsUnavailableError` at once,
with a message naming the weights, where they come from and how to use a local copy.

State dicts are read with ``safetensors`` or ``torch.load(..., weights_only=True)`` only, and
loaded strictly: missing, unexpected or mis-shaped tensors raise :class:`WeightsMismatchError`
(a silently half-loaded model scores like a random one).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import socket
import threading
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from platformdirs import user_cache_dir
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .._files import file_sha256

__all__ = [
    "MODEL_CACHE_ENV",
    "OFFLINE_ENV",
    "WeightsMismatchError",
    "WeightsSource",
    "WeightsUnavailableError",
    "default_cache_dir",
    "extract_zip_member",
    "fetch_weights",
    "host_reachable",
    "hub_offline_if_unreachable",
    "load_state_dict_strict",
    "read_safetensors",
    "read_state_dict",
    "save_state_dict",
    "sha256_files",
]

logger = logging.getLogger(__name__)

MODEL_CACHE_ENV = "MEDROBUST_MODELS"
OFFLINE_ENV = "MEDROBUST_OFFLINE"
PROBE_TIMEOUT_S = 3.0
DOWNLOAD_TIMEOUT_S = 30.0
RANDOM_INIT = "random-init"
# Weights shipped inside the package (``package_file`` sources) live under this folder.
PACKAGE_DIR = Path(__file__).parent
# Deterministic buffers that some library versions store and others do not.
_IGNORABLE_BUFFERS = ("position_ids", "relative_position_index")


class WeightsUnavailableError(RuntimeError):
    """Published weights are neither cached nor downloadable (offline, gated, or manual)."""


class WeightsMismatchError(ValueError):
    """A state dict does not fit the architecture (missing, unexpected or mis-shaped tensors)."""


def default_cache_dir() -> Path:
    """``$MEDROBUST_MODELS`` if set, else the per-user cache folder ``.../medrobust/models``."""
    env = os.environ.get(MODEL_CACHE_ENV, "")
    return Path(env).expanduser() if env else Path(user_cache_dir("medrobust")) / "models"


WEIGHTS_KINDS = ("hf_file", "hf_snapshot", "url", "package_file", "manual")


@dataclass(frozen=True)
class WeightsSource:
    """Where one model's published weights live.

    kind: ``hf_file`` (one file of a Hub repo), ``hf_snapshot`` (a transformers repo: config,
    weights, tokenizer and processor files), ``url`` (a plain download, optionally a zip of
    which ``member`` is the state dict), ``package_file`` (a file shipped inside the package,
    ``filename`` relative to ``medrobust/models``) or ``manual`` (no stable download: the user
    fetches it).
    """

    kind: str
    repo: str = ""
    filename: str = ""
    url: str = ""
    member: str = ""
    homepage: str = ""

    def __post_init__(self) -> None:
        if self.kind not in WEIGHTS_KINDS:
            raise ValueError(
                f"unknown weights kind {self.kind!r}; allowed: {', '.join(WEIGHTS_KINDS)}"
            )
        if self.kind == "package_file" and not self.filename:
            raise ValueError("a package_file weights source needs 'filename'")

    @classmethod
    def from_dict(cls, d: Mapping[str, str]) -> WeightsSource:
        """Build from a model config's ``weights`` section."""
        unknown = set(d) - {"kind", "repo", "filename", "url", "member", "homepage"}
        if unknown:
            raise ValueError(f"unknown keys in weights section: {sorted(unknown)}")
        return cls(**d)

    @property
    def weights_id(self) -> str:
        """A short, stable identifier of the published weights (recorded with results)."""
        if self.kind == "hf_file":
            return f"hf-hub:{self.repo}/{self.filename}"
        if self.kind == "hf_snapshot":
            return f"hf-hub:{self.repo}"
        if self.kind == "url":
            return self.url + (f"#{self.member}" if self.member else "")
        if self.kind == "package_file":
            return f"package:medrobust/models/{self.filename}"
        return self.filename or self.homepage

    def describe(self) -> str:
        """Where the weights come from, in words (used in error messages)."""
        if self.kind == "hf_file":
            return f"file '{self.filename}' of https://huggingface.co/{self.repo}"
        if self.kind == "hf_snapshot":
            return f"the model repository https://huggingface.co/{self.repo}"
        if self.kind == "url":
            inner = f" (member '{self.member}' of the zip)" if self.member else ""
            return f"{self.url}{inner}"
        if self.kind == "package_file":
            return f"the file {PACKAGE_DIR / self.filename} shipped with medrobust"
        return f"a manual download from {self.homepage}"


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


_probe_cache: dict[str, bool] = {}


def host_reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds.

    The probe runs in a daemon thread so a hanging DNS lookup cannot block the caller;
    the answer is remembered per host for the life of the process. ``$MEDROBUST_OFFLINE=1``
    answers False without probing.
    """
    if _env_true(OFFLINE_ENV):
        return False
    parsed = urllib.parse.urlparse(url)
    host = parsed.hostname or ""
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    key = f"{host}:{port}"
    if key in _probe_cache:
        return _probe_cache[key]
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    reachable = bool(result and result[0])
    _probe_cache[key] = reachable
    return reachable


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


@contextlib.contextmanager
def hub_offline_if_unreachable() -> Iterator[bool]:
    """Run the Hub libraries offline (cache only, no retries) while the Hub is unreachable.

    Yields whether the Hub is reachable. huggingface_hub and transformers read
    ``huggingface_hub.constants.HF_HUB_OFFLINE`` at call time, so setting it here makes every
    Hub access inside the block (including those inside open_clip) use the cache or fail fast.
    """
    from huggingface_hub import constants

    already_offline = bool(constants.HF_HUB_OFFLINE)
    reachable = not already_offline and host_reachable(_hub_endpoint())
    saved = constants.HF_HUB_OFFLINE
    if not reachable:
        constants.HF_HUB_OFFLINE = True
    try:
        yield reachable
    finally:
        constants.HF_HUB_OFFLINE = saved


def _unavailable(
    model_name: str, source: WeightsSource, cache: Path | str | None, reason: str
) -> WeightsUnavailableError:
    options = []
    if source.kind == "package_file":
        options.append("reinstall medrobust with its package data (the file is part of it)")
        how_get = "train them again (`medrobust pretrain`)"
    elif source.kind != "manual":
        options.append(
            "run once with network access so they are cached "
            f"(cache_dir=... or ${MODEL_CACHE_ENV} / HF_HOME)"
        )
        how_get = f"download {source.describe()} yourself"
    else:
        how_get = f"download them from {source.homepage}"
    options.append(
        f"{how_get} and pass it: --weights {model_name}=PATH on the command line, "
        f"create_model('{model_name}', weights=PATH) in Python (PATH: the file or folder)"
    )
    options.append(
        "use --random-weights / pretrained=False for randomly initialised weights (tests only; "
        "scores are meaningless)"
    )
    where = ""
    if source.kind not in ("manual", "package_file"):
        where = f" (cache: {cache or 'the default Hugging Face cache'})"
    steps = "; ".join(f"({i}) {o}" for i, o in enumerate(options, 1))
    return WeightsUnavailableError(
        f"Pretrained weights for '{model_name}' are not available: {reason}.\n"
        f"  weights: {source.weights_id}\n"
        f"  source:  {source.describe()}{where}\n"
        f"To use them: {steps}."
    )


def _hub_cache(cache_dir: Path | None) -> str | None:
    return str(cache_dir / "hf") if cache_dir is not None else None


def fetch_weights(
    model_name: str, source: WeightsSource, cache_dir: Path | None = None
) -> list[Path]:
    """Local paths of the published weights, downloading them into the cache if needed.

    ``hf_file``, ``url`` and ``package_file`` (no download: the file ships with medrobust) give
    one state-dict file; ``hf_snapshot`` gives the snapshot folder. Raises :class:`WeightsUnavailableError` (fast) when they cannot be had.
    """
    if source.kind == "manual":
        raise _unavailable(model_name, source, cache_dir, "they have no direct download link")
    if source.kind == "package_file":
        path = PACKAGE_DIR / source.filename
        if not path.is_file():
            raise _unavailable(model_name, source, None, f"{path} is missing")
        return [path]
    if source.kind == "url":
        return [_fetch_url(model_name, source, cache_dir)]
    from huggingface_hub import snapshot_download

    hub_cache = _hub_cache(cache_dir)
    with hub_offline_if_unreachable() as online:
        reason = "they are not cached and the Hugging Face Hub cannot be reached (offline)"
        try:
            if source.kind == "hf_file":
                return [_hub_file(source.repo, source.filename, hub_cache)]
            folder = Path(
                snapshot_download(
                    source.repo, cache_dir=hub_cache, allow_patterns=_SNAPSHOT_PATTERNS
                )
            )
            if not _weight_files(folder):
                folder = Path(
                    snapshot_download(source.repo, cache_dir=hub_cache, allow_patterns=["*.bin"])
                )
        except Exception as exc:  # any Hub / network / auth error ends in one clear message
            if online:
                reason = f"the download failed ({type(exc).__name__}: {exc})"
            raise _unavailable(model_name, source, hub_cache, reason) from exc
    if not _weight_files(folder):  # e.g. only config.json was cached before
        raise _unavailable(model_name, source, hub_cache, f"{folder} holds no weight files")
    return [folder]


_SNAPSHOT_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors"]
_SAFE_ALTERNATIVES = {
    "open_clip_pytorch_model.bin": "open_clip_model.safetensors",
    "pytorch_model.bin": "model.safetensors",
}


def _hub_file(repo: str, filename: str, hub_cache: str | None) -> Path:
    """One Hub file, preferring its safetensors twin where the repository has one."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    safe = _SAFE_ALTERNATIVES.get(filename)
    if safe is not None:
        try:
            return Path(hf_hub_download(repo, safe, cache_dir=hub_cache))
        except EntryNotFoundError:
            pass  # no safetensors twin (or not cached): the named file
    return Path(hf_hub_download(repo, filename, cache_dir=hub_cache))


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    return files if files else sorted(folder.glob("*.bin"))


def _fetch_url(model_name: str, source: WeightsSource, cache_dir: Path | None) -> Path:
    root = (cache_dir or default_cache_dir()) / "url"
    stem = hashlib.sha256(source.url.encode()).hexdigest()[:16]
    folder = root / stem
    target = folder / Path(urllib.parse.urlparse(source.url).path).name
    if not target.is_file():
        if not host_reachable(source.url):
            raise _unavailable(
                model_name, source, folder, "they are not cached and the host cannot be reached"
            )
        folder.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(target.suffix + ".part")
        try:
            with (
                urllib.request.urlopen(source.url, timeout=DOWNLOAD_TIMEOUT_S) as response,
                open(partial, "wb") as out,
            ):
                shutil.copyfileobj(response, out, length=1 << 20)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise _unavailable(model_name, source, folder, f"the download failed ({exc})") from exc
        partial.replace(target)
    if not source.member:
        return target
    return extract_zip_member(target, source.member)


def extract_zip_member(archive: Path, member: str) -> Path:
    """Extract the zip member whose base name is ``member`` next to the archive (once)."""
    out = archive.parent / archive.stem / member
    if out.is_file():
        return out
    with zipfile.ZipFile(archive) as zf:
        names = [n for n in zf.namelist() if Path(n).name == member]
        if len(names) != 1:
            raise WeightsMismatchError(
                f"{archive} should hold exactly one '{member}', found {len(names)}: {names}"
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(names[0]) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    return out


def sha256_files(paths: Sequence[Path]) -> str:
    """sha256 of one file, or of the sorted ``name:sha256`` lines of several (a folder's)."""
    files: list[Path] = []
    for p in paths:
        files.extend(_weight_files(p) if p.is_dir() else [p])
    if not files:
        raise FileNotFoundError(f"no weight files among {[str(p) for p in paths]}")
    digests = []
    for f in files:
        digests.append((f.name, file_sha256(f)))
    if len(digests) == 1:
        return digests[0][1]
    lines = "\n".join(f"{n}:{d}" for n, d in sorted(digests))
    return hashlib.sha256(lines.encode()).hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a ``torch.save`` file (``weights_only=True``).

    A checkpoint dict holding ``state_dict`` is unwrapped and a DataParallel ``module.``
    prefix removed.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        state = read_safetensors(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise WeightsMismatchError(
                f"cannot read {path} safely with torch.load(weights_only=True) ({exc}); "
                "only plain tensor checkpoints (or .safetensors) are accepted"
            ) from exc
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise WeightsMismatchError(f"{path} does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def read_safetensors(path: str | Path, what: str = "weights") -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file; a damaged or foreign file is a clear error."""
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise WeightsMismatchError(
            f"{path} is not a readable .safetensors file of {what} ({exc}); "
            "download or write it again"
        ) from exc


def _ignorable(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in _IGNORABLE_BUFFERS


def load_state_dict_strict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``module``, raising :class:`WeightsMismatchError` on any misfit.

    Deterministic index buffers (``position_ids``, ``relative_position_index``) that one
    library version saves and another does not are tolerated.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not _ignorable(k)]
    unexpected = [k for k in state if k not in expected and not _ignorable(k)]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:

        def head(items: list[str]) -> str:
            more = f" ... (+{len(items) - 8} more)" if len(items) > 8 else ""
            return ", ".join(items[:8]) + more

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {head(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {head(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} with wrong shape: {head(shapes)}")
        raise WeightsMismatchError(
            f"weights {what} do not match the architecture: " + "; ".join(parts)
        )
    loadable = {k: v for k, v in state.items() if k in expected}
    module.load_state_dict(loadable, strict=False)


def save_state_dict(module: nn.Module, path: Path) -> None:
    """Write ``module``'s state dict as safetensors (tensors sharing storage are copied)."""
    seen: set[int] = set()
    tensors = {}
    for key, value in module.state_dict().items():
        t = value.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            t = t.clone()
        seen.add(ptr)
        tensors[key] = t
    save_file(tensors, str(path))
