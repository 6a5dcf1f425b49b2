"""The ``clipeval`` command line. Thin: parse, call the engine or the exporter, print.

stdout carries results only (one JSON line per result); progress and logs go to stderr. Every
user mistake ends in one message on stderr and exit status 2.
"""

from __future__ import annotations

import logging
import sys

import click

from clipeval import __version__
from clipeval.engine.errors import ClipevalError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Group(click.Group):
    """Translates library errors into one line on stderr and exit status 2, once, here."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ClipevalError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("numba").setLevel(logging.WARNING)


def emit(result: dict) -> None:
    """One JSON line on stdout."""
    from clipeval.engine.results import dumps

    sys.stdout.buffer.write(dumps(result) + b"\n")
    sys.stdout.flush()


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="clipeval")
def cli():
    """Benchmark CLIP-style image-text models on ONNX Runtime.

    Run `clipeval eval` with no arguments to evaluate the embedded demo model on its demo dataset.
    """


# Shared option decorators -------------------------------------------------------------------

def provider_option(f):
    return click.option("--provider", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True,
                        help="onnxruntime execution provider; auto uses CUDA only when it really loads.")(f)


def threads_option(f):
    return click.option("--threads", "num_threads", type=click.IntRange(min=1), default=None,
                        help="onnxruntime / ranking threads (default: all cores).")(f)


def decode_option(f):
    return click.option("--decode", type=click.Choice(["auto", "threads", "processes"]), default="auto",
                        show_default=True,
                        help="Decode images in threads or in processes (auto: processes from 12 workers on, "
                             "where /dev/shm has room; docs/speed.md).")(f)


def batch_option(f):
    return click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True,
                        help="Images (and texts) per model call.")(f)


def output_option(f):
    return click.option("--output-dir", default="outputs", show_default=True,
                        help="Results go to OUTPUT_DIR/MODEL/DATASET_TASK.json.")(f)


def verbosity_option(f):
    return click.option("--quiet", "-q", is_flag=True, help="No progress bars or info logs on stderr.")(f)


from . import bench_cmd, cache_cmd, caption_cmd, commands, compare_cmd, export_cmd, report_cmd, text_eval_cmd  # noqa: E402,F401,E501  (registers the commands on `cli`)


def main() -> None:
    cli(prog_name="clipeval")
