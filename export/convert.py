"""Checkpoint -> model bundle.

:func:`export_checkpoint` takes a directory written by ``save_pretrained`` (model, tokenizer and
image processor) or a hub id (:mod:`.hub`), exports the two towers to ONNX with eager attention,
fuses them with onnxruntime's transformer optimizer (:mod:`.optimize`), writes the precision
variants (fp32; fp16 from the fused graph; int8 by dynamic quantisation), ``tokenizer.json``,
``preprocess.json`` and the manifest, checks every variant on onnxruntime against PyTorch, and
only then makes the bundle visible at ``out_dir`` (it is built in a hidden directory beside it
and renamed).

Families are a registry keyed on ``config.json``'s ``model_type`` (:mod:`.families`); torch,
transformers and onnx are imported only once an export really starts.

Manifest blocks written here beyond the bundle contract: ``validation`` (per variant: tolerance,
per output ``max_abs_diff``/``min_cosine``/``passed``; plus ``inputs``), ``fused_ops`` (per tower:
fused operator counts, layer count, ``attention_fused``), ``graph_ops`` (per variant and tower:
node and ``Cast`` counts, whether the graph is the fused one), ``hub``, ``exported_with``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from clipeval import __version__
from clipeval.engine.sessions.bundle import FORMAT_VERSION, MANIFEST, write_manifest
from clipeval.engine.errors import ExportError
from clipeval.engine.fsutil import publish_dir, staging_dir
from clipeval.engine.versions import versions

from . import validate as _validate
from .families import FAMILIES, Family, ModelFacts, family_for
from .hub import check_hub, local_checkpoint
from .preprocess_config import preprocess_from_checkpoint, read_json_object
from .tokenizer_export import TokenizerInfo, check_pooling, encode_padded, export_tokenizer, tokenizer_rule

log = logging.getLogger(__name__)

__all__ = ["EXPORT_PRECISIONS", "FAMILIES", "Family", "ModelFacts", "export_checkpoint", "family_for",
           "source_record", "variants_for"]

# --precision -> (variants written, the bundle's default). fp32 is always written: it is the
# reference the others are made from, and it runs everywhere.
EXPORT_PRECISIONS = {
    "fp32": (("fp32",), "fp32"),
    "fp16": (("fp32", "fp16"), "fp16"),
    "int8": (("fp32", "int8"), "int8"),
    "both": (("fp32", "fp16"), "fp32"),
}
MIN_OPSET = 14
TOWER_FILES = {
    "fp32": {"vision": "vision.onnx", "text": "text.onnx"},
    "fp16": {"vision": "vision.fp16.onnx", "text": "text.fp16.onnx"},
    "int8": {"vision": "vision.int8.onnx", "text": "text.int8.onnx"},
}
VISION_FILE, TEXT_FILE = TOWER_FILES["fp32"]["vision"], TOWER_FILES["fp32"]["text"]
# Whether vision.onnx / text.onnx are the fused graphs. Measured on 2 CPU cores (benchmarks/
# bench_export.py, ViT-B/32 shape): the fused fp32 graph is no faster than the raw export under
# onnxruntime's own session optimisations, so fp32 stays the plain export; fp16 is always built
# from the fused graph (fusion is what makes fp16 fast on CUDA).
FUSE_FP32 = False

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


def variants_for(precision: str) -> tuple[tuple[str, ...], str]:
    """``(variants written, default precision)`` for a ``--precision`` value."""
    if precision not in EXPORT_PRECISIONS:
        raise ExportError(
            f"precision {precision!r} cannot be exported",
            f"supported precisions: {', '.join(EXPORT_PRECISIONS)}",
        )
    return EXPORT_PRECISIONS[precision]


def _read_config(src: Path) -> dict[str, Any]:
    return read_json_object(src / "config.json", f"checkpoint {src} has no config.json",
                            "pass a directory written by `model.save_pretrained(dir)`")


def _check_options(precision: str, opset: int) -> None:
    variants_for(precision)
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ExportError(f"opset {opset!r} is not supported", f"use an integer opset >= {MIN_OPSET} (default 17)")


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse an ``out`` that is a file, or a non-empty folder unless ``force`` and it holds a
    bundle (``force`` replaces only bundles). Raises :class:`ExportError`."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"output {out} exists and is not a directory", "pick another output directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ExportError(
                f"output directory {out} is not empty",
                "pick another directory, or pass --force (force=True) to replace the bundle in it",
            )
        if not (out / MANIFEST).is_file():
            raise ExportError(
                f"output directory {out} is not empty and does not hold a model bundle; "
                "--force only replaces bundles",
                "pick another directory, or empty this one",
            )


def build_bundle(out: Path, build, *, force: bool) -> Path:
    """Build a bundle in a staging folder beside ``out`` (``build(stage) -> manifest``), write
    its manifest, and swap it into place (:func:`clipeval.engine.fsutil.publish_dir`: an old
    bundle there is replaced, or put back if the swap fails). ``out`` is checked again before
    the swap (the build took a while). Nothing appears at ``out`` unless all succeeds."""
    stage = staging_dir(out)  # the user's umask, not 0700
    try:
        write_manifest(stage, build(stage))
        check_out_dir(out, force)
        publish_dir(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out


def _require_export_deps(open_clip: bool = False) -> None:
    missing = []
    for name in ("torch", "transformers", "onnx") + (("open_clip",) if open_clip else ()):
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


def tool_versions() -> dict[str, str]:
    """The versions of what made an export (``exported_with`` in the manifest)."""
    return versions("torch", "transformers", "onnx", "onnxruntime", "tokenizers")


def export_checkpoint(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    precision: str = "fp32",
    opset: int = 17,
    force: bool = False,
    validate: bool = True,
    hub: str = "hf",
    revision: str | None = None,
    pretrained: str | None = None,
) -> Path:
    """Export ``source`` to a model bundle at ``out_dir``; return its path.

    ``source`` is a directory written by ``save_pretrained`` or a hub id (``hub`` ``"hf"`` or
    ``"modelscope"``, at ``revision``), or an open_clip model (:mod:`.openclip_source`): an
    architecture name with ``pretrained`` (a tag or a weights file), ``hf-hub:org/name``, a Hub id
    or a folder in open_clip's layout. ``precision`` is ``fp32``, ``fp16`` (fp32 + fp16, default
    fp16), ``int8`` (fp32 + int8, default int8) or ``both`` (fp32 + fp16, default fp32).

    Raises :class:`ExportError` for a source that is not a supported checkpoint, a non-empty
    ``out_dir`` without ``force`` (``force`` replaces only an existing bundle), missing export
    dependencies, or onnxruntime outputs that differ from PyTorch beyond tolerance (``validate``;
    one error lists every output of every variant). Nothing appears at ``out_dir`` unless the
    whole export succeeds.
    """
    check_hub(hub)
    _check_options(precision, opset)
    out = Path(out_dir)
    check_out_dir(out, force)
    open_clip_source = _open_clip_source(source, pretrained, hub, revision)
    if open_clip_source is None:
        src = local_checkpoint(source, hub=hub, revision=revision)
        family = family_for(_read_config(src).get("model_type"), f" in {src / 'config.json'}")
    _require_export_deps(open_clip=open_clip_source is not None)

    def build(stage: Path) -> dict[str, Any]:
        if open_clip_source is not None:
            from . import openclip_export

            manifest = openclip_export.build(open_clip_source, stage, precision=precision, opset=opset,
                                             validate=validate)
            manifest.update({"source": open_clip_source.source, "pretrained": open_clip_source.pretrained,
                             "revision": open_clip_source.revision, "hub": open_clip_source.hub})
            return manifest
        manifest = _build(family, src, stage, precision=precision, opset=opset, validate=validate)
        manifest.update(source_record(source, src, hub=hub, revision=revision))
        return manifest

    build_bundle(out, build, force=force)
    log.info("exported %s -> %s", source, out)
    return out


def _open_clip_source(source, pretrained: str | None, hub: str, revision: str | None):
    """The open_clip model ``source`` names (see :mod:`.openclip_source`), or ``None``."""
    from .openclip_source import classify

    if hub != "hf":
        if pretrained is not None:
            raise ExportError(f"--pretrained was given with --hub {hub}",
                              "open_clip models come from open_clip's table or the Hugging Face Hub: drop --hub")
        return None
    return classify(source, pretrained, hub=hub, revision=revision)


def source_record(source: str | os.PathLike, local: Path, *, hub: str | None, revision: str | None) -> dict[str, Any]:
    """The manifest's ``source``, ``revision`` and ``hub``: a local directory as its resolved
    absolute path (so the record stays true from any working directory, e.g. for
    ``clipeval bench --vs-reference``) with ``hub`` null; a hub id as given, with its hub."""
    given = Path(os.path.expanduser(str(source)))
    if given.is_dir():
        return {"source": str(given.resolve()), "revision": None, "hub": None}
    return {"source": str(source), "revision": revision, "hub": hub}


def validation_images(image_size: int, count: int = VALIDATION_IMAGES, seed: int = 0) -> np.ndarray:
    """Deterministic ``[count, 3, S, S]`` float32 pixel values (already-normalised scale)."""
    return np.random.default_rng(seed).standard_normal((count, 3, image_size, image_size)).astype(np.float32)


def _text_feeds(family: Family, tokenizer: Path, texts, facts: ModelFacts, info: TokenizerInfo) -> dict[str, np.ndarray]:
    length = facts.context_length if family.padding == "max_length" else None
    feeds = encode_padded(tokenizer, texts, facts.context_length, info.pad_id, length=length, extra=info.extra)
    return {name: feeds[name] for name in family.text_inputs}


def _build(family: Family, src: Path, stage: Path, *, precision: str, opset: int,
           validate: bool) -> dict[str, Any]:
    """Write the bundle's files into ``stage`` and return its manifest (without ``files``)."""
    from . import towers

    variants, default = variants_for(precision)
    t0 = time.perf_counter()
    model = towers.load_model(src, family.model_class)
    facts = family.facts(model.config)

    info = export_tokenizer(src, stage / "tokenizer.json", family.tokenizer)
    pool_eos = info.eos_id if facts.pooling == "max_id" else facts.pool_eos_id
    texts = list(VALIDATION_TEXTS)
    full = encode_padded(stage / "tokenizer.json", texts, facts.context_length, info.pad_id, extra=info.extra)
    check_pooling(full, texts, facts.pooling, pool_eos, info.eos_id, facts.context_length, info.pad_id)
    text_feeds = _text_feeds(family, stage / "tokenizer.json", texts, facts, info)
    if validate:  # token ids against the checkpoint's own tokenizer (manifest validation.tokenizer)
        token_parity = _validate.tokenizer_parity(stage / "tokenizer.json", info, facts.context_length,
                                                  _transformers_tokenizer(src), "transformers AutoTokenizer")

    preprocess = preprocess_from_checkpoint(src, image_size=facts.image_size)
    (stage / "preprocess.json").write_text(json.dumps(preprocess, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    images = validation_images(facts.image_size)
    trace_text = _text_feeds(family, stage / "tokenizer.json", texts[:TRACE_TEXTS], facts, info)
    work = stage / ".work"
    work.mkdir()
    vision, text = _export_towers(model, family, work, images[:TRACE_IMAGES], trace_text, opset)
    fused_ops, op_stats = _write_variants(family, facts, work, stage, variants, opset)
    shutil.rmtree(work)
    t_export = time.perf_counter() - t0

    if validate:
        validation = _validation(vision, text, stage, variants, {"pixel_values": images}, text_feeds)
        validation["inputs"] = {
            "images": list(images.shape),
            "texts": len(texts),
            "text_lengths": [int(n) for n in full["attention_mask"].sum(axis=1)],
            "text_shape": list(text_feeds["input_ids"].shape),
        }
        validation["tokenizer"] = token_parity
    else:
        validation = {"skipped": True}
    log.info("export %.1f s, validation %.1f s", t_export, time.perf_counter() - t0 - t_export)

    return {
        "format": FORMAT_VERSION,
        "family": family.name,
        "embed_dim": facts.embed_dim,
        "context_length": facts.context_length,
        "precision": default,
        "opset": opset,
        "variants": {v: dict(TOWER_FILES[v]) for v in variants},
        "tokenizer": tokenizer_rule(info, facts.pooling, family.padding, family.text_inputs),
        "validation": validation,
        "fused_ops": fused_ops,
        "graph_ops": op_stats,
        "exported_with": tool_versions(),
        "created_by": f"clipeval {__version__}",
    }


def _transformers_tokenizer(src: Path):
    """The checkpoint's tokenizer as transformers loads it: the reference for token ids."""
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(str(src))
    except Exception as exc:  # transformers raises many types for a missing or broken tokenizer
        raise ExportError(f"cannot load the tokenizer of {src}: {type(exc).__name__}: {exc}",
                          "save the tokenizer with the model (`processor.save_pretrained(dir)`)") from None

    def ids(texts: list[str], context_length: int) -> list[list[int]]:
        return [list(x) for x in hf(texts, truncation=True, max_length=context_length)["input_ids"]]

    return ids


def _export_towers(model: Any, family: Family, work: Path, images: np.ndarray,
                   text_feeds: dict[str, np.ndarray], opset: int):
    """Trace both towers (eager attention) into ``work/vision.onnx`` and ``work/text.onnx``;
    return the PyTorch wrappers."""
    import torch

    from . import towers

    vision = towers.VisionTower(model).eval()
    text = towers.TextTower(model, family.text_inputs).eval()
    towers.export_onnx(
        vision,
        (torch.from_numpy(images),),
        work / "vision.onnx",
        dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
        opset=opset,
    )
    # SigLIP pads every text to the context length: its sequence axis stays fixed.
    text_axes = {0: "batch"} if family.padding == "max_length" else {0: "batch", 1: "sequence"}
    towers.export_onnx(
        text,
        tuple(torch.from_numpy(text_feeds[name]) for name in text.input_names),
        work / "text.onnx",
        dynamic_axes={**{name: text_axes for name in text.input_names}, "text_embeds": {0: "batch"}},
        opset=opset,
    )
    return vision, text


def _write_variants(family: Family, facts: ModelFacts, work: Path, stage: Path, variants, opset: int,
                    tolerate_fusion_failure: bool = False):
    """Fuse both towers, then write each variant's files into ``stage``.

    Returns ``(fused_ops, graph_ops)``: the fusion record per tower, and per variant and tower the
    node count and ``Cast`` count of the written graph. With ``tolerate_fusion_failure`` (open_clip
    graphs, which onnxruntime's optimizer was not written for) a tower the optimizer fails on is
    used unfused and its record says why."""
    from . import optimize

    fused_ops: dict[str, Any] = {}
    graph_ops: dict[str, Any] = {}
    shapes = {
        "vision": (facts.vision_layers, facts.vision_heads, facts.vision_hidden, family.optimizer_types[0]),
        "text": (facts.text_layers, facts.text_heads, facts.text_hidden, family.optimizer_types[1]),
    }
    for tower, (layers, heads, hidden, kind) in shapes.items():
        raw, fused = work / f"{tower}.onnx", work / f"{tower}.fused.onnx"
        try:
            counts = optimize.fuse(raw, fused, model_type=kind, num_heads=heads, hidden_size=hidden, opset=opset)
            fused_ops[tower] = optimize.fusion_summary(counts, layers, kind)
        except ExportError as exc:
            if not tolerate_fusion_failure:
                raise
            log.info("%s tower not fused: %s", tower, exc.message)
            shutil.copyfile(raw, fused)
            fused_ops[tower] = {"optimizer_model_type": kind, "layers": layers, "error": exc.message}
        for variant in variants:
            dst = stage / TOWER_FILES[variant][tower]
            if variant == "fp32":
                shutil.copyfile(fused if FUSE_FP32 else raw, dst)
                written = optimize.op_counts(_load(dst))
            elif variant == "fp16":
                written = optimize.to_fp16(fused, dst, opset=opset)
            else:
                written = optimize.quantize_int8(raw, dst, opset=opset)
            graph_ops.setdefault(variant, {})[tower] = {
                "nodes": sum(written.values()),
                "cast": written.get("Cast", 0),
                "fused": variant == "fp16" or (variant == "fp32" and FUSE_FP32),
            }
    return fused_ops, graph_ops


def _load(path: Path):
    import onnx

    return onnx.load(str(path), load_external_data=False)


def _validation(vision, text, stage: Path, variants, vision_feeds: dict[str, np.ndarray],
                text_feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    """PyTorch vs onnxruntime (CPU) for every variant; the manifest's ``validation`` block. One
    :class:`ExportError` lists every output of every variant when any is out of tolerance."""
    reference = {**_validate.run_torch(vision, vision_feeds), **_validate.run_torch(text, text_feeds)}
    blocks: dict[str, Any] = {}
    for variant in variants:
        files = TOWER_FILES[variant]
        candidate = {**_validate.run_onnx(stage / files["vision"], vision_feeds),
                     **_validate.run_onnx(stage / files["text"], text_feeds)}
        blocks[variant] = _validate.measure(reference, candidate, variant)
    _validate.raise_if_failed(blocks)
    return blocks
