"""Input checks and exact-score helpers shared by the ranking paths; numpy only (no numba), so
the small-input path (:mod:`.rank_small`) runs without importing numba.

``dot64_pairs`` is the numpy twin of :func:`.common.dot64`: the same four interleaved float64
partial sums in the same order, so both give bit-identical canonical scores.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# Float32 unit roundoff.
U32 = 2.0**-24


def as_embeddings(x, name):
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception as exc:  # noqa: BLE001 - anything unconvertible is a type error here
            raise TypeError(f"{name} must be a numeric array, got {type(x).__name__}") from exc
    if x.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a numeric array, got dtype {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n, dim], got shape {x.shape}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must have at least one row and one column, got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise ValueError(f"{name} row {bad} contains NaN or infinity")
    return x


def ranking_inputs(text_emb, image_emb, text_to_image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked ``(text_emb, image_emb, positive index)`` for both ranking paths: C-contiguous
    float32 embeddings of one dimension and one image index per text."""
    text_emb = as_embeddings(text_emb, "text_emb")
    image_emb = as_embeddings(image_emb, "image_emb")
    n_texts, dim = text_emb.shape
    n_images = image_emb.shape[0]
    if image_emb.shape[1] != dim:
        raise ValueError(
            f"text_emb has dimension {dim} but image_emb has {image_emb.shape[1]}; "
            "both towers must embed into the same space"
        )
    return text_emb, image_emb, as_positive_index(text_to_image, n_texts, n_images)


class Bounds(NamedTuple):
    """float32 bounds around the positives' canonical scores: a GEMM value above ``hi`` (below
    ``lo``) is surely above (below) text ``t``'s positive score ``theta[t]``; per image, the best
    positive text ``col_best`` (-1: none), its score ``col_theta`` and bounds ``col_lo``/``col_hi``
    (infinite for an image without text, so it is never counted)."""

    lo: np.ndarray
    hi: np.ndarray
    col_theta: np.ndarray
    col_best: np.ndarray
    has_text: np.ndarray
    col_lo: np.ndarray
    col_hi: np.ndarray


def score_bounds(theta, positive, text_norm, image_norm, n_images: int, dim: int) -> Bounds:
    """:class:`Bounds` from the canonical positive scores and the rows' float64 norms:
    |GEMM value - canonical score| <= gamma * ||t|| * ||i|| (:func:`score_margin`)."""
    gamma = score_margin(dim)
    row_margin = gamma * text_norm * image_norm.max() + 1e-30
    lo, hi = float32_bounds(theta - row_margin, theta + row_margin)
    col_theta, col_best = best_positive_per_image(theta, positive, n_images)
    has_text = col_best >= 0
    col_margin = gamma * image_norm * text_norm.max() + 1e-30
    col_lo = np.full(n_images, np.inf, dtype=np.float32)
    col_hi = np.full(n_images, np.inf, dtype=np.float32)
    col_lo[has_text], col_hi[has_text] = float32_bounds(
        col_theta[has_text] - col_margin[has_text], col_theta[has_text] + col_margin[has_text]
    )
    return Bounds(lo, hi, col_theta, col_best, has_text, col_lo, col_hi)


