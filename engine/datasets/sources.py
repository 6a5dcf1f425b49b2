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
server announced (Content-Length, or the total of Content-Range) and, for a shard, once it reads
as a whole tar file (:func:`~.wds.check_tar`: an HTML page of the right length, a gzip file, a
transfer cut short without Content-Length, an empty body are not kept, and are fetched again
within the same tries); a side file (``nshards.txt``, class names, templates, ``dataset_type.txt``)
that is a web page (:func:`~.sidefiles.html_page`) is not kept either. Requests ask for ``Accept-Encoding: identity``; a body the server
encodes anyway (``Content-Encoding: gzip``) is decoded, and then only the tar check vouches for it. An interrupted transfer
resumes from the bytes already there with an HTTP ``Range`` request (up to 5 tries per file,
with the waits and the retryable statuses of :mod:`clipeval.engine.http_retry`, ``Retry-After`` honoured); a server that ignores ``Range`` sends the whole file again. ``manifest.json`` in the
cache folder records each file's size (or that an optional file is absent); a file whose size on
disk no longer matches it is fetched again, and so is a file that a reader finds damaged (a shard
that does not read as a tar, an ``nshards.txt`` or other side file that is not what it should be):
the reader drops it from the manifest (:func:`forget`). When every file a run needs is in the
manifest, no request is made at all.

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
from ..http_retry import DOWNLOAD_POLICY, RetryPolicy, parse_retry_after, retryable_status
from ..paths import cache_root, safe_name
from ..progress import Progress
from ..fsutil import write_atomic
from ..textio import read_json
from . import sidefiles, wds

log = logging.getLogger(__name__)

DEFAULT_URL = "https://modelscope.cn/datasets/clip-benchmark/wds_{name}/resolve/master"
HF_URL = "https://huggingface.co/datasets/clip-benchmark/wds_{name}/resolve/main"
ENV_URL = "CLIPEVAL_DATASET_URL"
COMMON_SPLITS = ("test", "train", "val", "validation", "valid", "dev")
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
    return root / f"{safe_name(name)}-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


class _Missing(Exception):
    """The server answered 404 (or 410) for a file."""


class _Manifest:
    """``manifest.json`` of a cache folder: ``{"url": str, "files": {relative path: size or null}}``.

    A manifest that is not JSON, not of this shape, or made for another URL is ignored (every
    file is then checked against the server again); an entry of the wrong type is dropped."""

    def __init__(self, folder: Path, url: str | None):
        self.folder = folder
        self.path = folder / MANIFEST
        self.url = url
        self.files: dict[str, int | None] = {}
        data = load_manifest(folder)
        if data is not None and (url is None or data["url"] == url):
            self.url = data["url"]
            self.files = data["files"]

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
        self._write()

    def forget(self, rel: str) -> bool:
        """Drop ``rel`` (so the next run fetches it); returns whether it was recorded."""
        known = self.files.pop(rel, "absent") != "absent"
        if known:
            self._write()
        return known

    def _write(self) -> None:
        write_atomic(self.path, orjson.dumps({"url": self.url, "files": self.files}, option=orjson.OPT_INDENT_2))


