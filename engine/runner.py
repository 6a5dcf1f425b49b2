"""Run an evaluation config: every (model, dataset) pair, one result file and one JSON line each."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from .sessions.bundle import Bundle, is_bundle_dir, load_bundle
from .embedding.cache import open_cache
from .config import EvalConfig, parse_task_cfg
from .datasets import default_task
from .results.detail import detail_satisfied, write_detail
from .embedding.embed import resolve_decode
from .demo import DEMO_DATA_DIR, DEMO_MODEL_DIR, DEMO_NAME, is_demo_name
from .errors import BundleError, ConfigError, DatasetError
from .datasets.fingerprint import data_fingerprint
from .fsutil import check_writable_dir
from .results.layout import DEFAULT_LANGUAGE, Slot, destination, find_existing, params_key, result_path, slot_tags, write_result
from .sessions.onnx import default_threads
from .versions import versions
from .tasks import TASKS, TaskParams
from .sessions.model import ModelContext, default_precision, load_model

log = logging.getLogger(__name__)

ModelResolver = Callable[[dict[str, Any], EvalConfig], Bundle]


def is_demo(model: dict[str, Any]) -> bool:
    return is_demo_name(model.get("model_name"))


def resolve_bundle(model: dict[str, Any], cfg: EvalConfig) -> Bundle:
    """Engine-only model resolution: the embedded demo or a bundle directory."""
    name = model.get("model_name")
    if is_demo(model):
        return load_bundle(DEMO_MODEL_DIR, trust_stamp=not getattr(cfg, "verify_cache", False))
    path = Path(os.path.expanduser(str(name)))
    if is_bundle_dir(path):
        return load_bundle(path, trust_stamp=not getattr(cfg, "verify_cache", False))
    if (path / "config.json").is_file():
        raise BundleError(
            f"{path} is a checkpoint, not a model bundle",
            f"export it first: clipeval export {path} -o BUNDLE_DIR (needs pip install 'clipeval[export]')",
        )
    raise BundleError(
        f"model {name!r} is neither a model bundle directory nor a checkpoint directory",
        "pass a folder made by `clipeval export`, or `demo` for the embedded model",
    )


def _data_dir(cfg: EvalConfig, model: dict[str, Any], dataset: str) -> str | None:
    """The data folder (or URL) of a pair; ``None`` for a named dataset to download by name."""
    if cfg.data_dir:
        return cfg.data_dir
    if dataset == "custom" and is_demo(model):
        return str(DEMO_DATA_DIR)
    if dataset != "custom":
        return None
    raise DatasetError(f"dataset {dataset!r} needs a data folder", "pass --data-dir (config key data_dir)")


def _data_key(data_dir: str | None, cfg: EvalConfig) -> str:
    if data_dir is None:
        from .datasets.sources import base_url

        return f"url:{base_url('{name}', cfg.dataset_url)}"
    return data_dir if "://" in data_dir else os.path.abspath(os.path.expanduser(data_dir))


OUTPUT_DIR_WHAT = "output folder (--output-dir / output_dir)"


def iter_results(cfg: EvalConfig, resolve: ModelResolver = resolve_bundle) -> Iterator[dict[str, Any]]:
    """Yield one result object per (model, dataset) pair, writing each result file as it completes.

    The output folder is checked for writability first, before any model or dataset work
    (:func:`~clipeval.engine.fsutil.check_writable_dir`; a :class:`ConfigError` otherwise).
    """
    check_writable_dir(cfg.output_dir, OUTPUT_DIR_WHAT)
    if getattr(cfg, "tool", None) in ("mteb", "cmteb"):  # evalscope's text-retrieval config (config_mteb)
        from .tasks.text_retrieval import mteb_results

        yield from mteb_results(cfg, resolve)
        return
    if cfg.task == "image_caption":  # asks an API; no model bundle to resolve
        from .tasks.image_caption import caption_results

        yield from caption_results(cfg)
        return
    if cfg.task == "text_retrieval":  # a text embedding model on a BEIR folder
        yield from _text_retrieval_results(cfg, resolve)
        return
    models = cfg.models or [{"model_name": DEMO_NAME}]
    tasks = {}
    for dataset in cfg.dataset_name:
        task = cfg.task or default_task(dataset)
        if task not in TASKS:
            raise ConfigError(f"unknown task {task!r}",
                              f"available tasks: {', '.join([*TASKS, 'image_caption', 'text_retrieval'])}")
        tasks[dataset] = task
    workers = cfg.num_workers if cfg.num_workers is not None else default_threads()
    if resolve_decode(cfg.decode, workers) == "processes":
        from .images.decode_procs import prestart

        prestart()  # the decode workers' fork server starts while the model loads
    cache = None if cfg.no_cache else open_cache(cfg.cache_dir, max_bytes=cfg.cache_max_bytes,
                                                 verify=cfg.verify_cache)
    try:
        yield from _iter_models(cfg, resolve, models, tasks, workers, cache)
    finally:
        if cache is not None:
            cache.close()


def _fingerprint(cfg: EvalConfig, dataset_name: str, data_dir: str | None) -> str:
    return data_fingerprint(dataset_name, data_dir, cfg.split, limit=cfg.limit, language=cfg.language,
                            dataset_url=cfg.dataset_url, cache_dir=cfg.cache_dir,
                            classnames_file=cfg.classnames_file, templates_file=cfg.templates_file)


def _iter_models(cfg, resolve, models, tasks, workers, cache) -> Iterator[dict[str, Any]]:
    logged: set[str] = set()  # provider warnings said once per run, not per tower or model
    for model in models:
        bundle = resolve(model, cfg)
        precision = model.get("precision") or cfg.precision or default_precision(bundle, cfg.provider)
        context: ModelContext | None = None
        model_name = bundle.name
        for dataset_name in cfg.dataset_name:
            task = tasks[dataset_name]
            data_dir = _data_dir(cfg, model, dataset_name)
            fingerprint = _fingerprint(cfg, dataset_name, data_dir)
            slot = Slot(bundle=bundle.identity, precision=precision, language=cfg.language or DEFAULT_LANGUAGE,
                        data=_data_key(data_dir, cfg), split=cfg.split)
            params = {"dataset": dataset_name, "task": task, "data_dir": slot.data,
                      "split": cfg.split, "limit": cfg.limit, "recall_k": cfg.recall_k, "on_error": cfg.on_error,
                      "precision": precision, "fast_decode": cfg.fast_decode, "data_fingerprint": fingerprint}
            for extra in ("language", "classnames_file", "templates_file"):  # in the key only when set
                if getattr(cfg, extra):
                    params[extra] = getattr(cfg, extra)
            key = params_key(params)
            primary = result_path(cfg.output_dir, model_name, dataset_name, task,
                                  slot_tags(precision, bundle.manifest["precision"], cfg.language, cfg.split))
            if cfg.skip_existing:
                found = find_existing(primary, slot, key)
                if found is not None and detail_satisfied(found[0], found[1], cfg.detail):
                    log.info("skip_existing: %s already holds this result", found[0])
                    yield found[1]
                    continue
            t_start = time.perf_counter()
            if context is None:
                context = load_model(bundle, provider=cfg.provider, precision=precision, threads=cfg.num_threads,
                                     cache=cache, lazy=True, logged=logged)  # towers open after the data checks
            task_params = TaskParams(batch_size=cfg.batch_size, num_workers=workers, recall_k=cfg.recall_k,
                                     on_error=cfg.on_error, fast_decode=cfg.fast_decode,
                                     decode=cfg.decode,
                                     num_threads=cfg.num_threads, progress=cfg.verbose,
                                     split=cfg.split, limit=cfg.limit, language=cfg.language,
                                     dataset_url=cfg.dataset_url, cache_dir=cfg.cache_dir,
                                     classnames_file=cfg.classnames_file, templates_file=cfg.templates_file)
            metrics, meta, per_query = TASKS[task](context, dataset_name, data_dir, task_params)
            if data_dir is None or "://" in data_dir:  # downloaded during the task: now it can be fingerprinted
                fingerprint = _fingerprint(cfg, dataset_name, data_dir)
                params["data_fingerprint"] = fingerprint
                key = params_key(params)
            meta["timings"] = {"model_load_s": context.model_load_s, **meta["timings"],
                               "total_s": time.perf_counter() - t_start}
            meta.update({
                "bundle": context.describe(),
                "provider": context.provider,
                "precision": context.precision,
                "language": slot.language,
                "batch_size": cfg.batch_size,
                "num_workers": workers,
                "split": cfg.split,
                "limit": cfg.limit,
                "data_dir": slot.data,
                "data_fingerprint": fingerprint,
                "slot_digest": slot.digest,
                "params_key": key,
                "versions": versions("onnxruntime", "numpy", "numba"),
            })
            if context.warnings:
                meta["warnings"] = context.warnings
            meta["cache"] = {"path": str(cache.path), **meta.get("cache", {})} if cache is not None else None
            out = destination(primary, slot)
            meta["result_file"] = str(out)
            meta["detail"] = write_detail(out, per_query, cfg.detail, num_threads=cfg.num_threads)
            result = {"dataset": dataset_name, "model": model_name, "task": task, "metrics": metrics, "meta": meta}
            write_result(out, result)
            log.info("%s", result_line(result))
            log.info("wrote %s", out)
            yield result


def result_line(result: dict[str, Any]) -> str:
    """One human line for a result: ``model on dataset (task): metric value, ...``."""
    metrics = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in result["metrics"].items())
    return f"{result['model']} on {result['dataset']} ({result['task']}): {metrics}"


def _text_retrieval_results(cfg: EvalConfig, resolve: ModelResolver) -> Iterator[dict[str, Any]]:
    """``task: text_retrieval``: each model on the BEIR folder ``data_dir`` (``recall_k`` sets the
    cut-offs of every metric); the dataset name, unless ``custom``, names the result file."""
    from .tasks.text_retrieval import TextRetrievalParams, text_retrieval_task
    from .text.model import load_text_model

    if not cfg.models:
        raise ConfigError("task text_retrieval needs models", "add models: [{model_name: TEXT_BUNDLE_OR_CHECKPOINT}]")
    if not cfg.data_dir:
        raise ConfigError("task text_retrieval needs data_dir", "set data_dir to a BEIR folder (corpus.jsonl, "
                          "queries.jsonl, qrels/)")
    params = TextRetrievalParams(k=cfg.recall_k, batch_size=cfg.batch_size, split=cfg.split,
                                 num_threads=cfg.num_threads, progress=cfg.verbose)
    for model in cfg.models:
        bundle = resolve(model, cfg)
        if bundle.family != "text":
            raise ConfigError(
                f"task text_retrieval needs a text embedding model; {model['model_name']!r} is a {bundle.family} bundle",
                "export a sentence-transformers / BERT-style checkpoint (clipeval text-eval does it on first use)",
            )
        text_model = load_text_model(bundle, provider=cfg.provider, threads=cfg.num_threads)
        for dataset_name in cfg.dataset_name:
            yield text_retrieval_task(text_model, cfg.data_dir, params, output_dir=cfg.output_dir,
                                      dataset_name=None if dataset_name == "custom" else dataset_name,
                                      skip_existing=cfg.skip_existing)


def run_task(task_cfg=None, resolve: ModelResolver | None = None) -> list[dict[str, Any]]:
    """Run a config (evalscope ``task_cfg`` dict, its ``eval`` block, or a JSON/YAML path) and
    return the result objects.

    With ``verbose`` (the default), a caller that configured no logging still sees what the
    reference tool shows: progress, each result line and the file written, on stderr (a handler
    on the ``clipeval`` logger for the duration of the call). A caller's own logging
    configuration is left alone; ``verbose: False`` stays quiet.
    """
    cfg = parse_task_cfg(task_cfg if task_cfg is not None else {})
    with _stderr_logging(getattr(cfg, "verbose", False)):
        return list(iter_results(cfg, resolve or resolve_bundle))


@contextlib.contextmanager
def _stderr_logging(verbose: bool):
    package = logging.getLogger("clipeval")
    if not verbose or package.hasHandlers():
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    level = package.level
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(level)
