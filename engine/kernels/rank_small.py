"""The ranks of :mod:`.rank` for small inputs, in numpy alone.

Same definition, same canonical scores, same filtering (see :mod:`.rank`): a float32 GEMM
decides every pair clearly above or below the positive's canonical score, and the pairs within
the error margin are decided on canonical float64 scores (:func:`.arrays.dot64_pairs`, bit-identical
to the numba kernels' ``dot64``). The whole ``[T, I]`` float32 score matrix is held at once, so
this path is for at most :data:`SMALL_PAIRS` pairs (16 MB). Its point is start-up: a process
that ranks only small sets never imports numba or loads its compiled kernels (about 0.9 s on a
2-core VM, against a few milliseconds of ranking work at this size).
"""

from __future__ import annotations

import numpy as np

from .arrays import dot64_pairs, identical_row_groups, ranking_inputs, score_bounds

SMALL_PAIRS = 1 << 22  # 4,194,304 pairs: a 16 MB float32 score matrix
# Near pairs are re-scored this many float64 elements at a time (32 MB per gathered operand).
CHUNK_ELEMENTS = 1 << 22
# More near pairs than this many per row and column suggest duplicated embeddings: rows are then
# grouped by exact identity, and a pair whose row is identical to the positive's is a tie
# without re-scoring (an identical row has the identical canonical score).
GROUP_AFTER = 2


def positive_ranks_small(text_emb, image_emb, text_to_image) -> tuple[np.ndarray, np.ndarray]:
    """``(t2i_ranks, i2t_ranks)`` exactly as :func:`.rank.positive_ranks` returns them."""
    text_emb, image_emb, positive = ranking_inputs(text_emb, image_emb, text_to_image)
    n_texts, dim = text_emb.shape
    n_images = image_emb.shape[0]
    rows = np.arange(n_texts)

    theta = dot64_pairs(text_emb, image_emb[positive])
    lo, hi, col_theta, col_best, has_text, col_lo, col_hi = score_bounds(
        theta, positive, np.sqrt(dot64_pairs(text_emb, text_emb)), np.sqrt(dot64_pairs(image_emb, image_emb)),
        n_images, dim)

    scores = text_emb @ image_emb.T  # [T, I] float32

    # text -> image: images surely above the positive, plus those within the margin (not the
    # positive itself) that beat it on the canonical score (ties to the lower image index)
    t2i = (scores > hi[:, None]).sum(axis=1, dtype=np.int64)
    near = (scores >= lo[:, None]) & (scores <= hi[:, None])
    near[rows, positive] = False
    t_idx, j_idx = np.nonzero(near)
    if t_idx.size:
        same = _same_rows(image_emb, j_idx, positive[t_idx], t_idx.size > GROUP_AFTER * (n_texts + n_images))
        s = _canonical(text_emb, image_emb, t_idx, j_idx, same, theta[t_idx])
        beats = (s > theta[t_idx]) | ((s == theta[t_idx]) & (j_idx < positive[t_idx]))
        t2i += np.bincount(t_idx[beats], minlength=n_texts)

    # image -> text: texts surely above the image's best positive text, plus the near ones
    i2t = (scores > col_hi[None, :]).sum(axis=0, dtype=np.int64)
    near = (scores >= col_lo[None, :]) & (scores <= col_hi[None, :])
    near[col_best[has_text], np.flatnonzero(has_text)] = False
    t_idx, j_idx = np.nonzero(near)
    if t_idx.size:
        same = _same_rows(text_emb, t_idx, col_best[j_idx], t_idx.size > GROUP_AFTER * (n_texts + n_images))
        s = _canonical(text_emb, image_emb, t_idx, j_idx, same, col_theta[j_idx])
        beats = (s > col_theta[j_idx]) | ((s == col_theta[j_idx]) & (t_idx < col_best[j_idx]))
        i2t += np.bincount(j_idx[beats], minlength=n_images)
    i2t[~has_text] = -1
    return t2i, i2t


def _same_rows(x: np.ndarray, a: np.ndarray, b: np.ndarray, group: bool) -> np.ndarray | None:
    """Where rows ``x[a]`` and ``x[b]`` are bitwise identical (only when ``group``; else None)."""
    if not group:
        return None
    ids = identical_row_groups(x)
    return ids[a] == ids[b]


def _canonical(text_emb, image_emb, t_idx, j_idx, same, known) -> np.ndarray:
    """Canonical scores of the pairs ``(t_idx, j_idx)``: ``known`` where ``same`` (a row identical
    to the one whose score ``known`` is), else :func:`.arrays.dot64_pairs`, a chunk at a time."""
    out = np.array(known, dtype=np.float64, copy=True)
    todo = np.arange(t_idx.size) if same is None else np.flatnonzero(~same)
    step = max(1, CHUNK_ELEMENTS // text_emb.shape[1])
    for start in range(0, todo.size, step):
        part = todo[start:start + step]
        out[part] = dot64_pairs(text_emb[t_idx[part]], image_emb[j_idx[part]])
    return out
