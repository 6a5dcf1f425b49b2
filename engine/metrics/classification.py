"""Zero-shot classification metrics, with CLIP_benchmark's key names.

Single-label (``labels`` [N]): from the 0-based rank of each image's label among the class
scores (:func:`clipeval.engine.kernels.topk.label_ranks`, ties to the lower class index):

- ``acc1``, ``acc5``: mean of ``[rank < k]`` (top-k accuracy). ``acc5`` is left out (not NaN,
  as the reference writes it) when there are fewer than 5 classes; the notes say so.
- ``mean_per_class_recall``: the mean over the classes that occur among the labels of the
  fraction of their images predicted right (``rank == 0``). This is balanced accuracy
  (sklearn's ``balanced_accuracy_score``, which the reference calls).

Multi-label (``targets`` [N, C] of 0/1):

- ``mean_average_precision``: the mean over classes with at least one positive image of the
  average precision of that class's column: images sorted by score, descending (ties to the
  lower image index), ``AP = sum over positives of precision at its position / #positives``
  (the torchnet meter the reference uses). Classes without positives are left out of the mean
  (the reference counts them as AP 0) and counted in the notes.
"""

from __future__ import annotations

import numpy as np

from ..errors import MetricError

__all__ = ["single_label_metrics", "rank_metrics", "average_precision", "multilabel_metrics"]


def rank_metrics(ranks: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[dict[str, float], dict]:
    """``acc1``, ``acc5`` and ``mean_per_class_recall`` from label ranks; returns (metrics, notes)."""
    ranks = np.asarray(ranks, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if ranks.size == 0:
        raise MetricError("cannot score classification with no images")
    if ranks.shape != labels.shape:
        raise MetricError(f"ranks {ranks.shape} and labels {labels.shape} differ in shape")
    metrics = {"acc1": float(np.mean(ranks < 1))}
    notes: dict = {"num_classes": int(n_classes)}
    if n_classes >= 5:
        metrics["acc5"] = float(np.mean(ranks < 5))
    else:
        notes["left_out"] = [{"metric": "acc5", "reason": f"only {n_classes} classes"}]
    correct = np.bincount(labels, weights=(ranks == 0).astype(np.float64), minlength=n_classes)
    count = np.bincount(labels, minlength=n_classes)
    present = count > 0
    metrics["mean_per_class_recall"] = float(np.mean(correct[present] / count[present]))
    notes["classes_without_images"] = int((~present).sum())
    return metrics, notes


def single_label_metrics(scores: np.ndarray, labels: np.ndarray, num_threads: int | None = None):
    """:func:`rank_metrics` from a full ``[N, C]`` score matrix."""
    scores = np.asarray(scores)
    from ..kernels.topk import label_ranks  # numba: imported when first needed

    return rank_metrics(label_ranks(scores, labels, num_threads), labels, scores.shape[1])


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """AP of one class: ``scores`` [N], ``positive`` [N] bool; NaN when there is no positive."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hits = np.asarray(positive, dtype=bool)[order]
    n_pos = int(hits.sum())
    if n_pos == 0:
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, hits.size + 1)
    return float(precision[hits].sum() / n_pos)


def multilabel_metrics(scores: np.ndarray, targets: np.ndarray) -> tuple[dict[str, float], dict]:
    scores = np.asarray(scores)
    targets = np.asarray(targets).astype(bool)
    if scores.shape != targets.shape or scores.ndim != 2 or scores.shape[0] == 0:
        raise MetricError(f"scores {scores.shape} and targets {targets.shape} must be the same non-empty [N, C]")
    aps = np.array([average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])])
    have = ~np.isnan(aps)
    if not have.any():
        raise MetricError("no class has a positive image; mean average precision is undefined")
    return ({"mean_average_precision": float(aps[have].mean())},
            {"num_classes": int(scores.shape[1]), "classes_without_positives": int((~have).sum())})
