"""What the per-query detail (engine/detail.py) costs, side by side in one run.

    python benchmarks/bench_detail.py              # ranking vs detail, 25,000 x 5,000 x 512
    python benchmarks/bench_detail.py --demo 5     # also the demo eval, --detail off vs auto

Part 1 times the ranking the metrics need (``positive_ranks``) against the detail's extra
work on the same embeddings (top-10 lists in both directions plus writing the ``.npz``), best
of ``--repeat``, alternated. Part 2 times ``clipeval eval`` on the embedded demo (second runs:
the embedding cache is warm) with ``--detail off`` and ``--detail auto``, alternated, ``--demo``
times each, and reports medians. Figures are ratios within this run; the CPU is printed.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def correlated(n_texts, n_images, dim, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((n_images, dim), dtype=np.float32)
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text_to_image = np.arange(n_texts) % n_images
    text = image[text_to_image] + 0.9 * rng.standard_normal((n_texts, dim), dtype=np.float32) / np.sqrt(dim)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    return text.astype(np.float32), image, text_to_image


def part_ranking(n_texts, n_images, dim, repeat):
    from clipeval.engine.results.detail import RetrievalPerQuery, write_detail
    from clipeval.engine.kernels import positive_ranks

    text, image, text_to_image = correlated(n_texts, n_images, dim)
    texts = [f"a caption of image {i % n_images} number {i}" for i in range(n_texts)]
    ids = [f"/data/images/{i:06d}.jpg" for i in range(n_images)]
    positive_ranks(text[:300], image[:300], text_to_image[:300] % 300, block_rows=64)  # load the kernels
    with tempfile.TemporaryDirectory() as tmp:
        rank_s, detail_s = [], []
        for _ in range(repeat):
            t0 = time.perf_counter()
            t2i, i2t = positive_ranks(text, image, text_to_image)
            rank_s.append(time.perf_counter() - t0)
            per_query = RetrievalPerQuery(text, image, text_to_image, t2i, i2t, texts, ids)
            t0 = time.perf_counter()
            info = write_detail(Path(tmp) / "r.json", per_query, "on")
            detail_s.append(time.perf_counter() - t0)
    print(f"ranking {n_texts} x {n_images} x {dim}: positive_ranks {min(rank_s):.2f} s, detail (top-10 both ways "
          f"+ npz) {min(detail_s):.2f} s: x {min(detail_s) / min(rank_s):.2f} of the ranking; file "
          f"{info['bytes'] / 2**20:.2f} MiB, estimated {per_query.estimated_bytes() / 2**20:.2f} MiB uncompressed")


def part_demo(times):
    cmd = [sys.executable, "-m", "clipeval", "eval", "--quiet"]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(cmd + ["--output-dir", tmp], check=True, capture_output=True)  # fill the cache
        runs = {"off": [], "auto": []}
        for _ in range(times):
            for mode in runs:
                t0 = time.perf_counter()
                subprocess.run(cmd + ["--output-dir", tmp, "--detail", mode], check=True, capture_output=True)
                runs[mode].append(time.perf_counter() - t0)
    off, auto = statistics.median(runs["off"]), statistics.median(runs["auto"])
    print(f"demo eval, second runs, median of {times}: --detail off {off:.2f} s, auto {auto:.2f} s: x {auto / off:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=25_000)
    ap.add_argument("--images", type=int, default=5_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--demo", type=int, default=0, help="also time the demo eval this many times per mode")
    args = ap.parse_args()
    print(f"CPU: {cpu_name()}, {__import__('os').cpu_count()} logical cores; numpy {np.__version__}")
    part_ranking(args.texts, args.images, args.dim, args.repeat)
    if args.demo:
        part_demo(args.demo)


if __name__ == "__main__":
    main()
