from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from offload.api import ollama
from offload.api.options import ResolvedOptions
from offload.api.wire import OllamaMessage
from offload.errors import BadRequest, UnsupportedByModel
from offload.generation import Chunk, EmbedResult, SamplingOptions
from offload.models.names import parse_name
from offload.models.store import StoredModel
from offload.models.templates import ChatMessage

FINAL = Chunk(
    text="",
    done=True,
    done_reason="length",
    prompt_eval_count=4,
    prompt_eval_duration=10,
    eval_count=2,
    eval_duration=20,
    load_duration=30,
    context=(5, 6),
)


def test_rfc3339_nano() -> None:
    assert ollama.rfc3339_nano(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"
    assert ollama.rfc3339_nano(1_700_000_000_000_000_001).endswith(".000000001Z")


def test_format_time_is_utc() -> None:
    moment = datetime(2024, 1, 2, 3, 4, 5, 600, tzinfo=timezone(timedelta(hours=2)))
    assert ollama.format_time(moment) == "2024-01-02T01:04:05.000600Z"
    assert ollama.format_time(datetime(2024, 1, 2)) == "2024-01-02T00:00:00.000000Z"


@pytest.mark.parametrize(
    ("chunk", "expected"),
    [
        (Chunk(text="hi"), {"model": "m", "created_at": "T", "response": "hi", "done": False}),
        (
            FINAL,
            {
                "model": "m",
                "created_at": "T",
                "response": "",
                "done": True,
                "done_reason": "length",
                "total_duration": 99,
                "load_duration": 30,
                "prompt_eval_count": 4,
                "prompt_eval_duration": 10,
                "eval_count": 2,
                "eval_duration": 20,
                "context": [5, 6],
            },
        ),
    ],
)
def test_generate_line(chunk: Chunk, expected: dict[str, Any]) -> None:
    assert ollama.generate_line("m", "T", chunk, total_duration=99) == expected


def test_generate_line_without_context_and_with_whole_text() -> None:
    final = Chunk(done=True, done_reason=None)
    line = ollama.generate_line("m", "T", final, text="all of it")
    assert line["response"] == "all of it"
    assert line["done_reason"] == "stop"
    assert "context" not in line


def test_chat_line() -> None:
    assert ollama.chat_line("m", "T", Chunk(text="x")) == {
        "model": "m",
        "created_at": "T",
        "message": {"role": "assistant", "content": "x"},
        "done": False,
    }
    final = ollama.chat_line("m", "T", FINAL, text="whole", total_duration=5)
    assert final["message"] == {"role": "assistant", "content": "whole"}
    assert final["eval_count"] == 2
    assert "context" not in final


def test_load_lines() -> None:
    assert ollama.load_line("m", "T", ollama.LOAD, chat=False, load_duration=3, total_duration=4) == {
        "model": "m",
        "created_at": "T",
        "response": "",
        "done": True,
        "done_reason": "load",
        "total_duration": 4,
        "load_duration": 3,
    }
    assert ollama.load_line("m", "T", ollama.UNLOAD, chat=True) == {
        "model": "m",
        "created_at": "T",
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "unload",
    }


def test_generate_request() -> None:
    options = ResolvedOptions(
        sampling=SamplingOptions(temperature=0.1), num_predict=5, stop=("x",), num_ctx=512
    )
    request = ollama.generate_request(
        "m:latest", "prompt", options, keep_alive=60.0, context=[1, 2], return_context=True
    )
    assert request.model == "m:latest"
    assert request.prompt == "prompt"
    assert request.sampling.temperature == 0.1
    assert request.num_predict == 5
    assert request.stop == ("x",)
    assert request.context == (1, 2)
    assert request.return_context is True
    assert request.num_ctx == 512
    assert request.keep_alive == 60.0


@pytest.mark.parametrize(
    ("value", "schema"),
    [
        (None, None),
        ("", None),
        ("json", '{"type": "object"}'),
        (
            {"type": "object", "properties": {"a": {"type": "integer"}}},
            '{"type":"object","properties":{"a":{"type":"integer"}}}',
        ),
    ],
)
def test_format_becomes_the_output_schema(value: Any, schema: str | None) -> None:
    assert ollama.output_schema(value) == schema


@pytest.mark.parametrize("value", ["xml", 3, ["json"], True, {"enum": ["x" * 70_000]}])
def test_format_rejected(value: Any) -> None:
    with pytest.raises(BadRequest) as caught:
        ollama.output_schema(value)
    assert caught.value.param == "format"


@pytest.mark.parametrize(
    ("response_format", "schema", "param"),
    [
        (None, None, None),
        ({"type": "text"}, None, None),
        ({"type": "json_object"}, '{"type": "object"}', None),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer"}}},
            '{"type":"integer"}',
            None,
        ),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, None, "response_format.json_schema.schema"),
        ({"type": "xml"}, None, "response_format.type"),
    ],
)
def test_response_format_becomes_the_output_schema(
    response_format: dict[str, Any] | None, schema: str | None, param: str | None
) -> None:
    from offload.api import openai

    if param is None:
        assert openai.response_schema(response_format) == schema
    else:
        with pytest.raises(BadRequest) as caught:
            openai.response_schema(response_format)
        assert caught.value.param == param


