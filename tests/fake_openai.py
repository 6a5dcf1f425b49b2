"""An OpenAI-compatible chat-completions server for tests and benchmarks (aiohttp, 127.0.0.1).

It checks requests the way a real server does (path, JSON body, model name, messages, the image
as a base64 data URL that decodes, sampling parameters, the bearer key) and answers with a
chat completion whose text is the image's caption. Captions come from the embedded demo CLIP
model when its bundle is present (the caption grammar's sentence whose embedding is closest to
the image's), else a deterministic text derived from the image bytes.

Faults are injected per request at ``fault_rate``, decided by a hash of (seed, image, attempt
number), so a run sees the same faults whatever order its requests arrive in. Kinds: ``429``
(with ``Retry-After``), ``500``, ``503``, ``timeout`` (answers after ``slow_s``; with
``slow_s=None`` never: the request is held until the client gives up, so a test does not race the
client's timer), ``malformed`` (a 200 with a cut JSON body) and ``drop`` (the connection is closed
without an answer). ``refuse=(status, message)`` answers every request with that error.

``hold(after=n)`` lets ``n`` more requests through and holds every later one, unanswered, until
``release()``: a test can interrupt a run at a known point instead of racing it. ``answer_shape``, when set
on an instance, reshapes each successful answer: ``answer_shape(payload, image id, attempt)``
returns the chat-completion object to send (response modes: empty or null content, refusals,
content parts, no choices ...).

Use as a context manager: ``with FakeOpenAI(...) as server: server.url``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import threading
import time
from collections import Counter

import orjson
from aiohttp import web
from PIL import Image

FAULT_KINDS = ("429", "500", "503", "timeout", "malformed", "drop")


def image_id(jpeg: bytes) -> str:
    return hashlib.sha256(jpeg).hexdigest()[:16]


def _unit(*parts) -> float:
    h = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0 ** 64


class EchoCaptioner:
    """A deterministic caption from the image's size and mean colour."""

    def __call__(self, img: Image.Image, ident: str) -> str:
        r, g, b = (int(v) for v in img.resize((1, 1), Image.Resampling.BOX).getpixel((0, 0)))
        return f"an image of {img.size[0]}x{img.size[1]} pixels, mean colour {r} {g} {b}, id {ident[:8]}"


class DemoCaptioner:
    """The demo CLIP's best caption among every sentence of its grammar (first phrasing)."""

    def __init__(self):
        from clipeval.engine.sessions.bundle import load_bundle
        from clipeval.engine.demo import DEMO_MODEL_DIR
        from clipeval.engine.embedding.stage import embed_texts
        from clipeval.engine.sessions.model import load_model
        from clipeval.export.demo.shapes import all_scenes, caption

        self.model = load_model(load_bundle(DEMO_MODEL_DIR), provider="cpu", threads=1)
        self.captions = [caption(s, 0) for s in all_scenes()]
        self.text = embed_texts(self.model.text, self.model.tokenizer, self.captions, batch_size=256,
                                progress=False).embeds

    @staticmethod
    def available() -> bool:
        from clipeval.engine.demo import DEMO_MODEL_DIR

        return (DEMO_MODEL_DIR / "manifest.json").is_file()

    def __call__(self, img: Image.Image, ident: str) -> str:
        pixels = self.model.preprocessor(img.convert("RGB"))[None]
        emb = self.model.vision.run({"pixel_values": pixels})[0]
        return self.captions[int((self.text @ emb).argmax())]


def error_response(status: int, message: str, kind: str = "invalid_request_error", headers=None) -> web.Response:
    body = orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}})
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


