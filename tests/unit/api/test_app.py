"""Plain endpoints, error mapping for unexpected failures, metrics."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from offload.api import app as app_module
from offload.api import create_app
from offload.api.deps import SchedulerLike
from offload.config import Settings
from offload.generation import Chunk, GenerateRequest
from offload.models.store import Store
from offload.scheduler import Scheduler
from tests.fakes.scheduler import FakeRunningModel, FakeScheduler, default_script


def test_root_health_version(client: TestClient) -> None:
    root = client.get("/")
    assert root.status_code == 200
    assert root.text == "offload is running"
    assert client.head("/").status_code == 200
    assert client.get("/health").json() == {"status": "ok"}
    version = client.get("/api/version").json()["version"]
    assert version == app_module.version()
    assert version


def test_unexpected_error_is_a_generic_500(
    client: TestClient,
    scheduler: FakeScheduler,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken_load(model: object, keep_alive: object) -> int:
        raise RuntimeError("secret detail /home/me")

    async def broken_embed(model: object, request: object) -> object:
        raise RuntimeError("secret detail /home/me")

    monkeypatch.setattr(scheduler, "load", broken_load)
    monkeypatch.setattr(scheduler, "embed", broken_embed)
    with caplog.at_level(logging.ERROR):
        ollama_style = client.post("/api/generate", json={"model": "tiny"})
    assert ollama_style.status_code == 500
    assert "secret" not in ollama_style.text
    assert set(ollama_style.json()) == {"error"}
    assert "secret detail" in caplog.text  # the traceback is in the log
    openai_style = client.post("/v1/embeddings", json={"model": "tiny", "input": "x"})
    assert openai_style.status_code == 500
    assert "secret" not in openai_style.text
    assert openai_style.json()["error"]["type"] == "server_error"


def test_unknown_route_and_method_in_ollama_shape(client: TestClient) -> None:
    missing = client.get("/api/nothing")
    assert missing.status_code == 404
    assert set(missing.json()) == {"error"}
    assert client.get("/api/generate").status_code == 405


def test_oversized_body_is_refused(client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "max_body_bytes", 1024)
    response = client.post("/api/generate", json={"model": "tiny", "prompt": "x" * 2000})
    assert response.status_code == 413
    assert response.json() == {"error": "request body is larger than 1024 bytes (OFFLOAD_MAX_BODY_BYTES)"}
    assert client.post("/api/generate", json={"model": "tiny", "prompt": "x" * 900}).status_code == 200


def test_metrics(client: TestClient) -> None:
    client.post("/api/generate", json={"model": "tiny", "prompt": "x", "stream": False})
    client.post("/api/generate", json={"model": "nope", "prompt": "x"})
    text = client.get("/metrics").text
    assert 'offload_http_requests_total{method="POST",route="/api/generate",status="200"} 1.0' in text
    assert 'offload_http_requests_total{method="POST",route="/api/generate",status="404"} 1.0' in text
    assert 'offload_generated_tokens_total{model="tiny:latest"} 3.0' in text
    assert 'offload_prompt_tokens_total{model="tiny:latest"} 5.0' in text
    assert 'offload_prompt_cached_tokens_total{model="tiny:latest"} 2.0' in text
    assert 'offload_time_to_first_token_seconds_count{model="tiny:latest"} 1.0' in text


def test_metrics_of_loaded_models_and_devices(client: TestClient, scheduler: FakeScheduler) -> None:
    def placement(devices: list[Any]) -> dict[str, Any]:
        return {"backend": "cuda", "layers_on_gpu": 1, "layers_total": 2, "devices": devices, "verified": True}

    scheduler.running_models = [
        FakeRunningModel(
            "a:latest",
            "sha256:" + "1" * 64,
            placement=placement(
                [
                    {"name": "CUDA0", "layers": 1, "buffers": {"weights": 1000, "kv": 200}},
                    {"name": "CPU", "layers": 1, "buffers": {"weights": 30}},
                ]
            ),
        ),
        FakeRunningModel(
            "b:latest",
            "sha256:" + "2" * 64,
            placement=placement([{"name": "CUDA0", "buffers": {"weights": 5}}, {"name": "odd"}, "junk"]),
        ),
    ]
    text = client.get("/metrics").text
    assert "offload_loaded_models 2.0" in text
    assert 'offload_model_memory_bytes{device="CUDA0",model="a:latest"} 1200.0' in text
    assert 'offload_model_memory_bytes{device="CPU",model="a:latest"} 30.0' in text
    assert 'offload_model_memory_bytes{device="CUDA0",model="b:latest"} 5.0' in text
    assert 'offload_device_memory_bytes{device="CUDA0"} 1205.0' in text
    assert 'offload_device_memory_bytes{device="CPU"} 30.0' in text
    assert 'device="odd"' not in text
    scheduler.running_models = []
    text = client.get("/metrics").text
    assert "offload_loaded_models 0.0" in text
    assert "offload_device_memory_bytes{" not in text


def test_metrics_of_requests_waiting_and_durations(client: TestClient, scheduler: FakeScheduler) -> None:
    seen: list[str] = []

    def script(request: GenerateRequest) -> list[Chunk]:
        # Read while the generation has not produced its first chunk: it is waiting.
        seen.append(client.app.state.offload.metrics.render().decode())  # type: ignore[attr-defined]
        return default_script(request)

    scheduler.script = script
    client.post("/api/generate", json={"model": "tiny", "prompt": "x", "stream": False})
    assert 'offload_requests_waiting{model="tiny:latest"} 1.0' in seen[0]
    text = client.get("/metrics").text
    assert 'offload_requests_waiting{model="tiny:latest"} 0.0' in text
    assert 'offload_http_request_duration_seconds_count{route="/api/generate"} 1.0' in text
    assert "offload_http_requests_in_progress 1.0" in text  # the scrape itself
    client.post("/api/embed", json={"model": "tiny", "input": ["a", "b"]})
    client.post("/v1/embeddings", json={"model": "tiny", "input": "a"})
    # 5 from the generation, 4 + 2 from the fake's embeddings (2 per input)
    assert 'offload_prompt_tokens_total{model="tiny:latest"} 11.0' in client.get("/metrics").text


def as_scheduler_like(scheduler: Scheduler) -> SchedulerLike:
    """mypy checks here that the real Scheduler satisfies the Protocol the API is written against."""
    return scheduler


def test_fake_and_real_schedulers_fit_the_protocol() -> None:
    fake: SchedulerLike = FakeScheduler()
    assert fake.running() == []
    assert as_scheduler_like.__annotations__["return"] == "SchedulerLike"


def test_health_is_503_when_a_runner_cannot_generate(client: TestClient, scheduler: FakeScheduler) -> None:
    scheduler.problems = {"tiny:latest": "runner for tiny:latest is not running (killed by signal SIGKILL)"}
    response = client.get("/health")
    assert response.status_code == 503
    assert response.json() == {
        "status": "unhealthy",
        "error": "1 loaded model(s) cannot generate",
        "models": scheduler.problems,
    }


def test_health_names_no_model_when_a_key_is_set(settings: Settings, store: Store, scheduler: FakeScheduler) -> None:
    scheduler.problems = {"secret-model:latest": "did not answer within 5 s"}
    keyed = settings.model_copy(update={"api_key": SecretStr("sk-test-key-0123456789")})
    with TestClient(create_app(keyed, store, scheduler), raise_server_exceptions=False) as client:
        response = client.get("/health")
    assert response.status_code == 503
    assert response.json() == {"status": "unhealthy", "error": "1 loaded model(s) cannot generate"}
