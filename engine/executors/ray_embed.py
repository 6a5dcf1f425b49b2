"""The embedding stage on a Ray cluster: ``embed_images`` and ``embed_texts`` as
:mod:`clipeval.engine.embed` has them, with the work done by Ray Data.

Data flow of :meth:`RayEmbedder.embed_images` (``sources`` of N images, batch size B)::

    driver: cache lookup --> rows that missed (engine/executors/rows.py), in blocks of B rows
    Ray Data: map_batches(decode_batch)   CPU tasks: fetch (path / URL / shard range), decode,
                                          preprocess into float32 [b, 3, H, W] (1 CPU each)
              map_batches(TowerActor)     actor pool: one onnxruntime session per actor, opened
                                          once from the bundle; 1 GPU per actor on a cluster
                                          with GPUs, else ``num_threads`` threads (default 1)
                                          sharing the CPUs with decoding (:func:`placement`)
    driver: embeddings by row index, cache writes (one transaction per batch), progress

* **Row order.** Blocks hold the rows that missed the cache in input order, B at a time, which
  are the batches a local run makes; every row carries its input index, and the driver puts each
  embedding at its index, whatever order the blocks come back in. So the result is in input
  order, and the towers see the batches a local run gives them (same rows, same padding).
* **Cache.** Only the driver reads and writes the embedding cache (a SQLite file on its disk).
  Each batch that comes back is stored whole in one transaction; a run that fails keeps the
  batches that finished, as a local run does, and nothing of a batch that did not.
* **Faults.** A decode task that fails (an exception, or its worker or node dying) is run again
  by Ray up to :data:`RETRIES` more times, on any node; so is a tower call (actors are restarted
  as often as needed). Images that do not decode are not faults: they come back as failures, as
  in a local run. A batch that still fails is dropped by Ray Data (``max_errored_blocks``) while
  the others go on; at the end one :class:`~clipeval.engine.errors.ClusterError` names the images
  of every batch that did not come back and the error Ray reported. A ``ClipevalError`` raised in
  a worker (a bundle damaged in transit, another clipeval version) ends the run as itself.
* **Progress** is the driver's: rows done, rows/s and ETA as for local runs
  (:class:`~clipeval.engine.progress.Progress`).

Ray is imported when an :class:`RayEmbedder` is made (inside :func:`connected`).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..bundle import Bundle
from ..cache import CacheSpace, image_key, text_key
from ..datasets.base import BadItem
from ..embed import ImageEmbeddings, TextEmbeddings
from ..errors import ClipevalError, ClusterError, ImageError, listing
from ..progress import Progress
from ..session import open_tower
from ..tokenizer import TextTokenizer
from .ray_cluster import RayDataLog, data_context, first_line, root_cause
from .rows import fetch_sources, image_table
from .shipping import pack_bundle, unpack_bundle

log = logging.getLogger(__name__)

CPU_ACTOR_CPUS = 0  # CPUs a CPU tower actor reserves in Ray's accounting (see placement)
RETRIES = 3  # further tries of a failed decode task or tower call, on any node
DECODE = "ray"  # ImageEmbeddings.decode of a run on Ray
LOGS_HINT = "the Ray logs of each node are in /tmp/ray/session_latest/logs"


# --- worker side ----------------------------------------------------------------------------------


def decode_batch(batch: dict[str, Any], *, spec: dict, fast_decode: bool) -> dict[str, np.ndarray]:
    """A Ray Data CPU task: the rows of one batch (:func:`~.rows.image_table` columns) to
    ``{"index": int64 [b], "error": str [b] ("" when the image decoded), "pixels": float32
    [b, 3, H, W]}`` (zeros where it did not). Decoding and preprocessing are those of a local run
    (:func:`~clipeval.engine.pipeline.iter_pixel_batches`, inline), so pixels are identical."""
    from ..pipeline import iter_pixel_batches
    from ..preprocess import Preprocessor

    preprocessor = Preprocessor(spec)
    resolved = fetch_sources(batch)
    n = len(resolved)
    pixels = np.zeros((n, 3, *preprocessor.output_size), dtype=np.float32)
    errors = np.array([src.message if isinstance(src, ImageError) else "" for src in resolved], dtype=object)
    items = [(row, src) for row, src in enumerate(resolved) if not isinstance(src, ImageError)]
    if items:
        for done in iter_pixel_batches(items, preprocessor, batch_size=len(items), num_workers=0, on_error="skip",
                                       fast_decode=fast_decode):
            pixels[done.indices] = done.pixels
            for row, _source, reason in done.failures:
                errors[row] = reason
    return {"index": np.asarray(batch["index"], dtype=np.int64), "error": errors, "pixels": pixels}


class TowerActor:
    """A Ray Data actor: one onnxruntime session of one tower, opened once from the bundle pack
    (an object-store reference, verified by :func:`~.shipping.unpack_bundle`).

    Called on a batch of decoded images (``pixels``, ``error``) it returns ``{"index", "error",
    "embeds": float32 [b, D], "provider"}`` (zeros where the image did not decode); on a batch of
    token ids (``ids``, one int64 array per text) it pads them as a local run does and returns
    ``{"index", "embeds", "provider"}``."""

    def __init__(self, pack: list, tower: str, precision: str, provider: str, threads: int | None):
        import ray

        bundle = unpack_bundle(ray.get(pack[0]))  # a reference in a list: fetched here, not by Ray
        self.dim = bundle.embed_dim
        self.tower = open_tower(bundle.tower_path(tower, precision), provider, threads)
        self.tokenizer = None
        if tower == "text":
            self.tokenizer = TextTokenizer(bundle.path / "tokenizer.json", bundle.tokenizer_rule,
                                           bundle.context_length)

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        index = np.asarray(batch["index"], dtype=np.int64)
        provider = np.array([self.tower.provider] * len(index), dtype=object)
        if self.tokenizer is not None:
            feeds = self.tokenizer.pad([np.asarray(ids, dtype=np.int64) for ids in batch["ids"]])
            return {"index": index, "embeds": self._run(feeds), "provider": provider}
        errors = np.asarray(batch["error"], dtype=object)
        embeds = np.zeros((len(index), self.dim), dtype=np.float32)
        ok = np.flatnonzero(errors == "")
        if len(ok):
            pixels = batch["pixels"]
            embeds[ok] = self._run({"pixel_values": np.ascontiguousarray(pixels if len(ok) == len(index) else pixels[ok])})
        return {"index": index, "error": errors, "embeds": embeds, "provider": provider}

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        out = np.asarray(self.tower.run(feeds), dtype=np.float32)
        if out.ndim != 2 or out.shape[1] != self.dim:
            raise ClusterError(f"the tower returned embeddings of shape {out.shape}, the manifest says {self.dim} "
                               "dimensions", "re-export the bundle")
        return out


# --- driver side ----------------------------------------------------------------------------------


@dataclass
class Placement:
    """How the tower actors are placed: ``options`` (the pool's ``size`` or ``min_size`` /
    ``max_size``, and each actor's ``num_cpus`` / ``num_gpus``), the provider and threads each
    actor's session gets."""

    options: dict
    provider: str
    threads: int
    notes: list[str] = field(default_factory=list)


def placement(ray, provider: str, num_threads: int | None) -> Placement:
    """Where the tower actors run.

    * A cluster with GPUs (``provider`` not ``cpu``): one actor per GPU, each taking one GPU
      (``num_gpus=1``) and one CPU; decoding gets the other CPUs.
    * CPU only: actors of ``num_threads`` onnxruntime threads (default 1, at most the CPUs of
      the largest node), from 1 up to as many as the cluster's CPUs hold, added by Ray Data
      while the towers are the bottleneck. They reserve no CPU in Ray's accounting: decode tasks
      take one CPU each, and the towers' threads share the cores with them, as decode threads
      and onnxruntime threads share them in a local run. An actor that reserved whole CPUs would
      keep them from decoding while it waits for pixels (on a 2-core node: half the decoding;
      docs/speed.md, "Ray").
    """
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus and provider != "cpu":
        return Placement({"size": gpus, "num_gpus": 1, "num_cpus": 1}, provider, num_threads or 1)
    node_cpus = [int(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    largest = max(node_cpus or [1]) or 1
    threads = min(num_threads or 1, largest)
    notes = []
    if num_threads and threads < num_threads:
        notes.append(f"{num_threads} threads were asked for; the largest node has {largest} CPUs, so each tower "
                     f"actor runs {threads}")
    if provider == "cuda":
        notes.append("CUDA was asked for, but the Ray cluster has no GPUs; the towers run on CPU")
    pool = max(1, int(resources.get("CPU", 1)) // threads)
    return Placement({"min_size": 1, "max_size": pool, "num_cpus": CPU_ACTOR_CPUS}, "cpu", threads, notes)


@contextlib.contextmanager
def _retry_args():
    """Ray Data 2.5x marks the remote arguments that bound retries (``max_retries``,
    ``max_task_retries``) as deprecated without a replacement; they are what bounds the tries of a
    failing batch (Ray Data's default retries a crashing task for ever), so they are passed and the
    warning is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated.*")
        yield


def _label(sources: Sequence, where: list[str] | None, i: int) -> str:
    if where:
        return where[i]
    labels = getattr(sources, "labels", None)  # a webdataset gallery: no need to read the image
    return labels[i] if labels is not None else str(sources[i])


def _bad_item(sources: Sequence, where: list[str] | None, i: int, reason: str) -> BadItem:
    """The failure record of image ``i``, worded as :func:`clipeval.engine.embed.embed_images` words it."""
    source = sources[i]
    if where:
        return BadItem(f"{where[i]} ({source})", reason, source=str(source))
    return BadItem(str(source), reason, source=str(source))


def _blocks(columns: dict[str, Any], batch_size: int, types: dict[str, Any] | None = None) -> list:
    """The rows ``columns`` as Arrow tables of ``batch_size`` rows (the last one shorter): one
    Ray Data block per batch."""
    import pyarrow as pa

    n = len(columns["index"])
    tables = []
    for start in range(0, n, batch_size):
        part = {}
        for name, values in columns.items():
            chunk = values[start:start + batch_size]
            kind = (types or {}).get(name)
            part[name] = pa.array(list(chunk) if not isinstance(chunk, np.ndarray) else chunk, type=kind)
        tables.append(pa.table(part))
    return tables


class RayEmbedder:
    """The embedding stage of one model on the Ray cluster this process is connected to
    (:func:`~.ray_cluster.connected`).

    ``bundle`` is loaded (and verified) on the driver; ``precision`` is the variant that runs;
    ``provider`` and ``num_threads`` as for a local run (see :func:`placement` for how they
    become actors). The bundle is packed and put into the object store once per tower, on first
    use. ``providers`` collects the onnxruntime providers the actors ran on.
    """

    def __init__(self, bundle: Bundle, *, precision: str, provider: str = "auto", num_threads: int | None = None):
        import ray

        self.ray = ray
        self.bundle = bundle
        self.precision = precision
        self.provider = provider
        self.num_threads = num_threads
        self.providers: set[str] = set()
        self._packs: dict[str, Any] = {}
        self._placement: Placement | None = None
        self._tokenizer: TextTokenizer | None = None
        self.errors: list[str] = []  # what Ray Data reported for blocks it dropped, in the last job

    # ---- shared -------------------------------------------------------------------------------

    def _pack(self, tower: str):
        if tower not in self._packs:
            self._packs[tower] = self.ray.put(pack_bundle(self.bundle, self.precision, (tower,)))
        return self._packs[tower]

    def placement(self) -> Placement:
        if self._placement is None:
            self._placement = placement(self.ray, self.provider, self.num_threads)
            for note in self._placement.notes:
                log.warning("%s", note)
        return self._placement

    def _tower_stage(self, ds, tower: str, batch_size: int):
        from ray.data import ActorPoolStrategy

        place = self.placement()
        pool = {k: v for k, v in place.options.items() if k in ("size", "min_size", "max_size")}
        resources = {k: v for k, v in place.options.items() if k in ("num_cpus", "num_gpus")}
        with _retry_args():
            return ds.map_batches(
                TowerActor, fn_constructor_kwargs={"pack": [self._pack(tower)], "tower": tower,
                                                   "precision": self.precision, "provider": place.provider,
                                                   "threads": place.threads},
                batch_size=batch_size, batch_format="numpy", compute=ActorPoolStrategy(**pool), **resources,
                max_restarts=-1, max_task_retries=RETRIES)

    def _run(self, ds, what: str, on_block) -> None:
        """Iterate ``ds`` on the driver, handing each block to ``on_block``; a failure of the job as
        a whole is one error (a ``ClipevalError`` from a worker as itself)."""
        with RayDataLog() as ray_log:
            try:
                for block in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    on_block(block)
            except (KeyboardInterrupt, ClipevalError):
                raise
            except Exception as exc:  # noqa: BLE001 - Ray's error types: translated here, once
                cause = root_cause(exc)
                if isinstance(cause, ClipevalError):
                    raise type(cause)(cause.message, cause.remedy) from None
                raise ClusterError(f"embedding the {what} on the Ray cluster failed: {first_line(cause)}",
                                   f"run again; {LOGS_HINT}") from None
        self.errors = ray_log.errors

    def _missing(self, what: str, missing: list[int], labels) -> ClusterError:
        reasons = list(dict.fromkeys(getattr(self, "errors", [])))
        why = f" ({'; '.join(reasons[:3])})" if reasons else ""
        return ClusterError(
            f"{len(missing)} {what} did not come back from the Ray cluster: their batch failed {RETRIES + 1} "
            f"times{why}:\n    " + listing([(labels(i), "batch failed") for i in missing]),
            f"if these items are at fault, replace or remove them; if nodes died, give them more memory; {LOGS_HINT}",
        )

    # ---- images -------------------------------------------------------------------------------

    def embed_images(self, sources: Sequence, *, batch_size: int, fast_decode: bool = False,
                     where: list[str] | None = None, progress: bool = True, cache: CacheSpace | None = None,
                     on_error: str | None = None, **_local_only) -> ImageEmbeddings:
        """Embed ``sources`` (paths, URLs, webdataset gallery images or bytes; see
        :mod:`~.rows`) on the cluster; returns :class:`~clipeval.engine.embed.ImageEmbeddings` as
        :func:`clipeval.engine.embed.embed_images` does: ``embeds`` float32 [n_ok, D] and
        ``indices`` int64 [n_ok] in input order, the images that did not decode as
        ``failures`` (logged when ``on_error="skip"``), ``cache_hits``; ``decode`` is ``"ray"``.

        Raises :class:`ClusterError` when batches keep failing (naming their images),
        :class:`~clipeval.engine.errors.ConfigError` for an in-memory PIL image.
        Options of the local decode pipeline (``num_workers``, ``decode``) are accepted and not
        used: Ray schedules the decode tasks.
        """
        import ray.data

        n = len(sources)
        keys: list = []
        hits: dict[int, np.ndarray] = {}
        if cache is not None:
            keys = [image_key(s, cache.verify) for s in sources]
            hits = cache.lookup(keys)
        todo = np.array([i for i in range(n) if i not in hits], dtype=np.int64)
        embeds = np.zeros((n, self.bundle.embed_dim), dtype=np.float32)
        for i, vec in hits.items():
            embeds[i] = vec
        ok = np.zeros(n, dtype=bool)
        ok[list(hits)] = True
        back = np.zeros(n, dtype=bool)
        failures: list[tuple[int, BadItem]] = []

        def on_block(block: dict[str, np.ndarray]) -> None:
            index = block["index"]
            good = block["error"] == ""
            embeds[index[good]] = block["embeds"][good]
            ok[index[good]] = True
            back[index] = True
            self.providers.update(block["provider"].tolist())
            for i, reason in zip(index[~good], block["error"][~good]):
                failures.append((int(i), _bad_item(sources, where, int(i), str(reason))))
            if cache is not None and good.any():
                cache.store([keys[i] for i in index[good]], block["embeds"][good])
            bar.update(len(index))

        with Progress("images", len(todo), unit="img", enabled=progress, cached=len(hits)) as bar:
            if len(todo):
                with data_context(max_errored_blocks=-1, actor_task_retry_on_errors=True):
                    ds = ray.data.from_arrow(_blocks(image_table(sources, todo), batch_size))
                    with _retry_args():
                        ds = ds.map_batches(decode_batch, fn_kwargs={"spec": self.bundle.preprocess,
                                                                     "fast_decode": fast_decode},
                                            batch_size=batch_size, batch_format="numpy", num_cpus=1,
                                            max_retries=RETRIES, retry_exceptions=True)
                    self._run(self._tower_stage(ds, "vision", batch_size), "images", on_block)
        missing = todo[~back[todo]].tolist()
        if missing:
            raise self._missing("image(s)", missing, lambda i: _label(sources, where, i))
        failed = [item for _, item in sorted(failures, key=lambda pair: pair[0])]  # input order, as local runs list them
        indices = np.flatnonzero(ok).astype(np.int64)
        if failed and on_error == "skip":
            log.warning("skipping %d image(s) that could not be decoded:\n    %s", len(failed), listing(failed))
        out = np.ascontiguousarray(embeds[indices]) if len(indices) else np.zeros((0, 0), dtype=np.float32)
        return ImageEmbeddings(out, indices, failed, cache_hits=len(hits), decode=DECODE)

    # ---- texts --------------------------------------------------------------------------------

    def tokenizer(self) -> TextTokenizer:
        if self._tokenizer is None:
            self._tokenizer = TextTokenizer(self.bundle.path / "tokenizer.json", self.bundle.tokenizer_rule,
                                            self.bundle.context_length)
        return self._tokenizer

    def embed_texts(self, texts: list[str], *, batch_size: int, progress: bool = True,
                    cache: CacheSpace | None = None) -> TextEmbeddings:
        """Embed ``texts`` on the cluster; returns :class:`~clipeval.engine.embed.TextEmbeddings`
        (``embeds`` float32 [T, D] in input order, ``truncated``, ``cache_hits``) as
        :func:`clipeval.engine.embed.embed_texts` does. Texts are tokenised on the driver (cheap;
        it counts the truncated ones) and sorted by length into the batches a local run makes;
        the actors pad and embed them. Raises :class:`ClusterError` when batches keep failing."""
        import pyarrow as pa
        import ray.data

        tokenizer = self.tokenizer()
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
        out = np.zeros((len(texts), self.bundle.embed_dim), dtype=np.float32)
        for i, vec in hits.items():
            out[i] = vec
        back = np.zeros(len(texts), dtype=bool)

        def on_block(block: dict[str, np.ndarray]) -> None:
            index = block["index"]
            out[index] = block["embeds"]
            back[index] = True
            self.providers.update(block["provider"].tolist())
            if cache is not None:
                cache.store([keys[i] for i in index], block["embeds"])
            bar.update(len(index))

        with Progress("texts", len(order), unit="text", enabled=progress, cached=len(hits)) as bar:
            if len(order):
                columns = {"index": order, "ids": [encoded.ids[i] for i in order]}
                with data_context(max_errored_blocks=-1, actor_task_retry_on_errors=True):
                    ds = ray.data.from_arrow(_blocks(columns, batch_size, {"ids": pa.list_(pa.int64())}))
                    self._run(self._tower_stage(ds, "text", batch_size), "texts", on_block)
        missing = order[~back[order]].tolist()
        if missing:
            raise self._missing("text(s)", sorted(missing), lambda i: repr(texts[i][:80]))
        if len(texts) == 0:
            out = np.zeros((0, 0), dtype=np.float32)
        return TextEmbeddings(out, truncated, cache_hits=len(hits))
