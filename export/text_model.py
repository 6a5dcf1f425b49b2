"""Sentence-transformers / BERT-style checkpoint -> text bundle (manifest ``family: "text"``).

The bundle holds one ``text.onnx``: ``input_ids`` and ``attention_mask`` int64 ``[B, T]`` (both
axes dynamic) -> ``text_embeds`` float32 ``[B, D]``. Everything the checkpoint does after the
transformer is inside the graph, read from its sentence-transformers files:

* pooling from ``1_Pooling/config.json`` (the ``Pooling`` module of ``modules.json``; both the
  ``pooling_mode_*`` booleans of sentence-transformers < 6 and the ``pooling_mode`` key of 6.x),
  or ``pooling_mode`` given to the export (evalscope's model key). The modes and their formulas
  are sentence-transformers' (``sentence_transformers/.../pooling.py``), with ``h`` the token
  states, ``m`` the attention mask and positions counted from 1:
  ``cls`` the first unmasked token; ``mean`` ``sum(h * m) / max(sum(m), 1e-9)``;
  ``mean_sqrt_len_tokens`` ``sum(h * m) / sqrt(max(sum(m), 1e-9))``; ``max`` the largest value
  over unmasked tokens; ``weightedmean`` ``sum(h * m * pos) / max(sum(m * pos), 1e-9)``;
  ``lasttoken`` the last unmasked token. Several modes are concatenated in the order given.
  A checkpoint without sentence-transformers files is pooled by mean, sentence-transformers'
  own default.
* normalisation: L2 (``F.normalize``) when ``modules.json`` lists a ``Normalize`` module, or
  when the checkpoint's similarity (``config_sentence_transformers.json``
  ``similarity_fn_name``, default cosine) is the cosine; a ``dot`` model without
  ``Normalize`` keeps raw embeddings and is ranked by dot product.
* ``token_type_ids`` (BERT-style models): all zeros inside the graph, which is what a tokenizer
  gives for a single text, so callers feed two inputs whatever the architecture.
* ``context_length``: ``max_seq_length`` given to the export (evalscope's model key), else
  ``sentence_bert_config.json`` ``max_seq_length``, else the smaller of the tokenizer's
  ``model_max_length`` and the model's ``max_position_embeddings``. A length above
  ``max_position_embeddings`` is refused.
* prompts: ``config_sentence_transformers.json`` ``prompts`` and ``default_prompt_name`` are
  copied into the manifest (``text_model.prompts``); the engine prepends them to the texts, as
  ``SentenceTransformer.encode(prompt=...)`` does. A ``Pooling`` module with
  ``include_prompt: false`` is recorded; the engine refuses to use a prompt with it (the graph
  cannot tell prompt tokens from text tokens).

``modules.json`` is read as sentence-transformers 6 loads it
(``SentenceTransformer._load_config_modules``), and whatever it would refuse, or load but fail to
encode with, is refused here in one error that lists every problem: a file that is not a list, an
empty list ``[]`` (sentence-transformers: "an empty modules list"), an entry that is not an object
or lacks a ``name``, ``path`` or ``type`` string, a ``path`` that is absolute or holds ``..``, a
name given twice, a ``type`` outside the sentence-transformers classes it names
(:data:`MODULE_TYPES`: custom code, which it imports only with ``trust_remote_code``, or its other
modules: ``Dense``, ``LayerNorm``, ... which this exporter does not put in the graph), modules
other than ``Transformer``, ``Pooling`` and an optional ``Normalize`` in that order (without
``Pooling`` sentence-transformers loads the model but has no sentence embedding to return), a
``Transformer`` outside the folder's top (this exporter exports the checkpoint there), and a
``Pooling`` module without its ``config.json`` or with one its ``Pooling`` cannot take (no
embedding dimension, another key). Nothing is guessed: a checkpoint without ``modules.json`` is a
plain transformer with mean pooling, as sentence-transformers builds one; with a ``modules.json``
it is what the file says or an error. Unknown pooling modes are refused with a message naming
them.

Validation: the ONNX graph on onnxruntime (CPU) against the PyTorch module it was traced from,
on texts of several lengths (one truncated), padded as a batch; max abs difference 1e-4 and
cosine 0.99999, every output reported before failing. The bundle is built in a hidden directory and renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from clipeval import __version__
from clipeval.engine.sessions.bundle import FORMAT_VERSION, Bundle, is_bundle_dir, load_bundle
from clipeval.engine.errors import BundleError, ExportError

from .convert import build_bundle, check_out_dir, tool_versions

log = logging.getLogger(__name__)

__all__ = ["POOLING_MODES", "TEXT_FAMILY", "TextModelSpec", "export_text_model", "is_text_checkpoint",
           "normalize_pooling", "read_text_spec", "resolve_text_bundle"]

TEXT_FAMILY = "text"
TEXT_FILE = "text.onnx"
# sentence-transformers' pooling modes; the legacy boolean keys of 1_Pooling/config.json in the
# order sentence-transformers concatenates them
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
LEGACY_POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                       "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                       "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
KNOWN_MODULES = ("Transformer", "Pooling", "Normalize")
# modules.json ``type`` -> the module it names: the class references sentence-transformers writes
# (6.x: the first of each; before: ``sentence_transformers.models.*``) and imports for these three
MODULE_TYPES = {
    "sentence_transformers.base.modules.transformer.Transformer": "Transformer",
    "sentence_transformers.base.modules.Transformer": "Transformer",
    "sentence_transformers.models.Transformer": "Transformer",
    "sentence_transformers.sentence_transformer.modules.pooling.Pooling": "Pooling",
    "sentence_transformers.sentence_transformer.modules.Pooling": "Pooling",
    "sentence_transformers.models.Pooling": "Pooling",
    "sentence_transformers.base.modules.normalize.Normalize": "Normalize",
    "sentence_transformers.base.modules.Normalize": "Normalize",
    "sentence_transformers.models.Normalize": "Normalize",
}
MODULE_KEYS = ("name", "path", "type")
MODULES_REMEDY = ("save the model again with SentenceTransformer.save (or repair modules.json), or delete "
                  "modules.json to export the transformer alone with mean pooling, as sentence-transformers loads "
                  "a checkpoint without one")
SIMILARITIES = ("cosine", "dot")
VALIDATION_TEXTS = (
    "a",
    "A red square on a white background.",
    "Retrieval with dense embeddings: 42 queries, naïve résumé, 東京, emoji \U0001F600.",
    " ".join(["a very long sentence that keeps going and going"] * 60),
)
TRACE_TEXTS = 2


class TextModelSpec(dict):
    """What the checkpoint's sentence-transformers files say (a dict, stored in the manifest)."""


