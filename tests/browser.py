"""Headless Chromium driven over the DevTools protocol (a websocket, through aiohttp), for tests
that need a real browser (import as ``from browser import ...``).

:func:`open_page` loads a URL in a fresh profile, waits for the load event, runs JavaScript
expressions in the page and returns their values with every console message, uncaught
exception, log entry and network request the page produced.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
         # no network: every request goes to a proxy that does not exist, and fails
         "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]
PATIENCE_S = 120  # an upper bound for a loaded machine, not a timing assertion


def chromium_binary() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageRun:
    values: list = field(default_factory=list)  # one per expression
    console: list[dict] = field(default_factory=list)  # Runtime.consoleAPICalled params
    exceptions: list[dict] = field(default_factory=list)  # Runtime.exceptionThrown params
    log: list[dict] = field(default_factory=list)  # Log.entryAdded entries
    requests: list[str] = field(default_factory=list)  # URLs the page asked for
    failed: list[dict] = field(default_factory=list)  # Network.loadingFailed params

    @property
    def problems(self) -> list[str]:
        """Everything that counts as a console error: exceptions, console.error/warn, error and
        warning log entries, failed loads."""
        out = [f"exception: {e['exceptionDetails'].get('exception', {}).get('description') or e['exceptionDetails']['text']}"
               for e in self.exceptions]
        out += [f"console.{c['type']}: {c['args']}" for c in self.console if c["type"] in ("error", "warning", "assert")]
        out += [f"log {e['level']}: {e['text']} ({e.get('url', '')})" for e in self.log if e["level"] in ("error", "warning")]
        out += [f"failed load: {f.get('errorText')}" for f in self.failed]
        return out


def open_page(url: str, expressions: list[str], *, window=(1280, 1800)) -> PageRun:
    """Load ``url`` in headless Chromium, then evaluate ``expressions`` in order (each may
    return a promise); raises RuntimeError if Chromium does not start or answer."""
    binary = chromium_binary()
    if binary is None:
        raise RuntimeError("no chromium binary")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-", ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                 f"--window-size={window[0]},{window[1]}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            return asyncio.run(asyncio.wait_for(_drive(Path(profile), url, expressions, proc), PATIENCE_S))
        finally:
            _stop(proc)


def _stop(proc) -> None:
    """Let Chromium exit after Browser.close; then end its process group (its renderer and helper
    processes, which this test started) so none writes into the profile being removed."""
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group Popen(start_new_session=True) made for it
    except ProcessLookupError:
        pass
    proc.wait()


async def _browser_ws(profile: Path, proc) -> str:
    port_file = profile / "DevToolsActivePort"
    while not port_file.is_file() or len(port_file.read_text().split()) < 2:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with status {proc.returncode}")
        await asyncio.sleep(0.05)
    port, path = port_file.read_text().split()[:2]
    return f"ws://127.0.0.1:{port}{path}"


async def _drive(profile: Path, url: str, expressions: list[str], proc) -> PageRun:
    import aiohttp

    run = PageRun()
    ids = itertools.count(1)
    pending: dict[int, asyncio.Future] = {}
    loaded = asyncio.Event()
    outstanding: set[str] = set()  # requests sent and neither finished nor failed
    settled = asyncio.Event()
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(await _browser_ws(profile, proc), max_msg_size=0) as ws:

            async def reader():
                async for msg in ws:
                    data = json.loads(msg.data)
                    if "id" in data and data["id"] in pending:
                        pending.pop(data["id"]).set_result(data)
                        continue
                    method, params = data.get("method"), data.get("params", {})
                    if method == "Runtime.consoleAPICalled":
                        run.console.append({"type": params["type"],
                                            "args": [a.get("value", a.get("description")) for a in params["args"]]})
                    elif method == "Runtime.exceptionThrown":
                        run.exceptions.append(params)
                    elif method == "Log.entryAdded":
                        run.log.append(params["entry"])
                    elif method == "Network.requestWillBeSent":
                        run.requests.append(params["request"]["url"])
                        outstanding.add(params["requestId"])
                        settled.clear()
                    elif method in ("Network.loadingFinished", "Network.loadingFailed"):
                        if method == "Network.loadingFailed":
                            run.failed.append(params)
                        outstanding.discard(params["requestId"])
                        if not outstanding:
                            settled.set()
                    elif method == "Page.loadEventFired":
                        loaded.set()

            async def call(method, params=None, session=None):
                i = next(ids)
                pending[i] = asyncio.get_running_loop().create_future()
                msg = {"id": i, "method": method, "params": params or {}}
                if session:
                    msg["sessionId"] = session
                await ws.send_str(json.dumps(msg))
                reply = await pending[i]
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

            task = asyncio.create_task(reader())
            try:
                target = (await call("Target.createTarget", {"url": "about:blank"}))["targetId"]
                session = (await call("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
                for domain in ("Runtime", "Log", "Network", "Page"):
                    await call(f"{domain}.enable", session=session)
                await call("Page.navigate", {"url": url}, session=session)
                await loaded.wait()
                if outstanding:  # every request the page made has finished or failed before we look
                    await settled.wait()
                for expression in expressions:
                    result = await call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                             "awaitPromise": True}, session=session)
                    if "exceptionDetails" in result:
                        run.exceptions.append({"exceptionDetails": result["exceptionDetails"]})
                        run.values.append(None)
                    else:
                        run.values.append(result["result"].get("value"))
                await call("Browser.close")
            finally:
                task.cancel()
    return run
