"""Single models for direct use: a text model or a reranker, loaded and ready to call.

A *text bundle* (manifest ``family: "text"``, made by ``clipeval.export.text_model`` from a
sentence-transformers / BERT-style checkpoint) holds one ``text.onnx``: ``input_ids`` and
``attention_mask`` int64 ``[B, T]`` -> ``text_embeds`` float32 ``[B, D]``, with the checkpoint's
pooling and normalisation inside the graph, plus ``tokenizer.json``. The text tower of a
CLIP-style bundle works the same way. A *reranker bundle* (``family: "reranker"``) holds
``reranker.onnx``: a (query, document) pair's token ids -> ``scores`` float32 ``[B]``.

Both run through an :class:`~clipeval.engine.embedding.stage.EmbeddingStage` of their own with
the local executor and no cache: the same tokenising, batching and sessions as a run, for a
caller that wants embeddings or scores without a config (the tests' oracles, a notebook). A run
(:mod:`clipeval.engine.runner`) uses the run's one stage instead, with the cache.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from ..errors import BundleError
from ..sessions.bundle import Bundle
from .executor import TowerRef
from .local import LocalExecutor
from .stage import EmbeddingStage

log = logging.getLogger(__name__)

TEXT_FAMILY = "text"
RERANKER_FAMILY = "reranker"


def describe_bundle(bundle: Bundle) -> dict:
    """What a result records of a bundle (``meta.bundle``): identity (sha256 of its manifest),
    path, family, source, revision, embedding size and context length, and the text model's or
    reranker's export record where the manifest has one."""
    m = bundle.manifest
    out = {"identity": bundle.identity, "path": str(bundle.path), "family": bundle.family,
           "source": m.get("source"), "revision": m.get("revision"), "embed_dim": m.get("embed_dim"),
           "context_length": m.get("context_length")}
    for key in ("text_model", "reranker"):
        if key in m:
            out[key] = m.get(key)
    return out


def is_normalized(bundle: Bundle) -> bool:
    """Whether the text tower's output is L2-normalised (scores are then cosines): CLIP-style
    towers always; a text bundle as its export recorded (``text_model.normalize``)."""
    return bool((bundle.manifest.get("text_model") or {}).get("normalize", True))


class _Loaded:
    """A bundle with an embedding stage of its own (local executor, no cache)."""

    def __init__(self, bundle: Bundle, stage: EmbeddingStage, load_s: float):
        self.bundle = bundle
        self.stage = stage
        self.load_s = load_s

    @property
    def provider(self) -> str:
        return self.stage.provider

    @property
    def warnings(self) -> list[str]:
        return self.stage.warnings

    def describe(self) -> dict:
        return describe_bundle(self.bundle)


class TextModel(_Loaded):
    """The text tower of ``bundle`` at ``precision``, opened (see :func:`load_text_model`)."""

    def __init__(self, bundle: Bundle, precision: str, stage: EmbeddingStage, load_s: float):
        super().__init__(bundle, stage, load_s)
        self.precision = precision

    @property
    def normalized(self) -> bool:
        return is_normalized(self.bundle)

    def embed(self, texts: list[str], *, batch_size: int, progress: bool = True, label: str = "texts"
              ) -> tuple[np.ndarray, int]:
        """``(embeddings float32 [len(texts), D] in input order, number of texts truncated)``."""
        if not texts:
            return np.zeros((0, self.bundle.embed_dim), dtype=np.float32), 0
        self.stage.progress = progress
        out = self.stage.texts(self.bundle, self.precision, texts, batch_size=batch_size, label=label)
        return out.embeds, out.truncated


def load_text_model(bundle: Bundle, *, provider: str = "auto", precision: str | None = None,
                    threads: int | None = None) -> TextModel:
    """Open the text tower and tokenizer of ``bundle`` (a text bundle, or any bundle with a text
    tower) at ``precision`` (default: the bundle's own) on ``provider``.

    Raises :class:`BundleError` when the bundle has no text tower at that precision, or when the
    tower's output is not ``text_embeds``; :class:`~clipeval.engine.errors.ProviderError` for an
    unknown provider."""
    t0 = time.perf_counter()
    precision = precision or bundle.manifest["precision"]
    if "text" not in bundle.manifest["variants"].get(precision, {}):
        raise BundleError(f"bundle {bundle.path} has no text tower for precision {precision}",
                          "pass a text bundle made from a sentence-transformers checkpoint")
    executor = LocalExecutor(provider=provider, threads=threads, num_workers=0)
    executor.session(TowerRef(bundle, precision, "text"))
    stage = EmbeddingStage(executor)
    stage.tokenizer(bundle)
    return TextModel(bundle, precision, stage, time.perf_counter() - t0)


class Reranker(_Loaded):
    """The pair scorer of a reranker ``bundle``, opened (see :func:`load_reranker`)."""

    @property
    def precision(self) -> str:
        return self.bundle.manifest["precision"]

    def score(self, pairs: list[tuple[str, str]], *, batch_size: int, progress: bool = True
              ) -> tuple[np.ndarray, int]:
        """``(scores float32 [len(pairs)] in input order, number of pairs truncated)`` (see
        :meth:`~clipeval.engine.embedding.stage.EmbeddingStage.pair_scores`)."""
        self.stage.progress = progress
        out = self.stage.pair_scores(self.bundle, pairs, batch_size=batch_size)
        return out.scores, out.truncated


def load_reranker(bundle: Bundle, *, provider: str = "auto", threads: int | None = None) -> Reranker:
    """Open the reranker graph and pair tokenizer of ``bundle``. Raises :class:`BundleError` for
    a bundle of another family, or a graph whose output is not ``scores``."""
    t0 = time.perf_counter()
    if bundle.family != RERANKER_FAMILY:
        raise BundleError(f"{bundle.path} is a {bundle.family} bundle, not a reranker",
                          "pass a reranker bundle or a cross-encoder checkpoint")
    executor = LocalExecutor(provider=provider, threads=threads, num_workers=0)
    executor.session(TowerRef(bundle, bundle.manifest["precision"], "reranker"))
    stage = EmbeddingStage(executor)
    stage.pair_tokenizer(bundle)
    return Reranker(bundle, stage, time.perf_counter() - t0)
