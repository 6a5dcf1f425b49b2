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


def usage_message(exc: click.UsageError) -> str:
    """A flag mistake click found (unknown option or command, a bad or missing value) in the
    form of every user mistake: ``error: WHAT`` (naming the flag) and ``  -> remedy``."""
    from .options import FlagValueError

    text = " ".join(exc.format_message().split()).rstrip(".")
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        text = text[0].lower() + text[1:]
    ctx = exc.ctx or click.get_current_context(silent=True)
    command = ctx.command_path if ctx is not None else "clipeval"
    if isinstance(exc, FlagValueError) and exc.hint:
        remedy = f"{exc.hint} ({command} -h lists the flags)"
    elif isinstance(exc, click.NoSuchOption):
        remedy = f"{command} -h lists the accepted flags"
    elif "no such command" in text:
        remedy = f"{command} -h lists the commands"
    else:
        remedy = f"{command} -h lists the accepted flags and values"
    return f"error: {text}\n  -> {remedy}"


class Group(click.Group):
    """Translates errors into messages on stderr, once, here.

    * :class:`ClipevalError` (a user mistake): ``error: ...`` with its remedy, exit status 2;
    * a flag mistake click finds (unknown option, bad value, missing argument): the same form
      (:func:`usage_message`), exit status 2 (``clipeval`` and ``clipeval GROUP`` without a
      command still print their help);
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
            text = str(exc)
            if ctx.invoked_subcommand:  # a flag's remedy names the command that was run
                text = text.replace("clipeval COMMAND -h", f"{ctx.command_path} {ctx.invoked_subcommand} -h")
            click.echo(f"error: {text}", err=True)
            ctx.exit(2)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            click.echo(usage_message(exc), err=True)
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

    def parse_args(self, ctx, args):
        """Every argument must be Unicode text: bytes of another encoding reach Python as lone
        surrogates, which no result file (UTF-8 JSON) can hold; refused here, for every command."""
        for arg in args:
            if isinstance(arg, str) and any("\ud800" <= c <= "\udfff" for c in arg):
                shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                click.echo(f"error: the argument '{shown}' is not UTF-8 text\n"
                           "  -> pass names, prompts and paths as UTF-8 (rename a file whose name is not)", err=True)
                raise click.exceptions.Exit(2)
        return super().parse_args(ctx, args)

    def make_context(self, info_name, args, parent=None, **extra):
        """The group's own flags (``clipeval --bogus``) are read here, before :meth:`invoke`."""
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            click.echo(usage_message(exc), err=True)
            raise click.exceptions.Exit(2) from None

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
