"""Task ``zeroshot_retrieval``: embed a gallery and its captions, rank both ways, score recall@k.

Definitions (CLIP_benchmark's ``zeroshot_retrieval``, README "Metric definitions"): each text has
one positive image; ``image_retrieval_recall@k`` (text -> image) is the share of texts whose
image ranks below k among all gallery images, ``text_retrieval_recall@k`` (image -> text) the
share of images (with a caption) one of whose texts ranks below k among all texts; ties go to the
lower index, so results never depend on thread count or batch size.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..datasets import read_dataset
from ..datasets.base import RetrievalDataset
from ..datasets.leftout import LeftOut
from ..errors import DatasetError, ImageError, MetricError, listing
from ..metrics.retrieval import score_retrieval
from ..results.detail import RetrievalPerQuery, gallery_ids
from .base import Evaluation, TaskMetadata, TaskOutput
from .zeroshot import TaskParams, ZeroShotTask

log = logging.getLogger(__name__)


def run_retrieval(stage, bundle, precision: str, dataset: RetrievalDataset,
                  params: TaskParams) -> tuple[dict, dict, RetrievalPerQuery]:
    """Embed ``dataset`` (gallery images and texts) through the embedding ``stage`` with
    ``bundle`` at ``precision``, rank both ways and score.

    Returns ``(metrics, meta, per-query ranks)``: ``metrics`` maps
    ``image_retrieval_recall@k`` / ``text_retrieval_recall@k`` (fractions in [0, 1]) and the
    1-based ``*_mean_rank`` / ``*_median_rank``; ``meta`` the counts, what was left out, the
    timings in seconds and the cache hit counts (:mod:`clipeval.engine.results.detail` for the
    per-query part). Raises :class:`MetricError` for an asked k larger than the gallery (before
    any model work), :class:`ImageError` for images that cannot be used unless ``on_error`` is
    ``skip``, :class:`DatasetError` when nothing usable is left.
    """
    too_large = [k for k in (params.recall_k or []) if k > min(dataset.num_images, dataset.num_texts)]
    if too_large:  # an explicit k the gallery cannot satisfy: say so before any model work
        raise MetricError(
            f"recall@{too_large[0]} was asked for, but dataset {dataset.name} has only {dataset.num_images} "
            f"image(s) and {dataset.num_texts} text(s)",
            "ask for a smaller --recall-k, or use a larger dataset / --limit",
        )
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    images = stage.images(bundle, precision, dataset.images, batch_size=params.batch_size,
                          fast_decode=params.fast_decode, where=dataset.image_where or None, on_error=params.on_error)
    timings["images_s"] = time.perf_counter() - t0
    if images.failures and params.on_error != "skip":
        raise ImageError(
            f"{len(images.failures)} image(s) could not be used:\n    {listing(images.failures)}",
            "replace or remove these images, or pass --on-error skip to leave them out",
        )
    failed = set(range(dataset.num_images)) - set(images.indices.tolist())
    dataset, undecodable_texts = dataset.drop_images(failed)
    dropped_texts = undecodable_texts + sum(item.texts for item in dataset.skipped)  # and the rows the reader left out
    if dataset.num_images == 0 or dataset.num_texts == 0:
        raise DatasetError(f"no usable {'images' if dataset.num_images == 0 else 'texts'} left in dataset {dataset.name}",
                           "check the skipped items listed above")
    t0 = time.perf_counter()
    texts = stage.texts(bundle, precision, dataset.texts, batch_size=params.batch_size)
    timings["texts_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics, notes, (t2i, i2t) = score_retrieval(texts.embeds, images.embeds, dataset.text_to_image, params.recall_k,
                                                 k_explicit=params.recall_k is not None,
                                                 num_threads=params.num_threads)
    timings["ranking_s"] = time.perf_counter() - t0
    skipped = [it.to_dict() for it in dataset.skipped] + [it.to_dict() for it in images.failures]
    left_out = LeftOut(dataset.left_out)  # what the reader left out, and the images that did not decode
    left_out.add("images", "undecodable", len(images.failures))
    left_out.add("texts", "image_left_out", undecodable_texts)
    meta = {
        "num_images": dataset.num_images,
        "num_texts": dataset.num_texts,
        "data_left_out": left_out.as_dict(),
        "num_skipped_images": len(skipped),
        "skipped": skipped,
        "dropped_texts": dropped_texts,
        "merged_rows": dataset.merged_rows,
        "truncated_texts": texts.truncated,
        "decode": images.decode,
        "timings": timings,
        "cache": {"image_hits": images.cache_hits, "text_hits": texts.cache_hits},
        **notes,
    }
    if dataset.limited_from is not None:
        meta["limited_from_images"] = dataset.limited_from
    per_query = RetrievalPerQuery(texts.embeds, images.embeds, dataset.text_to_image, t2i, i2t, dataset.texts,
                                  gallery_ids(dataset.images))
    return metrics, meta, per_query


class ZeroShotRetrieval(ZeroShotTask):
    metadata = TaskMetadata(
        name="zeroshot_retrieval",
        description="text -> image and image -> text retrieval of a gallery and its captions (recall@k, ranks)",
        reference="CLIP_benchmark clip_benchmark/metrics/zeroshot_retrieval.py; evalscope RAGEval clip_benchmark",
        dataset_kinds=("custom", "karpathy", "webdataset"),
        embeds=("images", "texts"),
        models="image_text",
        main_score="image_retrieval_recall@5",
        default_model="demo",
    )

    def evaluate(self, ev: Evaluation, stage: Any) -> list[TaskOutput]:
        params: TaskParams = ev.settings
        options = params.dataset_options()
        if ev.dataset == "custom":  # headers of images the cache holds as they are now need no probe
            options["known_good"] = stage.known_images(ev.model.bundle, ev.model.precision, params.fast_decode)
        dataset = read_dataset(ev.dataset, ev.data_dir, params.split, params.on_error, **options).limit(params.limit)
        metrics, meta, per_query = run_retrieval(stage, ev.model.bundle, ev.model.precision, dataset, params)
        return [self.with_detail(metrics, meta, per_query, params)]
