"""Embedding stages: images through the decode pipeline and the vision tower, texts through the
tokenizer and the text tower (sorted by length so each batch pads only to its own longest text)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .datasets.base import BadItem
from .pipeline import iter_pixel_batches
from .progress import Progress
from .session import Tower
from .tokenizer import TextTokenizer

log = logging.getLogger(__name__)


@dataclass
class ImageEmbeddings:
    embeds: np.ndarray  # [n_ok, D] float32, rows in input order
    indices: np.ndarray  # int64 [n_ok]: input index of each row
    failures: list[BadItem] = field(default_factory=list)


def embed_images(tower: Tower, preprocessor, sources: list, *, batch_size: int, num_workers: int,
                 fast_decode: bool = False, where: list[str] | None = None,
                 progress: bool = True) -> ImageEmbeddings:
    """Decode, preprocess and embed ``sources``; images that fail are returned as failures.

    Decoding runs in the pipeline's workers while this thread runs the tower, so the two overlap.
    """
    rows: list[np.ndarray] = []
    idx: list[np.ndarray] = []
    failures: list[BadItem] = []
    items = enumerate(sources)
    with Progress("images", len(sources), unit="img", enabled=progress) as bar:
        for batch in iter_pixel_batches(items, preprocessor, batch_size=batch_size, num_workers=num_workers,
                                        on_error="skip", fast_decode=fast_decode):
            for index, source, reason in batch.failures:
                label = where[index] if where else str(source)
                failures.append(BadItem(f"{label} ({source})" if where else label, reason, source=str(source)))
            if len(batch.indices):
                rows.append(tower.run({"pixel_values": batch.pixels}))
                idx.append(np.asarray(batch.indices, dtype=np.int64))
            bar.update(len(batch.indices) + len(batch.failures))
    if rows:
        embeds = np.ascontiguousarray(np.concatenate(rows), dtype=np.float32)
        indices = np.concatenate(idx)
    else:
        embeds = np.zeros((0, 0), dtype=np.float32)
        indices = np.zeros(0, dtype=np.int64)
    return ImageEmbeddings(embeds, indices, failures)


@dataclass
class TextEmbeddings:
    embeds: np.ndarray  # [T, D] float32 in input order
    truncated: int


def embed_texts(tower: Tower, tokenizer: TextTokenizer, texts: list[str], *, batch_size: int,
                progress: bool = True) -> TextEmbeddings:
    """Embed ``texts`` in batches of similar length; rows come back in input order."""
    encoded = tokenizer.encode(texts)
    order = np.argsort(encoded.lengths, kind="stable")
    out: np.ndarray | None = None
    with Progress("texts", len(texts), unit="text", enabled=progress) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            feeds = tokenizer.pad([encoded.ids[i] for i in chunk])
            emb = tower.run(feeds)
            if out is None:
                out = np.empty((len(texts), emb.shape[1]), dtype=np.float32)
            out[chunk] = emb
            bar.update(len(chunk))
    if out is None:
        out = np.zeros((0, 0), dtype=np.float32)
    return TextEmbeddings(out, int(encoded.truncated.sum()))
