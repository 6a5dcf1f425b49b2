"""The ``custom`` dataset: ``{data_dir}/image_queries.jsonl``.

One ``{"image_path": str, "query": [str, ...]}`` per line (a bare string query counts as one).
``image_path`` is tried as given (absolute, or relative to the working directory, as the reference
tool does), then relative to ``data_dir``. Rows naming the same image are merged into one gallery
image carrying all their queries.

Everything that can be checked before model work is checked, and every problem is reported
together, with line numbers, in one :class:`DatasetError`: malformed rows, images that do not
exist, and images whose header shows they cannot be used (an empty file, a file that is not an
image, a header cut short, more pixels than the decompression-bomb limit). Only damage inside an
image's pixel data is left for the image pass to find. The file may start with a byte-order mark
(:mod:`clipeval.engine.textio`).

The folder has no splits: the whole file is the ``test`` split, the reference tool's own value
for it; another ``split`` is refused rather than silently ignored.
"""

from __future__ import annotations

import logging
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable

import orjson

from ..errors import DatasetError, ImageError, listing
from ..images.load import DEFAULT_MAX_PIXELS, probe_image
from ..textio import json_lines
from .base import BadItem, RetrievalDataset
from .leftout import LeftOut

log = logging.getLogger(__name__)

FILENAME = "image_queries.jsonl"
SPLIT = "test"  # the one split of a custom folder (what evalscope's examples set)
PROBE_THREADS = 8  # header probes in flight (file opens: I/O-bound)
PROBE_CHUNK = 256  # rows resolved and probed per round (bounds the work done past --limit)


def _resolve(image_path: str, data_dir: Path) -> tuple[Path | None, list[Path], str | None]:
    """``(the place found or None, the places tried, the system's reason when a place could not
    even be looked at)``. The first regular file wins; else the first thing that exists (a
    folder, say), which the header probe then reports. Paths the operating system refuses (a
    name too long, a loop of links) count as not found, with the system's reason."""
    candidates = [Path(image_path)]
    if not os.path.isabs(image_path):
        candidates.append(data_dir / image_path)
    why = None
    existing = None
    for c in candidates:
        try:
            mode = os.stat(c).st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            why = exc.strerror or str(exc)
            continue
        if stat.S_ISREG(mode):
            return c, candidates, None
        existing = existing or c
    return existing, candidates, None if existing else why


def _parse_row(raw: bytes) -> tuple[str, list[str]]:
    """Return (image_path, queries) or raise ValueError with the reason. Other keys are ignored."""
    try:
        row = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    path = row.get("image_path")
    if path is None:
        raise ValueError('no "image_path"')
    if not isinstance(path, str) or not path.strip():
        raise ValueError('"image_path" must be a non-empty string')
    query = row.get("query")
    if query is None:
        raise ValueError('no "query"')
    if isinstance(query, str):
        query = [query]
    if not isinstance(query, list):
        raise ValueError('"query" must be a list of strings')
    if not query:
        raise ValueError('"query" is an empty list')
    for q in query:
        if not isinstance(q, str):
            raise ValueError(f'"query" holds a {type(q).__name__}, not a string')
        if not q.strip():
            raise ValueError('"query" holds an empty string')
    return path, query


@dataclass
class _Row:
    line: int
    path: str
    queries: list[str]


@dataclass
class _Checked:
    """One row's image after resolving and probing: its identity (real path; None when it was not
    found) and its problem (None when it can be used)."""

    key: str | None = None
    resolved: str | None = None
    problem: str | None = None
    reason: str | None = None  # the data_left_out reason of the problem: missing_file or bad_header


def _locate(row: _Row, data_dir: Path) -> _Checked:
    """Where a row's image is (its real path as its identity), or why it is not found."""
    resolved, tried, why = _resolve(row.path, data_dir)
    if resolved is None:
        places = " or ".join(str(p) for p in tried)
        return _Checked(problem=f"image not found (tried {places})" + (f": {why}" if why else ""),
                        reason="missing_file")
    return _Checked(key=os.path.realpath(resolved), resolved=str(resolved))


def _probe(checked: _Checked, max_pixels: int | None) -> None:
    try:
        probe_image(checked.resolved, max_pixels=max_pixels)
    except ImageError as exc:
        checked.problem = exc.message
        checked.reason = "bad_header"


def check_split(split: str | None) -> None:
    """Refuse a split other than ``test``: a custom folder has one file and no splits."""
    if split not in (None, SPLIT):
        raise DatasetError(
            f"split {split!r} does not apply to the custom dataset: its folder holds one {FILENAME}, "
            f"which is read whole (as split {SPLIT!r})",
            f"drop --split (config key split) or set it to {SPLIT}; to evaluate another split, put its "
            f"{FILENAME} in a folder of its own and pass that folder as --data-dir",
        )


def _read_rows(jsonl: Path) -> tuple[list[_Row], list[BadItem]]:
    rows: list[_Row] = []
    bad_rows: list[BadItem] = []
    try:
        lines = list(json_lines(jsonl))
    except OSError as exc:
        raise DatasetError(f"cannot read {jsonl} ({exc.strerror or exc})", "check the file's permissions") from None
    for lineno, raw in lines:
        try:
            path, queries = _parse_row(raw)
        except ValueError as exc:
            bad_rows.append(BadItem(f"{jsonl}:{lineno}", str(exc), lineno))
            continue
        rows.append(_Row(lineno, path, queries))
    return rows, bad_rows


