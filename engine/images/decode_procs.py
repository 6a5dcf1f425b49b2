"""The ``decode="processes"`` backend of :func:`~clipeval.engine.images.pipeline.iter_pixel_batches`:
worker processes that decode straight into a shared-memory ring.

Why: threads share one interpreter, and the header parse and the PIL-to-numpy copy of every
image hold its lock (2-5% of an image's time). That is nothing on 2 cores but bounds 16 threads
at x9-11, less once handing the lock over between many threads is counted. Processes hold no
common lock, so decoding scales to every core.

Design:

* **Start method: forkserver** (``spawn`` where there is none). Forking the consumer would copy
  whatever it runs (onnxruntime, CUDA and numba thread pools, whose locks a forked child can
  inherit held); the fork server is a fresh interpreter that has imported only numpy, Pillow and
  (where that is safe, see ``PRELOAD_OWN``) the decode modules (``set_forkserver_preload``),
  and each worker is a fork of it, so a pool delivers its first batch 57-72 ms after it is
  asked for once the server runs (its first start, once per process, costs an interpreter
  start-up and those imports: 0.22 s on a 2-core VM, 0.47 s on a 16-core Xeon; :func:`prestart`
  starts it early). As with ``spawn``, each worker also imports the consumer's
  ``__main__`` script (which must be guarded by ``if __name__ == "__main__":``). Each worker
  rebuilds the :class:`~clipeval.engine.images.preprocess.Preprocessor` from ``spec.to_dict()``
  (same arithmetic, so bit-identical pixels) and maps the ring.
* **One shared-memory ring** of ``ahead + 1`` batch slots, each ``batch_size x 3 x H x W``
  float32, ``ahead`` being :func:`~clipeval.engine.images.pipeline.batches_ahead` (``prefetch_batches``
  plus enough batches for two items per worker): ``ahead`` batches decode while the consumer
  holds the one it was given. Workers write each image's pixels into its row of the
  slot, so no pixels cross a pipe; the slot is handed to the next batch only when the consumer
  asks for the next batch, which is why ``Batch.pixels`` (a view into the slot) is valid until
  then. Pages are touched only as slots fill, and the space free in ``/dev/shm`` is checked
  first (containers often give it 64 MB), failing with a :class:`ConfigError` that says what
  to change rather than a worker dying of ``SIGBUS`` halfway.
* **Work goes in chunks** of up to 8 consecutive items of one batch (``ceil(batch_size /
  num_workers)`` when smaller, so one batch still spreads over every worker): one pickled task
  and one reply per chunk keeps the per-image IPC small. Sources travel pickled (paths and
  bytes as they are; a PIL image travels decoded). A reply holds, per item, None or the
  ``(message, remedy)`` of its :class:`ImageError`; the consumer's side turns those into the
  same failures as the thread backend (``on_error="fail"`` raises at the first bad image in
  input order after the earlier batches were yielded; ``"skip"`` reports it in
  ``Batch.failures``).
* **Clean-up**: closing the generator (``break``), an error, or a worker crash cancels pending
  work, shuts the pool down and unlinks the segment (its name, ``clipeval_<pid>_<hex>``, leaves
  ``/dev/shm`` at once). The mapping itself is closed when the last view of it dies, so pixels
  the consumer still holds never point at unmapped memory. A worker that dies (a decoder crash,
  the out-of-memory killer) raises an :class:`ImageError` naming the batch it was on.

When each backend is better (``benchmarks/bench_decode.py --workers ... --rates-only``):
**threads** on up to about 8 cores, where they matched or beat processes, for short runs (no
start-up), for sources that are costly to pickle (large in-memory bytes, PIL images), where
``/dev/shm`` is small, and where the consumer keeps ``Batch.pixels`` across batches.
**Processes** on more cores when decoding is the bottleneck: on a 16-core Xeon with 16 workers
they decoded 969 img/s exact and 1,820 with draft decoding against 912 and 1,026 for threads
(``--n 512 --workers 16 --repeats 1``), and a first run's decode stage 1,048 against 956 img/s.
"""

from __future__ import annotations

import math
import multiprocessing
import multiprocessing.forkserver
import os
import secrets
import signal
import sys
import threading
import weakref
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from multiprocessing import shared_memory
from typing import Any, Iterator

import numpy as np
from PIL import Image

from ..errors import ConfigError, ImageError
from .load import load_image
from .pipeline import Batch, batches_ahead, collect
from .preprocess import PreprocessSpec, Preprocessor

