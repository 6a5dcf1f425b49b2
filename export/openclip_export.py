"""open_clip model -> model bundle (``family: "open_clip"``).

This module imports torch at the top: import it lazily (``convert.export_checkpoint`` does).

The model is loaded by open_clip itself (``create_model_and_transforms`` / ``get_tokenizer``: its
table of pretrained tags, its Hugging Face Hub and ``local-dir:`` loading) and put in eval mode
(BatchNorm in the ResNet towers, dropout). The bundle then holds:

* ``vision.onnx``: ``encode_image`` + L2 normalisation, ``pixel_values`` float32 ``[B, 3, H, W]``;
* ``text.onnx`` (:mod:`.openclip_towers`): ``input_ids`` int64 ``[B, T]`` only (open_clip's
  text towers take no mask).
  Where the text tower is causal with the pooled position at or before the end token (CLIP's
  ``argmax``, ``eos``, ``first`` pooling, no class token, no padding mask), ``T`` is dynamic and
  batches are padded to their longest text, like transformers' CLIP bundles: the graph slices the
  causal mask and the positional embedding to ``T`` (and, while exporting, computes PyTorch's
  ``nn.MultiheadAttention`` with explicit matrix products, whose legacy ONNX export would fix
  ``T``). Any other text tower (bidirectional SigLIP-style, Hugging Face encoders, class tokens) is
  exported as ``encode_text`` itself on ``[B, context_length]``, padded to the context length;
* ``tokenizer.json`` and the manifest's ``tokenizer.clean`` steps (:mod:`.openclip_tokenizer`);
* ``preprocess.json``: open_clip's preprocess config (size, resize mode, interpolation, mean,
  std, fill colour) as data (:func:`preprocess_spec`).

Validation (the manifest's ``validation``): the ONNX towers against open_clip's own
``encode_image`` / ``encode_text(normalize=True)`` on open_clip's own token ids (per variant, as for
transformers checkpoints), token ids against open_clip's tokenizer
(:data:`.validate.TOKENIZER_CHECK_TEXTS`), and pixels against open_clip's image transform on images
of several sizes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from clipeval import __version__
from clipeval.engine.sessions.bundle import FORMAT_VERSION
from clipeval.engine.errors import BundleError, ExportError
from clipeval.engine.images.preprocess import Preprocessor, PreprocessSpec

from . import validate as _validate
from .families import Family, ModelFacts
from .hub import adopt_hub_logging, library_text
from .openclip_source import OpenClipSource
from .openclip_tokenizer import export_open_clip_tokenizer
from .openclip_towers import (
    OpenClipTextTower,
    OpenClipVisionTower,
    attention_modules,
    text_parts,
    text_tower,
    traceable_attention,
)
from .tokenizer_export import check_pooling, encode_padded, tokenizer_rule
from .towers import export_onnx

log = logging.getLogger(__name__)

RESAMPLE = {"bicubic": "bicubic", "bilinear": "bilinear", "random": "bicubic"}  # "random": bicubic at eval


# -- loading ---------------------------------------------------------------------------------------

def load(src: OpenClipSource):
    """``(model, preprocess_cfg, tokenizer)`` of ``src`` through open_clip, model in eval mode."""
    import open_clip

    name = src.model_name
    if src.kind == "hub" and src.revision:
        name = _hub_snapshot(name, src.revision)
    adopt_hub_logging()
    try:
        with warnings_as_log(), _errors_held_for_the_exception():
            model, _, _ = open_clip.create_model_and_transforms(name, pretrained=src.pretrained,
                                                                require_pretrained=True)
            tokenizer = open_clip.get_tokenizer(name)
    except ExportError:
        raise
    except Exception as exc:  # open_clip raises RuntimeError, ValueError, OSError, HF errors...
        what = "weights of another architecture? " if isinstance(exc, (AssertionError, KeyError)) or \
            "size mismatch" in str(exc) else ""
        raise ExportError(
            f"open_clip could not load {src.source}" + (f" with pretrained {src.pretrained}" if src.pretrained else "")
            + f": {what}{library_text(exc)}",
            "check the name, tag or file (a tag downloads once into open_clip's cache; offline, the "
            "Hugging Face cache must hold it)",
        ) from None
    model.eval()
    preprocess_cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    if not preprocess_cfg:
        raise ExportError(f"open_clip gave no preprocess config for {src.source}", "use open_clip >= 2.24")
    return model, preprocess_cfg, tokenizer


def _hub_snapshot(model_name: str, revision: str) -> str:
    """A Hub repository at ``revision`` as a ``local-dir:`` (open_clip itself loads only the main branch)."""
    from huggingface_hub import snapshot_download

    repo = model_name.split(":", 1)[1]
    try:
        path = snapshot_download(repo_id=repo, revision=revision)
    except Exception as exc:  # network, authentication and not-found errors have many types
        raise ExportError(f"cannot download {repo!r} at revision {revision!r}: {library_text(exc)}",
                          "check the id, the revision and the network") from None
    return f"local-dir:{path}"


@contextlib.contextmanager
def _errors_held_for_the_exception():
    """open_clip logs an ERROR through the root logger (``Failed to download weights ...``) and
    then raises with the same text, which clipeval's ``error:`` line shows: such records are held
    while open_clip runs, dropped when it raises, and logged as they were when it does not."""
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            held.append(record)
            return False
        return True

    root = logging.getLogger()
    root.addFilter(hold)
    try:
        yield
    finally:
        root.removeFilter(hold)
    for record in held:  # open_clip went on: its errors were not the exception's
        root.handle(record)


@contextlib.contextmanager
def warnings_as_log():
    """open_clip's ``warnings.warn`` (QuickGELU mismatch and the like) into this module's log."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        log.warning("%s", w.message)


