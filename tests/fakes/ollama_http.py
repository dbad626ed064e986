"""A scripted, Ollama-shaped HTTP server on loopback, for testing HTTP clients (the CLI) without the server.

Each (method, path) answers with a scripted `Reply`: one JSON body, or NDJSON lines streamed and flushed one
by one. Built in: `GET /api/version`, and `HEAD`/`POST /api/blobs/sha256:<hex>` backed by `blobs`, where an
upload is checked against its digest like the real server does. Everything received is recorded in
`received`. Unscripted routes answer 404 with Ollama's `{"error": ...}` shape.

    with FakeOllama() as fake:
        fake.on("GET", "/api/tags", json={"models": []})
        ... run the client against fake.url ...
        assert fake.received[-1].path == "/api/tags"
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

VERSION = "0.0.0-fake"
_BLOBS = "/api/blobs/"


@dataclass(frozen=True, slots=True)
class Reply:
    """A scripted answer: `ndjson` lines are streamed (200 unless `status` says otherwise), else `json`."""

    status: int = 200
    json: Any = None
    ndjson: tuple[Any, ...] | None = None


@dataclass(frozen=True, slots=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class FakeOllama:
    """Start with `start()` or `with`; `url` is `http://127.0.0.1:<free port>`."""

    routes: dict[tuple[str, str], Reply] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def on(
        self, method: str, path: str, *, json: Any = None, ndjson: list[Any] | None = None, status: int = 200
    ) -> None:
        """Script the answer to `method path` (replacing an earlier one)."""
        lines = tuple(ndjson) if ndjson is not None else None
        self.routes[(method.upper(), path)] = Reply(status=status, json=json, ndjson=lines)

    def requests_to(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeOllama is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeOllama:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        # A short poll interval keeps shutdown() (every test's teardown) from waiting half a second.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-ollama", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def record(self, received: Received) -> None:
        with self._lock:
            self.received.append(received)


def _handler_for(fake: FakeOllama) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: each response ends by closing the connection, so streams need no chunked encoding.
        protocol_version = "HTTP/1.0"

        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                parts = []
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(parts)
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _send_json(self, status: int, body: Any, *, head: bool = False) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not head:
                self.wfile.write(data)

        def _handle(self) -> None:
            method = self.command
            body = b"" if method in {"GET", "HEAD"} else self._body()
            fake.record(Received(method, self.path, dict(self.headers.items()), body))
            reply = fake.routes.get((method, self.path))
            if reply is None and self.path.startswith(_BLOBS):
                self._blob(method, self.path[len(_BLOBS) :], body)
                return
            if reply is None and (method, self.path) == ("GET", "/api/version"):
                reply = Reply(json={"version": VERSION})
            if reply is None:
                self._send_json(404, {"error": f"not scripted: {method} {self.path}"}, head=method == "HEAD")
                return
            if reply.ndjson is None:
                self._send_json(reply.status, reply.json, head=method == "HEAD")
                return
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/x-ndjson")
            self.end_headers()
            for line in reply.ndjson:
                self.wfile.write(json.dumps(line).encode() + b"\n")
                self.wfile.flush()

        def _blob(self, method: str, digest: str, body: bytes) -> None:
            if method == "HEAD":
                self._send_json(200 if digest in fake.blobs else 404, None, head=True)
            elif method == "POST":
                actual = "sha256:" + hashlib.sha256(body).hexdigest()
                if actual != digest:
                    self._send_json(400, {"error": f"digest mismatch, expected {digest!r}, got {actual!r}"})
                    return
                fake.blobs[digest] = body
                self._send_json(201, None)
            else:
                self._send_json(405, {"error": "method not allowed"})

        do_GET = do_POST = do_DELETE = do_HEAD = do_PUT = _handle

    return Handler