def _read_json(path: Path, expect: type = dict) -> Any:
    """A checkpoint's JSON file, which must hold a JSON object (``expect=dict``) or array (``list``)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read {path}: {exc}", "repair or re-download the checkpoint") from None
    if not isinstance(data, expect):
        what = "a JSON object" if expect is dict else "a JSON array"
        raise ExportError(f"{path} is not {what} (it holds {type(data).__name__ if data is not None else 'null'})",
                          "repair or re-download the checkpoint (save it again with save_pretrained)")
    return data


def is_text_checkpoint(path: str | os.PathLike) -> bool:
    """A directory with ``config.json`` that is a sentence-transformers model or a text-only
    transformer (no vision tower)."""
    root = Path(os.path.expanduser(str(path)))
    if not (root / "config.json").is_file():
        return False
    if (root / "modules.json").is_file():
        return True
    try:
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "vision_config" not in config and "text_config" not in config


def normalize_pooling(value: Any, where: str) -> str:
    """A pooling mode (or several joined by ``+``) checked against :data:`POOLING_MODES`.

    ``value`` is a mode name, a list of names, or sentence-transformers' legacy spellings
    (``mean_tokens``, ``cls_token`` ...). Raises :class:`ExportError` naming ``where``."""
    modes = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for mode in modes:
        name = str(mode).strip().lower() if isinstance(mode, str) else mode
        name = {"mean_tokens": "mean", "cls_token": "cls", "max_tokens": "max", "weightedmean_tokens": "weightedmean"
                }.get(name, name)
        if name not in POOLING_MODES:
            raise ExportError(f"{where}: unknown pooling mode {mode!r}", f"use one of: {', '.join(POOLING_MODES)}")
        out.append(name)
    if not out:
        raise ExportError(f"{where}: no pooling mode", f"use one of: {', '.join(POOLING_MODES)}")
    return "+".join(out)


# keys of a Pooling module's config.json that sentence-transformers 6 takes (Pooling(**config)
# after renaming word_embedding_dimension and converting the legacy pooling_mode_* booleans)
POOLING_CONFIG_KEYS = ("embedding_dimension", "word_embedding_dimension", "pooling_mode", "include_prompt",
                       *LEGACY_POOLING_KEYS)


def _pooling_from_config(path: Path) -> tuple[str, bool]:
    """The pooling mode(s) and ``include_prompt`` of a Pooling module's ``config.json``, read as
    sentence-transformers reads it; a config it would refuse (no embedding dimension, a key its
    ``Pooling`` does not take) is an :class:`ExportError` naming them."""
    cfg = _read_json(path)
    if not isinstance(cfg, dict):
        raise ExportError(f"{path} is not a JSON object", "repair the checkpoint")
    odd = [k for k in cfg if k not in POOLING_CONFIG_KEYS]
    if odd or not ({"embedding_dimension", "word_embedding_dimension"} & set(cfg)):
        problem = (f"holds {', '.join(map(repr, odd))}, which sentence-transformers' Pooling does not take" if odd
                   else "has no embedding_dimension, which sentence-transformers' Pooling needs")
        raise ExportError(f"{path} {problem}", "save the model again with SentenceTransformer.save (or repair the "
                                              f"file: keys {', '.join(POOLING_CONFIG_KEYS[:4])})")
    include_prompt = bool(cfg.get("include_prompt", True))
    if "pooling_mode" in cfg:  # sentence-transformers >= 6
        return normalize_pooling(cfg["pooling_mode"], str(path)), include_prompt
    # the legacy booleans, in sentence-transformers' order; none on: mean, as sentence-transformers reads it
    modes = [mode for key, mode in LEGACY_POOLING_KEYS.items() if cfg.get(key)] or ["mean"]
    return "+".join(modes), include_prompt


def _module_problems(n: int, m: Any, names: set[str]) -> tuple[str | None, list[tuple[str, str]]]:
    """The module an entry of ``modules.json`` names (``Transformer``, ``Pooling``, ``Normalize``,
    or ``None``) and the entry's problems, each ``(problem, why it is one)`` (:func:`read_modules`)."""
    if not isinstance(m, dict):
        return None, [(f"module {n} is {m!r}, not a JSON object",
                       "sentence-transformers reads each module from a JSON object")]
    problems = []
    missing = [k for k in MODULE_KEYS if not isinstance(m.get(k), str)]
    if missing:
        problems.append((f"module {n} has no {' / '.join(missing)} string",
                         f"sentence-transformers reads {', '.join(MODULE_KEYS)} of every module"))
    name, path, kind = m.get("name"), m.get("path"), m.get("type")
    if isinstance(name, str):
        if name in names:
            problems.append((f"module {n} repeats the name {name!r}", "sentence-transformers would keep one of them"))
        names.add(name)
    if isinstance(path, str) and (Path(path).is_absolute() or ".." in Path(path).parts):
        problems.append((f"module {n} has the path {path!r}",
                         "sentence-transformers refuses a module path that is absolute or holds .."))
    if isinstance(kind, str) and kind not in MODULE_TYPES:
        if kind.startswith("sentence_transformers."):
            why = f"this exporter puts only sentence-transformers' {', '.join(KNOWN_MODULES)} in the graph"
        else:
            why = ("a type outside sentence_transformers.* is custom code, which sentence-transformers imports only "
                   "with trust_remote_code; its own modules are named in full, e.g. "
                   "sentence_transformers.models.Pooling")
        problems.append((f"module {n} ({path!r}) is {kind}", why))
    return MODULE_TYPES.get(kind) if isinstance(kind, str) else None, problems


