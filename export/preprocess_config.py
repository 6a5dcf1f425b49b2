"""A checkpoint's image processor config -> the bundle's ``preprocess.json`` object.

The conversion itself is :meth:`clipeval.engine.preprocess.PreprocessSpec.from_hf_processor_config`
(one converter for exporter and engine); this module reads the checkpoint's file, turns problems
into :class:`ExportError` and checks that the images it describes fit the vision tower.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clipeval.engine.errors import BundleError, ExportError
from clipeval.engine.preprocess import PreprocessSpec

PROCESSOR_CONFIG = "preprocessor_config.json"


def preprocess_from_hf(config: dict[str, Any], source: str | None = None) -> dict[str, Any]:
    """Convert a transformers image processor config (a dict) to the ``preprocess.json`` object."""
    try:
        return PreprocessSpec.from_hf_processor_config(config, source=source).to_dict()
    except BundleError as exc:
        raise ExportError(exc.message, exc.remedy) from None


def read_json_object(path: Path, missing: str, remedy: str) -> dict[str, Any]:
    """A checkpoint's JSON file as a dict; ``missing`` is the message when the file is absent."""
    if not path.is_file():
        raise ExportError(missing, remedy)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read {path}: {exc}", remedy) from None
    if not isinstance(config, dict):
        raise ExportError(f"{path} is not a JSON object", remedy)
    return config


def preprocess_from_checkpoint(checkpoint: str | Path, image_size: int | None = None) -> dict[str, Any]:
    """Read ``preprocessor_config.json`` of a local checkpoint and convert it.

    ``image_size`` (the vision tower's fixed input side) is checked against the size the
    preprocessing produces, so a bundle never feeds its tower images of the wrong shape.
    """
    path = Path(checkpoint) / PROCESSOR_CONFIG
    config = read_json_object(path, f"checkpoint {checkpoint} has no {PROCESSOR_CONFIG}",
                              "save the image processor with the model (`processor.save_pretrained(dir)`)")
    spec = preprocess_from_hf(config, source=str(path))
    if image_size is not None:
        out_hw = PreprocessSpec.from_dict(spec).output_size
        if out_hw != (image_size, image_size):
            raise ExportError(
                f"{path} produces {out_hw[0]}x{out_hw[1]} images but the vision tower takes "
                f"{image_size}x{image_size}",
                "fix crop_size/size in the image processor config to match vision_config.image_size",
            )
    return spec