def read_custom(data_dir: str | os.PathLike, *, on_error: str = "fail", split: str | None = SPLIT,
                limit: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                known_good: Callable[[list[str]], set[int]] | None = None) -> RetrievalDataset:
    """Read and check ``image_queries.jsonl``.

    Malformed rows always fail. Rows whose image is missing or unusable by its header
    (:func:`~clipeval.engine.images.load.probe_image`: empty, not an image, header cut short, more
    than ``max_pixels`` pixels) fail too, unless ``on_error == "skip"``: then they are left out,
    listed in ``dataset.skipped`` and counted in ``dataset.left_out`` (``images: missing_file``
    or ``bad_header``, their queries as ``texts: image_left_out``; see :mod:`.leftout`). Every
    problem is listed in one :class:`DatasetError`.

    ``limit``: the images of the first ``limit`` usable gallery images are checked; rows after
    them are parsed (malformed rows still fail) and merged into those images when they name one,
    but their own images are not opened. ``dataset.limited_from`` then counts the gallery images
    found (without opening the unchecked ones). ``split`` other than ``test`` raises
    :class:`DatasetError` (:func:`check_split`).

    ``known_good(paths)``: the positions in ``paths`` of images known to decode as they are now
    (the embedding cache holds them under their current size and modification time); their
    headers are not read again, so a re-run of a cached evaluation stays cheap.
    """
    check_split(split)
    data_dir = Path(data_dir)
    jsonl = data_dir / FILENAME
    if not jsonl.is_file():
        where = "does not exist" if not data_dir.exists() else f"has no {FILENAME}"
        raise DatasetError(
            f"custom dataset folder {data_dir} {where}",
            f"point --data-dir at a folder holding {FILENAME} "
            '(one {"image_path": "...", "query": ["...", ...]} per line)',
        )
    rows, bad_rows = _read_rows(jsonl)
    images: list[str] = []
    image_lines: list[int] = []
    texts: list[str] = []
    text_to_image: list[int] = []
    by_key: dict[str, int] = {}
    problems: list[BadItem] = []
    reasons: list[tuple[str, str]] = []  # (data_left_out reason, image identity) of each problem
    unchecked: set[str] = set()  # gallery images past the limit (counted, not opened)
    merged = 0
    full = False
    todo = iter(rows)
    with ThreadPoolExecutor(max_workers=PROBE_THREADS, thread_name_prefix="clipeval-probe") as pool:
        while chunk := list(islice(todo, PROBE_CHUNK if limit is None or full else
                                   max(1, min(PROBE_CHUNK, limit - len(images))))):
            checked = [_locate(row, data_dir) for row in chunk]
            if not full:  # past the limit, images are located (to merge or count rows), not opened
                found = [c for c in checked if c.problem is None]
                good = known_good([c.resolved for c in found]) if known_good is not None and found else set()
                list(pool.map(lambda c: _probe(c, max_pixels), [c for i, c in enumerate(found) if i not in good]))
            for row, c in zip(chunk, checked):
                where = f"{jsonl}:{row.line}"
                index = by_key.get(c.key) if c.key is not None else None
                if index is None:
                    if full:  # a gallery image past the limit: counted, not used
                        if c.key is not None:
                            unchecked.add(c.key)
                        continue
                    if c.problem is not None:
                        problems.append(BadItem(where, c.problem, row.line, row.path, texts=len(row.queries)))
                        reasons.append((c.reason or "missing_file", c.key or row.path))
                        continue
                    index = by_key[c.key] = len(images)
                    images.append(c.resolved)
                    image_lines.append(row.line)
                    full = limit is not None and len(images) >= limit
                else:
                    merged += 1
                for q in row.queries:
                    texts.append(q)
                    text_to_image.append(index)
    if bad_rows or (problems and on_error != "skip"):
        listed = sorted(bad_rows + (problems if on_error != "skip" else []), key=lambda it: it.line)
        remedy = "fix or remove these rows"
        if problems and not bad_rows:
            remedy += ", or pass --on-error skip to leave out rows whose image is missing or unusable"
        raise DatasetError(f"{len(listed)} bad row(s) in {jsonl}:\n    {listing(listed)}", remedy)
    if not images:
        raise DatasetError(f"{jsonl} has no usable rows", "add rows of the form {\"image_path\": ..., \"query\": [...]}")
    left = LeftOut()
    if problems:
        log.warning("skipping %d row(s) of %s whose image is missing or unusable (listed in meta.skipped):\n    %s",
                    len(problems), jsonl, listing(problems))
        seen: set[str] = set()
        for item, (reason, image) in zip(problems, reasons):
            if image not in seen:  # rows naming the same unusable image leave out one image
                seen.add(image)
                left.add("images", reason)
            left.add("texts", "image_left_out", item.texts)
        left.report("custom", log)
    if merged:
        log.warning("%d row(s) of %s name an image already listed; their queries were merged into that image", merged, jsonl)
    return RetrievalDataset(
        name="custom",
        images=images,
        image_where=[f"{jsonl}:{n}" for n in image_lines],
        texts=texts,
        text_to_image=text_to_image,
        skipped=problems,
        merged_rows=merged,
        limited_from=len(images) + len(unchecked) if unchecked else None,
        left_out=left.as_dict(),
    )