def read_modules(root: Path) -> tuple[Path, bool]:
    """``(folder of the Pooling module, whether a Normalize module follows it)`` of the checkpoint
    folder ``root``'s ``modules.json`` (the rules of the module docstring). Raises
    :class:`ExportError` naming the file and listing every problem, each reason once."""
    path = root / "modules.json"
    modules = _read_json(path, list)
    if not modules:
        raise ExportError(f"{path} lists no modules ([]): sentence-transformers refuses to load it (an empty "
                          "modules list), and nothing says how to pool", MODULES_REMEDY)
    problems: list[tuple[str, str]] = []
    names: set[str] = set()
    kinds = []
    for n, m in enumerate(modules):
        kind, found = _module_problems(n, m, names)
        kinds.append(kind)
        problems += found
    if not problems:
        if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
            why = ("without a Pooling module sentence-transformers loads it but has no sentence embedding to return"
                   if "Pooling" not in kinds else
                   "without a Transformer module first there is no model to pool" if kinds[0] != "Transformer" else
                   "this exporter puts exactly Transformer, Pooling and an optional Normalize, in that order, in "
                   "the graph")
            problems.append((f"its modules are {', '.join(kinds)}", why))
        else:
            if modules[0]["path"] not in ("", "."):
                problems.append((f"its Transformer module is at {modules[0]['path']!r}",
                                 "this exporter exports the checkpoint at the folder's top (path \"\")"))
            pooling_config = root / modules[1]["path"] / "config.json"
            if not pooling_config.is_file():
                problems.append((f"its Pooling module has no config.json ({pooling_config})",
                                 "sentence-transformers cannot load a Pooling module without it"))
    if problems:
        reasons = list(dict.fromkeys(why for _, why in problems))
        raise ExportError(f"{path}: {'; '.join(p for p, _ in problems)} ({'; '.join(reasons)})", MODULES_REMEDY)
    return root / modules[1]["path"], len(modules) == 3


