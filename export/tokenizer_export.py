"""The bundle's ``tokenizer.json`` and the manifest's tokenizer rule; word-level tokenizers for tiny models.

Pooling. A CLIP text tower returns the hidden state at one position of each sequence. transformers
picks it in one of two ways, chosen by the text config's ``eos_token_id``:

* ``"max_id"`` (``eos_token_id == 2``, checkpoints converted before transformers PR #24773, e.g.
  the OpenAI ones): the position of the largest token id, which is the end token because it has
  the largest id in the vocabulary; ``argmax`` returns its first occurrence.
* ``"first_eos"`` (any other ``eos_token_id``): the first position holding ``eos_token_id``.

Either way the text tower is causal, so the pooled state depends on nothing after that position:
padding a batch to its longest text gives the same embeddings as padding to the context length,
provided every sequence carries its end token and padding never moves the pooled position (a pad
id above the end token's id would, under ``"max_id"``). :func:`check_pooling` proves both on real
token ids before a bundle is written.

The functions that build a word-level tokenizer (:func:`train_wordlevel_tokenizer`,
:func:`wrap_fast_tokenizer`) are the recipe of the tiny test checkpoints and the demo model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipeval.engine.errors import ExportError

log = logging.getLogger(__name__)

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)
TEXT_INPUTS = ("input_ids", "attention_mask")
POOLING_RULES = ("first_eos", "max_id")
LEGACY_EOS_ID = 2  # transformers' marker for the "max_id" rule


@dataclass(frozen=True)
class TokenizerInfo:
    pad_id: int
    eos_id: int
    bos_id: int | None
    extra: dict[str, Any] = field(default_factory=dict)  # more keys of the manifest's tokenizer block


def train_wordlevel_tokenizer(corpus: Iterable[str], *, eos_last: bool = False, lowercase: bool = True):
    """A word-level ``tokenizers.Tokenizer`` trained on ``corpus``.

    Whitespace/punctuation pre-tokenizer, lowercase normaliser, special tokens ``<pad>`` (0),
    ``<unk>`` (1), ``<bos>`` (2), ``<eos>`` (3) and a post-processor that wraps every text as
    ``<bos> ... <eos>``. With ``eos_last`` the end token gets the largest id instead (as in the
    OpenAI CLIP vocabulary), which is what the ``"max_id"`` pooling rule needs.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = [t for t in SPECIAL_TOKENS if not (eos_last and t == EOS)]
    tok.train_from_iterator(list(corpus), trainer=trainers.WordLevelTrainer(special_tokens=specials))
    if eos_last:
        tok.add_special_tokens([EOS])
    bos_id, eos_id = tok.token_to_id(BOS), tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        pair=f"{BOS} $A {EOS} $B {EOS}",
        special_tokens=[(BOS, bos_id), (EOS, eos_id)],
    )
    return tok


def wrap_fast_tokenizer(tokenizer, model_max_length: int):
    """Wrap a ``tokenizers.Tokenizer`` made by :func:`train_wordlevel_tokenizer` for transformers
    (``save_pretrained`` / ``AutoTokenizer.from_pretrained``)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=model_max_length,
    )


def special_ids(tokenizer) -> TokenizerInfo:
    """pad/eos/bos ids of a ``tokenizers.Tokenizer`` made by :func:`train_wordlevel_tokenizer`."""
    return TokenizerInfo(tokenizer.token_to_id(PAD), tokenizer.token_to_id(EOS), tokenizer.token_to_id(BOS))


def pooling_rule(config_eos_token_id: int | None) -> str:
    """The pooling rule transformers' CLIP text model applies for this ``text_config.eos_token_id``."""
    return "max_id" if config_eos_token_id == LEGACY_EOS_ID else "first_eos"


