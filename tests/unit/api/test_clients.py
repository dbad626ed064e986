"""The official `openai` and `ollama` Python clients against the app, through in-process ASGI transports."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import httpx2
import ollama
import openai
import pytest
from fastapi import FastAPI

from offload.models.store import Store
from tests.fakes.scheduler import FakeRunningModel, FakeScheduler
from tests.fixtures.gguf_files import write_tiny_gguf

pytestmark = pytest.mark.anyio

BASE = "http://offload.test"


@pytest.fixture
def ollama_client(app: FastAPI) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=BASE, transport=httpx.ASGITransport(app=app))


@pytest.fixture
async def openai_client(app: FastAPI) -> AsyncIterator[openai.AsyncOpenAI]:
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=BASE)
    client = openai.AsyncOpenAI(base_url=f"{BASE}/v1", api_key="unused", http_client=http, max_retries=0)
    yield client
    await http.aclose()


async def test_ollama_generate_and_chat(ollama_client: ollama.AsyncClient) -> None:
    response = await ollama_client.generate(model="tiny", prompt="hi", options={"temperature": 0, "seed": 1})
    assert response.response == "Hello world!"
    assert response.done
    assert response.done_reason == "stop"
    assert response.context == [1, 2, 3]
    pieces = [
        part.response or ""
        async for part in await ollama_client.generate(model="tiny", prompt="hi", stream=True)
    ]
    assert "".join(pieces) == "Hello world!"
    chat = await ollama_client.chat(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert chat.message.content == "Hello world!"
    assert chat.message.role == "assistant"
    stream = await ollama_client.chat(model="tiny", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert "".join([part.message.content or "" async for part in stream]) == "Hello world!"


async def test_ollama_errors(ollama_client: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        await ollama_client.generate(model="nope", prompt="hi")
    assert caught.value.status_code == 404
    assert "not found" in caught.value.error


async def test_ollama_models(
    ollama_client: ollama.AsyncClient, scheduler: FakeScheduler, store: Store, tmp_path: Path
) -> None:
    listed = await ollama_client.list()
    assert [m.model for m in listed.models] == ["tiny:latest"]
    assert listed.models[0].details is not None
    assert listed.models[0].details.family == "llama"
    shown = await ollama_client.show("tiny")
    assert shown.modelinfo is not None
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.capabilities == ["completion"]
    stored = store.get("tiny")
    scheduler.running_models = [FakeRunningModel(name="tiny:latest", model_digest=stored.model_digest)]
    running = await ollama_client.ps()
    assert running.models[0].model == "tiny:latest"
    assert running.models[0].expires_at is not None
    assert (await ollama_client.copy("tiny", "copy:v1")).status == "success"
    assert (await ollama_client.delete("copy:v1")).status == "success"
    embedded = await ollama_client.embed(model="tiny", input=["a"])
    assert embedded.embeddings == [[0.6, 0.8]]

    gguf = write_tiny_gguf(tmp_path / "up.gguf", n_tokens=48)
    digest = await ollama_client.create_blob(gguf)
    assert digest == "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()
    created = await ollama_client.create(model="up:v1", files={"up.gguf": digest}, system="S", stream=False)
    assert created.status == "success"
    assert store.get("up:v1").system == "S"
    with pytest.raises(ollama.ResponseError) as caught:
        await ollama_client.pull("llama3:8b")
    assert caught.value.status_code == 400


async def test_openai_chat(openai_client: openai.AsyncOpenAI) -> None:
    completion = await openai_client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], temperature=0, seed=1, max_tokens=8
    )
    assert completion.choices[0].message.content == "Hello world!"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.total_tokens == 8
    stream = await openai_client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == "Hello world!"
    assert usage is not None
    assert usage.completion_tokens == 3


async def test_openai_completions_embeddings_models(openai_client: openai.AsyncOpenAI) -> None:
    completion = await openai_client.completions.create(model="tiny", prompt="Once")
    assert completion.choices[0].text == "Hello world!"
    embeddings = await openai_client.embeddings.create(model="tiny", input=["a", "b"])  # base64 by default
    assert [round(x, 5) for x in embeddings.data[1].embedding] == [0.6, 0.8]
    models = await openai_client.models.list()
    assert [m.id for m in models.data] == ["tiny:latest"]
    assert (await openai_client.models.retrieve("tiny:latest")).owned_by == "library"


async def test_openai_errors(openai_client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        await openai_client.chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "hi"}]
        )
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        await openai_client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], n=2
        )
    assert bad.value.param == "n"
