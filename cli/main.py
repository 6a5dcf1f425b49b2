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


# Third-party loggers that speak at INFO or DEBUG about their own work (numba's compiler, PIL's
# chunk reader): held at WARNING so their records are not even formatted.
CHATTY_LOGGERS = ("numba", "PIL", "urllib3", "filelock", "asyncio")
# Packages whose records below ERROR are noise to a clipeval user: onnxruntime's graph optimiser
# logs every fusion, and its quantizer logs through the root logger, once per tensor, plus advice
# to pre-process the model that clipeval's own validation makes moot.
NOISY_PACKAGES = ("onnxruntime", "onnx")
class _TqdmHandler(logging.Handler):
    """Writes each record through ``tqdm.write`` to the current ``sys.stderr``, so a log line
    never tears a progress bar (the bar is cleared, the line written, the bar redrawn)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


class _VerbosityFilter(logging.Filter):
    """clipeval's records from ``ours`` on; everyone else's from ``theirs`` on, and from ERROR on
    for :data:`NOISY_PACKAGES` (decided by the file that logged, as onnxruntime's quantizer logs
    through the root logger)."""

    def __init__(self, ours: int, theirs: int):
        super().__init__()
        self.ours, self.theirs = ours, theirs
        self.noisy = tuple(_package_dirs(NOISY_PACKAGES))

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "clipeval" or record.name.startswith("clipeval."):
            return record.levelno >= self.ours
        if record.levelno < self.theirs:
            return False
        if self.noisy and record.levelno < logging.ERROR and (record.pathname or "").startswith(self.noisy):
            return False
        return True


def _package_dirs(names) -> list[str]:
    """The folders of the installed packages ``names`` (without importing them), with a slash."""
    import importlib.util
    import os

    dirs = []
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        for location in (spec.submodule_search_locations or []) if spec else []:
            dirs.append(os.path.join(os.path.realpath(location), ""))
            dirs.append(os.path.join(location, ""))
    return dirs


def _quiet_hugging_face(verbose: bool) -> None:
    """transformers and huggingface_hub: their progress bars (weight loading, downloads, shard
    writing) only on a terminal and never with ``-q``; transformers' own handler replaced by ours
    (warnings stay, ``-q`` keeps errors only). Set through the environment for a later import,
    and through their API when they are imported already."""
    import os

    isatty = getattr(sys.stderr, "isatty", None)
    bars = verbose and callable(isatty) and bool(isatty())
    if not bars:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if not verbose:
        os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    hub = sys.modules.get("huggingface_hub")
    if hub is not None and not bars:
        hub.utils.disable_progress_bars()
    transformers = sys.modules.get("transformers")
    if transformers is not None:
        tlog = transformers.utils.logging
        if not bars:
            tlog.disable_progress_bar()
        tlog.set_verbosity(logging.WARNING if verbose else logging.ERROR)
        tlog.disable_default_handler()
        tlog.enable_propagation()


def setup_logging(verbose: bool) -> None:
    """Logs of clipeval and of the libraries it drives, on stderr, at one verbosity.

    ``verbose`` (the default; ``-q`` / ``verbose: false`` turn it off): clipeval's INFO and up,
    other libraries' WARNING and up, except onnxruntime's and onnx's tooling (ERROR and up);
    quiet: clipeval's WARNING and up, other libraries' ERROR and up. Python warnings go through
    logging too (``py.warnings``, the other libraries' rule), except Pillow's
    ``DecompressionBombWarning`` (clipeval refuses such images itself). Records are written
    through ``tqdm.write``, so they never tear a progress bar. transformers' and
    huggingface_hub's progress bars show only on a terminal when verbose
    (:func:`_quiet_hugging_face`).
    """
    import warnings

    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_VerbosityFilter(logging.INFO if verbose else logging.WARNING,
                                       logging.WARNING if verbose else logging.ERROR))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler], force=True)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)
    from PIL import Image

    # Pillow warns of images over its pixel limit; clipeval refuses them itself, naming the file.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    _quiet_hugging_face(verbose)


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
