"""In-process apps for the HTTP security cases: the real FastAPI app and Store, a FakeScheduler, and whatever
settings a case needs (API key, origins, bind address, body limit), with the tiny model already stored."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from offload.api import create_app
from offload.config import load_settings
from offload.models.store import Store
from tests.fakes.scheduler import FakeScheduler
from tests.fixtures.gguf_files import write_tiny_gguf

MODEL = "tiny:latest"
# What a local client's Host header looks like; the app is bound to 127.0.0.1 unless a case says otherwise.
LOCAL = "http://127.0.0.1:11434"
SIMPLE_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass
class Served:
    app: FastAPI
    client: TestClient
    store: Store
    scheduler: FakeScheduler
    root: Path  # the test's directory: nothing may appear in it outside the store


@contextmanager
def served(
    tmp_path: Path, *, base_url: str = LOCAL, chat_template: str = SIMPLE_TEMPLATE, **settings: Any
) -> Iterator[Served]:
    """The app over a store holding `tiny:latest`, and a client that raises no server exceptions."""
    store = Store(tmp_path / "home" / "models")
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf", chat_template=chat_template)
    store.import_gguf(MODEL, gguf)
    scheduler = FakeScheduler()
    app = create_app(load_settings(home=tmp_path / "home", **settings), store, scheduler)
    with TestClient(app, base_url=base_url, raise_server_exceptions=False) as client:
        yield Served(app, client, store, scheduler, tmp_path)


def tree(root: Path) -> dict[str, int]:
    """Every path under `root` (relative) with its size, -1 for a directory."""
    return {str(p.relative_to(root)): (-1 if p.is_dir() else p.lstat().st_size) for p in root.rglob("*")}


def digest_of(content: bytes) -> str:
    return "sha256:" + hashlib.sha256(content).hexdigest()


def assert_ollama_error(response: Any, status: int) -> str:
    """Ollama's error shape, exactly: `{"error": "<text>"}`; returns the text."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"], body
    assert isinstance(body["error"], str) and body["error"]
    return str(body["error"])


def assert_openai_error(response: Any, status: int, code: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape, exactly: `{"error": {"message", "type", "param", "code"}}`; returns the inner object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"], body
    error = body["error"]
    assert sorted(error) == ["code", "message", "param", "type"], error
    assert error["code"] == code, error
    assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    assert error["param"] == param, error
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


def assert_still_serving(client: TestClient, headers: dict[str, str] | None = None) -> None:
    """The server answers the health check, lists its model and generates, after whatever the case did."""
    assert client.get("/health", headers=headers).json() == {"status": "ok"}
    tags = client.get("/api/tags", headers=headers)
    assert tags.status_code == 200
    assert MODEL in [m["name"] for m in tags.json()["models"]]
    answer = client.post("/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False}, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["response"] == "Hello world!"
