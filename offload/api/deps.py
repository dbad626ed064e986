"""What the API layer needs from the rest of offload, and the state one app instance keeps.

`SchedulerLike` mirrors the lead's `offload.scheduler.Scheduler` so route tests can pass a fake; the API never
imports the scheduler module itself (it pulls in the runner machinery the HTTP layer has no business loading).
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import anyio
import anyio.to_thread
from fastapi import Request
from pydantic import BaseModel, ValidationError

from offload.api.metrics import Metrics
from offload.config import Settings
from offload.errors import BadRequest
from offload.generation import Chunk, EmbedRequest, EmbedResult, GenerateRequest
from offload.models import starter
from offload.models.gguf import GGUFFile, read_gguf
from offload.models.store import Store, StoredModel

log = logging.getLogger(__name__)

# JSON bodies are read whole; long chat histories fit easily, anything bigger is a mistake or abuse.
MAX_JSON_BODY = 32 * 1024 * 1024
# GGUF metadata holds the whole vocabulary (MiBs for 256k-token models): keep only a few files' worth.
GGUF_CACHE_SIZE = 8


class RunningModelLike(Protocol):
    """What /api/ps reads of a loaded model (the scheduler's `RunningModel`)."""

    @property
    def name(self) -> str: ...
    @property
    def model_digest(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def size_vram(self) -> int: ...
    @property
    def expires_at(self) -> datetime: ...
    @property
    def context_length(self) -> int: ...
    @property
    def placement(self) -> dict[str, Any]: ...


class SchedulerLike(Protocol):
    """The scheduler's methods the API calls; `offload.scheduler.Scheduler` satisfies it structurally."""

    def generate(self, model: StoredModel, request: GenerateRequest) -> AsyncIterator[Chunk]:
        """An async generator of chunks, the last with done=True; closing it early cancels the generation."""
        ...

    async def embed(self, model: StoredModel, request: EmbedRequest) -> EmbedResult: ...
    async def tokenize(self, model: StoredModel, text: str) -> list[int]: ...
    async def load(self, model: StoredModel, keep_alive: float | None) -> int: ...
    async def unload(self, name: str) -> bool: ...
    def running(self) -> Sequence[RunningModelLike]: ...
    async def close(self) -> None: ...


@dataclass
class AppState:
    """Everything a route needs; one per app, stored on `app.state.offload`.

    Mutable on purpose: it owns the GGUF metadata cache (keyed by the GGUF blob digest, which never changes
    meaning, so entries never go stale; they are only evicted to bound memory).
    """

    settings: Settings
    store: Store
    scheduler: SchedulerLike
    metrics: Metrics
    _gguf_cache: OrderedDict[str, GGUFFile] = field(default_factory=OrderedDict)

    async def resolve(self, name: str | None) -> StoredModel:
        """The stored model called `name`; the starter model is imported on first use (in a worker thread).

        Raises BadRequest (no name), InvalidName, ModelNotFound, StarterUnavailable.
        """
        if not name:
            raise BadRequest("model is required", param="model")
        return await anyio.to_thread.run_sync(starter.resolve, self.store, name)

    async def gguf(self, model: StoredModel) -> GGUFFile:
        """The GGUF metadata of a stored model, read once per GGUF digest. Raises InvalidGGUF."""
        return await self.gguf_by_digest(model.model_digest, model.model_path)

    async def gguf_by_digest(self, digest: str, path: Path) -> GGUFFile:
        cached = self._gguf_cache.get(digest)
        if cached is not None:
            self._gguf_cache.move_to_end(digest)
            return cached
        info = await anyio.to_thread.run_sync(read_gguf, path)
        self._gguf_cache[digest] = info
        while len(self._gguf_cache) > GGUF_CACHE_SIZE:
            self._gguf_cache.popitem(last=False)
        return info

    def forget(self, digest: str) -> None:
        self._gguf_cache.pop(digest, None)


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.offload
    return state


M = TypeVar("M", bound=BaseModel)


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON does not, and no sampler wants them.
    raise ValueError(f"{name} is not valid JSON")


async def parse_body(request: Request, model: type[M]) -> M:
    """The request body as `model`, whatever the Content-Type says.

    Ollama ignores Content-Type, and its documented usage is `curl -d '{...}'` (form-encoded by curl's
    default), so requiring application/json would break drop-in use. Raises BadRequest naming the field.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_JSON_BODY:
        raise BadRequest(f"request body is larger than {MAX_JSON_BODY} bytes")
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > MAX_JSON_BODY:
            raise BadRequest(f"request body is larger than {MAX_JSON_BODY} bytes")
    if not body.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(bytes(body), parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"invalid JSON body: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from exc


# pydantic puts the union member tried into `loc` ("stop.str", "input.list[str].0"); clients know fields only.
_UNION_TAG = re.compile(r"^(str|int|float|bool|none|[A-Za-z-]+\[.*\])$")


def _is_union_tag(part: object) -> bool:
    return isinstance(part, str) and bool(_UNION_TAG.match(part))


def validation_error(exc: ValidationError) -> BadRequest:
    """The first pydantic error as a BadRequest whose message and `param` name the field."""
    first = exc.errors(include_url=False)[0]
    loc = ".".join(str(part) for part in first.get("loc", ()) if not _is_union_tag(part))
    message = str(first.get("msg", "invalid value"))
    if not loc:
        return BadRequest(f"invalid request body: {message}")
    return BadRequest(f'invalid value for "{loc}": {message}', param=loc)