# -- facts, preprocessing --------------------------------------------------------------------------

def _bad_value(where: str, key: str, value: Any, want: str) -> ExportError:
    return ExportError(f"{where}: {key} is {value!r}, not {want}",
                       f"fix preprocess_cfg.{key} in the model's open_clip_config.json (or its architecture config), "
                       "or leave it out for open_clip's default")


def image_hw(preprocess_cfg: dict[str, Any], where: str = "open_clip preprocess config") -> tuple[int, int]:
    """``(H, W)`` of open_clip's ``size`` (an integer or ``[H, W]``). Raises :class:`ExportError`
    for anything else."""
    size = preprocess_cfg.get("size", 224)
    sides = list(size) if isinstance(size, (list, tuple)) else [size, size]
    if len(sides) not in (1, 2) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sides):
        raise _bad_value(where, "size", size, "a positive integer or [height, width]")
    return (int(sides[0]), int(sides[-1]))


def _triple(cfg: dict[str, Any], key: str, default: tuple[float, ...], where: str) -> list[float]:
    value = cfg.get(key, default)
    items = [value] * 3 if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if (not isinstance(items, (list, tuple)) or len(items) not in (1, 3)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items)):
        raise _bad_value(where, key, value, "a number or a list of 3 numbers")
    return [float(v) for v in items] * (3 if len(items) == 1 else 1)


def preprocess_spec(cfg: dict[str, Any], where: str = "open_clip preprocess config") -> dict[str, Any]:
    """open_clip's preprocess config (``model.visual.preprocess_cfg``) -> the ``preprocess.json`` object.

    ``open_clip.transform.image_transform(is_train=False)`` on a PIL image is: for ``resize_mode``
    ``"shortest"``, ``Resize(S)`` then ``CenterCrop(S)`` (a square size) or ``ResizeKeepRatio`` then
    ``CenterCrop`` (a rectangle; bicubic whatever the config says, as open_clip builds it);
    ``"longest"``: ``ResizeKeepRatio(longest=1)`` then ``CenterCropOrPad`` with ``fill_color``;
    ``"squash"``: ``Resize((H, W))``; then RGB, ``ToTensor`` and ``Normalize(mean, std)``."""
    mode = cfg.get("resize_mode") or "shortest"
    interpolation = cfg.get("interpolation") or "bicubic"
    if (not isinstance(mode, str) or not isinstance(interpolation, str)
            or mode not in ("shortest", "longest", "squash") or interpolation not in RESAMPLE):
        raise ExportError(f"{where}: resize_mode {mode!r} / interpolation {interpolation!r} is not supported",
                          "supported: resize_mode shortest|longest|squash, interpolation bicubic|bilinear")
    if str(cfg.get("mode", "RGB")) != "RGB":
        raise ExportError(f"{where}: image mode {cfg.get('mode')!r} is not supported", "only RGB models export")
    h, w = image_hw(cfg, where)
    mean = _triple(cfg, "mean", (0.48145466, 0.4578275, 0.40821073), where)
    std = _triple(cfg, "std", (0.26862954, 0.26130258, 0.27577711), where)
    spec: dict[str, Any] = {
        "do_convert_rgb": True, "do_resize": True, "resample": RESAMPLE[interpolation],
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": mean, "image_std": std,
    }
    if mode == "squash":
        spec.update(size={"height": h, "width": w}, do_center_crop=False)
    elif mode == "shortest" and h == w:
        spec.update(size={"shortest_edge": h}, do_center_crop=True, crop_size={"height": h, "width": w},
                    crop_rule="torchvision")
    else:
        spec.update(size={"height": h, "width": w}, resize_mode=mode, do_center_crop=True,
                    crop_size={"height": h, "width": w}, crop_rule="torchvision")
        if mode == "shortest":
            spec["resample"] = "bicubic"  # open_clip builds ResizeKeepRatio(image_size) without interpolation
        else:
            fill = cfg.get("fill_color", 0) or 0
            if isinstance(fill, bool) or not isinstance(fill, int) or not 0 <= fill <= 255:
                raise _bad_value(where, "fill_color", fill, "an integer 0..255")
            spec["pad_fill"] = [fill, fill, fill]
    try:
        return PreprocessSpec.from_dict(spec, source=where).to_dict()
    except BundleError as exc:
        raise ExportError(exc.message, exc.remedy) from None


