"""An asyncio client for ``POST {api_base}/chat/completions`` (any OpenAI-compatible server).

One :class:`CaptionClient` holds one ``aiohttp`` session whose connector allows at most
``concurrency`` connections. :meth:`CaptionClient.caption` asks for one caption and retries what
is worth retrying:

* connection errors, dropped connections, timeouts, a 200 whose body is not a chat completion
  or holds no caption (an empty or whitespace-only text, a null content, a refusal: see
  :func:`caption_text`), and HTTP 408, 409, 429 and 5xx are retried, up to ``max_attempts``
  attempts in all, with the waits of :class:`clipeval.engine.http_retry.RetryPolicy` (the one retry
  policy of clipeval's HTTP clients: exponential backoff from ``backoff_base``, capped at
  ``backoff_max``, with jitter);
* a ``Retry-After`` (or ``retry-after-ms``) header is honoured: that attempt waits at least as
  long (capped at ``retry_after_max``), and so does every other request of the client, so a rate
  limit slows the whole run down instead of provoking a storm of retries;
* any other 4xx is not retried: :class:`Refused` carries the status and the server's error text.

The API key travels only in the ``Authorization`` header. It is never part of a message: any
server text quoted in an error has the key replaced by ``***``.
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import orjson

from ..errors import ClipevalError
from ..http_retry import RetryPolicy, parse_retry_after, retryable_status

log = logging.getLogger(__name__)

# The reference tool's default instruction (evalscope VLMAPI).
DEFAULT_PROMPT = ("Please describe this image in general. Directly provide the description, "
                  "do not include prefix like 'This image depicts'")
MAX_ERROR_TEXT = 400


class CaptionAPIError(ClipevalError):
    """The caption server cannot be used for this run (bad key, unknown model, too many failures)."""


class ItemFailed(Exception):
    """One image got no caption: ``reason`` says why (the key already redacted)."""

    def __init__(self, reason: str, status: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.status = status


class Refused(ItemFailed):
    """The server answered a 4xx that retrying will not change."""

    def __init__(self, status: int, text: str):
        super().__init__(f"{status_line(status)}: {text}", status)
        self.text = text


class _Retry(Exception):
    def __init__(self, reason: str, kind: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.retry_after = retry_after


def status_line(status: int) -> str:
    try:
        return f"HTTP {status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def redact(text: str, secret: str | None) -> str:
    if secret and len(secret) >= 4:
        text = text.replace(secret, "***")
    return text


def error_text(raw: bytes, secret: str | None) -> str:
    """The server's error message from an error body (OpenAI, vLLM or FastAPI shape, or plain text)."""
    message = None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict):
            message = err.get("message")
        elif isinstance(err, str):
            message = err
        if message is None:
            message = obj.get("message") or obj.get("detail")
        if message is not None and not isinstance(message, str):
            message = orjson.dumps(message).decode()
    if message is None:
        message = raw.decode("utf-8", "replace").strip() or "(empty body)"
    message = " ".join(redact(message, secret).split())
    if len(message) > MAX_ERROR_TEXT:
        message = message[:MAX_ERROR_TEXT] + "..."
    return message


class NoCaption(Exception):
    """A well-formed chat completion that holds no usable caption: an empty or whitespace-only
    text, a null content, a refusal. ``kind`` is ``"empty"`` or ``"refusal"``."""

    def __init__(self, reason: str, kind: str = "empty"):
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


# Content part types whose "text" is answer text (Chat Completions "text"; "output_text" as some
# servers relay the Responses API shape).
_TEXT_PARTS = ("text", "output_text")


def caption_text(raw: bytes) -> str:
    """The caption in a chat-completion body (``choices[0].message.content``), stripped.

    ``content`` may be a string or a list of content parts (the OpenAI multi-part shape): the
    text of the ``text`` parts is joined; other parts (images, audio) are ignored.

    Raises ValueError when the body is not a chat completion (not JSON, no ``choices``, an
    empty ``choices`` list, no ``message``, a content of another type) and :class:`NoCaption`
    when it is one without a caption: ``refusal`` set (or a ``refusal`` part), a null content,
    or a text that is empty or only whitespace. Both count as a failed attempt for the image.
    """
    obj = orjson.loads(raw)
    if not isinstance(obj, dict):
        raise ValueError(f"the body is a JSON {type(obj).__name__}, not an object")
    if "choices" not in obj:
        raise ValueError("the answer has no 'choices'")
    choices = obj["choices"]
    if not isinstance(choices, list) or not choices:
        raise ValueError(f"'choices' is {'an empty list' if choices == [] else type(choices).__name__}")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise ValueError("choices[0] has no 'message' object")
    finish = choice.get("finish_reason")
    refusal = message.get("refusal")
    content = message.get("content")
    if isinstance(content, list):
        texts, refusals = [], []
        for part in content:
            if not isinstance(part, dict):
                raise ValueError(f"a content part is a {type(part).__name__}, not an object")
            if part.get("type") == "refusal" and isinstance(part.get("refusal"), str):
                refusals.append(part["refusal"])
            elif part.get("type", "text") in _TEXT_PARTS and isinstance(part.get("text"), str):
                texts.append(part["text"])
        content = "".join(texts)
        refusal = refusal or " ".join(refusals) or None
    if isinstance(refusal, str) and refusal.strip():
        raise NoCaption(f"the model refused: {' '.join(refusal.split())[:200]}", "refusal")
    why = f" (finish_reason {finish!r})" if isinstance(finish, str) and finish != "stop" else ""
    if content is None:
        raise NoCaption(f"the answer's content is null{why}")
    if not isinstance(content, str):
        raise ValueError(f"message content is {type(content).__name__}, not text")
    text = content.strip()
    if not text:
        raise NoCaption(f"the caption is {'empty' if not content else 'only whitespace'}{why}")
    return text


