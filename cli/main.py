"""The ``clipeval`` command line. Thin: parse, call the engine or the exporter, print.

stdout carries results only (one JSON line per result); progress and logs go to stderr. Every
user mistake ends in one message on stderr and exit status 2.
"""

from __future__ import annotations

import errno
import logging
import os
import sys

import click

from clipeval import __version__
from clipeval.engine.errors import ClipevalError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


DEBUG_ENV = "CLIPEVAL_DEBUG"
# OSErrors that come from the user's machine or input (space, permissions, read-only mounts,
# names too long), not from a bug: reported as a user error (exit status 2) with the file named.
ENVIRONMENT_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                      errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                      errno.EPERM: "permission denied", errno.ENAMETOOLONG: "a file name is too long",
                      errno.EMFILE: "too many open files"}


def debug_enabled(ctx: click.Context | None = None) -> bool:
    """``clipeval --debug ...`` or ``CLIPEVAL_DEBUG=1``: let unexpected errors show their traceback."""
    if ctx is not None and ctx.meta.get("clipeval.debug"):
        return True
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


class Group(click.Group):
    """Translates errors into messages on stderr, once, here.

    * :class:`ClipevalError` (a user mistake): ``error: ...`` with its remedy, exit status 2;
    * an ``OSError`` of the user's machine (no space, permission denied, read-only, name too
      long): ``error: ...`` naming the file, exit status 2;
    * Ctrl-C: ``interrupted``, exit status 130;
    * anything else is a bug of clipeval: one ``internal error:`` line and how to see the
      traceback (``--debug`` or ``CLIPEVAL_DEBUG=1``, which let it through), exit status 1.
    """

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ClipevalError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except OSError as exc:
            if exc.errno not in ENVIRONMENT_ERRNOS or debug_enabled(ctx):
                self._internal(ctx, exc)
            where = f" {exc.filename}" if exc.filename else ""
            click.echo(f"error: cannot use{where}: {ENVIRONMENT_ERRNOS[exc.errno]}\n"
                       "  -> free space, fix the permissions, or point clipeval at another folder", err=True)
            ctx.exit(2)
        except Exception as exc:
            self._internal(ctx, exc)

    @staticmethod
    def _internal(ctx, exc: BaseException):
        if debug_enabled(ctx):
            raise exc
        text = " ".join(str(exc).split())
        click.echo(f"internal error: {type(exc).__name__}: {text[:300]}\n"
                   f"  -> this is a bug of clipeval; rerun with --debug (clipeval --debug COMMAND ...) or "
                   f"{DEBUG_ENV}=1 to see the traceback, and report it", err=True)
        ctx.exit(1)


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
@click.option("--debug", is_flag=True, help=f"Show the traceback of an internal error (also: {DEBUG_ENV}=1).")
@click.pass_context
def cli(ctx, debug):
    """Benchmark CLIP-style image-text models on ONNX Runtime.

    Run `clipeval eval` with no arguments to evaluate the embedded demo model on its demo dataset.
    """
    ctx.meta["clipeval.debug"] = debug


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
