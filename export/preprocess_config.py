"""A checkpoint's image processor config -> the bundle's ``preprocess.json`` object.

The conversion itself is :meth:`clipeval.engine.images.preprocess.PreprocessSpec.from_hf_processor_config`
(one converter for exporter and engine); this module finds and reads the checkpoint's file, turns
problems into :class:`ExportError` and checks that the images it describes fit the vision tower.

Where the image processor config lives depends on the transformers version that saved it:

* transformers 5 (``processor.save_pretrained(dir)``): ``processor_config.json``, with the image
  processor nested under ``"image_processor"``; there is no ``preprocessor_config.json``;
* transformers 4 (``processor.save_pretrained`` / ``image_processor.save_pretrained``):
  ``preprocessor_config.json`` holding the image processor's keys at the top level.

Both are read, in the order transformers 5 itself uses (``ImageProcessingMixin.get_image_processor_dict``):
the nested entry of ``processor_config.json`` when there is one, else ``preprocessor_config.json``.

Keys the file leaves out take the defaults of its image processor class, as transformers fills
them when it loads the file (:data:`HF_CLASS_DEFAULTS`: ``size``, ``crop_size``, ``image_mean``,
``image_std``), so a hand-written or trimmed config exports to the preprocessing transformers
applies to it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clipeval.engine.errors import BundleError, ExportError
from clipeval.engine.images.preprocess import PreprocessSpec

PROCESSOR_CONFIG = "preprocessor_config.json"  # transformers 4: the image processor's own file
NESTED_PROCESSOR_CONFIG = "processor_config.json"  # transformers 5: {"image_processor": {...}, ...}
NESTED_KEY = "image_processor"
SAVE_REMEDY = ("save the processor with the model: `CLIPProcessor(image_processor=..., tokenizer=...)"
               ".save_pretrained(dir)` (or ChineseCLIPProcessor / SiglipProcessor); transformers 5 writes "
               f"{NESTED_PROCESSOR_CONFIG}, 4.x writes {PROCESSOR_CONFIG}, and both are read")


_OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
_OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
_CLIP_DEFAULTS = {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224},
                  "image_mean": _OPENAI_MEAN, "image_std": _OPENAI_STD}
# The class attributes of transformers' image processors (image_processing_clip.py,
# image_processing_chinese_clip.py, image_processing_siglip.py; the same in 4.x and 5.x), used
# for keys a config file leaves out. The tests compare them with the installed transformers.
HF_CLASS_DEFAULTS: dict[str, dict[str, Any]] = {
    "CLIPImageProcessor": _CLIP_DEFAULTS,
    "ChineseCLIPImageProcessor": _CLIP_DEFAULTS,
    "SiglipImageProcessor": {"size": {"height": 224, "width": 224}, "image_mean": [0.5, 0.5, 0.5],
                             "image_std": [0.5, 0.5, 0.5]},
}


def _processor_class(config: dict[str, Any]) -> str:
    kind = str(config.get("image_processor_type") or config.get("feature_extractor_type") or "")
    for suffix in ("Fast", "Pil"):
        kind = kind.removesuffix(suffix)
    return kind.replace("FeatureExtractor", "ImageProcessor")


# config.json model_type -> image processor class, for a config that names none (transformers'
# AutoImageProcessor falls back to the model config's type the same way)
CLASS_BY_MODEL_TYPE = {"clip": "CLIPImageProcessor", "chinese_clip": "ChineseCLIPImageProcessor",
                       "siglip": "SiglipImageProcessor"}


def with_model_type(config: dict[str, Any], checkpoint: str | Path) -> dict[str, Any]:
    """``config`` with ``image_processor_type`` taken from the checkpoint's ``config.json``
    ``model_type`` when it names no class (neither ``image_processor_type`` nor
    ``feature_extractor_type``), as ``AutoImageProcessor`` chooses the class then."""
    if _processor_class(config):
        return config
    try:
        model_type = json.loads((Path(checkpoint) / "config.json").read_text(encoding="utf-8-sig")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return config
    kind = CLASS_BY_MODEL_TYPE.get(model_type) if isinstance(model_type, str) else None
    return {**config, "image_processor_type": kind} if kind else config


def with_class_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the keys it leaves out (or sets to ``null``) filled from its class's
    defaults, as transformers does when it loads the file."""
    defaults = HF_CLASS_DEFAULTS.get(_processor_class(config), {})
    return {**defaults, **{k: v for k, v in config.items() if v is not None or k not in defaults}}


