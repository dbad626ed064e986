"""Running one generation for HTTP, for both dialects.

The first chunk is awaited before any response starts, so an error while loading or evaluating the prompt
becomes a proper HTTP status; later errors can only be reported inside the stream. Whatever way a response
ends (done, client gone, server shutting down) the scheduler's generator is closed, which cancels the work
in the runner.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
from fastapi import Request
from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from offload.api.deps import RunningModelLike
from offload.api.errors import internal_error
from offload.api.metrics import Metrics
from offload.errors import OffloadError, RunnerError
from offload.generation import Chunk

log = logging.getLogger(__name__)

# Proxies (nginx) buffer responses by default; a token stream must not wait for a buffer to fill.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
CLIENT_GONE = 499  # nginx's "client closed request": shows in the access log, nobody reads the body


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that always closes its body iterator, even when the client went away mid-send
    (Starlette then just stops iterating, leaving the generator to the garbage collector)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await aclose_quietly(self.body_iterator)


async def aclose_quietly(iterator: object) -> None:
    close = getattr(iterator, "aclose", None)
    if close is None:
        return
    try:
        await close()
    except RuntimeError:
        # "aclose(): asynchronous generator is already running": its owner is unwinding it already.
        log.debug("generator already closing", exc_info=True)


def ndjson(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def sse(obj: dict[str, Any] | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


class Generation:
    """A generation whose first chunk has arrived. Iterate `chunks()` once; it closes the source when done."""

    def __init__(
        self, source: AsyncIterator[Chunk], first: Chunk, *, model: str, metrics: Metrics, started: float
    ) -> None:
        self._source = source
        self._first = first
        self.model = model
        self.headers: dict[str, str] = {}  # set by the route once the model is loaded (placement warnings)
        self.started = started
        self._metrics = metrics

    @classmethod
    async def start(
        cls,
        source: AsyncIterator[Chunk],
        *,
        model: str,
        metrics: Metrics,
        started: float,
        request: Request | None = None,
    ) -> Generation:
        """Wait for the first chunk. Errors raised before it propagate unchanged (the caller maps them to a
        status); the source is closed on any failure, cancellation included. With `request`, a client that
        disconnects meanwhile (queued, loading, or during its prompt's evaluation, the longest wait) cancels the
        generation at once and ClientDisconnect is raised."""
        waiting = metrics.waiting.labels(model=model)
        waiting.inc()
        try:
            first = await anext(source) if request is None else await _first_unless_gone(source, request)
        except StopAsyncIteration:
            raise RunnerError("the generation ended without producing a result") from None
        except BaseException:
            await aclose_quietly(source)
            raise
        finally:
            waiting.dec()
        metrics.observe_first_chunk(model, time.monotonic() - started)
        return cls(source, first, model=model, metrics=metrics, started=started)

    def elapsed_ns(self) -> int:
        return int((time.monotonic() - self.started) * 1e9)

    async def chunks(self) -> AsyncIterator[Chunk]:
        """Every chunk up to and including the one with done=True. Raises RunnerError if the source ends
        without one; OffloadError from the source propagates."""
        try:
            chunk = self._first
            while True:
                if chunk.done:
                    self._metrics.observe_final(self.model, chunk)
                    await self._finish_source()
                    yield chunk
                    return
                yield chunk
                try:
                    chunk = await anext(self._source)
                except StopAsyncIteration:
                    raise RunnerError("the generation ended without a final result") from None
        finally:
            await aclose_quietly(self._source)

    async def _finish_source(self) -> None:
        """Let the source end on its own after the final chunk, so the scheduler sees a completed generation
        rather than one closed early (which it would treat as a cancellation)."""
        try:
            extra = await anext(self._source)
        except StopAsyncIteration:
            return
        log.warning("ignoring output after the final chunk of %s: %r", self.model, extra)


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body was read already: what is left to receive is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _first_unless_gone(source: AsyncIterator[Chunk], request: Request) -> Chunk:
    """The source's first chunk; ClientDisconnect if the client leaves first (the wait for the chunk is cancelled
    inside the source, which cancels the work in the runner)."""
    first: Chunk | None = None
    failure: BaseException | None = None

    async def watch(scope: anyio.CancelScope) -> None:
        await _disconnected(request)
        scope.cancel()

    async with anyio.create_task_group() as group:
        group.start_soon(watch, group.cancel_scope)
        try:
            first = await anext(source)
        except Exception as exc:  # StopAsyncIteration included; raised outside the group, not in an ExceptionGroup
            failure = exc
        group.cancel_scope.cancel()
    if failure is not None:
        raise failure
    if first is None:
        raise ClientDisconnect()
    return first


async def collect(generation: Generation, request: Request) -> tuple[str, Chunk] | None:
    """All the text and the final chunk, or None if the client disconnected first (the generation is then
    cancelled rather than run to its end for nobody)."""
    parts: list[str] = []
    final: Chunk | None = None

    async def watch_disconnect(scope: anyio.CancelScope) -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                scope.cancel()
                return

    chunks = generation.chunks()
    failure: Exception | None = None
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(watch_disconnect, group.cancel_scope)
            try:
                async for chunk in chunks:
                    parts.append(chunk.text)
                    if chunk.done:
                        final = chunk
            except Exception as exc:
                # Raised outside the task group so callers see the error itself, not an ExceptionGroup.
                failure = exc
            group.cancel_scope.cancel()
    finally:
        await aclose_quietly(chunks)
    if failure is not None:
        raise failure
    if final is None:
        log.info("client disconnected; generation for %s cancelled", generation.model)
        return None
    return "".join(parts), final


def encode_stream(
    generation: Generation,
    encode: Callable[[Chunk], list[bytes]],
    encode_error: Callable[[OffloadError], bytes],
    *,
    head: list[bytes] | None = None,
    tail: list[bytes] | None = None,
) -> AsyncIterator[bytes]:
    """The response body of a streamed generation: `head`, each chunk encoded, `tail`.

    An error after the first chunk ends the stream with `encode_error` (the status line is long gone).
    """

    async def body() -> AsyncIterator[bytes]:
        chunks = generation.chunks()
        try:
            for line in head or []:
                yield line
            async for chunk in chunks:
                for line in encode(chunk):
                    yield line
            for line in tail or []:
                yield line
        except OffloadError as exc:
            log.warning(
                "generation for %s failed mid-stream: %s (%s)", generation.model, exc.message, exc.code
            )
            yield encode_error(exc)
        except Exception:
            log.exception("generation for %s failed mid-stream", generation.model)
            yield encode_error(internal_error())
        finally:
            await aclose_quietly(chunks)

    return body()


def streaming_response(
    body: AsyncIterator[bytes], media_type: str, headers: dict[str, str] | None = None
) -> ClosingStreamingResponse:
    return ClosingStreamingResponse(body, media_type=media_type, headers={**STREAM_HEADERS, **(headers or {})})


WARNING_HEADER = "X-Offload-Warning"


def placement_headers(running: Sequence[RunningModelLike], name: str) -> dict[str, str]:
    """A loud header when the model that served this request asked for GPU layers and got none."""
    for model in running:
        if model.name == name and model.placement.get("warning"):
            return {WARNING_HEADER: str(model.placement["warning"])}
    return {}