def test_chat_messages_put_the_model_system_first_unless_given() -> None:
    messages = [OllamaMessage(role="user", content="hi"), OllamaMessage(role="assistant", content=None)]
    assert ollama.chat_messages(messages, "sys") == [
        ChatMessage("system", "sys"),
        ChatMessage("user", "hi"),
        ChatMessage("assistant", ""),
    ]
    own = [OllamaMessage(role="system", content="mine"), OllamaMessage(role="user", content="hi")]
    assert ollama.chat_messages(own, "sys")[0] == ChatMessage("system", "mine")


def test_chat_images_are_refused() -> None:
    with pytest.raises(UnsupportedByModel) as caught:
        ollama.chat_messages([OllamaMessage(role="user", content="x", images=["aGk="])], None)
    assert caught.value.param == "messages.0.images"


def test_embed() -> None:
    result = EmbedResult(embeddings=((3.0, 4.0), (0.0, 0.0)), prompt_eval_count=7, load_duration=1)
    assert ollama.embed_response("m", result, 9) == {
        "model": "m",
        "embeddings": [[0.6, 0.8], [0.0, 0.0]],
        "total_duration": 9,
        "load_duration": 1,
        "prompt_eval_count": 7,
    }
    assert ollama.embed_inputs("a") == ("a",)
    assert ollama.embed_inputs("") == ()
    assert ollama.embed_inputs(None) == ()
    assert ollama.embed_inputs(["a", "b"]) == ("a", "b")


def _stored(parameters: dict[str, Any]) -> StoredModel:
    return StoredModel(
        name=parse_name("ns/m:tag"),
        digest="sha256:" + "a" * 64,
        size=10,
        modified_at=datetime(2024, 5, 6, tzinfo=UTC),
        model_digest="sha256:" + "b" * 64,
        model_path=Path("/store/blobs/sha256-" + "b" * 64),
        template=None,
        system="Be nice.",
        parameters=parameters,
        license="MIT",
    )


def test_tag_entry() -> None:
    details = ollama.model_details(None)
    assert ollama.tag_entry(_stored({}), details) == {
        "name": "ns/m:tag",
        "model": "ns/m:tag",
        "modified_at": "2024-05-06T00:00:00.000000Z",
        "size": 10,
        "digest": "a" * 64,
        "details": details,
    }


def test_parameters_text_and_modelfile() -> None:
    stored = _stored({"temperature": 0.5, "stop": ["<a>", 'q"'], "penalize_newline": False})
    assert ollama.parameters_text(stored.parameters).splitlines() == [
        "penalize_newline" + " " * 15 + "false",
        "stop" + " " * 27 + '"<a>"',
        "stop" + " " * 27 + '"q\\""',
        "temperature" + " " * 20 + "0.5",
    ]
    text = ollama.modelfile_text(stored, "{{ x }}")
    assert f"FROM {stored.model_path}\n" in text
    assert 'TEMPLATE """{{ x }}"""' in text
    assert 'SYSTEM """Be nice."""' in text
    assert 'PARAMETER stop "<a>"' in text
    assert 'LICENSE """MIT"""' in text


def test_ps_entry() -> None:
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    entry = ollama.ps_entry(
        "m:latest",
        digest="sha256:" + "c" * 64,
        size=5,
        size_vram=3,
        expires_at=expires,
        context_length=4096,
        placement={"backend": "cuda", "layers_on_gpu": 2},
        details={"format": "gguf"},
    )
    assert entry["digest"] == "c" * 64
    assert entry["expires_at"] == "2030-01-01T00:00:00.000000Z"
    assert entry["offload"] == {"backend": "cuda", "layers_on_gpu": 2}
    assert entry["name"] == entry["model"] == "m:latest"
