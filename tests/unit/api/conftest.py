"""Fixtures for the API tests: a real Store on tmp_path holding a tiny GGUF, a FakeScheduler, the app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from offload.api import create_app
from offload.config import Settings, load_settings
from offload.models.store import Store, StoredModel
from tests.fakes.scheduler import FakeScheduler
from tests.fixtures.gguf_files import write_tiny_gguf

MODEL = "tiny:latest"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # The app is bound to loopback by default, so it answers only Host names it knows: add the test clients'.
    return load_settings(home=tmp_path / "home", allowed_hosts="testserver,offload.test")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "models")


@pytest.fixture
def gguf_path(tmp_path: Path) -> Path:
    return write_tiny_gguf(tmp_path / "tiny.gguf", chat_template=CHAT_TEMPLATE)


@pytest.fixture
def stored(store: Store, gguf_path: Path) -> StoredModel:
    return store.import_gguf(
        MODEL, gguf_path, system="Be brief.", parameters={"temperature": 0.2, "stop": ["<|user|>"]}
    )


@pytest.fixture
def scheduler() -> FakeScheduler:
    return FakeScheduler()


@pytest.fixture
def app(settings: Settings, store: Store, scheduler: FakeScheduler, stored: StoredModel) -> FastAPI:
    return create_app(settings, store, scheduler)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
