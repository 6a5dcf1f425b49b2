"""Exact top-k dense retrieval over a corpus, in blocks, without the query x corpus matrix.

For queries ``q`` and documents ``d`` the score is the dot product (the cosine for
L2-normalised embeddings). Each query's k best documents are returned best first, ordered by
score descending, then by a caller-given *tie key* ascending (the text-retrieval task passes
the rank of each document id in descending id order, which is trec_eval's tie rule, so the
top k here are exactly the first k of trec_eval's ranking of the whole corpus). Nothing is
filtered: a document is never dropped because its id equals the query's.

Scores
------
As in :mod:`clipeval.engine.kernels.rank`, scores start *canonical*: float64 sums, in a fixed
order, of the exact float32 products, so they depend only on the two vectors and never on
block sizes, threads or the BLAS. The canonical sum is then rounded to float32, the precision
trec_eval holds a run's scores in: the ranking uses (and returns) these float32 values, so two
documents whose float64 scores differ only below float32 resolution are a tie, broken by the
tie key, exactly as trec_eval breaks it on the run file. A float32 GEMM over a (query block x
document block) tile only *filters*: a GEMM value differs from the canonical score by at most
``gamma * ||q|| * ||d||`` (``gamma`` the worst-case error bound of a float32 dot product of
length D in any summation order), so a document whose GEMM value plus that margin, rounded to
float32, is below the query's current k-th score cannot enter its top k (rounding is monotone)
and is skipped; every other document is scored canonically and offered to the query's heap.
The result is identical for any block sizes and thread count.

Memory: one float32 tile of ``block_rows x block_cols`` and three ``[Q, k]`` heaps.

This module imports nothing of the project.
"""

from __future__ import annotations


import numpy as np
from numba import prange

from .arrays import top_k_inputs
from .common import dot64, jit, numba_threads, pick_threads, row_norms

__all__ = ["top_k"]


_TILE_BYTES = 16 << 20
_MAX_BLOCK_COLS = 8192
_MIN_BLOCK_ROWS = 64
_U32 = 2.0**-24

# --------------------------------------------------------------------------- layer 1: one row


@jit(inline="always")
def _worse(s1, t1, s2, t2):
    """Whether (score s1, tie key t1) ranks below (s2, t2)."""
    return s1 < s2 or (s1 == s2 and t1 > t2)


@jit()
def _sift_down(hs, ht, hi, n, pos):
    """Restore the heap (root = worst entry) below ``pos``."""
    while True:
        child = 2 * pos + 1
        if child >= n:
            return
        if child + 1 < n and _worse(hs[child + 1], ht[child + 1], hs[child], ht[child]):
            child += 1
        if not _worse(hs[child], ht[child], hs[pos], ht[pos]):
            return
        hs[pos], hs[child] = hs[child], hs[pos]
        ht[pos], ht[child] = ht[child], ht[pos]
        hi[pos], hi[child] = hi[child], hi[pos]
        pos = child


@jit()
def _sift_up(hs, ht, hi, pos):
    while pos > 0:
        parent = (pos - 1) // 2
        if not _worse(hs[pos], ht[pos], hs[parent], ht[parent]):
            return
        hs[pos], hs[parent] = hs[parent], hs[pos]
        ht[pos], ht[parent] = ht[parent], ht[pos]
        hi[pos], hi[parent] = hi[parent], hi[pos]
        pos = parent


@jit()
def _scan_row(tile_row, query, col0, doc_emb, tie, margin, hs, ht, hi, filled):
    """Offer documents ``col0 .. col0 + len(tile_row)`` to one query's heap; return its new size.

    ``tile_row`` holds their GEMM values; a value whose upper bound (plus ``margin``, rounded to
    float32) is below the heap's worst score is skipped, the others are scored canonically and
    rounded to float32.
    """
    k = hs.shape[0]
    for j in range(tile_row.shape[0]):
        if filled == k and np.float64(np.float32(np.float64(tile_row[j]) + margin)) < hs[0]:
            continue
        d = col0 + j
        s = np.float64(np.float32(dot64(query, doc_emb[d])))
        t = tie[d]
        if filled < k:
            hs[filled] = s
            ht[filled] = t
            hi[filled] = d
            _sift_up(hs, ht, hi, filled)
            filled += 1
        elif _worse(hs[0], ht[0], s, t):
            hs[0] = s
            ht[0] = t
            hi[0] = d
            _sift_down(hs, ht, hi, k, 0)
    return filled


