"""Where clipeval keeps what it caches (one root with ``models/``, ``embeddings/``,
``datasets/``), and how a name becomes a file name (:func:`safe_name`)."""

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


def safe_name(name: str) -> str:
    """``name`` as one file-system-safe path component: every character other than a letter, a
    digit (Unicode's, :meth:`str.isalnum`) or ``-_.`` becomes ``_``; an empty name is ``_``, and
    a name of dots only (``.``, ``..``) is as many ``_``, so it never steps out of its folder.

    Used for every name clipeval derives a file or folder from: result files and model folders
    (``{output_dir}/{model}/{dataset}_{task}.json``), the dataset download cache and the model
    cache. The user's umask and the name length limits are checked elsewhere
    (:mod:`clipeval.engine.fsutil`).
    """
    safe = "".join(c if (c.isalnum() or c in "-_.") else "_" for c in name) or "_"
    return "_" * len(safe) if set(safe) == {"."} else safe
