"""Stage timing for ``clipeval bench`` (engine only: no torch).

:func:`bench_stages` times each stage of a retrieval evaluation on its own, one after the other,
so no stage competes with another for cores:

* ``decode``: decode + preprocess of every gallery image through the decode pipeline with
  ``num_workers`` workers, threads or processes as ``decode`` says (nothing else runs meanwhile);
* ``vision``: the vision tower over as many images as the gallery has, fed with the batches the
  decode stage produced (up to ``keep_bytes`` of pixels are kept and cycled, so memory stays
  bounded however large the gallery);
* ``text``: the text tower over every caption (padded per batch to its longest caption);
* ``ranking``: both retrieval directions and the metrics.

Each tower is called once on a small batch first, so onnxruntime's first-call setup is not
counted. :func:`run_child` runs a command in a child process and returns its wall time and
peak resident memory (from ``wait4``, per child), which is how end-to-end runs are measured.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from dataclasses import dataclass

import numpy as np

from .datasets.base import RetrievalDataset
from .embedding.stage import embed_texts
from .kernels import SMALL_PAIRS
from .metrics.retrieval import evaluate_retrieval
from .images.pipeline import iter_pixel_batches
from .sessions.model import ModelContext

log = logging.getLogger(__name__)

KEEP_BYTES = 512 << 20


@dataclass
class Stage:
    name: str
    items: int
    seconds: float
    unit: str

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict:
        return {"items": self.items, "seconds": self.seconds, "per_s": self.rate, "unit": self.unit}


def bench_stages(model: ModelContext, dataset: RetrievalDataset, *, batch_size: int, num_workers: int,
                 fast_decode: bool = False, decode: str = "threads", num_threads: int | None = None,
                 keep_bytes: int = KEEP_BYTES) -> dict[str, Stage]:
    """Time decode+preprocess, vision tower, text tower and ranking (see the module docstring)."""
    kept: list[np.ndarray] = []
    kept_bytes = 0
    decoded = 0
    t0 = time.perf_counter()
    for batch in iter_pixel_batches(enumerate(dataset.images), model.preprocessor, batch_size=batch_size,
                                    num_workers=num_workers, on_error="skip", fast_decode=fast_decode,
                                    decode=decode):
        decoded += len(batch)
        if len(batch) and (not kept or kept_bytes + batch.pixels.nbytes <= keep_bytes):
            kept.append(batch.pixels.copy())  # the pipeline may reuse a batch's buffer
            kept_bytes += batch.pixels.nbytes
    stages = {"decode": Stage("decode+preprocess", decoded, time.perf_counter() - t0, "img")}
    if not kept:
        return stages

    model.vision.run({"pixel_values": kept[0][:2]})  # warm-up
    embeds: list[np.ndarray] = []
    done = 0
    t0 = time.perf_counter()
    while done < decoded:
        for pixels in kept:
            take = pixels[: decoded - done]
            embeds.append(model.vision.run({"pixel_values": take}))
            done += len(take)
            if done >= decoded:
                break
    stages["vision"] = Stage("vision tower", decoded, time.perf_counter() - t0, "img")
    image_emb = np.ascontiguousarray(np.concatenate(embeds)[:dataset.num_images], dtype=np.float32)

    embed_texts(model.text, model.tokenizer, dataset.texts[:8], batch_size=8, progress=False)  # warm-up
    t0 = time.perf_counter()
    text_emb = embed_texts(model.text, model.tokenizer, dataset.texts, batch_size=batch_size, progress=False).embeds
    stages["text"] = Stage("text tower", dataset.num_texts, time.perf_counter() - t0, "text")

    if len(image_emb) == dataset.num_images:
        n = min(2, dataset.num_texts)  # warm-up: numba loads (or compiles) its kernels on the first call
        if dataset.num_texts * dataset.num_images > SMALL_PAIRS:  # the size that takes the numba path
            from .kernels.rank import positive_ranks

            positive_ranks(text_emb[:n], image_emb, np.asarray(dataset.text_to_image[:n]), num_threads=num_threads)
        t0 = time.perf_counter()
        evaluate_retrieval(text_emb, image_emb, dataset.text_to_image, None, num_threads=num_threads)
        stages["ranking"] = Stage("ranking", dataset.num_texts * dataset.num_images, time.perf_counter() - t0,
                                  "pair")
    return stages


def _hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class ChildRun:
    wall_s: float
    peak_rss_mb: float
    returncode: int
    stdout: str
    stderr: str


def run_child(argv: list[str], env: dict | None = None, timeout_s: float | None = None) -> ChildRun:
    """Run ``argv`` in a child process; its wall time, its own peak RSS (``wait4``), exit status
    and output. A child still running after ``timeout_s`` is killed."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})
    streams: dict[str, bytes] = {}

    def drain(name, f):
        streams[name] = f.read()

    readers = [threading.Thread(target=drain, args=(n, f), daemon=True)
               for n, f in (("out", proc.stdout), ("err", proc.stderr))]
    for r in readers:
        r.start()
    peak = [0]
    done = threading.Event()

    def watch():  # VmHWM belongs to the child's own address space, so a parent's size never shows
        while not done.wait(0.02):
            peak[0] = max(peak[0], _hwm_kb(proc.pid))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    timer = threading.Timer(timeout_s, proc.kill) if timeout_s else None
    if timer:
        timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        done.set()
        if timer:
            timer.cancel()
    watcher.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    for r in readers:
        r.join()
    wall = time.perf_counter() - t0
    # ru_maxrss counts what a child inherited from its parent's size at fork on Linux, so the
    # sampled VmHWM is used where /proc exists.
    peak_kb = peak[0] or usage.ru_maxrss
    return ChildRun(wall, peak_kb / 1024, proc.returncode,
                    streams.get("out", b"").decode("utf-8", "replace"), streams.get("err", b"").decode("utf-8", "replace"))
