"""HTTP servers on 127.0.0.1 for the tests (import as ``from rangeserver import RangeServer``).

:class:`LocalServer` is the start and stop every test server shares; :class:`RangeServer` is a
file server that answers byte ranges as HTTP says."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing (the test output stays the test's)."""

    def log_message(self, *args):
        pass


class LocalServer:
    """A :class:`ThreadingHTTPServer` on 127.0.0.1 with ``handler``, on a free port (port 0: the
    system picks one; ``url`` names it), serving from a daemon thread between ``__enter__`` and
    ``__exit__``; ``__exit__`` stops it, closes its socket and waits for the thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


class RangeServer(LocalServer):
    """Serves a folder with ``Range: bytes=A-B`` (206 and Content-Range, as HTTP says); records
    each request; ``ignore_range`` answers 200 with the whole file; ``fail[path]`` answers that
    many 503s first; ``replace[path]`` serves other bytes (a shard changed on the server);
    ``drop(path, range, client_port)``, when set and true for a request, closes the connection
    without an answer (after doing what it likes to the client)."""

    def __init__(self, root):
        self.root = root
        self.requests: list[tuple[str, str | None]] = []
        self.ignore_range = False
        self.fail: dict[str, int] = {}
        self.replace: dict[str, bytes] = {}
        self.drop = None
        server = self

        class Handler(QuietHandler):
            def do_GET(self):
                rel = self.path.lstrip("/")
                server.requests.append((rel, self.headers.get("Range")))
                if server.drop is not None and server.drop(rel, self.headers.get("Range"), self.client_address[1]):
                    self.close_connection = True
                    return
                if server.fail.get(rel, 0) > 0:
                    server.fail[rel] -= 1
                    self.send_error(503)
                    return
                path = server.root / rel
                if rel in server.replace:
                    data = server.replace[rel]
                elif ".." in rel or not path.is_file():
                    self.send_error(404)
                    return
                else:
                    data = path.read_bytes()
                rng = self.headers.get("Range")
                if rng and not server.ignore_range:
                    a, b = rng.split("=")[1].split("-")
                    a, b = int(a), min(int(b), len(data) - 1)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {a}-{b}/{len(data)}")
                    body = data[a:b + 1]
                else:
                    self.send_response(200)
                    body = data
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)
