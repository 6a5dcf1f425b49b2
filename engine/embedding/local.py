"""The in-process executor of the embedding stage (:class:`LocalExecutor`), and the two loops it
runs, which the single-tower helpers of :mod:`.stage` share:

* :func:`pixel_batches`: ``(position, source)`` rows through the decode pipeline
  (:func:`~clipeval.engine.images.pipeline.iter_pixel_batches`, in threads or worker processes)
  into a vision tower; the main thread runs the tower on one batch while the workers decode the
  next ones, so the two overlap;
* :func:`tower_batches`: padded token batches through a text or reranker tower.

Sessions open on a tower's first batch (:func:`~clipeval.engine.sessions.onnx.open_tower`) and
stay open until :meth:`LocalExecutor.close`, so each model is loaded once per run, and not at
all when the cache holds everything. See :mod:`.executor` for the contract.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ..images.pipeline import iter_pixel_batches, resolve_decode
from ..images.preprocess import Preprocessor, PreprocessSpec
from ..sessions.onnx import Tower, default_threads, open_tower, short_provider
from .executor import Executor, ImageBatch, TowerRef

log = logging.getLogger(__name__)

OUTPUT_NAMES = {"vision": "image_embeds", "text": "text_embeds", "reranker": "scores"}


def pixel_batches(tower: Tower | Any, preprocessor: Preprocessor, rows: Iterable[tuple[int, Any]], *,
                  batch_size: int, num_workers: int, fast_decode: bool = False, decode: str = "threads"
                  ) -> Iterator[ImageBatch]:
    """Decode and preprocess ``rows`` (``(position, source)``) and run ``tower`` (anything with
    ``run({"pixel_values": float32 [B, 3, H, W]}) -> float32 [B, D]``) on each batch.

    Yields :class:`ImageBatch` es in input order; images that cannot be read or decoded are in
    their ``failures`` (never raised). ``decode``: ``threads`` or ``processes`` (resolved already,
    see :func:`~clipeval.engine.images.pipeline.resolve_decode`); ``num_workers`` 0 decodes inline.
    """
    for batch in iter_pixel_batches(rows, preprocessor, batch_size=batch_size, num_workers=num_workers,
                                    on_error="skip", fast_decode=fast_decode, decode=decode):
        failures = [(int(index), source, reason) for index, source, reason in batch.failures]
        positions = np.asarray(batch.indices, dtype=np.int64)
        if len(positions):
            embeds = np.asarray(tower.run({"pixel_values": batch.pixels}), dtype=np.float32)
        else:
            embeds = np.zeros((0, 0), dtype=np.float32)
        yield ImageBatch(positions, embeds, failures)


def tower_batches(tower: Tower | Any, batches: Iterable[tuple[np.ndarray, dict[str, np.ndarray]]]
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(positions, tower.run(feeds))`` for each ``(positions, feeds)`` batch, in order."""
    for positions, feeds in batches:
        yield positions, np.asarray(tower.run(feeds), dtype=np.float32)


