"""Checkpoint -> model bundle (DESIGN.md §2).

:func:`export_checkpoint` takes a local directory written by ``save_pretrained`` (model, tokenizer
and image processor), exports the two towers to ONNX, writes ``tokenizer.json``,
``preprocess.json`` and the manifest, checks onnxruntime against PyTorch, and only then makes the
bundle visible at ``out_dir`` (it is built in a hidden directory beside it and renamed).

Families are a registry keyed on ``config.json``'s ``model_type`` (:data:`FAMILIES`); torch,
transformers and onnx are imported only once an export really starts.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipeval import __version__
from clipeval.engine.bundle import FORMAT_VERSION, MANIFEST, write_manifest
from clipeval.engine.errors import ExportError

from . import validate as _validate
from .preprocess_config import preprocess_from_checkpoint
from .tokenizer_export import (
    TEXT_INPUTS,
    check_pooling,
    encode_padded,
    export_tokenizer,
    pooling_rule,
    tokenizer_rule,
)

log = logging.getLogger(__name__)

EXPORT_PRECISIONS = ("fp32",)
MIN_OPSET = 14
VISION_FILE, TEXT_FILE = "vision.onnx", "text.onnx"

# Fixed validation inputs: several lengths, one longer than any context (it is truncated).
VALIDATION_TEXTS = (
    "a",
    "a photo of a cat",
    "two dogs playing in the snow next to a red car",
    " ".join(["a very long caption that keeps going"] * 20),
)
VALIDATION_IMAGES = 3
TRACE_TEXTS = 2  # the graph is traced on fewer, shorter texts than it is validated on
TRACE_IMAGES = 2


@dataclass(frozen=True)
class ModelFacts:
    """What the exporter needs to know about a loaded model."""

    embed_dim: int
    context_length: int
    image_size: int
    pooling: str  # see tokenizer_export: "first_eos" | "max_id"
    pool_eos_id: int | None  # the id the text tower looks for under "first_eos"


@dataclass(frozen=True)
class Family:
    """How to export one kind of checkpoint."""

    name: str  # the manifest's ``family``
    model_class: str  # transformers class to load
    facts: Callable[[Any], ModelFacts]  # transformers config -> facts
    padding: str = "longest"
    text_inputs: tuple[str, ...] = TEXT_INPUTS


def _clip_facts(config: Any) -> ModelFacts:
    eos = config.text_config.eos_token_id
    return ModelFacts(
        embed_dim=int(config.projection_dim),
        context_length=int(config.text_config.max_position_embeddings),
        image_size=int(config.vision_config.image_size),
        pooling=pooling_rule(eos),
        pool_eos_id=None if eos is None else int(eos),
    )


FAMILIES: dict[str, Family] = {
    "clip": Family(name="clip", model_class="CLIPModel", facts=_clip_facts),
}


def family_for(model_type: str | None, where: str = "") -> Family:
    if model_type not in FAMILIES:
        raise ExportError(
            f"model_type {model_type!r}{where} is not supported",
            f"supported model types: {', '.join(sorted(FAMILIES))}",
        )
    return FAMILIES[model_type]


def _read_source(source: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    src = Path(source)
    if not src.is_dir():
        raise ExportError(
            f"checkpoint {source} is not a local directory",
            "pass a directory written by `model.save_pretrained(dir)` (hub ids are not supported yet)",
        )
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise ExportError(
            f"checkpoint {src} has no config.json",
            "pass a directory written by `model.save_pretrained(dir)`",
        )
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read {cfg_path}: {exc}", "save the model again") from None
    if not isinstance(config, dict):
        raise ExportError(f"{cfg_path} is not a JSON object", "save the model again")
    return src, config


def _check_options(precision: str, opset: int) -> None:
    if precision not in EXPORT_PRECISIONS:
        raise ExportError(
            f"precision {precision!r} cannot be exported yet",
            f"supported precisions: {', '.join(EXPORT_PRECISIONS)}",
        )
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ExportError(f"opset {opset!r} is not supported", f"use an integer opset >= {MIN_OPSET} (default 17)")


def _check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"output {out} exists and is not a directory", "pick another output directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ExportError(
                f"output directory {out} is not empty",
                "pick another directory, or pass --force to replace the bundle in it",
            )
        if not (out / MANIFEST).is_file():
            raise ExportError(
                f"output directory {out} is not empty and does not hold a model bundle; "
                "--force only replaces bundles",
                "pick another directory, or empty this one",
            )


def _require_export_deps() -> None:
    missing = []
    for name in ("torch", "transformers", "onnx"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(
            f"exporting a checkpoint needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
            "not installed",
            "pip install 'clipeval[export]'",
        )


def _versions() -> dict[str, str]:
    out = {}
    for name in ("torch", "transformers", "onnx", "onnxruntime"):
        try:
            out[name] = importlib.import_module(name).__version__
        except ImportError:
            pass
    return out


def export_checkpoint(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    precision: str = "fp32",
    opset: int = 17,
    force: bool = False,
    validate: bool = True,
) -> Path:
    """Export the checkpoint directory ``source`` to a model bundle at ``out_dir``; return its path.

    Raises :class:`ExportError` for a source that is not a supported checkpoint, a non-empty
    ``out_dir`` without ``force`` (``force`` replaces only an existing bundle), missing export
    dependencies, or onnxruntime outputs that differ from PyTorch beyond tolerance (``validate``).
    Nothing appears at ``out_dir`` unless the whole export succeeds.
    """
    src, config = _read_source(source)
    family = family_for(config.get("model_type"), f" in {src / 'config.json'}")
    _check_options(precision, opset)
    out = Path(out_dir)
    _check_out_dir(out, force)
    _require_export_deps()

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        manifest = _build(family, src, str(source), stage, precision=precision, opset=opset, validate=validate)
        write_manifest(stage, manifest)
        _check_out_dir(out, force)  # again: the export took a while
        _publish(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log.info("exported %s -> %s", source, out)
    return out


def _publish(stage: Path, out: Path) -> None:
    """Make ``stage`` appear at ``out`` by renames only; an old bundle there is replaced."""
    if not out.exists():
        os.replace(stage, out)
        return
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(out, old)
    try:
        os.replace(stage, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def validation_images(image_size: int, count: int = VALIDATION_IMAGES, seed: int = 0) -> np.ndarray:
    """Deterministic ``[count, 3, S, S]`` float32 pixel values (already-normalised scale)."""
    return np.random.default_rng(seed).standard_normal((count, 3, image_size, image_size)).astype(np.float32)


def _build(family: Family, src: Path, source: str, stage: Path, *, precision: str, opset: int,
           validate: bool) -> dict[str, Any]:
    """Write the bundle's files into ``stage`` and return its manifest (without ``files``)."""
    from . import towers

    t0 = time.perf_counter()
    model = towers.load_model(src, family.model_class)
    facts = family.facts(model.config)

    info = export_tokenizer(src, stage / "tokenizer.json")
    pool_eos = info.eos_id if facts.pooling == "max_id" else facts.pool_eos_id
    texts = list(VALIDATION_TEXTS)
    text_feeds = encode_padded(stage / "tokenizer.json", texts, facts.context_length, info.pad_id)
    check_pooling(text_feeds, texts, facts.pooling, pool_eos, info.eos_id, facts.context_length, info.pad_id)

    preprocess = preprocess_from_checkpoint(src, image_size=facts.image_size)
    (stage / "preprocess.json").write_text(json.dumps(preprocess, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    images = validation_images(facts.image_size)
    trace_text = encode_padded(stage / "tokenizer.json", texts[:TRACE_TEXTS], facts.context_length, info.pad_id)
    vision, text = _export_towers(model, stage, images[:TRACE_IMAGES], trace_text, opset)
    t_export = time.perf_counter() - t0

    if validate:
        validation = _validation(vision, text, stage, {"pixel_values": images}, text_feeds, precision)
    else:
        validation = {"skipped": True}
    log.info("export %.1f s, validation %.1f s", t_export, time.perf_counter() - t0 - t_export)

    return {
        "format": FORMAT_VERSION,
        "family": family.name,
        "source": source,
        "revision": None,
        "embed_dim": facts.embed_dim,
        "context_length": facts.context_length,
        "precision": precision,
        "opset": opset,
        "variants": {precision: {"vision": VISION_FILE, "text": TEXT_FILE}},
        "tokenizer": tokenizer_rule(info, facts.pooling, family.padding, family.text_inputs),
        "validation": validation,
        "exported_with": _versions(),
        "created_by": f"clipeval {__version__}",
    }


def _export_towers(model: Any, stage: Path, images: np.ndarray, text_feeds: dict[str, np.ndarray], opset: int):
    """Trace both towers on the given inputs and write them into ``stage``; return the wrappers."""
    import torch

    from . import towers

    vision, text = towers.VisionTower(model).eval(), towers.TextTower(model).eval()
    towers.export_onnx(
        vision,
        (torch.from_numpy(images),),
        stage / VISION_FILE,
        dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
        opset=opset,
    )
    towers.export_onnx(
        text,
        tuple(torch.from_numpy(text_feeds[name]) for name in text.input_names),
        stage / TEXT_FILE,
        dynamic_axes={
            "input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "sequence"},
            "text_embeds": {0: "batch"},
        },
        opset=opset,
    )
    return vision, text


def _validation(vision, text, stage: Path, vision_feeds: dict[str, np.ndarray],
                text_feeds: dict[str, np.ndarray], precision: str) -> dict[str, Any]:
    """PyTorch vs onnxruntime on the validation inputs; the manifest's ``validation`` block."""
    reference = {**_validate.run_torch(vision, vision_feeds), **_validate.run_torch(text, text_feeds)}
    candidate = {**_validate.run_onnx(stage / VISION_FILE, vision_feeds),
                 **_validate.run_onnx(stage / TEXT_FILE, text_feeds)}
    block = _validate.check_outputs(reference, candidate, precision)
    block["inputs"] = {
        "images": list(vision_feeds["pixel_values"].shape),
        "texts": int(text_feeds["input_ids"].shape[0]),
        "text_lengths": [int(n) for n in text_feeds["attention_mask"].sum(axis=1)],
    }
    return block