def read_text_spec(src: str | os.PathLike, *, pooling_mode: str | None = None,
                   max_seq_length: int | None = None) -> TextModelSpec:
    """Pooling, normalisation, similarity, sequence length and prompts of a checkpoint directory;
    ``pooling_mode`` / ``max_seq_length`` replace what the checkpoint says (evalscope's model keys)."""
    root = Path(src)
    pooling, normalize_module, pooling_dir, include_prompt = "mean", False, None, True
    if (root / "modules.json").is_file():
        pooling_dir, normalize_module = read_modules(root)
    else:
        log.info("%s has no modules.json; using mean pooling (sentence-transformers' default)", root)
    if pooling_dir is not None:
        pooling, include_prompt = _pooling_from_config(pooling_dir / "config.json")
    pooling_source = "checkpoint" if pooling_dir is not None else "default"
    if pooling_mode:
        pooling, pooling_source = normalize_pooling(pooling_mode, "pooling_mode"), "config"
    similarity, prompts, default_prompt = "cosine", {}, None
    st_config = root / "config_sentence_transformers.json"
    if st_config.is_file():
        st = _read_json(st_config)
        similarity = st.get("similarity_fn_name") or "cosine"
        prompts = st.get("prompts") or {}
        default_prompt = st.get("default_prompt_name")
        if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in prompts.items()):
            raise ExportError(f"{st_config}: prompts must map names to strings", "repair the checkpoint")
    if similarity not in SIMILARITIES:
        raise ExportError(f"{st_config} asks for similarity {similarity!r}",
                          f"supported similarities: {', '.join(SIMILARITIES)}")
    max_seq = None
    sbert = root / "sentence_bert_config.json"
    if sbert.is_file():
        max_seq = _read_json(sbert).get("max_seq_length")
        if max_seq is not None and (isinstance(max_seq, bool) or not isinstance(max_seq, int) or max_seq < 2):
            raise ExportError(f"{sbert}: max_seq_length must be an integer of at least 2, got {max_seq!r}",
                              "fix it there, or pass max_seq_length (--max-seq-length)")
    if max_seq_length is not None:
        if isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int) or max_seq_length < 2:
            raise ExportError(f"max_seq_length must be an integer of at least 2, got {max_seq_length!r}")
        max_seq = max_seq_length
    return TextModelSpec(pooling=pooling, pooling_source=pooling_source,
                         normalize=bool(normalize_module or similarity == "cosine"),
                         normalize_module=normalize_module, similarity=similarity, max_seq_length=max_seq,
                         max_seq_length_source="config" if max_seq_length is not None else (
                             "sentence_bert_config.json" if max_seq else None),
                         prompts=prompts, default_prompt_name=default_prompt, include_prompt=include_prompt)


