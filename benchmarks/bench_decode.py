"""Decode + preprocess throughput: sequential, threads, processes; with and without JPEG draft.

Writes N photo-like JPEGs (640x480 and 1024x768, quality 90) to a temporary directory and
measures images/s and CPU ms/image, at each worker count of ``--workers``, through
``iter_pixel_batches`` with threads and with its process backend (``decode="processes"``),
and through two plain process-pool designs (arrays pickled back; shared memory), against
inline decoding. CPU time counts this process, its finished children and its live
descendants (the process backend's workers are children of the fork server; read from /proc).
Each row decodes the first ``min(N, --per-worker x workers)`` images (the same mix of sizes),
so a row takes about as long at every worker count. The two plain designs start their workers
before the clock starts; the ``iter_pixel_batches`` rows are timed over the generator's whole
life, the process backend's start-up and shut-down included (measured on their own on the
"start-up" line).

Then (unless ``--rates-only``) the sequential time per stage, and how far DCT-scaled decoding
(``Image.draft``) moves the pixels: the max absolute difference per image of the
resized+cropped 8-bit image (0-255 scale, before normalising), median and worst over images,
and the mean absolute difference (both over the first ``--detail-n`` images).

    python benchmarks/bench_decode.py [--n 200] [--batch 32] [--repeats 3] [--workers 1,2]
                                      [--per-worker 96] [--rates-only] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing as mp
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from itertools import islice
from multiprocessing import shared_memory

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from clipeval.engine.images.load import load_image
from clipeval.engine.images.pipeline import iter_pixel_batches
from clipeval.engine.images.preprocess import PreprocessSpec, Preprocessor

CLIP_LIKE = {
    "do_convert_rgb": True, "do_resize": True, "size": {"shortest_edge": 224}, "resample": "bicubic",
    "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
    "do_rescale": True, "rescale_factor": 1 / 255,
    "do_normalize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}
SIZES = ((640, 480), (1024, 768))


def photo_like(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """Smooth colour gradients, a few blurred shapes, fine noise: compresses like a photo."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.empty((h, w, 3), np.float32)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.5, 3, 2).tolist() + [rng.uniform(0, 6.28)]
        base[..., c] = 128 + 90 * np.sin(fx * x / w * 3.14 + ph) * np.cos(fy * y / h * 3.14)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        x1, y1 = x0 + rng.integers(10, w // 3), y0 + rng.integers(10, h // 3)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(1.5))
    noisy = np.asarray(img).astype(np.float32)
    noisy += rng.standard_normal((h, w, 3), dtype=np.float32) * 6
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _write_one(folder: str, i: int) -> str:
    w, h = SIZES[i % len(SIZES)]
    path = os.path.join(folder, f"{i:05d}_{w}x{h}.jpg")
    photo_like(w, h, np.random.default_rng([0, i])).save(path, quality=90)
    return path


def write_jpegs(folder: str, n: int) -> list[str]:
    """``n`` images, written by a process per core (image i depends on i alone)."""
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None)
    with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=ctx) as pool:
        return list(pool.map(partial(_write_one, folder), range(n), chunksize=8))


# --- process-pool variants (what the pipeline does not use; measured for the choice) -------

_PP: Preprocessor | None = None
_SHM: shared_memory.SharedMemory | None = None


def _init(spec: dict, shm_name: str | None) -> None:
    global _PP, _SHM
    _PP = Preprocessor(PreprocessSpec.from_dict(spec))
    if shm_name:
        _SHM = shared_memory.SharedMemory(name=shm_name)


def _decode_chunk_pickled(paths: list[str], draft) -> np.ndarray:
    H, W = _PP.output_size
    out = np.empty((len(paths), 3, H, W), np.float32)
    for i, p in enumerate(paths):
        _PP(load_image(p, fast_decode_size=draft), out=out[i])
    return out


def _decode_chunk_shm(slot: int, batch: int, paths: list[str], draft) -> int:
    H, W = _PP.output_size
    slots = _SHM.size // (batch * 3 * H * W * 4)
    ring = np.ndarray((slots, batch, 3, H, W), np.float32, buffer=_SHM.buf)
    for i, p in enumerate(paths):
        _PP(load_image(p, fast_decode_size=draft), out=ring[slot, i])
    return slot


