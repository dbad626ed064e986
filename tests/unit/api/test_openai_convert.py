from __future__ import annotations

import base64
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from offload.api import openai
from offload.api.options import resolve_options
from offload.api.wire import OpenAIChat, OpenAICompletion, OpenAIMessage
from offload.errors import BadRequest, UnsupportedByModel
from offload.generation import Chunk
from offload.models.names import parse_name
from offload.models.store import StoredModel
from offload.models.templates import ChatMessage

FINAL = Chunk(done=True, done_reason="length", prompt_eval_count=4, prompt_cached_count=3, eval_count=2)


def _chat(**fields: Any) -> OpenAIChat:
    return OpenAIChat.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def test_chat_completion() -> None:
    assert openai.chat_completion("chatcmpl-1", 7, "m", "hello", FINAL) == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 7,
        "model": "m",
        "system_fingerprint": "fp_offload",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello"},
                "logprobs": None,
                "finish_reason": "length",
            }
        ],
        "usage": {
            "prompt_tokens": 4,
            "completion_tokens": 2,
            "total_tokens": 6,
            "prompt_tokens_details": {"cached_tokens": 3},
        },
    }


@pytest.mark.parametrize(
    ("reason", "expected"), [("stop", "stop"), ("length", "length"), ("cancel", "stop"), (None, "stop")]
)
def test_finish_reason(reason: Any, expected: str) -> None:
    assert openai.finish_reason(Chunk(done=True, done_reason=reason)) == expected


def test_chunks() -> None:
    chunk = openai.chat_chunk("c", 1, "m", {"content": "x"})
    assert chunk["object"] == "chat.completion.chunk"
    assert chunk["choices"] == [
        {"index": 0, "delta": {"content": "x"}, "logprobs": None, "finish_reason": None}
    ]
    assert "usage" not in chunk
    assert openai.chat_chunk("c", 1, "m", {}, "stop", with_usage=True)["usage"] is None
    usage = openai.usage_chunk("chat.completion.chunk", "c", 1, "m", FINAL)
    assert usage["choices"] == []
    assert usage["usage"]["total_tokens"] == 6
    text = openai.completion_chunk("c", 1, "m", "t", "stop")
    assert text["object"] == "text_completion"
    assert text["choices"][0] == {"text": "t", "index": 0, "logprobs": None, "finish_reason": "stop"}


def test_text_completion() -> None:
    body = openai.text_completion("cmpl-1", 2, "m", "out", FINAL)
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "out"
    assert body["usage"]["completion_tokens"] == 2


