"""What the API layer needs from the rest of offload, and the state one app instance keeps.

`SchedulerLike` mirrors the lead's `offload.scheduler.Scheduler` so route tests can pass a fake; the API never
imports the scheduler module itself (it pulls in the runner machinery the HTTP layer has no business loading).
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
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
from offload.errors import BadRequest, InvalidGGUF, PayloadTooLarge
from offload.generation import Chunk, EmbedRequest, EmbedResult, GenerateRequest
from offload.models import catalog
from offload.models.discover import Discovery, Scan
from offload.models.gguf import GGUFFile, read_gguf
from offload.models.store import Store, StoredModel

log = logging.getLogger(__name__)

# Renders run in worker threads, at most this many at once: a hostile template holds one for up to
# templates.RENDER_SECONDS, and must not take every thread the store's file work needs.
RENDER_THREADS = 4
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
    async def health(self) -> Mapping[str, str]:
        """What keeps each loaded model from generating, by model name; empty when every runner is well."""
        ...

    async def close(self) -> None: ...


R = TypeVar("R")


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
    discovery: Discovery | None = None  # models found outside the store; None: the store's only
    _gguf_cache: OrderedDict[str, GGUFFile] = field(default_factory=OrderedDict)
    _render_limiter: anyio.CapacityLimiter | None = None

    async def resolve(self, name: str | None) -> StoredModel:
        """The stored model called `name` (the starter model is imported on first use), else the model found on
        disk by that name (catalog.py). Runs in a worker thread.

        Raises BadRequest (no name), InvalidName, ModelNotFound, StarterUnavailable, FoundModelBroken.
        """
        if not name:
            raise BadRequest("model is required", param="model")
        return await anyio.to_thread.run_sync(catalog.resolve, self.store, self.discovery, name)

    async def scan(self) -> Scan | None:
        """The models found on disk (a recent scan is reused); None when discovery is off."""
        if self.discovery is None or not self.discovery.enabled:
            return None
        return await anyio.to_thread.run_sync(self.discovery.scan)

    async def gguf(self, model: StoredModel) -> GGUFFile:
        """The GGUF metadata of a stored model, read once per GGUF digest. Raises CorruptBlob when its file changed
        on disk since it was stored (it was a valid GGUF then), else InvalidGGUF."""
        try:
            return await self.gguf_by_digest(model.model_digest, model.model_path)
        except InvalidGGUF:
            await anyio.to_thread.run_sync(catalog.verify, self.store, self.discovery, model)
            raise

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

    async def render(self, render: Callable[[], R]) -> R:
        """Run a template render (or compile) in a worker thread, never on the event loop: a render may take
        up to templates.RENDER_SECONDS. At most RENDER_THREADS run at once; the rest wait their turn."""
        if self._render_limiter is None:  # created here: a limiter needs the running event loop
            self._render_limiter = anyio.CapacityLimiter(RENDER_THREADS)
        return await anyio.to_thread.run_sync(render, limiter=self._render_limiter)

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
    default), so requiring application/json would break drop-in use. A body over the max_body_bytes setting
    is refused with PayloadTooLarge (413) before it is read whole. Lone surrogates (`"\\ud800"`, half of an
    emoji) become U+FFFD, as Go's JSON decoder (Ollama's) does: no string that cannot be encoded as UTF-8
    travels further. Raises BadRequest naming the field for everything else.
    """
    limit = get_state(request).settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise _too_large(limit)
    if not body.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(bytes(body), parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"invalid JSON body: {exc}") from exc
        except RecursionError as exc:
            raise BadRequest("invalid JSON body: nested too deeply") from exc
        data = without_lone_surrogates(data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from exc


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is larger than {limit} bytes (OFFLOAD_MAX_BODY_BYTES)")


_SURROGATE = re.compile("[\ud800-\udfff]")


def without_lone_surrogates(value: Any) -> Any:
    """`value` (decoded JSON) with every lone surrogate in its strings and keys replaced by U+FFFD. json.loads
    joins escaped pairs into one character, so any surrogate left is a lone one. Iterative: the parser already
    bounded the depth, this must not be the one to recurse."""
    if isinstance(value, str):
        return _fix_text(value)
    if not isinstance(value, dict | list):
        return value
    root: list[Any] = [value]
    todo: list[tuple[Any, Any]] = [(root, 0)]
    while todo:
        parent, slot = todo.pop()
        item = parent[slot]
        if isinstance(item, str):
            parent[slot] = _fix_text(item)
        elif isinstance(item, list):
            todo.extend((item, index) for index in range(len(item)))
        elif isinstance(item, dict):
            if not all(key.isascii() for key in item):
                item = parent[slot] = {_fix_text(key): entry for key, entry in item.items()}
            todo.extend((item, key) for key in item)
    return root[0]


def _fix_text(text: str) -> str:
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


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
