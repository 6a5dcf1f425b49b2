"""Commands of the ``clipeval`` CLI."""

from __future__ import annotations

import click

from .main import (
    batch_option,
    cli,
    decode_option,
    emit,
    output_option,
    provider_option,
    setup_logging,
    threads_option,
    verbosity_option,
)


def _run_config(cfg) -> None:
    from clipeval.engine.runner import iter_results
    from clipeval.export.resolve import resolve_model

    for result in iter_results(cfg, resolve_model):
        emit(result)


def _named_dataset_options(f):
    """Options of the named datasets (docs/datasets.md); they reach the config as they are named."""
    options = [
        click.option("--language", default=None, metavar="en|zh",
                     help="Language of captions / class names (zh; cn is accepted). Default: en."),
        click.option("--dataset-url", default=None, metavar="URL",
                     help="Base URL to download named datasets from ({name} is replaced by the dataset name). "
                          "Default: $CLIPEVAL_DATASET_URL, else ModelScope clip-benchmark/wds_{name}."),
        click.option("--cache-dir", default=None, metavar="DIR",
                     help="Cache root (models/, embeddings/, datasets/). Default: $CLIPEVAL_CACHE_DIR, else ~/.cache/clipeval."),
        click.option("--classnames-file", default=None, metavar="FILE",
                     help="Class names for zero-shot classification (one per line, or JSON keyed by dataset)."),
        click.option("--templates-file", default=None, metavar="FILE",
                     help="Templates with {c} for zero-shot classification (one per line, or JSON keyed by dataset)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _cache_options(f):
    """Embedding-cache options (engine/cache.py; ``clipeval cache info|clear`` manages it)."""
    f = click.option("--verify-cache", is_flag=True,
                     help="Key cached image embeddings by the sha256 of each file's content instead of its path, "
                          "size and modification time, and re-hash every bundle file.")(f)
    return click.option("--no-cache", is_flag=True,
                        help="Neither read nor write the embedding cache (CACHE_ROOT/embeddings).")(f)


def _executor_options(f):
    """Where the work runs (engine/executors/, docs/scale.md)."""
    f = click.option("--ray-address", default=None, metavar="auto|HOST:PORT|ray://HOST:PORT",
                     help="The Ray cluster for --executor ray: auto (a running cluster), a head node's address, "
                          "or a Ray Client address. Default: $RAY_ADDRESS, else a Ray instance started on this "
                          "machine for the run.")(f)
    return click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                        help="local: this process. ray: a Ray cluster (pip install 'clipeval[ray]'); the embedding "
                             "stage runs as a Ray Dataset, several (model, dataset) pairs as Ray tasks.")(f)


@cli.command("eval")
@click.option("--model", "models", multiple=True, metavar="BUNDLE|CHECKPOINT|demo",
              help="Model bundle directory, checkpoint directory or hub id (repeatable). Default: the embedded demo model.")
@click.option("--dataset", "datasets", multiple=True, metavar="NAME",
              help="Dataset name (repeatable). Default: custom.")
@click.option("--data-dir", default=None, help="Dataset folder (for custom: the folder holding image_queries.jsonl).")
@click.option("--split", default="test", show_default=True,
              help="Dataset split of a named set (a custom folder has only test).")
@click.option("--task", default=None, help="Task (default: the dataset's own).")
@output_option
@batch_option
@click.option("--num-workers", type=click.IntRange(min=0), default=None,
              help="Image decode workers (default: all cores; 0 decodes inline).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use exactly the first N gallery images.")
@click.option("--recall-k", "recall_k", type=click.IntRange(min=1), multiple=True,
              help="k for recall@k (repeatable). Default: 1, 5, 10 (those larger than the gallery are left out).")
@click.option("--skip-existing", is_flag=True, help="Skip pairs whose result file already holds this result.")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="What to do with missing or undecodable images.")
@provider_option
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="Bundle variant to run (default: fp16 where CUDA runs and the bundle has it, else the bundle's own).")
@click.option("--fast-decode", is_flag=True,
              help="Decode JPEGs with DCT scaling (faster, not bit-exact; see README).")
@decode_option
@threads_option
@click.option("--detail", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Keep each result's per-query ranks and top-10 lists in RESULT.detail.npz (auto: when under "
                   "8 MiB; clipeval compare and clipeval report read it).")
@_named_dataset_options
@_cache_options
@_executor_options
@verbosity_option
def eval_cmd(models, datasets, data_dir, split, task, output_dir, batch_size, num_workers, limit, recall_k,
             skip_existing, on_error, provider, precision, fast_decode, decode, num_threads, detail, quiet, no_cache,
             verify_cache, executor, ray_address, **named_dataset):
    """Evaluate models on datasets; prints one JSON line per result on stdout."""
    from clipeval.engine.config import make_eval_config

    setup_logging(not quiet)
    block = {
        "models": [{"model_name": m} for m in models],
        "dataset_name": list(datasets) or ["custom"],
        "data_dir": data_dir, "split": split, "task": task, "output_dir": output_dir,
        "batch_size": batch_size, "num_workers": num_workers, "limit": limit,
        "recall_k": list(recall_k) or None, "skip_existing": skip_existing, "on_error": on_error,
        "provider": provider, "precision": precision, "fast_decode": fast_decode, "decode": decode,
        "num_threads": num_threads, "detail": detail, "verbose": not quiet,
        "no_cache": no_cache, "verify_cache": verify_cache,
        "executor": executor, "ray_address": ray_address,
        **named_dataset,
    }
    _run_config(make_eval_config(block, "the command line"))


@cli.command("run")
@click.argument("config", type=click.Path(dir_okay=False))
@verbosity_option
def run_cmd(config, quiet):
    """Run a JSON or YAML config (the evalscope task_cfg shape, or its eval block)."""
    from clipeval.engine.config import parse_task_cfg

    cfg = parse_task_cfg(config)
    if quiet:
        cfg.verbose = False
    setup_logging(cfg.verbose)
    _run_config(cfg)
