"""Pieces the numba kernels share: a caching ``njit`` and the canonical float64 dot product.

Imports nothing of the project.
"""

from __future__ import annotations

import logging
import math
import os
from contextlib import contextmanager

import numba
import numpy as np
from numba import prange

log = logging.getLogger(__name__)

# numba's default OpenMP layer keeps its threads spinning after a parallel loop, where they compete
# with OpenBLAS's threads for the cores during the next block's GEMM (measured on 2 cores: ranking
# 1.37x the GEMM time with OpenMP, 1.08x with the workqueue layer; benchmarks/bench_ranking.py).
# The kernels are only ever launched from one thread at a time, which is what workqueue needs.
# NUMBA_THREADING_LAYER in the environment still wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

_cache_warned = False


def jit(**options):
    """``numba.njit`` with ``cache=True``, or without the cache when no location is writable."""

    def decorate(func):
        global _cache_warned
        try:
            return numba.njit(cache=True, **options)(func)
        except RuntimeError as exc:  # numba found no writable cache location
            if not _cache_warned:
                _cache_warned = True
                log.warning("numba cache unavailable, kernels compile at each start: %s "
                            "(set NUMBA_CACHE_DIR to a writable folder)", exc)
            return numba.njit(**options)(func)

    return decorate


@jit(inline="always")
def dot64(a, b):
    """Canonical score of two float32 vectors, in float64.

    Each product is exact in float64; the sum runs over four interleaved partial sums (index
    ``k`` goes to sum ``k % 4``), added as ``(s0 + s1) + (s2 + s3)``. The order is fixed here, so
    the value depends only on the two vectors.
    """
    n = a.shape[0]
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    k = 0
    while k + 4 <= n:
        s0 += np.float64(a[k]) * np.float64(b[k])
        s1 += np.float64(a[k + 1]) * np.float64(b[k + 1])
        s2 += np.float64(a[k + 2]) * np.float64(b[k + 2])
        s3 += np.float64(a[k + 3]) * np.float64(b[k + 3])
        k += 4
    if k < n:
        s0 += np.float64(a[k]) * np.float64(b[k])
    if k + 1 < n:
        s1 += np.float64(a[k + 1]) * np.float64(b[k + 1])
    if k + 2 < n:
        s2 += np.float64(a[k + 2]) * np.float64(b[k + 2])
    return (s0 + s1) + (s2 + s3)


@jit(parallel=True, nogil=True)
def row_norms(x, n_chunks):
    """float64 L2 norm of every row, in parallel over rows."""
    n = x.shape[0]
    norms = np.empty(n, dtype=np.float64)
    step = (n + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        for r in range(c * step, min(n, (c + 1) * step)):
            norms[r] = math.sqrt(dot64(x[r], x[r]))
    return norms


@jit(parallel=True, nogil=True)
def row_hashes(x, multipliers, n_chunks):
    """A 64-bit hash of every row's bits (sum of each float32 word times an odd multiplier,
    wrapping), in parallel over rows: identical rows hash alike, so rows whose hash is unique
    have no identical twin."""
    n, dim = x.shape
    bits = x.view(np.uint32)
    hashes = np.empty(n, dtype=np.uint64)
    step = (n + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        for r in range(c * step, min(n, (c + 1) * step)):
            h = np.uint64(0)
            for k in range(dim):
                h += np.uint64(bits[r, k]) * multipliers[k]
            hashes[r] = h
    return hashes


# --------------------------------------------------------------------------- validation, threads

SINGLE_THREAD_PAIRS = 1 << 18  # below this many score pairs one thread is faster than spawning


def pick_threads(num_threads, n_pairs):
    available = numba.config.NUMBA_NUM_THREADS
    if num_threads is None:
        return 1 if n_pairs < SINGLE_THREAD_PAIRS else available
    if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)):
        raise TypeError(f"num_threads must be an int, got {type(num_threads).__name__}")
    if num_threads < 1:
        raise ValueError(f"num_threads must be at least 1, got {num_threads}")
    if num_threads > available:
        log.info("num_threads=%d is more than numba's %d threads (NUMBA_NUM_THREADS); using %d",
                 num_threads, available, available)
        return available
    return int(num_threads)


@contextmanager
def numba_threads(n: int):
    """Run the enclosed kernels on ``n`` numba threads, restoring the previous count after."""
    previous = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(previous)
