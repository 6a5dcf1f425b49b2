"""Where a webdataset comes from: a local folder, or a download by name into a cache.

* ``data_dir`` a local folder: used as it is (nothing is copied).
* ``data_dir`` an ``http(s)://`` URL, or no ``data_dir``: the dataset is downloaded once into
  ``{cache}/{name}-{hash of the base URL}/`` and read from there afterwards. The base URL is
  ``--dataset-url`` (config ``dataset_url``, env ``CLIPEVAL_DATASET_URL``) when given, else the
  reference tool's: ``https://modelscope.cn/datasets/clip-benchmark/wds_{name}/resolve/master``.
  ``{name}`` (or ``{dataset}``) in a given URL is replaced by the dataset name; a URL without it
  is used as is for every dataset.
* The cache folder is ``datasets/`` under the cache root: ``cache_dir`` (config key, relative to
  the working directory), else ``$CLIPEVAL_CACHE_DIR``, else ``~/.cache/clipeval``.

Every file is fetched to ``NAME.part`` and renamed into place only once its size equals what the
server announced (Content-Length, or the total of Content-Range). An interrupted transfer
resumes from the bytes already there with an HTTP ``Range`` request (up to ``ATTEMPTS`` tries per
file); a server that ignores ``Range`` sends the whole file again. ``manifest.json`` in the
cache folder records each file's size (or that an optional file is absent); a file whose size on
disk no longer matches it is fetched again. When every file a run needs is in the manifest, no
request is made at all.

A split the server does not have (no ``{split}/nshards.txt``) is an error that lists the
splits that do exist among the usual names (``test``, ``train``, ``val``, ...), which are probed
with one small request each.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from pathlib import Path

import orjson

from ..errors import DatasetError
from ..paths import cache_root
from ..progress import Progress
from ..results import write_atomic
from . import wds

log = logging.getLogger(__name__)

DEFAULT_URL = "https://modelscope.cn/datasets/clip-benchmark/wds_{name}/resolve/master"
HF_URL = "https://huggingface.co/datasets/clip-benchmark/wds_{name}/resolve/main"
ENV_URL = "CLIPEVAL_DATASET_URL"
COMMON_SPLITS = ("test", "train", "val", "validation", "valid", "dev")
ATTEMPTS = 5
CONCURRENCY = 4
CHUNK = 1 << 20
MANIFEST = "manifest.json"


def is_url(value) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``datasets/`` under the cache root (``cache_dir``, ``$CLIPEVAL_CACHE_DIR`` or ``~/.cache/clipeval``)."""
    return cache_root(cache_dir) / "datasets"


def base_url(name: str, dataset_url: str | None = None) -> str:
    url = dataset_url or os.environ.get(ENV_URL) or DEFAULT_URL
    if not dataset_url and os.environ.get(ENV_URL):
        _check_env_url(url)
    return url.replace("{name}", name).replace("{dataset}", name).rstrip("/")


def _check_env_url(url: str) -> None:
    from ..config import check_url
    from ..errors import ConfigError

    problem = check_url(url)
    if problem:
        raise ConfigError(f"environment variable {ENV_URL} {problem}: {url[:80]!r}",
                          f"set {ENV_URL} to an http(s) URL (with {{name}} for the dataset name), or unset it")


def cache_folder(name: str, url: str, cache_dir: str | os.PathLike | None = None) -> Path:
    root = default_cache_dir(cache_dir)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return root / f"{safe}-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


class _Missing(Exception):
    """The server answered 404 (or 410) for a file."""


class _Manifest:
    def __init__(self, folder: Path, url: str):
        self.folder = folder
        self.path = folder / MANIFEST
        self.url = url
        self.files: dict[str, int | None] = {}
        if self.path.is_file():
            try:
                data = orjson.loads(self.path.read_bytes())
                if data.get("url") == url:
                    self.files = dict(data.get("files", {}))
            except orjson.JSONDecodeError:
                log.warning("ignoring unreadable %s", self.path)

    def fresh(self, rel: str) -> bool:
        """Whether ``rel`` is known: absent on the server, or on disk with its recorded size."""
        if rel not in self.files:
            return False
        size = self.files[rel]
        if size is None:
            return True
        p = self.folder / rel
        return p.is_file() and p.stat().st_size == size

    def record(self, rel: str, size: int | None) -> None:
        self.files[rel] = size
        write_atomic(self.path, orjson.dumps({"url": self.url, "files": self.files}, option=orjson.OPT_INDENT_2))