def _context_length(spec: TextModelSpec, config: Any, hf_tok: Any) -> int:
    limits = [getattr(config, "max_position_embeddings", None)]
    if spec.get("max_seq_length_source") == "config" and limits[0] and spec["max_seq_length"] > limits[0]:
        raise ExportError(f"max_seq_length {spec['max_seq_length']} is longer than the model's "
                          f"{limits[0]} positions (max_position_embeddings)",
                          f"set max_seq_length to at most {limits[0]}")
    if spec.get("max_seq_length"):
        return int(min(x for x in (spec["max_seq_length"], limits[0]) if x))
    model_max = getattr(hf_tok, "model_max_length", None)
    if model_max and model_max < 100_000:
        limits.append(model_max)
    limits = [int(x) for x in limits if x]
    if not limits:
        raise ExportError("cannot tell the model's maximum sequence length",
                          "set max_seq_length in sentence_bert_config.json")
    return min(limits)


def pool(hidden, attention_mask, mode: str):
    """sentence-transformers' pooling ``mode`` of token states ``hidden`` [B, T, H] under
    ``attention_mask`` [B, T] (the formulas of the module docstring), traceable to ONNX."""
    import torch

    mask32 = attention_mask.to(torch.int32)
    if mode == "cls":
        first = mask32.argmax(dim=1)
        return torch.gather(hidden, 1, first.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])).squeeze(1)
    if mode == "max":
        keep = attention_mask.unsqueeze(-1).expand_as(hidden)
        return hidden.masked_fill(keep == 0, float("-inf")).max(dim=1).values
    if mode in ("mean", "mean_sqrt_len_tokens"):
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        total = torch.clamp(mask.sum(dim=1), min=1e-9)
        return (hidden * mask).sum(dim=1) / (total if mode == "mean" else torch.sqrt(total))
    if mode == "weightedmean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        positions = torch.arange(1, hidden.shape[1] + 1, dtype=hidden.dtype, device=hidden.device).view(1, -1, 1)
        weights = mask * (positions - mask32.argmax(dim=1).to(hidden.dtype).view(-1, 1, 1))
        return (hidden * weights).sum(dim=1) / torch.clamp(weights.sum(dim=1), min=1e-9)
    if mode == "lasttoken":
        seq_len = hidden.shape[1]
        values, indices = mask32.flip(1).max(1)
        indices = torch.where(values == 0, seq_len - 1, indices)
        last = (seq_len - indices - 1).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
        masked = hidden * attention_mask.unsqueeze(-1).to(hidden.dtype)
        return torch.gather(masked, 1, last).squeeze(1)
    raise ExportError(f"unknown pooling mode {mode!r}", f"use one of: {', '.join(POOLING_MODES)}")


