"""``clipeval cache info|clear``: the embedding cache (``CACHE_ROOT/embeddings``)."""

from __future__ import annotations

import click

from .console import emit
from .options import CONTEXT


def _cache_dir_option(f):
    return click.option("--cache-dir", default=None, metavar="DIR",
                        help="Cache root. Default: $CLIPEVAL_CACHE_DIR, else ~/.cache/clipeval.")(f)


def _user_error(exc):
    from clipeval.engine.errors import ClipevalError

    return ClipevalError(exc.message, exc.remedy)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@click.group("cache", context_settings=CONTEXT)
def cache_group():
    """Inspect or empty the embedding cache."""


@cache_group.command("info")
@_cache_dir_option
def info_cmd(cache_dir):
    """Entries and size per bundle (a table on stderr, JSON on stdout)."""
    from clipeval.engine.embedding.cache import CacheUnavailable, EmbeddingCache

    try:
        with EmbeddingCache(cache_dir) as cache:
            info = cache.info()
    except CacheUnavailable as exc:
        raise _user_error(exc) from None
    click.echo(f"{info['path']}: {info['entries']} entries, {_size(info['bytes'])} "
               f"(bound {_size(info['max_bytes'])}, {_size(info['file_bytes'])} on disk)", err=True)
    for space in info["spaces"]:
        click.echo(f"  {space['bundle'][:12]}  {space['precision']:5s} {space['kind']:10s} "
                   f"{space['entries']:8d} entries  {_size(space['bytes']):>10s}  last used {space['last_used'] or '?'}",
                   err=True)
    emit(info)


@cache_group.command("clear")
@_cache_dir_option
@click.option("--bundle", default=None, metavar="IDENTITY",
              help="Only the entries of this bundle identity (or a prefix of it; see `cache info`).")
def clear_cmd(cache_dir, bundle):
    """Delete cached embeddings (all, or one bundle's). A damaged cache database is removed and
    an empty one created (every entry is gone then, whatever --bundle says)."""
    from clipeval.engine.embedding.cache import CacheUnavailable, EmbeddingCache, reset_cache

    try:
        with EmbeddingCache(cache_dir) as cache:
            result = {**cache.clear(bundle), "recreated": False}
    except CacheUnavailable as damage:
        try:
            reset = reset_cache(cache_dir)
        except CacheUnavailable as exc:
            raise _user_error(exc) from None
        result = {"path": reset["path"], "removed_entries": None, "freed_bytes": reset["freed_bytes"],
                  "recreated": True, "reason": damage.message}
        click.echo(f"{damage.message}\nremoved it and created an empty cache at {reset['path']} "
                   f"({_size(reset['freed_bytes'])} freed{'; all bundles, not only ' + bundle if bundle else ''})",
                   err=True)
    else:
        click.echo(f"removed {result['removed_entries']} entries ({_size(result['freed_bytes'])})", err=True)
    emit(result)
