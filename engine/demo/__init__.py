"""The embedded demo: a small CLIP trained on drawn shapes, and a dataset it never saw.

See README.md beside this file for what the model is and is not.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO_MODEL_DIR = HERE / "model"
DEMO_DATA_DIR = HERE / "data"
DEMO_NAME = "demo"
