"""Image rows for a cluster: what the driver sends to the workers instead of images, and how a
worker turns a row back into something :func:`~clipeval.engine.images.load_image` reads.

A gallery source becomes a small row that any node can resolve, never pixels (columns of
:func:`image_table`):

========  ==========================================================  ======================
kind      source on the driver                                         what the worker does
========  ==========================================================  ======================
path      a local path (``str`` / ``os.PathLike``), made absolute       reads the file: every
                                                                       node must see it at
                                                                       the same path
url       an ``http://`` / ``https://`` URL (``str``)                  GETs it
shard     an image of a webdataset gallery                             reads ``size`` bytes at
          (:class:`~clipeval.engine.datasets.wds.ShardImages`):        ``offset`` of the shard:
          the shard's URL when it was downloaded into the dataset      a ranged GET of the
          cache (its ``manifest.json`` records the URL), else the      URL (one request per
          shard's local path                                           shard and batch), or a
                                                                       read of the path
bytes     encoded image bytes in memory                                uses them as they are
========  ==========================================================  ======================

In-memory PIL images have no form another machine can read; they are refused with a
:class:`~clipeval.engine.errors.ConfigError`.

A shard read by URL is checked against what the driver read: the server's ``Content-Range``
total must equal the size of the shard the driver scanned (recorded in the download manifest),
so a shard replaced on the server is an error, not other images at the old offsets.

Everything here is plain Python (no Ray): the driver side builds columns, the worker side
(:func:`fetch_sources`) returns one source or one :class:`ImageError` per row.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, ImageError

log = logging.getLogger(__name__)

KINDS = ("path", "url", "shard", "bytes")
COLUMNS = ("index", "kind", "location", "offset", "size", "shard_size", "label", "data")
HTTP_TIMEOUT_S = 60.0
HTTP_ATTEMPTS = 3
HTTP_BACKOFF_S = 0.5
RETRY_STATUS = (408, 425, 429, 500, 502, 503, 504)
USER_AGENT = "clipeval-ray-worker"


def is_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


# --- driver side --------------------------------------------------------------------------------


def _shard_locations(shards: Sequence[Path]) -> tuple[list[str], list[int]]:
    """For each shard file: its URL when the dataset was downloaded into the dataset cache (the
    folder's download manifest names the URL and records this shard at its current size), else
    its absolute path; and its size in bytes."""
    from ..datasets.sources import load_manifest

    locations, sizes = [], []
    manifests: dict[Path, dict | None] = {}
    for shard in shards:
        shard = Path(shard)
        size = shard.stat().st_size
        root = shard.parent.parent
        if root not in manifests:
            manifests[root] = load_manifest(root)
        manifest = manifests[root]
        rel = shard.relative_to(root).as_posix()
        if manifest is not None and manifest["files"].get(rel) == size:
            locations.append(f"{manifest['url'].rstrip('/')}/{rel}")
        else:
            locations.append(os.path.abspath(shard))
        sizes.append(size)
    return locations, sizes


def image_table(sources: Sequence, indices: np.ndarray) -> dict[str, list | np.ndarray]:
    """The rows of ``sources[i]`` for ``i`` in ``indices`` (int64, ascending), as columns
    (:data:`COLUMNS`; ``index`` holds ``indices``).

    A :class:`~clipeval.engine.datasets.wds.ShardImages` gallery becomes ``shard`` rows without
    reading any image bytes. Raises :class:`ConfigError` for a source of no kind in
    :data:`KINDS` (an in-memory PIL image).
    """
    from ..datasets.wds import ShardImages

    indices = np.asarray(indices, dtype=np.int64)
    n = len(indices)
    cols: dict[str, list | np.ndarray] = {
        "index": indices, "kind": [""] * n, "location": [""] * n, "offset": np.zeros(n, dtype=np.int64),
        "size": np.zeros(n, dtype=np.int64), "shard_size": np.zeros(n, dtype=np.int64), "label": [""] * n,
        "data": [b""] * n,
    }
    if isinstance(sources, ShardImages):
        locations, shard_sizes = _shard_locations(sources.shards)
        for row, i in enumerate(indices):
            shard = int(sources.shard_index[i])
            cols["kind"][row] = "shard"
            cols["location"][row] = locations[shard]
            cols["offset"][row] = sources.offsets[i]
            cols["size"][row] = sources.sizes[i]
            cols["shard_size"][row] = shard_sizes[shard]
            cols["label"][row] = sources.labels[i]
        return cols
    for row, i in enumerate(indices):
        source = sources[int(i)]
        if isinstance(source, (bytes, bytearray, memoryview)):
            cols["kind"][row] = "bytes"
            cols["data"][row] = bytes(source)
            cols["label"][row] = str(getattr(source, "label", "") or "")
        elif is_url(source):
            cols["kind"][row] = "url"
            cols["location"][row] = source
        elif isinstance(source, (str, os.PathLike)):
            cols["kind"][row] = "path"
            cols["location"][row] = os.path.abspath(os.fspath(source))
        else:
            raise ConfigError(
                f"image #{int(i)} is a {type(source).__name__} held in memory, which cannot be sent to a Ray cluster",
                "give images as files every node can read, URLs or webdataset shards, or use --executor local",
            )
    return cols


# --- worker side --------------------------------------------------------------------------------


class LabelledBytes(bytes):
    """Image bytes read on a worker, named by their shard and key (or URL) in messages, as
    :class:`~clipeval.engine.datasets.wds.ShardBytes` are on the driver."""

    label: str = ""

    def __str__(self) -> str:
        return self.label

    __repr__ = __str__


def _labelled(data: bytes, label: str) -> bytes:
    if not label:
        return data
    out = LabelledBytes(data)
    out.label = label
    return out


def http_get(url: str, start: int | None = None, end: int | None = None, *,
             timeout: float = HTTP_TIMEOUT_S) -> tuple[bytes, int | None]:
    """GET ``url`` (bytes ``start`` to ``end`` inclusive when given); returns ``(body, total)``,
    ``total`` being the full size the server announced in ``Content-Range`` (None without one).

    A server that ignores the range (``200`` with the whole body) is answered by slicing the
    body. Connection failures and ``RETRY_STATUS`` answers are tried ``HTTP_ATTEMPTS`` times in
    all, ``HTTP_BACKOFF_S`` x 2^attempt apart; then, and for any other failure, raises
    :class:`ImageError` naming the URL.
    """
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if start is not None:
        headers["Range"] = f"bytes={start}-{end}"
    last = ""
    for attempt in range(HTTP_ATTEMPTS):
        if attempt:
            time.sleep(HTTP_BACKOFF_S * 2 ** (attempt - 1))
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
                body = resp.read()
                status = resp.status
                content_range = resp.headers.get("Content-Range")
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code} {exc.reason}"
            if exc.code in RETRY_STATUS:
                continue
            break
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            last = str(getattr(exc, "reason", exc))
            continue
        total = None
        if content_range and "/" in content_range and content_range.rsplit("/", 1)[1].strip().isdigit():
            total = int(content_range.rsplit("/", 1)[1])
        if start is not None and status == 200:  # the whole file: take the range out of it
            total = len(body)
            body = body[start:end + 1]
        return body, total
    raise ImageError(f"{url} could not be fetched ({last})",
                     "check that every node of the cluster can reach this server")


def _read_span(location: str, start: int, end: int, shard_size: int) -> bytes:
    """Bytes ``start`` to ``end`` (inclusive) of a shard, by URL or by path; ImageError when the
    shard is not the one the driver read (another size), unreachable, or too short."""
    if is_url(location):
        body, total = http_get(location, start, end)
        if total is not None and total != shard_size:
            raise ImageError(f"shard {location} is {total} bytes on the server, but the dataset was read from a copy "
                             f"of {shard_size} bytes (it changed on the server)",
                             "clear the dataset from the cache (CACHE_ROOT/datasets) and run again")
    else:
        try:
            if os.path.getsize(location) != shard_size:
                raise ImageError(f"shard {location} is not the size the driver read ({shard_size} bytes) on this node",
                                 "put the dataset on storage every node reads alike")
            with open(location, "rb") as f:
                f.seek(start)
                body = f.read(end - start + 1)
        except OSError as exc:
            raise ImageError(f"shard {location} cannot be read on this node ({exc.strerror or exc})",
                             "put the dataset on storage every node can read at the same path, or serve it "
                             "by URL (--data-dir http://...)") from None
    if len(body) != end - start + 1:
        raise ImageError(f"shard {location}: {len(body)} bytes came back for bytes {start}-{end}",
                         "the shard is cut short; fetch the dataset again")
    return body


def fetch_sources(batch: dict[str, Any]) -> list[Any]:
    """Resolve a batch of rows (columns of :func:`image_table`) on a worker: one entry per row,
    a source :func:`~clipeval.engine.images.load_image` reads (a path, or bytes named by their
    label) or the :class:`ImageError` that stopped it.

    Images of one shard in the batch are read with one request (or one read) covering them all,
    from the first image's first byte to the last image's last (the captions between them ride
    along; a batch of consecutive samples wastes a few percent).
    """
    kinds = list(batch["kind"])
    out: list[Any] = [None] * len(kinds)
    spans: dict[tuple[str, int], list[int]] = defaultdict(list)
    for row, kind in enumerate(kinds):
        location = str(batch["location"][row])
        if kind == "path":
            out[row] = location
        elif kind == "bytes":
            out[row] = _labelled(bytes(batch["data"][row]), str(batch["label"][row]))
        elif kind == "url":
            try:
                out[row] = _labelled(http_get(location)[0], location)
            except ImageError as exc:
                out[row] = exc
        elif kind == "shard":
            spans[(location, int(batch["shard_size"][row]))].append(row)
        else:
            out[row] = ImageError(f"row of unknown kind {kind!r}", "this is a bug of clipeval; report it")
    for (location, shard_size), rows in spans.items():
        start = min(int(batch["offset"][r]) for r in rows)
        end = max(int(batch["offset"][r]) + int(batch["size"][r]) for r in rows) - 1
        try:
            body = _read_span(location, start, end, shard_size)
        except ImageError as exc:
            for r in rows:
                out[r] = exc
            continue
        for r in rows:
            lo = int(batch["offset"][r]) - start
            out[r] = _labelled(body[lo:lo + int(batch["size"][r])], str(batch["label"][r]))
    return out
