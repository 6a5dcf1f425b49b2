"""Where clipeval keeps what it caches: one root with ``models/``, ``embeddings/``, ``datasets/``."""

from __future__ import annotations

import os
from pathlib import Path

ENV_CACHE = "CLIPEVAL_CACHE_DIR"


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """``override`` (config ``cache_dir`` / ``--cache-dir``), else ``$CLIPEVAL_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/clipeval`` or ``~/.cache/clipeval``."""
    if override:
        return Path(os.path.expanduser(os.fspath(override)))
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(os.path.expanduser(env))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clipeval"
