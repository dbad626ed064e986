"""A small synchronous client for offload's Ollama-dialect HTTP API, used by the CLI.

Contract: every failure surfaces as `ClientError` (or its subclasses `NotRunning`, `ServerError`) with a
message fit to print; httpx exceptions never escape. Streaming endpoints yield one decoded NDJSON object
per line, and an `{"error": ...}` line, which the server sends when a request fails after it started
streaming, raises `ServerError` at that point.

httpx is imported here, never by `offload.cli` at module level, so `offload --help` stays fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from types import TracebackType

CONNECT_TIMEOUT = 5.0
# Requests that only read the store answer quickly; anything that may load a model or stream waits forever.
QUICK_READ_TIMEOUT = 60.0
UPLOAD_CHUNK = 1 << 20
# A line longer than this is not a status or a token chunk; refuse it rather than buffer without bound.
MAX_LINE = 16 << 20


class ClientError(Exception):
    """Something the user should read; the CLI prints `message` and exits 1."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotRunning(ClientError):
    """Nothing accepted the connection at the configured address."""

    def __init__(self, base_url: str) -> None:
        super().__init__(f"offload is not running at {base_url} — start it with: offload serve")
        self.base_url = base_url


class ServerError(ClientError):
    """The server answered with an error (HTTP status >= 400, or an `error` line mid-stream)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _error_text(response: httpx.Response) -> str:
    """Ollama's `{"error": "..."}`, else OpenAI's `{"error": {"message": ...}}`, else the raw body."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:500] or f"HTTP {response.status_code}"
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, str):
            return error
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    return f"HTTP {response.status_code}: {str(body)[:500]}"


def _check_line(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ServerError(f"unexpected line from the server: {str(obj)[:200]}")
    error = obj.get("error")
    if error is not None:
        raise ServerError(str(error))
    return obj


class ApiClient:
    """One connection pool to `base_url`; use as a context manager or call `close()`."""

    def __init__(
        self, base_url: str, *, api_key: str | None = None, transport: httpx.BaseTransport | None = None
    ) -> None:
        """`api_key` (the server's OFFLOAD_API_KEY) is sent as `Authorization: Bearer <key>` on every request."""
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(QUICK_READ_TIMEOUT, connect=CONNECT_TIMEOUT),
            transport=transport,
            headers={"Authorization": f"Bearer {api_key}"} if api_key else None,
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    @contextmanager
    def _translate(self) -> Iterator[None]:
        """Turn httpx's exceptions into ClientError once, here."""
        try:
            yield
        except httpx.ConnectError as exc:
            raise NotRunning(self.base_url) from exc
        except httpx.TimeoutException as exc:
            raise ClientError(f"timed out talking to offload at {self.base_url}") from exc
        except httpx.RemoteProtocolError as exc:
            raise ClientError(f"offload closed the connection unexpectedly ({exc})") from exc
        except httpx.HTTPError as exc:
            raise ClientError(f"request to {self.base_url} failed: {exc}") from exc

    def request(self, method: str, path: str, body: Any = None, *, wait: bool = False) -> Any:
        """Send one request and return the decoded JSON body (None for an empty body).

        `wait=True` drops the read timeout, for requests that may load a model.
        """
        timeout = httpx.Timeout(None, connect=CONNECT_TIMEOUT) if wait else httpx.USE_CLIENT_DEFAULT
        with self._translate():
            response = self._http.request(method, path, json=body, timeout=timeout)
        if response.status_code >= 400:
            raise ServerError(_error_text(response), response.status_code)
        if not response.content:
            return None
        try:
            return _check_line(response.json())
        except ValueError as exc:
            raise ServerError(f"the server sent a body that is not JSON: {response.text[:200]}") from exc

    def stream(self, path: str, body: dict[str, Any]) -> Generator[dict[str, Any], None, None]:
        """POST `body`, yield each NDJSON object as it arrives; closing the iterator cancels the request."""
        timeout = httpx.Timeout(None, connect=CONNECT_TIMEOUT)
        with self._translate(), self._http.stream("POST", path, json=body, timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
                raise ServerError(_error_text(response), response.status_code)
            for line in response.iter_lines():
                if len(line) > MAX_LINE:
                    raise ServerError("the server sent an oversized line")
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    raise ServerError(f"the server sent a line that is not JSON: {line[:200]}") from exc
                yield _check_line(obj)

    def has_blob(self, digest: str) -> bool:
        """HEAD /api/blobs/<digest>: True on 200, False on 404."""
        with self._translate():
            response = self._http.head(f"/api/blobs/{digest}")
        if response.status_code == 404:
            return False
        if response.status_code >= 400:
            raise ServerError(
                f"checking blob {digest} failed: HTTP {response.status_code}", response.status_code
            )
        return True

    def upload_blob(self, path: Path, digest: str, progress: Callable[[int], None] | None = None) -> None:
        """POST the file to /api/blobs/<digest>, streamed with a Content-Length; `progress(n)` per chunk."""
        size = path.stat().st_size

        def chunks() -> Iterator[bytes]:
            with path.open("rb") as handle:
                while block := handle.read(UPLOAD_CHUNK):
                    if progress is not None:
                        progress(len(block))
                    yield block

        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        timeout = httpx.Timeout(None, connect=CONNECT_TIMEOUT)
        with self._translate():
            response = self._http.post(
                f"/api/blobs/{digest}", content=chunks(), headers=headers, timeout=timeout
            )
        if response.status_code >= 400:
            raise ServerError(_error_text(response), response.status_code)
