"""Task ``zeroshot_retrieval``: embed the gallery and its texts, rank both ways, score."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ..embedding.cache import CacheSpace, image_key
from ..datasets import read_dataset
from ..datasets.base import RetrievalDataset
from ..datasets.leftout import LeftOut
from ..embedding.embed import embed_images, embed_texts
from ..errors import DatasetError, ImageError, MetricError, listing
from ..results.detail import RetrievalPerQuery, gallery_ids
from ..metrics.retrieval import score_retrieval
from ..sessions.model import ModelContext

log = logging.getLogger(__name__)


@dataclass
class TaskParams:
    """What every task takes besides the model: the (checked) config values it needs."""

    batch_size: int
    num_workers: int
    recall_k: list[int] | None
    on_error: str
    fast_decode: bool
    num_threads: int | None
    progress: bool
    split: str = "test"
    limit: int | None = None
    language: str | None = None
    dataset_url: str | None = None
    cache_dir: str | None = None
    classnames_file: str | None = None
    templates_file: str | None = None
    decode: str = "auto"  # decode backend (engine/embed.resolve_decode picks for auto)

    def dataset_options(self) -> dict:
        """Options every dataset reader takes (see :func:`clipeval.engine.datasets.read_dataset`)."""
        return {"language": self.language, "dataset_url": self.dataset_url, "cache_dir": self.cache_dir,
                "progress": self.progress, "limit": self.limit}


def run_retrieval(model: ModelContext, dataset: RetrievalDataset,
                  params: TaskParams) -> tuple[dict, dict, RetrievalPerQuery]:
    """Returns ``(metrics, meta, per-query ranks and embeddings)`` (see :mod:`clipeval.engine.results.detail`)."""
    too_large = [k for k in (params.recall_k or []) if k > min(dataset.num_images, dataset.num_texts)]
    if too_large:  # an explicit k the gallery cannot satisfy: say so before any model work
        raise MetricError(
            f"recall@{too_large[0]} was asked for, but dataset {dataset.name} has only {dataset.num_images} "
            f"image(s) and {dataset.num_texts} text(s)",
            "ask for a smaller --recall-k, or use a larger dataset / --limit",
        )
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    images = embed_images(model.vision, model.preprocessor, dataset.images, batch_size=params.batch_size,
                          num_workers=params.num_workers, fast_decode=params.fast_decode, decode=params.decode,
                          where=dataset.image_where or None, progress=params.progress,
                          cache=model.image_cache(params.fast_decode), on_error=params.on_error)
    timings["images_s"] = time.perf_counter() - t0
    if images.failures and params.on_error != "skip":
        raise ImageError(
            f"{len(images.failures)} image(s) could not be used:\n    {listing(images.failures)}",
            "replace or remove these images, or pass --on-error skip to leave them out",
        )
    failed = set(range(dataset.num_images)) - set(images.indices.tolist())
    dataset, dropped_texts = dataset.drop_images(failed)
    dropped_texts += sum(item.texts for item in dataset.skipped)  # rows the reader left out
    if dataset.num_images == 0 or dataset.num_texts == 0:
        raise DatasetError(f"no usable {'images' if dataset.num_images == 0 else 'texts'} left in dataset {dataset.name}",
                           "check the skipped items listed above")
    t0 = time.perf_counter()
    texts = embed_texts(model.text, model.tokenizer, dataset.texts, batch_size=params.batch_size,
                        progress=params.progress, cache=model.text_cache())
    timings["texts_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics, notes, (t2i, i2t) = score_retrieval(texts.embeds, images.embeds, dataset.text_to_image, params.recall_k,
                                                 k_explicit=params.recall_k is not None,
                                                 num_threads=params.num_threads)
    timings["ranking_s"] = time.perf_counter() - t0
    skipped = [it.to_dict() for it in dataset.skipped] + [it.to_dict() for it in images.failures]
    left_out = LeftOut(dataset.left_out)  # what the reader left out, and the images that did not decode
    left_out.add("images", "undecodable", len(images.failures))
    left_out.add("texts", "image_left_out", dropped_texts)
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
        **notes,
    }
    if model.cache is not None:
        meta["cache"] = {"image_hits": images.cache_hits, "text_hits": texts.cache_hits}
    if dataset.limited_from is not None:
        meta["limited_from_images"] = dataset.limited_from
    per_query = RetrievalPerQuery(texts.embeds, images.embeds, dataset.text_to_image, t2i, i2t, dataset.texts,
                                  gallery_ids(dataset.images))
    return metrics, meta, per_query


def retrieval_task(model: ModelContext, dataset_name: str, data_dir: str,
                   params: TaskParams) -> tuple[dict, dict, RetrievalPerQuery]:
    """The registered entry of ``zeroshot_retrieval``: read the dataset, then :func:`run_retrieval`."""
    options = params.dataset_options()
    if dataset_name == "custom":
        options["known_good"] = _cached_images(model.image_cache(params.fast_decode))
    dataset = read_dataset(dataset_name, data_dir, params.split, params.on_error, **options).limit(params.limit)
    return run_retrieval(model, dataset, params)


def _cached_images(space: CacheSpace | None):
    """For the custom reader's pre-check: which image files the embedding cache holds as they are
    now (keyed by path, size and modification time; an image is only stored after it decoded).
    None without a cache, or with ``--verify-cache`` (its keys hash every file: dearer than the
    header probe it would spare)."""
    if space is None or space.verify:
        return None

    def known_good(paths: list[str]) -> set[int]:
        keys = [image_key(p) for p in paths]
        found, _ = space.cache.get_many(space.ns, [k for k in keys if k is not None])
        return {i for i, k in enumerate(keys) if k is not None and k in found}

    return known_good