# Imported once by the fork server, so that workers (forks of it) start with them loaded.
PRELOAD = (
    "numpy",
    "PIL.Image",
    "PIL.JpegImagePlugin",
    "PIL.PngImagePlugin",
    "concurrent.futures.process",
    "multiprocessing.shared_memory",
)
# Before Python 3.12.8 / 3.13.1 the fork server imported its preload list with its own sys.path
# (its working directory first, not the consumer's path), so a source checkout's clipeval/
# (which has no engine/) or another installed version could be loaded there and inherited by
# every worker. There the workers import clipeval themselves, with the consumer's sys.path
# (about 15 ms each).
_SERVER_GETS_SYS_PATH = sys.version_info >= (3, 13, 1) or (3, 12, 8) <= sys.version_info < (3, 13)
PRELOAD_OWN = ("clipeval.engine.images.decode_procs",) if _SERVER_GETS_SYS_PATH else ()
MAX_CHUNK = 8
SEGMENT_PREFIX = "clipeval_"  # + "<pid>_<8 hex>"; short enough for macOS's 31-character limit
_SHM_DIR = "/dev/shm"


def segment_prefix(pid: int | None = None) -> str:
    """The name prefix of the shared-memory segments made by process ``pid`` (default: this one)."""
    return f"{SEGMENT_PREFIX}{os.getpid() if pid is None else pid}_"


def mp_context() -> multiprocessing.context.BaseContext:
    """The start method the workers use: a fork server preloaded with the decode modules."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD + PRELOAD_OWN))  # used when the server starts
    return ctx


def prestart() -> threading.Thread | None:
    """Start the fork server in a background thread, so that a pool made later (after the model
    sessions load, say) gets its workers without waiting for it; returns the thread (None where
    there is no fork server). Harmless when the server already runs."""
    ctx = mp_context()
    if ctx.get_start_method() != "forkserver":
        return None
    thread = threading.Thread(target=multiprocessing.forkserver.ensure_running, name="clipeval-forkserver",
                              daemon=True)
    thread.start()
    return thread


# --- worker side ------------------------------------------------------------------------------

_worker: tuple[Preprocessor, np.ndarray, shared_memory.SharedMemory] | None = None


class _Refused(tuple):
    """Stands in for a source that cannot be sent to a worker: carries its ``(message, remedy)``."""

    __slots__ = ()


def _attach(name: str) -> shared_memory.SharedMemory:
    try:  # Python 3.13+: the creating process alone tracks (and unlinks) the segment
        return shared_memory.SharedMemory(name=name, track=False)
    except TypeError:
        return shared_memory.SharedMemory(name=name)


def _init_worker(spec: dict, segment: str, shape: tuple[int, ...]) -> None:
    global _worker
    # Ctrl-C reaches the whole process group; the consumer handles it and shuts the pool down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    shm = _attach(segment)
    ring = np.ndarray(shape, dtype=np.float32, buffer=shm.buf)
    _worker = (Preprocessor(PreprocessSpec.from_dict(spec)), ring, shm)


def _decode_chunk(slot: int, start: int, sources: list, draft) -> list[tuple[str, str | None] | None]:
    """Decode ``sources`` into rows ``start...`` of ring slot ``slot``; per item None or the
    ``(message, remedy)`` of its :class:`ImageError`."""
    preprocessor, ring, _ = _worker
    out: list[tuple[str, str | None] | None] = []
    for row, source in enumerate(sources, start):
        if isinstance(source, _Refused):
            out.append(tuple(source))
            continue
        try:
            preprocessor(load_image(source, fast_decode_size=draft), out=ring[slot, row])
        except ImageError as exc:
            out.append((exc.message, exc.remedy))
        else:
            out.append(None)
    return out


# --- consumer side ----------------------------------------------------------------------------


def _portable(source: Any) -> Any:
    """``source`` in a form that pickles to a worker and reads the same there."""
    if isinstance(source, (str, bytes, bytearray, Image.Image)):
        return source
    if isinstance(source, memoryview):
        return bytes(source)
    if isinstance(source, os.PathLike):
        return os.fspath(source)
    try:  # not an image source: the worker reports what load_image says about it
        load_image(source)
    except ImageError as exc:
        return _Refused((exc.message, exc.remedy))
    return source


class _Ring:
    """The shared-memory block of ``slots`` batch buffers, ``array[slot]`` float32 [b, 3, H, W]."""

    def __init__(self, slots: int, batch_size: int, shape: tuple[int, int]):
        self.shape = (slots, batch_size, 3, *shape)
        nbytes = math.prod(self.shape) * 4
        _check_space(nbytes, slots, batch_size)
        self.shm = shared_memory.SharedMemory(name=segment_prefix() + secrets.token_hex(4), create=True, size=nbytes)
        self.name = self.shm.name
        self.array: np.ndarray | None = np.ndarray(self.shape, dtype=np.float32, buffer=self.shm.buf)
        # Views of ``array`` (Batch.pixels) keep it alive (numpy makes it their base); unmap only
        # when the last one is gone.
        weakref.finalize(self.array, _close, self.shm)

    def release(self) -> None:
        """Remove the segment's name now; the memory goes when no view of it remains."""
        try:
            self.shm.unlink()
        except FileNotFoundError:
            pass
        self.array = None