def run_processes(paths, spec, batch, workers, draft, shm: bool) -> tuple[float, float]:
    pp = Preprocessor(spec)
    H, W = pp.output_size
    chunks = [paths[i : i + batch] for i in range(0, len(paths), batch)]
    slots = 2 * workers + 2
    c0 = cpu_seconds()
    block = shared_memory.SharedMemory(create=True, size=slots * batch * 3 * H * W * 4) if shm else None
    ctx = mp.get_context("fork")
    try:
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init,
                                 initargs=(spec.to_dict(), block.name if block else None)) as pool:
            # start the workers so start-up is not counted
            list(pool.map(int, range(workers)))
            t0 = time.perf_counter()
            total = 0.0
            if shm:
                ring = np.ndarray((slots, batch, 3, H, W), np.float32, buffer=block.buf)
                futures = []
                for k, chunk in enumerate(chunks):
                    futures.append(pool.submit(_decode_chunk_shm, k % slots, batch, chunk, draft))
                    if len(futures) >= slots - 1:
                        slot = futures.pop(0).result()
                        total += float(ring[slot, 0, 0, 0, 0])  # consume
                for f in futures:
                    slot = f.result()
                    total += float(ring[slot, 0, 0, 0, 0])
                del ring
            else:
                for arr in pool.map(_decode_chunk_pickled, chunks, [draft] * len(chunks)):
                    total += float(arr[0, 0, 0, 0])
            rate = len(paths) / (time.perf_counter() - t0)
    finally:
        if block is not None:
            block.close()
            block.unlink()
    return rate, cpu_seconds() - c0


def run_pipeline(paths, pp, batch, workers, fast, decode="threads") -> tuple[float, float]:
    """Rate over the generator's whole life (pool start-up and shut-down included); CPU up to
    the last batch, while any worker processes are still alive to be counted."""
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    gen = iter_pixel_batches(enumerate(paths), pp, batch_size=batch, num_workers=workers, fast_decode=fast,
                             decode=decode)
    n = 0
    for b in islice(gen, math.ceil(len(paths) / batch)):
        n += len(b)
    cpu = cpu_seconds() - c0
    gen.close()
    rate = n / (time.perf_counter() - t0)
    assert n == len(paths)
    return rate, cpu


