"""One retry policy for every HTTP client of clipeval: dataset downloads
(:mod:`clipeval.engine.datasets.sources`) and captioning (:mod:`clipeval.engine.caption.client`).

What is retried: a transport failure (connection refused or dropped, a timeout), and the
statuses a later attempt can change: 408 (request timeout), 409 (conflict), 429 (too many
requests) and every 5xx. Any other 4xx is final. Each caller adds what is transient for its own
content (a shard cut short, an empty caption) and counts it as one attempt.

How long to wait before attempt ``n + 1`` (``n`` = 0 after the first failure): exponential
backoff with jitter, ``span = min(backoff_max, backoff_base * 2**n)`` seconds and a uniform
random point in the upper half of it (``[span/2, span]``: spreads clients apart without ever
retrying at once). A ``Retry-After`` (or ``retry-after-ms``) the server sent is honoured: the
wait is at least that long (capped at ``retry_after_max``), plus a little jitter. The policy is
the "exponential backoff and jitter" of the AWS Architecture Blog (Brooker, 2015), with the
server's ``Retry-After`` (RFC 9110, section 10.2.3) as a floor.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from dataclasses import dataclass, field

RETRY_STATUSES = frozenset({408, 409, 429})


def retryable_status(status: int) -> bool:
    """Whether an HTTP ``status`` (an error) may change on a later attempt: 408, 409, 429 or 5xx."""
    return status in RETRY_STATUSES or status >= 500


def parse_retry_after(headers) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date);
    ``None`` when neither is there or readable. Never negative."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass
class RetryPolicy:
    """How many attempts, and how long to wait between them (see the module docstring).

    ``attempts``: attempts in all (the first one included), at least 1. ``backoff_base`` /
    ``backoff_max`` / ``retry_after_max``: seconds. ``seed``: the jitter's random seed (tests
    pass one for repeatable waits)."""

    attempts: int = 6
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 120.0
    seed: int | None = None
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        self._rng = random.Random(self.seed)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the failed attempt number ``attempt`` (0-based)."""
        span = min(self.backoff_max, self.backoff_base * (2 ** attempt))
        wait = span / 2 + self._rng.uniform(0, span / 2)
        if retry_after is not None:
            floor = min(self.retry_after_max, retry_after)
            wait = max(wait, floor + self._rng.uniform(0, 0.1 * floor + 0.05))
        return wait

    def more(self, attempt: int) -> bool:
        """Whether another attempt follows the failed attempt number ``attempt`` (0-based)."""
        return attempt + 1 < self.attempts

    async def pause(self, attempt: int, retry_after: float | None = None) -> float:
        """Sleep :meth:`delay` seconds (asyncio); returns them."""
        wait = self.delay(attempt, retry_after)
        await asyncio.sleep(wait)
        return wait


# Downloads: files are fetched again (resuming) a few times, quickly; a server that is down
# stays down for longer than a run should wait.
DOWNLOAD_POLICY = dict(attempts=5, backoff_base=0.1, backoff_max=2.0, retry_after_max=30.0)
