"""The ``clipeval`` command line. Thin: parse, call the engine or the exporter, print.

stdout carries results only (one JSON line per result); progress and logs go to stderr. Every
user mistake ends in one message on stderr and exit status 2.
"""

from __future__ import annotations

import errno
import os

import click

from clipeval import __version__
from clipeval.engine.errors import ClipevalError

from .options import CONTEXT

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


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="clipeval")
@click.option("--debug", is_flag=True, help=f"Show the traceback of an internal error (also: {DEBUG_ENV}=1).")
@click.pass_context
def cli(ctx, debug):
    """Benchmark CLIP-style image-text models on ONNX Runtime.

    Run `clipeval eval` with no arguments to evaluate the embedded demo model on its demo dataset.
    """
    ctx.meta["clipeval.debug"] = debug


from .bench_cmd import bench_cmd  # noqa: E402  (the commands, registered below)
from .cache_cmd import cache_group  # noqa: E402
from .caption_cmd import caption_cmd  # noqa: E402
from .commands import eval_cmd, run_cmd  # noqa: E402
from .compare_cmd import compare_cmd  # noqa: E402
from .export_cmd import export_cmd  # noqa: E402
from .report_cmd import report_cmd  # noqa: E402
from .text_eval_cmd import text_eval_cmd  # noqa: E402

for _command in (eval_cmd, run_cmd, export_cmd, caption_cmd, text_eval_cmd, compare_cmd, report_cmd, bench_cmd,
                 cache_group):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="clipeval")
