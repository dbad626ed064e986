"""Malformed GGUF files through the API and the store's import path.

Each case uploads the file as a blob (POST /api/blobs/<digest>, as the ollama client does) and creates a model
from it (POST /api/create): a 400 in Ollama's error shape naming what is wrong, no manifest, no blob, no file
anywhere under the test's directory that was not there before, and the server still serving the model it had.
The store's own import (a file path or a byte stream: the starter import, tools) is held to the same.
This suite is never deleted or loosened.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from offload.errors import InvalidGGUF
from offload.models.store import Store, StoredModel
from tests.security.cases import CASES, Case, seed_model, truncations

NAME = "evil:latest"


def digest_of(content: bytes) -> str:
    return "sha256:" + hashlib.sha256(content).hexdigest()


def tree(root: Path) -> dict[str, int]:
    """Every file and directory under `root` (path -> size; -1 for a directory)."""
    return {str(p.relative_to(root)): (-1 if p.is_dir() else p.stat().st_size) for p in root.rglob("*")}


def assert_still_serving(client: TestClient) -> None:
    assert client.get("/").status_code == 200
    tags = client.get("/api/tags")
    assert tags.status_code == 200
    assert [m["name"] for m in tags.json()["models"]] == ["tiny:latest"]
    show = client.post("/api/show", json={"model": "tiny"})
    assert show.status_code == 200
    assert show.json()["details"]["family"] == "llama"
    generate = client.post("/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False})
    assert generate.status_code == 200
    assert generate.json()["done"] is True


def assert_clean_400(response: Any, match: str) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert list(body) == ["error"], body  # Ollama's shape: {"error": "message"}
    assert isinstance(body["error"], str)
    assert re.search(match, body["error"]), body["error"]


def upload_and_create(client: TestClient, content: bytes, request: dict[str, Any]) -> Any:
    digest = digest_of(content)
    assert client.post(f"/api/blobs/{digest}", content=content).status_code == 201
    body = {key: value.replace("<digest>", digest) if isinstance(value, str) else value
            for key, value in request.items()}
    if "files" in body:
        body["files"] = {"model.gguf": digest}
    return client.post("/api/create", json=body)


FILES = {"model": NAME, "files": {}, "stream": False}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_create_from_a_malformed_blob_is_a_clean_400(case: Case, client: TestClient, tmp_path: Path) -> None:
    content = case.make()
    before = tree(tmp_path)
    response = upload_and_create(client, content, FILES)
    assert_clean_400(response, case.match)
    assert tree(tmp_path) == before  # no manifest, no blob, no temp file, nothing outside the store
    assert client.head(f"/api/blobs/{digest_of(content)}").status_code == 404
    assert_still_serving(client)


REQUEST_FORMS = {
    "files-streamed": {"model": NAME, "files": {}},
    "from-digest": {"model": NAME, "from": "<digest>", "stream": False},
    "modelfile-from-digest": {"name": NAME, "modelfile": "FROM @<digest>\nSYSTEM hi\n"},
}
FORM_CASES = [c for c in CASES if c.id in {"string-length-1tb", "data-past-eof", "nested-array", "dim-negative"}]


@pytest.mark.parametrize("form", REQUEST_FORMS.values(), ids=list(REQUEST_FORMS))
@pytest.mark.parametrize("case", FORM_CASES, ids=[c.id for c in FORM_CASES])
def test_every_create_form_refuses_it(case: Case, form: dict[str, Any], client: TestClient, tmp_path: Path) -> None:
    before = tree(tmp_path)
    assert_clean_400(upload_and_create(client, case.make(), form), case.match)
    assert tree(tmp_path) == before
    assert_still_serving(client)


CUTS = [cut for cut in truncations() if cut[0].startswith(("after GGUF.kv_count", "data[", "tensor_info["))]


@pytest.mark.parametrize(("label", "cut"), CUTS, ids=[label for label, _ in CUTS])
def test_create_from_a_truncated_blob_is_a_clean_400(label: str, cut: int, client: TestClient, tmp_path: Path) -> None:
    before = tree(tmp_path)
    assert_clean_400(upload_and_create(client, seed_model()[:cut], FILES), r"past end of file")
    assert tree(tmp_path) == before
    assert_still_serving(client)


def test_a_valid_blob_still_creates_a_model(client: TestClient, store: Store) -> None:
    # The same path with a good file: the refusals above are about the files, not the route.
    response = upload_and_create(client, seed_model(), FILES)
    assert response.status_code == 200, response.text
    assert store.get(NAME).model_digest == digest_of(seed_model())


def test_a_malformed_blob_that_a_manifest_uses_is_kept(client: TestClient, store: Store, tmp_path: Path) -> None:
    # A failed create never removes a blob a manifest references (one an older, laxer offload accepted, say).
    case = next(c for c in CASES if c.id == "data-past-eof")
    content = case.make()
    digest = digest_of(content)
    library = tmp_path / "models" / "manifests" / "registry.ollama.ai" / "library"
    tiny = library / "tiny" / "latest"
    (library / "old").mkdir()
    (library / "old" / "latest").write_text(tiny.read_text().replace(store.get("tiny").model_digest, digest))
    assert_clean_400(upload_and_create(client, content, FILES), case.match)
    assert store.has_blob(digest)
    assert not store.exists(NAME)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_store_import_leaves_nothing(case: Case, store: Store, stored: StoredModel, tmp_path: Path) -> None:
    content = case.make()
    source = tmp_path / "source" / "model.gguf"
    source.parent.mkdir()
    source.write_bytes(content)
    before = tree(tmp_path)
    for origin in (source, iter([content[: len(content) // 2], content[len(content) // 2 :]])):
        with pytest.raises(InvalidGGUF, match=case.match):
            store.import_gguf(NAME, origin)
        assert tree(tmp_path) == before
    assert not store.exists(NAME)
    assert [m.name for m in store.list()] == [stored.name]
