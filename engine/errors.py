"""Typed errors. Library code raises these; the CLI turns them into one line and exit status 2."""

from __future__ import annotations

MAX_LISTED = 50


def listing(items) -> str:
    """Up to ``MAX_LISTED`` ``where: reason`` lines for a multi-line error message, then how many
    more there are. ``items`` hold ``.where`` / ``.reason`` (e.g. ``BadItem``) or are pairs."""
    items = list(items)
    lines = []
    for it in items[:MAX_LISTED]:
        where, reason = (it.where, it.reason) if hasattr(it, "where") else it
        lines.append(f"{where}: {reason}")
    if len(items) > MAX_LISTED:
        lines.append(f"... and {len(items) - MAX_LISTED} more")
    return "\n    ".join(lines)


SHOWN_CHARS = 200  # the longest value (an image path ...) a message shows whole


def shorten(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` for a message: whole when at most ``limit`` characters, else its head and tail
    around ``...(N chars)...`` (N: the length of ``text``), so a 5,000-character path does not
    make a 5,000-character error line."""
    if len(text) <= limit:
        return text
    head = (limit * 2) // 3
    tail = limit - head
    return f"{text[:head]}...({len(text)} chars)...{text[-tail:]}"


class ClipevalError(Exception):
    """Base class of every error that is the user's to fix.

    ``remedy`` says what to do; it is appended to the message shown to the user.
    """

    def __init__(self, message: str, remedy: str | None = None):
        super().__init__(message)
        self.message = message
        self.remedy = remedy

    def __str__(self) -> str:
        if self.remedy:
            return f"{self.message}\n  -> {self.remedy}"
        return self.message


class ConfigError(ClipevalError):
    """A configuration key, value or flag is wrong."""


class DatasetError(ClipevalError):
    """A dataset file or row is missing or malformed."""


class ImageError(ClipevalError):
    """An image could not be read or decoded."""


class BundleError(ClipevalError):
    """A model bundle is missing a file, is corrupt or is of an unknown format."""


class ProviderError(ClipevalError):
    """An onnxruntime execution provider could not be used."""


class MetricError(ClipevalError):
    """A metric cannot be computed as asked (e.g. k larger than the gallery)."""


class ExportError(ClipevalError):
    """A checkpoint could not be exported or failed validation."""


class ResultError(ClipevalError):
    """A result or per-query detail file is missing, malformed, stale or not comparable."""


class ClusterError(ClipevalError):
    """A cluster (``--executor ray``) cannot be reached, or work on it kept failing."""
