"""(query, document) pairs to token ids, for a reranker bundle (``family: "reranker"``).

A reranker bundle (made by ``clipeval.export.reranker`` from a cross-encoder checkpoint) holds
``reranker.onnx``: ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the model
uses them), int64 ``[B, T]`` -> ``scores`` float32 ``[B]``, with the checkpoint's activation
inside the graph, plus ``tokenizer.json`` whose post-processor joins a (query, document) pair
(``[CLS] query [SEP] document [SEP]`` for BERT).

Pairs are tokenised with ``longest_first`` truncation to the bundle's ``context_length`` (as
sentence-transformers' ``CrossEncoder`` does). The embedding stage
(:meth:`clipeval.engine.embedding.stage.EmbeddingStage.pair_scores`) sorts them by length and
scores them in batches, each padded only to its own longest pair.
"""

from __future__ import annotations

import numpy as np

from ..errors import BundleError
from .tokenizer import check_unicode

RERANKER_FAMILY = "reranker"


class PairTokenizer:
    """Tokenises (query, document) pairs the way the exported reranker expects."""

    def __init__(self, path, rule: dict, context_length: int):
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for bad files
            raise BundleError(f"cannot read tokenizer {path}: {exc}", "re-export the bundle") from None
        self.pad_id = int(rule.get("pad_id", 0))
        self.context_length = int(context_length)
        self.inputs = tuple(rule.get("text_inputs", ("input_ids", "attention_mask")))
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=self.context_length, strategy=rule.get("truncation", "longest_first"))

    def encode(self, pairs: list[tuple[str, str]]):
        """One ``tokenizers.Encoding`` per pair: ``ids`` and ``type_ids`` (lists of int, at most
        ``context_length``), ``overflowing`` (non-empty when the pair was cut). Raises
        :class:`~clipeval.engine.errors.DatasetError` for a pair holding a lone surrogate
        (:func:`~clipeval.engine.text.tokenizer.check_unicode`)."""
        pairs = [(q, d) for q, d in pairs]
        check_unicode(pairs, "query-document pair")
        return self._tok.encode_batch(pairs)

    def pad(self, encodings) -> dict[str, np.ndarray]:
        """The reranker's feeds for ``encodings``: int64 ``[b, T]`` arrays (``input_ids`` padded
        with the pad id, ``attention_mask``, and ``token_type_ids`` where the graph takes them),
        ``T`` the longest pair of the batch."""
        width = max(len(e.ids) for e in encodings)
        feeds = {name: np.zeros((len(encodings), width), dtype=np.int64) for name in self.inputs}
        feeds["input_ids"][:] = self.pad_id
        for row, e in enumerate(encodings):
            n = len(e.ids)
            feeds["input_ids"][row, :n] = e.ids
            feeds["attention_mask"][row, :n] = 1
            if "token_type_ids" in feeds:
                feeds["token_type_ids"][row, :n] = e.type_ids
        return feeds
