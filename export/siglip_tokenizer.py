"""SigLIP's SentencePiece tokenizer (``spiece.model``) -> a `tokenizers` Unigram tokenizer.

transformers has only a slow ``SiglipTokenizer`` (it needs the ``sentencepiece`` package). What it
does to a text, and the `tokenizers` step that does the same here:

1. ``canonicalize_text``: lowercase (``do_lower_case``), drop ASCII punctuation
   (``string.punctuation``), collapse whitespace runs to one space, strip
   -> ``Lowercase``, ``Replace(punct, "")``, ``Replace(\\s+, " ")``, ``Strip``;
2. SentencePiece normalisation of ``"▁" + text`` (the slow tokenizer encodes ``<unk> + text`` and
   drops the ``<unk>`` pieces, i.e. exactly one word-boundary marker at the start)
   -> ``Precompiled`` (the model's NFKC map, when it has one), ``Replace(" ", "▁")``,
   ``Prepend("▁")``;
3. Viterbi segmentation with the pieces' scores -> ``Unigram`` with the same vocabulary and scores;
4. ``</s>`` appended -> ``TemplateProcessing("$A </s>")``.

The model file is read with the protobuf schema transformers ships, so no ``sentencepiece``
package is needed. Texts are padded with the pad token (``</s>`` in SigLIP checkpoints) to the
context length: SigLIP's text tower has no attention mask and pools the last position.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import Any

from clipeval.engine.errors import ExportError

from .tokenizer_export import TokenizerInfo

SPIECE = "spiece.model"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
UNDERLINE = "\u2581"
PUNCTUATION_PATTERN = "[" + re.escape(string.punctuation) + "]"
DEFAULTS = {"eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>", "do_lower_case": True}


def _sp_proto():
    """The SentencePiece ``ModelProto`` class (from sentencepiece if installed, else transformers')."""
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb2
    except ImportError:
        try:
            from transformers.utils import sentencepiece_model_pb2_new as pb2
        except ImportError as exc:  # protobuf missing
            raise ExportError(
                f"reading SigLIP's {SPIECE} needs protobuf ({exc})",
                "pip install protobuf",
            ) from None
    return pb2


def read_spm(path: str | Path):
    """Parse a SentencePiece model file into its ``ModelProto``."""
    pb2 = _sp_proto()
    proto = pb2.ModelProto()
    try:
        proto.ParseFromString(Path(path).read_bytes())
    except Exception as exc:  # protobuf's DecodeError and OSError
        raise ExportError(f"cannot read {path}: {type(exc).__name__}: {exc}", "download the checkpoint again") from None
    return proto


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # serialised AddedToken
        return value.get("content")
    return value


def tokenizer_settings(checkpoint: str | Path) -> dict[str, Any]:
    """Special tokens and ``do_lower_case`` from the checkpoint's tokenizer config files."""
    out = dict(DEFAULTS)
    for name in (SPECIAL_TOKENS_MAP, TOKENIZER_CONFIG):
        path = Path(checkpoint) / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ExportError(f"cannot read {path}: {exc}", "download the checkpoint again") from None
        for key in ("eos_token", "pad_token", "unk_token"):
            if _token_text(data.get(key)):
                out[key] = _token_text(data[key])
        if "do_lower_case" in data:
            out["do_lower_case"] = bool(data["do_lower_case"])
    return out


def convert_siglip_tokenizer(checkpoint: str | Path):
    """``(tokenizers.Tokenizer, TokenizerInfo)`` equivalent to the checkpoint's ``SiglipTokenizer``."""
    from tokenizers import Regex, Tokenizer, models, normalizers, processors

    path = Path(checkpoint) / SPIECE
    if not path.is_file():
        raise ExportError(
            f"SigLIP checkpoint {checkpoint} has no {SPIECE}",
            "save the tokenizer with the model (`tokenizer.save_pretrained(dir)`)",
        )
    proto = read_spm(path)
    if proto.trainer_spec.model_type != 1:  # UNIGRAM
        raise ExportError(
            f"{path} is not a Unigram SentencePiece model (model_type {proto.trainer_spec.model_type})",
            "SigLIP checkpoints ship a Unigram model; check the checkpoint",
        )
    settings = tokenizer_settings(checkpoint)
    vocab = [(p.piece, float(p.score)) for p in proto.pieces]
    ids = {piece: i for i, (piece, _) in enumerate(vocab)}
    missing = [settings[k] for k in ("eos_token", "pad_token", "unk_token") if settings[k] not in ids]
    if missing:
        raise ExportError(
            f"{path} lacks the special tokens {', '.join(missing)} named by the tokenizer config",
            "check the checkpoint's tokenizer_config.json",
        )
    tok = Tokenizer(models.Unigram(vocab, unk_id=ids[settings["unk_token"]], byte_fallback=False))
    # SiglipTokenizer.tokenize encodes "▁" + text (with any "▁" in the text made a space) and only
    # then canonicalises (lowercase, punctuation out, whitespace collapsed, stripped): so a text
    # that starts with whitespace keeps a lone "▁" piece, as in transformers.
    steps = [normalizers.Replace(UNDERLINE, " "), normalizers.Prepend(UNDERLINE)]
    if settings["do_lower_case"]:
        steps.append(normalizers.Lowercase())
    steps += [
        normalizers.Replace(Regex(PUNCTUATION_PATTERN), ""),
        normalizers.Replace(Regex(r"\s+"), " "),
        normalizers.Strip(),
    ]
    charsmap = proto.normalizer_spec.precompiled_charsmap
    if charsmap:
        steps.append(normalizers.Precompiled(charsmap))
    steps.append(normalizers.Replace(" ", UNDERLINE))
    tok.normalizer = normalizers.Sequence(steps)
    eos = settings["eos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, ids[eos])]
    )
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(t, normalized=False) for t in dict.fromkeys(
        (settings["pad_token"], eos, settings["unk_token"]))])
    tok.no_padding()
    tok.no_truncation()
    return tok, TokenizerInfo(pad_id=ids[settings["pad_token"]], eos_id=ids[eos], bos_id=None)