def _fusion_shapes(model: nn.Module, parts) -> dict[str, tuple[int, int, int, str]]:
    """Per tower ``(layers, heads, hidden, optimizer model type)`` for onnxruntime's fusion (0: let it
    find them)."""
    visual = model.visual
    vt = getattr(visual, "transformer", None)
    if vt is not None and getattr(vt, "resblocks", None):
        attn = vt.resblocks[0].attn
        vision = (len(vt.resblocks), int(getattr(attn, "num_heads", 0)), int(getattr(vt, "width", 0)), "clip")
    elif getattr(visual, "attnpool", None) is not None:  # ModifiedResNet: attention only in its pooling
        pool = visual.attnpool
        vision = (1, int(pool.num_heads), int(pool.k_proj.in_features), "clip")
    else:
        vision = (0, 0, 0, "clip")
    if parts is not None and getattr(parts.transformer, "resblocks", None):
        t = parts.transformer
        text = (len(t.resblocks), int(getattr(t.resblocks[0].attn, "num_heads", 0)), int(t.width), "clip")
    else:
        text = (0, 0, 0, "bert")
    return {"vision": vision, "text": text}


# -- the build ----------------------------------------------------------------------------------------

PREPROCESS_CHECK_SHAPES = ((48, 40), (30, 70), (7, 9), (1, 1), (3, 400), (256, 255), (64, 64))