def _encoder(model: Any, spec: TextModelSpec, has_token_types: bool):
    import torch
    import torch.nn.functional as F
    from torch import nn

    class SentenceEncoder(nn.Module):
        input_names = ("input_ids", "attention_mask")
        output_names = ("text_embeds",)

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            extra = {"token_type_ids": torch.zeros_like(input_ids)} if has_token_types else {}
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
            parts = [pool(hidden, attention_mask, mode) for mode in spec["pooling"].split("+")]
            pooled = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
            if spec["normalize"]:
                pooled = F.normalize(pooled, p=2.0, dim=1)
            return pooled

    return SentenceEncoder().eval()


def _load(src: Path):
    import transformers

    try:
        model = transformers.AutoModel.from_pretrained(str(src), attn_implementation="eager")
        tok = transformers.AutoTokenizer.from_pretrained(str(src))
    except Exception as exc:  # transformers raises many types for a broken checkpoint
        raise ExportError(f"cannot load {src} with transformers: {type(exc).__name__}: {exc}",
                          "check that the directory holds a complete checkpoint") from None
    return model.eval(), tok


def export_text_model(source: str | os.PathLike, out_dir: str | os.PathLike, *, opset: int = 17,
                      force: bool = False, validate: bool = True, pooling_mode: str | None = None,
                      max_seq_length: int | None = None) -> Path:
    """Export the checkpoint directory ``source`` to a text bundle at ``out_dir``; return its path.

    ``pooling_mode`` (one of :data:`POOLING_MODES`, or several joined by ``+``) and
    ``max_seq_length`` replace the checkpoint's own (evalscope's model keys of the same names).

    Raises :class:`ExportError` for a directory that is not a supported text checkpoint, an
    ``out_dir`` that is not empty (``force`` replaces an existing bundle), or ONNX outputs that
    differ from PyTorch beyond tolerance. Nothing appears at ``out_dir`` unless all succeeds.
    """
    src = Path(os.path.expanduser(str(source)))
    if not (src / "config.json").is_file():
        raise ExportError(f"{src} is not a checkpoint directory (no config.json)",
                          "pass a sentence-transformers model directory")
    out = Path(out_dir)
    check_out_dir(out, force)
    spec = read_text_spec(src, pooling_mode=pooling_mode, max_seq_length=max_seq_length)

    def build(stage: Path) -> dict[str, Any]:
        manifest = _build(src, stage, spec, opset=opset, validate=validate)
        manifest.update({"source": str(src.resolve()), "revision": None})
        return manifest

    build_bundle(out, build, force=force)
    log.info("exported text model %s -> %s", source, out)
    return out


def _build(src: Path, stage: Path, spec: TextModelSpec, *, opset: int, validate: bool) -> dict[str, Any]:
    import numpy as np
    import torch

    from . import validate as _validate
    from .tokenizer_export import encode_padded, export_tokenizer, tokenizer_rule
    from .towers import export_onnx

    t0 = time.perf_counter()
    model, hf_tok = _load(src)
    config = model.config
    context_length = _context_length(spec, config, hf_tok)
    has_token_types = int(getattr(config, "type_vocab_size", 0) or 0) > 0
    info = export_tokenizer(src, stage / "tokenizer.json", "fast")
    encoder = _encoder(model, spec, has_token_types)

    feeds = encode_padded(stage / "tokenizer.json", VALIDATION_TEXTS, context_length, info.pad_id)
    trace = encode_padded(stage / "tokenizer.json", VALIDATION_TEXTS[:TRACE_TEXTS], context_length, info.pad_id)
    axes = {0: "batch", 1: "sequence"}
    export_onnx(encoder, tuple(torch.from_numpy(trace[n]) for n in encoder.input_names), stage / TEXT_FILE,
                dynamic_axes={"input_ids": axes, "attention_mask": axes, "text_embeds": {0: "batch"}},
                opset=opset)
    t_export = time.perf_counter() - t0
    if validate:
        reference = _validate.run_torch(encoder, feeds)
        candidate = _validate.run_onnx(stage / TEXT_FILE, feeds)
        block = _validate.check_outputs(reference, candidate, "fp32")
        block["inputs"] = {"texts": len(VALIDATION_TEXTS), "text_shape": list(feeds["input_ids"].shape),
                           "text_lengths": [int(n) for n in np.asarray(feeds["attention_mask"]).sum(axis=1)]}
        validation: dict[str, Any] = {"fp32": block}
    else:
        validation = {"skipped": True}
    embed_dim = int(getattr(config, "hidden_size")) * len(spec["pooling"].split("+"))
    log.info("text export %.1f s, validation %.1f s", t_export, time.perf_counter() - t0 - t_export)
    (stage / "preprocess.json").write_text(
        json.dumps({"format": 1, "modality": "text", "note": "text-only bundle: no image input"}, indent=2) + "\n",
        encoding="utf-8")
    return {
        "format": FORMAT_VERSION,
        "family": TEXT_FAMILY,
        "embed_dim": embed_dim,
        "context_length": context_length,
        "precision": "fp32",
        "opset": opset,
        "variants": {"fp32": {"text": TEXT_FILE}},
        "tokenizer": tokenizer_rule(info, spec["pooling"], "longest", ("input_ids", "attention_mask")),
        "text_model": {**spec, "model_type": getattr(config, "model_type", None),
                       "token_type_ids": "zeros inside the graph" if has_token_types else None},
        "validation": validation,
        "exported_with": tool_versions(),
        "created_by": f"clipeval {__version__}",
    }


