"""Retrieval metrics from positive ranks, with CLIP_benchmark's key names.

- ``image_retrieval_recall@k`` (text -> image): mean over texts of ``[rank of its image < k]``.
- ``text_retrieval_recall@k`` (image -> text): mean over images that have at least one text of
  ``[best rank of its texts < k]``. Images without texts are left out of the mean and counted.
- ``{image,text}_retrieval_{mean,median}_rank``: 1-based ranks.

With no ties these equal CLIP_benchmark's ``(recall > 0).mean()``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from ..errors import MetricError
from ..kernels import positive_ranks

__all__ = ["DEFAULT_RECALL_K", "evaluate_retrieval", "retrieval_metrics", "score_retrieval"]

log = logging.getLogger(__name__)

DEFAULT_RECALL_K: tuple[int, ...] = (1, 5, 10)


def retrieval_metrics(
    t2i_ranks: np.ndarray,
    i2t_ranks: np.ndarray,
    recall_k: Sequence[int] | None,
    *,
    k_explicit: bool,
) -> tuple[dict[str, float], dict]:
    """Recall@k, mean and median rank in both directions.

    Args:
        t2i_ranks: ``[T]`` 0-based rank of each text's image among the ``I`` images.
        i2t_ranks: ``[I]`` 0-based best rank of each image's texts among the ``T`` texts, -1 for
            an image with no text (as returned by ``positive_ranks``).
        recall_k: the k to report; ``None`` means the default ``(1, 5, 10)``.
        k_explicit: whether the user asked for ``recall_k``. An explicit k larger than the
            gallery of a direction (images for text -> image, texts for image -> text) is an
            error; a default one is left out of that direction and listed in the notes.

    Returns:
        ``(metrics, notes)``. ``metrics`` maps the reference key names to floats. ``notes`` holds
        ``recall_k`` (the list asked for), ``recall_k_left_out`` (one ``{"k", "direction",
        "reason"}`` per k left out) and ``images_without_texts``.

    Raises:
        MetricError: a k is not a positive integer, an explicit k exceeds a gallery, or the
            rank arrays are malformed.
    """
    t2i = _as_ranks(t2i_ranks, "t2i_ranks")
    i2t = _as_ranks(i2t_ranks, "i2t_ranks")
    n_texts, n_images = t2i.size, i2t.size
    ks = _recall_k_list(recall_k)
    explicit = bool(k_explicit) and recall_k is not None
    if n_texts == 0 or n_images == 0:
        raise MetricError(
            f"cannot score retrieval with {n_texts} texts and {n_images} images",
            "the dataset needs at least one image with one text",
        )
    if t2i.min() < 0 or t2i.max() >= n_images:
        raise MetricError(f"t2i_ranks must lie in [0, {n_images}) (the number of images)")
    if i2t.min() < -1 or i2t.max() >= n_texts:
        raise MetricError(f"i2t_ranks must lie in [-1, {n_texts}) (-1: image without texts)")
    has_text = i2t >= 0
    if not has_text.any():
        raise MetricError("no image has a text; image -> text retrieval cannot be scored")
    i2t = i2t[has_text]

    directions = (
        ("image_retrieval", t2i, n_images, "images"),
        ("text_retrieval", i2t, n_texts, "texts"),
    )
    left_out = []
    too_large = []
    for direction, _, gallery, noun in directions:
        for k in ks:
            if k > gallery:
                reason = f"k={k} is larger than the {gallery} {noun} searched in {direction}"
                (too_large if explicit else left_out).append(
                    {"k": k, "direction": direction, "reason": reason}
                )
    if too_large:
        raise MetricError(
            "recall@k asked for more items than the gallery holds: "
            + "; ".join(item["reason"] for item in too_large),
            f"ask for k <= {min(n_images, n_texts)} or leave recall_k unset to use the default "
            f"{list(DEFAULT_RECALL_K)} (from which too large k are left out)",
        )
    for item in left_out:
        log.info("recall@%d left out of %s: %s", item["k"], item["direction"], item["reason"])

    metrics: dict[str, float] = {}
    for direction, ranks, gallery, _ in directions:
        for k in ks:
            if k <= gallery:
                metrics[f"{direction}_recall@{k}"] = float(np.mean(ranks < k))
    for direction, ranks, _, _ in directions:
        metrics[f"{direction}_mean_rank"] = float(np.mean(ranks + 1.0))
        metrics[f"{direction}_median_rank"] = float(np.median(ranks + 1.0))

    notes = {
        "recall_k": ks,
        "recall_k_left_out": left_out,
        "images_without_texts": int(n_images - has_text.sum()),
    }
    return metrics, notes


def evaluate_retrieval(
    text_emb: np.ndarray,
    image_emb: np.ndarray,
    text_to_image: np.ndarray,
    recall_k: Sequence[int] | None = None,
    k_explicit: bool = False,
    num_threads: int | None = None,
) -> tuple[dict[str, float], dict]:
    """Rank both directions with ``positive_ranks`` and score them with ``retrieval_metrics``.

    ``k`` is checked against the gallery sizes before any ranking work. Invalid embeddings or
    indices raise ``MetricError`` (with the kernel's message).
    """
    metrics, notes, _ = score_retrieval(text_emb, image_emb, text_to_image, recall_k, k_explicit, num_threads)
    return metrics, notes


def score_retrieval(
    text_emb: np.ndarray,
    image_emb: np.ndarray,
    text_to_image: np.ndarray,
    recall_k: Sequence[int] | None = None,
    k_explicit: bool = False,
    num_threads: int | None = None,
) -> tuple[dict[str, float], dict, tuple[np.ndarray, np.ndarray]]:
    """:func:`evaluate_retrieval` that also returns the ranks the metrics were computed from:
    ``(metrics, notes, (t2i_ranks, i2t_ranks))``, the ranks as ``positive_ranks`` returns them
    (int64 ``[T]`` and ``[I]``, 0-based, -1 for an image without texts)."""
    _recall_k_list(recall_k)
    try:
        t2i, i2t = positive_ranks(text_emb, image_emb, text_to_image, num_threads=num_threads)
    except (TypeError, ValueError) as exc:
        raise MetricError(
            f"cannot rank retrieval results: {exc}",
            "pass [texts, dim] and [images, dim] float embeddings and one image index per text",
        ) from exc
    metrics, notes = retrieval_metrics(t2i, i2t, recall_k, k_explicit=k_explicit)
    return metrics, notes, (t2i, i2t)


def _recall_k_list(recall_k) -> list[int]:
    if recall_k is None:
        return list(DEFAULT_RECALL_K)
    if isinstance(recall_k, (str, bytes)) or not isinstance(recall_k, Sequence | np.ndarray):
        raise MetricError(
            f"recall_k must be a list of positive integers, got {recall_k!r}",
            "e.g. recall_k: [1, 5, 10]",
        )
    ks: list[int] = []
    for k in recall_k:
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
            raise MetricError(
                f"recall_k must hold positive integers, got {k!r} in {list(recall_k)!r}",
                "e.g. recall_k: [1, 5, 10]",
            )
        if int(k) not in ks:
            ks.append(int(k))
    if not ks:
        raise MetricError("recall_k is empty", "give at least one k, or leave it unset")
    return ks


def _as_ranks(ranks, name) -> np.ndarray:
    array = np.asarray(ranks)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise MetricError(
            f"{name} must be a 1-D integer array, got {array.dtype} with shape {array.shape}"
        )
    return array.astype(np.int64, copy=False)
