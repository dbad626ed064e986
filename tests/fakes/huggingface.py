"""A fake Hugging Face Hub on loopback, speaking the routes huggingface_hub calls, for pull tests.

Point huggingface_hub at it with `HF_ENDPOINT=fake.url` (a server subprocess) or `HubConfig(endpoint=fake.url)`:

    GET  /api/models/ORG/REPO[/revision/REV][?blobs=true]    model_info: sha, gated, siblings (with size, blobId,
                                                              lfs {sha256, size, pointerSize} when blobs=true)
    HEAD /ORG/REPO/resolve/REV/PATH                           file metadata: X-Repo-Commit, ETag (the sha256 of an
    GET  /ORG/REPO/resolve/REV/PATH                             LFS file, the git blob id of another), X-Linked-Etag
                                                              and X-Linked-Size, Content-Length; Range requests (206)

With `cdn=True`, LFS files answer 302 to a second server (`http://localhost:PORT`, another host than the hub's
127.0.0.1 as far as any client can tell) that serves `/blobs/SHA256`, as the real hub sends LFS files to its CDN.
Errors carry the X-Error-Code huggingface_hub maps to its exceptions: RepoNotFound (401 without a valid token,
as the real hub hides private repositories; 404 with one), GatedRepo (401), RevisionNotFound and EntryNotFound
(404); a wrong token is a 401 "Invalid credentials in Authorization header".

Faults, each for the next GET of a file's bytes: `drop(path, after=N)` sends the headers of the whole answer, N
bytes and closes the connection (`fail_next=n`: and the n GETs after it, a retry's, answer 500, which ends that
pull, as a connection gone for good would); `fail(n)` answers the next n GETs with 500; `corrupt(repo, path)`
serves bytes other than the ones whose sha256 is listed. Every request to either server is in `received`, headers
included.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import secrets
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

# Files whose names end so are LFS files, as the hub's .gitattributes has it.
LFS_SUFFIXES = (".gguf", ".safetensors", ".bin")
_MODEL_API = re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?")
_RESOLVE = re.compile(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)")
_CDN = re.compile(r"/blobs/(?P<sha>[0-9a-f]{64})")
_RANGE = re.compile(r"bytes=(?P<start>\d+)-(?P<end>\d*)")


@dataclass
class FakeFile:
    path: str
    data: bytes  # what the hub lists (size, sha256)
    served: bytes  # what it sends: `data`, unless corrupted
    listed_sha256: str | None = None  # what model_info lists instead of the real sha256 (a broken hub)

    @property
    def lfs(self) -> bool:
        return self.path.endswith(LFS_SUFFIXES)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def etag(self) -> str:
        if self.lfs:
            return self.sha256
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()  # git's blob id


@dataclass
class FakeRepo:
    repo_id: str
    files: dict[str, FakeFile]
    commit: str = field(default_factory=lambda: secrets.token_hex(20))
    gated: bool = False
    private: bool = False


@dataclass(frozen=True, slots=True)
class Received:
    server: str  # "hub" or "cdn"
    method: str
    path: str  # with the query
    headers: dict[str, str]  # lowercase names
    sent: int  # body bytes sent back


class FakeHub:
    def __init__(self, *, token: str | None = None, cdn: bool = False) -> None:
        self.token = token
        self.repos: dict[str, FakeRepo] = {}
        self.received: list[Received] = []
        self._drops: dict[str, tuple[int, int]] = {}
        self._failures = 0
        self._lock = threading.Lock()
        self._hub = _serve(self, "hub")
        self._cdn = _serve(self, "cdn") if cdn else None
        self.url = f"http://127.0.0.1:{self._hub.server_address[1]}"
        self.cdn_url = f"http://localhost:{self._cdn.server_address[1]}" if self._cdn is not None else None

    # ----- set up -----

    def add_repo(
        self, repo_id: str, files: Mapping[str, bytes], *, gated: bool = False, private: bool = False
    ) -> FakeRepo:
        repo = FakeRepo(repo_id, {p: FakeFile(p, d, d) for p, d in files.items()}, gated=gated, private=private)
        self.repos[repo_id] = repo
        return repo

    def corrupt(self, repo_id: str, path: str) -> None:
        file = self.repos[repo_id].files[path]
        file.served = bytes([file.data[0] ^ 0xFF]) + file.data[1:]

    def drop(self, path: str, *, after: int, fail_next: int = 0) -> None:
        """The next GET of `path` (a repository path, or a CDN blob's sha256) stops after `after` bytes, and the
        `fail_next` GETs after it answer 500."""
        with self._lock:
            self._drops[path] = (after, fail_next)

    def fail(self, count: int = 1) -> None:
        """The next `count` GETs of file bytes answer 500."""
        with self._lock:
            self._failures = count

    def gets(self, path_part: str) -> list[Received]:
        """The GETs of file bytes whose path holds `path_part`."""
        return [r for r in self.received if r.method == "GET" and path_part in r.path and "/api/" not in r.path]

    # ----- lifecycle -----

    def close(self) -> None:
        for server in (self._hub, self._cdn):
            if server is not None:
                server.shutdown()
                server.server_close()

    def __enter__(self) -> FakeHub:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ----- answers (called by the handler) -----

    def answer(self, handler: _Handler, server: str) -> None:
        split = urlsplit(handler.path)
        path, query = unquote(split.path), parse_qs(split.query)
        sent = 0
        try:
            if server == "cdn":
                sent = self._cdn_blob(handler, path)
            elif (found := _MODEL_API.fullmatch(path)) is not None and handler.command == "GET":
                self._model_info(handler, found["repo"], found["rev"], query.get("blobs") == ["true"])
            elif (found := _RESOLVE.fullmatch(path)) is not None:
                sent = self._resolve(handler, found["repo"], found["rev"], found["path"])
            else:
                _reply(handler, 404, {"X-Error-Code": "EntryNotFound"}, b'{"error": "no such route"}')
        finally:
            headers = {k.lower(): v for k, v in handler.headers.items()}
            with self._lock:
                self.received.append(Received(server, handler.command, handler.path, headers, sent))

    def _access(self, handler: _Handler, repo_id: str) -> FakeRepo | None:
        """The repository, or None after answering the error the real hub gives."""
        auth = handler.headers.get("Authorization")
        authorized = self.token is not None and auth == f"Bearer {self.token}"
        if auth is not None and not authorized:
            message = "Invalid credentials in Authorization header"
            _reply(handler, 401, {"X-Error-Message": message}, json.dumps({"error": message}).encode())
            return None
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not authorized):
            status = 404 if authorized else 401
            headers = {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}
            _reply(handler, status, headers, b'{"error": "Repository not found"}')
            return None
        return repo

    def _model_info(self, handler: _Handler, repo_id: str, rev: str | None, blobs: bool) -> None:
        repo = self._access(handler, repo_id)
        if repo is None:
            return
        if rev not in (None, "main", repo.commit):
            _reply(handler, 404, {"X-Error-Code": "RevisionNotFound"}, b'{"error": "Invalid rev id"}')
            return
        siblings: list[dict[str, Any]] = []
        for file in repo.files.values():
            entry: dict[str, Any] = {"rfilename": file.path}
            if blobs:
                entry.update(size=len(file.data), blobId=file.etag)
                if file.lfs:
                    listed = file.listed_sha256 or file.sha256
                    entry["lfs"] = {"sha256": listed, "size": len(file.data), "pointerSize": 134}
            siblings.append(entry)
        body = {
            "_id": repo.commit[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "sha": repo.commit,
            "private": repo.private,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "tags": ["gguf"] if any(p.endswith(".gguf") for p in repo.files) else [],
            "siblings": siblings,
        }
        _reply(handler, 200, {"Content-Type": "application/json"}, json.dumps(body).encode())

    def _resolve(self, handler: _Handler, repo_id: str, rev: str, path: str) -> int:
        repo = self._access(handler, repo_id)
        if repo is None:
            return 0
        if repo.gated and handler.headers.get("Authorization") is None:
            message = f"Access to model {repo_id} is restricted. You must be authenticated to access it."
            _reply(handler, 401, {"X-Error-Code": "GatedRepo", "X-Error-Message": message}, message.encode())
            return 0
        if rev not in ("main", repo.commit):
            _reply(handler, 404, {"X-Error-Code": "RevisionNotFound"}, b"Invalid rev id")
            return 0
        file = repo.files.get(path)
        if file is None:
            _reply(handler, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.commit}, b"Entry not found")
            return 0
        headers = {
            "X-Repo-Commit": repo.commit,
            "ETag": f'"{file.etag}"',
            "Accept-Ranges": "bytes",
        }
        if file.lfs:
            headers.update({"X-Linked-Etag": f'"{file.sha256}"', "X-Linked-Size": str(len(file.data))})
        if file.lfs and self.cdn_url is not None:
            location = f"{self.cdn_url}/blobs/{file.sha256}?signature={secrets.token_hex(8)}"
            _reply(handler, 302, {**headers, "Location": location}, b"")
            return 0
        return self._bytes(handler, path, file.served, headers)

    def _cdn_blob(self, handler: _Handler, path: str) -> int:
        found = _CDN.fullmatch(path)
        files = [f for repo in self.repos.values() for f in repo.files.values()]
        file = next((f for f in files if found is not None and f.sha256 == found["sha"]), None)
        if file is None:
            _reply(handler, 404, {}, b"NoSuchKey")
            return 0
        return self._bytes(handler, file.sha256, file.served, {"ETag": f'"{file.sha256}"'})

    def _bytes(self, handler: _Handler, key: str, data: bytes, headers: dict[str, str]) -> int:
        """Answer HEAD or GET (with an optional Range) for `data`; the faults apply to GETs."""
        start, status = 0, 200
        wanted = _RANGE.fullmatch(handler.headers.get("Range", ""))
        if wanted is not None:
            start = int(wanted["start"])
            end = int(wanted["end"]) + 1 if wanted["end"] else len(data)
            if start >= len(data):
                _reply(handler, 416, {"Content-Range": f"bytes */{len(data)}"}, b"")
                return 0
            headers = {**headers, "Content-Range": f"bytes {start}-{end - 1}/{len(data)}"}
            data, status = data[start:end], 206
        if handler.command == "HEAD":
            _reply(handler, status, headers, b"", length=len(data))
            return 0
        with self._lock:
            cut, then_fail = self._drops.pop(key, (None, 0))
            failing = cut is None and self._failures > 0
            self._failures += then_fail - failing
        if failing:
            _reply(handler, 500, {}, b"Internal Error")
            return 0
        if cut is None:
            _reply(handler, status, headers, data)
            return len(data)
        _reply(handler, status, headers, data[:cut], length=len(data))
        handler.close_connection = True
        with contextlib.suppress(OSError):
            handler.wfile.flush()
            handler.connection.shutdown(socket.SHUT_RDWR)
        return cut


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: FakeHub
    role: str

    def do_GET(self) -> None:
        self.hub.answer(self, self.role)

    def do_HEAD(self) -> None:
        self.hub.answer(self, self.role)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _reply(
    handler: _Handler, status: int, headers: Mapping[str, str], body: bytes, *, length: int | None = None
) -> None:
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body) if length is None else length))
    handler.end_headers()
    if handler.command != "HEAD" and body:
        handler.wfile.write(body)


def _serve(hub: FakeHub, role: str) -> ThreadingHTTPServer:
    handler = type(f"_{role.title()}Handler", (_Handler,), {"hub": hub, "role": role})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"fake-hf-{role}", daemon=True).start()
    return server
