"""Rank of each row's label among its class scores: top-k accuracy without sorting.

For scores ``S[n, c]`` and a label ``y[n]``, the 0-based rank of the label is
``#{c : S[n, c] > S[n, y]} + #{c < y : S[n, c] == S[n, y]}`` (ties go to the lower class index,
as a stable descending sort orders them). The label is in the top k exactly when its rank is
below k, so one pass over each row gives every top-k accuracy at once and the prediction
(``rank == 0`` means the label is the arg-max).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .common import jit, numba_threads, pick_threads

__all__ = ["label_ranks"]

# Below this many scores one thread is faster than waking the pool.
_SINGLE_THREAD_SCORES = 1 << 18


@jit(nogil=True)
def _rank_row(row, label):
    target = row[label]
    rank = 0
    for c in range(row.shape[0]):
        v = row[c]
        if v > target or (v == target and c < label):
            rank += 1
    return rank


@jit(nogil=True, parallel=True)
def _rank_rows_parallel(scores, labels, out):
    for n in prange(scores.shape[0]):
        out[n] = _rank_row(scores[n], labels[n])


@jit(nogil=True)
def _rank_rows_serial(scores, labels, out):
    for n in range(scores.shape[0]):
        out[n] = _rank_row(scores[n], labels[n])


def label_ranks(scores: np.ndarray, labels: np.ndarray, num_threads: int | None = None) -> np.ndarray:
    """0-based rank of ``labels[n]`` in row ``n`` of ``scores`` (ties to the lower class index).

    Args:
        scores: ``[N, C]`` float32 or float64 (made C-contiguous if needed); must be finite.
        labels: ``[N]`` integers in ``0..C-1``.
        num_threads: numba threads (``None``: numba's default; tiny inputs use one).

    Returns:
        int64 ``[N]``.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D, got shape {scores.shape}")
    if scores.dtype not in (np.float32, np.float64):
        scores = scores.astype(np.float32)
    scores = np.ascontiguousarray(scores)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    if labels.shape != (scores.shape[0],):
        raise ValueError(f"labels must have shape ({scores.shape[0]},), got {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= scores.shape[1]):
        raise ValueError(f"labels must lie in [0, {scores.shape[1]})")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    out = np.empty(scores.shape[0], dtype=np.int64)
    if scores.size < _SINGLE_THREAD_SCORES or num_threads == 1:
        _rank_rows_serial(scores, labels, out)
        return out
    with numba_threads(pick_threads(num_threads, scores.size)):
        _rank_rows_parallel(scores, labels, out)
    return out
