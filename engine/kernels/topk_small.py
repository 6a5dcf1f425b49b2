"""The exact top-k of :func:`clipeval.engine.kernels.search.top_k` for small inputs, in numpy alone.

Same definition: each query's k best documents by *canonical* score (float64 sums in a fixed
order of the float32 products, :func:`.arrays.dot64_pairs`, bit-identical to the numba kernels'
``dot64``), best first, ties to the lower document index. Like :mod:`.rank_small`, this path
holds the whole ``[Q, N]`` float32 GEMM (so it is for at most :data:`SMALL_PAIRS` pairs) and
exists for start-up: a process that only ever ranks small sets never imports numba.

Exactness: a GEMM value ``g`` differs from the canonical score ``c`` by at most
``m = gamma * ||q|| * max ||d||`` (:func:`.arrays.score_margin`). Scores are ranked as
:func:`~clipeval.engine.kernels.search.top_k` ranks them: each canonical sum rounded to float32
(``r``, round to nearest, monotone), ties broken by the tie key. Let ``g_k`` be a query's k-th
largest GEMM value: at least k documents have ``c >= g_k - m``, so the k-th best rounded score is
at least ``r(g_k - m)``; a document with ``r(g + m) < r(g_k - m)`` has ``r(c) <= r(g + m)`` below
it and cannot enter the top k (the same test the numba kernel applies to its heap). Only the
other documents are scored canonically, rounded and sorted.

Imports nothing of the project outside :mod:`clipeval.engine.kernels`.
"""

from __future__ import annotations

import numpy as np

from .arrays import dot64_pairs, score_margin, top_k_inputs
from .rank_small import CHUNK_ELEMENTS, SMALL_PAIRS

__all__ = ["SMALL_PAIRS", "top_k_small"]


def top_k_small(query_emb, doc_emb, k: int, *, tie_keys: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, scores)`` exactly as :func:`clipeval.engine.kernels.search.top_k` returns them:
    int64 ``[Q, k]`` document indices and float64 ``[Q, k]`` scores (canonical sums rounded to
    float32), best first; among equal scores the lower ``tie_keys`` entry (int64 ``[N]``;
    default: the document index) ranks first.

    Raises:
        ValueError / TypeError: invalid shapes, values, ``k`` or ``tie_keys`` (the message says which).
    """
    query_emb, doc_emb, k, tie = top_k_inputs(query_emb, doc_emb, k, tie_keys)
    n_q, dim = query_emb.shape
    n_docs = doc_emb.shape[0]

    scores = query_emb @ doc_emb.T  # [Q, N] float32
    kth = np.partition(scores, n_docs - k, axis=1)[:, n_docs - k].astype(np.float64)
    doc_norm_max = np.sqrt(dot64_pairs(doc_emb, doc_emb)).max()
    margin = score_margin(dim) * np.sqrt(dot64_pairs(query_emb, query_emb)) * doc_norm_max + 1e-30
    floor = (kth - margin).astype(np.float32)  # r(g_k - m): the k-th best rounded score is not below it
    upper = (scores.astype(np.float64) + margin[:, None]).astype(np.float32)  # r(g + m) >= r(c)
    q_idx, d_idx = np.nonzero(upper >= floor[:, None])  # row-major: grouped by query

    canonical = np.empty(q_idx.size, dtype=np.float64)
    step = max(1, CHUNK_ELEMENTS // dim)
    for start in range(0, q_idx.size, step):
        part = slice(start, start + step)
        canonical[part] = dot64_pairs(query_emb[q_idx[part]], doc_emb[d_idx[part]])
    canonical = canonical.astype(np.float32).astype(np.float64)  # ranked as float32, like trec_eval

    order = np.lexsort((tie[d_idx], -canonical, q_idx))  # by query, score descending, tie key ascending
    first = np.searchsorted(q_idx[order], np.arange(n_q))  # every query has at least k candidates
    take = order[first[:, None] + np.arange(k)[None, :]]
    return d_idx[take], canonical[take]
