"""Text tokenisation from a bundle's ``tokenizer.json`` (Hugging Face `tokenizers` format).

Padding follows the bundle's rule: ``"longest"`` pads each batch to its longest text (exact for
families whose pooled output ignores tokens after the end token, e.g. CLIP's causal text tower),
``"max_length"`` pads to the context length (SigLIP). Texts longer than the context length are
truncated (the end token is kept by the tokenizer's post-processor) and counted.

Long texts are cut before they are tokenised, so time and memory stay bounded whatever a
text's length: `tokenizers` encodes a whole text before truncating it and keeps every
overflowing window (a 30 MB line took 48 s and 3.5 GB), and has no option to stop early.
A text of more than ``CUT_CHARS_PER_TOKEN * context_length`` characters is cut to that many
(:func:`cut_point`), at the last ASCII space when one lies in the second half of them. The
first ``context_length`` tokens are then the uncut text's whenever the cut text still
overflows the context and the tokens kept end at or before the last space ``b`` of the cut
text (checked on the encoding's character offsets; always true when the cut is at a space).
Why: every tokenizer clipeval exports splits text at U+0020 before its model sees it (CLIP's
regex and byte-level split, BERT's whitespace/punctuation split, SentencePiece's ``▁``, which
no piece holds in its middle, so Viterbi paths all pass through it), normalisers act within
a word (NFC/NFKC, lowercase, accents, whitespace runs to one space), and the models (BPE,
WordPiece, Unigram, word-level) work on one such piece at a time: the pieces before ``b`` are
tokenised alike with or without what follows. When the check fails (the text has words of
hundreds of characters, runs of thousands of spaces, or no spaces at all, as Chinese or
Japanese text in a byte-level BPE), the text is cut again at ``LAST_CUT_CHARS_PER_TOKEN *
context_length`` characters and checked again; past that, the cut text's tokens are used
(in the tests they equal the uncut ones on spaceless CJK text, emoji runs and long words).
A text cut either way counts as truncated.

Steps the manifest names beyond ``tokenizer.json`` (open_clip's text cleaning, SigLIP's
SentencePiece procedure) are :mod:`.textprep`'s; they run on texts first cut at
``CLEAN_CUT_CHARS_PER_TOKEN * context_length`` characters (at a space), so they too see a bounded
text, and a SentencePiece text is cut again at the last cut's bound before it is encoded.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

import numpy as np

from ..errors import BundleError, DatasetError
from ..textio import lone_surrogate
from .prep import text_preparation

log = logging.getLogger(__name__)

PADDING_RULES = ("longest", "max_length")
CUT_CHARS_PER_TOKEN = 32  # the first cut: ordinary text has 3-6 characters a token
LAST_CUT_CHARS_PER_TOKEN = 256  # the second cut, for texts the first one could not decide
CLEAN_CUT_CHARS_PER_TOKEN = 4 * LAST_CUT_CHARS_PER_TOKEN  # before cleaning steps that may shorten a text
ENCODE_CHUNK = 256  # texts per call to `tokenizers` (bounds its per-call memory)
_SPACE_THEN_WORD = re.compile(" [^ ]")  # searched in the reversed text: the last space before a word


def cut_point(text: str, limit: int) -> tuple[int, int]:
    """``(cut, boundary)`` for a text of more than ``limit`` characters: keep ``text[:cut]``;
    ``boundary`` is the last place at or before ``cut`` where a word ends and an ASCII space
    follows (0 when there is none). The cut is at ``boundary`` when that keeps at least half
    of ``limit``, else at ``limit``."""
    head = text[: limit + 1]
    match = _SPACE_THEN_WORD.search(head[::-1])
    boundary = len(head) - 1 - match.start() if match else 0
    return (boundary if boundary >= limit // 2 else limit), boundary


@dataclass
class Encoded:
    """Token ids of a list of texts, unpadded, plus how many were truncated."""

    ids: list[np.ndarray]
    truncated: np.ndarray  # bool per text

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))


def check_unicode(texts, what: str = "text") -> None:
    """Raise :class:`~clipeval.engine.errors.DatasetError` naming every text of ``texts`` (a
    sequence of ``str``, or of ``(query, document)`` pairs) that holds a lone UTF-16 surrogate
    (U+D800..U+DFFF): no UTF-8 encodes it, and the reference tokenizers (Hugging Face
    ``tokenizers``, SentencePiece) fail on it. Such texts come from JSON files whose writer cut a
    string between the two halves of a surrogate pair (``"\\ud83d"``)."""
    bad = []
    for text in texts:
        parts = text if isinstance(text, tuple) else (text,)
        for part in parts:
            at = lone_surrogate(part) if isinstance(part, str) else -1
            if at >= 0:
                bad.append(f"{part[:60]!r}{'...' if len(part) > 60 else ''} (character {at + 1})")
                break
    if bad:
        shown = "\n    ".join(bad[:10]) + (f"\n    ... and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise DatasetError(f"{len(bad)} {what}(s) are not Unicode text: they hold a lone UTF-16 surrogate "
                           f"(half of a character, as a JSON \\ud83d escape without its pair)\n    {shown}",
                           "fix the file that holds them (its writer cut a character in two): write the whole "
                           "character, or remove the escape")


class TextTokenizer:
    """Tokenises texts the way the exported text tower expects."""

    def __init__(self, path: str | os.PathLike, rule: dict, context_length: int):
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for bad files
            raise BundleError(f"cannot read tokenizer {path}: {exc}", "re-export the bundle") from None
        padding = rule.get("padding", "longest")
        if padding not in PADDING_RULES:
            raise BundleError(
                f"unknown padding rule {padding!r} in the bundle manifest (known: {', '.join(PADDING_RULES)})",
                "re-export the bundle with this version of clipeval",
            )
        self.padding = padding
        self.pad_id = int(rule.get("pad_id", 0))
        self.context_length = int(context_length)
        self.text_inputs = tuple(rule.get("text_inputs", ("input_ids", "attention_mask")))
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=self.context_length)
        self._clean, self._sentencepiece = text_preparation(os.path.dirname(os.fspath(path)), rule,
                                                            self.context_length)

    def _encode_batch(self, texts: list[str]) -> list:
        """`tokenizers`' encodings of ``texts`` (already cut)."""
        return self._tok.encode_batch(texts)

    def encode(self, texts: list[str]) -> Encoded:
        """The token ids of ``texts`` for the bundle's text tower, and which were truncated.

        Returns :class:`Encoded`: ``ids``, one int64 array per text of at most
        ``context_length`` tokens (the special tokens the bundle's ``tokenizer.json``
        post-processor adds included: ``<|startoftext|>`` / ``<|endoftext|>`` for CLIP,
        ``[CLS]`` / ``[SEP]`` for BERT-style models, ``</s>`` for SigLIP), unpadded (:meth:`pad`
        pads a batch); ``truncated``, bool ``[len(texts)]``: the text did not fit and was cut, as
        the reference tokenizers truncate (``truncation=True, max_length=context_length``).
        Token ids equal those of the checkpoint's own tokenizer: Hugging Face ``tokenizers`` on
        ``tokenizer.json``, after open_clip's clean-up steps or SigLIP's SentencePiece procedure
        where the bundle lists them (:mod:`clipeval.engine.text.prep`).

        No text of more than ``LAST_CUT_CHARS_PER_TOKEN * context_length`` characters reaches
        the tokenizer (see the module docstring for the cut and why it leaves the ids alone), so
        a text of any length costs bounded time and memory. Raises
        :class:`~clipeval.engine.errors.DatasetError` for a text holding a lone UTF-16 surrogate
        (what a JSON ``\\ud83d`` escape of half an emoji decodes to): it is not Unicode text, and
        no reference tokenizer encodes it (:func:`check_unicode`).
        """
        texts = list(texts)
        check_unicode(texts)
        pre_cut = np.zeros(len(texts), dtype=bool)
        if self._clean is not None or self._sentencepiece is not None:
            texts, pre_cut = self._cut_all(texts, CLEAN_CUT_CHARS_PER_TOKEN)
        if self._clean is not None:  # open_clip's text cleaning (engine/textprep.py)
            texts = [self._clean(t) for t in texts]
        if self._sentencepiece is not None:  # SigLIP's SentencePiece procedure (engine/textprep.py)
            texts, cut = self._cut_all(texts, LAST_CUT_CHARS_PER_TOKEN)
            ids, truncated = self._sentencepiece.encode(texts)
            return Encoded(ids=ids, truncated=truncated | cut | pre_cut)
        ids: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
        truncated = np.zeros(len(texts), dtype=bool)
        undecided = []  # texts whose first cut could not be shown to keep the ids
        for start in range(0, len(texts), ENCODE_CHUNK):
            chunk = texts[start:start + ENCODE_CHUNK]
            cuts = [self._cut(t, CUT_CHARS_PER_TOKEN) for t in chunk]
            for i, (text, (cut, boundary), enc) in enumerate(
                    zip(chunk, cuts, self._encode_batch([t[:c] for t, (c, _) in zip(chunk, cuts)])), start):
                ids[i] = np.asarray(enc.ids, dtype=np.int64)
                truncated[i] = bool(enc.overflowing) or cut < len(text)
                if cut < len(text) and not self._kept(enc, boundary):
                    undecided.append(i)
        for i in undecided:
            text = texts[i]
            cut, _ = self._cut(text, LAST_CUT_CHARS_PER_TOKEN)
            enc = self._encode_batch([text[:cut]])[0]
            ids[i] = np.asarray(enc.ids, dtype=np.int64)
            truncated[i] = bool(enc.overflowing) or cut < len(text)
        truncated |= pre_cut
        if undecided:
            log.debug("%d long text(s) needed the second cut before tokenising", len(undecided))
        return Encoded(ids=ids, truncated=truncated)

    def _cut_all(self, texts: list[str], chars_per_token: int) -> tuple[list[str], np.ndarray]:
        """``texts`` cut by :meth:`_cut` at ``chars_per_token``, and which of them were cut."""
        cuts = [self._cut(t, chars_per_token)[0] for t in texts]
        cut = np.fromiter((c < len(t) for t, c in zip(texts, cuts)), dtype=bool, count=len(texts))
        return [t[:c] for t, c in zip(texts, cuts)], cut

    def _cut(self, text: str, chars_per_token: int) -> tuple[int, int]:
        """``(cut, boundary)`` of :func:`cut_point` at ``chars_per_token`` characters a token of
        context; ``(len(text), len(text))`` for a text short enough to keep whole."""
        limit = chars_per_token * self.context_length
        if len(text) <= limit:
            return len(text), len(text)
        return cut_point(text, limit)

    @staticmethod
    def _kept(encoding, boundary: int) -> bool:
        """Whether a cut text's ``encoding`` holds the uncut text's first tokens: it overflowed
        the context, and every token kept ends at or before ``boundary``."""
        return bool(encoding.overflowing) and max((end for _, end in encoding.offsets), default=0) <= boundary

    def pad(self, ids: list[np.ndarray], length: int | None = None) -> dict[str, np.ndarray]:
        """Pad a batch of id arrays into the tower's input dict."""
        if length is None:
            length = self.context_length if self.padding == "max_length" else max(len(x) for x in ids)
        batch = np.full((len(ids), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), length), dtype=np.int64)
        for row, x in enumerate(ids):
            batch[row, : len(x)] = x
            mask[row, : len(x)] = 1
        feeds = {"input_ids": batch}
        if "attention_mask" in self.text_inputs:
            feeds["attention_mask"] = mask
        return feeds

    def __call__(self, texts: list[str], length: int | None = None) -> dict[str, np.ndarray]:
        return self.pad(self.encode(texts).ids, length)
