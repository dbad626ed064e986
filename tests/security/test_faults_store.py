"""The model store under a running server, end to end: the model's file deleted, truncated or replaced while a
runner streams from it, and two pulls (and two uploads) of the same thing at once.

One server for the module, on a store of its own (these cases destroy and restore its files).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from offload.models.starter import STARTER_SHA256
from tests.blackbox.server import ServerProcess, running_server, starter_home

pytestmark = pytest.mark.blackbox
MODEL = "gemma3:270m"
BLOB = "sha256-" + STARTER_SHA256
TIMEOUT = 120.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(starter_home(tmp_path_factory.mktemp("offload-store-faults-home"))) as process:
        yield process


def blobs_dir(server: ServerProcess) -> Path:
    return server.home / "models" / "blobs"


def leftovers(server: ServerProcess) -> list[str]:
    return sorted(p.name for p in (server.home / "models").rglob(".tmp-*"))


def generate(server: ServerProcess) -> httpx.Response:
    return httpx.post(
        server.base_url + "/api/generate",
        json={"model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 2}},
        timeout=TIMEOUT,
    )


def pull(server: ServerProcess) -> list[dict[str, object]]:
    with httpx.stream("POST", server.base_url + "/api/pull", json={"model": MODEL}, timeout=TIMEOUT) as reply:
        assert reply.status_code == 200
        return [json.loads(line) for line in reply.iter_lines() if line]


def delete(path: Path) -> None:
    path.unlink()


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def replace(path: Path) -> None:
    """A copy with one byte changed renamed over it: still a GGUF that parses, only its sha256 tells."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    copy = path.with_name(".changed")
    copy.write_bytes(bytes(data))
    os.replace(copy, path)


@pytest.mark.parametrize(
    ("change", "refusal"),
    [(delete, "is missing"), (truncate, "no longer matches its sha256"), (replace, "no longer matches its sha256")],
    ids=["deleted", "truncated", "replaced"],
)
def test_model_file_changed_while_loaded(server: ServerProcess, change: Callable[[Path], None], refusal: str) -> None:
    warm = generate(server)
    assert warm.status_code == 200, warm.text
    blob = blobs_dir(server) / BLOB
    body = {"model": MODEL, "prompt": "Tell me a story.", "options": {"num_predict": 48}}
    with httpx.stream("POST", server.base_url + "/api/generate", json=body, timeout=TIMEOUT) as reply:
        lines = []
        for raw in reply.iter_lines():
            lines.append(json.loads(raw))
            if len(lines) == 2:
                change(blob)
    # In flight: finished (the runner maps the file it opened), or failed cleanly if a truncation took its pages.
    assert lines[-1].get("done") is True or list(lines[-1]) == ["error"], lines[-1]
    if change is not truncate:
        assert lines[-1].get("done") is True
    refused = generate(server)
    assert refused.status_code == 500, refused.text
    assert refusal in refused.json()["error"]
    assert "pull or import" in refused.json()["error"]
    assert str(server.home) not in refused.text
    assert not blob.exists()  # a changed file is removed, not trusted later
    assert pull(server)[-1] == {"status": "success"}
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == STARTER_SHA256
    assert generate(server).status_code == 200
    assert server.proc is not None and server.proc.poll() is None


async def pull_async(client: httpx.AsyncClient) -> list[dict[str, object]]:
    async with client.stream("POST", "/api/pull", json={"model": MODEL}) as reply:
        return [json.loads(line) async for line in reply.aiter_lines() if line]


async def upload_async(client: httpx.AsyncClient, data: bytes) -> int:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return (await client.post(f"/api/blobs/{digest}", content=data)).status_code


async def at_once(server: ServerProcess, data: bytes) -> tuple[list[list[dict[str, object]]], list[int]]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=TIMEOUT) as client:
        pulls = asyncio.gather(pull_async(client), pull_async(client))
        uploads = asyncio.gather(upload_async(client, data), upload_async(client, data))
        done = await asyncio.wait_for(asyncio.gather(pulls, uploads), TIMEOUT)
    return list(done[0]), list(done[1])


def test_two_pulls_and_two_uploads_of_the_same_blob_at_once(server: ServerProcess) -> None:
    assert httpx.request("DELETE", server.base_url + "/api/delete", json={"model": MODEL}, timeout=TIMEOUT).is_success
    assert not (blobs_dir(server) / BLOB).exists()
    data = os.urandom(16 << 20)
    pulls, uploads = asyncio.run(at_once(server, data))
    assert [p[-1] for p in pulls] == [{"status": "success"}] * 2, pulls
    assert uploads == [201, 201]
    for name, digest in ((BLOB, STARTER_SHA256), ("sha256-" + hashlib.sha256(data).hexdigest(), None)):
        matching = [p for p in blobs_dir(server).iterdir() if p.name == name]
        assert len(matching) == 1
        assert hashlib.sha256(matching[0].read_bytes()).hexdigest() == (digest or name.removeprefix("sha256-"))
    assert leftovers(server) == []
    tags = httpx.get(server.base_url + "/api/tags", timeout=TIMEOUT).json()["models"]
    assert [m["name"] for m in tags] == [MODEL]
    assert generate(server).status_code == 200