@dataclass
class ClientSettings:
    api_base: str
    model_name: str
    api_key: str | None = field(default=None, repr=False)
    prompt: str = DEFAULT_PROMPT
    system_prompt: str | None = None
    max_tokens: int | None = 512
    temperature: float | None = 0.0
    timeout: float = 120.0
    concurrency: int = 8
    max_attempts: int = 6
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 120.0
    seed: int | None = None

    @property
    def url(self) -> str:
        return self.api_base.rstrip("/") + "/chat/completions"

    def policy(self) -> RetryPolicy:
        """The retry policy these settings make (:mod:`clipeval.engine.http_retry`)."""
        return RetryPolicy(attempts=self.max_attempts, backoff_base=self.backoff_base, backoff_max=self.backoff_max,
                           retry_after_max=self.retry_after_max, seed=self.seed)


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    captions: int = 0
    # "200", "429", "timeout", "connection", "malformed", "empty", "refusal"
    outcomes: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {"requests": self.requests, "retries": self.retries, "captions": self.captions,
                "outcomes": dict(sorted(self.outcomes.items()))}


class CaptionClient:
    """``async with CaptionClient(settings) as c: text = await c.caption(data_url)``."""

    def __init__(self, settings: ClientSettings):
        self.settings = settings
        self.stats = ClientStats()
        self.retry = settings.policy()
        self._session: aiohttp.ClientSession | None = None
        self._pause_until = 0.0  # loop time before which no request starts (Retry-After)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if settings.api_key:
            headers["Authorization"] = f"Bearer {settings.api_key}"
        self._headers = headers

    async def __aenter__(self) -> "CaptionClient":
        s = self.settings
        connector = aiohttp.TCPConnector(limit=s.concurrency, limit_per_host=s.concurrency, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=s.timeout, sock_connect=min(s.timeout, 30.0))
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, headers=self._headers,
                                              json_serialize=lambda o: orjson.dumps(o).decode())
        return self

    async def __aexit__(self, *exc) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def body(self, image_url: str) -> dict:
        s = self.settings
        messages = []
        if s.system_prompt:
            messages.append({"role": "system", "content": s.system_prompt})
        messages.append({"role": "user", "content": [
            {"type": "text", "text": s.prompt},
            {"type": "image_url", "image_url": {"url": image_url}},
        ]})
        body = {"model": s.model_name, "messages": messages}
        if s.max_tokens is not None:
            body["max_tokens"] = s.max_tokens
        if s.temperature is not None:
            body["temperature"] = s.temperature
        return body

    async def _gate(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            wait = self._pause_until - loop.time()
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    async def _once(self, payload: bytes) -> str:
        s = self.settings
        self.stats.requests += 1
        try:
            async with self._session.post(s.url, data=payload) as resp:
                raw = await resp.read()
                status = resp.status
                headers = resp.headers
        except asyncio.TimeoutError:
            self.stats.outcomes["timeout"] += 1
            raise _Retry(f"no answer within {s.timeout:g} s", "timeout") from None
        except aiohttp.ClientError as exc:
            self.stats.outcomes["connection"] += 1
            reason = redact(f"{type(exc).__name__}: {exc}", s.api_key)
            raise _Retry(f"connection error ({reason})", "connection") from None
        if 200 <= status < 300:
            try:
                text = caption_text(raw)
            except NoCaption as exc:
                self.stats.outcomes[exc.kind] += 1
                raise _Retry(exc.reason, exc.kind) from None
            except (orjson.JSONDecodeError, ValueError, KeyError, IndexError, TypeError) as exc:
                self.stats.outcomes["malformed"] += 1
                raise _Retry(f"the answer is not a chat completion ({type(exc).__name__}: "
                             f"{redact(str(exc), s.api_key)[:200]})", "malformed") from None
            self.stats.outcomes[str(status)] += 1
            return text
        self.stats.outcomes[str(status)] += 1
        text = error_text(raw, s.api_key)
        if retryable_status(status):
            raise _Retry(f"{status_line(status)}: {text}", str(status), parse_retry_after(headers))
        raise Refused(status, text)

    async def caption(self, image_url: str) -> str:
        """One caption for ``image_url`` (a data URL), retrying transient failures.

        Raises :class:`Refused` on a 4xx that is not retried, :class:`ItemFailed` when every
        attempt failed.
        """
        s = self.settings
        payload = orjson.dumps(self.body(image_url))
        last: _Retry | None = None
        loop = asyncio.get_running_loop()
        for attempt in range(self.retry.attempts):
            await self._gate()
            try:
                text = await self._once(payload)
            except _Retry as exc:
                last = exc
                if not self.retry.more(attempt):
                    break
                delay = self.retry.delay(attempt, exc.retry_after)
                if exc.retry_after is not None:
                    self._pause_until = max(self._pause_until, loop.time() + delay)
                self.stats.retries += 1
                log.debug("attempt %d failed (%s); retrying in %.2f s", attempt + 1, exc.reason, delay)
                await asyncio.sleep(delay)
                continue
            self.stats.captions += 1
            return text
        raise ItemFailed(f"no caption after {s.max_attempts} attempt(s); last: {last.reason}",
                         int(last.kind) if last.kind.isdigit() else None)
