"""Second-stage reranking with a reranker bundle (``family: "reranker"``).

A reranker bundle (made by ``clipeval.export.reranker`` from a cross-encoder checkpoint) holds
``reranker.onnx``: ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the model
uses them), int64 ``[B, T]`` -> ``scores`` float32 ``[B]``, with the checkpoint's activation
inside the graph, plus ``tokenizer.json`` whose post-processor joins a (query, document) pair
(``[CLS] query [SEP] document [SEP]`` for BERT).

Pairs are tokenised with ``longest_first`` truncation to the bundle's ``context_length`` (as
sentence-transformers' ``CrossEncoder`` does), sorted by length and scored in batches, each
padded only to its own longest pair (the same scheme as the text tower's batches); scores come
back in input order.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from ..sessions.bundle import Bundle
from ..errors import BundleError
from ..progress import Progress
from ..sessions.onnx import Tower, open_tower, short_provider

log = logging.getLogger(__name__)

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
        """One ``tokenizers.Encoding`` per pair (ids, type ids, overflow)."""
        return self._tok.encode_batch([(q, d) for q, d in pairs])

    def pad(self, encodings) -> dict[str, np.ndarray]:
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


@dataclass
class Reranker:
    bundle: Bundle
    tower: Tower
    tokenizer: PairTokenizer
    load_s: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def provider(self) -> str:
        return short_provider(self.tower.provider)

    @property
    def precision(self) -> str:
        return self.bundle.manifest["precision"]

    def describe(self) -> dict:
        m = self.bundle.manifest
        return {"identity": self.bundle.identity, "path": str(self.bundle.path), "family": self.bundle.family,
                "source": m.get("source"), "context_length": self.bundle.context_length,
                "reranker": m.get("reranker")}

    def score(self, pairs: list[tuple[str, str]], *, batch_size: int, progress: bool = True
              ) -> tuple[np.ndarray, int]:
        """``(scores float32 [N] in input order, number of pairs truncated)``.

        Pairs are sorted by token length and scored ``batch_size`` at a time, each batch padded
        to its own longest pair."""
        if not pairs:
            return np.zeros(0, dtype=np.float32), 0
        encodings = self.tokenizer.encode(pairs)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        truncated = sum(1 for e in encodings if e.overflowing)
        order = np.argsort(lengths, kind="stable")
        out = np.empty(len(pairs), dtype=np.float32)
        with Progress("pairs", len(pairs), unit="pair", enabled=progress) as bar:
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                scores = self.tower.run(self.tokenizer.pad([encodings[i] for i in chunk]))
                out[chunk] = np.asarray(scores, dtype=np.float32).reshape(-1)
                bar.update(len(chunk))
        return out, truncated


def load_reranker(bundle: Bundle, *, provider: str = "auto", threads: int | None = None) -> Reranker:
    """Open the reranker graph and pair tokenizer of ``bundle``. Raises :class:`BundleError` for
    a bundle of another family."""
    t0 = time.perf_counter()
    if bundle.family != RERANKER_FAMILY:
        raise BundleError(f"{bundle.path} is a {bundle.family} bundle, not a reranker",
                          "pass a reranker bundle or a cross-encoder checkpoint")
    tower = open_tower(bundle.tower_path("reranker"), provider, threads)
    if tower.output_name != "scores":
        raise BundleError(f"{tower.path} outputs {tower.output_name!r}, not 'scores'", "re-export the bundle")
    tokenizer = PairTokenizer(bundle.path / "tokenizer.json", bundle.tokenizer_rule, bundle.context_length)
    return Reranker(bundle=bundle, tower=tower, tokenizer=tokenizer, load_s=time.perf_counter() - t0,
                    warnings=list(tower.warnings))