def _descendants_cpu() -> float:
    """CPU seconds of the live descendants of this process (Linux /proc; 0 elsewhere)."""
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return 0.0
    children: dict[int, list[tuple[int, float]]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append((int(entry), (int(fields[11]) + int(fields[12])) / tick))
    total, todo = 0.0, [os.getpid()]
    while todo:
        for pid, cpu in children.get(todo.pop(), ()):
            total += cpu
            todo.append(pid)
    return total


def cpu_seconds() -> float:
    """CPU seconds of this process, its reaped children and its live descendants."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime + _descendants_cpu()


def engine_startup(path: str, pp: Preprocessor, workers: list[int]) -> dict[str, float]:
    """ms: the fork server's first start (one image, one worker, the whole run), then per worker
    count the time to the first batch (a batch of one image per worker) and to shut down."""
    out = {}
    t0 = time.perf_counter()
    for _ in iter_pixel_batches([(0, path)], pp, batch_size=1, num_workers=1, decode="processes"):
        pass
    out["first run incl. fork server start"] = (time.perf_counter() - t0) * 1000
    for w in workers:
        t0 = time.perf_counter()
        gen = iter_pixel_batches([(i, path) for i in range(w)], pp, batch_size=w, num_workers=w, decode="processes")
        next(gen)
        t1 = time.perf_counter()
        gen.close()
        out[f"{w} workers: first batch"] = (t1 - t0) * 1000
        out[f"{w} workers: shut down"] = (time.perf_counter() - t1) * 1000
    return out


def draft_deviation(paths, pp: Preprocessor) -> dict[int, tuple[list[float], list[float]]]:
    """Per image size: (max abs diff per image, mean abs diff per image) of the 8-bit crop."""
    out: dict[int, tuple[list[float], list[float]]] = {}
    H, W = pp.output_size
    for p in paths:
        crops = []
        for draft in (None, pp.spec.draft_size):
            img = pp.resize(load_image(p, fast_decode_size=draft))
            a = np.asarray(img).astype(np.int16)
            top, left = (a.shape[0] - H) // 2, (a.shape[1] - W) // 2
            crops.append(a[top : top + H, left : left + W])
        d = np.abs(crops[0] - crops[1])
        w = Image.open(p).size[0]
        mx, mean = out.setdefault(w, ([], []))
        mx.append(float(d.max()))
        mean.append(float(d.mean()))
    return out


def stage_breakdown(paths, pp: Preprocessor, draft) -> dict[str, float]:
    """Sequential ms/img per stage; the stages marked (GIL) hold the interpreter lock."""
    t = dict.fromkeys(["read file", "parse header (GIL)", "decode", "resize", "to numpy (GIL)", "lookup"], 0.0)
    out = np.empty((3, *pp.output_size), np.float32)
    H, W = pp.output_size
    for p in paths:
        t0 = time.perf_counter()
        with open(p, "rb") as f:
            data = f.read()
        t1 = time.perf_counter()
        img = Image.open(io.BytesIO(data))
        if draft:
            img.draft("RGB", draft)
        t2 = time.perf_counter()
        img.load()
        t3 = time.perf_counter()
        img = pp.resize(img)
        t4 = time.perf_counter()
        arr = np.asarray(img)
        t5 = time.perf_counter()
        top, left = (arr.shape[0] - H) // 2, (arr.shape[1] - W) // 2
        for c in range(3):
            np.take(pp._lut[c], arr[top : top + H, left : left + W, c], out=out[c])
        t6 = time.perf_counter()
        for key, dt in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
            t[key] += dt * 1000 / len(paths)
    return t


def _count(n: int, per_worker: int, workers: int) -> int:
    return n if per_worker <= 0 else min(n, per_worker * max(1, workers))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs per row")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    ap.add_argument("--per-worker", type=int, default=96,
                    help="a row decodes min(n, this x workers) images (0: all n in every row)")
    ap.add_argument("--detail-n", type=int, default=128, help="images for the stage and draft-deviation parts")
    ap.add_argument("--rates-only", action="store_true", help="skip the stage breakdown and draft deviation")
    ap.add_argument("--json", metavar="PATH", help="also write the rows (name, img/s, CPU ms/img, ...) as JSON")
    args = ap.parse_args()
    started = time.perf_counter()
    try:
        workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        ap.error(f"--workers must be comma-separated integers (got {args.workers!r})")
    if not workers or min(workers) < 1:
        ap.error("--workers needs counts of 1 or more")
    spec = PreprocessSpec.from_dict(CLIP_LIKE)
    pp = Preprocessor(spec)
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"cpus: {os.cpu_count()}  images: {args.n} (half 640x480, half 1024x768, q90)  batch: {args.batch}  "
          f"workers: {','.join(map(str, workers))}")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        paths = write_jpegs(tmp, args.n)
        print(f"wrote the images in {time.perf_counter() - t0:.1f} s")
        for p in paths[:4]:  # warm the page cache
            load_image(p)
        startup = engine_startup(paths[0], pp, workers)
        print("engine processes start-up, ms: " + ", ".join(f"{k} {v:.0f}" for k, v in startup.items()))
        cases = []  # (name, design, mode, workers, images, fn)
        for fast in (False, True):
            tag = "draft" if fast else "exact"
            draft = spec.draft_size if fast else None
            k = _count(args.n, args.per_worker, 1)
            cases.append((f"{'sequential (inline)':25s}{tag}", "sequential", tag, 0, k,
                          partial(run_pipeline, paths[:k], pp, args.batch, 0, fast)))
            for w in workers:
                k = _count(args.n, args.per_worker, w)
                cases += [
                    (f"{f'threads {w}':25s}{tag}", "threads", tag, w, k,
                     partial(run_pipeline, paths[:k], pp, args.batch, w, fast)),
                    (f"{f'processes {w}, pickled':25s}{tag}", "processes-pickled", tag, w, k,
                     partial(run_processes, paths[:k], spec, args.batch, w, draft, False)),
                    (f"{f'processes {w}, shared mem':25s}{tag}", "processes-shm", tag, w, k,
                     partial(run_processes, paths[:k], spec, args.batch, w, draft, True)),
                    (f"{f'engine processes {w}':25s}{tag}", "engine-processes", tag, w, k,
                     partial(run_pipeline, paths[:k], pp, args.batch, w, fast, "processes")),
                ]
        best = [0.0] * len(cases)
        cpu = [float("inf")] * len(cases)
        errors: dict[int, str] = {}
        t0 = time.perf_counter()
        for _ in range(args.repeats):  # round robin, so every case sees the same machine load
            for k, case in enumerate(cases):
                if k in errors:
                    continue
                try:
                    rate, seconds = case[-1]()
                except Exception as exc:  # e.g. too little /dev/shm: report the row, go on
                    errors[k] = f"{type(exc).__name__}: {exc}".splitlines()[0]
                    best[k], cpu[k] = float("nan"), float("nan")
                    continue
                best[k] = max(best[k], rate)
                cpu[k] = min(cpu[k], seconds / case[4] * 1000)
        elapsed = time.perf_counter() - t0
        base = best[0]
        print(f"{'':34s}{'img/s':>8s}  {'x sequential exact':>18s}  {'CPU ms/img':>10s}  {'images':>6s}"
              f"   (best of {args.repeats}; {elapsed:.0f} s)")
        rows = []
        for k, ((name, design, mode, w, n, _), rate, ms) in enumerate(zip(cases, best, cpu)):
            note = f"  failed: {errors[k]}" if k in errors else ""
            print(f"{name:34s}{rate:8.1f}  {rate / base:18.2f}  {ms:10.2f}  {n:6d}{note}")
            rows.append({"name": " ".join(name.split()), "design": design, "mode": mode, "workers": w, "images": n,
                         "img_per_s": None if math.isnan(rate) else round(rate, 2),
                         "cpu_ms_per_img": None if math.isnan(ms) else round(ms, 3),
                         "x_sequential": None if math.isnan(rate) else round(rate / base, 3),
                         "startup_timed": design != "processes-pickled" and design != "processes-shm",
                         **({"error": errors[k]} if k in errors else {})})
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        if args.json:
            report = {"cpus": os.cpu_count(), "images": args.n, "batch": args.batch, "repeats": args.repeats,
                      "per_worker": args.per_worker, "workers": workers,
                      "engine_startup_ms": {k: round(v, 1) for k, v in startup.items()}, "rows": rows}
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(report, f, indent=1)
            print(f"wrote {args.json}")
        if args.rates_only:
            print(f"done in {time.perf_counter() - started:.0f} s")
            return
        detail = paths[: max(1, args.detail_n)]
        print(f"\nsequential stages, ms/img over {len(detail)} images (only the (GIL) ones serialise threads):")
        for draft in (None, spec.draft_size):
            stages = stage_breakdown(detail, pp, draft)
            total = sum(stages.values())
            gil = sum(v for k, v in stages.items() if "GIL" in k)
            parts = ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
            bounds = ", ".join(f"{w} threads x{1 / (gil / total + (1 - gil / total) / w):.2f}"
                               for w in sorted(set(workers) | {2}) if w > 1)
            print(f"  {'draft' if draft else 'exact'}: {parts}; total {total:.2f}, GIL-held {gil:.2f} "
                  f"({gil / total:.0%}) -> Amdahl bound for {bounds}")
        print(f"\ndraft deviation over {len(detail)} images (resized + cropped 8-bit pixels, 0-255 scale, "
              "before normalising):")
        for w, (mx, mean) in sorted(draft_deviation(detail, pp).items()):
            h = dict(SIZES)[w]
            print(f"  {w}x{h}: max|diff| per image median {np.median(mx):.0f}, worst {max(mx):.0f}; "
                  f"mean|diff| {np.mean(mean):.2f}")
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
