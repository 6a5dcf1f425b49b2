"""Checkpoint -> ONNX model bundle (needs the ``export`` extra: torch, transformers, onnx).

Importing this package does not import torch; :func:`export_checkpoint` does, when called.
"""

from __future__ import annotations

from .convert import EXPORT_PRECISIONS, FAMILIES, export_checkpoint

__all__ = ["EXPORT_PRECISIONS", "FAMILIES", "export_checkpoint"]