class Fetcher:
    """Downloads files of one base URL into one cache folder (used through :func:`fetch_dataset`)."""

    def __init__(self, url: str, folder: Path, progress: bool = True):
        self.url = url
        self.folder = folder
        self.manifest = _Manifest(folder, url)
        self.progress = progress
        self.requests = 0

    async def _get(self, session, rel: str, dest: Path) -> int:
        """Fetch ``rel`` into ``dest`` (resuming ``dest.part``); returns its verified size."""
        import aiohttp

        part = dest.with_name(dest.name + ".part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        last_error = "no attempt made"
        for attempt in range(1, ATTEMPTS + 1):
            have = part.stat().st_size if part.is_file() else 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                self.requests += 1
                async with session.get(f"{self.url}/{rel}", headers=headers) as resp:
                    if resp.status in (404, 410):
                        raise _Missing(rel)
                    if resp.status == 416 and have:  # nothing left to send: maybe complete, verify below
                        total = _total_from_range(resp.headers.get("Content-Range"))
                        if total == have:
                            os.replace(part, dest)
                            return have
                        part.unlink()
                        last_error = "server refused the resume range"
                        continue
                    if resp.status not in (200, 206):
                        last_error = f"HTTP {resp.status}"
                        if 400 <= resp.status < 500 and resp.status not in (408, 429):
                            break
                        await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
                        continue
                    if resp.status == 206:
                        total = _total_from_range(resp.headers.get("Content-Range"))
                        mode = "ab"
                    else:
                        length = resp.headers.get("Content-Length")
                        total = int(length) if length and length.isdigit() else None
                        mode, have = "wb", 0
                    with open(part, mode) as f:
                        async for chunk in resp.content.iter_chunked(CHUNK):
                            f.write(chunk)
                    size = part.stat().st_size
                    if total is not None and size != total:
                        last_error = f"transfer ended at {size} of {total} bytes"
                        log.warning("%s: %s; resuming (attempt %d of %d)", rel, last_error, attempt, ATTEMPTS)
                        continue
                    os.replace(part, dest)
                    return size
            except _Missing:
                raise
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                log.warning("%s: %s; resuming (attempt %d of %d)", rel, last_error, attempt, ATTEMPTS)
                await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
        raise DatasetError(f"could not download {self.url}/{rel} ({last_error})",
                           "check the network and the URL (--dataset-url), then run again: finished files are kept")

    async def fetch(self, session, rel: str, optional: bool = False) -> Path | None:
        """``rel`` from the cache if the manifest vouches for it, else from the server."""
        dest = self.folder / rel
        if self.manifest.fresh(rel):
            return dest if self.manifest.files[rel] is not None else None
        try:
            size = await self._get(session, rel, dest)
        except _Missing:
            if not optional:
                raise
            self.manifest.record(rel, None)
            return None
        self.manifest.record(rel, size)
        return dest


def _total_from_range(value: str | None) -> int | None:
    if value and "/" in value:
        total = value.rsplit("/", 1)[1].strip()
        return int(total) if total.isdigit() else None
    return None


async def _fetch_all(fetcher: Fetcher, name: str, split: str, need_classes: bool) -> None:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            nshards_path = await fetcher.fetch(session, f"{split}/{wds.NSHARDS}")
        except _Missing:
            found = []
            for s in COMMON_SPLITS:
                if s == split:
                    continue
                try:
                    if await fetcher.fetch(session, f"{s}/{wds.NSHARDS}", optional=True):
                        found.append(s)
                except DatasetError:
                    pass
            raise DatasetError(
                f"dataset {name!r} has no split {split!r} at {fetcher.url} "
                + (f"(splits there: {', '.join(found)})" if found else f"(none of {', '.join(COMMON_SPLITS)} found either)"),
                f"pass --split {found[0]}" if found else "check the dataset name and --dataset-url",
            ) from None
        text = nshards_path.read_text(encoding="utf-8").strip()
        if not text.isdigit() or int(text) < 1:
            raise DatasetError(f"{fetcher.url}/{split}/{wds.NSHARDS} holds {text[:40]!r}, not a shard count")
        await fetcher.fetch(session, wds.DATASET_TYPE, optional=True)
        if need_classes:
            await fetcher.fetch(session, wds.CLASSNAMES, optional=True)
            await fetcher.fetch(session, wds.TEMPLATES, optional=True)
        names = [f"{split}/{i}.tar" for i in range(int(text))]
        todo = [n for n in names if not fetcher.manifest.fresh(n)]
        if not todo:
            return
        gate = asyncio.Semaphore(CONCURRENCY)
        with Progress(f"download {name}/{split}", len(names), unit="shard", enabled=fetcher.progress) as bar:
            bar.update(len(names) - len(todo))

            async def one(rel: str) -> None:
                async with gate:
                    await fetcher.fetch(session, rel)
                bar.update(1)

            await asyncio.gather(*(one(n) for n in todo))


def fetch_dataset(name: str, split: str, *, url: str, cache_dir=None, progress: bool = True,
                  need_classes: bool = True) -> tuple[Path, int]:
    """Download split ``split`` of the webdataset at ``url`` into the cache (what is missing only).

    Returns ``(folder, requests made)``; ``folder`` has the webdataset layout.
    """
    folder = cache_folder(name, url, cache_dir)
    fetcher = Fetcher(url, folder, progress=progress)
    log.info("dataset %s: %s (cache %s)", name, url, folder)
    asyncio.run(_fetch_all(fetcher, name, split, need_classes))
    return folder, fetcher.requests


def dataset_root(name: str, data_dir, split: str, *, dataset_url: str | None = None, cache_dir=None,
                 progress: bool = True, need_classes: bool = True) -> Path:
    """The local webdataset folder of ``name``: ``data_dir`` itself, or the cache after a download."""
    if data_dir and not is_url(str(data_dir)):
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise DatasetError(f"data folder {root} does not exist",
                               "pass an existing --data-dir, or leave it out to download the dataset")
        return root
    url = str(data_dir).rstrip("/") if data_dir else base_url(name, dataset_url)
    folder, _ = fetch_dataset(name, split, url=url, cache_dir=cache_dir, progress=progress, need_classes=need_classes)
    return folder
