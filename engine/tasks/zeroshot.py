"""What the two zero-shot tasks share: a CLIP-style bundle on a dataset of the registry
(:data:`clipeval.engine.datasets.DATASETS`), its evaluation built from an ``eval`` block, the
data location of its slot and the data fingerprint of its skip key, and the per-query detail
written beside its result."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..datasets.fingerprint import data_fingerprint, rows_found_in_cwd
from ..demo import DEMO_DATA_DIR, DEMO_NAME, is_demo_name
from ..embedding.models import describe_bundle
from ..errors import DatasetError
from ..results.detail import detail_path, detail_satisfied, write_detail
from ..sessions.model import default_precision
from ..sessions.onnx import default_threads
from .base import Evaluation, ModelRef, Models, ResultSpec, Task, TaskOutput, data_key


@dataclass
class TaskParams:
    """What a zero-shot task takes besides the model: the (checked) config values it needs.

    ``batch_size``: images (and texts) per tower call; ``recall_k``: the k of recall@k (``None``:
    1, 5, 10, those larger than the gallery left out); ``on_error``: ``fail`` or ``skip`` for
    images that cannot be used; ``fast_decode``: JPEG DCT scaling; ``num_threads``: ranking
    threads; ``progress``: bars on stderr; ``split``, ``limit`` (first N gallery images),
    ``language``, ``dataset_url``, ``cache_dir``, ``classnames_file``, ``templates_file``: what the
    dataset readers take (:func:`clipeval.engine.datasets.read_dataset`)."""

    batch_size: int
    recall_k: list[int] | None
    on_error: str
    fast_decode: bool = False
    num_threads: int | None = None
    progress: bool = True
    split: str = "test"
    limit: int | None = None
    language: str | None = None
    dataset_url: str | None = None
    cache_dir: str | None = None
    classnames_file: str | None = None
    templates_file: str | None = None
    detail: str = "auto"

    def dataset_options(self) -> dict:
        """Options every dataset reader takes (see :func:`clipeval.engine.datasets.read_dataset`)."""
        return {"language": self.language, "dataset_url": self.dataset_url, "cache_dir": self.cache_dir,
                "progress": self.progress, "limit": self.limit}


def data_location(cfg: Any, entry: dict[str, Any], dataset: str) -> str | None:
    """The data folder (or URL) of a pair; ``None`` for a named dataset to download by name (the
    demo model with ``custom`` and no ``data_dir`` reads the demo dataset)."""
    if cfg.data_dir:
        return cfg.data_dir
    if dataset == "custom" and is_demo_name(entry.get("model_name")):
        return str(DEMO_DATA_DIR)
    if dataset != "custom":
        return None
    raise DatasetError(f"dataset {dataset!r} needs a data folder", "pass --data-dir (config key data_dir)")


class ZeroShotTask(Task):
    """The base of ``zeroshot_retrieval`` and ``zeroshot_classification``."""

    def model_entries(self, cfg: Any) -> list[Any]:
        return list(cfg.models) or [{"model_name": DEMO_NAME}]

    def evaluations(self, cfg: Any, entry: Any, dataset: str, models: Models) -> list[Evaluation]:
        bundle = models.bundle(entry, "image_text")
        precision = entry.get("precision") or cfg.precision or default_precision(bundle, cfg.provider)
        model = ModelRef(name=bundle.name, identity=bundle.identity, describe=describe_bundle(bundle), bundle=bundle,
                         precision=precision, own_precision=bundle.manifest["precision"], entry=entry)
        data_dir = data_location(cfg, entry, dataset)
        key = data_key(data_dir, cfg.dataset_url)
        if dataset == "custom" and data_dir is not None and "://" not in str(data_dir):
            if rows_found_in_cwd(Path(key)):  # images named relative to where the run starts: part of the place
                key = f"{key} (images relative to {os.getcwd()})"
        params = {"dataset": dataset, "task": self.name, "data_dir": key, "split": cfg.split, "limit": cfg.limit,
                  "recall_k": cfg.recall_k, "on_error": cfg.on_error, "precision": precision,
                  "fast_decode": cfg.fast_decode}
        for extra in ("language", "classnames_file", "templates_file"):  # in the key only when set
            if getattr(cfg, extra):
                params[extra] = getattr(cfg, extra)
        settings = TaskParams(batch_size=cfg.batch_size, recall_k=cfg.recall_k, on_error=cfg.on_error,
                              fast_decode=cfg.fast_decode, num_threads=cfg.num_threads, progress=cfg.verbose,
                              split=cfg.split, limit=cfg.limit, language=cfg.language, dataset_url=cfg.dataset_url,
                              cache_dir=cfg.cache_dir, classnames_file=cfg.classnames_file,
                              templates_file=cfg.templates_file, detail=cfg.detail)
        return [Evaluation(task=self, model=model, dataset=dataset, data_dir=data_dir, data_key=key, split=cfg.split,
                           params=params, settings=settings, results=[ResultSpec(bundle.name)],
                           language=cfg.language, limit=cfg.limit, skip_existing=cfg.skip_existing,
                           options={"batch_size": cfg.batch_size, "num_workers": cfg.num_workers if cfg.num_workers is not None else default_threads()})]

    def fingerprint(self, ev: Evaluation) -> str | None:
        s: TaskParams = ev.settings
        return data_fingerprint(ev.dataset, ev.data_dir, s.split, limit=s.limit, language=s.language,
                                dataset_url=s.dataset_url, cache_dir=s.cache_dir,
                                classnames_file=s.classnames_file, templates_file=s.templates_file)

    def complete(self, path: Path, result: dict[str, Any], ev: Evaluation) -> bool:
        return detail_satisfied(path, result, ev.settings.detail)

    def side_files(self, result_file: Path) -> list[Path]:
        return [detail_path(result_file)]

    @staticmethod
    def with_detail(metrics: dict, meta: dict, per_query, settings: TaskParams) -> TaskOutput:
        """The output, with the per-query detail written beside the result (``meta.detail``)."""

        def write(result_file: Path, out_meta: dict) -> None:
            out_meta["detail"] = write_detail(result_file, per_query, settings.detail, num_threads=settings.num_threads)

        return TaskOutput(metrics, meta, write)