def _close(shm: shared_memory.SharedMemory) -> None:
    try:
        shm.close()
    except BufferError:  # a buffer export is still open; the mapping goes with its last reference
        pass


def ring_slots(batch_size: int, num_workers: int, prefetch_batches: int) -> int:
    """Batch slots in the ring: the batches decoding ahead plus the one the consumer holds."""
    return batches_ahead(batch_size, num_workers, prefetch_batches) + 1


def ring_bytes(batch_size: int, num_workers: int, prefetch_batches: int, shape: tuple[int, int]) -> int:
    """Bytes of shared memory the ring takes for these settings and output ``shape`` (H, W)."""
    return ring_slots(batch_size, num_workers, prefetch_batches) * batch_size * 3 * shape[0] * shape[1] * 4


def shm_free_bytes() -> int | None:
    """Free bytes in ``/dev/shm``; None where that cannot be read (no such folder)."""
    try:
        st = os.statvfs(_SHM_DIR)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def _check_space(nbytes: int, slots: int, batch_size: int) -> None:
    free = shm_free_bytes()
    if free is None:
        return
    if nbytes > free:
        raise ConfigError(
            f"decode='processes' needs {nbytes / 2**20:.0f} MiB of shared memory ({slots} batches of "
            f"{batch_size} images) but {_SHM_DIR} has {free / 2**20:.0f} MiB free",
            "lower batch_size, num_workers or prefetch_batches, give the container more shared memory "
            "(docker run --shm-size=...), or use decode='threads'",
        )


class _Pending:
    """A batch being decoded: its items, its ring slot and one future per chunk."""

    __slots__ = ("items", "slot", "chunks")

    def __init__(self, items: list[tuple[int, Any]], slot: int):
        self.items = items
        self.slot = slot
        self.chunks: list[Future] = []

    def errors(self) -> Iterator[ImageError | None]:
        for future in self.chunks:
            for entry in future.result():
                yield None if entry is None else ImageError(*entry)

    def cancel(self) -> None:
        for future in self.chunks:
            future.cancel()


def _crashed(exc: BaseException, pending: _Pending | None) -> ImageError:
    where = ""
    if pending is not None:
        first, last = pending.items[0][0], pending.items[-1][0]
        where = f" while images #{first}..#{last} were being decoded"
    return ImageError(
        f"a decode worker process stopped unexpectedly{where} ({exc})",
        "an image decoder crashing, or the system killing the process (out of memory), stops a worker; "
        "rerun with decode='threads' to find the image, or lower num_workers or batch_size",
    )


def iterate_processes(items: Iterator[tuple[int, Any]], preprocessor: Preprocessor, *, batch_size: int,
                      num_workers: int, prefetch_batches: int, on_error: str, draft) -> Iterator[Batch]:
    """Batches of ``items`` decoded by ``num_workers`` processes (see the module docstring).

    Arguments are checked by :func:`~clipeval.engine.images.pipeline.iter_pixel_batches`, which calls
    this; nothing starts until the first batch is asked for.
    """
    slots = ring_slots(batch_size, num_workers, prefetch_batches)
    ahead = slots - 1
    chunk = max(1, min(MAX_CHUNK, math.ceil(batch_size / num_workers)))
    ring = _Ring(slots, batch_size, preprocessor.output_size)
    free = deque(range(slots))
    queue: deque[_Pending] = deque()
    pool: ProcessPoolExecutor | None = None
    exhausted = False

    def fill() -> None:
        nonlocal exhausted
        while not exhausted and len(queue) < ahead:
            batch_items = list(islice(items, batch_size))
            if not batch_items:
                exhausted = True
                return
            pending = _Pending(batch_items, free.popleft())
            queue.append(pending)
            for start in range(0, len(batch_items), chunk):
                sources = [_portable(source) for _, source in batch_items[start : start + chunk]]
                pending.chunks.append(pool.submit(_decode_chunk, pending.slot, start, sources, draft))

    try:
        pool = ProcessPoolExecutor(
            max_workers=num_workers, mp_context=mp_context(), initializer=_init_worker,
            initargs=(preprocessor.spec.to_dict(), ring.name, ring.shape),
        )
        while True:
            head = None
            try:
                fill()
                if not queue:
                    return
                head = queue.popleft()
                try:
                    fill()  # keep the workers busy while the consumer holds this batch
                    batch = collect(head.items, head.errors(), ring.array[head.slot, : len(head.items)], on_error)
                except BaseException:
                    head.cancel()
                    raise
            except BrokenProcessPool as exc:
                raise _crashed(exc, head or (queue[0] if queue else None)) from exc
            yield batch
            del batch
            free.append(head.slot)
    finally:
        for pending in queue:
            pending.cancel()
        try:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        finally:
            ring.release()
