from __future__ import annotations

import pytest

from offload.errors import InvalidDigest, InvalidName
from offload.models.names import ModelName, parse_name, validate_digest

HEX = "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected", "display"),
    [
        ("gemma3", ("registry.ollama.ai", "library", "gemma3", "latest"), "gemma3:latest"),
        ("gemma3:270m", ("registry.ollama.ai", "library", "gemma3", "270m"), "gemma3:270m"),
        ("Gemma3:270M", ("registry.ollama.ai", "library", "gemma3", "270m"), "gemma3:270m"),
        ("me/model:v1.2", ("registry.ollama.ai", "me", "model", "v1.2"), "me/model:v1.2"),
        ("hf.co/org/repo_x-y:q4_k_m", ("hf.co", "org", "repo_x-y", "q4_k_m"), "hf.co/org/repo_x-y:q4_k_m"),
        ("localhost:5000/ns/m:t", ("localhost:5000", "ns", "m", "t"), "localhost:5000/ns/m:t"),
        ("localhost:5000/ns/m", ("localhost:5000", "ns", "m", "latest"), "localhost:5000/ns/m:latest"),
        ("registry.ollama.ai/library/qwen3:8b", ("registry.ollama.ai", "library", "qwen3", "8b"), "qwen3:8b"),
        ("_x:_y", ("registry.ollama.ai", "library", "_x", "_y"), "_x:_y"),
    ],
)
def test_parse_valid(text: str, expected: tuple[str, str, str, str], display: str) -> None:
    name = parse_name(text)
    assert (name.host, name.namespace, name.model, name.tag) == expected
    assert name.display == display
    assert str(name) == display
    assert parse_name(display) == name


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("", "empty"),
        ("a" * 257, "longer than 256"),
        ("model\x00", "NUL"),
        ("a\\b", "backslash"),
        ("/etc/passwd", "start with '/'"),
        ("../x", ".."),
        ("a/../b", ".."),
        ("a..b", ".."),
        (".hidden", "model must"),
        ("-dash", "model must"),
        ("ns/.m", "model must"),
        ("a/b/c/d", "more than"),
        ("model:", "tag must"),
        ("model:.t", "tag must"),
        ("model:-t", "tag must"),
        ("model:" + "t" * 129, "tag must"),
        ("mo del", "model must"),
        ("m/", "model must"),
        ("/", "start with"),
        ("ns//m", "namespace must"),
        ("modèle", "model must"),
        ("h@st/ns/m", "host must"),
        ("host:abc/ns/m", "host must"),
        ("m:t:u", "model must"),
        ("model:t/x", "namespace must"),
    ],
)
def test_parse_invalid(text: str, rule: str) -> None:
    with pytest.raises(InvalidName) as info:
        parse_name(text)
    assert rule in info.value.message
    assert info.value.status == 400


def test_name_is_frozen_and_hashable() -> None:
    name = parse_name("a:b")
    assert {name: 1}[ModelName("registry.ollama.ai", "library", "a", "b")] == 1
    with pytest.raises(AttributeError):
        name.tag = "c"  # type: ignore[misc]


@pytest.mark.parametrize("digest", [f"sha256:{HEX}", f"sha256-{HEX}"])
def test_validate_digest_normalizes(digest: str) -> None:
    assert validate_digest(digest) == f"sha256:{HEX}"


@pytest.mark.parametrize(
    "digest",
    [
        "",
        HEX,
        f"sha256:{HEX.upper()}",
        f"sha256:{HEX[:-1]}",
        f"sha256:{HEX}0",
        f"sha512:{HEX}",
        f"sha256:{HEX}\n",
        f"sha256:../{HEX[3:]}",
        f"sha256:{HEX[:-1]}/",
        "sha256:" + "g" * 64,
    ],
)
def test_validate_digest_rejects(digest: str) -> None:
    with pytest.raises(InvalidDigest):
        validate_digest(digest)
