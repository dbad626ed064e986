"""The official `ollama` Python client against the real server and the real starter model."""

from __future__ import annotations

import math

import httpx
import ollama
import pytest

from tests.blackbox.server import ServerProcess

pytestmark = pytest.mark.blackbox
MODEL = "gemma3:270m"
GREEDY = {"temperature": 0, "seed": 42}


def text(value: str | None) -> str:
    assert value is not None
    return value


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> ollama.Client:
    return ollama.Client(host=server.base_url, timeout=120)


def test_list_shows_the_starter_model(client: ollama.Client) -> None:
    names = [m.model for m in client.list().models]
    assert MODEL in names
    entry = next(m for m in client.list().models if m.model == MODEL)
    assert entry.size is not None and entry.size > 200_000_000
    assert entry.details is not None and entry.details.family == "gemma3"


def test_show_reports_what_the_gguf_says(client: ollama.Client) -> None:
    shown = client.show(MODEL)
    assert shown.details is not None
    assert shown.details.quantization_level == "Q4_K_M"
    assert shown.details.format == "gguf"
    assert shown.modelinfo is not None
    assert shown.modelinfo["general.architecture"] == "gemma3"
    assert shown.modelinfo["gemma3.block_count"] == 18
    assert shown.template  # built-in gemma template, the GGUF has none


def test_generate_is_deterministic_and_honours_num_predict(client: ollama.Client) -> None:
    options = {**GREEDY, "num_predict": 12}
    first = client.generate(MODEL, "Why is the sky blue?", options=options)
    second = client.generate(MODEL, "Why is the sky blue?", options=options)
    assert text(first.response).strip()
    assert first.response == second.response
    assert first.eval_count == 12
    assert first.done_reason == "length"
    assert first.prompt_eval_count and first.prompt_eval_count > 5
    assert first.total_duration and first.eval_duration and first.prompt_eval_duration
    assert first.context and len(first.context) >= first.prompt_eval_count + 11


def test_streamed_generate_equals_the_whole_answer(client: ollama.Client) -> None:
    options = {**GREEDY, "num_predict": 20}
    whole = client.generate(MODEL, "Name three colours.", options=options)
    parts = list(client.generate(MODEL, "Name three colours.", options=options, stream=True))
    assert len(parts) > 2
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(text(p.response) for p in parts) == whole.response
    assert parts[-1].eval_count == 20


def test_stop_sequence_cuts_the_output(client: ollama.Client) -> None:
    options = {**GREEDY, "num_predict": 40}
    full = text(client.generate(MODEL, "Count from one to ten in words.", options=options).response)
    words = [w for w in full.split() if len(w) > 3]
    assert len(words) > 3, full
    stop = words[2]
    cut = client.generate(MODEL, "Count from one to ten in words.", options={**options, "stop": [stop]})
    assert stop not in text(cut.response)
    assert full.startswith(text(cut.response))
    assert cut.response == full[: full.index(stop)]
    assert cut.done_reason == "stop"


def test_chat_stream_and_not(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "Say hello."}]
    whole = client.chat(MODEL, messages=messages, options={**GREEDY, "num_predict": 16})
    assert whole.message.role == "assistant"
    assert text(whole.message.content).strip()
    parts = list(client.chat(MODEL, messages=messages, options={**GREEDY, "num_predict": 16}, stream=True))
    assert "".join(text(p.message.content) for p in parts) == whole.message.content
    assert parts[-1].done and parts[-1].eval_count == whole.eval_count


def test_chat_follow_up_turn(client: ollama.Client) -> None:
    messages = [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    first = client.chat(MODEL, messages=messages, options={**GREEDY, "num_predict": 24})
    messages += [first.message.model_dump(exclude_none=True), {"role": "user", "content": "And of Italy?"}]
    second = client.chat(MODEL, messages=messages, options={**GREEDY, "num_predict": 24})
    assert text(second.message.content).strip()
    assert second.prompt_eval_count and first.prompt_eval_count
    assert second.prompt_eval_count > first.prompt_eval_count


def test_embed_returns_normalized_vectors(client: ollama.Client) -> None:
    result = client.embed(MODEL, input=["The sky is blue.", "Grass is green."])
    assert len(result.embeddings) == 2
    assert all(len(v) == 640 for v in result.embeddings)
    for vector in result.embeddings:
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-3)
    assert result.embeddings[0] != result.embeddings[1]
    legacy = client.embeddings(MODEL, prompt="The sky is blue.")
    assert len(legacy.embedding) == 640


