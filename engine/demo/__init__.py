"""The embedded demo: a small CLIP trained on drawn shapes, and a dataset it never saw.

See README.md beside this file for what the model is and is not.

``demo`` is accepted wherever a model is taken (``eval``, ``run``, ``text-eval``, ``bench``, a
config's ``model_name``); :func:`model_path` is the one place that alias is resolved.
"""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO_MODEL_DIR = HERE / "model"
DEMO_DATA_DIR = HERE / "data"
DEMO_NAME = "demo"


def is_demo_name(name: str | os.PathLike | None) -> bool:
    """Whether a model name means the embedded demo: ``demo``, or no name at all."""
    return name is None or (isinstance(name, str) and name.strip() == DEMO_NAME)


def model_path(name: str | os.PathLike) -> str | os.PathLike:
    """``name`` with the alias ``demo`` replaced by the demo bundle's directory (other names as
    they are)."""
    return str(DEMO_MODEL_DIR) if is_demo_name(name) else name
