"""The exact top-k of :func:`clipeval.engine.kernels.search.top_k` for small inputs, in numpy alone.

Same definition: each query's k best documents by *canonical* score (float64 sums in a fixed
order of the float32 products, :func:`.arrays.dot64_pairs`, bit-identical to the numba kernels'
``dot64``), best first, ties to the lower document index. Like :mod:`.rank_small`, this path
holds the whole ``[Q, N]`` float32 GEMM (so it is for at most :data:`SMALL_PAIRS` pairs) and
exists for start-up: a process that only ever ranks small sets never imports numba.

Exactness: a GEMM value ``g`` differs from the canonical score ``c`` by at most
``m = gamma * ||q|| * max ||d||`` (:func:`.arrays.score_margin`). Let ``g_k`` be a query's k-th
largest GEMM value: at least k documents have ``c >= g_k - m``, so the k-th best canonical score
is at least ``g_k - m``, and every document of the true top k has ``g >= g_k - 2m``. Only those
candidates are scored canonically and sorted; the rest cannot enter the top k.

Imports nothing of the project outside :mod:`clipeval.engine.kernels`.
"""

from __future__ import annotations

import numpy as np

from .arrays import as_embeddings, dot64_pairs, float32_bounds, score_margin
from .rank_small import CHUNK_ELEMENTS, SMALL_PAIRS

__all__ = ["SMALL_PAIRS", "top_k_small"]


def top_k_small(query_emb, doc_emb, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, scores)`` exactly as :func:`clipeval.engine.kernels.search.top_k` returns them
    without ``tie_keys``: int64 ``[Q, k]`` document indices and float64 ``[Q, k]`` canonical
    scores, best first (ties to the lower document index).

    Raises:
        ValueError / TypeError: invalid shapes, values or ``k`` (the message says which).
    """
    query_emb = as_embeddings(query_emb, "query_emb")
    doc_emb = as_embeddings(doc_emb, "doc_emb")
    n_q, dim = query_emb.shape
    n_docs = doc_emb.shape[0]
    if doc_emb.shape[1] != dim:
        raise ValueError(f"query_emb has dimension {dim} but doc_emb has {doc_emb.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= n_docs:
        raise ValueError(f"k must be between 1 and the number of documents ({n_docs}), got {k}")
    k = int(k)

    scores = query_emb @ doc_emb.T  # [Q, N] float32
    kth = np.partition(scores, n_docs - k, axis=1)[:, n_docs - k].astype(np.float64)
    doc_norm_max = np.sqrt(dot64_pairs(doc_emb, doc_emb)).max()
    margin = score_margin(dim) * np.sqrt(dot64_pairs(query_emb, query_emb)) * doc_norm_max + 1e-30
    threshold, _ = float32_bounds(kth - 2.0 * margin, kth - 2.0 * margin)
    q_idx, d_idx = np.nonzero(scores >= threshold[:, None])  # row-major: grouped by query

    canonical = np.empty(q_idx.size, dtype=np.float64)
    step = max(1, CHUNK_ELEMENTS // dim)
    for start in range(0, q_idx.size, step):
        part = slice(start, start + step)
        canonical[part] = dot64_pairs(query_emb[q_idx[part]], doc_emb[d_idx[part]])

    order = np.lexsort((d_idx, -canonical, q_idx))  # by query, score descending, index ascending
    first = np.searchsorted(q_idx[order], np.arange(n_q))  # every query has at least k candidates
    take = order[first[:, None] + np.arange(k)[None, :]]
    return d_idx[take], canonical[take]
