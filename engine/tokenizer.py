"""Text tokenisation from a bundle's ``tokenizer.json`` (Hugging Face `tokenizers` format).

Padding follows the bundle's rule: ``"longest"`` pads each batch to its longest text (exact for
families whose pooled output ignores tokens after the end token, e.g. CLIP's causal text tower),
``"max_length"`` pads to the context length (SigLIP). Texts longer than the context length are
truncated (the end token is kept by the tokenizer's post-processor) and counted. Steps the
manifest names beyond ``tokenizer.json`` (open_clip's text cleaning, SigLIP's SentencePiece
procedure) are :mod:`.textprep`'s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .errors import BundleError
from .textprep import text_preparation

PADDING_RULES = ("longest", "max_length")


@dataclass
class Encoded:
    """Token ids of a list of texts, unpadded, plus how many were truncated."""

    ids: list[np.ndarray]
    truncated: np.ndarray  # bool per text

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))


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

    def encode(self, texts: list[str]) -> Encoded:
        if self._sentencepiece is not None:  # steps tokenizer.json cannot express (engine/textprep.py)
            return Encoded(*self._sentencepiece.encode(texts))
        if self._clean is not None:
            texts = [self._clean(t) for t in texts]
        encodings = self._tok.encode_batch(list(texts))
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
        truncated = np.fromiter((len(e.overflowing) > 0 for e in encodings), dtype=bool, count=len(encodings))
        return Encoded(ids=ids, truncated=truncated)

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
