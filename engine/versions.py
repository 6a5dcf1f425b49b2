"""The versions a result records (``meta.versions``) and an export records (``exported_with``).

Read from the installed distributions' metadata (:mod:`importlib.metadata`), so recording the
version of numba or torch never imports it (numba's import alone costs about 0.4 s, a quarter
of a fully cached run).
"""

from __future__ import annotations

import platform
from functools import lru_cache
from importlib import metadata

from .. import __version__

# distribution name where it differs from the name a result shows
DISTRIBUTIONS = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "open_clip": ("open_clip_torch",)}


@lru_cache(maxsize=None)
def package_version(name: str) -> str | None:
    """The installed version of package ``name`` (``None`` when it is not installed)."""
    for dist in DISTRIBUTIONS.get(name, (name,)):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def versions(*packages: str) -> dict[str, str]:
    """``{"clipeval": ..., PACKAGE: ..., "python": ...}`` for ``packages`` (those installed)."""
    out = {"clipeval": __version__}
    for name in packages:
        version = package_version(name)
        if version is not None:
            out[name] = version
    out["python"] = platform.python_version()
    return out