def export_tokenizer(checkpoint: str | Path, out_path: str | Path, kind: str = "fast") -> TokenizerInfo:
    """Write the checkpoint's tokenizer as ``out_path`` in `tokenizers` format (padding and
    truncation off: the engine sets them) and return its special ids.

    ``kind`` ``"fast"`` saves the fast tokenizer transformers loads (CLIP's BPE, Chinese-CLIP's
    BERT WordPiece); ``"siglip_spm"`` converts SigLIP's ``spiece.model`` and copies it beside
    ``out_path`` (see :mod:`.siglip_tokenizer`).
    A tokenizer without an end token (BERT) uses its separator token as the end.
    """
    if kind == "siglip_spm":
        import shutil

        from .siglip_tokenizer import SPIECE, convert_siglip_tokenizer, sentencepiece_block

        tok, info = convert_siglip_tokenizer(checkpoint)
        tok.save(str(out_path))
        shutil.copyfile(Path(checkpoint) / SPIECE, Path(out_path).parent / SPIECE)
        return TokenizerInfo(info.pad_id, info.eos_id, info.bos_id,
                             {"sentencepiece": sentencepiece_block(checkpoint, info.eos_id)})
    if kind != "fast":
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    from transformers import AutoTokenizer

    try:
        hf_tok = AutoTokenizer.from_pretrained(str(checkpoint))
    except Exception as exc:  # transformers raises many types for a missing or broken tokenizer
        raise ExportError(
            f"cannot load the tokenizer of {checkpoint}: {type(exc).__name__}: {exc}",
            "save the tokenizer with the model (`tokenizer.save_pretrained(dir)`)",
        ) from None
    backend = getattr(hf_tok, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(
            f"the tokenizer of {checkpoint} ({type(hf_tok).__name__}) has no fast `tokenizers` backend",
            "save a fast tokenizer (tokenizer.json) with the checkpoint",
        )
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(backend.to_str())
    tok.no_padding()
    tok.no_truncation()
    tok.save(str(out_path))
    eos = hf_tok.eos_token_id if hf_tok.eos_token_id is not None else getattr(hf_tok, "sep_token_id", None)
    if eos is None:
        raise ExportError(
            f"the tokenizer of {checkpoint} has no end token (eos_token or sep_token)",
            "set eos_token in the checkpoint's tokenizer config",
        )
    eos_id = int(eos)
    pad_id = hf_tok.pad_token_id
    if pad_id is None:
        log.info("tokenizer of %s has no pad token; padding with the end token %d", checkpoint, eos_id)
        pad_id = eos_id
    bos = hf_tok.bos_token_id if hf_tok.bos_token_id is not None else getattr(hf_tok, "cls_token_id", None)
    return TokenizerInfo(int(pad_id), eos_id, None if bos is None else int(bos))


def encode_padded(tokenizer_path: str | Path, texts: Sequence[str], context_length: int, pad_id: int,
                  length: int | None = None, extra: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Tokenise ``texts`` as the engine does with a bundle's tokenizer (``tokenizer.json`` plus the
    manifest's ``extra`` steps, see :mod:`clipeval.engine.text.prep`): truncated to
    ``context_length``, padded on the right with ``pad_id`` to ``length`` (default: the longest)."""
    from clipeval.engine.text.tokenizer import TextTokenizer

    rule = {"pad_id": pad_id, "padding": "longest", "text_inputs": list(TEXT_INPUTS), **(extra or {})}
    tok = TextTokenizer(tokenizer_path, rule, context_length)
    return tok.pad(tok.encode(list(texts)).ids, length)


def pooled_positions(input_ids: np.ndarray, rule: str, eos_id: int) -> np.ndarray:
    """The position transformers pools for each row (see the module docstring)."""
    if rule == "first":
        return np.zeros(input_ids.shape[0], dtype=np.int64)
    if rule == "last":
        return np.full(input_ids.shape[0], input_ids.shape[1] - 1, dtype=np.int64)
    if rule == "max_id":
        return np.argmax(input_ids, axis=-1)
    if rule == "first_eos":
        return np.argmax(input_ids == eos_id, axis=-1)
    raise ValueError(f"unknown pooling rule {rule!r}")


def check_pooling(feeds: dict[str, np.ndarray], texts: Sequence[str], rule: str, pool_eos_id: int,
                  eos_id: int, context_length: int, pad_id: int) -> None:
    """Raise ExportError unless, for every text, the pooled position is its end token and stays so
    when the batch is padded to ``context_length`` (the proof that padding to the longest is exact).

    Only CLIP's rules (``"first_eos"``, ``"max_id"``) pool a position that padding could move;
    ``"first"`` pools the first token of a masked bidirectional tower and ``"last"`` pools a
    sequence always padded to the context length, so there is nothing to prove for them."""
    if rule not in POOLING_RULES:
        return
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    lengths = mask.sum(axis=1)
    wide = np.full((ids.shape[0], context_length), pad_id, dtype=np.int64)
    wide[:, : ids.shape[1]] = ids
    problems = []
    for padded, how in ((ids, "padded to the longest"), (wide, f"padded to {context_length}")):
        pos = pooled_positions(padded, rule, pool_eos_id)
        for row, text in enumerate(texts):
            p = int(pos[row])
            if p >= lengths[row] or padded[row, p] != eos_id:
                problems.append(f"{text!r} ({how}): pools position {p} of {int(lengths[row])} real tokens")
    if problems:
        raise ExportError(
            f"the text tower's pooling rule {rule!r} (end id {pool_eos_id}, pad id {pad_id}) does not land "
            "on the end token:\n    " + "\n    ".join(problems),
            "make text_config.eos_token_id match the tokenizer's end token, and the tokenizer add it to every text",
        )


def tokenizer_rule(info: TokenizerInfo, pooling: str, padding: str = "longest",
                   text_inputs: Sequence[str] = TEXT_INPUTS) -> dict[str, Any]:
    """The manifest's ``tokenizer`` block (plus ``info.extra``: ``clean``, ``sentencepiece``; see
    :mod:`clipeval.engine.text.prep`)."""
    return {
        "pad_id": info.pad_id,
        "eos_id": info.eos_id,
        "bos_id": info.bos_id,
        "padding": padding,
        "pooling": pooling,
        "text_inputs": list(text_inputs),
        **info.extra,
    }
