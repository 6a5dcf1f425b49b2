"""What a command writes: results on stdout (:func:`emit`, one JSON line each), logs and
progress on stderr (:func:`setup_logging`, one verbosity for clipeval and the libraries it drives).
"""

from __future__ import annotations

import logging
import sys


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
    from clipeval.engine.results.layout import dumps

    sys.stdout.buffer.write(dumps(result) + b"\n")
    sys.stdout.flush()
