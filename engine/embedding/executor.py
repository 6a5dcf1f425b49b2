"""What runs the towers for the embedding stage: the :class:`Executor` interface.

Every embedding clipeval computes goes through one embedding stage
(:class:`clipeval.engine.embedding.stage.EmbeddingStage`): gallery images, captions, class
prompts, BEIR corpus and queries, and the reranker's (query, document) scores. The stage is split
in two:

* the **stage** itself runs in the calling process (the *driver*) and owns everything that is
  about *which* rows to compute and what to do with the results: the embedding cache (it looks
  every row up before anything is computed, and stores what comes back as each batch arrives, so
  an interrupted run keeps what it finished), tokenising texts (and counting the truncated ones),
  sorting texts by length and cutting them into padded batches, the row order of what it returns,
  progress on stderr and the hit counts in ``meta.cache``;
* an **executor** computes the rows that missed the cache: it owns the decode pipeline (images
  to ``pixel_values``) and the onnxruntime sessions. :class:`clipeval.engine.embedding.local.LocalExecutor`
  runs both in this process (decode workers as threads or processes, one session per tower).

A second executor subclasses :class:`Executor`:
:class:`clipeval.engine.executors.ray_embed.RayExecutor` runs on a Ray cluster (the rows that
miss the cache become a Ray Dataset, decoded by CPU tasks and embedded by an actor pool of
sessions, and come back to the driver). The runner picks the executor from the config
(``executor: local|ray``, :func:`clipeval.engine.runner.open_stage`); the stage and the tasks
do not change. An executor provides:

``image_batches(tower, rows, *, batch_size, fast_decode)``
    ``rows`` is an iterable of ``(position, source)`` in ascending position, produced lazily (a
    gallery read from webdataset shards yields each member's bytes as it is reached); a source is
    anything :func:`clipeval.engine.images.load.load_image` reads (a path, image bytes, a
    webdataset member). The stage passes a :class:`~clipeval.engine.embedding.local.GalleryRows`,
    which also gives the gallery and the positions (``rows.sources``, ``rows.positions``) without
    reading anything, for an executor that sends a description of each row elsewhere (the Ray
    executor sends a webdataset image as its shard's URL, offset and size). Decode, preprocess
    with the tower's bundle (``tower.bundle.preprocess``, a
    :class:`~clipeval.engine.images.preprocess.PreprocessSpec` dict), run the vision tower
    (``tower.path``, input ``pixel_values`` float32 ``[B, 3, H, W]``) and yield
    :class:`ImageBatch` es.
``run_batches(tower, batches)``
    ``batches`` is an iterable of ``(positions int64 [b], feeds)`` where ``feeds`` maps the
    tower's input names to int64 ``[b, T]`` arrays (``input_ids``, ``attention_mask``,
    ``token_type_ids``), already padded by the stage. Run the tower (text: output
    ``text_embeds`` float32 ``[b, D]``; reranker: ``scores`` float32 ``[b]``) and yield
    ``(positions, output)``.
``provider``, ``load_s``, ``warnings``, ``decode``
    what ran (``"cpu"``, ``"cuda"``, or ``"none"`` when no tower ran), the seconds spent opening
    sessions, the provider fallbacks met (each once), the decode backend used (``None`` before
    any image was decoded).
``close()``
    release the sessions and workers (the stage calls it once, at the end of the run).

The contract:

1. **Who owns the cache.** The stage, on the driver. An executor never reads or writes it and
   never sees rows that hit it; a run served wholly from the cache never calls the executor, so
   no model is loaded (sessions open on a tower's first batch, and stay open for the run).
2. **Row order.** Every batch carries the positions of its rows; batches may come back in any
   order and the stage puts each row in its place. Every position given must come back exactly
   once: as an output row, or (images only) as a failure. (The local executor returns them in
   input order; the Ray executor as its blocks finish.) The rows of one batch are those of a
   local run (the same images, ``batch_size`` at a time; the stage's own token batches), so the
   towers compute the same numbers.
3. **Outputs.** float32 rows, ``[b, D]`` embeddings as the bundle's graph makes them (L2-normalised
   for CLIP-style and cosine text towers), ``[b]`` scores for a reranker; computed with the
   variant ``tower.precision`` names.
4. **Failures.** An image that cannot be read or decoded is not an exception: it is reported in
   :attr:`ImageBatch.failures` as ``(position, source, reason)`` and the task decides (fail or
   skip). Everything else is raised from the iterator as the typed errors of
   :mod:`clipeval.engine.errors` (:class:`~clipeval.engine.errors.BundleError` for a graph that
   does not load, :class:`~clipeval.engine.errors.ProviderError` for a provider that cannot be
   used; a remote failure translated to one of them, or
   :class:`~clipeval.engine.errors.ClusterError` naming the rows a cluster lost), or
   ``KeyboardInterrupt``; the batches yielded before it are kept (the stage has cached them).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from ..sessions.bundle import Bundle

TOWERS = ("vision", "text", "reranker")


@dataclass(frozen=True)
class TowerRef:
    """One tower of one bundle at one precision: what an executor opens a session for.

    ``tower``: ``vision``, ``text`` or ``reranker``; ``precision``: a variant the bundle's
    manifest lists (``fp32``, ``fp16``, ``int8``)."""

    bundle: Bundle
    precision: str
    tower: str

    def __post_init__(self):
        if self.tower not in TOWERS:
            raise ValueError(f"tower must be one of {TOWERS}, got {self.tower!r}")

    @property
    def key(self) -> tuple[str, str, str]:
        """``(bundle identity, precision, tower)``: equal for the same graph."""
        return self.bundle.identity, self.precision, self.tower

    @property
    def path(self) -> Path:
        """The ONNX file of this tower and precision (raises :class:`BundleError` when the bundle
        has no such variant)."""
        return self.bundle.tower_path(self.tower, self.precision)


@dataclass
class ImageBatch:
    """What an executor returns for some of the image rows it was given.

    ``positions``: int64 ``[n]``, the rows that decoded; ``embeds``: float32 ``[n, D]``, their
    embeddings in the same order; ``failures``: ``(position, source, reason)`` of the rows that
    could not be read or decoded (``reason`` is the message of the
    :class:`~clipeval.engine.errors.ImageError`)."""

    positions: np.ndarray
    embeds: np.ndarray
    failures: list[tuple[int, Any, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.positions) + len(self.failures)


class Executor(ABC):
    """Computes what missed the embedding cache (see the module docstring for the contract)."""

    name: str = "executor"

    @abstractmethod
    def image_batches(self, tower: TowerRef, rows: Iterable[tuple[int, Any]], *, batch_size: int,
                      fast_decode: bool = False) -> Iterator[ImageBatch]:
        """Decode, preprocess and embed ``rows`` (``(position, source)``) with the vision tower."""

    @abstractmethod
    def run_batches(self, tower: TowerRef, batches: Iterable[tuple[np.ndarray, dict[str, np.ndarray]]]
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Run a text or reranker tower on padded token batches: ``(positions, output)`` each."""

    @property
    @abstractmethod
    def provider(self) -> str:
        """``cpu`` or ``cuda`` (what the first opened session runs on); ``none`` before any."""

    @property
    def load_s(self) -> float:
        """Seconds spent opening sessions."""
        return 0.0

    @property
    def warnings(self) -> list[str]:
        """Provider fallbacks met, each once."""
        return []

    @property
    def decode(self) -> str | None:
        """The decode backend that ran (``threads`` / ``processes`` locally), ``None`` before."""
        return None

    def close(self) -> None:
        """Release sessions and workers."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