def _preprocess_parity(spec: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """Pixels of ``spec`` against open_clip's eval transform on RGB images of several sizes."""
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image

    transform = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    pre = Preprocessor(spec)
    rng = np.random.default_rng(0)
    worst, compared = 0.0, 0
    for h, w in PREPROCESS_CHECK_SHAPES:
        img = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        try:
            want = transform(img).numpy()
        except ValueError:  # open_clip cannot either (a "longest" fit that rounds a side to 0)
            continue
        worst = max(worst, float(np.max(np.abs(pre(img) - want))))
        compared += 1
    if worst != 0.0:
        raise ExportError(f"preprocess.json differs from open_clip's image transform (max abs diff {worst:g})",
                          "report the model and versions")
    return {"reference": "open_clip image transform", "images": compared, "max_abs_diff": worst}


def _export_text_tower(model, choice, stage: Path, work: Path, info, full: dict[str, np.ndarray],
                       context_length: int, opset: int) -> str:
    """Export the text tower ``choice`` (:func:`text_tower`'s tower, padding, attention modules) to
    ``work/text.onnx``; a graph meant for a dynamic sequence axis that kept the traced length is
    exported again as ``encode_text`` at the context length. Returns the padding rule."""
    from . import convert

    tower, padding, attention = choice
    texts = list(convert.VALIDATION_TEXTS)[:convert.TRACE_TEXTS]
    trace = encode_padded(stage / "tokenizer.json", texts, context_length, info.pad_id,
                          length=context_length if padding == "max_length" else None, extra=info.extra)
    _export_text(tower, attention, trace["input_ids"], work / "text.onnx", padding == "longest", opset)
    if padding == "longest" and not _sequence_axis_is_dynamic(work / "text.onnx", full["input_ids"], trace):
        log.info("the text graph kept a fixed sequence length; exporting encode_text at the context length")
        trace = encode_padded(stage / "tokenizer.json", texts, context_length, info.pad_id, length=context_length,
                              extra=info.extra)
        _export_text(OpenClipTextTower(model).eval(), None, trace["input_ids"], work / "text.onnx", False, opset)
        padding = "max_length"
    return padding


def _export_text(tower: nn.Module, attention, trace_ids: np.ndarray, path: Path, dynamic: bool, opset: int) -> None:
    axes = {0: "batch", 1: "sequence"} if dynamic else {0: "batch"}
    with traceable_attention(attention if dynamic else None):  # the fast path is off either way
        export_onnx(tower, (torch.from_numpy(trace_ids),), path,
                    dynamic_axes={"input_ids": axes, "text_embeds": {0: "batch"}}, opset=opset)


def build(src: OpenClipSource, stage: Path, *, precision: str, opset: int, validate: bool) -> dict[str, Any]:
    """Write an open_clip model's bundle files into ``stage``; return its manifest (without ``files``)."""
    from . import convert

    variants, default = convert.variants_for(precision)
    t0 = time.perf_counter()
    model, cfg, oc_tokenizer = load(src)
    info, tokenizer_kind = export_open_clip_tokenizer(oc_tokenizer, stage / "tokenizer.json")
    context_length = int(oc_tokenizer.context_length)
    spec = preprocess_spec(cfg)
    (stage / "preprocess.json").write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    h, w = image_hw(cfg)
    images = np.random.default_rng(0).standard_normal((convert.VALIDATION_IMAGES, 3, h, w)).astype(np.float32)

    text, padding, pooling, attention = text_tower(model)
    found = text_parts(model)
    texts = list(convert.VALIDATION_TEXTS)
    full = encode_padded(stage / "tokenizer.json", texts, context_length, info.pad_id, extra=info.extra)
    if padding == "longest":  # the pooled position must be the end token, before any padding
        pool_eos = found[2] if pooling == "first_eos" and found and found[2] is not None else info.eos_id
        check_pooling(full, texts, pooling, int(pool_eos), info.eos_id, context_length, info.pad_id)
    work = stage / ".work"
    work.mkdir()
    vision = OpenClipVisionTower(model).eval()
    with traceable_attention(attention_modules(model.visual)):
        export_onnx(vision, (torch.from_numpy(images[:convert.TRACE_IMAGES]),), work / "vision.onnx",
                    dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}}, opset=opset)
    padding = _export_text_tower(model, (text, padding, attention), stage, work, info, full, context_length, opset)

    shapes = _fusion_shapes(model, found[0] if found else None)
    family = Family(name="open_clip", model_class="open_clip", facts=lambda _: None, padding=padding,
                    text_inputs=("input_ids",), tokenizer="open_clip",
                    optimizer_types=(shapes["vision"][3], shapes["text"][3]))
    facts = ModelFacts(embed_dim=0, context_length=context_length, image_size=h, pooling=pooling,
                       pool_eos_id=info.eos_id, vision_layers=shapes["vision"][0], text_layers=shapes["text"][0],
                       vision_heads=shapes["vision"][1], text_heads=shapes["text"][1],
                       vision_hidden=shapes["vision"][2], text_hidden=shapes["text"][2])
    fused_ops, graph_ops = convert._write_variants(family, facts, work, stage, variants, opset,
                                                   tolerate_fusion_failure=True)
    shutil.rmtree(work)
    _check_sessions_open([stage / f for v in variants if v != "fp32" for f in convert.TOWER_FILES[v].values()])
    t_export = time.perf_counter() - t0

    feeds = encode_padded(stage / "tokenizer.json", texts, context_length, info.pad_id,
                          length=context_length if padding == "max_length" else None, extra=info.extra)
    validation: dict[str, Any]
    if validate:
        validation = _validation(model, oc_tokenizer, stage, variants, images, texts, {"input_ids": feeds["input_ids"]})
        validation["inputs"] = {"images": list(images.shape), "texts": len(texts),
                                "text_lengths": [int(n) for n in full["attention_mask"].sum(axis=1)],
                                "text_shape": list(feeds["input_ids"].shape)}
        validation["tokenizer"] = _validate.tokenizer_parity(
            stage / "tokenizer.json", info, context_length,
            lambda t, n: oc_tokenizer(t, context_length=n).tolist(), f"open_clip {tokenizer_kind}",
            pad_to=context_length)
        validation["preprocess"] = _preprocess_parity(spec, cfg)
    else:
        validation = {"skipped": True}
    log.info("export %.1f s, validation %.1f s", t_export, time.perf_counter() - t0 - t_export)
    with torch.no_grad():
        embed_dim = int(vision(torch.from_numpy(images[:1])).shape[-1])

    import open_clip

    return {
        "format": FORMAT_VERSION,
        "family": "open_clip",
        "name": src.display_name,
        "embed_dim": embed_dim,
        "context_length": context_length,
        "precision": default,
        "opset": opset,
        "variants": {v: dict(convert.TOWER_FILES[v]) for v in variants},
        "tokenizer": tokenizer_rule(info, pooling, padding, ("input_ids",)),
        "validation": validation,
        "fused_ops": fused_ops,
        "graph_ops": graph_ops,
        "open_clip": {"tokenizer": tokenizer_kind, "preprocess_cfg": _jsonable(cfg),
                      "model_cfg": _jsonable(_model_cfg(src)), "version": open_clip.__version__},
        "exported_with": {**convert.tool_versions(), "open_clip": open_clip.__version__,
                          **({"ftfy": _ftfy_version()} if "ftfy_fix_text" in info.extra.get("clean", []) else {})},
        "created_by": f"clipeval {__version__}",
    }


