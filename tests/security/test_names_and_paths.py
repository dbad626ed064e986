"""Names, digests and paths from clients never reach the file system as anything but validated store paths.

Bad digests and bad model names on every endpoint that takes one; `..`, absolute paths, symlinks, FIFOs,
devices and unreadable files named in /api/create (the server never opens a path a client names: one fixed
answer whatever is there, so the reply is no oracle of what exists); symlinks planted inside the store. Each
case asserts the status, the error shape, that no file appeared outside the store (nor inside it, unless the
case creates a model) and that the server still serves. This suite is never deleted or loosened.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from offload.api.errors import STORE_MESSAGE
from offload.errors import InvalidDigest, InvalidName
from offload.models.names import validate_digest
from tests.security.apps import (
    MODEL,
    Served,
    assert_ollama_error,
    assert_openai_error,
    assert_still_serving,
    digest_of,
    served,
    tree,
)

HEX = "ab" * 32

BAD_DIGESTS = [
    "",
    "sha256:",
    "sha256:" + HEX[:-1],
    "sha256:" + HEX + "0",
    "sha256:" + HEX.upper(),
    "sha256:" + "g" * 64,
    "sha512:" + HEX,
    "SHA256:" + HEX,
    "sha256:" + HEX + "\x00",
    "sha256:" + HEX[:32] + "\x00" + HEX[33:],
    "sha256:..",
    "sha256-.." + HEX[4:],
    "..",
    "sha256:" + HEX + " ",
    " sha256:" + HEX,
    "sha256:" + "a" * 10_000,
    HEX,
]


@pytest.mark.parametrize("digest", BAD_DIGESTS, ids=lambda d: repr(d)[:30])
def test_bad_digests_are_refused_by_the_validator(digest: str) -> None:
    with pytest.raises(InvalidDigest):
        validate_digest(digest)


# Path segments a URL can carry: no "/" (another route), no NUL; ".." percent-encoded, or the client would
# resolve it away before sending (the server decodes it back to "..").
URL_DIGESTS = [d.replace("..", "%2E%2E") for d in BAD_DIGESTS if d and "\x00" not in d]


@pytest.mark.parametrize("digest", URL_DIGESTS, ids=lambda d: repr(d)[:30])
def test_bad_digests_on_the_blob_endpoints(tmp_path: Path, digest: str) -> None:
    with served(tmp_path) as s:
        before = tree(s.root)
        head = s.client.head(f"/api/blobs/{digest}")
        assert head.status_code == 400
        assert head.content == b""
        text = assert_ollama_error(s.client.post(f"/api/blobs/{digest}", content=b"GGUF data"), 400)
        assert "digest" in text
        assert tree(s.root) == before
        assert_still_serving(s.client)


@pytest.mark.parametrize("digest", BAD_DIGESTS, ids=lambda d: repr(d)[:30])
def test_bad_digests_in_create(tmp_path: Path, digest: str) -> None:
    with served(tmp_path) as s:
        before = tree(s.root)
        for body in (
            {"model": "x", "files": {"model.gguf": digest}},
            {"model": "x", "from": "@" + digest}
            if digest.startswith("sha256")
            else {"model": "x", "files": {"a.gguf": digest}},
        ):
            assert_ollama_error(s.client.post("/api/create", json=body), 400)
        assert tree(s.root) == before
        assert not s.store.exists("x")


def test_an_upload_whose_content_does_not_match_its_digest_leaves_nothing(tmp_path: Path) -> None:
    with served(tmp_path) as s:
        before = tree(s.root)
        claimed = digest_of(b"what the client claims")
        assert_ollama_error(s.client.post(f"/api/blobs/{claimed}", content=b"something else"), 400)
        assert tree(s.root) == before
        assert s.client.head(f"/api/blobs/{claimed}").status_code == 404


def test_blob_digests_in_urls_cannot_climb_out(tmp_path: Path) -> None:
    with served(tmp_path) as s:
        before = tree(s.root)
        for path in ("/api/blobs/%2E%2E%2F%2E%2E%2Fescape", "/api/blobs/..%2Fescape", "/api/blobs/sha256:%2E%2E"):
            response = s.client.post(path, content=b"x")
            assert response.status_code in {400, 404}, (path, response.text)
            assert list(response.json()) == ["error"]
        assert tree(s.root) == before
        assert not (tmp_path / "escape").exists() and not (tmp_path.parent / "escape").exists()


# ---------------------------------------------------------------- model names

BAD_NAMES = [
    "../x",
    "../../etc/passwd",
    "x/../../y",
    "..",
    "/etc/passwd",
    "/abs:tag",
    "a\x00b",
    "tiny\x00",
    "x" * 400,
    "a/b/c/d",
    "x:../y",
    "x:",
    ":tag",
    "-x",
    ".hidden",
    "x\\y",
    "C:\\models\\x",
    "x y",
    "x\ny",
    "\u00e9t\u00e9",
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=lambda n: repr(n)[:30])
def test_bad_model_names_on_every_endpoint(tmp_path: Path, name: str) -> None:
    with served(tmp_path) as s:
        before = tree(s.root)
        ollama: list[tuple[str, str, dict[str, Any]]] = [
            ("POST", "/api/generate", {"model": name, "prompt": "hi"}),
            ("POST", "/api/chat", {"model": name, "messages": [{"role": "user", "content": "hi"}]}),
            ("POST", "/api/embed", {"model": name, "input": "hi"}),
            ("POST", "/api/embeddings", {"model": name, "prompt": "hi"}),
            ("POST", "/api/show", {"model": name}),
            ("DELETE", "/api/delete", {"model": name}),
            ("POST", "/api/copy", {"source": name, "destination": "copy"}),
            ("POST", "/api/copy", {"source": "tiny", "destination": name}),
            ("POST", "/api/create", {"model": name, "from": "tiny"}),
            ("POST", "/api/create", {"model": "new", "from": name}),
            ("POST", "/api/pull", {"model": name}),
        ]
        for method, path, body in ollama:
            response = s.client.request(method, path, json=body)
            assert_ollama_error(response, 400)
        for path, body in (
            ("/v1/chat/completions", {"model": name, "messages": [{"role": "user", "content": "hi"}]}),
            ("/v1/completions", {"model": name, "prompt": "hi"}),
            ("/v1/embeddings", {"model": name, "input": "hi"}),
        ):
            assert_openai_error(s.client.post(path, json=body), 400, InvalidName.code, "model")
        assert s.scheduler.requests == [] and s.scheduler.embeds == [] and s.scheduler.loads == []
        assert tree(s.root) == before
        assert [str(m.name) for m in s.store.list()] == [MODEL]
        assert_still_serving(s.client)


@pytest.mark.parametrize(
    "encoded",
    ["%2E%2E%2Fx", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "a%00b", "x" * 400, "a/b/c/d"],
)
def test_bad_model_names_in_the_url(tmp_path: Path, encoded: str) -> None:
    with served(tmp_path) as s:
        response = s.client.get(f"/v1/models/{encoded}")
        assert_openai_error(response, 400, InvalidName.code, "model")


def test_model_names_are_checked_before_any_file_is_touched(tmp_path: Path) -> None:
    # A manifest planted outside the store where "../../x" would point is never read nor replaced.
    with served(tmp_path) as s:
        outside = s.store.root.parent / "x"
        outside.write_text("not a manifest")
        for name in ("../../x", "../x", str(outside)):
            assert_ollama_error(s.client.post("/api/show", json={"model": name}), 400)
            assert_ollama_error(s.client.post("/api/create", json={"model": name, "from": "tiny"}), 400)
            assert_ollama_error(s.client.request("DELETE", "/api/delete", json={"model": name}), 400)
        assert outside.read_text() == "not a manifest"


# ---------------------------------------------------------------- paths named in /api/create


def _paths(tmp_path: Path) -> dict[str, str]:
    """Every kind of path a client could name, set up for real: the server must not care which it is."""
    secret = tmp_path / "secret.gguf"
    secret.write_bytes(b"GGUF" + b"\x00" * 64)
    unreadable = tmp_path / "unreadable.gguf"
    unreadable.write_bytes(b"GGUF")
    unreadable.chmod(0)
    fifo = tmp_path / "fifo.gguf"
    os.mkfifo(fifo)
    link = tmp_path / "link.gguf"
    link.symlink_to(secret)
    outside_link = tmp_path / "passwd.gguf"
    outside_link.symlink_to("/etc/passwd")
    loop = tmp_path / "loop.gguf"
    loop.symlink_to(loop)
    directory = tmp_path / "dir.gguf"
    directory.mkdir()
    return {
        "missing": str(tmp_path / "missing.gguf"),
        "regular": str(secret),
        "unreadable": str(unreadable),
        "fifo": str(fifo),
        "dev-random": "/dev/random",
        "dev-zero": "/dev/zero",
        "dev-stdin": "/dev/stdin",
        "proc": "/proc/self/environ",
        "symlink": str(link),
        "symlink-outside": str(outside_link),
        "symlink-loop": str(loop),
        "directory": str(directory),
        "dotdot": "../../../../etc/passwd",
        "dotdot-in-path": str(tmp_path / "dir.gguf" / ".." / "secret.gguf"),
        "relative": "./secret.gguf",
        "home": "~/.ssh/id_rsa",
        "windows": "C:\\Windows\\win.ini",
        "gguf-name": "secret.gguf",
    }


def _create_bodies(path: str) -> list[dict[str, Any]]:
    return [
        {"model": "x", "from": path},
        {"model": "x", "modelfile": f"FROM {path}\n"},
        {"model": "x", "modelfile": f'FROM "{path}"\nTEMPLATE "{{{{ messages }}}}"\n'},
    ]


def _refusal(s: Served, body: dict[str, Any]) -> bytes:
    started = time.monotonic()
    response = s.client.post("/api/create", json=body)
    # A FIFO without a writer or /dev/random read by the server would hang or stream; neither happens.
    assert time.monotonic() - started < 5
    assert_ollama_error(response, 400)
    return response.content


def test_every_path_in_create_gets_the_same_answer(tmp_path: Path) -> None:
    with served(tmp_path) as s:
        paths = _paths(tmp_path)
        before = tree(s.root)
        answers: dict[int, set[bytes]] = {}
        for kind, path in paths.items():
            for index, body in enumerate(_create_bodies(path)):
                answers.setdefault(index, set()).add(_refusal(s, body))
            assert tree(s.root) == before, kind
        # One body per request form, whatever the path was: no oracle of existence, type or permissions.
        assert all(len(bodies) == 1 for bodies in answers.values()), answers
        assert not s.store.exists("x")
        assert_still_serving(s.client)


def test_a_missing_file_and_a_fifo_at_the_same_path_answer_byte_for_byte_alike(tmp_path: Path) -> None:
    with served(tmp_path) as s:
        path = tmp_path / "model.gguf"
        missing = [_refusal(s, body) for body in _create_bodies(str(path))]
        os.mkfifo(path)
        fifo = [_refusal(s, body) for body in _create_bodies(str(path))]
        path.unlink()
        path.symlink_to("/dev/random")
        device = [_refusal(s, body) for body in _create_bodies(str(path))]
        assert missing == fifo == device


def test_file_names_in_files_are_labels_not_paths(tmp_path: Path) -> None:
    # Ollama's create names each uploaded blob with the client's file name; it never becomes a path here.
    with served(tmp_path) as s:
        digest = s.store.get(MODEL).model_digest
        before = tree(s.root)
        for label in ("../../evil.gguf", "/etc/evil.gguf", "a/../../b.gguf", "..\\evil.gguf"):
            response = s.client.post("/api/create", json={"model": "copy", "files": {label: digest}, "stream": False})
            assert response.status_code == 200, response.text
        created = set(tree(s.root)) - set(before)
        assert created and all(p.startswith("home/models/manifests/") for p in created), created
        assert s.store.get("copy").model_digest == digest


# ---------------------------------------------------------------- symlinks planted in the store


def test_a_blob_symlinked_out_of_the_store_is_not_followed(tmp_path: Path) -> None:
    with served(tmp_path) as s:
        target = tmp_path / "outside.gguf"
        target.write_bytes(b"GGUF outside")
        digest = digest_of(b"planted")
        planted = s.store.root / "blobs" / ("sha256-" + digest.removeprefix("sha256:"))
        planted.symlink_to(target)
        # A corrupt store is the server's failure (500), reported without the server's paths.
        assert s.client.head(f"/api/blobs/{digest}").status_code == 500
        response = s.client.post("/api/create", json={"model": "x", "files": {"a.gguf": digest}})
        assert response.json() == {"error": STORE_MESSAGE}
        assert response.status_code == 500
        assert not s.store.exists("x")
        # Uploading to that digest neither writes through the link nor replaces it.
        response = s.client.post(f"/api/blobs/{digest}", content=b"planted")
        assert (response.status_code, response.json()) == (500, {"error": STORE_MESSAGE})
        assert target.read_bytes() == b"GGUF outside"
        assert planted.is_symlink()
        assert_still_serving(s.client)


def test_a_manifest_directory_symlinked_out_of_the_store_is_not_written(tmp_path: Path) -> None:
    with served(tmp_path) as s:
        outside = tmp_path / "elsewhere"
        outside.mkdir()
        library = s.store.root / "manifests" / "registry.ollama.ai" / "library"
        library.mkdir(parents=True, exist_ok=True)
        (library / "evil").symlink_to(outside, target_is_directory=True)
        response = s.client.post("/api/create", json={"model": "evil", "from": "tiny", "stream": False})
        assert (response.status_code, response.json()) == (500, {"error": STORE_MESSAGE})
        assert list(outside.iterdir()) == []
        response = s.client.post("/api/copy", json={"source": "tiny", "destination": "evil"})
        assert (response.status_code, response.json()) == (500, {"error": STORE_MESSAGE})
        assert list(outside.iterdir()) == []
        response = s.client.get("/v1/models/evil")
        assert_openai_error(response, 500, "store_error")
        assert str(tmp_path) not in response.text
        assert_still_serving(s.client)
