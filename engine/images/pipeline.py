"""The streaming decode pipeline: ``(index, source)`` items in, batches of pixels out.

Two backends decode (``decode=``):

``"threads"`` (the default) runs a pool of threads: Pillow releases the GIL while it decodes and
resizes, and the per-channel table lookup in :class:`~clipeval.engine.images.preprocess.Preprocessor`
is a numpy ``take`` that releases it too, so threads need no copying of pixels between
processes. Only the header parse and the PIL-to-numpy copy hold the GIL (2-5% of an image's
time for 640x480/1024x768 JPEGs), which bounds N threads at ``1 / (s + (1 - s) / N)`` for that
share ``s``: about x1.9 for 2 threads but x9-11 for 16, before the cost of handing the GIL over.

``"processes"`` runs a pool of worker processes that write pixels straight into a
shared-memory ring (:mod:`clipeval.engine.images.decode_procs` explains the design). Nothing
serialises the workers, so it scales to every core; it costs a start-up (a pool is ready in
50-80 ms, plus about 0.35 s for the fork server the first time in a process), pickling each
source to a worker, and shared memory (``/dev/shm``) for the batches in flight.

``benchmarks/bench_decode.py`` measures both against two simpler process-pool designs. On 2
cores a pool that pickles batches back spent 22-57% more CPU per image than inline decoding, a
shared-memory pool 4-16% more, threads 4-15% more. On a 16-core Xeon (the GPU machine of
docs/speed.md; 640x480 and 1024x768 JPEGs, batch 32) 16 threads decoded 912 img/s exact and
1,026 img/s with draft decoding, this backend 969 and 1,820 img/s, one core 78 and 135; at 4 and
8 workers threads were as fast. ``decode="auto"`` (:func:`resolve_decode`) picks processes from 12
workers on.

Batches come out in input order. With threads each item is one task that writes its pixels
straight into its batch's buffer. At most :func:`batches_ahead` batches besides the one the
consumer holds (``prefetch_batches`` plus enough for two items per worker) are pulled from the
input and held, however long the input is, so the consumer can run inference on one batch while
the next ones decode, and memory does not grow with ``batch_size x num_workers``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Iterable, Iterator

import numpy as np

from ..errors import ConfigError, ImageError
from .load import ImageSource, load_image
from .preprocess import Preprocessor

log = logging.getLogger(__name__)

ON_ERROR = ("fail", "skip")
DECODE = ("threads", "processes")


@dataclass
class Batch:
    """Decoded images of one batch, in input order.

    ``indices`` (int64 [b]) are the items that decoded, ``pixels`` (float32 [b, 3, H, W]) their
    pixels; ``failures`` lists ``(index, source, reason)`` of the items that did not (only with
    ``on_error="skip"``).

    With ``decode="processes"`` ``pixels`` may be a view into shared memory that the next batch
    is decoded into: it is valid until the consumer asks for the next batch. Copy it
    (``np.array(batch.pixels)``) to keep it longer.
    """

    indices: np.ndarray
    pixels: np.ndarray
    failures: list[tuple[int, Any, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.indices)


class _Pending:
    """A batch being decoded: its items, the shared output buffer and one result per item."""

    __slots__ = ("items", "pixels", "results")

    def __init__(self, items: list[tuple[int, Any]], shape: tuple[int, int]):
        self.items = items
        self.pixels = np.empty((len(items), 3, *shape), dtype=np.float32)
        self.results: list[Future | ImageError | None] = []

    def finish(self, on_error: str) -> Batch:
        errors = (result.result() if isinstance(result, Future) else result for result in self.results)
        return collect(self.items, errors, self.pixels, on_error)

    def cancel(self) -> None:
        for result in self.results:
            if isinstance(result, Future):
                result.cancel()


def collect(items: list[tuple[int, Any]], errors: Iterable[ImageError | None], pixels: np.ndarray,
            on_error: str) -> Batch:
    """The :class:`Batch` of ``items`` whose pixels were written to ``pixels`` (one row each);
    ``errors`` gives, in item order, None or the item's :class:`ImageError`. It is consumed
    lazily, so with ``on_error="fail"`` the first error raises before later items are waited for.
    Nothing is logged: with ``on_error="skip"`` the failures are the caller's to report.
    """
    ok = []
    failures = []
    for slot, ((index, source), error) in enumerate(zip(items, errors)):
        if error is None:
            ok.append(slot)
        elif on_error == "fail":
            raise ImageError(f"image #{index}: {error.message}", error.remedy)
        else:
            failures.append((index, source, error.message))
    indices = np.array([items[s][0] for s in ok], dtype=np.int64)
    pixels = pixels if len(ok) == len(items) else pixels[ok]
    return Batch(indices=indices, pixels=pixels, failures=failures)


def _decode_into(source: ImageSource, preprocessor: Preprocessor, out: np.ndarray, draft) -> ImageError | None:
    """Decode one image into ``out``; the error when it is unreadable, else None."""
    try:
        preprocessor(load_image(source, fast_decode_size=draft), out=out)
    except ImageError as exc:
        return exc.with_traceback(None)
    return None


def _check(batch_size: int, num_workers: int, prefetch_batches: int, on_error: str, decode: str = "threads") -> None:
    for name, value, low in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0),
                             ("prefetch_batches", prefetch_batches, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low} (got {value!r})", f"set {name} to {low} or more")
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR)} (got {on_error!r})")
    if not isinstance(decode, str) or decode not in DECODE:
        raise ConfigError(
            f"decode must be one of {', '.join(DECODE)} (got {decode!r})",
            "use decode='threads' (a pool of threads; the default) or decode='processes' "
            "(worker processes writing into shared memory; scales to more cores)",
        )


def iter_pixel_batches(
    items: Iterable[tuple[int, ImageSource]],
    preprocessor: Preprocessor,
    *,
    batch_size: int,
    num_workers: int,
    prefetch_batches: int = 2,
    on_error: str = "fail",
    fast_decode: bool = False,
    decode: str = "threads",
) -> Iterator[Batch]:
    """Decode and preprocess ``items`` (an iterable of ``(index, source)``) into :class:`Batch` es.

    Batches hold up to ``batch_size`` items each, in input order. ``num_workers`` threads
    (``decode="threads"``) or worker processes (``decode="processes"``) decode; 0 decodes inline,
    in the consumer's thread, whatever ``decode`` says. ``on_error="fail"`` raises
    :class:`ImageError` at the first unreadable image in input order (after the batches before
    it were yielded); ``"skip"`` leaves it out and reports it in ``Batch.failures``.
    ``fast_decode`` decodes JPEGs with DCT scaling (see :func:`load_image`).

    With ``decode="processes"`` the sources are pickled to the workers (paths and bytes are
    cheap; a PIL image is sent decoded), the workers start from a fork server (so a script that
    uses it needs the usual ``if __name__ == "__main__":`` guard), and ``Batch.pixels`` is valid
    only until the next batch is requested (see :class:`Batch`).

    Closing the generator (``break`` out of the loop) cancels pending work and joins the
    threads or processes (and frees the shared memory).
    """
    _check(batch_size, num_workers, prefetch_batches, on_error, decode)
    draft = preprocessor.spec.draft_size if fast_decode else None
    shape = preprocessor.output_size
    if decode == "processes" and num_workers > 0:
        from .decode_procs import iterate_processes

        return iterate_processes(iter(items), preprocessor, batch_size=batch_size, num_workers=num_workers,
                                 prefetch_batches=prefetch_batches, on_error=on_error, draft=draft)
    return _iterate(iter(items), preprocessor, batch_size, num_workers, prefetch_batches, on_error, draft, shape)


def batches_ahead(batch_size: int, num_workers: int, prefetch_batches: int) -> int:
    """How many batches are decoding (or decoded, waiting) while the consumer holds one:
    ``prefetch_batches`` plus as many as hold two items per worker, so every worker has work
    queued without large batches multiplying memory (16 workers at batch 256 hold 3 batches,
    not 18)."""
    return prefetch_batches + max(1, math.ceil(2 * num_workers / batch_size))


def _iterate(items, preprocessor, batch_size, num_workers, prefetch_batches, on_error, draft, shape) -> Iterator[Batch]:
    if num_workers == 0:
        while chunk := list(islice(items, batch_size)):
            pending = _Pending(chunk, shape)
            pending.results = [_decode_into(src, preprocessor, pending.pixels[i], draft) for i, (_, src) in enumerate(chunk)]
            yield pending.finish(on_error)
        return

    ahead = batches_ahead(batch_size, num_workers, prefetch_batches)
    queue: deque[_Pending] = deque()
    pool = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="clipeval-decode")
    exhausted = False
    try:
        while True:
            while not exhausted and len(queue) < ahead:
                chunk = list(islice(items, batch_size))
                if not chunk:
                    exhausted = True
                    break
                pending = _Pending(chunk, shape)
                pending.results = [
                    pool.submit(_decode_into, src, preprocessor, pending.pixels[i], draft)
                    for i, (_, src) in enumerate(chunk)
                ]
                queue.append(pending)
            if not queue:
                return
            head = queue.popleft()
            try:
                batch = head.finish(on_error)
            except BaseException:
                head.cancel()
                raise
            yield batch
    finally:
        for pending in queue:
            pending.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


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
        from .decode_procs import ring_bytes, shm_free_bytes

        need = ring_bytes(batch_size, num_workers, prefetch_batches, pixel_shape)
        free = shm_free_bytes()
        if free is not None and need > free:
            log.info("decoding in threads: process decoding needs %d MiB of shared memory, /dev/shm has %d MiB "
                     "free (give the container more with --shm-size, or lower the batch size)",
                     need >> 20, free >> 20)
            return "threads"
    return "processes"
