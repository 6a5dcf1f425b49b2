"""SigLIP's SentencePiece tokenizer (``spiece.model``) -> the bundle's tokenizer files.

transformers has only a slow ``SiglipTokenizer`` (it needs the ``sentencepiece`` package). What it
does to a text (transformers 5, ``SiglipTokenizer.tokenize`` / ``_tokenize``):

1. ``"▁" + text`` with every ``"▁"`` in the text made a space;
2. split around its added tokens (``</s>``, ``<unk>``, ...);
3. per piece, ``canonicalize_text``: lowercase (``do_lower_case``), drop ASCII punctuation
   (``string.punctuation``), every run of Python whitespace (``\\s+``) made one space, strip;
4. SentencePiece encodes ``"<unk>" + piece`` and the pieces of ``"<unk>"`` are dropped: the
   model's normaliser (its precompiled NFKC map for ``nmt_nfkc`` vocabularies, which also treats
   ``"▁"`` as a space) runs with a word boundary in front, runs of spaces collapse to one and
   trailing ones go; the Unigram model segments;
5. ``</s>`` appended unless the ids already end with it.

The bundle gets two renderings:

* ``spiece.model`` (a copy) and a ``tokenizer.sentencepiece`` block in the manifest (the added
  tokens, ``do_lower_case``, ``unk_token``, ``eos_id``): the engine tokenises with the
  SentencePiece library by exactly the steps above (``clipeval.engine.text.prep``), which gives
  ``SiglipTokenizer``'s ids; C/C++ callers do the same with libsentencepiece (docs/export.md);
* ``tokenizer.json`` for callers that only have `tokenizers`: ``Replace("▁", " ")``,
  ``Prepend("▁")``, ``Lowercase``, ``Replace(punctuation, "")``, ``Replace(whitespace run, " ")``
  (Python's whitespace set, written out), ``Strip``, ``Precompiled`` (the model's map), runs of
  spaces collapsed and trailing ones stripped as SentencePiece does, spaces as ``"▁"``, a Unigram
  model with the same pieces and scores, ``</s>`` appended. It equals ``SiglipTokenizer`` except
  where `tokenizers`' ``Precompiled`` (which works per grapheme cluster) and SentencePiece's
  normaliser (longest prefix) part ways, e.g. a combining mark followed by a zero-width joiner,
  where Rust's and Python's lowercase differ (Greek final sigma), and on literal special tokens.

The model file is read with the protobuf schema (sentencepiece's, else the one transformers ships).
Texts are padded with the pad token (``</s>`` in SigLIP checkpoints) to the context length:
SigLIP's text tower has no attention mask and pools the last position.
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
# Python's whitespace (str.isspace, what re's \s matches in SiglipTokenizer) as an explicit class:
# Oniguruma's \s lacks U+001C..U+001F. (The largest such code point is U+3000.)
PYTHON_WHITESPACE_RUN = "[" + "".join(
    f"\\x{{{ord(c):x}}}" for c in map(chr, range(0x3001)) if c.isspace()) + "]+"
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
        if not isinstance(data, dict):
            raise ExportError(f"{path} is not a JSON object", "download the checkpoint again, or save the "
                              "tokenizer with `tokenizer.save_pretrained(dir)`")
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
    # then canonicalises (lowercase, punctuation out, whitespace collapsed, stripped): the leading
    # "▁" protects leading whitespace from the strip. SentencePiece's normaliser then maps the text
    # (nmt_nfkc maps "▁" to a space), collapses runs of spaces and drops trailing ones; with an
    # identity normaliser the "▁" stays and a text that starts with whitespace keeps a lone "▁".
    steps = [normalizers.Replace(UNDERLINE, " "), normalizers.Prepend(UNDERLINE)]
    if settings["do_lower_case"]:
        steps.append(normalizers.Lowercase())
    steps += [
        normalizers.Replace(Regex(PUNCTUATION_PATTERN), ""),
        normalizers.Replace(Regex(PYTHON_WHITESPACE_RUN), " "),
        normalizers.Strip(),
    ]
    charsmap = proto.normalizer_spec.precompiled_charsmap
    if charsmap:
        steps.append(normalizers.Precompiled(charsmap))
    if proto.normalizer_spec.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(" {2,}"), " "), normalizers.Strip(left=False, right=True)]
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


def sentencepiece_block(checkpoint: str | Path, eos_id: int) -> dict[str, Any]:
    """The manifest's ``tokenizer.sentencepiece`` block: what ``SiglipTokenizer`` (as the installed
    transformers loads it from the checkpoint) adds to the SentencePiece model, for
    :class:`clipeval.engine.text.prep.SiglipSentencePiece`."""
    try:
        from transformers import SiglipTokenizer

        hf = SiglipTokenizer.from_pretrained(str(checkpoint))
    except Exception as exc:  # transformers raises many types for a broken tokenizer
        raise ExportError(f"cannot load the SigLIP tokenizer of {checkpoint}: {type(exc).__name__}: {exc}",
                          "save the tokenizer with the model (`processor.save_pretrained(dir)`), and "
                          "pip install sentencepiece") from None
    added = [{"content": str(t.content), "id": int(i), "lstrip": bool(t.lstrip), "rstrip": bool(t.rstrip),
              "single_word": bool(t.single_word)} for i, t in sorted(hf.added_tokens_decoder.items())]
    return {
        "model": SPIECE,
        "procedure": "siglip",
        "unk_token": str(hf.unk_token),
        "eos_id": int(eos_id),
        "do_lower_case": bool(getattr(hf, "do_lower_case", True)),
        "added_tokens": added,
        "special_tokens": sorted(set(map(str, hf.all_special_tokens))),
    }