def top_k_inputs(query_emb, doc_emb, k, tie_keys):
    """The checked inputs of a top-k search (:func:`.search.top_k`, :func:`.topk_small.top_k_small`):
    ``(query_emb float32 [Q, D], doc_emb float32 [N, D], k int, tie int64 [N])``; ``tie`` is the
    document index when ``tie_keys`` is None. Raises ValueError / TypeError naming the argument."""
    query_emb = as_embeddings(query_emb, "query_emb")
    doc_emb = as_embeddings(doc_emb, "doc_emb")
    dim = query_emb.shape[1]
    n_docs = doc_emb.shape[0]
    if doc_emb.shape[1] != dim:
        raise ValueError(f"query_emb has dimension {dim} but doc_emb has {doc_emb.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= n_docs:
        raise ValueError(f"k must be between 1 and the number of documents ({n_docs}), got {k}")
    if tie_keys is None:
        tie = np.arange(n_docs, dtype=np.int64)
    else:
        tie = np.ascontiguousarray(tie_keys, dtype=np.int64)
        if tie.shape != (n_docs,):
            raise ValueError(f"tie_keys must have shape ({n_docs},), got {tie.shape}")
    return query_emb, doc_emb, int(k), tie


def dot64_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Canonical float64 score of each row pair ``(a[r], b[r])`` (float32 rows), exactly as
    :func:`.common.dot64` sums it: index ``k`` into partial sum ``k % 4``, each product exact in
    float64, then ``(s0 + s1) + (s2 + s3)``."""
    n, dim = a.shape
    sums = np.zeros((4, n), dtype=np.float64)
    if n == 0:
        return sums[0]
    a64 = a.astype(np.float64)
    b64 = b.astype(np.float64)
    for k in range(dim):  # in order: the same sequence of additions per partial sum
        sums[k % 4] += a64[:, k] * b64[:, k]
    return (sums[0] + sums[1]) + (sums[2] + sums[3])


def score_margin(dim: int) -> float:
    """``gamma``: |float32 GEMM value - canonical score| <= gamma * ||t|| * ||i|| for vectors of
    length ``dim``, whatever order the BLAS sums in (with or without FMA), plus the float64
    canonical sum's own error."""
    return (dim + 2) * U32 / (1.0 - (dim + 2) * U32) + 1e-12


def float32_bounds(lo64, hi64):
    """float32 bounds that contain the float64 interval ``[lo64, hi64]``."""
    lo = lo64.astype(np.float32)
    hi = hi64.astype(np.float32)
    lo = np.where(lo.astype(np.float64) > lo64, np.nextafter(lo, np.float32(-np.inf)), lo)
    hi = np.where(hi.astype(np.float64) < hi64, np.nextafter(hi, np.float32(np.inf)), hi)
    return lo.astype(np.float32), hi.astype(np.float32)


def best_positive_per_image(theta, text_to_image, n_images):
    """Per image: highest canonical positive score and its text (lowest index on ties; -1: none)."""
    col_theta = np.full(n_images, -np.inf, dtype=np.float64)
    np.maximum.at(col_theta, text_to_image, theta)
    is_best = theta == col_theta[text_to_image]
    col_best = np.full(n_images, -1, dtype=np.int64)
    best_texts = np.flatnonzero(is_best)
    # Reverse order so the lowest text index is written last.
    col_best[text_to_image[best_texts[::-1]]] = best_texts[::-1]
    return col_theta, col_best


def as_positive_index(text_to_image, n_texts, n_images):
    index = np.asarray(text_to_image)
    if index.dtype.kind not in "iu":
        raise TypeError(f"text_to_image must hold integers, got dtype {index.dtype}")
    if index.shape != (n_texts,):
        raise ValueError(
            f"text_to_image must have shape ({n_texts},) (one image per text), got {index.shape}"
        )
    bad = np.flatnonzero((index < 0) | (index >= n_images))
    if bad.size:
        raise ValueError(
            f"text_to_image[{int(bad[0])}] = {int(index[bad[0]])} is not an image index in "
            f"[0, {n_images}) ({bad.size} such texts)"
        )
    return np.ascontiguousarray(index, dtype=np.int64)


def hash_multipliers(dim: int) -> np.ndarray:
    """Fixed odd 64-bit multipliers for :func:`.common.row_hashes` (any values work; these are
    deterministic so runs behave alike)."""
    rng = np.random.default_rng(0x5EED_C11B)
    return rng.integers(0, 2**64 - 1, size=dim, dtype=np.uint64, endpoint=True) | np.uint64(1)


def identical_row_groups(x: np.ndarray, hashes: np.ndarray | None = None) -> np.ndarray:
    """Per row, the index of a representative row bitwise identical to it (itself when it has no
    twin). ``hashes`` (:func:`.common.row_hashes`) only narrows the search: rows sharing a hash are
    compared in full, so a hash collision never groups different rows; without them every row is
    compared."""
    n = x.shape[0]
    groups = np.arange(n, dtype=np.int64)
    if hashes is None:
        candidates = groups.copy()
    else:
        order = np.argsort(hashes, kind="stable")
        same = hashes[order[1:]] == hashes[order[:-1]]
        if not same.any():
            return groups
        candidates = np.unique(np.concatenate([order[1:][same], order[:-1][same]]))
    rows = np.ascontiguousarray(x[candidates]).view(np.dtype((np.void, x.shape[1] * x.itemsize))).ravel()
    _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    groups[candidates] = candidates[first][inverse.ravel()]
    return groups