def _check_sessions_open(paths: list[Path]) -> None:
    """Open each graph in onnxruntime in a child process first: onnxruntime has crashed (SIGSEGV)
    opening float16 conversions of graphs it was not written for, which would take this process
    down without a word."""
    import subprocess
    import sys

    if not paths:
        return
    code = ("import sys, onnxruntime as ort\n"
            "for p in sys.argv[1:]:\n"
            "    ort.InferenceSession(p, providers=['CPUExecutionProvider'])\n")
    run = subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True)
    if run.returncode != 0:
        tail = (run.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise ExportError(f"onnxruntime cannot open the {', '.join(p.name for p in paths)} graphs "
                          f"(exit status {run.returncode}: {tail})",
                          "export fp32 only (--precision fp32), and report the model and versions")


def _sequence_axis_is_dynamic(path: Path, ids: np.ndarray, trace: dict[str, np.ndarray]) -> bool:
    """Whether the exported text graph runs on a sequence length other than the traced one."""
    import onnxruntime as ort

    other = ids[:, : trace["input_ids"].shape[1] + 1] if ids.shape[1] > trace["input_ids"].shape[1] else ids[:, :1]
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        sess.run(None, {"input_ids": np.ascontiguousarray(other)})
        return True
    except Exception:  # noqa: BLE001 - onnxruntime reports a fixed shape as a run failure
        return False


def _validation(model, oc_tokenizer, stage: Path, variants, images: np.ndarray, texts: list[str],
                text_feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    """ONNX (every variant) against open_clip's ``encode_image`` / ``encode_text(normalize=True)`` on
    open_clip's own token ids; one ExportError lists every output when any is out of tolerance."""
    from . import convert

    with torch.no_grad():
        reference = {
            "image_embeds": model.encode_image(torch.from_numpy(images), normalize=True).numpy(),
            "text_embeds": model.encode_text(oc_tokenizer(texts), normalize=True).numpy(),
        }
    blocks: dict[str, Any] = {}
    for variant in variants:
        files = convert.TOWER_FILES[variant]
        candidate = {**_validate.run_onnx(stage / files["vision"], {"pixel_values": images}),
                     **_validate.run_onnx(stage / files["text"], text_feeds)}
        blocks[variant] = _validate.measure(reference, candidate, variant)
        blocks[variant]["reference"] = "open_clip encode_image / encode_text (normalize=True)"
    _validate.raise_if_failed(blocks)
    return blocks


def _model_cfg(src: OpenClipSource) -> dict[str, Any]:
    import open_clip

    try:
        return open_clip.get_model_config(src.model_name) or {}
    except Exception:  # noqa: BLE001 - provenance only
        return {}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def _ftfy_version() -> str:
    import ftfy

    return ftfy.__version__