def resolve_text_bundle(model: str | os.PathLike, cache_dir: str | os.PathLike | None = None, *,
                        pooling_mode: str | None = None, max_seq_length: int | None = None) -> Bundle:
    """A text bundle for ``model``: a bundle directory as it is; a checkpoint directory exported
    once into the model cache (``cache_dir`` / ``$CLIPEVAL_CACHE_DIR`` / ``~/.cache/clipeval``,
    then ``models/``) and reused after (keyed by the checkpoint's path and file sizes and times,
    and by ``pooling_mode`` / ``max_seq_length`` when given).

    Raises :class:`BundleError` for a path that is neither, or for ``pooling_mode`` /
    ``max_seq_length`` given with a bundle that was exported otherwise."""
    from clipeval.engine.demo import model_path

    from .resolve import cache_root, cached_bundle_dir, cached_export

    path = Path(os.path.expanduser(str(model_path(model))))  # `demo`: the embedded bundle
    if is_bundle_dir(path):
        bundle = load_bundle(path)
        _check_bundle_matches(bundle, pooling_mode, max_seq_length)
        return bundle
    if not is_text_checkpoint(path):
        raise BundleError(
            f"model {str(model)!r} is neither a model bundle nor a text checkpoint directory",
            "pass a bundle made by `clipeval export`, or a sentence-transformers model directory",
        )
    key = "text-fp32"
    if pooling_mode:
        key += "-" + normalize_pooling(pooling_mode, "pooling_mode").replace("+", "_")
    if max_seq_length is not None:
        key += f"-len{max_seq_length}"
    target = cached_bundle_dir(str(path), None, key, cache_root(cache_dir))
    cached = cached_export(target)
    if cached is not None:
        return cached
    log.info("exporting %s into the model cache at %s (once)", path, target)
    export_text_model(path, target, pooling_mode=pooling_mode, max_seq_length=max_seq_length)
    return load_bundle(target)


def _check_bundle_matches(bundle: Bundle, pooling_mode: str | None, max_seq_length: int | None) -> None:
    spec = bundle.manifest.get("text_model") or {}
    wrong = []
    if pooling_mode and normalize_pooling(pooling_mode, "pooling_mode") != spec.get("pooling"):
        wrong.append(f"pooling_mode {pooling_mode!r} (the bundle pools by {spec.get('pooling')!r})")
    if max_seq_length is not None and max_seq_length != bundle.context_length:
        wrong.append(f"max_seq_length {max_seq_length} (the bundle's is {bundle.context_length})")
    if wrong:
        raise BundleError(f"{bundle.path} is an exported bundle and cannot change {' or '.join(wrong)}",
                          "drop those keys, or give the checkpoint directory so that it is exported with them")