class FakeOpenAI:
    answer_shape = None  # callable(payload, image id, attempt number) -> payload; see the module docstring

    def __init__(self, *, model: str = "fake-vlm", api_key: str | None = None, captioner="auto",
                 fault_rate: float = 0.0, fault_kinds=FAULT_KINDS, seed: int = 0, retry_after: str = "0",
                 slow_s: float | None = 2.0, delay_s: float = 0.0, refuse: tuple[int, str] | None = None):
        self.model = model
        self.api_key = api_key
        self.fault_rate = fault_rate
        self.fault_kinds = tuple(fault_kinds)
        self.seed = seed
        self.retry_after = retry_after
        self.slow_s = slow_s
        self.delay_s = delay_s
        self.refuse = refuse
        if captioner == "auto":
            captioner = DemoCaptioner() if DemoCaptioner.available() else EchoCaptioner()
        elif captioner == "echo":
            captioner = EchoCaptioner()
        self.captioner = captioner
        self.requests: Counter = Counter()  # image id -> requests
        self.answered: Counter = Counter()  # image id -> captions answered
        self.faults: Counter = Counter()  # image id -> faults injected
        self.events: list[tuple[float, str, str]] = []  # (time, image id, outcome)
        self.bodies: list[dict] = []  # the last requests' bodies (image data left out)
        self.headers_seen: list[dict] = []
        self.invalid = 0
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._allowance: int | None = None  # requests let through before holding; None: no hold
        self._gate: asyncio.Event | None = None  # set: held requests go on
        self.held = 0  # requests waiting at the gate now

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "FakeOpenAI":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> str:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-openai", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self.url

    async def _start(self) -> None:
        self._gate = asyncio.Event()
        self._gate.set()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=256)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1"

    def hold(self, after: int) -> None:
        """Let ``after`` more requests through, then hold every later one until :meth:`release`."""
        def close_gate():
            self._allowance = after
            self._gate.clear()

        self._call(close_gate)

    def release(self) -> None:
        """Let held requests (and every later one) go on."""
        def open_gate():
            self._allowance = None
            self._gate.set()

        self._call(open_gate)

    def _call(self, fn) -> None:
        async def run():
            fn()

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=30)

    async def _pass_gate(self) -> None:
        if self._allowance is None:
            return
        if self._allowance > 0:
            self._allowance -= 1
            return
        self.held += 1
        try:
            await self._gate.wait()
        finally:
            self.held -= 1

    def stop(self) -> None:
        if self._loop is None:
            return
        self.release()
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()
        self._loop = None

    def reset_counts(self) -> None:
        self.requests.clear()
        self.answered.clear()
        self.faults.clear()
        self.events.clear()

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    # ------------------------------------------------------------------ handlers
    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    def _check(self, body) -> tuple[bytes | None, str | None]:
        """(the image's bytes, None) or (None, what is wrong)."""
        if not isinstance(body, dict):
            return None, "the body must be a JSON object"
        if not isinstance(body.get("model"), str):
            return None, "'model' is required"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return None, "'messages' must be a non-empty list"
        image = None
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                return None, "each message needs a role of system, user or assistant"
            content = m.get("content")
            if isinstance(content, str):
                continue
            if not isinstance(content, list):
                return None, "message content must be a string or a list of parts"
            for part in content:
                if not isinstance(part, dict):
                    return None, "content parts must be objects"
                if part.get("type") == "text":
                    if not isinstance(part.get("text"), str):
                        return None, "a text part needs 'text'"
                elif part.get("type") == "image_url":
                    if m["role"] != "user":
                        return None, "images may only be sent by the user"
                    url = (part.get("image_url") or {}).get("url")
                    prefix = "data:image/jpeg;base64,"
                    if not isinstance(url, str) or not url.startswith(prefix):
                        return None, "image_url.url must be a data:image/jpeg;base64 URL"
                    try:
                        image = base64.b64decode(url[len(prefix):], validate=True)
                    except ValueError:
                        return None, "the image data is not valid base64"
                else:
                    return None, f"unknown content part type {part.get('type')!r}"
        if image is None:
            return None, "no image in the request"
        mt = body.get("max_tokens")
        if mt is not None and (isinstance(mt, bool) or not isinstance(mt, int) or mt < 1):
            return None, "max_tokens must be a positive integer"
        temp = body.get("temperature")
        if temp is not None and (isinstance(temp, bool) or not isinstance(temp, (int, float)) or not 0 <= temp <= 2):
            return None, "temperature must be between 0 and 2"
        return image, None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.headers_seen.append(dict(request.headers))
        if self.api_key is not None:
            given = request.headers.get("Authorization", "")
            if given != f"Bearer {self.api_key}":
                shown = given.removeprefix("Bearer ") or "(none)"
                return error_response(401, f"Incorrect API key provided: {shown}. You can find your API key in your account.",
                              "invalid_api_key")
        if self.refuse is not None:
            return error_response(self.refuse[0], self.refuse[1])
        if request.content_type != "application/json":
            self.invalid += 1
            return error_response(400, "Content-Type must be application/json")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            self.invalid += 1
            return error_response(400, "the body is not valid JSON")
        jpeg, problem = self._check(body)
        if problem:
            self.invalid += 1
            return error_response(400, problem, "BadRequestError")
        if body["model"] != self.model:
            return error_response(404, f"The model `{body['model']}` does not exist.", "NotFoundError")
        try:
            img = Image.open(io.BytesIO(jpeg))
            if img.format != "JPEG":
                raise ValueError(img.format)
            img.load()
        except Exception:
            self.invalid += 1
            return error_response(400, "the image cannot be decoded as JPEG", "BadRequestError")
        self.bodies = self.bodies[-50:] + [{k: v for k, v in body.items() if k != "messages"}
                                           | {"messages": _strip_images(body["messages"])}]

        await self._pass_gate()
        ident = image_id(jpeg)
        attempt = self.requests[ident]
        self.requests[ident] += 1
        fault = None
        if self.fault_rate and _unit(self.seed, ident, attempt, "fault") < self.fault_rate:
            fault = self.fault_kinds[int(_unit(self.seed, ident, attempt, "kind") * len(self.fault_kinds))]
            self.faults[ident] += 1
        self.events.append((time.monotonic(), ident, fault or "ok"))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if fault == "429":
            return error_response(429, "Rate limit reached. Please try again later.", "rate_limit_error",
                          headers={"Retry-After": self.retry_after})
        if fault in ("500", "503"):
            return error_response(int(fault), "The server had an error while processing your request.", "server_error")
        if fault == "drop":
            request.transport.close()
            return web.Response(status=200)
        if fault == "timeout":
            if self.slow_s is None:  # held until the client gives up (aiohttp then cancels this handler)
                await asyncio.Event().wait()
            await asyncio.sleep(self.slow_s)
        text = self.captioner(img.convert("RGB"), ident)
        payload = {
            "id": f"chatcmpl-{ident}-{attempt}", "object": "chat.completion", "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": len(text.split()), "total_tokens": 100 + len(text.split())},
        }
        if self.answer_shape is not None:
            payload = self.answer_shape(payload, ident, attempt)
        raw = orjson.dumps(payload)
        if fault == "malformed":
            return web.Response(status=200, body=raw[: len(raw) // 2], content_type="application/json")
        if request.transport is None or request.transport.is_closing():
            return web.Response(status=200)  # the client gave up waiting
        self.answered[ident] += 1
        return web.Response(status=200, body=raw, content_type="application/json")


def _strip_images(messages):
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = [{"type": "image_url", "image_url": {"url": "<image>"}} if p.get("type") == "image_url" else p
                       for p in content]
        out.append({**m, "content": content})
    return out
