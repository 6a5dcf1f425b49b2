"""The embedding cache: a second run of the same evaluation does no model work.

Entries live in one SQLite database (standard library ``sqlite3``) at
``{cache root}/embeddings/embeddings.sqlite3``; the cache root is ``cache_dir``, else
``$CLIPEVAL_CACHE_DIR``, else ``$XDG_CACHE_HOME/clipeval`` or ``~/.cache/clipeval`` (the same
root the model cache uses).

* **Keys.** Every entry sits in a *space* named by the bundle identity (the sha256 of its
  manifest), the precision variant and the kind of input: ``image`` (exact decode),
  ``image-fast`` (``fast_decode``: the pixels differ, so the embeddings do too), ``text`` or
  ``pair`` (a reranker's score of a (query, document) pair, stored as a one-element row).
  Inside a space an image file is keyed by its resolved path, size and modification time
  (``st_mtime_ns``); with ``verify`` by the sha256 of its bytes instead (a touched or copied
  file still hits, a file rewritten within the same mtime tick does not). Image bytes are keyed
  by their sha256; a text by its UTF-8 bytes (as embedded: a prompt prefix is part of it, so
  another prompt is another key); a pair by its query and document. Whatever else changes an
  embedding changes the bundle identity (pooling and ``max_seq_length`` are export parameters,
  recorded in the manifest). Keys are stored as sha256 digests. In-memory PIL
  images have no identity and are never cached.
* **Values** are float32 rows (little-endian) with a BLAKE2b digest over space, key, value and
  trust mark; a row whose digest, length or column types do not match is logged, deleted and
  recomputed, never used.
* **Trust.** Every entry records whether the run that wrote it had *verified* its bundle (hashed
  every bundle file during that load, see :attr:`clipeval.engine.sessions.bundle.Bundle.verified`) or
  trusted the size-and-mtime stamp of an earlier hash. A verified run reads only entries written
  by verified runs; what it computes for a key held by an unverified entry replaces that entry
  (and marks it verified). An unverified run reads both kinds and never overwrites. So a tower
  file changed in place with its size and mtime kept can poison unverified runs only, and a
  ``--verify-cache`` run never serves what such a run stored.
* **Damage.** A database that cannot be opened, or whose reads or writes fail later (a damaged
  page, a full disk, a lock held past the timeout), is reported once; the run goes on without the
  cache (:class:`EmbeddingCache` turns itself off). :func:`reset_cache` (``clipeval cache
  clear``) removes a damaged database and creates an empty one.
* **Safety with concurrent runs.** The database runs in WAL mode: readers never block, writes
  are whole transactions (``BEGIN IMMEDIATE``), so two runs filling the same cache never see a
  torn or mixed entry. The same key written twice keeps the first row (``INSERT OR IGNORE``;
  both rows are the same embedding), unless a verified run replaces an unverified row (above).
* **Size bound.** The total size (kept by triggers in a one-row ``stats`` table, so it never
  needs a scan) is held under ``max_bytes`` (``$CLIPEVAL_CACHE_MAX_BYTES``, default
  :data:`DEFAULT_MAX_BYTES`): after a write that passes it, least-recently-used entries are
  deleted until the total is at 90% of the bound. Reads refresh an entry's last use at most
  once per :data:`TOUCH_AFTER_S` seconds, so a warm read does not turn into a write each time.

No pickle anywhere: what is read back is bytes turned into float32 arrays.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import ConfigError
from ..paths import cache_root

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: entries.trusted (1 was the same without it; migrated in place)
DB_NAME = "embeddings.sqlite3"
SUBDIR = "embeddings"
DEFAULT_MAX_BYTES = 4 << 30  # 4 GiB: about two million 512-d embeddings
ENTRY_OVERHEAD = 64  # bytes counted per entry beyond its key and value (row header, index)
TOUCH_AFTER_S = 60.0
EVICT_TO = 0.9
KINDS = ("image", "image-fast", "text", "pair")
_CHUNK = 500  # keys per SELECT ... IN (...)
_DTYPE = np.dtype("<f4")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries(
    ns TEXT NOT NULL,
    key BLOB NOT NULL,
    vec BLOB NOT NULL,
    digest BLOB NOT NULL,
    used INTEGER NOT NULL,
    trusted INTEGER NOT NULL DEFAULT 0,
    UNIQUE(ns, key)
);
CREATE INDEX IF NOT EXISTS entries_used ON entries(used);
CREATE TABLE IF NOT EXISTS stats(id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER NOT NULL,
                                 count INTEGER NOT NULL);
INSERT OR IGNORE INTO stats VALUES (0, 0, 0);
CREATE TRIGGER IF NOT EXISTS entries_added AFTER INSERT ON entries BEGIN
    UPDATE stats SET bytes = bytes + length(NEW.vec) + length(NEW.key) + length(NEW.ns) + {ENTRY_OVERHEAD},
                     count = count + 1 WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS entries_removed AFTER DELETE ON entries BEGIN
    UPDATE stats SET bytes = bytes - length(OLD.vec) - length(OLD.key) - length(OLD.ns) - {ENTRY_OVERHEAD},
                     count = count - 1 WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS entries_replaced AFTER UPDATE OF vec ON entries BEGIN
    UPDATE stats SET bytes = bytes - length(OLD.vec) + length(NEW.vec) WHERE id = 0;
END;
"""


