"""Caption many images with a bounded pool of workers, journaling each caption as it arrives."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ImageError
from ..progress import Progress
from .client import CaptionAPIError, CaptionClient, ClientSettings, ItemFailed, Refused, status_line
from .encode import image_data_url
from .journal import Journal

log = logging.getLogger(__name__)

# Statuses that mean every request will be refused the same way: stop at the first one.
FATAL_STATUSES = frozenset({401, 403, 404, 405})
# Other refusals stop the run when this many come first, before any caption succeeded.
EARLY_REFUSALS = 3

_REMEDY = {
    401: "check the API key (the model entry's api_key, or CLIPEVAL_API_KEY / OPENAI_API_KEY)",
    403: "check that the API key may use this model",
    404: "check --model-name (the server's GET {api_base}/models lists the names it serves) "
         "and --api-base (it usually ends in /v1)",
    405: "check --api-base: it should be the API root (usually ending in /v1), without /chat/completions",
}


@dataclass
class Item:
    """One image to caption: its journal key, a function returning its source (a path, bytes or
    PIL image; called in a worker thread when the image is sent), and its label for messages."""

    key: str
    source: Callable[[], Any]
    where: str


def _encode(item: Item, max_side: int | None) -> str:
    try:
        source = item.source()
    except OSError as exc:
        raise ImageError(f"{item.where} cannot be read ({exc})") from None
    return image_data_url(source, max_side)


@dataclass
class PoolReport:
    failures: list[tuple[Item, str]] = field(default_factory=list)
    image_errors: list[tuple[Item, str]] = field(default_factory=list)
    captioned: int = 0
    stats: dict = field(default_factory=dict)


def _refusal_error(settings: ClientSettings, exc: Refused, early: bool) -> CaptionAPIError:
    what = "refused the first requests" if early else "refused the request"
    remedy = _REMEDY.get(exc.status, "check the request settings (model name, max tokens, image size)")
    return CaptionAPIError(
        f"the caption server {what}: {status_line(exc.status)} from POST {settings.shown_url}: {exc.text}",
        remedy.replace("{api_base}", settings.shown_base),
    )


async def caption_pool(items: list[Item], settings: ClientSettings, journal: Journal, *,
                       max_failures: int, max_image_side: int | None, progress: bool = True) -> PoolReport:
    """Caption ``items`` (none of them in the journal yet); each caption goes to ``journal``.

    Stops with :class:`CaptionAPIError` when the server refuses in a way that will not change
    (see :data:`FATAL_STATUSES`, :data:`EARLY_REFUSALS`) or when more than ``max_failures``
    images end without a caption. Images that cannot be read are collected in the report.
    """
    report = PoolReport()
    pending = iter(items)
    refused_at_start = 0

    async with CaptionClient(settings) as client:
        async def worker(bar: Progress) -> None:
            nonlocal refused_at_start
            for item in pending:  # one shared iterator: each item goes to exactly one worker
                try:
                    url = await asyncio.to_thread(_encode, item, max_image_side)
                except ImageError as exc:
                    report.image_errors.append((item, exc.message))
                    bar.update(1)
                    continue
                try:
                    text = await client.caption(url)
                except Refused as exc:
                    if exc.status in FATAL_STATUSES:
                        raise _refusal_error(settings, exc, early=False) from None
                    if client.stats.captions == 0:
                        refused_at_start += 1
                        if refused_at_start >= min(EARLY_REFUSALS, len(items)):
                            raise _refusal_error(settings, exc, early=True) from None
                    _fail(item, exc)
                except ItemFailed as exc:
                    _fail(item, exc)
                else:
                    journal.add_caption(item.key, text)
                    report.captioned += 1
                bar.update(1)

        def _fail(item: Item, exc: ItemFailed) -> None:
            report.failures.append((item, exc.reason))
            journal.add_failure(item.key, exc.reason)
            log.warning("no caption for %s: %s", item.where, exc.reason)
            if len(report.failures) > max_failures:
                raise CaptionAPIError(
                    f"{len(report.failures)} image(s) got no caption, more than --max-failures {max_failures}; "
                    f"the last, {item.where}: {exc.reason}",
                    f"check the server at {settings.shown_base}; run again to resume "
                    f"({len(journal.captions)} caption(s) are kept in {journal.path}), "
                    "or raise --max-failures to accept images without a caption",
                )

        with Progress("captions", len(items), unit="img", enabled=progress) as bar:
            workers = [asyncio.ensure_future(worker(bar)) for _ in range(min(settings.concurrency, len(items)))]
            try:
                await asyncio.gather(*workers)
            finally:
                for w in workers:
                    w.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                report.stats = client.stats.to_dict()
    return report
