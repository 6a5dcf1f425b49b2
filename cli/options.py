"""The options several commands share (``-h`` as well as ``--help``, provider, threads, decode
workers, batch size, output folder, verbosity, the embedding cache, named datasets, the executor).

Each is a decorator; a command module imports what it takes from here, never from
:mod:`clipeval.cli.main` (which imports the commands to register them).
"""

from __future__ import annotations

import click

from clipeval.engine.numbers import (  # noqa: F401  (bounds the commands import from here)
    INT64_MAX,
    MAX_BATCH,
    MAX_RESAMPLES,
    MAX_WORKERS,
    MIN_RESAMPLES,
    NumberProblem,
    parse_float,
    parse_int,
)

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class FlagValueError(click.BadParameter):
    """A flag's value broke the number rule of :mod:`clipeval.engine.numbers`: shown as
    ``error: --FLAG MESSAGE`` with ``hint`` (if any) as the remedy (:func:`clipeval.cli.main.usage_message`)."""

    def __init__(self, message: str, hint: str | None = None, ctx=None, param=None, param_hint: str | None = None):
        super().__init__(message, ctx=ctx, param=param, param_hint=param_hint)
        self.hint = hint

    def format_message(self) -> str:
        if self.param_hint is not None:
            name = self.param_hint if isinstance(self.param_hint, str) else " / ".join(self.param_hint)
        elif self.param is not None:
            name = self.param.get_error_hint(self.ctx)
        else:
            name = "a value"
        return f"{name.replace(chr(39), '')} {self.message}"


class Int(click.ParamType):
    """An integer flag read by the config's rule (:func:`clipeval.engine.numbers.parse_int`):
    ASCII digits only (click's ``int()`` would take ``٣``, ``३``, ``3_0`` and `` 3``), within
    ``[lo, hi]`` (``hi`` at most int64)."""

    name = "integer"

    def __init__(self, lo: int, hi: int = INT64_MAX):
        self.lo, self.hi = lo, hi

    def convert(self, value, param, ctx):
        try:
            return parse_int(value, self.lo, self.hi)
        except NumberProblem as exc:
            raise FlagValueError(exc.message, exc.hint, ctx=ctx, param=param) from None

    def get_metavar(self, param, ctx=None):
        return "INTEGER"

    def __repr__(self) -> str:
        return f"Int({self.lo}, {self.hi})"


class Float(click.ParamType):
    """A number flag read by the config's rule (:func:`clipeval.engine.numbers.parse_float`):
    finite (click's ``float()`` takes ``nan`` and ``inf``, and NaN passes every range check),
    ASCII, within the bounds."""

    name = "number"

    def __init__(self, lo: float, hi: float, exclusive_min: bool = False, exclusive_max: bool = False):
        self.lo, self.hi, self.exclusive_min, self.exclusive_max = lo, hi, exclusive_min, exclusive_max

    def convert(self, value, param, ctx):
        try:
            return parse_float(value, self.lo, self.hi, self.exclusive_min, self.exclusive_max)
        except NumberProblem as exc:
            raise FlagValueError(exc.message, exc.hint, ctx=ctx, param=param) from None

    def get_metavar(self, param, ctx=None):
        return "NUMBER"


def provider_option(f):
    return click.option("--provider", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True,
                        help="onnxruntime execution provider; auto uses CUDA only when it really loads.")(f)


def threads_option(f):
    return click.option("--threads", "num_threads", type=Int(1, MAX_WORKERS), default=None,
                        help="onnxruntime / ranking threads (default: all cores).")(f)


def decode_option(f):
    return click.option("--decode", type=click.Choice(["auto", "threads", "processes"]), default="auto",
                        show_default=True,
                        help="Decode images in threads or in processes (auto: processes from 12 workers on, "
                             "where /dev/shm has room; docs/speed.md).")(f)


def batch_option(f):
    return click.option("--batch-size", type=Int(1, MAX_BATCH), default=128, show_default=True,
                        help="Images (and texts) per model call.")(f)


def output_option(f):
    return click.option("--output-dir", default="outputs", show_default=True,
                        help="Results go to OUTPUT_DIR/MODEL/DATASET_TASK.json.")(f)


def verbosity_option(f):
    return click.option("--quiet", "-q", is_flag=True, help="No progress bars or info logs on stderr.")(f)


def named_dataset_options(f):
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


def cache_options(f):
    """Embedding-cache options (engine/cache.py; ``clipeval cache info|clear`` manages it)."""
    f = click.option("--verify-cache", is_flag=True,
                     help="Key cached image embeddings by the sha256 of each file's content instead of its path, "
                          "size and modification time, and re-hash every bundle file.")(f)
    return click.option("--no-cache", is_flag=True,
                        help="Neither read nor write the embedding cache (CACHE_ROOT/embeddings).")(f)


def executor_options(f):
    """Where the work runs (engine/executors/, docs/scale.md)."""
    f = click.option("--ray-address", default=None, metavar="auto|HOST:PORT|ray://HOST:PORT",
                     help="The Ray cluster for --executor ray: auto (a running cluster), a head node's address, "
                          "or a Ray Client address. Default: $RAY_ADDRESS, else a Ray instance started on this "
                          "machine for the run.")(f)
    return click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                        help="local: this process. ray: a Ray cluster (pip install 'clipeval[ray]'); the embedding "
                             "stage runs as a Ray Dataset, several (model, dataset) pairs as Ray tasks.")(f)
