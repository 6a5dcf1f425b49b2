"""Time positive_ranks against a plain blocked BLAS GEMM of the same size (the lower limit).

    python benchmarks/bench_ranking.py            # 25,000 texts x 5,000 images x 512
    python benchmarks/bench_ranking.py --large    # also 250,000 x 50,000 (minutes)
    python benchmarks/bench_ranking.py --data random

Prints, per size: the GEMM time, the positive_ranks time, their ratio (both best of
``--repeat`` runs, alternated), the peak RSS above the embeddings for each, and for the small
size a dense reference (whole score matrix + argpartition top-k) for contrast. numba's
compile / cache-load time is measured first and reported on its own.

``--data correlated`` (default) places each text near its image, as a trained model does (5
texts per image, like COCO); ``--data random`` draws texts independently of the images, where
the positive's score sits in the crowd and the most scores need an exact look; ``--data
identical`` gives every text the same vector (every image ranks its texts by a tie).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def read_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(func):
    """(seconds, peak RSS above the RSS at the start in MB or None, result)."""
    can_reset = reset_peak_rss()
    before = read_status_kb("VmRSS")
    start = time.perf_counter()
    result = func()
    seconds = time.perf_counter() - start
    peak = read_status_kb("VmHWM") - before if can_reset else None
    return seconds, (peak / 1024 if peak is not None else None), result


def make_data(n_texts, n_images, dim, kind, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((n_images, dim), dtype=np.float32)
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text_to_image = np.arange(n_texts, dtype=np.int64) % n_images
    text = rng.standard_normal((n_texts, dim), dtype=np.float32)
    if kind == "correlated":
        text *= np.float32(5.5 / np.sqrt(dim))
        text += image[text_to_image]
    elif kind == "identical":  # the worst case: every text the same vector, so all tie
        text[:] = text[0]
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    return text, image, text_to_image


def blocked_gemm(text, image, block_rows):
    out = np.empty((min(block_rows, len(text)), len(image)), dtype=np.float32)
    image_t = image.T
    for t0 in range(0, len(text), block_rows):
        rows = min(block_rows, len(text) - t0)
        np.matmul(text[t0 : t0 + rows], image_t, out=out[:rows])
    return out


def dense_reference(text, image, text_to_image, ks=(1, 5, 10)):
    """Whole score matrix and argpartition top-k, as a straightforward implementation would."""
    scores = text @ image.T
    kmax = max(ks)
    top = np.argpartition(-scores, kmax - 1, axis=1)[:, :kmax]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), 1), 1)
    t2i_hit = top == text_to_image[:, None]
    scores_t = scores.T
    top_t = np.argpartition(-scores_t, kmax - 1, axis=1)[:, :kmax]
    top_t = np.take_along_axis(top_t, np.argsort(-np.take_along_axis(scores_t, top_t, 1), 1), 1)
    i2t_hit = text_to_image[top_t] == np.arange(len(image))[:, None]
    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = float(t2i_hit[:, :k].any(1).mean())
        out[f"text_retrieval_recall@{k}"] = float(i2t_hit[:, :k].any(1).mean())
    return out


def fmt_mb(mb):
    return "n/a" if mb is None else f"{mb:.0f} MB"


def run_size(n_texts, n_images, dim, kind, repeat, threads, dense):
    from clipeval.engine.kernels import rank
    from clipeval.engine.metrics.retrieval import retrieval_metrics

    text, image, text_to_image = make_data(n_texts, n_images, dim, kind)
    block_rows = rank._pick_block_rows(None, n_texts, n_images)
    emb_mb = (text.nbytes + image.nbytes) / 2**20
    print(f"\n== {n_texts:,} texts x {n_images:,} images x {dim}, data={kind}, "
          f"block_rows={block_rows}, embeddings {emb_mb:.0f} MB")

    gemm_runs, rank_runs = [], []
    result = None
    for _ in range(repeat):
        gemm_runs.append(measure(lambda: blocked_gemm(text, image, block_rows))[:2])
        seconds, peak, result = measure(
            lambda: rank.positive_ranks(
                text, image, text_to_image, block_rows=block_rows, num_threads=threads
            )
        )
        rank_runs.append((seconds, peak))
    gemm_s = min(s for s, _ in gemm_runs)
    rank_s = min(s for s, _ in rank_runs)
    gemm_peak = max((p for _, p in gemm_runs if p is not None), default=None)
    rank_peak = max((p for _, p in rank_runs if p is not None), default=None)
    print(f"blocked GEMM      {gemm_s:8.3f} s   peak RSS +{fmt_mb(gemm_peak)}   "
          f"(runs: {', '.join(f'{s:.3f}' for s, _ in gemm_runs)})")
    print(f"positive_ranks    {rank_s:8.3f} s   peak RSS +{fmt_mb(rank_peak)}   "
          f"(runs: {', '.join(f'{s:.3f}' for s, _ in rank_runs)})")
    print(f"ratio ranks/GEMM  {rank_s / gemm_s:8.2f}  (best of {repeat} each)")

    metrics, _ = retrieval_metrics(*result, None, k_explicit=False)
    print("recalls           " + ", ".join(
        f"{k.replace('_retrieval_recall', '')}={v:.4f}" for k, v in metrics.items() if "@" in k))
    if dense:
        seconds, peak, reference = measure(lambda: dense_reference(text, image, text_to_image))
        same = all(abs(reference[k] - metrics[k]) == 0 for k in reference)
        print(f"dense reference   {seconds:8.3f} s   peak RSS +{fmt_mb(peak)}   "
              f"(full matrix + argpartition; same recalls: {same})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=25_000)
    parser.add_argument("--images", type=int, default=5_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--data", choices=["correlated", "random", "identical"], default="correlated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="numba threads (default: all)")
    parser.add_argument("--large", action="store_true", help="also run 250,000 x 50,000")
    args = parser.parse_args()

    env = {k: os.environ.get(k) for k in (
        "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
        "NUMBA_NUM_THREADS", "NUMBA_CACHE_DIR")}
    print(f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
          f"env {', '.join(f'{k}={v}' for k, v in env.items() if v is not None) or '(none set)'}")

    start = time.perf_counter()
    from clipeval.engine.kernels.rank import positive_ranks  # the numba kernels (not the small-input path)

    import_s = time.perf_counter() - start
    tiny = np.eye(4, dtype=np.float32)
    start = time.perf_counter()
    positive_ranks(tiny, tiny, np.arange(4), num_threads=1)
    positive_ranks(tiny, tiny, np.arange(4), num_threads=2 if (os.cpu_count() or 1) > 1 else 1)
    print(f"numba: import {import_s:.2f} s, first calls (compile or cache load) "
          f"{time.perf_counter() - start:.2f} s; excluded below")

    run_size(args.texts, args.images, args.dim, args.data, args.repeat, args.threads, dense=True)
    if args.large:
        run_size(250_000, 50_000, args.dim, args.data, 1, args.threads, dense=False)


if __name__ == "__main__":
    main()
