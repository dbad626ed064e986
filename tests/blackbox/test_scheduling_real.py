"""Several models and a bounded queue on the real server: real runners, real llama.cpp, the starter model."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from offload.models.names import parse_name
from offload.models.starter import ensure_starter
from offload.models.store import Store
from tests.blackbox.server import running_server

pytestmark = pytest.mark.blackbox
MODEL = "gemma3:270m"


def home_with(tmp_path: Path, *copies: str) -> Path:
    """An OFFLOAD_HOME holding the starter model and copies of it under other names (each its own runner)."""
    store = Store(tmp_path / "models")
    ensure_starter(store)
    for name in copies:
        store.copy(parse_name(MODEL), parse_name(name))
    return tmp_path


def generate(base: str, model: str) -> None:
    reply = httpx.post(
        f"{base}/api/generate",
        json={"model": model, "prompt": "Hi", "stream": False, "options": {"num_predict": 2}},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text


def loaded(base: str) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in httpx.get(f"{base}/api/ps", timeout=30).json()["models"]}


def test_least_recently_used_model_is_unloaded_past_the_limit(tmp_path: Path) -> None:
    home = home_with(tmp_path, "second:latest", "third:latest")
    with running_server(home, {"OFFLOAD_MAX_LOADED_MODELS": "2"}) as server:
        generate(server.base_url, MODEL)
        generate(server.base_url, "second:latest")
        both = loaded(server.base_url)
        assert set(both) == {MODEL, "second:latest"}
        for entry in both.values():  # Ollama's fields and offload's placement for every loaded model
            assert entry["size"] > 0 and entry["expires_at"] and entry["offload"]["verified"]
        generate(server.base_url, MODEL)  # the starter is now the more recent
        generate(server.base_url, "third:latest")
        assert set(loaded(server.base_url)) == {MODEL, "third:latest"}
        assert "unloaded second:latest to make room for third:latest" in server.log()


async def _stream(client: httpx.AsyncClient, index: int) -> tuple[int, str | None, str]:
    """One streaming request, alternating dialects; (status, Retry-After, the body or its last line)."""
    if index % 2:
        url, body = "/v1/chat/completions", {
            "model": MODEL, "messages": [{"role": "user", "content": "Count to ten."}], "stream": True,
            "max_tokens": 48,
        }
    else:
        url, body = "/api/generate", {"model": MODEL, "prompt": "Count to ten.", "options": {"num_predict": 48}}
    async with client.stream("POST", url, json=body) as reply:
        text = (await reply.aread()).decode()
        lines = [line for line in text.splitlines() if line.strip()]
        return reply.status_code, reply.headers.get("retry-after"), lines[-1] if lines else ""


def test_past_the_queue_requests_get_503_with_retry_after_and_the_rest_finish(tmp_path: Path) -> None:
    """1 slot + 1 waiting allowed; 8 arrive at once. Every request ends: served to its last chunk, or refused at
    once with 503, Retry-After and the dialect's error shape. Afterwards the model serves again."""
    env = {"OFFLOAD_MAX_QUEUE": "1", "OFFLOAD_NUM_PARALLEL": "1"}
    with running_server(home_with(tmp_path), env) as server:

        async def burst() -> list[tuple[int, str | None, str]]:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
                return await asyncio.gather(*(_stream(client, i) for i in range(8)))

        results = asyncio.run(burst())
        served = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] == 503]
        assert len(served) + len(refused) == 8, results
        assert len(served) >= 2 and refused, results
        for _, retry_after, last in refused:
            assert retry_after is not None and int(retry_after) >= 1
            assert "OFFLOAD_MAX_QUEUE" in last
        for _, _, last in served:
            assert last == "data: [DONE]" or '"done":true' in last.replace(" ", ""), last
        generate(server.base_url, MODEL)
