"""The caption journal: an append-only JSON-lines file that makes captioning resumable.

Line 1 is a header naming the settings that change a caption (model, prompts, sampling, image
size); every later line is one finished caption (``{"key", "text"}``) or one failed attempt
(``{"key", "error"}``, kept for the record only: a failed image is asked again on the next run).
Each line is written whole and flushed as soon as its caption arrives, so a run that is
interrupted (Ctrl-C, a crash, the server going away) loses at most the requests in flight.

A line cut short by a crash (the last line, with no newline) is dropped when the journal is
opened again, and the file is truncated back to its last complete line before anything is
appended, so later lines are never glued onto a torn one. A whole first line that is not a
header (damaged on disk) is refused, never thrown away with the captions after it.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path
from typing import Any

import orjson

from ..errors import ConfigError
from ..textio import BOM

try:
    import fcntl
except ImportError:  # Windows: no advisory lock
    fcntl = None

log = logging.getLogger(__name__)

JOURNAL_NAME = "captions.journal.jsonl"
KIND = "clipeval-caption-journal"
FORMAT = 1
FSYNC_EVERY_S = 1.0


_DAMAGED_REMEDY = ("restore its first line (the header clipeval wrote: kind, format and the caption settings), "
                   "or move the journal away to caption every image again")


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in keys if old.get(k) != new.get(k)]


def _lock(f, path: Path) -> None:
    if fcntl is None:
        return
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise ConfigError(f"another run is captioning into {path.parent} (it holds {path.name})",
                          "wait for it to finish, or choose another --output-dir") from None


def _open(path: Path):
    """``path`` opened for reading and appending (created if absent); a journal path that is not
    a regular file (a folder, a FIFO, a device), or a folder that cannot be made or written,
    raises :class:`ConfigError`."""
    remedy = "move it away, or choose another --output-dir"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in (path.parent, *path.parent.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise ConfigError(f"cannot use {path}: it lies under {blocker}, which is a file", remedy) from None
        raise ConfigError(f"cannot create the folder {path.parent}: {exc.strerror or exc}",
                          "choose another --output-dir") from None
    try:
        st = path.stat()
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise ConfigError(f"cannot use {path}: {exc.strerror or exc}", remedy) from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise ConfigError(f"cannot use {path} as the caption journal: it is {what}", remedy)
    try:
        return open(path, "r+b" if st is not None else "w+b")
    except OSError as exc:
        raise ConfigError(f"cannot open the caption journal {path}: {exc.strerror or exc}", remedy) from None


def _read(data: bytes, path: Path) -> tuple[dict[str, str], dict | None, int, int, int]:
    """(captions, header, bytes of whole lines to keep, torn lines, unreadable lines)."""
    captions: dict[str, str] = {}
    header = None
    torn = bad = 0
    end = data.rfind(b"\n") + 1
    if end < len(data):
        torn = 1
        log.warning("%s: dropped a torn last line (%d bytes) left by an interrupted run", path, len(data) - end)
    keep = end
    start = len(BOM) if data.startswith(BOM) else 0  # a journal saved by an editor that adds a BOM
    for raw in data[start:end].split(b"\n")[:-1]:
        try:
            rec = orjson.loads(raw)
            if not isinstance(rec, dict):
                raise ValueError
        except (orjson.JSONDecodeError, ValueError):
            if header is None:  # a whole first line that does not parse: damaged, never thrown away
                raise ConfigError(f"the first line of {path} is not a caption journal header (it is damaged)",
                                  _DAMAGED_REMEDY) from None
            bad += 1
            continue
        if header is None:
            if rec.get("kind") != KIND:
                raise ConfigError(f"{path} is not a caption journal", "move the file away or choose another --output-dir")
            if not isinstance(rec.get("settings"), dict):
                raise ConfigError(f"the header (first line) of {path} has no settings mapping (it is damaged)",
                                  _DAMAGED_REMEDY)
            header = rec
            continue
        key, text = rec.get("key"), rec.get("text")
        # an empty caption (kept by earlier versions) is not a caption: that image is asked again
        if isinstance(key, str) and isinstance(text, str) and text.strip() and key not in captions:
            captions[key] = text
    if bad:
        log.warning("%s: skipped %d unreadable line(s)", path, bad)
    return captions, header, keep, torn, bad


def _check_header(header: dict, settings: dict[str, Any], path: Path) -> None:
    if header.get("format") != FORMAT:
        raise ConfigError(f"{path} is a caption journal of format {header.get('format')!r}; "
                          f"this version reads format {FORMAT}",
                          "delete it to caption again, or use the clipeval version that wrote it")
    diff = _differences(header.get("settings") or {}, settings)
    if diff:
        raise ConfigError(
            f"{path} holds captions made with other settings:\n    " + "\n    ".join(diff),
            "resume with the same settings, or delete the journal (or choose another --output-dir) "
            "to caption everything again",
        )


class Journal:
    """Open with :meth:`open`; ``captions`` maps each finished image key to its caption."""

    def __init__(self, path: Path, settings: dict[str, Any], captions: dict[str, str], torn: int, bad_lines: int):
        self.path = path
        self.settings = settings
        self.captions = captions
        self.torn = torn
        self.bad_lines = bad_lines
        self.failures_logged = 0
        self.fresh = False  # this run wrote the header (the journal was new, or held only a torn line)
        self._f = None
        self._last_sync = time.monotonic()

    @classmethod
    def open(cls, path: str | os.PathLike, settings: dict[str, Any]) -> "Journal":
        """Lock the journal at ``path`` (created if absent), read it, and open it for appending.

        ``settings`` must equal the header's: a journal made with other settings raises
        :class:`ConfigError` naming the differences (captions made with another prompt or model
        must not be mixed into this run's corpus). A journal another run holds raises too.
        """
        path = Path(path)
        f = _open(path)
        try:
            _lock(f, path)
            captions, header, keep, torn, bad = _read(f.read(), path)
            if header is not None:
                _check_header(header, settings, path)
            f.truncate(keep)
            f.seek(keep)
        except BaseException:
            f.close()
            raise
        journal = cls(path, settings, captions, torn, bad)
        journal._f = f
        if header is None:
            journal.fresh = True
            journal._write({"kind": KIND, "format": FORMAT, "settings": settings}, sync=True)
        return journal

    def _write(self, record: dict[str, Any], sync: bool = False) -> None:
        self._f.write(orjson.dumps(record) + b"\n")
        self._f.flush()
        now = time.monotonic()
        if sync or now - self._last_sync >= FSYNC_EVERY_S:
            os.fsync(self._f.fileno())
            self._last_sync = now

    def add_caption(self, key: str, text: str) -> None:
        """Record a finished caption (written and flushed before this returns)."""
        self.captions[key] = text
        self._write({"key": key, "text": text})

    def add_failure(self, key: str, error: str) -> None:
        self.failures_logged += 1
        self._write({"key": key, "error": error})

    def close(self) -> None:
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
