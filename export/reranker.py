"""Cross-encoder checkpoint -> reranker bundle (manifest ``family: "reranker"``).

A cross-encoder scores a (query, document) pair with one transformer pass over both texts. The
sources are a sentence-transformers ``CrossEncoder`` directory or a plain Hugging Face
sequence-classification checkpoint (``*ForSequenceClassification`` with one label), the models
evalscope's ``is_cross_encoder: true`` entries load.

The bundle holds one ``reranker.onnx``: ``input_ids``, ``attention_mask`` and, for models whose
tokenizer makes them (BERT), ``token_type_ids`` (int64 ``[B, T]``, both axes dynamic) ->
``scores`` (float32 ``[B]``): the classification logit with the activation
``CrossEncoder.predict`` applies by default (sentence-transformers' ``get_default_activation_fn``):
``activation_fn`` of ``config_sentence_transformers.json``, else the pre-4.0
``sbert_ce_default_activation_function`` of ``config.json``, else the sigmoid for one label.
Supported activations: sigmoid and identity. ``tokenizer.json`` carries the pair template
(``[CLS] query [SEP] document [SEP]`` for BERT); the engine truncates pairs ``longest_first`` to
``context_length``, as sentence-transformers does.

``context_length``: ``max_seq_length`` given to the export (evalscope's key), else
``sentence_bert_config.json`` ``max_seq_length``, else the smaller of the tokenizer's
``model_max_length`` and ``max_position_embeddings``.

Validation: the ONNX graph on onnxruntime (CPU) against the PyTorch module, on pairs of several
lengths (one truncated), padded as a batch; every score within 1e-4 (max abs difference at fp32),
recorded in the manifest's ``validation`` block, else :class:`ExportError` with the figures.
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

__all__ = ["RERANKER_FAMILY", "export_reranker", "is_cross_encoder_checkpoint", "resolve_reranker_bundle"]

RERANKER_FAMILY = "reranker"
RERANKER_FILE = "reranker.onnx"
MAX_ABS = 1e-4
ACTIVATIONS = {"Sigmoid": "sigmoid", "Identity": "identity"}
VALIDATION_PAIRS = (
    ("a", "b"),
    ("a red square", "A red square on a white background."),
    ("naïve résumé 東京", "Retrieval with dense embeddings: 42 queries, emoji \U0001F600."),
    ("what keeps going?", " ".join(["a very long sentence that keeps going and going"] * 60)),
)
TRACE_PAIRS = 2


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


def is_cross_encoder_checkpoint(path: str | os.PathLike) -> bool:
    """A directory whose ``config.json`` names a ``*ForSequenceClassification`` architecture."""
    config = Path(os.path.expanduser(str(path))) / "config.json"
    if not config.is_file():
        return False
    try:
        archs = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return False
    return any(str(a).endswith("ForSequenceClassification") for a in archs)


def _activation(src: Path, config: dict[str, Any]) -> str:
    path = None
    st_config = src / "config_sentence_transformers.json"
    if st_config.is_file():
        path = _read_json(st_config).get("activation_fn")
    if path is None:
        path = config.get("sbert_ce_default_activation_function")
    if path is None:
        return "sigmoid"
    name = str(path).rsplit(".", 1)[-1]
    if name not in ACTIVATIONS:
        raise ExportError(f"{src}: activation {path!r} is not supported in a reranker bundle",
                          f"supported: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _scorer(model: Any, activation: str, input_names: tuple[str, ...]):
    import torch
    from torch import nn

    class PairScorer(nn.Module):
        output_names = ("scores",)

        def __init__(self):
            super().__init__()
            self.model = model
            self.input_names = input_names

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            logits = self.model(**dict(zip(self.input_names, inputs))).logits[:, 0]
            return torch.sigmoid(logits) if activation == "sigmoid" else logits

    return PairScorer().eval()


def encode_pairs(tokenizer_path: str | Path, pairs, context_length: int, pad_id: int,
                 input_names: tuple[str, ...]) -> dict:
    """Pairs tokenised and padded by the engine's own pair tokenizer (``longest_first``
    truncation, right padding): the validation feeds are what a run feeds."""
    from clipeval.engine.text.pairs import PairTokenizer

    tok = PairTokenizer(tokenizer_path, {"pad_id": pad_id, "text_inputs": list(input_names)}, context_length)
    return tok.pad(tok.encode([tuple(p) for p in pairs]))


def _load(src: Path):
    import transformers

    try:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(str(src), attn_implementation="eager")
        tok = transformers.AutoTokenizer.from_pretrained(str(src))
    except Exception as exc:  # transformers raises many types for a broken checkpoint
        raise ExportError(f"cannot load {src} as a sequence-classification model: {type(exc).__name__}: {exc}",
                          "check that the directory holds a complete cross-encoder checkpoint") from None
    return model.eval(), tok


def _context_length(src: Path, config: Any, hf_tok: Any, max_seq_length: int | None) -> int:
    positions = getattr(config, "max_position_embeddings", None)
    if max_seq_length is not None:
        if isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int) or max_seq_length < 2:
            raise ExportError(f"max_seq_length must be an integer of at least 2, got {max_seq_length!r}")
        if positions and max_seq_length > positions:
            raise ExportError(f"max_seq_length {max_seq_length} is longer than the model's {positions} positions "
                              "(max_position_embeddings)", f"set max_seq_length to at most {positions}")
        return max_seq_length
    sbert = src / "sentence_bert_config.json"
    given = _read_json(sbert).get("max_seq_length") if sbert.is_file() else None
    if given is not None and (isinstance(given, bool) or not isinstance(given, int) or given < 2):
        raise ExportError(f"{sbert}: max_seq_length must be an integer of at least 2, got {given!r}",
                          "fix it there, or pass max_seq_length")
    if given:
        return int(min(x for x in (given, positions) if x))
    limits = [x for x in (positions, getattr(hf_tok, "model_max_length", None)) if x and x < 100_000]
    if not limits:
        raise ExportError(f"cannot tell the maximum sequence length of {src}", "pass max_seq_length")
    return int(min(limits))


def export_reranker(source: str | os.PathLike, out_dir: str | os.PathLike, *, opset: int = 17,
                    force: bool = False, max_seq_length: int | None = None) -> Path:
    """Export the cross-encoder checkpoint directory ``source`` to a reranker bundle at ``out_dir``.

    Raises :class:`ExportError` for a checkpoint that is not a one-label sequence classifier, an
    unsupported activation, an ``out_dir`` that is not empty (``force`` replaces a bundle there),
    or ONNX scores more than 1e-4 from PyTorch's. Nothing appears at ``out_dir`` unless all succeeds.
    """
    src = Path(os.path.expanduser(str(source)))
    if not is_cross_encoder_checkpoint(src):
        raise ExportError(f"{src} is not a cross-encoder checkpoint (config.json names no "
                          "*ForSequenceClassification architecture)",
                          "pass a sentence-transformers CrossEncoder or sequence-classification model directory")
    out = Path(out_dir)
    check_out_dir(out, force)

    def build(stage: Path) -> dict[str, Any]:
        manifest = _build(src, stage, opset=opset, max_seq_length=max_seq_length)
        manifest.update({"source": str(source), "revision": None})
        return manifest

    build_bundle(out, build, force=force)
    log.info("exported reranker %s -> %s", source, out)
    return out


def _build(src: Path, stage: Path, *, opset: int, max_seq_length: int | None) -> dict[str, Any]:
    import numpy as np
    import torch

    from .tokenizer_export import export_tokenizer, tokenizer_rule
    from .towers import export_onnx
    from .validate import run_onnx, run_torch

    t0 = time.perf_counter()
    raw_config = _read_json(src / "config.json")
    model, hf_tok = _load(src)
    config = model.config
    if int(config.num_labels) != 1:
        raise ExportError(f"{src} has {config.num_labels} labels; a reranker scores with exactly one",
                          "pass a cross-encoder trained for relevance (one output)")
    activation = _activation(src, raw_config)
    context_length = _context_length(src, config, hf_tok, max_seq_length)
    input_names = tuple(n for n in ("input_ids", "attention_mask", "token_type_ids")
                        if n in getattr(hf_tok, "model_input_names", ("input_ids", "attention_mask")))
    if "attention_mask" not in input_names:
        input_names = ("input_ids", "attention_mask") + tuple(n for n in input_names if n not in ("input_ids",))
    info = export_tokenizer(src, stage / "tokenizer.json", "fast")
    scorer = _scorer(model, activation, input_names)
    feeds = encode_pairs(stage / "tokenizer.json", VALIDATION_PAIRS, context_length, info.pad_id, input_names)
    trace = encode_pairs(stage / "tokenizer.json", VALIDATION_PAIRS[:TRACE_PAIRS], context_length, info.pad_id,
                         input_names)
    axes = {0: "batch", 1: "sequence"}
    export_onnx(scorer, tuple(torch.from_numpy(trace[n]) for n in input_names), stage / RERANKER_FILE,
                dynamic_axes={**{n: axes for n in input_names}, "scores": {0: "batch"}}, opset=opset)
    reference = run_torch(scorer, {n: feeds[n] for n in input_names})["scores"]
    candidate = run_onnx(stage / RERANKER_FILE, {n: feeds[n] for n in input_names})["scores"]
    max_abs = float(np.abs(np.asarray(reference, np.float64) - np.asarray(candidate, np.float64)).max())
    block = {"max_abs_diff": max_abs, "tolerance": {"max_abs_diff": MAX_ABS}, "passed": max_abs <= MAX_ABS,
             "inputs": {"pairs": len(VALIDATION_PAIRS), "shape": list(feeds["input_ids"].shape),
                        "lengths": [int(n) for n in feeds["attention_mask"].sum(axis=1)]}}
    if not block["passed"]:
        raise ExportError(f"reranker export of {src} failed validation: scores differ from PyTorch by up to "
                          f"{max_abs:.3g} (tolerance {MAX_ABS:g})", "report the checkpoint and versions")
    log.info("reranker export and validation %.1f s", time.perf_counter() - t0)
    prompts, default_prompt = {}, None
    st_config = src / "config_sentence_transformers.json"
    if st_config.is_file():
        st = _read_json(st_config)
        prompts, default_prompt = st.get("prompts") or {}, st.get("default_prompt_name")
    (stage / "preprocess.json").write_text(
        json.dumps({"format": 1, "modality": "text", "note": "reranker bundle: no image input"}, indent=2) + "\n",
        encoding="utf-8")
    rule = tokenizer_rule(info, "cls", "longest", input_names)
    rule["truncation"] = "longest_first"
    return {
        "format": FORMAT_VERSION,
        "family": RERANKER_FAMILY,
        "embed_dim": 1,
        "context_length": context_length,
        "precision": "fp32",
        "opset": opset,
        "variants": {"fp32": {"reranker": RERANKER_FILE}},
        "tokenizer": rule,
        "reranker": {"activation": activation, "num_labels": 1, "model_type": getattr(config, "model_type", None),
                     "architecture": (getattr(config, "architectures", None) or [None])[0],
                     "prompts": prompts, "default_prompt_name": default_prompt,
                     "max_seq_length_source": "config" if max_seq_length is not None else "checkpoint"},
        "validation": {"fp32": block},
        "exported_with": tool_versions(),
        "created_by": f"clipeval {__version__}",
    }


def resolve_reranker_bundle(model: str | os.PathLike, cache_dir: str | os.PathLike | None = None, *,
                            max_seq_length: int | None = None) -> Bundle:
    """A reranker bundle for ``model``: a reranker bundle directory as it is; a cross-encoder
    checkpoint directory exported once into the model cache (keyed like text bundles, and by
    ``max_seq_length`` when given) and reused after. Raises :class:`BundleError` otherwise."""
    from .resolve import cache_root, cached_bundle_dir, cached_export

    path = Path(os.path.expanduser(str(model)))
    if is_bundle_dir(path):
        bundle = load_bundle(path)
        if bundle.family != RERANKER_FAMILY:
            raise BundleError(f"{path} is a {bundle.family} bundle, not a reranker",
                              "pass a cross-encoder checkpoint or a bundle it was exported to")
        if max_seq_length is not None and max_seq_length != bundle.context_length:
            raise BundleError(f"{path} is an exported reranker with max_seq_length {bundle.context_length}, "
                              f"not {max_seq_length}", "drop max_seq_length, or give the checkpoint directory")
        return bundle
    if not is_cross_encoder_checkpoint(path):
        raise BundleError(
            f"reranker {str(model)!r} is neither a reranker bundle nor a cross-encoder checkpoint directory",
            "pass a sentence-transformers CrossEncoder / sequence-classification model directory, or its bundle",
        )
    key = "reranker-fp32" + (f"-len{max_seq_length}" if max_seq_length is not None else "")
    target = cached_bundle_dir(str(path), None, key, cache_root(cache_dir))
    cached = cached_export(target)
    if cached is not None:
        return cached
    log.info("exporting reranker %s into the model cache at %s (once)", path, target)
    export_reranker(path, target, max_seq_length=max_seq_length)
    return load_bundle(target)
