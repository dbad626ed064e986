"""OpenAI routes: shapes, streaming, errors in OpenAI's error shape."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest
from fastapi.testclient import TestClient

from offload.errors import RunnerCrashed, ServerBusy
from tests.fakes.scheduler import FakeScheduler

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}


def events(text: str) -> list[Any]:
    assert text.endswith("\n\n")
    out: list[Any] = []
    for block in text.split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: ")
        data = block.removeprefix("data: ")
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_chat_completion(client: TestClient, scheduler: FakeScheduler) -> None:
    response = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 7, "seed": 1, "stop": ["x"]})
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == "tiny"
    assert body["system_fingerprint"] == "fp_offload"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello world!"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {
        "prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8, "prompt_tokens_details": {"cached_tokens": 2}
    }
    request = scheduler.requests[0]
    assert request.prompt == "<|system|>Be brief.\n<|user|>hi\n<|assistant|>"
    assert request.num_predict == 7
    assert request.sampling.seed == 1
    assert request.stop == ("x",)
    # Model parameters beat OpenAI's documented defaults; top_p has no model value, so OpenAI's 1.0.
    assert request.sampling.temperature == 0.2
    assert request.sampling.top_p == 1.0


def test_chat_completion_request_wins(client: TestClient, scheduler: FakeScheduler) -> None:
    client.post("/v1/chat/completions", json={**CHAT, "temperature": 0, "top_p": 0.5})
    assert scheduler.requests[0].sampling.temperature == 0.0
    assert scheduler.requests[0].sampling.top_p == 0.5


def test_chat_completion_stream(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    got = events(response.text)
    assert got[-1] == "[DONE]"
    chunks = got[:-1]
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Hello world!"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in chunks)


def test_chat_completion_stream_with_usage(client: TestClient) -> None:
    got = events(
        client.post(
            "/v1/chat/completions", json={**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        ).text
    )
    assert got[-1] == "[DONE]"
    usage = got[-2]
    assert usage["choices"] == []
    assert usage["usage"] == {
        "prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8, "prompt_tokens_details": {"cached_tokens": 2}
    }
    assert got[-3]["choices"][0]["finish_reason"] == "stop"
    assert all(c["usage"] is None for c in got[:-2])


def test_length_finish_reason(client: TestClient, scheduler: FakeScheduler) -> None:
    from offload.generation import Chunk

    scheduler.script = [Chunk(text="abc", done=True, done_reason="length", eval_count=1)]
    body = client.post("/v1/chat/completions", json=CHAT).json()
    assert body["choices"][0]["finish_reason"] == "length"


def test_content_parts(client: TestClient, scheduler: FakeScheduler) -> None:
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "sys"}]},
        {"role": "user", "content": [{"type": "text", "text": "a"}]},
    ]
    assert (
        client.post("/v1/chat/completions", json={"model": "tiny", "messages": messages}).status_code == 200
    )
    assert scheduler.requests[0].prompt == "<|system|>sys\n<|user|>a\n<|assistant|>"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"temperature": 3}, "temperature"),
        ({"temperature": "warm"}, "temperature"),
        ({"top_p": -1}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": "json"}, "response_format"),
        ({"stop": 5}, "stop"),
        ({"messages": []}, "messages"),
        ({"messages": [{"content": "x"}]}, "messages.0.role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages.0.content.0.type",
        ),
    ],
)
def test_bad_requests_in_openai_shape(client: TestClient, extra: dict[str, Any], param: str) -> None:
    response = client.post("/v1/chat/completions", json={**CHAT, **extra})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert param.split(".")[0] in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_unknown_model(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": 'model "nope:latest" not found, try pulling it first',
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


def test_errors_before_and_during_the_stream(client: TestClient, scheduler: FakeScheduler) -> None:
    scheduler.fail_before = ServerBusy("busy")
    response = client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "server_error"
    assert response.json()["error"]["code"] == "server_busy"
    assert response.headers["retry-after"] == "1"  # the openai client honours it when it retries
    scheduler.fail_before = None
    scheduler.fail_after = (1, RunnerCrashed("crashed"))
    got = events(client.post("/v1/chat/completions", json={**CHAT, "stream": True}).text)
    assert got[-1] == {
        "error": {"message": "crashed", "type": "server_error", "param": None, "code": "runner_crashed"}
    }
    assert "[DONE]" not in got


def test_completions(client: TestClient, scheduler: FakeScheduler) -> None:
    body = client.post("/v1/completions", json={"model": "tiny", "prompt": "Once"}).json()
    assert body["id"].startswith("cmpl-")
    assert body["object"] == "text_completion"
    assert body["choices"] == [
        {"text": "Hello world!", "index": 0, "logprobs": None, "finish_reason": "stop"}
    ]
    request = scheduler.requests[0]
    assert request.prompt == "Once"  # raw: no template
    assert request.num_predict == 16
    echoed = client.post("/v1/completions", json={"model": "tiny", "prompt": ["Once"], "echo": True}).json()
    assert echoed["choices"][0]["text"] == "OnceHello world!"


def test_completions_stream(client: TestClient) -> None:
    got = events(
        client.post(
            "/v1/completions", json={"model": "tiny", "prompt": "Once", "stream": True, "max_tokens": 5}
        ).text
    )
    assert got[-1] == "[DONE]"
    assert "".join(c["choices"][0]["text"] for c in got[:-1]) == "Hello world!"
    assert got[-2]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("prompt", [[1, 2, 3], ["a", "b"]])
def test_completions_refuse_token_and_batch_prompts(client: TestClient, prompt: Any) -> None:
    response = client.post("/v1/completions", json={"model": "tiny", "prompt": prompt})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompt"


def test_embeddings(client: TestClient, scheduler: FakeScheduler) -> None:
    body = client.post("/v1/embeddings", json={"model": "tiny", "input": ["a", "b"]}).json()
    assert body["object"] == "list"
    assert body["data"] == [
        {"object": "embedding", "index": 0, "embedding": [0.6, 0.8]},
        {"object": "embedding", "index": 1, "embedding": [0.6, 0.8]},
    ]
    assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    b64 = client.post(
        "/v1/embeddings", json={"model": "tiny", "input": "a", "encoding_format": "base64"}
    ).json()
    vector = struct.unpack("<2f", base64.b64decode(b64["data"][0]["embedding"]))
    assert vector == pytest.approx((0.6, 0.8))


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"input": [1, 2]}, "input"),
        ({"encoding_format": "int8"}, "encoding_format"),
        ({"dimensions": 2}, "dimensions"),
    ],
)
def test_embeddings_refused(client: TestClient, extra: dict[str, Any], param: str) -> None:
    response = client.post("/v1/embeddings", json={"model": "tiny", "input": "a", **extra})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_models(client: TestClient) -> None:
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == ["tiny:latest"]
    model = client.get("/v1/models/tiny:latest").json()
    assert model["object"] == "model"
    assert model["owned_by"] == "library"
    assert isinstance(model["created"], int)
    missing = client.get("/v1/models/acme/nope:1")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


def test_unknown_route_in_openai_shape(client: TestClient) -> None:
    response = client.get("/v1/nothing")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert client.get("/v1/chat/completions").status_code == 405
