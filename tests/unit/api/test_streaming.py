"""Cancellation: however a response ends, the scheduler's generator is closed."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message

from offload.api.metrics import Metrics
from offload.api.streaming import Generation, collect, encode_stream, ndjson
from offload.errors import OffloadError, ServerBusy
from offload.generation import Chunk
from tests.fakes.scheduler import FakeScheduler

pytestmark = pytest.mark.anyio


class Source:
    """An async generator that records whether it was closed before its end."""

    def __init__(self, chunks: list[Chunk], *, stall: bool = False, fail: OffloadError | None = None) -> None:
        self.chunks = chunks
        self.stall = stall
        self.fail = fail
        self.closed_early = False
        self.finished = False

    async def run(self) -> AsyncIterator[Chunk]:
        try:
            if self.fail is not None:
                raise self.fail
            for chunk in self.chunks:
                yield chunk
            if self.stall:
                await anyio.sleep(3600)
            self.finished = True
        finally:
            self.closed_early = not self.finished


async def start(source: Source) -> Generation:
    return await Generation.start(source.run(), model="m", metrics=Metrics(), started=0.0)


async def test_error_before_first_chunk_propagates() -> None:
    source = Source([], fail=ServerBusy("busy"))
    with pytest.raises(ServerBusy):
        await start(source)
    assert source.closed_early


async def test_closing_the_body_closes_the_source() -> None:
    source = Source([Chunk(text="a"), Chunk(text="b")], stall=True)
    generation = await start(source)
    body = encode_stream(generation, lambda c: [ndjson({"t": c.text})], lambda e: b"error")
    assert await anext(body) == b'{"t":"a"}\n'
    await body.aclose()  # type: ignore[attr-defined]
    assert source.closed_early


async def test_final_chunk_lets_the_source_finish() -> None:
    source = Source([Chunk(text="a"), Chunk(done=True)])
    generation = await start(source)
    body = encode_stream(generation, lambda c: [ndjson({"t": c.text})], lambda e: b"error")
    assert [line async for line in body] == [b'{"t":"a"}\n', b'{"t":""}\n']
    assert source.finished
    assert not source.closed_early


def _request(messages: list[dict[str, Any]]) -> Request:
    pending = list(messages)

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await anyio.sleep(3600)
        raise AssertionError("unreachable")

    return Request({"type": "http", "method": "POST", "path": "/", "headers": []}, receive)


async def test_collect_cancels_when_the_client_disconnects() -> None:
    source = Source([Chunk(text="a")], stall=True)
    generation = await start(source)
    with anyio.fail_after(5):
        outcome = await collect(generation, _request([{"type": "http.disconnect"}]))
    assert outcome is None
    assert source.closed_early


async def test_a_client_gone_before_the_first_chunk_cancels_the_generation() -> None:
    source = Source([], stall=True)  # queued, loading, or evaluating the prompt: no chunk yet
    with anyio.fail_after(5), pytest.raises(ClientDisconnect):
        await Generation.start(
            source.run(), model="m", metrics=Metrics(), started=0.0, request=_request([{"type": "http.disconnect"}])
        )
    assert source.closed_early


async def test_a_client_that_stays_gets_the_first_chunk_and_errors_as_they_are() -> None:
    source = Source([Chunk(text="a")], stall=True)
    generation = await Generation.start(source.run(), model="m", metrics=Metrics(), started=0.0, request=_request([]))
    assert [c.text async for c in _take(generation.chunks(), 1)] == ["a"]
    failing = Source([], fail=ServerBusy("busy"))
    with pytest.raises(ServerBusy):
        await Generation.start(failing.run(), model="m", metrics=Metrics(), started=0.0, request=_request([]))
    assert failing.closed_early


async def _take(chunks: AsyncIterator[Chunk], n: int) -> AsyncIterator[Chunk]:
    for _ in range(n):
        yield await anext(chunks)


async def test_collect_returns_everything() -> None:
    source = Source([Chunk(text="a"), Chunk(text="b", done=True, eval_count=2)])
    generation = await start(source)
    outcome = await collect(generation, _request([]))
    assert outcome is not None
    text, final = outcome
    assert text == "ab"
    assert final.eval_count == 2
    assert source.finished


async def test_client_gone_mid_stream_through_the_app(app: FastAPI, scheduler: FakeScheduler) -> None:
    """Drive the ASGI app directly: the server's send fails after the first line, as uvicorn's does when
    the socket is closed; the scheduler must see its generator closed early."""
    scheduler.script = [Chunk(text="a"), Chunk(text="b"), Chunk(text="c", done=True)]
    body = json.dumps({"model": "tiny", "prompt": "x"}).encode()
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[Message] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await anyio.sleep(3600)
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body" and any(m["type"] == "http.response.body" for m in sent):
            raise OSError("connection reset by peer")
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/generate",
        "raw_path": b"/api/generate",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 11434),
    }
    with anyio.fail_after(5):
        with contextlib.suppress(OSError, ClientDisconnect):
            await app(scope, receive, send)
    assert sent[0]["status"] == 200
    assert scheduler.closed_early == 1
    assert scheduler.finished == 0
