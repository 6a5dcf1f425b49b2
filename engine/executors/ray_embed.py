"""The Ray executor of the embedding stage: the rows that miss the embedding cache are computed on a
Ray cluster by Ray Data (:class:`RayExecutor`, an :class:`~clipeval.engine.embedding.executor.Executor`).

The stage (:class:`~clipeval.engine.embedding.stage.EmbeddingStage`, on the driver) keeps what it
does for every executor: cache lookups and writes, tokenising and batching texts, row order,
progress. This executor computes what it is handed::

    image rows (position, source) --> Arrow blocks of B rows (engine/executors/rows.py: a path,
                                      a URL, a webdataset shard range, or bytes; never pixels)
    CPU-only cluster:
    Ray Data: map_batches(TowerActor)     actor pool, one actor per node by default: fetch (path /
                                          URL / shard range), decode and preprocess with T threads,
                                          then the tower's onnxruntime session (T threads), opened
                                          once from the bundle pack; T CPUs reserved (:func:`placement`)
    cluster with GPUs:
    Ray Data: map_batches(decode_batch)   CPU tasks (1 CPU each): fetch, decode, preprocess into
                                          float32 [b, 3, H, W]
              map_batches(TowerActor)     one actor per GPU (1 GPU, 1 CPU), fed the pixels
    driver: ImageBatch es, each as its block comes back

    token batches (positions, feeds)  --> one Arrow block per batch (padded by the stage)
    Ray Data: map_batches(TowerActor)     the same actors, text or reranker tower
    driver: (positions, output), each as its block comes back

* **Row order and batches.** Every row carries its position and blocks come back in any order
  (the stage puts each row in its place). Image blocks are the rows in the order given, B at a
  time, and token blocks are the stage's own batches: the towers see the batches a local run
  gives them, so the embeddings are those of a local run (bit for bit on the CPU provider).
* **Faults.** A decode task or tower call that fails (an exception, or its worker or node
  dying) is run again by Ray up to :data:`RETRIES` more times, on any node (actors are
  restarted as often as needed; an actor that decodes takes one block at a time, so an image
  that kills it costs only its own block a try). An image that does not decode is not a fault: it comes back as a failure,
  as in a local run. A block that still fails is dropped by Ray Data (``max_errored_blocks``)
  while the others go on and are yielded (the stage caches them); at the end one
  :class:`~clipeval.engine.errors.ClusterError` names the rows of every block that did not come
  back and the error Ray reported. A ``ClipevalError`` raised in a worker (a bundle damaged in
  transit, another clipeval version) ends the run as itself.

Ray is imported when a :class:`RayExecutor` is made (the runner connects first:
:func:`~.ray_cluster.connected`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..embedding.executor import Executor, ImageBatch, TowerRef
from ..errors import ClipevalError, ClusterError, ImageError, listing
from ..sessions.onnx import open_tower, short_provider
from .ray_cluster import RayDataLog, cap_threads, data_context, first_line, node_cpus, root_cause
from .rows import fetch_sources, image_table
from .shipping import pack_bundle, unpack_bundle

log = logging.getLogger(__name__)

RETRIES = 3  # further tries of a failed decode task or tower call, on any node
LOGS_HINT = "the Ray logs of each node are in /tmp/ray/session_latest/logs"
OUTPUT_NAMES = {"vision": "image_embeds", "text": "text_embeds", "reranker": "scores"}
UPSCALING_THRESHOLD = 1.0


def job_settings() -> dict[str, Any]:
    """Ray Data settings of every job (:func:`~.ray_cluster.data_context`): a block that keeps
    failing is dropped (the run names its rows at the end) and actor task errors are retried.
    The actor pool's upscaling threshold is :data:`UPSCALING_THRESHOLD` (100 %): each actor takes
    one block at a time (``max_tasks_in_flight_per_actor`` 1), so a pool is at most 100 % busy,
    and Ray Data's default (175 %) never lets it grow after it shrank (or from ``min_size``, on a
    Ray Data without ``initial_size``); at 100 % it grows while every actor is busy, up to
    ``max_size``. (Ray Data keeps the threshold in ``DataContext.autoscaling_config``; a Ray Data
    without it keeps its own.)"""
    import dataclasses

    from ray.data import DataContext

    settings: dict[str, Any] = {"max_errored_blocks": -1, "actor_task_retry_on_errors": True}
    with warnings.catch_warnings():  # Ray Data's notes on its own deprecated settings, as data_context
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        auto = getattr(DataContext.get_current(), "autoscaling_config", None)
    if dataclasses.is_dataclass(auto) and hasattr(auto, "actor_pool_util_upscaling_threshold"):
        settings["autoscaling_config"] = dataclasses.replace(
            auto, actor_pool_util_upscaling_threshold=UPSCALING_THRESHOLD)
    return settings


# --- worker side ----------------------------------------------------------------------------------


def decode_batch(batch: dict[str, Any], *, spec: dict, fast_decode: bool, workers: int = 0
                 ) -> dict[str, np.ndarray]:
    """The rows of one block (:func:`~.rows.image_table` columns) to ``{"index": int64 [b],
    "error": str [b] ("" when the image decoded), "pixels": float32 [b, 3, H, W]}`` (zeros where
    it did not): a Ray Data CPU task on a cluster with GPUs, called by :class:`TowerActor`
    otherwise. Decoding and preprocessing are a local run's
    (:func:`~clipeval.engine.images.pipeline.iter_pixel_batches`; ``workers`` decode threads, 0:
    inline), so pixels are identical."""
    from ..images.pipeline import iter_pixel_batches
    from ..images.preprocess import Preprocessor

    preprocessor = Preprocessor(spec)
    resolved = fetch_sources(batch)
    n = len(resolved)
    pixels = np.zeros((n, 3, *preprocessor.output_size), dtype=np.float32)
    errors = np.array([src.message if isinstance(src, ImageError) else "" for src in resolved], dtype=object)
    items = [(row, src) for row, src in enumerate(resolved) if not isinstance(src, ImageError)]
    if items:
        for done in iter_pixel_batches(items, preprocessor, batch_size=len(items), num_workers=workers, on_error="skip",
                                       fast_decode=fast_decode):
            pixels[done.indices] = done.pixels
            for row, _source, reason in done.failures:
                errors[row] = reason
    return {"index": np.asarray(batch["index"], dtype=np.int64), "error": errors, "pixels": pixels}


class TowerActor:
    """A Ray Data actor: one onnxruntime session of one tower, opened once from the bundle pack
    (an object-store reference in a list, verified by :func:`~.shipping.unpack_bundle`).

    With ``decode`` (``{"spec", "fast_decode", "workers"}``: the CPU-only placement) it first
    decodes image rows itself (:func:`decode_batch` with ``workers`` threads). On decoded images
    (``pixels``, ``error``) it returns ``{"index", "error", "embeds": float32
    [b, D], ...}`` (zeros where the image did not decode); on a token batch (``index`` and the
    tower's int64 inputs) ``{"index", "embeds": float32 [b, D] (or [b] scores), ...}``. Each block
    also carries the provider the session runs on, the seconds it took to open and its
    warnings (provider fallbacks)."""

    def __init__(self, pack: list, tower: str, precision: str, provider: str, threads: int | None,
                 decode: dict | None = None):
        import ray

        t0 = time.perf_counter()
        bundle = unpack_bundle(ray.get(pack[0]))  # a reference in a list: fetched here, not by Ray
        self.session = open_tower(bundle.tower_path(tower, precision), provider, threads)
        self.load_s = time.perf_counter() - t0
        expected = OUTPUT_NAMES[tower]
        if self.session.output_name != expected:
            from ..errors import BundleError

            raise BundleError(f"{self.session.path.name} outputs {self.session.output_name!r}, not {expected!r}",
                              "re-export the bundle")
        self.dim = bundle.embed_dim if tower != "reranker" else None
        self.inputs = list(self.session.input_names)
        self.decode = decode

    def _facts(self, n: int) -> dict[str, np.ndarray]:
        return {"provider": np.array([self.session.provider] * n, dtype=object),
                "load_s": np.full(n, self.load_s, dtype=np.float64),
                "warnings": np.array(["\n".join(self.session.warnings)] * n, dtype=object)}

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        if self.decode is not None and "kind" in batch:
            batch = decode_batch(batch, **self.decode)
        index = np.asarray(batch["index"], dtype=np.int64)
        if "pixels" not in batch:
            feeds = {name: np.ascontiguousarray(np.stack(list(batch[name])) if batch[name].dtype == object
                                                else batch[name], dtype=np.int64)
                     for name in self.inputs if name in batch}
            out = np.asarray(self.session.run(feeds), dtype=np.float32)
            return {"index": index, "embeds": out, **self._facts(len(index))}
        errors = np.asarray(batch["error"], dtype=object)
        embeds = np.zeros((len(index), self.dim), dtype=np.float32)
        ok = np.flatnonzero(errors == "")
        if len(ok):
            pixels = batch["pixels"]
            out = self.session.run({"pixel_values": np.ascontiguousarray(pixels if len(ok) == len(index)
                                                                         else pixels[ok])})
            embeds[ok] = np.asarray(out, dtype=np.float32)
        return {"index": index, "error": errors, "embeds": embeds, **self._facts(len(index))}


# --- driver side ----------------------------------------------------------------------------------


def unused_options(num_workers: int | None, decode: str) -> str | None:
    """The warning for decode settings a Ray run does not use (``None`` when there are none): the
    tower actors decode with ``--threads`` threads each (decode tasks, one CPU each, on GPU
    clusters), so ``--num-workers`` and ``--decode threads|processes`` (config ``num_workers``,
    ``decode``) do not apply."""
    given = [f"--num-workers {num_workers} (config num_workers)"] if num_workers is not None else []
    if decode != "auto":
        given.append(f"--decode {decode} (config decode)")
    if not given:
        return None
    return (f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} not used with --executor ray: each tower "
            "actor decodes its blocks with --threads threads (decode tasks of one CPU each on a cluster with "
            "GPUs); docs/scale.md, Resources")


class _Placed(dict):
    """Rows given as ``(position, source)`` pairs, indexable by position as a gallery is."""


@dataclass
class Placement:
    """How the tower actors are placed: ``options`` (the pool's ``size`` or ``min_size`` /
    ``max_size`` / ``initial_size``, and each actor's ``num_cpus`` / ``num_gpus``), the provider
    and threads each actor's session gets, whether the actors decode images themselves
    (``decode_in_actor``) or decode tasks feed them, and notes worth a warning."""

    options: dict
    provider: str
    threads: int
    decode_in_actor: bool = False
    notes: list[str] = field(default_factory=list)


def placement(ray, provider: str, num_threads: int | None) -> Placement:
    """Where the tower actors run.

    * A cluster with GPUs (``provider`` not ``cpu``): one actor per GPU, each taking one GPU
      (``num_gpus=1``) and one CPU; decode tasks (one CPU each) take the other CPUs and feed
      the actors pixels through the object store.
    * CPU only: each actor decodes its own images and runs the tower, with ``num_threads``
      decode threads and as many onnxruntime threads (default: the CPUs of the smallest node;
      at most the largest's), and reserves that many CPUs: a local run's layout, one per node
      by default, as many as the cluster's CPUs hold (all started at once). Pixels never
      leave the process that decoded them, and no process starts only to decode (measured in
      docs/speed.md, "Ray": separate decode tasks cost a 2-core node a fifth of its
      throughput and a process start each).
    """
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus and provider != "cpu":
        return Placement({"size": gpus, "num_gpus": 1, "num_cpus": 1}, provider, num_threads or 1)
    cpus = node_cpus(ray)
    threads, capped = cap_threads(num_threads, max(cpus), min(cpus), "tower actor")
    notes = [capped] if capped else []
    if provider == "cuda":
        notes.append("CUDA was asked for, but the Ray cluster has no GPUs; the towers run on CPU")
    pool = max(1, sum(c // threads for c in cpus))
    # one block at a time per actor: an image that kills its actor then fails only its own block
    # (a block queued behind it would die with the actor and spend its retries too)
    return Placement({"min_size": 1, "max_size": pool, "initial_size": pool, "max_tasks_in_flight_per_actor": 1,
                      "num_cpus": threads}, "cpu", threads, True, notes)


@contextlib.contextmanager
def _retry_args():
    """Ray Data 2.5x marks the remote arguments that bound retries (``max_retries``,
    ``max_task_retries``) as deprecated without a replacement; they are what bounds the tries of a
    failing batch (Ray Data's default retries a crashing task for ever), so they are passed and the
    warning is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated.*")
        yield


def _blocks(columns: dict[str, Any], batch_size: int) -> list:
    """The rows ``columns`` as Arrow tables of ``batch_size`` rows (the last one shorter): one
    Ray Data block per batch."""
    import pyarrow as pa

    n = len(columns["index"])
    return [pa.table({name: pa.array(values[start:start + batch_size]) for name, values in columns.items()})
            for start in range(0, n, batch_size)]


def _pool_strategy(pool: dict):
    """Ray Data's ``ActorPoolStrategy`` with the keys of ``pool`` this Ray Data takes
    (``initial_size`` came after Ray 2.30: without it the pool starts at ``min_size`` and grows
    while the actors are busy)."""
    import inspect

    from ray.data import ActorPoolStrategy

    known = inspect.signature(ActorPoolStrategy).parameters
    return ActorPoolStrategy(**{k: v for k, v in pool.items() if k in known})


def _dataset(blocks: list):
    """A Ray Dataset of exactly these Arrow ``blocks`` (one Ray Data block each, in order).

    ``ray.data.from_blocks`` reads each block's size and schema on the driver; ``from_arrow``
    (Ray Data before it had ``from_blocks``) runs a task per block to read them, and those tasks
    start worker processes that import Ray Data (about 2 s of CPU each) only for that."""
    import ray.data

    make = getattr(ray.data, "from_blocks", None) or ray.data.from_arrow
    return make(blocks)


def _token_block(positions: np.ndarray, feeds: dict[str, np.ndarray]):
    """One padded token batch as an Arrow block: ``index`` and one fixed-size list column per
    input (``[b, T]`` int64)."""
    import pyarrow as pa

    table = {"index": pa.array(np.asarray(positions, dtype=np.int64))}
    for name, values in feeds.items():
        values = np.ascontiguousarray(values, dtype=np.int64)
        table[name] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
    return pa.table(table)


class RayExecutor(Executor):
    """Computes what misses the embedding cache on the Ray cluster this process is connected to
    (see the module docstring). ``provider`` and ``threads`` as for a local run; :func:`placement`
    says how they become actors. Each tower's bundle is packed and put into the object store once,
    on first use (:mod:`.shipping`)."""

    name = "ray"

    def __init__(self, *, provider: str = "auto", threads: int | None = None):
        import ray

        self.ray = ray
        self.provider_asked = provider
        self.threads = threads
        self._packs: dict[tuple[str, str, str], Any] = {}
        self._placement: Placement | None = None
        self._providers: list[str] = []
        self._load_s: dict[tuple[str, str, str], float] = {}
        self._warnings: list[str] = []
        self._decoded = False
        self.errors: list[str] = []  # what Ray Data reported for blocks it dropped, in the last job

    # -- what ran -------------------------------------------------------------------------------

    @property
    def provider(self) -> str:
        return short_provider(self._providers[0]) if self._providers else "none"

    @property
    def load_s(self) -> float:
        """The longest time an actor of each tower took to fetch, verify and open its bundle."""
        return float(sum(self._load_s.values()))

    @property
    def warnings(self) -> list[str]:
        return list(self._warnings)

    @property
    def decode(self) -> str | None:
        return "ray" if self._decoded else None

    @property
    def decode_workers(self) -> int | None:
        """Decode threads per decoding process: a tower actor's threads (CPU-only layout), 0 for
        the decode tasks of the GPU layout (each decodes its block inline); ``None`` before any
        image was decoded. ``--num-workers`` is not used on Ray (:func:`unused_options`)."""
        if not self._decoded or self._placement is None:
            return None
        return self._placement.threads if self._placement.decode_in_actor else 0

    def close(self) -> None:
        self._packs.clear()  # the packs leave the object store

    # -- jobs -----------------------------------------------------------------------------------

    def _pack(self, tower: TowerRef):
        if tower.key not in self._packs:
            self._packs[tower.key] = self.ray.put(pack_bundle(tower.bundle, tower.precision, (tower.tower,)))
        return self._packs[tower.key]

    def placement(self) -> Placement:
        if self._placement is None:
            self._placement = placement(self.ray, self.provider_asked, self.threads)
            for note in self._placement.notes:
                log.warning("%s", note)
        return self._placement

    def _tower_stage(self, ds, tower: TowerRef, batch_size: int | None, decode: dict | None = None):
        place = self.placement()
        pool = {k: v for k, v in place.options.items()
                if k in ("size", "min_size", "max_size", "initial_size", "max_tasks_in_flight_per_actor")}
        resources = {k: v for k, v in place.options.items() if k in ("num_cpus", "num_gpus")}
        with _retry_args():
            return ds.map_batches(
                TowerActor, fn_constructor_kwargs={"pack": [self._pack(tower)], "tower": tower.tower,
                                                   "precision": tower.precision, "provider": place.provider,
                                                   "threads": place.threads, "decode": decode},
                batch_size=batch_size, batch_format="numpy", compute=_pool_strategy(pool), **resources,
                max_restarts=-1, max_task_retries=RETRIES)

    def _note(self, tower: TowerRef, block: dict[str, np.ndarray]) -> None:
        """What the actor that computed ``block`` says about its session."""
        if not self._providers:
            self._providers.append(str(block["provider"][0]))
        self._load_s[tower.key] = max(self._load_s.get(tower.key, 0.0), float(block["load_s"][0]))
        for text in set(block["warnings"].tolist()):
            for w in filter(None, str(text).split("\n")):
                if w not in self._warnings:
                    self._warnings.append(w)
                    log.warning("%s", w)

    def _blocks_back(self, ds, what: str) -> Iterator[dict[str, np.ndarray]]:
        """The blocks of ``ds`` as they come back to the driver; a failure of the job as a whole is
        one error (a ``ClipevalError`` from a worker as itself). Blocks Ray Data dropped after
        their retries are not yielded; their errors are in :attr:`errors`."""
        with RayDataLog() as ray_log:
            try:
                yield from ds.iter_batches(batch_size=None, batch_format="numpy")
            except (KeyboardInterrupt, ClipevalError, GeneratorExit):
                raise
            except Exception as exc:  # noqa: BLE001 - Ray's error types: translated here, once
                cause = root_cause(exc)
                if isinstance(cause, ClipevalError):
                    raise type(cause)(cause.message, cause.remedy) from None
                raise ClusterError(f"embedding the {what} on the Ray cluster failed: {first_line(cause)}",
                                   f"run again; {LOGS_HINT}") from None
            finally:
                self.errors = ray_log.errors

    def _lost(self, what: str, missing: list[int], label: Callable[[int], str]) -> ClusterError:
        reasons = list(dict.fromkeys(self.errors))
        why = f" ({'; '.join(reasons[:3])})" if reasons else ""
        return ClusterError(
            f"{len(missing)} {what} did not come back from the Ray cluster: their batch failed {RETRIES + 1} "
            f"times{why}:\n    " + listing([(label(i), "batch failed") for i in missing]),
            f"if these items are at fault, replace or remove them; if nodes died, give them more memory; {LOGS_HINT}",
        )

    # -- the interface --------------------------------------------------------------------------

    def image_batches(self, tower: TowerRef, rows: Iterable[tuple[int, Any]], *, batch_size: int,
                      fast_decode: bool = False) -> Iterator[ImageBatch]:
        """Decode and embed ``rows`` on the cluster (see the module docstring), ``batch_size``
        rows per Ray Data block. Rows the stage gives as a
        :class:`~clipeval.engine.embedding.local.GalleryRows` are described from the gallery
        without reading it (a webdataset image travels as its shard, offset and size). Raises
        :class:`~clipeval.engine.errors.ConfigError` for an in-memory PIL image, and, after
        yielding every batch that came back, :class:`ClusterError` naming the images of the
        batches that did not."""
        gallery = getattr(rows, "sources", None)
        positions_arr = getattr(rows, "positions", None)
        if gallery is None or positions_arr is None:
            pairs = list(rows)
            positions_arr = np.asarray([p for p, _ in pairs], dtype=np.int64)
            gallery = _Placed(dict(pairs))
        positions_arr = np.asarray(positions_arr, dtype=np.int64)
        if not len(positions_arr):
            return
        columns = image_table(gallery, positions_arr)
        labels = getattr(gallery, "labels", None)  # a webdataset gallery names its images

        def shown(position: int) -> Any:
            """What a local run names the image at ``position`` by (its source, or its label)."""
            return labels[position] if labels is not None else gallery[position]

        # the workers read paths made absolute; their messages name each image as it was given
        absolute = {int(i): loc for i, kind, loc in zip(columns["index"], columns["kind"], columns["location"])
                    if kind == "path"}

        def as_given(position: int, reason: str) -> str:
            loc = absolute.get(position)
            return reason.replace(loc, os.fspath(gallery[position])) if loc else reason

        back: set[int] = set()
        self._decoded = True
        with data_context(**job_settings()):
            ds = _dataset(_blocks(columns, batch_size))
            place = self.placement()
            decode = {"spec": tower.bundle.preprocess, "fast_decode": fast_decode}
            if place.decode_in_actor:
                ds = self._tower_stage(ds, tower, None, {**decode, "workers": place.threads})
            else:
                with _retry_args():
                    ds = ds.map_batches(decode_batch, fn_kwargs=decode, batch_size=None, batch_format="numpy",
                                        num_cpus=1, max_retries=RETRIES, retry_exceptions=True)
                ds = self._tower_stage(ds, tower, None)
            for block in self._blocks_back(ds, "images"):
                self._note(tower, block)
                index = np.asarray(block["index"], dtype=np.int64)
                good = block["error"] == ""
                back.update(index.tolist())
                failures = [(int(p), shown(int(p)), as_given(int(p), str(reason)))
                            for p, reason in zip(index[~good], block["error"][~good])]
                yield ImageBatch(index[good], np.ascontiguousarray(block["embeds"][good], dtype=np.float32), failures)
        missing = [int(p) for p in positions_arr.tolist() if int(p) not in back]
        if missing:
            raise self._lost("image(s)", missing, lambda p: str(shown(p)))

    def run_batches(self, tower: TowerRef, batches: Iterable[tuple[np.ndarray, dict[str, np.ndarray]]]
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Run a text or reranker tower on the stage's padded batches on the cluster, one Ray
        Data block per batch; yields ``(positions, output)`` as blocks come back, then raises
        :class:`ClusterError` naming the rows of the batches that did not."""
        blocks, given = [], []
        for positions, feeds in batches:
            blocks.append(_token_block(positions, feeds))
            given.extend(np.asarray(positions, dtype=np.int64).tolist())
        if not blocks:
            return
        back: set[int] = set()
        with data_context(**job_settings()):
            ds = _dataset(blocks)
            for block in self._blocks_back(self._tower_stage(ds, tower, None), "texts"):
                self._note(tower, block)
                back.update(block["index"].tolist())
                yield np.asarray(block["index"], dtype=np.int64), np.asarray(block["embeds"], dtype=np.float32)
        missing = [p for p in given if p not in back]
        if missing:
            raise self._lost("text(s)", missing, lambda p: f"row {p}")