def test_chat_options_mapping() -> None:
    wire = _chat(
        temperature=0.5,
        top_p=0.9,
        max_tokens=10,
        stop="x",
        seed=3,
        frequency_penalty=0.1,
        presence_penalty=-0.2,
    )
    assert openai.chat_options(wire) == {
        "temperature": 0.5,
        "top_p": 0.9,
        "num_predict": 10,
        "stop": "x",
        "seed": 3,
        "frequency_penalty": 0.1,
        "presence_penalty": -0.2,
    }
    assert openai.chat_options(_chat(max_tokens=10, max_completion_tokens=20))["num_predict"] == 20
    assert openai.chat_options(_chat()) == {}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
    ],
)
def test_chat_options_refused(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as caught:
        openai.chat_options(_chat(**fields))
    assert caught.value.param == param


def test_completion_options() -> None:
    wire = OpenAICompletion.model_validate({"model": "m", "prompt": "x"})
    assert openai.completion_options(wire) == {"num_predict": 16}
    with pytest.raises(BadRequest):
        openai.completion_options(OpenAICompletion.model_validate({"model": "m", "best_of": 2}))
    with pytest.raises(BadRequest):
        openai.completion_options(OpenAICompletion.model_validate({"model": "m", "logprobs": 1}))


def test_chat_messages() -> None:
    messages = [
        OpenAIMessage(role="developer", content="dev"),
        OpenAIMessage(role="user", content=[{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]),
        OpenAIMessage(role="assistant", content=None),
    ]
    assert openai.chat_messages(messages, "model system") == [
        ChatMessage("system", "dev"),
        ChatMessage("user", "a\nb"),
        ChatMessage("assistant", ""),
    ]
    assert openai.chat_messages([OpenAIMessage(role="user", content="q")], "sys")[0] == ChatMessage(
        "system", "sys"
    )


@pytest.mark.parametrize(
    ("content", "error", "param"),
    [
        ([{"type": "image_url", "image_url": {"url": "x"}}], UnsupportedByModel, "messages.0.content.0.type"),
        ([{"type": "text"}], BadRequest, "messages.0.content.0"),
        ([{"kind": "text", "text": "x"}], BadRequest, "messages.0.content.0"),
    ],
)
def test_chat_messages_refused(content: Any, error: type[BadRequest], param: str) -> None:
    with pytest.raises(error) as caught:
        openai.chat_messages([OpenAIMessage(role="user", content=content)], None)
    assert caught.value.param == param


def test_empty_messages_refused() -> None:
    with pytest.raises(BadRequest):
        openai.chat_messages([], None)


@pytest.mark.parametrize(("prompt", "expected"), [("x", "x"), (["y"], "y"), (None, "")])
def test_completion_prompt(prompt: Any, expected: str) -> None:
    assert openai.completion_prompt(prompt) == expected


@pytest.mark.parametrize("prompt", [["a", "b"], [1, 2], [[1, 2]], []])
def test_completion_prompt_refused(prompt: Any) -> None:
    with pytest.raises(BadRequest) as caught:
        openai.completion_prompt(prompt)
    assert caught.value.param == "prompt"


def test_embedding_inputs_and_encoding() -> None:
    assert openai.embedding_inputs("a") == ("a",)
    assert openai.embedding_inputs(["a", "b"]) == ("a", "b")
    for bad in ([1, 2], [[1, 2]], ["a", 1]):
        with pytest.raises(BadRequest):
            openai.embedding_inputs(bad)
    assert openai.encode_embedding([0.5, 1.0], "float") == [0.5, 1.0]
    encoded = openai.encode_embedding([0.5, 1.0], "base64")
    assert isinstance(encoded, str)
    assert struct.unpack("<2f", base64.b64decode(encoded)) == (0.5, 1.0)
    with pytest.raises(BadRequest):
        openai.encode_embedding([1.0], "int8")


def test_embeddings_response_normalizes() -> None:
    body = openai.embeddings_response("m", [(3.0, 4.0)], 5, None)
    assert body == {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.6, 0.8]}],
        "model": "m",
        "usage": {"prompt_tokens": 5, "total_tokens": 5},
    }


def test_model_objects() -> None:
    stored = StoredModel(
        name=parse_name("acme/m:tag"),
        digest="sha256:" + "a" * 64,
        size=1,
        modified_at=datetime(2024, 1, 1, tzinfo=UTC),
        model_digest="sha256:" + "b" * 64,
        model_path=Path("/x"),
        template=None,
        system=None,
        parameters={},
        license=None,
    )
    assert openai.model_list([stored]) == {
        "object": "list",
        "data": [{"id": "acme/m:tag", "object": "model", "created": 1704067200, "owned_by": "acme"}],
    }


def test_ids_are_unique_and_prefixed() -> None:
    ids = {openai.new_id("chatcmpl") for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith("chatcmpl-") and "-" not in i[len("chatcmpl-") :] for i in ids)


def test_logit_bias_becomes_sorted_token_pairs_on_the_sampling_options() -> None:
    wire = OpenAICompletion.model_validate({"model": "m", "prompt": "x", "logit_bias": {"50": -100, "7": 2.5}})
    bias = openai.logit_bias(wire)
    assert bias == ((7, 2.5), (50, -100.0))
    resolved = openai.with_logit_bias(resolve_options({}, openai.completion_options(wire)), bias)
    assert resolved.sampling.logit_bias == bias
    assert openai.logit_bias(OpenAICompletion.model_validate({"model": "m", "prompt": "x"})) == ()


@pytest.mark.parametrize(
    "bias",
    [
        {"abc": 1},
        {"-3": 1},
        {"1.5": 1},
        {"\u0661": 1},  # an Arabic-Indic digit: str.isdigit() says yes, a token id it is not
        {str(2**31): 1},
        {"5": 100.5},
        {"5": -101},
        {str(i): 1 for i in range(openai.MAX_LOGIT_BIAS + 1)},
    ],
)
def test_bad_logit_bias_is_refused(bias: dict[str, float]) -> None:
    with pytest.raises(BadRequest) as raised:
        openai.logit_bias(OpenAIChat.model_validate({"model": "m", "messages": [], "logit_bias": bias}))
    assert raised.value.param == "logit_bias"
