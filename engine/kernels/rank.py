"""Rank of the positive item in both retrieval directions, without the full score matrix.

Texts ``t`` and gallery images ``i``; text ``t`` has one positive image ``text_to_image[t]``.
With scores ``S[t, i] = <text_emb[t], image_emb[i]>``:

- text -> image rank of text ``t`` with positive ``p``:
  ``#{j : S[t, j] > S[t, p]} + #{j < p : S[t, j] == S[t, p]}`` (0-based, ties to the lower index);
- image -> text rank of image ``i``: the minimum of the same count taken down column ``i`` over
  the positive texts of ``i``. The minimum belongs to the positive text with the highest score
  (ties to the lower text index), so only that text is ranked. An image with no text gets -1.

How the scores are computed
---------------------------
A float32 GEMM gives a different last bit for the same pair depending on the block shape, the
row's position in the block and the BLAS thread count (measured with OpenBLAS: a large share of
the entries of a 2048 x 5000 x 512 product change when the row blocking changes). Counting on
those values directly would make ranks of near-tied pairs depend on ``block_rows`` and threads.

So the scores that define the ranks are *canonical*: float64 sums, in a fixed order, of the
float32 products (each product is exact in float64, so the value depends only on the two
vectors, not on compilation, blocking or threads). The GEMM, run on blocks of text rows, only
*filters*: a GEMM value differs from the canonical score by at most ``gamma * ||t|| * ||i||``,
``gamma`` being the worst-case error bound of a float32 dot product of length D whatever order
the BLAS sums in (true of any IEEE float32 GEMM; a BLAS that rounds float32 inputs to lower
precision is not covered). A GEMM value clearly above or below the threshold is counted (or
not) at once; the few within the margin are decided on the canonical score. The thresholds
(the positives' canonical scores) are known before the first block, so both directions are
counted in one pass over each GEMM block and nothing is stored per pair. The ranks are thus
exact for the canonical scores and identical for any block size, thread count or BLAS.

Bitwise-identical rows (duplicate captions, an image listed twice) are grouped before the first
block (:func:`.common.row_hashes`, then :func:`.arrays.identical_row_groups` compares the rows
whose hashes collide): a pair within the margin whose row is identical to the positive's has the
positive's canonical score without computing it, so a gallery of many duplicates costs a
comparison per tied pair rather than a float64 dot product.

Memory: one float32 block of ``block_rows x n_images`` plus one int64 counter row of
``n_images`` per thread, and O(n_texts + n_images) small arrays.

Compiled kernels are cached by numba (``cache=True``): next to this module, or in the user
cache directory when the package folder is read-only, or in ``$NUMBA_CACHE_DIR`` when set.
When no cache location is writable the kernels are compiled on every start (about two
seconds) and a warning is logged once at import.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .arrays import hash_multipliers, identical_row_groups, ranking_inputs, score_bounds
from .common import dot64, jit, numba_threads, pick_threads, row_hashes, row_norms

__all__ = ["positive_ranks"]


# Target size of one float32 score block, and the fewest rows worth a BLAS call
# (below that, packing the image matrix costs as much as the product).
_BLOCK_BYTES = 16 << 20
_MIN_BLOCK_ROWS = 256


# --------------------------------------------------------------------------- layer 1: one row


@jit()
def _count_row(
    scores, t, text_emb, image_emb, positive, theta, lo, hi,
    col_theta, col_best, col_lo, col_hi, col_counts, text_group, image_group,
):
    """Count one text row of a GEMM block in both directions.

    Returns the text -> image rank of text ``t``, whose positive image ``positive`` has canonical
    score ``theta``; a GEMM value above ``hi`` (below ``lo``) is surely above (below) it. Adds 1
    to ``col_counts[j]`` when text ``t`` outranks image ``j``'s best positive text
    ``col_best[j]`` (canonical score ``col_theta[j]``, GEMM bounds ``col_lo[j]``, ``col_hi[j]``).

    A first branch-free pass counts the sure cases and how many values fall between the
    bounds; only when some do (other than the text's own pair), a second pass decides them on
    the canonical score.
    """
    above = 0
    near = 0
    col_near = 0
    for j in range(scores.shape[0]):
        v = scores[j]
        above += v > hi
        near += v >= lo
        col_above = v > col_hi[j]
        col_counts[j] += col_above
        col_near += (v >= col_lo[j]) - col_above
    # The text's own pair lies between its bounds and is never counted in either direction.
    v = scores[positive]
    near -= lo <= v and v <= hi
    if col_best[positive] == t:
        col_near -= col_lo[positive] <= v and v <= col_hi[positive]
    if near > above:
        above += _resolve_row(scores, t, text_emb, image_emb, positive, theta, lo, hi, image_group)
    if col_near > 0:
        _resolve_columns(scores, t, text_emb, image_emb, col_theta, col_best, col_lo, col_hi,
                         col_counts, text_group)
    return above


@jit()
def _resolve_row(scores, t, text_emb, image_emb, positive, theta, lo, hi, image_group):
    """Images of row ``t`` whose GEMM value is between the bounds and that outrank the positive.
    An image identical to the positive (same ``image_group``) has its score exactly: a tie."""
    text = text_emb[t]
    positive_group = image_group[positive]
    above = 0
    for j in range(scores.shape[0]):
        v = scores[j]
        if lo <= v and v <= hi and j != positive:
            s = theta if image_group[j] == positive_group else dot64(text, image_emb[j])
            if s > theta or (s == theta and j < positive):
                above += 1
    return above


@jit()
def _resolve_columns(scores, t, text_emb, image_emb, col_theta, col_best, col_lo, col_hi,
                     col_counts, text_group):
    """Add 1 to ``col_counts[j]`` where text ``t`` is between column ``j``'s bounds and outranks
    its best positive text on the canonical score (a text identical to it, same ``text_group``,
    ties exactly)."""
    text = text_emb[t]
    group = text_group[t]
    for j in range(scores.shape[0]):
        v = scores[j]
        if col_lo[j] <= v and v <= col_hi[j] and col_best[j] != t:
            s = col_theta[j] if text_group[col_best[j]] == group else dot64(text, image_emb[j])
            if s > col_theta[j] or (s == col_theta[j] and t < col_best[j]):
                col_counts[j] += 1


# --------------------------------------------------------------------------- layer 2: rows


@jit(parallel=True, nogil=True)
def _positive_scores(text_emb, image_emb, text_to_image, n_chunks):
    """Canonical score of every text with its positive image, in parallel over texts."""
    n_texts = text_emb.shape[0]
    theta = np.empty(n_texts, dtype=np.float64)
    step = (n_texts + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        for t in range(c * step, min(n_texts, (c + 1) * step)):
            theta[t] = dot64(text_emb[t], image_emb[text_to_image[t]])
    return theta


@jit(parallel=True, nogil=True)
def _count_block(
    block, t0, text_emb, image_emb, text_to_image, theta, lo, hi,
    col_theta, col_best, col_lo, col_hi, chunk_counts, t2i_out, text_group, image_group,
):
    """Count the GEMM block of text rows ``t0 .. t0 + len(block)`` in both directions.

    Rows are split into one contiguous chunk per entry of ``chunk_counts``; each chunk adds its
    image -> text counts to its own row of ``chunk_counts`` (no two threads share a counter).
    """
    n_rows = block.shape[0]
    n_chunks = chunk_counts.shape[0]
    step = (n_rows + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        counts = chunk_counts[c]
        for r in range(c * step, min(n_rows, (c + 1) * step)):
            t = t0 + r
            t2i_out[t] = _count_row(
                block[r], t, text_emb, image_emb, text_to_image[t], theta[t], lo[t], hi[t],
                col_theta, col_best, col_lo, col_hi, counts, text_group, image_group,
            )


# --------------------------------------------------------------------------- layer 3: public


def positive_ranks(
    text_emb: np.ndarray,
    image_emb: np.ndarray,
    text_to_image: np.ndarray,
    *,
    block_rows: int | None = None,
    num_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rank of the positive in both directions (0-based; ties go to the lower index).

    Args:
        text_emb: ``[T, D]`` text embeddings (L2-normalised for cosine scores; converted to
            C-contiguous float32 if needed).
        image_emb: ``[I, D]`` gallery image embeddings, same treatment.
        text_to_image: ``[T]`` integers, the positive image of each text, in ``[0, I)``.
        block_rows: text rows per GEMM block; default: about 16 MB of float32 scores, at
            least 256 rows. Memory is ``O(block_rows * I)``; the result does not depend on it.
        num_threads: numba threads for the counting kernels (default and most: numba's
            ``NUMBA_NUM_THREADS``; 1 for tiny inputs). BLAS threads follow the BLAS's own
            settings (``OPENBLAS_NUM_THREADS`` ...). The result depends on neither.

    Returns:
        ``(t2i_ranks, i2t_ranks)``: int64 ``[T]``, the rank of each text's positive image among
        all images; int64 ``[I]``, the best rank of an image's positive texts among all texts,
        or -1 for an image with no positive text.

    Raises:
        ValueError: shapes, values or arguments are invalid (message says which).
        TypeError: an input is not a numeric array.
    """
    text_emb, image_emb, text_to_image = ranking_inputs(text_emb, image_emb, text_to_image)
    n_texts, n_images = text_emb.shape[0], image_emb.shape[0]
    block_rows = _pick_block_rows(block_rows, n_texts, n_images)
    threads = pick_threads(num_threads, n_texts * n_images)

    with numba_threads(threads):
        return _rank_all(text_emb, image_emb, text_to_image, block_rows, threads)


def _rank_all(text_emb, image_emb, text_to_image, block_rows, threads):
    n_texts, dim = text_emb.shape
    n_images = image_emb.shape[0]

    theta = _positive_scores(text_emb, image_emb, text_to_image, threads)
    b = score_bounds(theta, text_to_image, row_norms(text_emb, threads), row_norms(image_emb, threads),
                     n_images, dim)
    multipliers = hash_multipliers(dim)
    text_group = identical_row_groups(text_emb, row_hashes(text_emb, multipliers, threads))
    image_group = identical_row_groups(image_emb, row_hashes(image_emb, multipliers, threads))
    t2i = np.empty(n_texts, dtype=np.int64)
    chunk_counts = np.zeros((threads, n_images), dtype=np.int64)
    block = np.empty((min(block_rows, n_texts), n_images), dtype=np.float32)
    image_t = image_emb.T
    for t0 in range(0, n_texts, block_rows):
        rows = min(block_rows, n_texts - t0)
        scores = block[:rows]
        np.matmul(text_emb[t0 : t0 + rows], image_t, out=scores)
        _count_block(
            scores, t0, text_emb, image_emb, text_to_image, theta, b.lo, b.hi,
            b.col_theta, b.col_best, b.col_lo, b.col_hi, chunk_counts, t2i, text_group, image_group,
        )
    i2t = chunk_counts.sum(axis=0)
    i2t[~b.has_text] = -1
    return t2i, i2t


def _pick_block_rows(block_rows, n_texts, n_images):
    if block_rows is None:
        rows = max(_MIN_BLOCK_ROWS, _BLOCK_BYTES // (4 * n_images))
        return min(rows, n_texts)
    if isinstance(block_rows, bool) or not isinstance(block_rows, (int, np.integer)):
        raise TypeError(f"block_rows must be an int, got {type(block_rows).__name__}")
    if block_rows < 1:
        raise ValueError(f"block_rows must be at least 1, got {block_rows}")
    return int(min(block_rows, n_texts))
