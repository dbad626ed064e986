"""Who may talk to the server: the API key on every route, the Host allowlist, the Origin allowlist and CORS.

Every route of the app is enumerated from `app.routes`, so a route added later is covered without editing this
file. Each case asserts the status, the exact error shape of the route's dialect and that nothing happened
(the scheduler saw no request, the model is still there). This suite is never deleted or loosened.
"""

from __future__ import annotations

import hmac
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from pydantic import ValidationError

from offload.config import load_settings
from tests.security.apps import (
    MODEL,
    assert_ollama_error,
    assert_openai_error,
    assert_still_serving,
    digest_of,
    served,
)

KEY = "sk-offload-test-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
DUMMY = {"digest": digest_of(b"nothing"), "model": MODEL}


def routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, concrete path) for every route the app serves, path parameters filled with harmless values."""
    found: list[tuple[str, str]] = []
    for route in iter_route_contexts(app.routes):  # routers included in the app are flattened
        # A mount or websocket route would need its own case here.
        assert route.path is not None and route.methods, route
        path = re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: DUMMY.get(m[1], "x"), route.path)
        found.extend((method, path) for method in sorted(route.methods))
    return found


def test_the_route_table_is_enumerated(tmp_path: Path) -> None:
    # Guards the tests below against running over nothing, and names the routes the DESIGN fixes.
    with served(tmp_path) as s:
        paths = {path for _, path in routes(s.app)}
    fixed = {"/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/api/tags", "/api/show", "/api/ps"}
    fixed |= {"/api/pull", "/api/delete", "/api/copy", "/api/create", "/api/version", "/", "/health", "/metrics"}
    fixed |= {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"}
    assert fixed <= paths


def test_every_route_but_root_and_health_needs_the_key(tmp_path: Path) -> None:
    with served(tmp_path, api_key=KEY) as s:
        table = routes(s.app)
        for method, path in [*table, ("GET", "/api/no-such-route"), ("POST", "/v1/no-such-route")]:
            response = s.client.request(method, path)
            if path in {"/", "/health"}:
                assert response.status_code == 200, (method, path)
                continue
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            if method == "HEAD":
                assert response.content == b""
            elif path.startswith("/v1/"):
                assert_openai_error(response, 401, "invalid_api_key")
            else:
                assert_ollama_error(response, 401)
        assert s.scheduler.requests == [] and s.scheduler.loads == [] and s.scheduler.unloads == []
        # With the key, no route answers 401.
        for method, path in table:
            response = s.client.request(method, path, headers=AUTH)
            assert response.status_code != 401, (method, path, response.text)
        assert_still_serving(s.client, AUTH)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        KEY,
        f"Bearer {KEY[:-1]}",
        f"Bearer {KEY}x",
        f"Bearer {KEY.upper()}",
        f"Basic {KEY}",
        f"Token {KEY}",
        f"Bearer{KEY}",
        f"Bearer {KEY} {KEY}",
        "Bearer \u00e9" + KEY[1:],  # latin-1 in a header
    ],
)
def test_wrong_keys_are_401_in_each_dialect(tmp_path: Path, header: str | None) -> None:
    headers: dict[bytes, bytes] = {} if header is None else {b"Authorization": header.encode("latin-1")}
    with served(tmp_path, api_key=KEY) as s:
        ollama = s.client.post("/api/generate", json={"model": "tiny", "prompt": "hi"}, headers=headers)
        text = assert_ollama_error(ollama, 401)
        assert KEY not in text
        openai = s.client.post(
            "/v1/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]},
            headers=headers,
        )
        assert KEY not in assert_openai_error(openai, 401, "invalid_api_key")["message"]
        assert s.scheduler.requests == []


@pytest.mark.parametrize("header", [f"Bearer {KEY}", f"bearer {KEY}", f"BEARER {KEY}", f"Bearer   {KEY}  "])
def test_the_key_is_accepted_as_rfc_6750_allows(tmp_path: Path, header: str) -> None:
    with served(tmp_path, api_key=KEY) as s:
        response = s.client.post(
            "/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False}, headers={"Authorization": header}
        )
        assert response.status_code == 200
        assert response.json()["response"] == "Hello world!"


def test_the_key_is_compared_in_constant_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    with served(tmp_path, api_key=KEY) as s:
        assert s.client.get("/api/tags", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert s.client.get("/api/tags", headers=AUTH).status_code == 200
    assert calls == [(b"nope", KEY.encode()), (KEY.encode(), KEY.encode())]


def test_the_key_from_a_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(f"{KEY}\nsecond line ignored\n")
    with served(tmp_path, api_key_file=str(key_file)) as s:
        assert_ollama_error(s.client.get("/api/tags"), 401)
        assert s.client.get("/api/tags", headers=AUTH).status_code == 200


@pytest.mark.parametrize(
    ("content", "setting"),
    [
        (None, "api_key_file"),  # missing file
        (b"", "api_key_file"),
        (b"\n\n", "api_key_file"),
        ("cl\u00e9".encode(), "api_key_file"),
        (b"two words\n", "api_key_file"),
        (b"x" * 5000, "api_key_file"),
        ("cl\u00e9", "api_key"),
        ("two words", "api_key"),
        ("line\nbreak", "api_key"),
    ],
)
def test_an_unusable_key_stops_the_server_from_starting(tmp_path: Path, content: Any, setting: str) -> None:
    # A key the operator asked for and that cannot be used must never mean "no key": the settings refuse.
    if setting == "api_key_file":
        path = tmp_path / "key"
        if content is not None:
            path.write_bytes(content)
        value: Any = str(path)
    else:
        value = content
    with pytest.raises(ValidationError) as caught:
        load_settings(home=tmp_path / "home", **{setting: value})
    assert [error["loc"] for error in caught.value.errors()] in ([(setting,)], [()])
    if setting == "api_key":
        assert str(content) not in str(caught.value.errors()[0]["msg"])


def test_an_empty_key_variable_means_no_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFLOAD_API_KEY", "  ")
    with served(tmp_path) as s:
        assert s.client.get("/api/tags").status_code == 200


# ---------------------------------------------------------------- Host (DNS rebinding)


ALLOWED_HOSTS = [
    "localhost",
    "localhost:11434",
    "LOCALHOST:11434",
    "localhost.",
    "127.0.0.1",
    "127.0.0.1:11434",
    "127.5.6.7:80",
    "[::1]:11434",
    "[::1]",
    "app.localhost:11434",
    "0.0.0.0:11434",
]
REFUSED_HOSTS = [
    "evil.example",
    "evil.example:11434",
    "127.0.0.1.nip.io:11434",
    "localhost.evil.example",
    "localhost.com",
    "192.168.1.10:11434",
    "10.0.0.1",
    "[::ffff:8.8.8.8]:11434",
    "",
    "evil.example:11434@127.0.0.1",
]


@pytest.mark.parametrize("host", ALLOWED_HOSTS)
def test_loopback_host_names_are_served(tmp_path: Path, host: str) -> None:
    with served(tmp_path) as s:
        response = s.client.get("/api/version", headers={"host": host})
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("host", REFUSED_HOSTS)
def test_other_host_names_are_403_while_bound_to_loopback(tmp_path: Path, host: str) -> None:
    with served(tmp_path, api_key=KEY) as s:
        # Refused before the key is even looked at, in each dialect, on every kind of route.
        assert_ollama_error(s.client.get("/", headers={"host": host}), 403)
        assert_ollama_error(s.client.get("/health", headers={"host": host}), 403)
        deleted = s.client.request("DELETE", "/api/delete", json={"model": "tiny"}, headers={"host": host, **AUTH})
        assert_ollama_error(deleted, 403)
        assert_openai_error(s.client.get("/v1/models", headers={"host": host, **AUTH}), 403, "host_not_allowed")
        assert s.store.exists(MODEL)
        assert s.scheduler.unloads == []
        assert_still_serving(s.client, AUTH)


def test_extra_host_names_can_be_allowed(tmp_path: Path) -> None:
    with served(tmp_path, allowed_hosts="offload.lan, *.corp.example") as s:
        for host in ("offload.lan:11434", "gpu1.corp.example"):
            assert s.client.get("/api/version", headers={"host": host}).status_code == 200, host
        for host in ("evil.lan", "corp.example.evil"):
            assert_ollama_error(s.client.get("/api/version", headers={"host": host}), 403)


@pytest.mark.parametrize("bind", ["0.0.0.0:11434", "192.168.1.5:11434", "[::]:11434"])
def test_no_host_check_when_bound_beyond_loopback(tmp_path: Path, bind: str) -> None:
    # The operator exposed the server on purpose; the API key is the control there.
    with served(tmp_path, host=bind, api_key=KEY) as s:
        assert s.client.get("/api/version", headers={"host": "offload.example.com", **AUTH}).status_code == 200
        assert_ollama_error(s.client.get("/api/version", headers={"host": "offload.example.com"}), 401)


# ---------------------------------------------------------------- Origin and CORS


LOCAL_ORIGINS = [
    "http://localhost",
    "http://localhost:3000",
    "https://localhost:8443",
    "http://127.0.0.1:5173",
    "http://[::1]:8080",
    "http://app.localhost:3000",
    "tauri://localhost",
    "app://offload",
    "vscode-webview://0123abcd",
]
FOREIGN_ORIGINS = [
    "https://evil.example",
    "http://evil.example:11434",
    "null",
    "file://",
    "http://localhost.evil.example",
    "http://127.0.0.1.nip.io",
    "https://127.0.0.1@evil.example",
    "ftp://localhost",
    "chrome-extension://abcdefghijklmnop",
    "http://192.168.1.10:3000",
    "",
]


@pytest.mark.parametrize("origin", LOCAL_ORIGINS)
def test_local_origins_get_cors_headers_without_credentials(tmp_path: Path, origin: str) -> None:
    with served(tmp_path) as s:
        response = s.client.get("/api/tags", headers={"origin": origin})
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == origin
        assert "origin" in response.headers["vary"].lower()
        assert "access-control-allow-credentials" not in response.headers


@pytest.mark.parametrize("origin", FOREIGN_ORIGINS)
def test_foreign_origins_are_403_and_change_nothing(tmp_path: Path, origin: str) -> None:
    with served(tmp_path) as s:
        # A "simple" cross-site request (no preflight) must not run: Ollama ignores Content-Type.
        deleted = s.client.request(
            "DELETE",
            "/api/delete",
            content=b'{"model": "tiny"}',
            headers={"origin": origin, "content-type": "text/plain"},
        )
        assert_ollama_error(deleted, 403)
        assert "access-control-allow-origin" not in deleted.headers
        generated = s.client.post("/v1/completions", json={"model": "tiny", "prompt": "hi"}, headers={"origin": origin})
        assert_openai_error(generated, 403, "origin_not_allowed")
        preflight = s.client.options("/api/chat", headers={"origin": origin, "access-control-request-method": "POST"})
        assert preflight.status_code == 403
        assert "access-control-allow-origin" not in preflight.headers
        assert s.store.exists(MODEL)
        assert s.scheduler.requests == [] and s.scheduler.unloads == []
        assert_still_serving(s.client)


def test_preflight_from_a_local_origin_needs_no_key(tmp_path: Path) -> None:
    with served(tmp_path, api_key=KEY) as s:
        response = s.client.options(
            "/v1/chat/completions",
            headers={
                "origin": "http://localhost:3000",
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type, x-stainless-os",
            },
        )
        assert response.status_code == 204
        assert response.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert response.headers["access-control-allow-headers"] == "authorization, content-type, x-stainless-os"
        assert "POST" in response.headers["access-control-allow-methods"]
        assert "access-control-allow-credentials" not in response.headers
        # The request itself still needs the key, and a 401 carries CORS headers so the page can read it.
        refused = s.client.post("/v1/models", headers={"origin": "http://localhost:3000"})
        assert_openai_error(refused, 401, "invalid_api_key")
        assert refused.headers["access-control-allow-origin"] == "http://localhost:3000"


def test_configured_origins(tmp_path: Path) -> None:
    with served(tmp_path, origins="https://chat.example.com,https://*.corp.example") as s:
        for origin in ("https://chat.example.com", "https://a.corp.example", "http://localhost:3000"):
            response = s.client.get("/api/tags", headers={"origin": origin})
            assert response.headers["access-control-allow-origin"] == origin
        for origin in ("https://chat.example.com.evil", "http://chat.example.com", "https://corp.example.evil"):
            assert_ollama_error(s.client.get("/api/tags", headers={"origin": origin}), 403)


def test_a_wildcard_origin_never_comes_with_credentials(tmp_path: Path) -> None:
    with served(tmp_path, origins="*") as s:
        response = s.client.get("/api/tags", headers={"origin": "https://anything.example"})
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in response.headers
        preflight = s.client.options(
            "/api/tags", headers={"origin": "https://anything.example", "access-control-request-method": "GET"}
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in preflight.headers


@pytest.mark.parametrize(
    ("requested", "echoed"),
    [("content-type", "content-type"), ("x-a, x-b", "x-a, x-b"), ("x-a\r\nset-cookie: a=b", None), ("a b", None)],
)
def test_preflight_echoes_only_header_names(tmp_path: Path, requested: str, echoed: str | None) -> None:
    with served(tmp_path) as s:
        response = s.client.options(
            "/api/chat",
            headers={
                "origin": "http://localhost",
                "access-control-request-method": "POST",
                "access-control-request-headers": requested.replace("\r\n", " "),
            },
        )
        assert response.status_code == 204
        assert response.headers.get("access-control-allow-headers") == echoed
        assert "set-cookie" not in response.headers


def test_an_app_without_security_settings_still_has_the_checks(tmp_path: Path) -> None:
    # The defaults: bound to 127.0.0.1, no key, local origins only.
    with served(tmp_path) as s:
        assert s.client.get("/api/tags").status_code == 200
        assert_ollama_error(s.client.get("/api/tags", headers={"host": "evil.example"}), 403)
        assert_ollama_error(s.client.get("/api/tags", headers={"origin": "https://evil.example"}), 403)
    assert load_settings(home=tmp_path / "h").bind == ("127.0.0.1", 11434)


def test_test_client_default_host_is_refused(tmp_path: Path) -> None:
    # Starlette's TestClient says Host: testserver; without OFFLOAD_ALLOWED_HOSTS that is a foreign name.
    with served(tmp_path, base_url="http://testserver") as s:
        assert_ollama_error(s.client.get("/api/tags"), 403)


def test_routes_are_not_mounted_outside_the_checks(tmp_path: Path) -> None:
    # The checks are middleware around the whole app: an ASGI call that bypasses the router still meets them.
    with served(tmp_path, api_key=KEY) as s:
        client = TestClient(s.app, base_url="http://evil.example", raise_server_exceptions=False)
        assert_ollama_error(client.get("/api/tags", headers=AUTH), 403)
