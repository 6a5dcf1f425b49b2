"""Run a config: every evaluation it asks for, one result file and one JSON line each.

The runner names no task. It asks the config what to run (:func:`plan`: the tasks, through the
registry :data:`clipeval.engine.tasks.TASKS`), lets each task check the config, opens one
embedding stage for the whole run (:mod:`clipeval.engine.embedding`: the cache and the
executor the config names, ``local`` or ``ray``; models are loaded once, on their first cache
miss), and runs each evaluation the same way (:func:`run_evaluation`): find a finished result
(``skip_existing``), else evaluate, then name the result file, build its ``meta`` and write it
(:mod:`clipeval.engine.results.layout`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from .config import parse_task_cfg
from .datasets import default_task
from .demo import DEMO_MODEL_DIR, is_demo_name
from .embedding.cache import open_cache
from .embedding.local import LocalExecutor
from .embedding.stage import EmbeddingStage
from .errors import BundleError
from .fsutil import check_writable_dir
from .results.layout import (
    destination,
    find_existing,
    params_key,
    primary_path,
    result_meta,
    say_destination,
    slot_of,
    write_result,
)
from .sessions.bundle import Bundle, is_bundle_dir, load_bundle
from .tasks import Evaluation, Models, Task, get_task

log = logging.getLogger(__name__)

ModelResolver = Callable[..., Bundle]
OUTPUT_DIR_WHAT = "output folder (--output-dir / output_dir)"


def is_demo(model: Any) -> bool:
    return isinstance(model, dict) and is_demo_name(model.get("model_name"))


def resolve_bundle(model: Any, cfg: Any, kind: str = "image_text") -> Bundle:
    """Engine-only model resolution: the embedded demo or a bundle directory (the CLI's resolver,
    :func:`clipeval.export.resolve.resolve_model`, also exports checkpoints on first use).
    ``model``: a config's model entry (``{"model_name": ...}``, or an mteb entry);
    ``kind``: ``image_text``, ``text`` or ``reranker`` (what the task takes). Raises
    :class:`BundleError` for anything else."""
    name = model.get("model_name") if isinstance(model, dict) else getattr(model, "model_name_or_path", None)
    trust = not getattr(cfg, "verify_cache", False)
    if is_demo_name(name):
        return load_bundle(DEMO_MODEL_DIR, trust_stamp=trust)
    path = Path(os.path.expanduser(str(name)))
    if is_bundle_dir(path):
        return load_bundle(path, trust_stamp=trust)
    if (path / "config.json").is_file():
        raise BundleError(
            f"{path} is a checkpoint, not a model bundle",
            f"export it first: clipeval export {path} -o BUNDLE_DIR (needs pip install 'clipeval[export]')",
        )
    raise BundleError(
        f"model {name!r} is neither a model bundle directory nor a checkpoint directory",
        "pass a folder made by `clipeval export`, or `demo` for the embedded model",
    )


def plan(cfg: Any) -> list[tuple[Task, str | None]]:
    """What ``cfg`` asks for, through the registry: ``(task, dataset)`` in the order of its
    datasets (``dataset`` ``None`` for a config written for one task alone, whose
    ``task_name`` names it: the mteb form, ``clipeval text-eval``). A dataset's task is the
    config's ``task``, else the dataset's own. Raises :class:`ConfigError` naming the tasks or
    datasets there are for one that is not."""
    own = getattr(cfg, "task_name", None)
    if own is not None:
        return [(get_task(own), None)]
    return [(get_task(cfg.task or default_task(dataset)), dataset) for dataset in cfg.dataset_name]


def open_stage(cfg: Any) -> EmbeddingStage:
    """The run's embedding stage: the embedding cache (unless ``no_cache``; a cache that cannot be
    opened is a warning, and the run goes on without it) and the executor ``cfg.executor`` names:
    ``local`` (``provider``, ``num_threads``, ``num_workers``, ``decode``; a process decoder's
    fork server starts now) or ``ray`` (:class:`~clipeval.engine.executors.ray_embed.RayExecutor`,
    on the Ray cluster this process is connected to: :func:`iter_results` connects first)."""
    cache = None if getattr(cfg, "no_cache", False) else open_cache(
        getattr(cfg, "cache_dir", None), max_bytes=getattr(cfg, "cache_max_bytes", None),
        verify=getattr(cfg, "verify_cache", False))
    if getattr(cfg, "executor", "local") == "ray":
        from .executors.ray_embed import RayExecutor, unused_options

        unused = unused_options(getattr(cfg, "num_workers", None), getattr(cfg, "decode", "auto"))
        if unused:
            log.warning("%s", unused)
        executor = RayExecutor(provider=getattr(cfg, "provider", "auto"), threads=getattr(cfg, "num_threads", None))
    else:
        executor = LocalExecutor(provider=getattr(cfg, "provider", "auto"), threads=getattr(cfg, "num_threads", None),
                                 num_workers=getattr(cfg, "num_workers", None), decode=getattr(cfg, "decode", "auto"),
                                 prestart=True)
    return EmbeddingStage(executor, cache, progress=getattr(cfg, "verbose", True))


def iter_results(cfg: Any, resolve: ModelResolver = resolve_bundle) -> Iterator[dict[str, Any]]:
    """Yield one result object per result file, writing each file as it completes.

    The output folder is checked for writability first, before any model or dataset work
    (:func:`~clipeval.engine.fsutil.check_writable_dir`; a :class:`ConfigError` otherwise); then
    every task the config asks for checks it (:meth:`~clipeval.engine.tasks.base.Task.check`).

    With ``executor: ray`` the run connects to its Ray cluster first (``ray_address``,
    :func:`~clipeval.engine.executors.ray_cluster.connected`; a :class:`ConfigError` naming
    ``pip install 'clipeval[ray]'`` without Ray). Several (model, dataset) pairs of CLIP-style
    models then run as concurrent Ray tasks, each a local run of its pair
    (:func:`~clipeval.engine.executors.ray_pairs.pair_results`); otherwise the evaluations run
    here, in order, and the embedding stage computes on the cluster.
    """
    what = getattr(cfg, "output_what", OUTPUT_DIR_WHAT)  # the key the config's form names it by
    output_dir = check_writable_dir(cfg.output_dir, what)  # `~` expanded: the folder checked is the one used
    pairs = plan(cfg)
    for task in dict.fromkeys(task for task, _ in pairs):
        task.check(cfg)
    if getattr(cfg, "executor", "local") == "ray":
        from .executors.ray_cluster import connected

        with connected(getattr(cfg, "ray_address", None)):
            entries = _pair_entries(cfg, pairs)
            if entries is not None:
                from .executors.ray_pairs import pair_results

                yield from pair_results(cfg, resolve, entries)
                return
            yield from _run(cfg, pairs, resolve, output_dir, what)
        return
    if getattr(cfg, "ray_address", None):
        log.warning("--ray-address %s (config ray_address) is not used: this run is local; add --executor ray "
                    "(config executor: ray) to run it on that cluster", cfg.ray_address)
    yield from _run(cfg, pairs, resolve, output_dir, what)


def _pair_entries(cfg: Any, pairs: list[tuple[Task, str | None]]) -> list[Any] | None:
    """The model entries when ``cfg`` is an ``eval`` block of more than one (model, dataset) pair,
    every task of which takes CLIP-style models (they run as Ray tasks); else ``None``."""
    if pairs[0][1] is None or any(task.metadata.models != "image_text" for task, _ in pairs):
        return None
    entries = pairs[0][0].model_entries(cfg)
    return entries if len(entries) * len(pairs) > 1 else None


def _run(cfg: Any, pairs: list[tuple[Task, str | None]], resolve: ModelResolver, output_dir: str,
         what: str) -> Iterator[dict[str, Any]]:
    """Every evaluation of ``cfg`` here, in order, with one embedding stage for the run, into
    ``output_dir`` (checked already; ``what`` names it in messages)."""
    models = Models(resolve, cfg)
    stage = open_stage(cfg) if any(task.metadata.embeds for task, _ in pairs) else None
    try:
        for ev in _evaluations(cfg, pairs, models):
            yield from run_evaluation(ev, stage, output_dir, what)
    finally:
        if stage is not None:
            stage.close()
            if stage.cache is not None:
                stage.cache.close()


def _evaluations(cfg: Any, pairs: list[tuple[Task, str | None]], models: Models) -> Iterator[Evaluation]:
    """Every model on every dataset, in the config's order (a config of one task's own form
    lists its evaluations itself)."""
    if pairs[0][1] is None:
        yield from pairs[0][0].config_evaluations(cfg, models)
        return
    for entry in pairs[0][0].model_entries(cfg):
        for task, dataset in pairs:
            yield from task.evaluations(cfg, entry, dataset, models)


def run_evaluation(ev: Evaluation, stage: EmbeddingStage | None, output_dir: str | os.PathLike,
                   output_what: str = OUTPUT_DIR_WHAT) -> Iterator[dict[str, Any]]:
    """Run one evaluation and write its result files; yields their result objects.

    The same for every task: the slot and readable name of each result, the skip key (the task's
    parameters and the data fingerprint), ``skip_existing`` (a finished result of the same slot
    and key, whole, is yielded as it is), the task's :meth:`~clipeval.engine.tasks.base.Task.evaluate`,
    then the ``meta`` block, the files beside each result and the atomic write."""
    task = ev.task
    output_dir = os.path.expanduser(os.fspath(output_dir))  # as check_writable_dir checked it
    slots = [slot_of(ev, spec) for spec in ev.results]
    primaries = [primary_path(output_dir, ev, spec) for spec in ev.results]
    fingerprint = task.fingerprint(ev)
    key = params_key({**ev.params, "data_fingerprint": fingerprint})
    if ev.skip_existing:
        found = [find_existing(primary, slot, key) for primary, slot in zip(primaries, slots)]
        if all(f is not None for f in found) and all(task.complete(path, result, ev) for path, result in found):
            log.info("skip_existing: %s already hold%s this result", ", ".join(str(path) for path, _ in found),
                     "s" if len(found) == 1 else "")
            for _, result in found:
                yield result
            return
    t_start = time.perf_counter()
    ev.targets = [destination(primary, slot, say=False, side_files=task.side_files)
                  for primary, slot in zip(primaries, slots)]
    for folder in dict.fromkeys(target.parent for target in ev.targets):  # before the model work
        check_writable_dir(folder, output_what)
    outputs = task.evaluate(ev, stage)
    if ev.downloaded:  # fetched during the evaluation: now it can be fingerprinted
        fingerprint = task.fingerprint(ev)
        key = params_key({**ev.params, "data_fingerprint": fingerprint})
    total_s = time.perf_counter() - t_start
    cache_path = str(stage.cache.path) if stage is not None and stage.cache is not None else None
    for out, spec, slot, primary, target in zip(outputs, ev.results, slots, primaries, ev.targets):
        say_destination(primary, slot, target, task.side_files)
        meta = result_meta(ev, spec, out.meta, slot=slot, key=key, fingerprint=fingerprint, result_file=target,
                           stage=stage, cache_path=cache_path, total_s=total_s)
        if out.write_beside is not None:
            out.write_beside(target, meta)
        result = {"dataset": ev.dataset, "model": spec.name, "task": task.name, "metrics": out.metrics, "meta": meta}
        write_result(target, result)
        log.info("%s", result_line(result))
        log.info("wrote %s", target)
        yield result


def result_line(result: dict[str, Any]) -> str:
    """One human line for a result: ``model on dataset (task): metric value, ...``."""
    metrics = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in result["metrics"].items())
    return f"{result['model']} on {result['dataset']} ({result['task']}): {metrics}"


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
