"""Many streams of one model at once through the real server (issue: continuous batching), driven by the official
`openai` and `ollama` clients over real HTTP: in batch-invariant mode each of 8 concurrent requests, with its own
sampling settings and seed, streams exactly the text it streams alone, and the 8 are decoded together (every stream
has its first text before any stream has its last)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ollama
import openai

from tests.blackbox.server import running_server, starter_home

MODEL = "gemma3:270m"
TOKENS = 24
SLOTS = 8

# (dialect, question, settings): every sampler family, each request its own seed.
REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("openai", "Name three colors.", {"temperature": 0.8, "seed": 11}),
    ("openai", "Write a haiku about rain.", {"temperature": 1.0, "top_p": 0.5, "seed": 12}),
    ("openai", "What is the capital of France?", {"temperature": 0.7, "presence_penalty": 0.6,
                                                  "frequency_penalty": 0.4, "seed": 13}),
    ("openai", "Count from one to ten.", {"temperature": 0.0, "seed": 14}),
    ("ollama", "Tell me a story about a fox.", {"temperature": 0.9, "top_k": 10, "seed": 21}),
    ("ollama", "Name three colors.", {"temperature": 0.8, "repeat_penalty": 1.3, "seed": 22}),
    ("ollama", "Describe the sea in one sentence.", {"temperature": 0.9, "min_p": 0.1, "typical_p": 0.8, "seed": 23}),
    ("ollama", "Why is the sky blue?", {"temperature": 1.0, "mirostat": 2, "seed": 24}),
]


@dataclass
class Streamed:
    text: str
    first: float  # when the first text arrived (perf_counter)
    last: float  # when the last text arrived


async def stream_openai(client: openai.AsyncOpenAI, question: str, settings: dict[str, Any]) -> Streamed:
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=TOKENS, stream=True, **settings
    )
    parts: list[str] = []
    stamps: list[float] = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
            stamps.append(time.perf_counter())
    return Streamed("".join(parts), stamps[0], stamps[-1])


async def stream_ollama(client: ollama.AsyncClient, question: str, settings: dict[str, Any]) -> Streamed:
    stream = await client.chat(
        model=MODEL, messages=[{"role": "user", "content": question}], stream=True,
        options={**settings, "num_predict": TOKENS},
    )
    parts: list[str] = []
    stamps: list[float] = []
    async for chunk in stream:
        if chunk.message.content:
            parts.append(chunk.message.content)
            stamps.append(time.perf_counter())
    return Streamed("".join(parts), stamps[0], stamps[-1])


async def one(base_url: str, i: int) -> Streamed:
    dialect, question, settings = REQUESTS[i]
    if dialect == "openai":
        client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="unused", timeout=120, max_retries=0)
        async with client:
            return await stream_openai(client, question, settings)
    return await stream_ollama(ollama.AsyncClient(host=base_url, timeout=120), question, settings)


def test_eight_concurrent_streams_over_http_each_give_what_they_give_alone(tmp_path: Path) -> None:
    env = {"OFFLOAD_BATCH_INVARIANT": "true", "OFFLOAD_NUM_PARALLEL": str(SLOTS)}
    with running_server(starter_home(tmp_path), env) as server:

        async def alone() -> list[Streamed]:
            return [await one(server.base_url, i) for i in range(SLOTS)]

        async def together() -> list[Streamed]:
            return list(await asyncio.gather(*(one(server.base_url, i) for i in range(SLOTS))))

        by_itself = asyncio.run(alone())
        at_once = asyncio.run(together())

    for i, (a, b) in enumerate(zip(by_itself, at_once, strict=True)):
        assert a.text, f"request {i} streamed no text alone"
        assert b.text == a.text, f"request {i} ({REQUESTS[i]}): alone {a.text!r}, beside 7 others {b.text!r}"
    assert len({s.text for s in by_itself}) > SLOTS // 2  # the settings and prompts really differ
    # Decoded together, not one after another: every stream had begun before the first one ended.
    assert max(s.first for s in at_once) < min(s.last for s in at_once)