def preprocess_from_hf(config: dict[str, Any], source: str | None = None) -> dict[str, Any]:
    """Convert a transformers image processor config (a dict) to the ``preprocess.json`` object,
    keys left out taking the class defaults (:func:`with_class_defaults`)."""
    try:
        return PreprocessSpec.from_hf_processor_config(with_class_defaults(config), source=source).to_dict()
    except BundleError as exc:
        remedy = exc.remedy
        if "preprocess.json" in remedy:  # the engine's remedy speaks of a bundle; here the file is the checkpoint's
            remedy = (f"fix the value in {source or 'the image processor config'}, or save the processor again "
                      "with its save_pretrained")
        raise ExportError(exc.message, remedy) from None


def read_json_object(path: Path, missing: str, remedy: str) -> dict[str, Any]:
    """A checkpoint's JSON file as a dict; ``missing`` is the message when the file is absent."""
    if not path.is_file():
        raise ExportError(missing, remedy)
    try:
        config = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read {path}: {exc}", remedy) from None
    if not isinstance(config, dict):
        raise ExportError(f"{path} is not a JSON object", remedy)
    return config


def read_image_processor_config(checkpoint: str | Path) -> tuple[dict[str, Any], str]:
    """The image processor config of a local checkpoint and where it was read (for messages).

    Raises :class:`ExportError` when neither layout is present or the file is not a JSON object.
    """
    root = Path(checkpoint)
    nested = root / NESTED_PROCESSOR_CONFIG
    if nested.is_file():
        processor = read_json_object(nested, "", SAVE_REMEDY)
        entry = processor.get(NESTED_KEY)
        if entry is not None:
            if not isinstance(entry, dict):
                raise ExportError(f"{nested}: {NESTED_KEY!r} is not a JSON object", SAVE_REMEDY)
            return entry, f"{nested} ({NESTED_KEY})"
    flat = root / PROCESSOR_CONFIG
    if not flat.is_file():
        found = f"{NESTED_PROCESSOR_CONFIG} without an {NESTED_KEY!r} entry" if nested.is_file() else "neither file"
        raise ExportError(
            f"checkpoint {checkpoint} has no image processor config: looked for {NESTED_PROCESSOR_CONFIG} "
            f"(its {NESTED_KEY!r} entry) and {PROCESSOR_CONFIG}, found {found}",
            SAVE_REMEDY,
        )
    return read_json_object(flat, "", SAVE_REMEDY), str(flat)


def preprocess_from_checkpoint(checkpoint: str | Path, image_size: int | None = None) -> dict[str, Any]:
    """Read a local checkpoint's image processor config (either layout) and convert it.

    ``image_size`` (the vision tower's fixed input side) is checked against the size the
    preprocessing produces, so a bundle never feeds its tower images of the wrong shape.
    """
    config, where = read_image_processor_config(checkpoint)
    spec = preprocess_from_hf(with_model_type(config, checkpoint), source=where)
    if image_size is not None:
        out_hw = PreprocessSpec.from_dict(spec).output_size
        if out_hw != (image_size, image_size):
            raise ExportError(
                f"{where} produces {out_hw[0]}x{out_hw[1]} images but the vision tower takes "
                f"{image_size}x{image_size}",
                "fix crop_size/size in the image processor config to match vision_config.image_size",
            )
    return spec
