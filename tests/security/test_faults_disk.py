"""A full disk under the real server: a pull that runs out of space, and an upload that does.

Preferred: the store on a 64 MiB tmpfs, mounted in a mount namespace of the server's own (`unshare --user
--map-root-user --mount`: no root needed where unprivileged user namespaces are allowed), so the disk really is
full (ENOSPC); the test reads the store through /proc/<server>/root. Always, and the only case where namespaces are
not allowed: RLIMIT_FSIZE on the server process (and its runners), so every write past 64 MiB fails (EFBIG, Python
ignores SIGXFSZ) on the real file system. Each says the same to the client: 507 insufficient_storage, no partial
file left, and the store as it was (a small model can still be imported and listed).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.blackbox.server import ServerProcess, running_server
from tests.fixtures.gguf_files import write_tiny_gguf

pytestmark = pytest.mark.blackbox
MODEL = "gemma3:270m"
LIMIT = 64 << 20
TIMEOUT = 120.0
MOUNT = f'mount -t tmpfs -o size={LIMIT} tmpfs "$OFFLOAD_HOME/models" && exec "$@"'


def tmpfs_allowed(scratch: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = ["unshare", "--user", "--map-root-user", "--mount", "mount", "-t", "tmpfs", "tmpfs", str(scratch)]
    return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0


def limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


@pytest.fixture(scope="module", params=["tmpfs", "rlimit-fsize"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp(f"offload-full-{request.param}")
    (home / "models").mkdir()
    wrapper, preexec = None, None
    if request.param == "tmpfs":
        if not tmpfs_allowed(tmp_path_factory.mktemp("probe")):
            pytest.skip("no user namespaces here to mount a tmpfs in: the RLIMIT_FSIZE case stands in for it")
        wrapper = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", MOUNT, "sh"]
    else:
        preexec = limit_file_size
    with running_server(home, wrapper=wrapper, preexec=preexec) as process:
        yield process


def store_dir(server: ServerProcess) -> Path:
    """The store as the server sees it (inside its mount namespace, for the tmpfs case)."""
    assert server.proc is not None
    return Path(f"/proc/{server.proc.pid}/root") / (server.home / "models").relative_to("/")


def files(server: ServerProcess) -> list[str]:
    """Every file in the store but its lock files."""
    found = (p for p in store_dir(server).rglob("*") if p.is_file() and not p.name.endswith(".lock"))
    return sorted(str(p.relative_to(store_dir(server))) for p in found)


def test_a_pull_onto_a_full_disk_fails_clearly_and_leaves_nothing(server: ServerProcess) -> None:
    before = files(server)
    with httpx.stream("POST", server.base_url + "/api/pull", json={"model": MODEL}, timeout=TIMEOUT) as reply:
        assert reply.status_code == 200
        lines = [json.loads(line) for line in reply.iter_lines() if line]
    assert list(lines[-1]) == ["error"], lines[-1]
    assert "no space left in the model store" in lines[-1]["error"]
    assert str(server.home) not in lines[-1]["error"]
    assert files(server) == before  # no partial blob, no temp file, no manifest
    assert httpx.get(server.base_url + "/api/tags", timeout=TIMEOUT).json() == {"models": []}
    unknown = httpx.post(server.base_url + "/api/generate", json={"model": MODEL, "prompt": "hi"}, timeout=TIMEOUT)
    assert unknown.status_code == 507  # the starter is imported on first use: the same clear error
    assert files(server) == before


def test_an_upload_onto_a_full_disk_is_507_and_the_store_still_works(server: ServerProcess, tmp_path: Path) -> None:
    big = os.urandom(LIMIT + (1 << 20))
    digest = "sha256:" + hashlib.sha256(big).hexdigest()
    refused = httpx.post(f"{server.base_url}/api/blobs/{digest}", content=big, timeout=TIMEOUT)
    assert refused.status_code == 507, refused.text
    assert "no space left in the model store" in refused.json()["error"]
    assert not any(name.startswith("blobs/.tmp-") or digest[7:] in name for name in files(server))
    small = write_tiny_gguf(tmp_path / "tiny.gguf").read_bytes()
    small_digest = "sha256:" + hashlib.sha256(small).hexdigest()
    assert httpx.post(f"{server.base_url}/api/blobs/{small_digest}", content=small, timeout=TIMEOUT).status_code == 201
    created = httpx.post(
        server.base_url + "/api/create",
        json={"model": "tiny", "files": {"tiny.gguf": small_digest}, "stream": False},
        timeout=TIMEOUT,
    )
    assert created.json() == {"status": "success"}
    assert [m["name"] for m in httpx.get(server.base_url + "/api/tags", timeout=TIMEOUT).json()["models"]] == [
        "tiny:latest"
    ]
    assert not any(".tmp-" in name for name in files(server))