def test_ps_lists_the_loaded_model_with_its_placement(client: ollama.Client, server: ServerProcess) -> None:
    client.generate(MODEL, "hi", options={**GREEDY, "num_predict": 1})
    models = client.ps().models
    assert [m.model for m in models] == [MODEL]
    raw = httpx.get(server.base_url + "/api/ps").json()["models"][0]
    assert raw["offload"]["backend"] == "cpu"
    assert raw["offload"]["layers_on_gpu"] == 0
    assert raw["offload"]["layers_total"] == 19
    assert raw["offload"]["parallel"] == 4  # num_parallel "auto" on the CPU: 4 KV caches of the starter model fit
    assert raw["size_vram"] == 0
    assert raw["context_length"] >= 2048


def test_copy_then_delete(client: ollama.Client) -> None:
    client.copy(MODEL, "my-copy:v1")
    assert "my-copy:v1" in [m.model for m in client.list().models]
    reply = client.generate("my-copy:v1", "hi", options={**GREEDY, "num_predict": 3})
    assert reply.eval_count == 3
    client.delete("my-copy:v1")
    assert "my-copy:v1" not in [m.model for m in client.list().models]
    assert MODEL in [m.model for m in client.list().models]  # the shared blob survived
    with pytest.raises(ollama.ResponseError) as info:
        client.delete("my-copy:v1")
    assert info.value.status_code == 404


def test_unknown_model_is_404_with_ollamas_message(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.generate("no-such-model:7b", "hi")
    assert info.value.status_code == 404
    assert info.value.error == 'model "no-such-model:7b" not found, try pulling it first'


def test_bad_option_type_is_400_naming_the_field(server: ServerProcess) -> None:
    reply = httpx.post(
        server.base_url + "/api/generate",
        json={"model": MODEL, "prompt": "hi", "stream": False, "options": {"temperature": "hot"}},
    )
    assert reply.status_code == 400
    assert "temperature" in reply.json()["error"]
    broken = httpx.post(server.base_url + "/api/chat", content=b"{not json", timeout=10)
    assert broken.status_code == 400
    assert "error" in broken.json()


def test_curl_style_chat_streams_ndjson(server: ServerProcess) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 8}}
    with httpx.stream("POST", server.base_url + "/api/chat", json=body, timeout=60) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("application/x-ndjson")
        lines = [httpx.Response(200, content=line).json() for line in reply.iter_lines() if line]
    assert lines[-1]["done"] is True
    assert lines[-1]["done_reason"] in {"stop", "length"}
    assert "".join(line["message"]["content"] for line in lines).strip()


def test_structured_output_with_a_pydantic_schema_and_json_mode(client: ollama.Client) -> None:
    """Ollama's documented way: `format=Model.model_json_schema()`, streamed, then validated by the same model; and
    `format="json"` gives a JSON object."""
    import json

    from pydantic import BaseModel

    class Pet(BaseModel):
        name: str
        kind: str
        age: int
        vaccinated: bool

    stream = client.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a pet as JSON."}],
        format=Pet.model_json_schema(),
        options={"temperature": 0.8, "seed": 5, "num_predict": 96},
        stream=True,
    )
    parts = [chunk.message.content or "" for chunk in stream]
    pet = Pet.model_validate_json("".join(parts))
    assert pet.name and pet.kind
    reply = client.generate(model=MODEL, prompt="Give a person's name and age as JSON.", format="json",
                            options={"temperature": 0, "num_predict": 64})
    assert isinstance(json.loads(text(reply.response)), dict)
