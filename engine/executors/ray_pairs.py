"""Several (model, dataset) pairs of one config as concurrent Ray tasks.

With ``executor: ray`` and more than one pair, each pair runs as one Ray task, anywhere in the
cluster, as a local run of that one pair would (:func:`clipeval.engine.runner.iter_results` with
the local executor inside the task; the runner chooses this for an ``eval`` block of more than one
pair whose tasks take CLIP-style models): it reads the dataset, embeds (using the embedding cache of
its node), ranks, and writes its result file (and per-query detail) to ``output_dir``, which
must therefore be a folder every node writes to (shared storage) when the cluster has more than
one machine. Results are identical to a local run's: the same code runs on the same inputs.

* **Models** are resolved once, on the driver (a checkpoint is exported there, once), and reach
  the tasks as bundle packs through the object store (:mod:`.shipping`); a task whose node sees
  the bundle at the driver's path, with the same identity, uses it there (so the result names
  the same path) and fetches the pack only otherwise.
* **Resources.** A pair task takes ``num_threads`` CPUs (default 1, at most the largest node's:
  more are capped, with a warning) and runs its decode workers and onnxruntime threads in them; on a cluster with GPUs (and
  ``provider`` not ``cpu``) it takes one GPU.
* **Paths.** Relative paths in the config are the driver's: each task runs in the driver's
  working directory when its node has that folder (shared storage), so its result names the
  same paths a local run's does; on a node without it, ``output_dir``, ``data_dir``,
  ``cache_dir`` and the class-name and template files are made absolute (as the driver sees them).
* **Downloads.** A named dataset is downloaded by the first task that needs it on each node
  while the others on that node wait (a lock file beside the dataset cache folder), so two
  pairs of one dataset never fetch the same files at once.
* **Names.** Pairs that write under the same name (two bundles of one name on one dataset) run
  one after the other, in config order, so each picks its result file as a local run does
  (:func:`~clipeval.engine.results.layout.destination`); the others run at once.
* **Order and faults.** Results are yielded in the config's order (model after model, dataset
  after dataset, as a local run yields them) as soon as each and those before it are done; the
  pairs' progress is one bar on the driver. A task whose worker or node dies is run again by
  Ray (:data:`RETRIES` more times). Pairs that fail do not stop the others: every pair runs,
  the results of those that finished are yielded (and their files written), then one error
  names each pair that failed and why.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Callable, Iterator

from ..sessions.bundle import Bundle, load_bundle
from ..config import EvalConfig
from ..errors import BundleError, ClipevalError, ClusterError
from ..progress import Progress
from .ray_cluster import cap_threads, first_line, node_cpus, root_cause
from .shipping import pack_bundle, unpack_bundle

log = logging.getLogger(__name__)

RETRIES = 3
PATH_KEYS = ("output_dir", "cache_dir", "classnames_file", "templates_file")
LOCK_SUFFIX = ".lock"


def _absolute(cfg: EvalConfig) -> dict[str, Any]:
    """The config's relative paths made absolute (data_dir unless it is a URL)."""
    update = {k: os.path.abspath(os.path.expanduser(getattr(cfg, k))) for k in PATH_KEYS if getattr(cfg, k)}
    if cfg.data_dir and "://" not in cfg.data_dir:
        update["data_dir"] = os.path.abspath(os.path.expanduser(cfg.data_dir))
    return update


@contextlib.contextmanager
def _in_folder(folder: str | None):
    old = os.getcwd()
    moved = False
    if folder and os.path.isdir(folder):
        os.chdir(folder)
        moved = True
    try:
        yield
    finally:
        if moved:
            os.chdir(old)


@contextlib.contextmanager
def _download_lock(cfg: EvalConfig, dataset: str):
    """Holds, for a named dataset that is downloaded (no local ``data_dir``), an exclusive lock on
    ``{its cache folder}.lock`` while the dataset is fetched into this node's cache; the block
    runs after it (everything is then fresh in the cache, and no request is made again)."""
    if dataset == "custom" or (cfg.data_dir and "://" not in cfg.data_dir):
        yield
        return
    import fcntl

    from ..datasets import default_task
    from ..datasets.named import wds_name
    from ..datasets.sources import base_url, cache_folder, dataset_root

    name = wds_name(dataset)
    url = cfg.data_dir.rstrip("/") if cfg.data_dir else base_url(name, cfg.dataset_url)
    folder = cache_folder(name, url, cfg.cache_dir)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{folder}{LOCK_SUFFIX}", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            task = cfg.task or default_task(dataset)
            dataset_root(name, cfg.data_dir, cfg.split, dataset_url=cfg.dataset_url, cache_dir=cfg.cache_dir,
                         progress=False, need_classes=task == "zeroshot_classification")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    yield


def _task_bundle(holder: list, path: str, identity: str) -> Bundle:
    """The bundle for a pair task: at the driver's ``path`` when it holds the same identity on
    this node (verified as any load is), else unpacked from the pack (verified)."""
    import ray

    try:
        bundle = load_bundle(path)
        if bundle.identity == identity:
            return bundle
    except BundleError:
        pass
    return unpack_bundle(ray.get(holder[0]))


