"""The ``custom`` dataset: ``{data_dir}/image_queries.jsonl``.

One ``{"image_path": str, "query": [str, ...]}`` per line (a bare string query counts as one).
``image_path`` is tried as given (absolute, or relative to the working directory, as the reference
tool does), then relative to ``data_dir``. Rows naming the same image are merged into one gallery
image carrying all their queries. Every bad row is collected and reported together, with line
numbers, before any model work starts.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import orjson

from ..errors import DatasetError, listing
from .base import BadItem, RetrievalDataset

log = logging.getLogger(__name__)

FILENAME = "image_queries.jsonl"


def _resolve(image_path: str, data_dir: Path) -> tuple[Path | None, list[Path]]:
    candidates = [Path(image_path)]
    if not os.path.isabs(image_path):
        candidates.append(data_dir / image_path)
    for c in candidates:
        try:
            if c.is_file():
                return c, candidates
        except OSError:  # e.g. a name longer than the file system allows: no such image here
            continue
    return None, candidates


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


def read_custom(data_dir: str | os.PathLike, *, on_error: str = "fail") -> RetrievalDataset:
    """Read and check ``image_queries.jsonl``.

    Malformed rows always fail (listed together). Rows whose image file does not exist fail too,
    unless ``on_error == "skip"``: then they are left out and listed in ``dataset.skipped``.
    """
    data_dir = Path(data_dir)
    jsonl = data_dir / FILENAME
    if not jsonl.is_file():
        where = "does not exist" if not data_dir.exists() else f"has no {FILENAME}"
        raise DatasetError(
            f"custom dataset folder {data_dir} {where}",
            f"point --data-dir at a folder holding {FILENAME} "
            '(one {"image_path": "...", "query": ["...", ...]} per line)',
        )
    images: list[str] = []
    image_lines: list[int] = []
    texts: list[str] = []
    text_to_image: list[int] = []
    by_path: dict[str, int] = {}
    bad_rows: list[BadItem] = []
    missing: list[BadItem] = []
    merged = 0
    with open(jsonl, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{jsonl}:{lineno}"
            try:
                path, queries = _parse_row(raw)
            except ValueError as exc:
                bad_rows.append(BadItem(where, str(exc), lineno))
                continue
            resolved, tried = _resolve(path, data_dir)
            if resolved is None:
                places = " or ".join(str(p) for p in tried)
                missing.append(BadItem(where, f"image not found (tried {places})", lineno, path))
                continue
            key = os.path.realpath(resolved)
            index = by_path.get(key)
            if index is None:
                index = len(images)
                by_path[key] = index
                images.append(str(resolved))
                image_lines.append(lineno)
            else:
                merged += 1
            for q in queries:
                texts.append(q)
                text_to_image.append(index)
    if bad_rows or (missing and on_error != "skip"):
        problems = bad_rows + missing
        problems.sort(key=lambda it: it.line)
        remedy = "fix or remove these rows"
        if missing and not bad_rows:
            remedy += ", or pass --on-error skip to leave out rows whose image is missing"
        raise DatasetError(f"{len(problems)} bad row(s) in {jsonl}:\n    {listing(problems)}", remedy)
    if not images:
        raise DatasetError(f"{jsonl} has no usable rows", "add rows of the form {\"image_path\": ..., \"query\": [...]}")
    if merged:
        log.warning("%d row(s) of %s name an image already listed; their queries were merged into that image", merged, jsonl)
    return RetrievalDataset(
        name="custom",
        images=images,
        image_where=[f"{jsonl}:{n}" for n in image_lines],
        texts=texts,
        text_to_image=text_to_image,
        skipped=missing,
        merged_rows=merged,
    )