# --------------------------------------------------------------------------- layer 2: rows


@jit(parallel=True, nogil=True)
def _scan_tile(tile, q0, col0, query_emb, doc_emb, tie, margins, hs, ht, hi, filled, n_chunks):
    """Offer one GEMM tile (queries ``q0 ..``, documents ``col0 ..``) to the heaps, in parallel
    over contiguous chunks of query rows (each query's heap belongs to one thread)."""
    n_rows = tile.shape[0]
    step = (n_rows + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        for r in range(c * step, min(n_rows, (c + 1) * step)):
            q = q0 + r
            filled[q] = _scan_row(tile[r], query_emb[q], col0, doc_emb, tie, margins[q],
                                  hs[q], ht[q], hi[q], filled[q])


# --------------------------------------------------------------------------- layer 3: public


def top_k(
    query_emb: np.ndarray,
    doc_emb: np.ndarray,
    k: int,
    *,
    tie_keys: np.ndarray | None = None,
    block_rows: int | None = None,
    block_cols: int | None = None,
    num_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best documents of every query (exact; see the module docstring).

    Args:
        query_emb: ``[Q, D]`` query embeddings (converted to C-contiguous float32).
        doc_emb: ``[N, D]`` document embeddings, same treatment.
        k: documents per query, ``1 <= k <= N``.
        tie_keys: int64 ``[N]``; among equal scores the lower key ranks first. Default: the
            document index (ties to the lower index).
        block_rows, block_cols: GEMM tile shape (default about 16 MB of float32). The result
            does not depend on them.
        num_threads: numba threads (default: numba's; 1 for tiny inputs). The result does not
            depend on it.

    Returns:
        ``(indices, scores)``: int64 ``[Q, k]`` document indices and float64 ``[Q, k]`` scores
        (canonical sums rounded to float32, so each is exactly a float32 value), best first.

    Raises:
        ValueError / TypeError: invalid shapes, values or arguments (the message says which).
    """
    query_emb, doc_emb, k, tie = top_k_inputs(query_emb, doc_emb, k, tie_keys)
    n_q, dim = query_emb.shape
    n_docs = doc_emb.shape[0]
    block_cols = _pick_int("block_cols", block_cols, min(n_docs, _MAX_BLOCK_COLS), n_docs)
    block_rows = _pick_int("block_rows", block_rows,
                           max(_MIN_BLOCK_ROWS, _TILE_BYTES // (4 * block_cols)), n_q)
    threads = pick_threads(num_threads, n_q * n_docs)

    with numba_threads(threads):
        return _search(query_emb, doc_emb, k, tie, block_rows, block_cols, threads)


def _search(query_emb, doc_emb, k, tie, block_rows, block_cols, threads):
    n_q, dim = query_emb.shape
    n_docs = doc_emb.shape[0]
    gamma = (dim + 2) * _U32 / (1.0 - (dim + 2) * _U32) + 1e-12
    margins = gamma * row_norms(query_emb, threads) * row_norms(doc_emb, threads).max() + 1e-30
    hs = np.full((n_q, k), -np.inf, dtype=np.float64)
    ht = np.zeros((n_q, k), dtype=np.int64)
    hi = np.full((n_q, k), -1, dtype=np.int64)
    filled = np.zeros(n_q, dtype=np.int64)
    tile = np.empty((block_rows, block_cols), dtype=np.float32)
    for q0 in range(0, n_q, block_rows):
        rows = min(block_rows, n_q - q0)
        for c0 in range(0, n_docs, block_cols):
            cols = min(block_cols, n_docs - c0)
            scores = tile[:rows, :cols]
            np.matmul(query_emb[q0:q0 + rows], doc_emb[c0:c0 + cols].T, out=scores)
            _scan_tile(scores, q0, c0, query_emb, doc_emb, tie, margins, hs, ht, hi, filled,
                       min(threads, rows))
    order = np.lexsort((ht, -hs), axis=-1)
    return np.take_along_axis(hi, order, axis=1), np.take_along_axis(hs, order, axis=1)


def _pick_int(name, value, default, upper):
    if value is None:
        return int(max(1, min(default, upper)))
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return int(min(value, upper))


