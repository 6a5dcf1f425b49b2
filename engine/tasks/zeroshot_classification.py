"""Task ``zeroshot_classification``: class embeddings from templates, then top-k accuracy.

Each class's embedding is the mean of the L2-normalised embeddings of its templates filled
with the class name (``{c}`` replaced), normalised again (CLIP's zero-shot head, as the
reference builds it). All ``classes x templates`` texts go through the text tower once, in
large length-sorted batches, instead of one forward pass per class. Images stream from the
dataset through the decode pipeline; the scores ``image @ classes.T`` are computed in blocks of
rows, so memory is O(block x classes) for single-label sets (a multi-label set keeps its
``[N, C]`` score matrix, which average precision needs).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ..datasets import read_classification_dataset
from ..datasets.leftout import LeftOut
from ..datasets.wds import ClassificationDataset
from ..errors import DatasetError, ImageError, listing
from ..metrics.classification import multilabel_metrics, rank_metrics
from ..results.detail import ClassificationPerQuery, best_true_rank, gallery_ids
from .base import Evaluation, TaskMetadata, TaskOutput
from .zeroshot import TaskParams, ZeroShotTask

log = logging.getLogger(__name__)

TEXT_BATCH = 512
SCORE_BLOCK = 8192


def class_prompts(classnames: list[str], templates) -> tuple[list[str], np.ndarray]:
    """All prompts, class after class, and the offset of each class's first prompt ([C+1]).

    ``templates`` is a list of strings with ``{c}``, or a mapping class name -> its own list of
    finished prompts (CuPL style, as the reference accepts).
    """
    prompts: list[str] = []
    offsets = [0]
    for name in classnames:
        if isinstance(templates, dict):
            prompts.extend(templates[name])
        else:
            prompts.extend(t.replace("{c}", name) for t in templates)
        offsets.append(len(prompts))
    return prompts, np.asarray(offsets, dtype=np.int64)


def average_class_embeddings(prompt_embeds: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Mean of each class's L2-normalised prompt embeddings, L2-normalised again: ``[C, D]``."""
    e = prompt_embeds.astype(np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    sums = np.add.reduceat(e, offsets[:-1], axis=0)
    means = sums / np.diff(offsets)[:, None]
    return (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32)


def class_embeddings(stage, bundle, precision: str, classnames: list[str], templates, *,
                     batch_size: int) -> tuple[np.ndarray, int, int, int]:
    """``([C, D] float32 class embeddings, number of prompts, truncated prompts, prompts from the
    cache)``: every prompt through the embedding stage's text side (cached like any text), then
    :func:`average_class_embeddings`."""
    prompts, offsets = class_prompts(classnames, templates)
    texts = stage.texts(bundle, precision, prompts, batch_size=max(batch_size, TEXT_BATCH), label="class prompts")
    return average_class_embeddings(texts.embeds, offsets), len(prompts), texts.truncated, texts.cache_hits


def run_classification(stage, bundle, precision: str, dataset: ClassificationDataset,
                       params: TaskParams) -> tuple[dict, dict, ClassificationPerQuery]:
    """Zero-shot classification of ``dataset`` with ``bundle`` at ``precision``, through the
    embedding ``stage`` (class prompts and images both served from the cache when it has them).

    The classifier is CLIP's zero-shot head as CLIP_benchmark builds it
    (``clip_benchmark/metrics/zeroshot_classification.py``, ``zero_shot_classifier``): each
    class's embedding is the mean of its L2-normalised prompt embeddings, L2-normalised again
    (``[C, D]`` float32); an image's class scores are its embedding's dot products with them.

    Returns ``(metrics, meta, per-query ranks and predictions)``. Single-label sets: ``acc1``,
    ``acc5`` (left out below 5 classes) and ``mean_per_class_recall``, fractions in [0, 1], from
    the 0-based rank of each image's true class (ties to the lower class index); multi-label sets:
    ``mean_average_precision`` over the classes with a positive image. ``meta``: counts, what was
    left out, timings in seconds, cache hits (``text_hits``: prompts; ``image_hits``).

    Raises :class:`ImageError` for images that cannot be used unless ``on_error`` is ``skip``,
    :class:`DatasetError` when no image is left, :class:`~clipeval.engine.errors.MetricError`
    for labels the metrics cannot use.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    classes, n_prompts, truncated, prompt_hits = class_embeddings(stage, bundle, precision, dataset.classnames,
                                                                  dataset.templates, batch_size=params.batch_size)
    timings["texts_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    images = stage.images(bundle, precision, dataset.images, batch_size=params.batch_size,
                          fast_decode=params.fast_decode, where=None, on_error=params.on_error)
    timings["images_s"] = time.perf_counter() - t0
    if images.failures and params.on_error != "skip":
        raise ImageError(
            f"{len(images.failures)} image(s) could not be used:\n    {listing(images.failures)}",
            "replace the dataset's damaged shards, or pass --on-error skip to leave these images out",
        )
    if len(images.indices) == 0:
        raise DatasetError(f"no usable images left in dataset {dataset.name}", "check the skipped items listed above")
    t0 = time.perf_counter()
    emb = images.embeds
    if dataset.multilabel:
        scores = emb @ classes.T
        targets = dataset.targets[images.indices]
        metrics, notes = multilabel_metrics(scores, targets)
        predicted = np.argmax(scores, axis=1)
        ranks = best_true_rank(scores, targets)
        labels = None
    else:
        from ..kernels.topk import label_ranks  # numba: imported when first needed

        labels = dataset.labels[images.indices]
        ranks = np.empty(len(labels), dtype=np.int64)
        predicted = np.empty(len(labels), dtype=np.int64)
        for start in range(0, len(labels), SCORE_BLOCK):
            block = emb[start:start + SCORE_BLOCK] @ classes.T
            ranks[start:start + SCORE_BLOCK] = label_ranks(block, labels[start:start + SCORE_BLOCK],
                                                           num_threads=params.num_threads)
            predicted[start:start + SCORE_BLOCK] = np.argmax(block, axis=1)  # first maximum: rank 0
        metrics, notes = rank_metrics(ranks, labels, len(dataset.classnames))
    timings["scoring_s"] = time.perf_counter() - t0
    skipped = [it.to_dict() for it in dataset.skipped] + [it.to_dict() for it in images.failures]
    left_out = LeftOut(dataset.left_out)  # what the reader left out, and the images that did not decode
    left_out.add("images", "undecodable", len(images.failures))
    meta = {
        "num_images": int(len(images.indices)),
        "data_left_out": left_out.as_dict(),
        "decode": images.decode,
        "num_templates": len(dataset.templates) if not isinstance(dataset.templates, dict) else None,
        "num_prompts": n_prompts,
        "multilabel": dataset.multilabel,
        "num_skipped_images": len(skipped),
        "skipped": skipped,
        "truncated_texts": truncated,
        "timings": timings,
        "cache": {"image_hits": images.cache_hits, "text_hits": prompt_hits},
        **notes,
    }
    if dataset.limited_from is not None:
        meta["limited_from_images"] = dataset.limited_from
    image_ids = gallery_ids(dataset.images)
    per_query = ClassificationPerQuery(ranks, predicted, labels, [image_ids[i] for i in images.indices],
                                       dataset.classnames)
    return metrics, meta, per_query


class ZeroShotClassification(ZeroShotTask):
    metadata = TaskMetadata(
        name="zeroshot_classification",
        description="zero-shot image classification from class-name prompts (top-k accuracy, mean per-class "
                    "recall, mean average precision)",
        reference="CLIP_benchmark clip_benchmark/metrics/zeroshot_classification.py (zero_shot_classifier, "
                  "accuracy, balanced accuracy, average precision)",
        dataset_kinds=("webdataset",),
        embeds=("images", "class_prompts"),
        models="image_text",
        main_score="acc1",
        default_model="demo",
    )

    def evaluate(self, ev: Evaluation, stage: Any) -> list[TaskOutput]:
        params: TaskParams = ev.settings
        dataset = read_classification_dataset(ev.dataset, ev.data_dir, params.split, params.on_error,
                                              classnames_file=params.classnames_file,
                                              templates_file=params.templates_file, **params.dataset_options())
        metrics, meta, per_query = run_classification(stage, ev.model.bundle, ev.model.precision, dataset, params)
        return [self.with_detail(metrics, meta, per_query, params)]
