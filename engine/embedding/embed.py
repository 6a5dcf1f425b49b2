"""Embedding stages: images through the decode pipeline and the vision tower, texts through the
tokenizer and the text tower (sorted by length so each batch pads only to its own longest text)."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from .cache import CacheSpace, image_key, text_key
from ..datasets.base import BadItem
from ..errors import listing
from ..images.pipeline import iter_pixel_batches
from ..progress import Progress
from ..sessions.onnx import Tower
from ..text.tokenizer import TextTokenizer

log = logging.getLogger(__name__)


@dataclass
class ImageEmbeddings:
    embeds: np.ndarray  # [n_ok, D] float32, rows in input order
    indices: np.ndarray  # int64 [n_ok]: input index of each row
    failures: list[BadItem] = field(default_factory=list)
    cache_hits: int = 0
    decode: str = "threads"  # the decode backend that ran


# From this many decode workers on, ``decode="auto"`` decodes in processes: threads share the
# interpreter lock for the JPEG header parse and the PIL->numpy copy, which caps them well short of
# all cores on a many-core machine (docs/speed.md, "GPU path").
PROCESS_DECODE_MIN_WORKERS = 12
# Console scripts whose main module multiprocessing may import again safely (entry-point wrappers
# that pip writes with a ``__main__`` guard).
CONSOLE_SCRIPTS = ("clipeval", "pytest", "py.test")


def main_is_import_safe() -> bool:
    """Whether decode worker processes can start without running the caller's main script: there
    is none to import (interactive, ``python -c``), it is a package's ``__main__`` (``python -m``,
    which multiprocessing does not import again), or it is a console script (pip guards those).
    A user's own script may call ``run_task`` unguarded, so ``auto`` keeps threads there."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None:
        return True
    spec = getattr(main, "__spec__", None)
    if spec is not None and (spec.name == "__main__" or spec.name.endswith(".__main__")):
        return True
    return os.path.basename(path) in CONSOLE_SCRIPTS


def resolve_decode(decode: str, num_workers: int, *, batch_size: int | None = None,
                   pixel_shape: tuple[int, int] | None = None, prefetch_batches: int = 2) -> str:
    """The decode backend ``iter_pixel_batches`` gets for the ``decode`` setting: ``threads`` and
    ``processes`` as they are; ``auto`` is processes from ``PROCESS_DECODE_MIN_WORKERS`` workers on,
    unless the main script is not known to be safe to import again (:func:`main_is_import_safe`)
    or (``batch_size`` and ``pixel_shape`` given) ``/dev/shm`` has too little room for the process
    ring (containers often give it 64 MB): then threads, with a note in the log."""
    if decode != "auto":
        return decode
    if num_workers < PROCESS_DECODE_MIN_WORKERS:
        return "threads"
    if not main_is_import_safe():
        log.info("decoding in threads: worker processes would import the main script %s again; to decode in "
                 "processes, guard it with `if __name__ == \"__main__\":` and set decode: processes",
                 getattr(sys.modules.get("__main__"), "__file__", "?"))
        return "threads"
    if batch_size is not None and pixel_shape is not None:
        from ..images.decode_procs import ring_bytes, shm_free_bytes

        need = ring_bytes(batch_size, num_workers, prefetch_batches, pixel_shape)
        free = shm_free_bytes()
        if free is not None and need > free:
            log.info("decoding in threads: process decoding needs %d MiB of shared memory, /dev/shm has %d MiB "
                     "free (give the container more with --shm-size, or lower the batch size)",
                     need >> 20, free >> 20)
            return "threads"
    return "processes"


