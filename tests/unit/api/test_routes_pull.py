"""/api/pull of Hugging Face models, in-process, against the fake hub on loopback (tests/fakes/huggingface.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from offload.models.hf_hub import HubConfig
from offload.models.store import Store
from tests.fakes.huggingface import FakeHub
from tests.fixtures.gguf_files import write_tiny_gguf

TOKEN = "hf_test_token"


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line]


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with FakeHub(token=TOKEN) as hub:
        hub.add_repo(
            "org/Model-GGUF",
            {
                "Model-Q4_K_M.gguf": write_tiny_gguf(tmp_path / "q4.gguf", n_tokens=300).read_bytes(),
                "Model-Q8_0.gguf": write_tiny_gguf(tmp_path / "q8.gguf", n_tokens=320).read_bytes(),
            },
        )
        config = HubConfig(endpoint=hub.url, cache_dir=tmp_path / "hf-cache")
        monkeypatch.setattr(HubConfig, "from_environment", classmethod(lambda cls: config))
        yield hub


def test_a_streamed_pull_sends_ollamas_statuses(client: TestClient, store: Store, fake: FakeHub) -> None:
    response = client.post("/api/pull", json={"model": "hf.co/org/Model-GGUF"})
    assert response.status_code == 200
    body = lines(response.text)
    assert body[0] == {"status": "pulling manifest"}
    digest = store.get("hf.co/org/model-gguf:latest").model_digest
    progress = [line for line in body if line.get("digest") == digest]
    assert progress[0]["status"] == f"pulling {digest[7:19]}"
    assert progress[-1]["completed"] == progress[-1]["total"] > 0
    assert [line["status"] for line in body[-3:]] == ["verifying sha256 digest", "writing manifest", "success"]
    names = [entry["name"] for entry in client.get("/api/tags").json()["models"]]
    assert "hf.co/org/model-gguf:latest" in names
    shown = client.post("/api/show", json={"model": "hf.co/org/Model-GGUF"}).json()
    assert shown["details"]["family"] == "llama"


def test_a_pull_not_streamed(client: TestClient, store: Store, fake: FakeHub) -> None:
    response = client.post("/api/pull", json={"model": "org/Model-GGUF:Q8_0", "stream": False})
    assert response.json() == {"status": "success"}
    assert store.exists("org/model-gguf:q8_0")


@pytest.mark.parametrize(
    ("model", "status", "message"),
    [
        ("hf.co/org/Missing", 404, "was not found (if it is private, set HF_TOKEN"),
        ("hf.co/org/Model-GGUF:Q2_K", 404, "has no Q2_K quantization; it has Q4_K_M, Q8_0"),
        ("hf.co/org/Gated-GGUF", 403, "is gated: accept its terms at"),
        ("llama3:8b", 400, "pulling from the Ollama registry is not supported"),
    ],
)
def test_what_can_be_known_before_the_pull_is_an_http_error(
    client: TestClient, fake: FakeHub, tmp_path: Path, model: str, status: int, message: str
) -> None:
    fake.add_repo("org/Gated-GGUF", {"m-Q4_K_M.gguf": b"GGUF"}, gated=True)
    response = client.post("/api/pull", json={"model": model})
    assert response.status_code == status
    assert message in response.json()["error"]


def test_a_bad_checksum_ends_the_stream_with_an_error(client: TestClient, store: Store, fake: FakeHub) -> None:
    fake.corrupt("org/Model-GGUF", "Model-Q4_K_M.gguf")
    body = lines(client.post("/api/pull", json={"model": "hf.co/org/Model-GGUF"}).text)
    assert "does not match the sha256 the hub lists" in body[-1]["error"]
    assert not store.exists("hf.co/org/model-gguf")


@pytest.mark.anyio
async def test_the_ollama_client_pulls(app: FastAPI, store: Store, fake: FakeHub) -> None:
    client = ollama.AsyncClient(host="http://offload.test", transport=httpx.ASGITransport(app=app))
    statuses = [part.status async for part in await client.pull("hf.co/org/Model-GGUF:Q8_0", stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert (await client.pull("hf.co/org/Model-GGUF:Q8_0")).status == "success"
    listed = [model.model for model in (await client.list()).models]
    assert "hf.co/org/model-gguf:q8_0" in listed
    with pytest.raises(ollama.ResponseError) as caught:
        await client.pull("hf.co/org/Missing")
    assert caught.value.status_code == 404
