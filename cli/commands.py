"""Commands of the ``clipeval`` CLI."""

from __future__ import annotations

import click

from .console import emit, setup_logging
from .options import (
    MAX_WORKERS,
    Int,
    batch_option,
    cache_options,
    decode_option,
    executor_options,
    named_dataset_options,
    output_option,
    provider_option,
    threads_option,
    verbosity_option,
)


def _run_config(cfg) -> None:
    from clipeval.engine.runner import iter_results
    from clipeval.export.resolve import resolve_model

    for result in iter_results(cfg, resolve_model):
        emit(result)


@click.command("eval")
@click.option("--model", "models", multiple=True, metavar="BUNDLE|CHECKPOINT|demo",
              help="Model bundle directory, checkpoint directory or hub id, or an open_clip model "
                   "(architecture, hf-hub:org/name, folder) (repeatable). Default: the embedded demo model.")
@click.option("--pretrained", "pretrained", multiple=True, metavar="TAG|FILE",
              help="open_clip pretrained tag or weights file for --model architectures (repeatable: every "
                   "--model with every --pretrained, as CLIP_benchmark does).")
@click.option("--pretrained-model", "pretrained_model", multiple=True, metavar="MODEL,PRETRAINED|FILE",
              help="CLIP_benchmark's --pretrained_model (repeatable, in order): a MODEL,PRETRAINED pair, or a text "
                   "file of them, one a line (# comments). Replaces --model/--pretrained, as there.")
@click.option("--dataset", "datasets", multiple=True, metavar="NAME",
              help="Dataset name (repeatable; CLIP_benchmark's names such as cifar10 or wds/vtab/cifar10 too, "
                   "docs/datasets.md). Default: custom.")
@click.option("--data-dir", default=None, help="Dataset folder (for custom: the folder holding image_queries.jsonl).")
@click.option("--split", default="test", show_default=True,
              help="Dataset split of a named set (a custom folder has only test).")
@click.option("--task", default=None, help="Task (default: the dataset's own).")
@output_option
@batch_option
@click.option("--num-workers", type=Int(0, MAX_WORKERS), default=None,
              help="Image decode workers (default: all cores; 0 decodes inline).")
@click.option("--limit", type=Int(1), default=None, help="Use exactly the first N gallery images.")
@click.option("--recall-k", "recall_k", type=Int(1), multiple=True,
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
@named_dataset_options
@cache_options
@executor_options
@verbosity_option
def eval_cmd(quiet, **options):
    """Evaluate models on datasets; prints one JSON line per result on stdout."""
    setup_logging(not quiet)
    _run_config(eval_config(quiet=quiet, **options))


def eval_config(*, models=(), pretrained=(), pretrained_model=(), datasets=(), data_dir=None, split="test",
                task=None, output_dir="outputs", batch_size=128, num_workers=None, limit=None, recall_k=(),
                skip_existing=False, on_error="fail", provider="auto", precision=None, fast_decode=False,
                decode="auto", num_threads=None, detail="auto", quiet=False, no_cache=False, verify_cache=False,
                executor="local", ray_address=None, **named_dataset):
    """The checked config (:class:`clipeval.engine.config.EvalConfig`) of ``clipeval eval``'s
    options; ``clipeval bench`` builds its child runs from the same object. Raises
    :class:`~clipeval.engine.errors.ConfigError` naming the flag of every problem."""
    from clipeval.engine.config import make_eval_config

    # --model/--pretrained/--pretrained-model are CLIP_benchmark's model/pretrained/pretrained_model
    # keys (engine/config/model_spec.py), read as the config reads them; no model flag: no models
    # key (the embedded demo model)
    if pretrained or pretrained_model:
        naming = {key: list(value) for key, value in
                  (("model", models), ("pretrained", pretrained), ("pretrained_model", pretrained_model)) if value}
    else:
        naming = {"models": [{"model_name": m} for m in models]} if models else {}
    block = {
        **naming,
        "dataset_name": list(datasets) or ["custom"],
        "data_dir": data_dir, "split": split, "task": task, "output_dir": output_dir,
        "batch_size": batch_size, "num_workers": num_workers, "limit": limit,
        "recall_k": list(recall_k) or None, "skip_existing": skip_existing, "on_error": on_error,
        "provider": provider, "precision": precision, "fast_decode": fast_decode, "decode": decode,
        "num_threads": num_threads, "detail": detail, "verbose": not quiet,
        "no_cache": no_cache, "verify_cache": verify_cache,
        "executor": executor, "ray_address": ray_address,
        **{k: v for k, v in named_dataset.items() if v is not None},
    }
    return make_eval_config(block, "the command line")


@click.command("run")
@click.argument("config", type=click.Path(dir_okay=False))
@verbosity_option
def run_cmd(config, quiet):
    """Run a JSON or YAML config (the evalscope task_cfg shape, or its eval block)."""
    from clipeval.engine.config import parse_task_cfg

    setup_logging(not quiet)  # the config's own warnings (a model named twice...) go through logging too
    cfg = parse_task_cfg(config)
    if quiet:
        cfg.verbose = False
    setup_logging(cfg.verbose)
    _run_config(cfg)
