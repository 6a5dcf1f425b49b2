"""The embedding stage: the one way clipeval turns images, texts and (query, document) pairs
into embeddings and scores, through the embedding cache.

:class:`EmbeddingStage` serves every task of a run (:mod:`clipeval.engine.tasks`): gallery
images and captions (zero-shot retrieval), images and class prompts (zero-shot
classification), corpus and queries, and the reranker's pair scores (text retrieval). For each
call it

1. looks every row up in the embedding cache (:mod:`.cache`; the space of the bundle identity,
   the precision and the kind of input: ``image``, ``image-fast``, ``text`` or ``pair``), and
   counts the hits;
2. hands the rows that missed to its executor (:mod:`.executor`: the interface; :mod:`.local`:
   decode workers and onnxruntime sessions in this process), texts first tokenised (cut to the
   bundle's context, counted when truncated), sorted by token length and cut into batches padded
   to their own longest text;
3. stores each batch in the cache as it comes back (an interrupted run keeps what it finished),
   and returns the rows in input order.

So a run whose every row is in the cache never calls the executor: no session is opened and no
model is loaded (``meta.provider`` is then ``"none"``), and each model a run needs is loaded once,
whatever the number of datasets and tasks.

:func:`embed_images` and :func:`embed_texts` are the same steps for one tower already open (the
engine's benchmarks and the tests' oracles use them).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..datasets.base import BadItem
from ..errors import listing
from ..images.pipeline import resolve_decode
from ..images.preprocess import Preprocessor
from ..progress import Progress
from ..sessions.bundle import Bundle
from ..sessions.onnx import Tower
from ..text.pairs import PairTokenizer
from ..text.tokenizer import TextTokenizer
from .cache import CacheSpace, EmbeddingCache, image_key, pair_key, text_key
from .executor import Executor, ImageBatch, TowerRef
from .local import pixel_batches, stream_rows, tower_batches

log = logging.getLogger(__name__)


@dataclass
class ImageEmbeddings:
    """Embeddings of a gallery: ``embeds`` float32 ``[n_ok, D]`` (L2-normalised by the bundle's
    vision tower), rows in input order; ``indices`` int64 ``[n_ok]``, the input position of each
    row; ``failures``: the images that could not be read or decoded (:class:`BadItem`, ``where``
    the row's label); ``cache_hits``: rows served from the cache; ``decode``: the decode backend."""

    embeds: np.ndarray
    indices: np.ndarray
    failures: list[BadItem] = field(default_factory=list)
    cache_hits: int = 0
    decode: str = "threads"


@dataclass
class TextEmbeddings:
    """``embeds`` float32 ``[T, D]`` in input order; ``truncated``: texts cut to the context
    length (cached ones included); ``cache_hits``: rows served from the cache."""

    embeds: np.ndarray
    truncated: int
    cache_hits: int = 0


@dataclass
class PairScores:
    """``scores`` float32 ``[N]`` in input order; ``truncated``: pairs cut to the reranker's
    context length; ``cache_hits``: scores served from the cache."""

    scores: np.ndarray
    truncated: int
    cache_hits: int = 0


ImageCompute = Callable[[Iterable[tuple[int, Any]]], Iterator[ImageBatch]]
BatchCompute = Callable[[Iterable[tuple[np.ndarray, dict[str, np.ndarray]]]], Iterator[tuple[np.ndarray, np.ndarray]]]


def _images(sources: Sequence, compute: ImageCompute, *, space: CacheSpace | None, where: list[str] | None,
            progress: bool, on_error: str | None, decode: Callable[[], str]) -> ImageEmbeddings:
    """Cache lookups, the misses through ``compute``, cache writes, rows in input order."""
    n = len(sources)
    keys: list = []
    hits: dict[int, np.ndarray] = {}
    if space is not None:
        keys = [image_key(s, space.verify) for s in sources]
        hits = space.lookup(keys)
    embeds: np.ndarray | None = None
    done = np.zeros(n, dtype=bool)
    if hits:
        first = next(iter(hits.values()))
        embeds = np.empty((n, first.shape[0]), dtype=np.float32)
        for i, vec in hits.items():
            embeds[i] = vec
            done[i] = True
    failures: list[tuple[int, BadItem]] = []
    missing = np.asarray([i for i in range(n) if i not in hits], dtype=np.int64)
    with Progress("images", len(missing), unit="img", enabled=progress, cached=len(hits)) as bar:
        if len(missing):
            for batch in compute(stream_rows(sources, missing)):
                for index, source, reason in batch.failures:
                    label = where[index] if where else str(source)
                    failures.append((index, BadItem(f"{label} ({source})" if where else label, reason,
                                                    source=str(source))))
                if len(batch.positions):
                    if embeds is None:
                        embeds = np.empty((n, batch.embeds.shape[1]), dtype=np.float32)
                    embeds[batch.positions] = batch.embeds
                    done[batch.positions] = True
                    if space is not None:
                        space.store([keys[i] for i in batch.positions], batch.embeds)
                bar.update(len(batch))
    failures = [item for _, item in sorted(failures, key=lambda f: f[0])]  # input order, however batches came
    indices = np.flatnonzero(done).astype(np.int64)
    if embeds is None:
        out = np.zeros((0, 0), dtype=np.float32)
    else:
        out = embeds if len(indices) == n else np.ascontiguousarray(embeds[indices])
    if failures and on_error == "skip":
        log.warning("skipping %d image(s) that could not be decoded:\n    %s", len(failures), listing(failures))
    return ImageEmbeddings(out, indices, failures, cache_hits=len(hits), decode=decode())


def _tokens(encoded_ids: list, order: np.ndarray, batch_size: int, pad) -> Iterator[tuple[np.ndarray, dict]]:
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        yield chunk, pad([encoded_ids[i] for i in chunk])


def _rows_through_cache(keys: list, lengths: np.ndarray, ids: list, pad, compute: BatchCompute, *,
                        space: CacheSpace | None, batch_size: int, progress: bool, label: str, unit: str,
                        width: int | None) -> tuple[np.ndarray, int]:
    """The common part of texts and pairs: ``(rows [N, width] float32 in input order, hits)``."""
    n = len(keys)
    hits: dict[int, np.ndarray] = space.lookup(keys) if space is not None else {}
    todo = np.array([i for i in range(n) if i not in hits], dtype=np.int64)
    order = todo[np.argsort(lengths[todo], kind="stable")] if len(todo) else todo
    out: np.ndarray | None = None
    if hits:
        first = next(iter(hits.values()))
        out = np.empty((n, first.shape[0]), dtype=np.float32)
        for i, vec in hits.items():
            out[i] = vec
    with Progress(label, len(todo), unit=unit, enabled=progress, cached=len(hits)) as bar:
        if len(order):
            for positions, rows in compute(_tokens(ids, order, batch_size, pad)):
                rows = rows.reshape(len(positions), -1)
                if out is None:
                    out = np.empty((n, rows.shape[1]), dtype=np.float32)
                out[positions] = rows
                if space is not None:
                    space.store([keys[i] for i in positions], rows)
                bar.update(len(positions))
    if out is None:
        out = np.zeros((0, width or 0), dtype=np.float32)
    return out, len(hits)


def _texts(texts: list[str], tokenizer: TextTokenizer, compute: BatchCompute, *, space: CacheSpace | None,
           batch_size: int, progress: bool, label: str = "texts") -> TextEmbeddings:
    encoded = tokenizer.encode(texts)
    truncated = int(encoded.truncated.sum())
    if truncated:
        log.info("%d of %d text(s) are longer than the context length of %d tokens and were truncated",
                 truncated, len(texts), tokenizer.context_length)
    keys = [text_key(t) for t in texts] if space is not None else [None] * len(texts)
    embeds, hits = _rows_through_cache(keys, np.asarray(encoded.lengths), encoded.ids, tokenizer.pad, compute,
                                       space=space, batch_size=batch_size, progress=progress, label=label,
                                       unit="text", width=None)
    return TextEmbeddings(embeds, truncated, cache_hits=hits)


def embed_images(tower: Tower, preprocessor: Preprocessor, sources: Sequence, *, batch_size: int, num_workers: int,
                 fast_decode: bool = False, decode: str = "threads", where: list[str] | None = None,
                 progress: bool = True, cache: CacheSpace | None = None,
                 on_error: str | None = None) -> ImageEmbeddings:
    """Decode, preprocess and embed ``sources`` with an open vision ``tower``.

    ``sources``: a sequence of paths, image bytes or webdataset members (anything
    :func:`~clipeval.engine.images.load.load_image` reads); ``preprocessor``: the bundle's
    (``preprocess.json``), giving ``pixel_values`` float32 ``[B, 3, H, W]``; ``batch_size``:
    images per tower call; ``num_workers``: decode workers (0 decodes inline); ``decode``:
    ``threads``, ``processes`` or ``auto`` (:func:`~clipeval.engine.images.pipeline.resolve_decode`);
    ``fast_decode``: JPEG DCT scaling (not bit-exact); ``where``: a label per source for messages.

    Returns :class:`ImageEmbeddings`: float32 ``[n_ok, D]`` rows in input order (as the tower
    makes them: L2-normalised for a bundle's vision tower) and the input position of each. With
    ``cache`` (a :class:`~clipeval.engine.embedding.cache.CacheSpace` of this bundle, precision
    and decode mode) images found there are neither decoded nor embedded, and each computed batch
    is stored as soon as it is done; the progress bar counts only the images computed.

    Every image is tried, whatever ``on_error`` says; those that cannot be read or decoded are
    returned in ``failures`` (never raised) for the caller to raise or record. ``on_error="skip"``
    also logs them (one warning listing them all). Raises :class:`~clipeval.engine.errors.ConfigError`
    for a bad ``batch_size`` / ``num_workers`` / ``decode``, and what ``tower.run`` raises.
    """
    backend = resolve_decode(decode, num_workers, batch_size=batch_size, pixel_shape=preprocessor.output_size)

    def compute(rows):
        return pixel_batches(tower, preprocessor, rows, batch_size=batch_size, num_workers=num_workers,
                             fast_decode=fast_decode, decode=backend)

    return _images(sources, compute, space=cache, where=where, progress=progress, on_error=on_error,
                   decode=lambda: backend)


def embed_texts(tower: Tower, tokenizer: TextTokenizer, texts: list[str], *, batch_size: int,
                progress: bool = True, cache: CacheSpace | None = None, label: str = "texts") -> TextEmbeddings:
    """Embed ``texts`` with an open text ``tower``; rows come back in input order.

    Texts are tokenised with the bundle's rule (:meth:`TextTokenizer.encode`: cut to the context
    length, counted in ``truncated``), sorted by token length and embedded ``batch_size`` at a
    time, each batch padded to its own longest text (int64 ``input_ids`` / ``attention_mask``
    ``[b, T]``). Returns :class:`TextEmbeddings`: float32 ``[len(texts), D]``. With ``cache``
    texts found there are not embedded (they are still tokenised, so ``truncated`` counts every
    text); the others are stored batch by batch. Raises what ``tower.run`` raises.
    """
    return _texts(texts, tokenizer, lambda batches: tower_batches(tower, batches), space=cache,
                  batch_size=batch_size, progress=progress, label=label)


class EmbeddingStage:
    """The embedding stage of one run (see the module docstring).

    ``executor``: what computes the rows that miss the cache (:class:`.local.LocalExecutor`, or
    another implementation of :class:`.executor.Executor`); ``cache``: the run's
    :class:`~clipeval.engine.embedding.cache.EmbeddingCache` (``None``: no cache, every row is
    computed); ``progress``: bars on stderr. The stage owns the executor: :meth:`close` closes it.

    Cache spaces are one per (bundle identity, precision, kind) for the whole run, so
    :meth:`cache_space` hit counts add up over the datasets and tasks of a run. A bundle that was
    *verified* on load (every file hashed) reads and writes only verified entries
    (:mod:`.cache`, "Trust").
    """

    def __init__(self, executor: Executor, cache: EmbeddingCache | None = None, *, progress: bool = True):
        self.executor = executor
        self.cache = cache
        self.progress = progress
        self._spaces: dict[tuple[str, str, str], CacheSpace] = {}
        self._tokenizers: dict[tuple[str, str], Any] = {}
        self._setup_s = 0.0

    # -- what the run reports ---------------------------------------------------------------------

    @property
    def provider(self) -> str:
        """What the towers ran on (``cpu``, ``cuda``); ``none`` when every row came from the cache."""
        return self.executor.provider

    @property
    def load_s(self) -> float:
        """Seconds spent loading models: tokenizers, plus the sessions the executor opened."""
        return self._setup_s + self.executor.load_s

    @property
    def warnings(self) -> list[str]:
        return self.executor.warnings

    @property
    def decode_workers(self) -> int | None:
        """The decode workers each decoding process ran with, when the executor decides it
        itself (the Ray executor: a tower actor's ``--threads``); ``None``: as configured."""
        return getattr(self.executor, "decode_workers", None)

    def cache_space(self, bundle: Bundle, precision: str, kind: str) -> CacheSpace | None:
        """The cache space of ``bundle`` at ``precision`` for ``kind`` (``image``, ``image-fast``,
        ``text``, ``pair``); ``None`` without a cache."""
        if self.cache is None:
            return None
        key = (bundle.identity, precision, kind)
        if key not in self._spaces:
            self._spaces[key] = self.cache.space(bundle.identity, precision, kind, verified=bundle.verified)
        return self._spaces[key]

    def known_images(self, bundle: Bundle, precision: str, fast_decode: bool = False):
        """For a reader's header pre-check: ``known(paths) -> positions`` of the image files the
        cache holds as they are now (keyed by path, size and modification time; an image is only
        stored after it decoded), so their headers need not be read again. ``None`` without a
        cache, or with ``--verify-cache`` (its keys hash every file: dearer than the probe)."""
        space = self.cache_space(bundle, precision, "image-fast" if fast_decode else "image")
        if space is None or space.verify:
            return None

        def known(paths: list[str]) -> set[int]:
            keys = [image_key(p) for p in paths]
            found, _ = space.cache.get_many(space.ns, [k for k in keys if k is not None])
            return {i for i, k in enumerate(keys) if k is not None and k in found}

        return known

    # -- tokenizers -------------------------------------------------------------------------------

    def tokenizer(self, bundle: Bundle) -> TextTokenizer:
        """The text tokenizer of ``bundle`` (read once per run)."""
        return self._tokenizer(bundle, "text", TextTokenizer)

    def pair_tokenizer(self, bundle: Bundle) -> PairTokenizer:
        """The (query, document) tokenizer of a reranker ``bundle`` (read once per run)."""
        return self._tokenizer(bundle, "pair", PairTokenizer)

    def _tokenizer(self, bundle: Bundle, kind: str, cls):
        key = (bundle.identity, kind)
        if key not in self._tokenizers:
            t0 = time.perf_counter()
            self._tokenizers[key] = cls(bundle.path / "tokenizer.json", bundle.tokenizer_rule, bundle.context_length)
            self._setup_s += time.perf_counter() - t0
        return self._tokenizers[key]

    # -- embeddings -------------------------------------------------------------------------------

    def images(self, bundle: Bundle, precision: str, sources: Sequence, *, batch_size: int,
               fast_decode: bool = False, where: list[str] | None = None,
               on_error: str | None = None) -> ImageEmbeddings:
        """Image embeddings of ``sources`` with the vision tower of ``bundle`` at ``precision``:
        :class:`ImageEmbeddings` (float32 ``[n_ok, D]``, input order; undecodable images in
        ``failures``, as :func:`embed_images` says). Raises what the executor raises
        (:class:`~clipeval.engine.errors.BundleError`, :class:`~clipeval.engine.errors.ProviderError`)."""
        tower = TowerRef(bundle, precision, "vision")
        space = self.cache_space(bundle, precision, "image-fast" if fast_decode else "image")

        def compute(rows):
            return self.executor.image_batches(tower, rows, batch_size=batch_size, fast_decode=fast_decode)

        return _images(sources, compute, space=space, where=where, progress=self.progress, on_error=on_error,
                       decode=lambda: self.executor.decode or "threads")

    def texts(self, bundle: Bundle, precision: str, texts: list[str], *, batch_size: int,
              label: str = "texts") -> TextEmbeddings:
        """Text embeddings of ``texts`` (already prefixed with any prompt: the key of a text in the
        cache is the text as embedded) with the text tower of ``bundle`` at ``precision``:
        :class:`TextEmbeddings` (float32 ``[len(texts), D]``, input order). ``label`` names the
        stage on stderr (``texts``, ``class prompts``, ``corpus``, ``queries``)."""
        tower = TowerRef(bundle, precision, "text")
        return _texts(texts, self.tokenizer(bundle), lambda batches: self.executor.run_batches(tower, batches),
                      space=self.cache_space(bundle, precision, "text"), batch_size=batch_size,
                      progress=self.progress, label=label)

    def pair_scores(self, bundle: Bundle, pairs: list[tuple[str, str]], *, batch_size: int,
                    label: str = "pairs") -> PairScores:
        """The reranker ``bundle``'s float32 score of each (query, document) pair, in input order.

        Pairs are tokenised together with ``longest_first`` truncation to the bundle's context
        length (as sentence-transformers' ``CrossEncoder`` does), sorted by length and scored
        ``batch_size`` at a time, each batch padded to its own longest pair. Cached under the
        ``pair`` kind (the key is the query and the document as given)."""
        precision = bundle.manifest["precision"]
        tokenizer = self.pair_tokenizer(bundle)
        if not pairs:
            return PairScores(np.zeros(0, dtype=np.float32), 0)
        encodings = tokenizer.encode(pairs)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        truncated = sum(1 for e in encodings if e.overflowing)
        space = self.cache_space(bundle, precision, "pair")
        keys = [pair_key(q, d) for q, d in pairs] if space is not None else [None] * len(pairs)
        tower = TowerRef(bundle, precision, "reranker")
        rows, hits = _rows_through_cache(keys, lengths, encodings, tokenizer.pad,
                                         lambda batches: self.executor.run_batches(tower, batches), space=space,
                                         batch_size=batch_size, progress=self.progress, label=label, unit="pair",
                                         width=1)
        return PairScores(np.ascontiguousarray(rows.reshape(-1), dtype=np.float32), truncated, cache_hits=hits)

    def close(self) -> None:
        """Close the executor (its sessions and workers)."""
        self.executor.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
