"""Progress of a stage on stderr (never on stdout), drawn by tqdm.

``with Progress("images", total, unit="img", enabled=..., cached=hits) as bar: bar.update(n)``

* ``total`` counts the items this stage computes; ``cached`` the items it took from a cache,
  which are not part of the bar (their "rate" would be millions a second). When ``cached`` is
  not zero, a line says so when the stage ends: ``images: 250 from cache, 50 computed``, or,
  with nothing to compute and no bar at all, ``images: 300 from cache``.
* On a terminal the bar redraws in place. Log records do not tear it: the CLI's log handler
  writes through ``tqdm.write`` (:func:`clipeval.cli.console.setup_logging`), and while a bar is
  drawn, plain console handlers of the root logger (``logging.basicConfig`` in a user's
  script) are routed the same way (``tqdm.contrib.logging.logging_redirect_tqdm``).
* Elsewhere (a file, a pipe, a CI log) there is no carriage-return redrawing: the bar is
  written as a plain line every ``interval`` seconds (default 10) and once at the end.
* ``enabled=False`` (``--quiet``, ``verbose: false``) shows nothing.
"""

from __future__ import annotations

import contextlib
import logging
import sys

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

TTY_INTERVAL = 0.1  # seconds between redraws on a terminal
LOG_INTERVAL = 10.0  # seconds between lines elsewhere


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _console_handlers() -> bool:
    """Whether the root logger writes to the console through a plain stream handler (one that
    ``logging_redirect_tqdm`` replaces; the CLI's own handler writes through tqdm already)."""
    return any(isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr)
               for h in logging.getLogger().handlers)


class _Lines:
    """A file for tqdm that turns its carriage-return redraws into whole lines (for logs)."""

    def __init__(self, stream):
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line and line != self.last:
            self.stream.write(line + "\n")
            self.last = line

    def flush(self) -> None:
        flush = getattr(self.stream, "flush", None)
        if flush is not None:
            flush()


class Progress:
    """A stage's progress bar (see the module docstring); a context manager."""

    def __init__(self, label: str, total: int | None, unit: str = "it", enabled: bool = True,
                 stream=None, interval: float | None = None, cached: int = 0):
        self.label = label
        self.total = total
        self.unit = unit
        self.enabled = enabled
        self.cached = cached
        self.stream = stream if stream is not None else sys.stderr
        self.tty = _isatty(self.stream)
        self.interval = interval if interval is not None else (TTY_INTERVAL if self.tty else LOG_INTERVAL)
        self.done = 0
        self._bar: tqdm | None = None
        self._redirect = contextlib.ExitStack()

    def __enter__(self) -> "Progress":
        if self.enabled and self.total != 0:
            self._bar = tqdm(
                total=self.total, desc=self.label, unit=self.unit, leave=True,
                file=self.stream if self.tty else _Lines(self.stream),
                mininterval=self.interval, maxinterval=max(self.interval, 10.0),
                ascii=not self.tty, dynamic_ncols=self.tty,
                delay=0 if self.tty else self.interval,  # a log gets no "0%" line, only timed and final ones
            )
            if self.tty and _console_handlers():
                self._redirect.enter_context(logging_redirect_tqdm())
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)

    def summary(self) -> str | None:
        """The line said when the stage ends, when part of it came from a cache."""
        if not self.cached:
            return None
        if self.total:
            return f"{self.label}: {self.cached} from cache, {self.done} computed"
        return f"{self.label}: {self.cached} from cache"

    def close(self) -> None:
        if self._bar is not None:
            if not self.tty:
                self._bar.refresh()  # the final line, also for a stage shorter than the delay
            self._bar.close()
            self._bar = None
            self._redirect.close()
        if self.enabled:
            line = self.summary()
            if line:
                tqdm.write(line, file=self.stream)
        self.enabled = False
