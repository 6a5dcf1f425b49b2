"""Pieces the numba kernels share: a caching ``njit`` and the canonical float64 dot product.

Imports nothing of the project.
"""

from __future__ import annotations

import logging
import os

import numba
import numpy as np

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
