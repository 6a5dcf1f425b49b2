"""What a dataset reader left out, counted by kind of record and reason.

Every reader either uses a record (an image, a caption, a shard) or counts it here; the count
goes to the result as ``meta.data_left_out`` and to stderr as one warning line per dataset::

    {"images": {"missing_file": 2}, "texts": {"blank": 3, "image_left_out": 10}}

Kinds: ``images`` (gallery images / samples), ``texts`` (captions), ``shards`` (webdataset
shards that could not be read at all). The reasons are listed in docs/datasets.md
("What a reader leaves out").
"""

from __future__ import annotations

import logging

KINDS = ("images", "texts", "shards")


class LeftOut:
    """Counts of left-out records: ``add(kind, reason, n)``; :meth:`as_dict` for ``meta``."""

    def __init__(self, counts: dict | None = None):
        self.counts: dict[str, dict[str, int]] = {}
        if counts:
            self.merge(counts)

    def add(self, kind: str, reason: str, n: int = 1) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if n:
            reasons = self.counts.setdefault(kind, {})
            reasons[reason] = reasons.get(reason, 0) + int(n)

    def merge(self, counts: dict) -> "LeftOut":
        for kind, reasons in counts.items():
            for reason, n in reasons.items():
                self.add(kind, reason, n)
        return self

    def total(self, kind: str) -> int:
        return sum(self.counts.get(kind, {}).values())

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {kind: dict(sorted(self.counts[kind].items())) for kind in KINDS if self.counts.get(kind)}

    def __bool__(self) -> bool:
        return any(self.counts.values())

    def describe(self) -> str:
        """``"2 images (2 missing_file); 3 texts (3 blank)"``."""
        parts = []
        for kind, reasons in self.as_dict().items():
            detail = ", ".join(f"{n} {reason}" for reason, n in reasons.items())
            parts.append(f"{sum(reasons.values())} {kind} ({detail})")
        return "; ".join(parts)

    def report(self, name: str, log: logging.Logger) -> None:
        """One warning line on the log (stderr) when anything was left out."""
        if self:
            log.warning("%s: left out %s", name, self.describe())