def default_max_bytes() -> int:
    env = os.environ.get("CLIPEVAL_CACHE_MAX_BYTES")
    if not env:
        return DEFAULT_MAX_BYTES
    try:
        value = int(env)
        if value < 0:
            raise ValueError
    except ValueError:
        raise ConfigError(f"CLIPEVAL_CACHE_MAX_BYTES must be a non-negative integer (got {env!r})",
                          "set it to a size in bytes, e.g. 4294967296 for 4 GiB") from None
    return value


def _digest(ns: str, key: bytes, vec: bytes, trusted: bool = False) -> bytes:
    """The integrity digest of an entry. An untrusted entry's digest is that of schema 1, so
    entries written before trust was recorded stay valid, as untrusted ones."""
    h = hashlib.blake2b(digest_size=16)
    h.update(ns.encode())
    h.update(b"\0")
    h.update(key)
    h.update(vec)
    if trusted:
        h.update(b"\0verified")
    return h.digest()


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def text_key(text: str) -> bytes:
    """The key of a text: its UTF-8 bytes, as embedded (a prompt prefix included)."""
    return _sha(b"text\0" + text.encode("utf-8", "surrogatepass"))


def pair_key(query: str, document: str) -> bytes:
    """The key of a reranker's (query, document) pair; the query's length makes it unambiguous."""
    q = query.encode("utf-8", "surrogatepass")
    return _sha(b"pair\0" + str(len(q)).encode() + b"\0" + q + document.encode("utf-8", "surrogatepass"))


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def image_key(source, verify: bool = False) -> bytes | None:
    """The key of an image source, or None when it has no stable identity (a PIL image, or a
    file that cannot be read: the decode stage reports that)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _sha(b"bytes\0" + hashlib.sha256(source).digest())
    if not isinstance(source, (str, os.PathLike)):
        return None
    try:
        if verify:
            return _sha(b"sha256\0" + file_sha256(source).encode())
        path = os.path.realpath(os.fspath(source))
        st = os.stat(path)
    except OSError:
        return None
    return _sha(f"file\0{path}\0{st.st_size}\0{st.st_mtime_ns}".encode("utf-8", "surrogateescape"))


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    written: int = 0

    def to_dict(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "corrupt": self.corrupt, "written": self.written}


class CacheUnavailable(Exception):
    """The cache database cannot be opened or is damaged; runs go on without it.

    ``remedy`` says what the user can do (``clipeval cache clear``, or move a folder away)."""

    def __init__(self, message: str, remedy: str = "`clipeval cache clear` removes it and creates an empty one"):
        super().__init__(message)
        self.message = message
        self.remedy = remedy


class EmbeddingCache:
    """The on-disk embedding cache (see the module docstring). One instance per process run;
    it holds one SQLite connection, used from the thread that runs the towers.

    Raises :class:`CacheUnavailable` when the database cannot be opened. A read or write that
    fails later turns the cache off for the rest of the run (one warning; :attr:`disabled` says
    why): lookups then miss and stores do nothing, so a damaged cache never stops a run.
    """

    def __init__(self, root: str | os.PathLike | None = None, *, max_bytes: int | None = None,
                 verify: bool = False, timeout_s: float = 60.0):
        self.dir = cache_root(root) / SUBDIR
        self.path = self.dir / DB_NAME
        self.max_bytes = default_max_bytes() if max_bytes is None else int(max_bytes)
        self.verify = verify
        self.disabled: str | None = None
        self._db: sqlite3.Connection | None = None
        if self.path.is_dir():
            raise CacheUnavailable(f"the embedding cache at {self.path} cannot be used: it is a directory, "
                                   "not a database file",
                                   f"move the directory away (or delete it: rm -r {self.path}), "
                                   "or pass another --cache-dir")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=timeout_s, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._prepare()
        except (sqlite3.Error, OSError) as exc:
            self.close()
            raise CacheUnavailable(f"the embedding cache at {self.path} cannot be used: "
                                   f"{type(exc).__name__}: {exc}") from None

    def _prepare(self) -> None:
        """Create the tables, or migrate a schema-1 database in place (its entries stay, untrusted)."""
        self._db.executescript("BEGIN IMMEDIATE;\n" + _SCHEMA + "COMMIT;\n")
        with self._write():
            row = self._db.execute("SELECT v FROM meta WHERE k = 'schema'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif row[0] == "1":
                columns = {r[1] for r in self._db.execute("PRAGMA table_info(entries)")}
                if "trusted" not in columns:
                    self._db.execute("ALTER TABLE entries ADD COLUMN trusted INTEGER NOT NULL DEFAULT 0")
                self._db.execute("UPDATE meta SET v = ? WHERE k = 'schema'", (str(SCHEMA_VERSION),))
            elif row[0] != str(SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"schema version {row[0]!r}, this clipeval writes {SCHEMA_VERSION}")

    # -- plumbing ---------------------------------------------------------------------------

    def _write(self):
        return _Transaction(self._db)

    def close(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _turn_off(self, doing: str, exc: BaseException) -> None:
        """Stop using the cache for the rest of the run; warn once."""
        if self.disabled is None:
            self.disabled = f"{type(exc).__name__}: {exc}"
            log.warning("the embedding cache at %s failed while %s (%s); running without it from here on "
                        "(`clipeval cache clear` removes a damaged cache and creates an empty one)",
                        self.path, doing, self.disabled)

    @staticmethod
    def space_name(identity: str, precision: str, kind: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        return f"{identity}/{precision}/{kind}"

    def space(self, identity: str, precision: str, kind: str, *, verified: bool = False) -> "CacheSpace":
        """The entries of one bundle, precision and kind. ``verified``: the run hashed every file
        of its bundle during this load; it then reads and writes trusted entries only (see the
        module docstring)."""
        return CacheSpace(self, self.space_name(identity, precision, kind), trusted=verified)

    # -- entries ----------------------------------------------------------------------------

    def get_many(self, ns: str, keys: Sequence[bytes], *, trusted_only: bool = False
                 ) -> tuple[dict[bytes, np.ndarray], int]:
        """``({key: vector}, corrupt count)`` for the keys present and intact (with
        ``trusted_only``, only entries written by runs that verified their bundle)."""
        if self.disabled is not None or self._db is None:
            return {}, 0
        try:
            return self._get_many(ns, keys, trusted_only)
        except sqlite3.Error as exc:
            self._turn_off("reading", exc)
            return {}, 0

    def _get_many(self, ns: str, keys: Sequence[bytes], trusted_only: bool) -> tuple[dict[bytes, np.ndarray], int]:
        found: dict[bytes, np.ndarray] = {}
        bad: list[bytes] = []
        stale: list[bytes] = []
        now = time.time_ns()
        touch_before = now - int(TOUCH_AFTER_S * 1e9)
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT key, vec, digest, used, trusted FROM entries WHERE ns = ? AND key IN ({marks})", (ns, *chunk))
            for key, vec, digest, used, trusted in rows:
                if not _intact(ns, key, vec, digest, used, trusted):
                    if isinstance(key, bytes):
                        bad.append(key)
                    continue
                if trusted_only and not trusted:
                    continue  # written by a run that did not verify its bundle: recompute
                found[key] = np.frombuffer(vec, dtype=_DTYPE).astype(np.float32)
                if used < touch_before:
                    stale.append(key)
        if bad:
            log.warning("embedding cache: %d corrupt entr%s in %s will be recomputed", len(bad),
                        "y" if len(bad) == 1 else "ies", self.path)
        if bad or stale:
            with self._write():
                self._db.executemany("DELETE FROM entries WHERE ns = ? AND key = ?", [(ns, k) for k in bad])
                self._db.executemany("UPDATE entries SET used = ? WHERE ns = ? AND key = ?",
                                     [(now, ns, k) for k in stale])
        return found, len(bad)

    def put_many(self, ns: str, items: Iterable[tuple[bytes, np.ndarray]], *, trusted: bool = False) -> int:
        """Store ``(key, vector)`` pairs in one transaction; returns how many rows were written.

        An untrusted write keeps an existing row; a trusted one replaces an untrusted row (and
        keeps a trusted one)."""
        if self.disabled is not None or self._db is None:
            return 0
        now = time.time_ns()
        rows = []
        for key, vec in items:
            raw = np.ascontiguousarray(vec, dtype=_DTYPE).tobytes()
            rows.append((ns, key, raw, _digest(ns, key, raw, trusted), now))
        if not rows:
            return 0
        sql = _UPSERT_TRUSTED if trusted else _INSERT_UNTRUSTED
        try:
            with self._write():
                written = self._db.executemany(sql, rows).rowcount
                self._evict()
        except sqlite3.Error as exc:
            self._turn_off("writing", exc)
            return 0
        return max(0, written)

    def _evict(self) -> int:
        """Delete least-recently-used entries until the total is under the bound (inside a write)."""
        total, count = self._db.execute("SELECT bytes, count FROM stats WHERE id = 0").fetchone()
        if total <= self.max_bytes or count == 0:
            return 0
        target = int(self.max_bytes * EVICT_TO)
        removed = 0
        while total > target and count > 0:
            avg = max(1, total // count)
            n = max(1, -(-(total - target) // avg))
            self._db.execute("DELETE FROM entries WHERE rowid IN (SELECT rowid FROM entries ORDER BY used, rowid "
                             "LIMIT ?)", (n,))
            removed += n
            total, count = self._db.execute("SELECT bytes, count FROM stats WHERE id = 0").fetchone()
        log.info("embedding cache: evicted %d least-recently-used entries (now %d bytes)", removed, total)
        return removed

    # -- management -------------------------------------------------------------------------

    def info(self) -> dict:
        """Entries and bytes, in all and per space. Raises :class:`CacheUnavailable` when the
        database turns out to be damaged."""
        try:
            total, count = self._db.execute("SELECT bytes, count FROM stats WHERE id = 0").fetchone()
            spaces = []
            for ns, n, size, last, trusted in self._db.execute(
                    "SELECT ns, count(*), sum(length(vec) + length(key) + length(ns)) + count(*) * ?, max(used), "
                    "sum(trusted = 1) FROM entries GROUP BY ns ORDER BY ns", (ENTRY_OVERHEAD,)):
                parts = str(ns).rsplit("/", 2)
                identity, precision, kind = parts if len(parts) == 3 else (str(ns), "?", "?")
                stamp = (time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(last / 1e9))
                         if isinstance(last, int) and 0 <= last < 2**62 else None)
                spaces.append({"bundle": identity, "precision": precision, "kind": kind, "entries": n,
                               "verified_entries": trusted, "bytes": size, "last_used": stamp})
        except (sqlite3.Error, TypeError, ValueError) as exc:
            raise CacheUnavailable(f"the embedding cache at {self.path} is damaged ({type(exc).__name__}: {exc})") from None
        return {"path": str(self.path), "entries": count, "bytes": total, "max_bytes": self.max_bytes,
                "file_bytes": _file_bytes(self.path), "spaces": spaces}

    def clear(self, bundle: str | None = None) -> dict:
        """Delete every entry (or those of bundle identities starting with ``bundle``).

        Raises :class:`CacheUnavailable` when the database is damaged (``PRAGMA quick_check``
        finds a problem, or a statement fails): :func:`reset_cache` is the remedy."""
        try:
            check = [str(r[0]) for r in self._db.execute("PRAGMA quick_check(3)")]
            if check != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(" ".join(c.split()) for c in check)[:300])
            with self._write():
                before = self._db.execute("SELECT bytes, count FROM stats WHERE id = 0").fetchone()
                if bundle:
                    self._db.execute("DELETE FROM entries WHERE ns LIKE ? ESCAPE '\\'",
                                     (bundle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",))
                else:
                    self._db.execute("DELETE FROM entries")
                after = self._db.execute("SELECT bytes, count FROM stats WHERE id = 0").fetchone()
        except sqlite3.Error as exc:
            raise CacheUnavailable(f"the embedding cache at {self.path} is damaged ({type(exc).__name__}: {exc})") from None
        if not bundle:
            try:
                self._db.execute("VACUUM")
            except sqlite3.OperationalError as exc:  # another run holds the database: space is reused later
                log.info("embedding cache: VACUUM skipped (%s)", exc)
        return {"path": str(self.path), "removed_entries": before[1] - after[1], "freed_bytes": before[0] - after[0]}


_INSERT_UNTRUSTED = "INSERT OR IGNORE INTO entries(ns, key, vec, digest, used, trusted) VALUES (?, ?, ?, ?, ?, 0)"
_UPSERT_TRUSTED = ("INSERT INTO entries(ns, key, vec, digest, used, trusted) VALUES (?, ?, ?, ?, ?, 1) "
                   "ON CONFLICT(ns, key) DO UPDATE SET vec = excluded.vec, digest = excluded.digest, "
                   "used = excluded.used, trusted = 1 WHERE entries.trusted = 0")


def _intact(ns: str, key, vec, digest, used, trusted) -> bool:
    """Whether a row read back is whole: the column types a damaged page can garble, the vector
    length, and the digest."""
    if not (isinstance(key, bytes) and isinstance(vec, bytes) and isinstance(digest, bytes)
            and isinstance(used, int) and trusted in (0, 1)):
        return False
    if len(vec) == 0 or len(vec) % 4:
        return False
    return _digest(ns, key, vec, bool(trusted)) == digest


def database_files(path: Path) -> list[Path]:
    """The database file and its SQLite companions (write-ahead log, shared memory, rollback journal)."""
    return [Path(str(path) + suffix) for suffix in ("", "-wal", "-shm", "-journal")]


def reset_cache(root: str | os.PathLike | None = None) -> dict:
    """Remove the embedding-cache database at ``root`` (its file and companions) and create an
    empty one; what ``clipeval cache clear`` does when the database is damaged.

    Returns ``{"path", "freed_bytes"}``. Raises :class:`CacheUnavailable` when the path is a
    directory (never removed) or the new database cannot be created either.
    """
    path = cache_root(root) / SUBDIR / DB_NAME
    if path.is_dir():
        raise CacheUnavailable(f"{path} is a directory, not the cache database",
                               f"move it away (or delete it: rm -r {path}), or pass another --cache-dir")
    freed = _file_bytes(path)
    for f in database_files(path):
        try:
            f.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise CacheUnavailable(f"cannot remove {f} ({exc})", "remove it by hand, or pass another --cache-dir") from None
    with EmbeddingCache(root):
        pass
    return {"path": str(path), "freed_bytes": freed}


def _file_bytes(path: Path) -> int:
    total = 0
    for f in database_files(path):
        try:
            total += os.path.getsize(f)
        except OSError:
            pass
    return total


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on an exception)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            if self.db.in_transaction:
                self.db.execute("COMMIT")
        elif self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:  # a damaged database: the first error is the one to report
                pass
        return False


class CacheSpace:
    """The entries of one (bundle, precision, kind): what :mod:`clipeval.engine.embedding.stage` uses.

    ``trusted``: the run verified its bundle, so it reads and writes trusted entries only."""

    def __init__(self, cache: EmbeddingCache, ns: str, trusted: bool = False):
        self.cache = cache
        self.ns = ns
        self.trusted = trusted
        self.stats = CacheStats()

    @property
    def verify(self) -> bool:
        return self.cache.verify

    def lookup(self, keys: Sequence[bytes | None]) -> dict[int, np.ndarray]:
        """``{position: vector}`` for the positions of ``keys`` found in the cache."""
        present = [k for k in keys if k is not None]
        found, corrupt = (self.cache.get_many(self.ns, present, trusted_only=self.trusted) if present
                          else ({}, 0))
        out = {i: found[k] for i, k in enumerate(keys) if k is not None and k in found}
        self.stats.hits += len(out)
        self.stats.misses += len(keys) - len(out)
        self.stats.corrupt += corrupt
        return out

    def store(self, keys: Sequence[bytes | None], vectors: np.ndarray) -> None:
        """Store rows of ``vectors`` under ``keys`` (rows whose key is None are skipped).

        A write that fails (a damaged database, one busy past the timeout, a full disk) turns the
        cache off for the rest of the run, with one warning: the embeddings are still returned,
        only not cached."""
        items = [(k, v) for k, v in zip(keys, vectors) if k is not None]
        self.stats.written += self.cache.put_many(self.ns, items, trusted=self.trusted)


def open_cache(cache_dir: str | os.PathLike | None = None, *, max_bytes: int | None = None,
               verify: bool = False) -> EmbeddingCache | None:
    """The embedding cache, or None (with a warning) when it cannot be opened: a run never fails
    because of its cache."""
    try:
        return EmbeddingCache(cache_dir, max_bytes=max_bytes, verify=verify)
    except CacheUnavailable as exc:
        log.warning("%s; running without it (%s)", exc.message, exc.remedy)
        return None