def embed_images(tower: Tower, preprocessor, sources: list, *, batch_size: int, num_workers: int,
                 fast_decode: bool = False, decode: str = "threads", where: list[str] | None = None,
                 progress: bool = True, cache: CacheSpace | None = None,
                 on_error: str | None = None) -> ImageEmbeddings:
    """Decode, preprocess and embed ``sources``; images that fail are returned as failures.

    Decoding runs in the pipeline's workers while this thread runs the tower, so the two overlap.
    With ``cache`` (a space of :class:`~clipeval.engine.embedding.cache.EmbeddingCache` for this bundle,
    precision and decode mode) images found there are neither decoded nor embedded, and each
    computed batch is stored as soon as it is done (an interrupted run keeps what it finished);
    the progress bar counts only the images computed, and a line says how many came from the
    cache.

    Every image is tried, whatever ``on_error`` says; the failures are returned for the caller to
    raise or record. ``on_error="skip"`` also logs them (one warning listing them all), as they
    are being left out; with ``"fail"`` or ``None`` nothing is logged.
    """
    decode = resolve_decode(decode, num_workers, batch_size=batch_size, pixel_shape=preprocessor.output_size)
    rows: list[np.ndarray] = []
    idx: list[np.ndarray] = []
    failures: list[BadItem] = []
    keys: list = []
    hits: dict[int, np.ndarray] = {}
    if cache is not None:
        keys = [image_key(s, cache.verify) for s in sources]
        hits = cache.lookup(keys)
        if hits:
            order = sorted(hits)
            rows.append(np.stack([hits[i] for i in order]))
            idx.append(np.asarray(order, dtype=np.int64))
    items = ((i, s) for i, s in enumerate(sources) if i not in hits)
    with Progress("images", len(sources) - len(hits), unit="img", enabled=progress, cached=len(hits)) as bar:
        for batch in iter_pixel_batches(items, preprocessor, batch_size=batch_size, num_workers=num_workers,
                                        on_error="skip", fast_decode=fast_decode, decode=decode):
            for index, source, reason in batch.failures:
                label = where[index] if where else str(source)
                failures.append(BadItem(f"{label} ({source})" if where else label, reason, source=str(source)))
            if len(batch.indices):
                emb = tower.run({"pixel_values": batch.pixels})
                rows.append(emb)
                idx.append(np.asarray(batch.indices, dtype=np.int64))
                if cache is not None:
                    cache.store([keys[i] for i in batch.indices], emb)
            bar.update(len(batch.indices) + len(batch.failures))
    if rows:
        embeds = np.ascontiguousarray(np.concatenate(rows), dtype=np.float32)
        indices = np.concatenate(idx)
        if hits and len(rows) > 1:  # cached rows came first: restore input order
            order = np.argsort(indices, kind="stable")
            embeds, indices = np.ascontiguousarray(embeds[order]), indices[order]
    else:
        embeds = np.zeros((0, 0), dtype=np.float32)
        indices = np.zeros(0, dtype=np.int64)
    if failures and on_error == "skip":
        log.warning("skipping %d image(s) that could not be decoded:\n    %s", len(failures), listing(failures))
    return ImageEmbeddings(embeds, indices, failures, cache_hits=len(hits), decode=decode)


@dataclass
class TextEmbeddings:
    embeds: np.ndarray  # [T, D] float32 in input order
    truncated: int
    cache_hits: int = 0


def embed_texts(tower: Tower, tokenizer: TextTokenizer, texts: list[str], *, batch_size: int,
                progress: bool = True, cache: CacheSpace | None = None) -> TextEmbeddings:
    """Embed ``texts`` in batches of similar length; rows come back in input order.

    With ``cache`` texts found there are not embedded (they are still tokenized, which is cheap,
    so ``truncated`` counts every text); the others are stored batch by batch, and the progress
    bar counts only them. How many texts were truncated to the context length is logged.
    """
    encoded = tokenizer.encode(texts)
    truncated = int(encoded.truncated.sum())
    if truncated:
        log.info("%d of %d text(s) are longer than the context length of %d tokens and were truncated",
                 truncated, len(texts), tokenizer.context_length)
    hits: dict[int, np.ndarray] = {}
    keys: list = []
    if cache is not None:
        keys = [text_key(t) for t in texts]
        hits = cache.lookup(keys)
    todo = np.array([i for i in range(len(texts)) if i not in hits], dtype=np.int64)
    order = todo[np.argsort(np.asarray(encoded.lengths)[todo], kind="stable")] if len(todo) else todo
    out: np.ndarray | None = None
    if hits:
        first = next(iter(hits.values()))
        out = np.empty((len(texts), first.shape[0]), dtype=np.float32)
        for i, vec in hits.items():
            out[i] = vec
    with Progress("texts", len(texts) - len(hits), unit="text", enabled=progress, cached=len(hits)) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            feeds = tokenizer.pad([encoded.ids[i] for i in chunk])
            emb = tower.run(feeds)
            if out is None:
                out = np.empty((len(texts), emb.shape[1]), dtype=np.float32)
            out[chunk] = emb
            if cache is not None:
                cache.store([keys[i] for i in chunk], emb)
            bar.update(len(chunk))
    if out is None:
        out = np.zeros((0, 0), dtype=np.float32)
    return TextEmbeddings(out, truncated, cache_hits=len(hits))
