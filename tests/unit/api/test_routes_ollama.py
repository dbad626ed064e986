"""Ollama generation routes against a FakeScheduler and a real Store."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from fastapi.testclient import TestClient

from offload.errors import RunnerCrashed, ServerBusy
from offload.generation import Chunk
from offload.models.store import StoredModel
from tests.fakes.scheduler import FakeScheduler


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line]


def test_generate_streams_ndjson(client: TestClient, scheduler: FakeScheduler) -> None:
    response = client.post("/api/generate", json={"model": "tiny", "prompt": "Why?"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert response.headers["x-accel-buffering"] == "no"
    body = lines(response.text)
    assert [b["response"] for b in body] == ["Hello", " world", "!"]
    assert [b["done"] for b in body] == [False, False, True]
    assert body[0]["model"] == "tiny"
    assert body[0]["created_at"].endswith("Z")
    final = body[-1]
    assert final["done_reason"] == "stop"
    assert final["context"] == [1, 2, 3]
    assert final["eval_count"] == 3
    assert final["load_duration"] == 7
    assert final["total_duration"] > 0
    request = scheduler.requests[0]
    assert request.model == "tiny:latest"
    # The model's template, with the model's SYSTEM, the model's parameters as defaults.
    assert request.prompt == "<|system|>Be brief.\n<|user|>Why?\n<|assistant|>"
    assert request.sampling.temperature == 0.2
    assert request.stop == ("<|user|>",)
    assert request.return_context is True
    assert scheduler.finished == 1


def test_generate_not_streamed(client: TestClient) -> None:
    response = client.post("/api/generate", json={"model": "tiny", "prompt": "x", "stream": False})
    assert response.status_code == 200
    body = response.json()
    assert body["response"] == "Hello world!"
    assert body["done"] is True
    assert body["context"] == [1, 2, 3]


def test_generate_raw_and_overrides(client: TestClient, scheduler: FakeScheduler) -> None:
    client.post(
        "/api/generate",
        json={
            "model": "tiny",
            "prompt": "<b>x",
            "raw": True,
            "stream": False,
            "context": [9],
            "options": {"temperature": 0.9, "num_predict": 4, "seed": 5},
            "keep_alive": "10m",
        },
    )
    request = scheduler.requests[0]
    assert request.prompt == "<b>x"
    assert request.return_context is False
    assert request.context == (9,)
    assert request.sampling.temperature == 0.9
    assert request.sampling.seed == 5
    assert request.num_predict == 4
    assert request.keep_alive == 600.0


def test_generate_request_template_and_system_override(client: TestClient, scheduler: FakeScheduler) -> None:
    client.post(
        "/api/generate",
        json={
            "model": "tiny",
            "prompt": "q",
            "system": "S",
            "stream": False,
            "template": "{% for m in messages %}[{{ m['role'] }}:{{ m['content'] }}]{% endfor %}",
        },
    )
    assert scheduler.requests[0].prompt == "[system:S][user:q]"


def test_generate_empty_prompt_loads(client: TestClient, scheduler: FakeScheduler) -> None:
    response = client.post("/api/generate", json={"model": "tiny", "keep_alive": -1})
    assert response.status_code == 200
    body = response.json()
    assert body["done"] is True
    assert body["done_reason"] == "load"
    assert body["response"] == ""
    assert body["load_duration"] == 42
    assert scheduler.loads == [("tiny:latest", math.inf)]
    assert scheduler.requests == []


def test_generate_keep_alive_zero_unloads(client: TestClient, scheduler: FakeScheduler) -> None:
    body = client.post("/api/generate", json={"model": "tiny", "keep_alive": 0}).json()
    assert body["done_reason"] == "unload"
    assert scheduler.unloads == ["tiny:latest"]


def test_chat_streams_messages(client: TestClient, scheduler: FakeScheduler) -> None:
    response = client.post(
        "/api/chat",
        json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "options": {"top_k": 5}},
    )
    body = lines(response.text)
    assert [b["message"] for b in body] == [
        {"role": "assistant", "content": "Hello"},
        {"role": "assistant", "content": " world"},
        {"role": "assistant", "content": "!"},
    ]
    assert "context" not in body[-1]
    assert scheduler.requests[0].prompt == "<|system|>Be brief.\n<|user|>hi\n<|assistant|>"
    assert scheduler.requests[0].sampling.top_k == 5
    assert scheduler.requests[0].return_context is False


def test_chat_not_streamed(client: TestClient) -> None:
    body = client.post(
        "/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    ).json()
    assert body["message"] == {"role": "assistant", "content": "Hello world!"}
    assert body["done_reason"] == "stop"


def test_chat_empty_messages_loads(client: TestClient, scheduler: FakeScheduler) -> None:
    body = client.post("/api/chat", json={"model": "tiny", "messages": []}).json()
    assert body["done_reason"] == "load"
    assert body["message"] == {"role": "assistant", "content": ""}
    assert scheduler.loads == [("tiny:latest", None)]


def test_body_parsed_whatever_the_content_type(client: TestClient) -> None:
    # `curl -d` sends application/x-www-form-urlencoded; Ollama reads the JSON anyway.
    response = client.post(
        "/api/generate",
        content=b'{"model": "tiny", "prompt": "x", "stream": false}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert response.json()["response"] == "Hello world!"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "tiny", "prompt": "x", "options": {"temperature": -1}}, "temperature"),
        ({"model": "tiny", "prompt": "x", "options": {"temperature": "hot"}}, "temperature"),
        ({"model": "tiny", "prompt": "x", "options": {"num_ctx": 1.5}}, "num_ctx"),
        ({"model": "tiny", "prompt": "x", "keep_alive": "forever"}, "keep_alive"),
        ({"model": "tiny", "prompt": 5}, "prompt"),
        ({"model": "tiny", "prompt": "x", "context": ["a"]}, "context"),
        ({"model": "tiny", "prompt": "x", "format": 3}, "format"),
        ({"model": "tiny", "prompt": "x", "images": ["aGk="]}, "images"),
        ({"prompt": "x"}, "model"),
    ],
)
def test_bad_generate_requests_are_400_naming_the_field(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    response = client.post("/api/generate", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert isinstance(error, str)
    assert field in error


@pytest.mark.parametrize("raw", [b"{", b'{"model": NaN}', b"[1, 2]", b'"x"', b"\xff\xfe"])
def test_bad_json_is_400(client: TestClient, raw: bytes) -> None:
    response = client.post("/api/chat", content=raw)
    assert response.status_code == 400
    assert "error" in response.json()


def test_unknown_model_is_404(client: TestClient) -> None:
    response = client.post("/api/generate", json={"model": "nope", "prompt": "x"})
    assert response.status_code == 404
    assert response.json() == {"error": 'model "nope:latest" not found, try pulling it first'}


def test_invalid_name_is_400(client: TestClient) -> None:
    response = client.post(
        "/api/chat", json={"model": "../etc", "messages": [{"role": "user", "content": "x"}]}
    )
    assert response.status_code == 400


def test_error_before_first_chunk_is_an_http_status(client: TestClient, scheduler: FakeScheduler) -> None:
    scheduler.fail_before = ServerBusy("too many requests queued", retry_after=3)
    response = client.post("/api/generate", json={"model": "tiny", "prompt": "x"})
    assert response.status_code == 503
    assert response.json() == {"error": "too many requests queued"}
    assert response.headers["retry-after"] == "3"


def test_error_mid_stream_is_a_final_error_line(client: TestClient, scheduler: FakeScheduler) -> None:
    scheduler.fail_after = (1, RunnerCrashed("runner exited with signal 11"))
    response = client.post(
        "/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": "x"}]}
    )
    assert response.status_code == 200
    body = lines(response.text)
    assert body[0]["message"]["content"] == "Hello"
    assert body[-1] == {"error": "runner exited with signal 11"}


def test_error_mid_generation_not_streamed_is_an_http_status(
    client: TestClient, scheduler: FakeScheduler
) -> None:
    scheduler.fail_after = (2, RunnerCrashed("runner exited"))
    response = client.post("/api/generate", json={"model": "tiny", "prompt": "x", "stream": False})
    assert response.status_code == 500
    assert response.json() == {"error": "runner exited"}
    assert scheduler.closed_early == 1


def test_unexpected_error_mid_stream_hides_details(client: TestClient, scheduler: FakeScheduler) -> None:
    def script(_: object) -> list[Chunk]:
        raise ValueError("secret /home/user/path")

    scheduler.script = script
    response = client.post("/api/generate", json={"model": "tiny", "prompt": "x"})
    assert response.status_code == 500
    assert "secret" not in response.text
    assert "internal server error" in response.json()["error"]


def test_embed(client: TestClient, scheduler: FakeScheduler) -> None:
    response = client.post(
        "/api/embed",
        json={
            "model": "tiny",
            "input": ["a", "b"],
            "truncate": False,
            "options": {"num_ctx": 512},
            "keep_alive": "1m",
        },
    )
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "tiny"
    assert body["embeddings"] == [[0.6, 0.8], [0.6, 0.8]]
    assert body["prompt_eval_count"] == 4
    assert body["load_duration"] == 42
    request = scheduler.embeds[0]
    assert request.inputs == ("a", "b")
    assert request.truncate is False
    assert request.num_ctx == 512
    assert request.keep_alive == 60.0


def test_embed_single_string_and_empty(client: TestClient, scheduler: FakeScheduler) -> None:
    assert client.post("/api/embed", json={"model": "tiny", "input": "a"}).json()["embeddings"] == [
        [0.6, 0.8]
    ]
    empty = client.post("/api/embed", json={"model": "tiny", "input": []}).json()
    assert empty["embeddings"] == []
    assert scheduler.loads == [("tiny:latest", None)]


def test_embed_dimensions_refused(client: TestClient) -> None:
    response = client.post("/api/embed", json={"model": "tiny", "input": "a", "dimensions": 2})
    assert response.status_code == 400


def test_legacy_embeddings(client: TestClient, scheduler: FakeScheduler) -> None:
    body = client.post("/api/embeddings", json={"model": "tiny", "prompt": "a"}).json()
    assert body == {"embedding": [3.0, 4.0]}
    assert client.post("/api/embeddings", json={"model": "tiny", "prompt": ""}).json() == {"embedding": []}


def test_model_is_passed_to_the_scheduler(
    client: TestClient, scheduler: FakeScheduler, stored: StoredModel
) -> None:
    client.post("/api/generate", json={"model": "tiny:latest", "prompt": "x", "stream": False})
    assert scheduler.models == [stored]
