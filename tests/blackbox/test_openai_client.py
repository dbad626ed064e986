"""The official `openai` Python client against the real server and the real starter model."""

from __future__ import annotations

import math

import openai
import pytest

from tests.blackbox.server import ServerProcess

pytestmark = pytest.mark.blackbox
MODEL = "gemma3:270m"


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", timeout=120, max_retries=0)


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_completion_is_deterministic_with_seed(client: openai.OpenAI) -> None:
    def ask() -> openai.types.chat.ChatCompletion:
        return client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Why is the sky blue?"}],
            temperature=0,
            seed=7,
            max_tokens=10,
        )

    first, second = ask(), ask()
    content = first.choices[0].message.content
    assert content and content.strip()
    assert content == second.choices[0].message.content
    assert first.choices[0].finish_reason == "length"
    assert first.usage is not None and first.usage.completion_tokens == 10
    assert first.usage.total_tokens == first.usage.prompt_tokens + 10


def test_a_conversations_next_turn_reuses_the_cached_prompt(client: openai.OpenAI) -> None:
    """Prefix reuse seen from the client: the second turn's usage counts the first turn's prompt as cached
    (OpenAI's `prompt_tokens_details.cached_tokens`), and only the rest is evaluated."""
    history: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "user", "content": "Name a large animal that lives in the ocean, in one word."}
    ]
    first = client.chat.completions.create(model=MODEL, messages=history, temperature=0, max_tokens=8)
    reply = first.choices[0].message.content or ""
    history += [{"role": "assistant", "content": reply}, {"role": "user", "content": "And a small one?"}]
    second = client.chat.completions.create(model=MODEL, messages=history, temperature=0, max_tokens=8)
    assert first.usage is not None and second.usage is not None
    assert second.usage.prompt_tokens_details is not None
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached is not None
    assert first.usage.prompt_tokens - 1 <= cached < second.usage.prompt_tokens


def test_streamed_chat_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        temperature=0,
        seed=1,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["stop"] or finals == ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 12
    whole = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], temperature=0, seed=1, max_tokens=12
    )
    assert whole.choices[0].message.content == text


def test_stop_sequences(client: openai.OpenAI) -> None:
    prompt = "One, two, three, four, five,"
    full = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=30).choices[0].text
    assert "," in full, full
    cut = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=30, stop=[","]).choices[0]
    assert cut.text == full[: full.index(",")]
    assert cut.finish_reason == "stop"


def test_embeddings(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model=MODEL, input=["hello", "world"])
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 640
    assert math.isclose(math.sqrt(sum(x * x for x in result.data[0].embedding)), 1.0, rel_tol=1e-3)
    assert result.usage.prompt_tokens > 0


def test_unknown_model_is_a_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope:1b", messages=[{"role": "user", "content": "x"}])
    assert "not found" in str(info.value)


def test_bad_parameters_are_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=-5
        )
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], n=3)


def test_json_schema_response_format_gives_json_that_fits(client: openai.OpenAI) -> None:
    import json

    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}},
        "required": ["colour", "ok"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Pick a colour."}],
        response_format={"type": "json_schema", "json_schema": {"name": "pick", "schema": schema}},
        max_tokens=64,
        seed=3,
    )
    value = json.loads(reply.choices[0].message.content or "")
    assert set(value) == {"colour", "ok"} and value["colour"] in {"red", "green", "blue"}
    assert isinstance(value["ok"], bool)
    assert reply.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "x"}],
            extra_body={"response_format": {"type": "yaml"}},  # not a type the client itself would build
        )
    assert caught.value.status_code == 400
