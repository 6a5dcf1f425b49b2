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

import numpy as np

from ..metrics.classification import multilabel_metrics, rank_metrics
from ..datasets import read_classification_dataset
from ..datasets.leftout import LeftOut
from ..datasets.wds import ClassificationDataset
from ..results.detail import ClassificationPerQuery, best_true_rank, gallery_ids
from ..embedding.embed import embed_images, embed_texts
from ..errors import DatasetError, ImageError, listing
from ..sessions.model import ModelContext
from .zeroshot_retrieval import TaskParams

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


def class_embeddings(model: ModelContext, classnames: list[str], templates, *, batch_size: int,
                     progress: bool) -> tuple[np.ndarray, int, int]:
    """``([C, D] class embeddings, number of prompts, truncated prompts)``."""
    prompts, offsets = class_prompts(classnames, templates)
    texts = embed_texts(model.text, model.tokenizer, prompts, batch_size=max(batch_size, TEXT_BATCH), progress=progress)
    return average_class_embeddings(texts.embeds, offsets), len(prompts), texts.truncated


def run_classification(model: ModelContext, dataset: ClassificationDataset,
                       params: TaskParams) -> tuple[dict, dict, ClassificationPerQuery]:
    """Returns ``(metrics, meta, per-query ranks and predictions)`` (see :mod:`clipeval.engine.results.detail`)."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    classes, n_prompts, truncated = class_embeddings(model, dataset.classnames, dataset.templates,
                                                     batch_size=params.batch_size, progress=params.progress)
    timings["texts_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    images = embed_images(model.vision, model.preprocessor, dataset.images, batch_size=params.batch_size,
                          num_workers=params.num_workers, fast_decode=params.fast_decode, decode=params.decode, where=None,
                          progress=params.progress, on_error=params.on_error)
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
        "language": params.language or "en",
        "num_skipped_images": len(skipped),
        "skipped": skipped,
        "truncated_texts": truncated,
        "timings": timings,
        **notes,
    }
    if dataset.limited_from is not None:
        meta["limited_from_images"] = dataset.limited_from
    image_ids = gallery_ids(dataset.images)
    per_query = ClassificationPerQuery(ranks, predicted, labels, [image_ids[i] for i in images.indices],
                                       dataset.classnames)
    return metrics, meta, per_query


def classification_task(model: ModelContext, dataset_name: str, data_dir,
                        params: TaskParams) -> tuple[dict, dict, ClassificationPerQuery]:
    """The registered entry of ``zeroshot_classification``: read the dataset, then :func:`run_classification`."""
    dataset = read_classification_dataset(dataset_name, data_dir, params.split, params.on_error,
                                          classnames_file=params.classnames_file,
                                          templates_file=params.templates_file, **params.dataset_options())
    return run_classification(model, dataset, params)
