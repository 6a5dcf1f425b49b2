"""Ranking kernels. They import nothing of the project; only the public functions are used elsewhere.

Importing this package does not import numba: :func:`positive_ranks` ranks small inputs with
numpy (:mod:`.rank_small`) and loads the numba kernels (:mod:`.rank`) only for larger ones.
"""

from __future__ import annotations

from .rank_small import SMALL_PAIRS, positive_ranks_small

__all__ = ["SMALL_PAIRS", "positive_ranks"]


def positive_ranks(text_emb, image_emb, text_to_image, *, block_rows=None, num_threads=None):
    """Rank of the positive in both retrieval directions; see :func:`.rank.positive_ranks` for the
    definition, arguments and errors. At most :data:`SMALL_PAIRS` (text, image) pairs, with no
    ``block_rows`` asked for, go through :func:`.rank_small.positive_ranks_small` (numpy; the same
    ranks, bit for bit); the rest through the numba kernels."""
    n_pairs = _rows(text_emb) * _rows(image_emb)
    if block_rows is None and n_pairs <= SMALL_PAIRS:
        if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)
                                        or num_threads < 1):
            raise ValueError(f"num_threads must be an integer of at least 1, got {num_threads!r}")
        return positive_ranks_small(text_emb, image_emb, text_to_image)
    from .rank import positive_ranks as ranks_numba

    return ranks_numba(text_emb, image_emb, text_to_image, block_rows=block_rows, num_threads=num_threads)


def _rows(x) -> int:
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) < 1:
        return 0  # not an array: the path taken reports it
    return int(shape[0])
