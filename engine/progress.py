"""A small progress bar on stderr with rate and ETA (never on stdout)."""

from __future__ import annotations

import sys
import time


def _fmt_seconds(s: float) -> str:
    s = int(max(0, s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


class Progress:
    """``with Progress("images", total) as p: p.update(n)``.

    Redraws in place on a terminal; elsewhere prints a line at most every ``interval`` seconds
    (and once at the end), so logs stay short. Disabled when ``enabled`` is false.
    """

    def __init__(self, label: str, total: int | None, unit: str = "it", enabled: bool = True,
                 stream=None, interval: float | None = None):
        self.label = label
        self.total = total
        self.unit = unit
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (0.2 if self.tty else 10.0)
        self.done = 0
        self.start = time.perf_counter()
        self._last = 0.0

    def __enter__(self) -> "Progress":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and now - self._last >= self.interval:
            self._last = now
            self._draw(now)

    def _line(self, now: float) -> str:
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.total:
            frac = min(1.0, self.done / self.total)
            width = 24
            bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            return (f"{self.label}: [{bar}] {self.done}/{self.total} {rate:,.1f} {self.unit}/s "
                    f"elapsed {_fmt_seconds(elapsed)} eta {_fmt_seconds(eta)}")
        return f"{self.label}: {self.done} {rate:,.1f} {self.unit}/s elapsed {_fmt_seconds(elapsed)}"

    def _draw(self, now: float) -> None:
        line = self._line(now)
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._draw(time.perf_counter())
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
        self.enabled = False
