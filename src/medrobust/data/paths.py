"""Where data lives: the data root, and the error raised when a file is missing."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir

__all__ = ["DATA_ROOT_ENV", "DataNotFoundError", "default_data_root", "resolve_data_root"]

DATA_ROOT_ENV = "MEDROBUST_DATA"


class DataNotFoundError(FileNotFoundError):
    """A data file is missing; the message says which file to put where (and where to get it)."""


def default_data_root() -> Path:
    """The per-user cache folder used when neither a CLI value nor $MEDROBUST_DATA is set."""
    return Path(user_cache_dir("medrobust")) / "data"


def resolve_data_root(cli_value: str | Path | None = None) -> Path:
    """The data root: ``cli_value`` if given, else ``$MEDROBUST_DATA``, else the user cache.

    The folder is not created here; ``~`` is expanded.
    """
    if cli_value is not None and str(cli_value) != "":
        return Path(cli_value).expanduser()
    env = os.environ.get(DATA_ROOT_ENV, "")
    if env:
        return Path(env).expanduser()
    return default_data_root()