def run_pair(holder: list, bundle_path: str, identity: str, cfg: EvalConfig, cwd: str,
             absolute: dict[str, Any], after: list | None = None) -> list[dict[str, Any]]:
    """The body of a pair task: the local run of ``cfg`` (one model, one dataset) with the
    shipped bundle, in the driver's working directory ``cwd`` (with the config's paths made
    ``absolute`` when this node has no such folder); returns its result objects (one).
    ``after``: the tasks of pairs whose result files could take the same name (the same model
    name on the same dataset); this one starts when they have ended (however they ended), so it
    sees their files and picks its name as a local run would."""
    from ..runner import iter_results

    if after:
        import ray

        ray.wait(after, num_returns=len(after))

    if not os.path.isdir(cwd):
        cfg = cfg.model_copy(update=absolute)
    with _in_folder(cwd):
        bundle = _task_bundle(holder, bundle_path, identity)
        with _download_lock(cfg, cfg.dataset_name[0]):
            return list(iter_results(cfg, lambda _model, _cfg, kind="image_text": bundle))


def _resources(ray, cfg: EvalConfig) -> dict[str, Any]:
    resources = ray.cluster_resources()
    if int(resources.get("GPU", 0)) and cfg.provider != "cpu":
        return {"num_cpus": 1, "num_gpus": 1}
    threads, capped = cap_threads(cfg.num_threads, max(node_cpus(ray)), 1, "pair task")
    if capped:
        log.warning("%s", capped)
    return {"num_cpus": threads}


def task_threads(cfg: EvalConfig, resources: dict[str, Any]) -> int:
    """The onnxruntime / ranking threads of a pair task that holds ``resources``
    (:func:`_resources`): on CPUs, the CPUs it reserves (``num_threads`` capped at the largest
    node's CPUs, as the task is); with a GPU, ``num_threads`` (default 1)."""
    if resources.get("num_gpus"):
        return cfg.num_threads or resources["num_cpus"]
    return resources["num_cpus"]


def pair_results(cfg: EvalConfig, resolve: Callable[[dict, EvalConfig], Bundle],
                 models: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Run every (model, dataset) pair of ``cfg`` as a Ray task on the cluster this process is
    connected to; yields the result objects in config order (see the module docstring).

    Raises the error of a failed pair as itself (a ``ClipevalError`` raised in the task), or one
    :class:`ClusterError` that names each failed pair when several failed or a task kept dying.
    """
    import ray

    absolute = _absolute(cfg)
    resources = _resources(ray, cfg)
    threads = resources["num_cpus"]
    remote = ray.remote(max_retries=RETRIES, **resources)(run_pair)
    cwd = os.getcwd()
    jobs = []  # (label, ref)
    named: dict[tuple[str, str], list] = {}  # (model name, dataset) -> its tasks so far
    for model in models:
        bundle = resolve(model, cfg)
        holder = [ray.put(pack_bundle(bundle))]
        for dataset in cfg.dataset_name:
            sub = cfg.model_copy(update={
                "models": [model], "dataset_name": [dataset], "executor": "local", "verbose": False,
                "num_threads": task_threads(cfg, resources), "num_workers": cfg.num_workers if cfg.num_workers is not None
                else threads})
            earlier = named.setdefault((bundle.name, dataset), [])
            ref = remote.remote(holder, str(bundle.path), bundle.identity, sub, cwd, absolute, list(earlier))
            earlier.append(ref)
            jobs.append(((bundle.name, str(bundle.path), dataset), ref))
    jobs = [(label, ref) for label, (_, ref) in zip(pair_labels([key for key, _ in jobs]), jobs)]
    log.info("running %d (model, dataset) pairs as Ray tasks", len(jobs))
    outcomes: dict[int, Any] = {}
    index = {ref: i for i, (_, ref) in enumerate(jobs)}
    pending = [ref for _, ref in jobs]
    failures: list[tuple[str, BaseException]] = []
    nxt = 0
    with Progress("pairs", len(jobs), unit="pair", enabled=cfg.verbose) as bar:
        while pending or nxt < len(jobs):
            if pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    try:
                        outcomes[index[ref]] = ray.get(ref)
                    except KeyboardInterrupt:
                        raise
                    except Exception as exc:  # noqa: BLE001 - Ray's wrappers: unwrapped below
                        outcomes[index[ref]] = _unwrap(exc)
                    bar.update(1)
            while nxt < len(jobs) and nxt in outcomes:
                outcome = outcomes[nxt]
                if isinstance(outcome, BaseException):
                    failures.append((jobs[nxt][0], outcome))
                else:
                    yield from outcome
                nxt += 1
    if len(failures) == 1 and isinstance(failures[0][1], ClipevalError):
        raise failures[0][1]
    if failures:
        lines = [(label, str(exc).replace("\n", " ")) for label, exc in failures]
        raise ClusterError(f"{len(failures)} of {len(jobs)} pairs failed:\n    " +
                           "\n    ".join(f"{label}: {text}" for label, text in lines),
                           "fix what each line says and run again (--skip-existing keeps the finished pairs)")


def pair_labels(pairs: list[tuple[str, str, str]]) -> list[str]:
    """``MODEL on DATASET`` for each ``(bundle name, bundle path, dataset)``, the path added
    (``MODEL (PATH) on DATASET``) where two bundles of one name would read the same."""
    paths: dict[str, set[str]] = {}
    for name, path, _ in pairs:
        paths.setdefault(name, set()).add(path)
    return [f"{name} ({path}) on {dataset}" if len(paths[name]) > 1 else f"{name} on {dataset}"
            for name, path, dataset in pairs]


def _unwrap(exc: BaseException) -> BaseException:
    cause = root_cause(exc)
    if isinstance(cause, ClipevalError):
        return type(cause)(cause.message, cause.remedy)
    return ClusterError(f"its Ray task failed {RETRIES + 1} times: {first_line(cause)}",
                        "see the Ray logs of each node (/tmp/ray/session_latest/logs)")
