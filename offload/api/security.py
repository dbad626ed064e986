"""Who may talk to the server: the Host and Origin checks, CORS, and the API key. Pure ASGI middleware.

Order, outermost first: `HostOriginMiddleware` (a loopback-bound server answers only Host headers naming this
machine, so a DNS-rebound name gets 403; a browser Origin must be local or listed in OFFLOAD_ORIGINS, else 403;
allowed origins get CORS headers and their preflights are answered here), then `ApiKeyMiddleware` (with a key
configured, everything but `/` and `/health` needs `Authorization: Bearer <key>`, compared in constant time).
Refusals are OffloadErrors in the route's dialect, like every other error.

The decisions are pure functions (`host_allowed`, `origin_allowed`, `bearer_matches`) tested as tables.
"""

from __future__ import annotations

import fnmatch
import hmac
import ipaddress
import re
from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from offload.api.errors import error_response
from offload.errors import HostNotAllowed, OffloadError, OriginNotAllowed, Unauthorized

# Paths a load balancer or `curl localhost:11434` may probe without a key; they say nothing but "alive".
OPEN_PATHS = frozenset({"/", "/health"})
_LOCAL_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
# Desktop shells (Ollama allows them too): no web page can claim these schemes.
_APP_SCHEMES = ("app", "tauri", "vscode-webview")
_ORIGIN = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>\[[0-9a-f:.]+\]|[^:/\[\]]+)(?::(?P<port>\d{1,5}))?")
ALLOW_METHODS = "GET, POST, DELETE, HEAD, OPTIONS"
# What a preflight may ask for is echoed back only when it is a list of header names.
_HEADER_LIST = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+(?:\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*")
PREFLIGHT_MAX_AGE = "600"


def is_loopback(host: str) -> bool:
    """True for the names and addresses that only this machine can reach (the default bind, 127.0.0.1)."""
    name = host.strip().lower().strip("[]").rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The name in a Host header, without port, brackets or a trailing dot, lowercased."""
    text = header.strip().lower()
    if text.startswith("["):
        return text[1 : text.find("]")] if "]" in text else text
    return text.rsplit(":", 1)[0].rstrip(".") if text.count(":") == 1 else text.rstrip(".")


def host_allowed(header: str | None, extra: Sequence[str] = ()) -> bool:
    """Whether a loopback-bound server answers a request with this Host header.

    Loopback names and addresses pass, so does 0.0.0.0 (which reaches this machine; a page elsewhere that
    targets it still fails the Origin check), and names matching an `extra` pattern (this machine's host name,
    OFFLOAD_ALLOWED_HOSTS). A request without a Host header (HTTP/1.0) passes: browsers, the clients a
    rebinding attack drives, always send one.
    """
    if header is None:
        return True
    name = _host_name(header)
    if not name:
        return False
    if is_loopback(name) or any(fnmatch.fnmatchcase(name, pattern) for pattern in extra):
        return True
    try:
        return ipaddress.ip_address(name).is_unspecified
    except ValueError:
        return False


def origin_allowed(origin: str, extra: Sequence[str] = ()) -> bool:
    """Whether a browser page from `origin` may call the API: http(s) pages on loopback, desktop app schemes,
    and origins matching an `extra` pattern (OFFLOAD_ORIGINS; `*` alone allows all). `null` (sandboxed frames,
    file pages) is never local."""
    text = origin.strip().lower().rstrip("/")
    if "*" in extra:
        return True
    if any(fnmatch.fnmatchcase(text, pattern) for pattern in extra):
        return True
    match = _ORIGIN.fullmatch(text)
    if match is None:
        return False
    if match["scheme"] in _APP_SCHEMES:
        return True
    return match["scheme"] in {"http", "https"} and is_loopback(match["host"])


def bearer_matches(header: str | None, key: str) -> bool:
    """Whether an Authorization header carries `Bearer <key>`; the comparison takes the same time wherever the
    first difference is (hmac.compare_digest), so the key cannot be guessed a byte at a time."""
    if header is None:
        return False
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), key.encode("ascii"))


async def _refuse(
    scope: Scope, receive: Receive, send: Send, error: OffloadError, extra: dict[str, str] | None = None
) -> None:
    response = error_response(str(scope.get("path", "")), error)
    response.headers.update(extra or {})
    await response(scope, receive, send)


class HostOriginMiddleware:
    """Host allowlist (only while `check_host`), Origin allowlist and CORS headers for allowed origins."""

    def __init__(self, app: ASGIApp, *, check_host: bool, hosts: Sequence[str], origins: Sequence[str]) -> None:
        self.app = app
        self.check_host = check_host
        self.hosts = tuple(hosts)
        self.origins = tuple(origins)
        self.any_origin = "*" in self.origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self.check_host and not host_allowed(headers.get("host"), self.hosts):
            error = HostNotAllowed(
                "this server is bound to loopback and answers only Host names of this machine "
                "(add others with OFFLOAD_ALLOWED_HOSTS)"
            )
            await _refuse(scope, receive, send, error)
            return
        origin = headers.get("origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        if not origin_allowed(origin, self.origins):
            refused = OriginNotAllowed("requests from this origin are not allowed (add it to OFFLOAD_ORIGINS)")
            await _refuse(scope, receive, send, refused, {"Vary": "Origin"})
            return
        cors = self._cors_headers(origin)
        if scope.get("method") == "OPTIONS" and "access-control-request-method" in headers:
            await self._preflight(scope, receive, send, headers, cors)
            return

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = [(k, v) for k, v in message.get("headers", []) if not k.lower().startswith(b"access-control-")]
                raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in cors.items()]
                message = {**message, "headers": raw}
            await send(message)

        await self.app(scope, receive, with_cors)

    def _cors_headers(self, origin: str) -> dict[str, str]:
        # Never Access-Control-Allow-Credentials: the key travels in a header a page sets itself, not a cookie,
        # so no page needs credentials, and "*" with credentials is exactly what must never be sent.
        if self.any_origin:
            return {"Access-Control-Allow-Origin": "*"}
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}

    async def _preflight(
        self, scope: Scope, receive: Receive, send: Send, headers: Headers, cors: dict[str, str]
    ) -> None:
        answer = {
            **cors,
            "Access-Control-Allow-Methods": ALLOW_METHODS,
            "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
        }
        requested = headers.get("access-control-request-headers", "").strip()
        if requested and _HEADER_LIST.fullmatch(requested):
            answer["Access-Control-Allow-Headers"] = requested
        await Response(status_code=204, headers=answer)(scope, receive, send)


class ApiKeyMiddleware:
    """With `key` set, a request for anything but OPEN_PATHS needs `Authorization: Bearer <key>`; else 401."""

    def __init__(self, app: ASGIApp, *, key: str | None) -> None:
        self.app = app
        self.key = key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.key is None
            or scope["type"] != "http"
            or scope.get("path") in OPEN_PATHS
            or bearer_matches(Headers(scope=scope).get("authorization"), self.key)
        ):
            await self.app(scope, receive, send)
            return
        error = Unauthorized("missing or wrong API key: send the header Authorization: Bearer <key>")
        await _refuse(scope, receive, send, error)
