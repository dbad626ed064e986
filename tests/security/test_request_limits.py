"""Limits on what one request may ask for, each a clear 400 (or 413) in the route's dialect before any work.

Body size, message count, numeric options (negative, zero, huge, NaN, wrong type) in both dialects, n, stop
lists, temperature, structured-output schemas (invalid, oversized, too deep, remote $ref, huge repetitions),
JSON nesting, lone surrogates and split emoji, and a prompt longer than the context as the runner reports it.
Every refusal leaves the scheduler untouched and the server serving. This suite is never deleted or loosened.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from offload.api.options import INT32_MAX, MAX_STOP_CHARS, MAX_STOP_SEQUENCES
from offload.api.schema import MAX_SCHEMA_DEPTH, MAX_SCHEMA_REPEAT
from offload.api.wire import MAX_MESSAGES
from offload.config import DEFAULT_MAX_BODY
from offload.errors import ContextLengthExceeded
from offload.generation import MAX_SCHEMA_BYTES
from tests.security.apps import assert_ollama_error, assert_openai_error, assert_still_serving, served

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]


def ollama_generate(**extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "prompt": "hi", "stream": False, **extra}


def openai_chat(**extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": USER, **extra}


# ---------------------------------------------------------------- body size (413)


def test_a_body_over_the_limit_is_413_in_each_dialect(tmp_path: Path) -> None:
    with served(tmp_path, max_body_bytes=4096) as s:
        big = "x" * 5000
        text = assert_ollama_error(s.client.post("/api/generate", json=ollama_generate(prompt=big)), 413)
        assert "4096" in text
        assert_openai_error(s.client.post(CHAT, json=openai_chat(user=big)), 413, "request_too_large")
        # Without Content-Length (chunked), counted while it is read.
        chunks: Iterator[bytes] = iter([b'{"model": "tiny", "prompt": "', b"x" * 3000, b"x" * 3000, b'"}'])
        assert_ollama_error(s.client.post("/api/generate", content=chunks), 413)
        # A body just under the limit is served.
        fits = json.dumps(ollama_generate(prompt="x" * 3900))
        assert len(fits) <= 4096
        assert s.client.post("/api/generate", content=fits).status_code == 200
        assert len(s.scheduler.requests) == 1
        assert_still_serving(s.client)


def test_the_default_limit_is_32_mib(tmp_path: Path) -> None:
    assert DEFAULT_MAX_BODY == 32 * 1024 * 1024
    with served(tmp_path) as s:
        body = b'{"model": "tiny", "prompt": "' + b"x" * DEFAULT_MAX_BODY + b'"}'
        assert_ollama_error(s.client.post("/api/generate", content=body), 413)
        assert s.scheduler.requests == []


def test_blob_uploads_are_not_json_and_not_limited_by_it(tmp_path: Path) -> None:
    content = b"x" * 10_000
    with served(tmp_path, max_body_bytes=4096) as s:
        import hashlib

        digest = "sha256:" + hashlib.sha256(content).hexdigest()
        assert s.client.post(f"/api/blobs/{digest}", content=content).status_code == 201
        assert s.store.has_blob(digest)


# ---------------------------------------------------------------- messages


def test_too_many_messages_is_400(tmp_path: Path) -> None:
    many = [{"role": "user", "content": "x"}] * (MAX_MESSAGES + 1)
    with served(tmp_path) as s:
        text = assert_ollama_error(s.client.post("/api/chat", json={"model": "tiny", "messages": many}), 400)
        assert "messages" in text
        assert_openai_error(
            s.client.post(CHAT, json={"model": "tiny", "messages": many}), 400, "invalid_request_error", "messages"
        )
        assert s.scheduler.requests == []
        # The limit itself is served.
        ok = s.client.post("/api/chat", json={"model": "tiny", "messages": many[:MAX_MESSAGES], "stream": False})
        assert ok.status_code == 200


# ---------------------------------------------------------------- numeric options, Ollama's `options`

BAD_OPTIONS = [
    ("num_predict", -3),
    ("num_predict", INT32_MAX + 1),
    ("num_predict", 10**30),
    ("num_predict", 1.5),
    ("num_predict", "10"),
    ("num_predict", True),
    ("num_predict", []),
    ("num_predict", {}),
    ("num_predict", 1e300),
    ("temperature", -0.1),
    ("temperature", 100.5),
    ("temperature", 1e308),
    ("temperature", "hot"),
    ("temperature", False),
    ("top_k", -1),
    ("top_k", INT32_MAX + 1),
    ("top_p", 1.5),
    ("top_p", -0.01),
    ("min_p", 2),
    ("num_ctx", 0),
    ("num_ctx", (1 << 20) + 1),
    ("num_gpu", -2),
    ("repeat_penalty", 101),
    ("repeat_last_n", -2),
    ("presence_penalty", 101),
    ("frequency_penalty", -101),
    ("seed", 2**64),
    ("mirostat", 3),
    ("num_thread", 2**40),
    ("penalize_newline", 1),
]


@pytest.mark.parametrize(("key", "value"), BAD_OPTIONS, ids=lambda v: repr(v)[:20])
def test_bad_ollama_options_are_400_naming_the_option(tmp_path: Path, key: str, value: Any) -> None:
    with served(tmp_path) as s:
        for path, body in (
            ("/api/generate", ollama_generate(options={key: value})),
            ("/api/chat", {"model": "tiny", "messages": USER, "options": {key: value}}),
            ("/api/embed", {"model": "tiny", "input": "hi", "options": {key: value}}),
        ):
            text = assert_ollama_error(s.client.post(path, json=body), 400)
            assert f'"options.{key}"' in text, text
        assert s.scheduler.requests == [] and s.scheduler.embeds == []


@pytest.mark.parametrize(
    ("literal", "param"),
    # JSON has no NaN or Infinity: those are a body that is not JSON (no field to name); 1e400 is JSON that
    # Python reads as infinity, refused as a value of the field.
    [("NaN", None), ("Infinity", None), ("-Infinity", None), ("1e400", "max_tokens"), ("-1e400", "max_tokens")],
)
def test_non_finite_numbers_are_400(tmp_path: Path, literal: str, param: str | None) -> None:
    with served(tmp_path) as s:
        raw = '{"model": "tiny", "prompt": "hi", "options": {"temperature": LITERAL}}'.replace("LITERAL", literal)
        assert_ollama_error(s.client.post("/api/generate", content=raw), 400)
        raw = '{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": LITERAL}'.replace(
            "LITERAL", literal
        )
        assert_openai_error(s.client.post(CHAT, content=raw), 400, "invalid_request_error", param)
        raw = '{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": LITERAL}'.replace(
            "LITERAL", literal
        )
        assert_openai_error(s.client.post(CHAT, content=raw), 400, "invalid_request_error", param and "temperature")
        assert s.scheduler.requests == []


@pytest.mark.parametrize(
    ("options", "num_predict"),
    [
        ({"num_predict": 0}, 0),
        ({"num_predict": -1}, None),
        ({"num_predict": -2}, None),
        ({"num_predict": INT32_MAX}, INT32_MAX),
    ],
)
def test_edge_num_predict_values_are_served(tmp_path: Path, options: dict[str, Any], num_predict: int | None) -> None:
    with served(tmp_path) as s:
        assert s.client.post("/api/generate", json=ollama_generate(options=options)).status_code == 200
        assert s.scheduler.requests[-1].num_predict == num_predict


# ---------------------------------------------------------------- numeric fields, OpenAI's

BAD_OPENAI = [
    ("max_tokens", 0),
    ("max_tokens", -1),
    ("max_tokens", INT32_MAX + 1),
    ("max_tokens", 1.5),
    ("max_tokens", "16"),
    ("max_tokens", True),
    ("max_completion_tokens", 0),
    ("max_completion_tokens", 10**20),
    ("temperature", -1),
    ("temperature", 2.5),
    ("temperature", "1"),
    ("top_p", 1.01),
    ("presence_penalty", 3),
    ("frequency_penalty", -3),
    ("n", 0),
    ("n", 2),
    ("n", -1),
    ("n", 10**100),
    ("n", "1"),
    ("n", 1.0),
    ("n", True),
    ("seed", 2**70),
    ("seed", "1"),
    ("stream", "yes"),
    ("stream", 1),
]


@pytest.mark.parametrize(("field", "value"), BAD_OPENAI, ids=lambda v: repr(v)[:20])
def test_bad_openai_fields_are_400_naming_the_field(tmp_path: Path, field: str, value: Any) -> None:
    with served(tmp_path) as s:
        response = s.client.post(CHAT, json=openai_chat(**{field: value}))
        assert_openai_error(response, 400, "invalid_request_error", field)
        assert s.scheduler.requests == []


@pytest.mark.parametrize(("field", "value"), [("max_tokens", -1), ("max_tokens", "16"), ("n", 3), ("best_of", 2)])
def test_bad_completion_fields_are_400(tmp_path: Path, field: str, value: Any) -> None:
    with served(tmp_path) as s:
        response = s.client.post("/v1/completions", json={"model": "tiny", "prompt": "hi", field: value})
        assert_openai_error(response, 400, "invalid_request_error", field)
        assert s.scheduler.requests == []


def test_completion_max_tokens_zero_is_allowed(tmp_path: Path) -> None:
    # OpenAI's /v1/completions takes 0 (with echo, the prompt back and nothing generated).
    with served(tmp_path) as s:
        response = s.client.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 0})
        assert response.status_code == 200
        assert s.scheduler.requests[-1].num_predict == 0


# ---------------------------------------------------------------- stop lists


@pytest.mark.parametrize(
    "stop",
    [
        ["s"] * (MAX_STOP_SEQUENCES + 1),
        ["x" * (MAX_STOP_CHARS + 1)],
        3,
        [["nested"]],
        [None],
        {"a": "b"},
    ],
    ids=["too-many", "too-long", "int", "nested", "null-item", "object"],
)
def test_bad_stop_lists_are_400(tmp_path: Path, stop: Any) -> None:
    with served(tmp_path) as s:
        text = assert_ollama_error(s.client.post("/api/generate", json=ollama_generate(options={"stop": stop})), 400)
        assert '"options.stop"' in text
        assert_openai_error(s.client.post(CHAT, json=openai_chat(stop=stop)), 400, "invalid_request_error", "stop")
        assert s.scheduler.requests == []


def test_the_largest_stop_list_is_served(tmp_path: Path) -> None:
    stop = [chr(ord("a") + i) * MAX_STOP_CHARS for i in range(MAX_STOP_SEQUENCES)]
    with served(tmp_path) as s:
        assert s.client.post(CHAT, json=openai_chat(stop=stop)).status_code == 200
        assert s.scheduler.requests[-1].stop == tuple(stop)


def test_model_parameters_are_range_checked_when_created(tmp_path: Path) -> None:
    # A model must not be stored with a value every later request would refuse.
    with served(tmp_path) as s:
        for parameters in ({"temperature": 1000}, {"stop": ["s"] * 17}, {"num_ctx": 0}, {"num_predict": 2**40}):
            response = s.client.post("/api/create", json={"model": "bad", "from": "tiny", "parameters": parameters})
            text = assert_ollama_error(response, 400)
            assert f'"parameters.{next(iter(parameters))}"' in text
        assert not s.store.exists("bad")


# ---------------------------------------------------------------- structured output schemas


def nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth - 1):
        schema = {"type": "array", "items": schema}
    return schema


BAD_SCHEMAS = [
    ("oversized", {"type": "object", "properties": {f"p{i:05}": {"type": "string"} for i in range(3000)}}),
    ("too-deep", nested(MAX_SCHEMA_DEPTH + 1)),
    ("remote-ref", {"$ref": "https://example.com/schema.json"}),
    ("file-ref", {"$ref": "file:///etc/passwd"}),
    ("huge-maxLength", {"type": "string", "maxLength": 10**9}),
    ("huge-minItems", {"type": "array", "items": {"type": "integer"}, "minItems": MAX_SCHEMA_REPEAT + 1}),
    ("negative-count", {"type": "string", "minLength": -1}),
    ("float-count", {"type": "string", "minLength": 1.5}),
    ("bool-count", {"type": "string", "maxLength": True}),
    ("huge-pattern", {"type": "string", "pattern": "a{100000}"}),
    ("huge-pattern-range", {"type": "string", "pattern": "^(ab){1,99999}$"}),
    (
        "repeats-add-up",
        {
            "type": "object",
            "properties": {f"p{i}": {"type": "string", "maxLength": MAX_SCHEMA_REPEAT} for i in range(5)},
        },
    ),
    # What llama-cpp-python's converter asserts on: each of these killed a runner (exit 70) before the API
    # converted schemas itself.
    ("unknown-type", {"type": "no-such-type"}),
    ("unanchored-pattern", {"type": "string", "pattern": "[a-z]+"}),
    ("dangling-ref", {"$ref": "#/$defs/missing"}),
    (
        "too-many-optional-properties",
        {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(1500)}},
    ),
]


@pytest.mark.parametrize(("name", "schema"), BAD_SCHEMAS, ids=[name for name, _ in BAD_SCHEMAS])
def test_bad_schemas_are_400_in_each_dialect(tmp_path: Path, name: str, schema: dict[str, Any]) -> None:
    with served(tmp_path) as s:
        text = assert_ollama_error(s.client.post("/api/generate", json=ollama_generate(format=schema)), 400)
        assert '"format"' in text
        assert_ollama_error(s.client.post("/api/chat", json={"model": "tiny", "messages": USER, "format": schema}), 400)
        response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
        response = s.client.post(CHAT, json=openai_chat(response_format=response_format))
        assert_openai_error(response, 400, "invalid_request_error", "response_format.json_schema.schema")
        assert s.scheduler.requests == []
    if name == "oversized":
        assert len(json.dumps(schema, separators=(",", ":"))) > MAX_SCHEMA_BYTES


@pytest.mark.parametrize("value", [5, "xml", ["json"], True, "JSON"])
def test_format_that_is_neither_json_nor_a_schema_is_400(tmp_path: Path, value: Any) -> None:
    with served(tmp_path) as s:
        assert '"format"' in assert_ollama_error(
            s.client.post("/api/generate", json=ollama_generate(format=value)), 400
        )
        bad = {"type": "json_schema", "json_schema": {"schema": value}}
        assert_openai_error(
            s.client.post(CHAT, json=openai_chat(response_format=bad)),
            400,
            "invalid_request_error",
            "response_format.json_schema.schema",
        )
        assert s.scheduler.requests == []


def test_schemas_within_the_bounds_reach_the_runner(tmp_path: Path) -> None:
    schema = {
        "type": "object",
        # Property names that are also keywords are names, not counts.
        "properties": {"minLength": {"type": "string", "maxLength": MAX_SCHEMA_REPEAT}, "ref": {"$ref": "#/$defs/x"}},
        "$defs": {"x": {"type": "string", "pattern": "^[a-z]{1,64}$"}},
        "required": ["minLength"],
    }
    with served(tmp_path) as s:
        assert s.client.post("/api/generate", json=ollama_generate(format=schema)).status_code == 200
        assert s.scheduler.requests[-1].json_schema is not None
        assert json.loads(s.scheduler.requests[-1].json_schema) == schema
        deepest = nested(MAX_SCHEMA_DEPTH)
        assert s.client.post("/api/generate", json=ollama_generate(format=deepest)).status_code == 200


@pytest.mark.parametrize("depth", [2000, 200_000])
def test_deeply_nested_json_is_400_not_500(tmp_path: Path, depth: int) -> None:
    with served(tmp_path) as s:
        raw = '{"model": "tiny", "prompt": "hi", "format": ' + "[" * depth + "]" * depth + "}"
        assert_ollama_error(s.client.post("/api/generate", content=raw), 400)
        raw = '{"model": "tiny", "messages": ' + "[" * depth + "]" * depth + "}"
        assert_openai_error(s.client.post(CHAT, content=raw), 400, "invalid_request_error")
        assert_still_serving(s.client)


# ---------------------------------------------------------------- Unicode: lone surrogates, split emoji


def test_lone_surrogates_become_replacement_characters(tmp_path: Path) -> None:
    # As Go's JSON decoder (Ollama's) does; nothing that cannot be encoded as UTF-8 reaches a runner.
    with served(tmp_path) as s:
        raw = '{"model": "tiny", "prompt": "a\\ud800b\\udfffc", "system": "\\udc00", "stream": false}'
        assert s.client.post("/api/generate", content=raw).status_code == 200
        prompt = s.scheduler.requests[-1].prompt
        assert "a\ufffdb\ufffdc" in prompt and "\ufffd" in prompt.split("a\ufffdb")[0]
        prompt.encode("utf-8")
        raw = '{"model": "tiny", "messages": [{"role": "user", "content": "x\\ud83d"}], "stop": ["\\ude00"]}'
        assert s.client.post(CHAT, content=raw).status_code == 200
        request = s.scheduler.requests[-1]
        assert "x\ufffd" in request.prompt
        assert request.stop == ("\ufffd",)


def test_an_emoji_split_across_messages_is_two_replacement_characters(tmp_path: Path) -> None:
    with served(tmp_path) as s:
        raw = (
            '{"model": "tiny", "stream": false, "messages": ['
            '{"role": "user", "content": "\\ud83d"}, {"role": "assistant", "content": "\\ude00"},'
            '{"role": "user", "content": "\\ud83d\\ude00"}]}'
        )
        assert s.client.post("/api/chat", content=raw).status_code == 200
        prompt = s.scheduler.requests[-1].prompt
        assert "<|user|>\ufffd\n<|assistant|>\ufffd\n<|user|>\U0001f600\n" in prompt
        prompt.encode("utf-8")


def test_invalid_utf8_is_400(tmp_path: Path) -> None:
    emoji = "\U0001f600".encode()
    with served(tmp_path) as s:
        raw = b'{"model": "tiny", "prompt": "' + emoji[:2] + b'"}'
        assert_ollama_error(s.client.post("/api/generate", content=raw), 400)
        raw = b'{"model": "tiny", "messages": [{"role": "user", "content": "' + emoji[2:] + b'"}]}'
        assert_openai_error(s.client.post(CHAT, content=raw), 400, "invalid_request_error")
        assert s.scheduler.requests == []


def test_a_surrogate_in_a_model_name_is_an_invalid_name(tmp_path: Path) -> None:
    with served(tmp_path) as s:
        raw = '{"model": "tiny\\ud800", "prompt": "hi"}'
        assert_ollama_error(s.client.post("/api/generate", content=raw), 400)
        assert s.scheduler.requests == []


# ---------------------------------------------------------------- prompt longer than the context


def test_context_length_exceeded_reaches_the_client_as_400(tmp_path: Path) -> None:
    # The runner counts the tokens and raises this before the first token; the real one is in the black-box suite.
    error = ContextLengthExceeded("the prompt has 9000 tokens but the context holds 4096 per request", param="messages")
    with served(tmp_path) as s:
        s.scheduler.fail_before = error
        text = assert_ollama_error(s.client.post("/api/generate", json=ollama_generate()), 400)
        assert text == error.message
        stream = s.client.post("/api/chat", json={"model": "tiny", "messages": USER})
        assert stream.status_code == 400
        assert stream.json() == {"error": error.message}
        body = assert_openai_error(s.client.post(CHAT, json=openai_chat()), 400, "context_length_exceeded", "messages")
        assert body["message"] == error.message
        streamed = s.client.post(CHAT, json=openai_chat(stream=True))
        assert_openai_error(streamed, 400, "context_length_exceeded", "messages")
        s.scheduler.fail_before = None
        assert_still_serving(s.client)


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity"])
def test_numbers_as_strings_are_refused_not_parsed(tmp_path: Path, value: str) -> None:
    # float("nan") would accept these; an option must be a JSON number.
    with served(tmp_path) as s:
        text = assert_ollama_error(
            s.client.post("/api/generate", json=ollama_generate(options={"temperature": value})), 400
        )
        assert '"options.temperature"' in text
        assert_ollama_error(s.client.post("/api/generate", json=ollama_generate(keep_alive=value)), 400)
        assert s.scheduler.requests == [] and s.scheduler.loads == []