class LocalExecutor(Executor):
    """Decode workers and onnxruntime sessions in this process.

    ``provider``: ``auto``, ``cuda`` or ``cpu`` (:func:`~clipeval.engine.sessions.onnx.open_tower`);
    ``threads``: onnxruntime intra-op threads (default: all cores); ``num_workers``: decode
    workers (default: all cores; 0 decodes inline); ``decode``: ``auto``, ``threads`` or
    ``processes`` (:func:`~clipeval.engine.images.pipeline.resolve_decode`). With ``prestart``
    and a decode that resolves to processes, the workers' fork server starts now, in the
    background, while the first model loads.
    """

    name = "local"

    def __init__(self, *, provider: str = "auto", threads: int | None = None, num_workers: int | None = None,
                 decode: str = "auto", prestart: bool = False):
        self.provider_asked = provider
        self.threads = threads
        self.num_workers = default_threads() if num_workers is None else num_workers
        self.decode_setting = decode
        self._decode = resolve_decode(decode, self.num_workers)
        self._sessions: dict[tuple[str, str, str], Tower] = {}
        self._preprocessors: dict[str, Preprocessor] = {}
        self._load_s = 0.0
        self._warnings: list[str] = []
        self._logged: set[str] = set()  # provider warnings said once per run, not per tower or model
        if prestart and self._decode == "processes":
            from ..images.decode_procs import prestart as start_fork_server

            start_fork_server()

    # -- sessions -------------------------------------------------------------------------------

    def session(self, tower: TowerRef) -> Tower:
        """The open session of ``tower`` (opened now, the first time)."""
        found = self._sessions.get(tower.key)
        if found is None:
            t0 = time.perf_counter()
            found = open_tower(tower.path, self.provider_asked, self.threads, logged=self._logged)
            self._load_s += time.perf_counter() - t0
            self._warnings.extend(w for w in found.warnings if w not in self._warnings)
            expected = OUTPUT_NAMES[tower.tower]
            if found.output_name != expected:
                from ..errors import BundleError

                raise BundleError(f"{found.path} outputs {found.output_name!r}, not {expected!r}",
                                  "re-export the bundle")
            self._sessions[tower.key] = found
        return found

    def preprocessor(self, tower: TowerRef) -> Preprocessor:
        """The bundle's image preprocessing (``preprocess.json``)."""
        identity = tower.bundle.identity
        if identity not in self._preprocessors:
            self._preprocessors[identity] = Preprocessor(PreprocessSpec.from_dict(tower.bundle.preprocess))
        return self._preprocessors[identity]

    # -- the interface --------------------------------------------------------------------------

    def image_batches(self, tower: TowerRef, rows: Iterable[tuple[int, Any]], *, batch_size: int,
                      fast_decode: bool = False) -> Iterator[ImageBatch]:
        preprocessor = self.preprocessor(tower)
        self._decode = resolve_decode(self.decode_setting, self.num_workers, batch_size=batch_size,
                                      pixel_shape=preprocessor.output_size)
        lazy = _LazySession(self, tower)
        yield from pixel_batches(lazy, preprocessor, rows, batch_size=batch_size, num_workers=self.num_workers,
                                 fast_decode=fast_decode, decode=self._decode)

    def run_batches(self, tower: TowerRef, batches: Iterable[tuple[np.ndarray, dict[str, np.ndarray]]]
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield from tower_batches(_LazySession(self, tower), batches)

    @property
    def provider(self) -> str:
        for tower in self._sessions.values():
            return short_provider(tower.provider)
        return "none"

    @property
    def load_s(self) -> float:
        return self._load_s

    @property
    def warnings(self) -> list[str]:
        return list(self._warnings)

    @property
    def decode(self) -> str:
        return self._decode

    def opened(self) -> list[tuple[str, str, str]]:
        """``(bundle identity, precision, tower)`` of every session opened so far."""
        return list(self._sessions)

    def close(self) -> None:
        self._sessions.clear()


class _LazySession:
    """A tower's session, opened on its first ``run`` (a batch where every image failed to decode
    opens nothing)."""

    def __init__(self, executor: LocalExecutor, tower: TowerRef):
        self.executor = executor
        self.tower = tower

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.executor.session(self.tower).run(feeds)


class GalleryRows:
    """``(position, sources[position])`` for ``positions`` (int64, ascending): the rows of a
    gallery that missed the cache, as the stage hands them to an executor.

    Iterating reads lazily: a gallery that can give a lazy sub-gallery (``select``, as webdataset
    galleries do) is read in order, one shard open at a time. An executor that sends rows
    elsewhere instead of reading them here (the Ray executor sends a webdataset image as its
    shard, offset and size) takes :attr:`sources` and :attr:`positions` without iterating."""

    def __init__(self, sources: Sequence, positions: np.ndarray):
        self.sources = sources
        self.positions = np.asarray(positions, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.positions)

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        sources, positions = self.sources, self.positions
        if len(positions) == len(sources):
            yield from enumerate(sources)
            return
        select = getattr(sources, "select", None)
        if select is not None:
            yield from zip(positions.tolist(), select(positions))
            return
        for p in positions.tolist():
            yield p, sources[p]


def stream_rows(sources: Sequence, positions: np.ndarray) -> GalleryRows:
    """The rows ``positions`` (ascending) of ``sources``, read lazily (:class:`GalleryRows`)."""
    return GalleryRows(sources, positions)