def load_manifest(folder: Path) -> dict | None:
    """The download manifest of ``folder`` as ``{"url", "files"}``, or None when there is none
    or it is unreadable (with a warning; the files are then checked against the server again)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:
        log.warning("ignoring the unreadable download manifest %s (%s)", path, exc)
        return None
    if not isinstance(data, dict) or not isinstance(data.get("url"), str) or not isinstance(data.get("files"), dict):
        log.warning("ignoring the download manifest %s: not of the form {\"url\": ..., \"files\": {...}}", path)
        return None
    files = {}
    for rel, size in data["files"].items():
        if size is None or (isinstance(size, int) and not isinstance(size, bool) and size >= 0):
            files[rel] = size
        else:
            log.warning("download manifest %s: dropping the entry %r (size %r)", path, rel, size)
    return {"url": data["url"], "files": files}


def is_cache_folder(root: Path) -> bool:
    """Whether ``root`` is a download cache folder (it holds a usable download manifest)."""
    return load_manifest(root) is not None


def forget(root: Path, path: Path) -> None:
    """Remove ``path`` (a file of the download cache folder ``root``) and drop it from the
    manifest, so that the next run fetches it again."""
    root, path = Path(root), Path(path)
    try:
        rel = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return
    manifest = _Manifest(root, None)
    if manifest.url is None:
        return
    manifest.forget(rel)
    try:
        path.unlink()
    except OSError:
        pass
    log.warning("%s was damaged: removed from the download cache, the next run fetches it again", path)


class Fetcher:
    """Downloads files of one base URL into one cache folder (used through :func:`fetch_dataset`)."""

    def __init__(self, url: str, folder: Path, progress: bool = True):
        self.url = url
        self.folder = folder
        self.manifest = _Manifest(folder, url)
        self.progress = progress
        self.requests = 0
        self.retry = RetryPolicy(**DOWNLOAD_POLICY)

    async def _get(self, session, rel: str, dest: Path) -> int:
        """Fetch ``rel`` into ``dest`` (resuming ``dest.part``); returns its verified size."""
        import aiohttp

        part = dest.with_name(dest.name + ".part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        last_error = "no attempt made"
        wrong_body = False  # the last answer was a whole body, but not the file (a web page ...)
        for attempt in range(self.retry.attempts):
            wrong_body = False
            have = part.stat().st_size if part.is_file() else 0
            headers = {"Accept-Encoding": "identity"}
            if have:
                headers["Range"] = f"bytes={have}-"
            try:
                self.requests += 1
                async with session.get(f"{self.url}/{rel}", headers=headers) as resp:
                    if resp.status in (404, 410):
                        raise _Missing(rel)
                    encoded = resp.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity")
                    if resp.status == 416 and have:  # nothing left to send: maybe complete, verify below
                        total = _total_from_range(resp.headers.get("Content-Range"))
                        if total == have and self._usable(rel, part) is None:
                            os.replace(part, dest)
                            return have
                        part.unlink()
                        last_error = "server refused the resume range"
                        continue
                    if resp.status not in (200, 206):
                        last_error = f"HTTP {resp.status}"
                        if not retryable_status(resp.status):
                            break
                        if self.retry.more(attempt):
                            await self.retry.pause(attempt, parse_retry_after(resp.headers))
                        continue
                    if resp.status == 206 and encoded:  # an encoded part cannot be appended to decoded bytes
                        part.unlink()
                        last_error = "server answered a resume with an encoded part"
                        continue
                    if resp.status == 206:
                        total = _total_from_range(resp.headers.get("Content-Range"))
                        mode = "ab"
                    else:
                        length = resp.headers.get("Content-Length")
                        # an encoded body's Content-Length is its encoded size, not the file's
                        total = int(length) if length and length.isdigit() and not encoded else None
                        mode, have = "wb", 0
                    with open(part, mode) as f:
                        async for chunk in resp.content.iter_chunked(CHUNK):
                            f.write(chunk)
                    size = part.stat().st_size
                    if total is not None and size != total:
                        last_error = f"transfer ended at {size} of {total} bytes"
                        log.warning("%s: %s; resuming (attempt %d of %d)", rel, last_error, attempt + 1,
                                    self.retry.attempts)
                        continue
                    problem = self._usable(rel, part)
                    if problem is not None:
                        last_error = problem
                        wrong_body = True
                        log.warning("%s: %s; fetching it again (attempt %d of %d)", rel, problem, attempt + 1,
                                    self.retry.attempts)
                        part.unlink()
                        continue
                    os.replace(part, dest)
                    return size
            except _Missing:
                raise
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                log.warning("%s: %s; resuming (attempt %d of %d)", rel, last_error, attempt + 1, self.retry.attempts)
                if self.retry.more(attempt):
                    await self.retry.pause(attempt)
        if wrong_body:
            raise DatasetError(f"could not download {self.url}/{rel} ({last_error})",
                               "the server sent something else than the file (it was not kept): check the URL "
                               "(--dataset-url) and the split, then run again; finished files are kept")
        raise DatasetError(f"could not download {self.url}/{rel} ({last_error})",
                           "check the network and the URL (--dataset-url), then run again: finished files are kept")

    @staticmethod
    def _usable(rel: str, part: Path) -> str | None:
        """What is wrong with a fetched file: a shard that is not a whole tar, a side file that is
        a web page (:func:`~.sidefiles.html_page`); None when nothing is."""
        if not rel.endswith(".tar"):
            with open(part, "rb") as f:
                head = f.read(4096)
            if sidefiles.html_page(head):
                return f"the body is a web page, not {rel}; it starts with {head.lstrip()[:24]!r}"
            return None
        problem = wds.check_tar(part, rel)
        if problem is None:
            return None
        with open(part, "rb") as f:
            head = f.read(24)
        return f"the body is not a whole tar shard: {problem}; it starts with {head!r}"

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
        try:
            count = sidefiles.parse_count(sidefiles.read_text(nshards_path), f"{fetcher.url}/{split}/{wds.NSHARDS}",
                                          nshards_path)
        except sidefiles.SideFileError as exc:
            fetcher.manifest.forget(f"{split}/{wds.NSHARDS}")
            nshards_path.unlink(missing_ok=True)
            raise DatasetError(exc.message, "the server sent something else than a shard count (it was not kept); "
                               "check --dataset-url and the split, then run again") from None
        await fetcher.fetch(session, wds.DATASET_TYPE, optional=True)
        if need_classes:
            await fetcher.fetch(session, wds.CLASSNAMES, optional=True)
            await fetcher.fetch(session, wds.TEMPLATES, optional=True)
        if all(fetcher.manifest.fresh(f"{split}/{i}.tar") for i in range(count)):
            return
        with Progress(f"download {name}/{split}", count, unit="shard", enabled=fetcher.progress) as bar:
            await _fetch_shards(fetcher, session, split, count, bar)


async def _fetch_shards(fetcher: Fetcher, session, split: str, count: int, bar) -> None:
    """Shards ``0 .. count - 1`` of ``split`` not in the cache yet, by ``CONCURRENCY`` workers that
    each take the next shard number when they are done with one: memory and tasks do not grow with
    ``count`` (``nshards.txt`` may say up to a million). A shard the server does not have is a
    :class:`DatasetError` naming the first such shard; the workers then take no new numbers but
    finish the shards in flight, so every shard before it is kept (whatever the timing). Any other
    failure stops the others at once and is raised."""
    numbers = iter(range(count))
    missing: list[int] = []

    async def worker() -> None:
        for i in numbers:  # one iterator shared by every worker: each number is taken once
            if missing:  # a shard is not on the server: take no more, the ones in flight finish
                return
            rel = f"{split}/{i}.tar"
            if not fetcher.manifest.fresh(rel):
                try:
                    await fetcher.fetch(session, rel)
                except _Missing:
                    missing.append(i)
                    return
            bar.update(1)

    workers = [asyncio.create_task(worker()) for _ in range(min(CONCURRENCY, count))]
    try:
        done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()
    if missing:
        rel = f"{split}/{min(missing)}.tar"
        raise DatasetError(f"{fetcher.url}/{rel} is not on the server, although {split}/{wds.NSHARDS} says "
                           f"{count} shards", "check --dataset-url and the split; shards fetched so far are kept")


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
