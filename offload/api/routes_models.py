"""Ollama's model management endpoints: tags, show, ps, copy, delete, blobs, create, pull, push.

The store is synchronous (file I/O, hashing); every call into it runs in a worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from offload.api import ollama
from offload.api.deps import AppState, get_state, parse_body
from offload.api.models_create import CreatePlan, plan_create
from offload.api.pull import NDJSON, pull_response
from offload.api.streaming import ndjson, streaming_response
from offload.api.wire import ModelRef, OllamaCopy, OllamaCreate, OllamaPull, OllamaShow
from offload.errors import BadRequest, OffloadError
from offload.models.catalog import adopt, as_stored, found_of, lookup, served_found, source_label
from offload.models.found import SOURCE_LABELS, SOURCE_STORE
from offload.models.gguf import GGUFFile, describe
from offload.models.names import validate_digest
from offload.models.store import StoredModel
from offload.models.templates import check_template, select_template

log = logging.getLogger(__name__)
router = APIRouter()


async def _details(state: AppState, model: StoredModel) -> dict[str, Any]:
    try:
        return ollama.model_details(await state.gguf(model))
    except OffloadError as exc:
        log.warning("cannot read GGUF metadata of %s: %s", model.name, exc.message)
        return ollama.model_details(None)


@router.get("/api/tags")
async def tags(request: Request) -> Response:
    """The store's models, then the usable models found on disk (each with `offload.source` and `offload.path`).
    Beside Ollama's `models`, `offload.unusable` lists the found models that cannot serve (broken, or shadowed by
    a model of the same name), with the reason, and `offload.scan_stopped` why a search stopped early; `offload` is
    there only when one of them has something to say. Ollama clients never see a model they cannot use."""
    state = get_state(request)
    models = await anyio.to_thread.run_sync(state.store.list)
    entries = [ollama.tag_entry(model, await _details(state, model)) for model in models]
    scan = await state.scan()
    if scan is None:
        return JSONResponse({"models": entries})
    served = served_found(models, scan.models)
    for found in served:
        entry = ollama.tag_entry(as_stored(found), ollama.model_details(found.summary))
        entries.append({**entry, "offload": {"source": found.source, "path": str(found.path)}})
    listed = {id(found) for found in served}
    unusable = []
    for found in (model for model in scan.models if id(model) not in listed):
        winner = SOURCE_LABELS[found.shadowed_by or SOURCE_STORE]
        reason = found.problem or f"shadowed by the model of the same name in {winner}"
        unusable.append({"name": found.label, "source": found.source, "path": str(found.path), "reason": reason})
    if not unusable and scan.stopped is None:
        return JSONResponse({"models": entries})  # Ollama's exact shape when there is nothing more to say
    return JSONResponse({"models": entries, "offload": {"unusable": unusable, "scan_stopped": scan.stopped}})


@router.post("/api/show")
async def show(request: Request) -> Response:
    state = get_state(request)
    wire = await parse_body(request, OllamaShow)
    stored = await state.resolve(wire.target)
    info = await state.gguf(stored)
    template = select_template(info, stored.template)
    return JSONResponse(
        ollama.show_response(stored, info, describe(info), template, verbose=bool(wire.verbose))
    )


@router.get("/api/ps")
async def ps(request: Request) -> Response:
    state = get_state(request)
    entries = []
    for running in state.scheduler.running():
        digest = running.model_digest
        info: GGUFFile | None = None
        try:
            stored = await anyio.to_thread.run_sync(lookup, state.store, state.discovery, running.name)
            digest = stored.digest
            info = await state.gguf(stored)
        except OffloadError as exc:
            # Deleted or replaced while loaded: still listed, with what the scheduler knows.
            log.debug("no stored model for running %s: %s", running.name, exc.message)
        entries.append(
            ollama.ps_entry(
                running.name,
                digest=digest,
                size=running.size,
                size_vram=running.size_vram,
                expires_at=running.expires_at,
                context_length=running.context_length,
                placement=running.placement,
                details=ollama.model_details(info),
            )
        )
    return JSONResponse({"models": entries})


@router.post("/api/copy")
async def copy(request: Request) -> Response:
    state = get_state(request)
    wire = await parse_body(request, OllamaCopy)
    source = await state.resolve(wire.source)
    if found_of(source) is not None:
        # A found model is adopted: its file is copied into the store (checked against its digest where known).
        adopted = await anyio.to_thread.run_sync(adopt, state.store, source, wire.destination)
        log.info("adopted %s from %s as %s", source.name, source_label(source), adopted.name)
        return Response(status_code=200)
    await anyio.to_thread.run_sync(state.store.copy, source.name, wire.destination)
    return Response(status_code=200)


@router.delete("/api/delete")
async def delete(request: Request) -> Response:
    state = get_state(request)
    wire = await parse_body(request, ModelRef)
    if not wire.target:
        raise BadRequest("model is required", param="model")
    stored = await anyio.to_thread.run_sync(lookup, state.store, state.discovery, wire.target)
    if found_of(stored) is not None:
        raise BadRequest(
            f"{stored.name} was found in {source_label(stored)}: offload does not delete other programs' files "
            "(remove it there)",
            param="model",
        )
    # Unload first: a runner must not keep serving (and mapping) a model that is no longer listed.
    await state.scheduler.unload(str(stored.name))
    await anyio.to_thread.run_sync(state.store.delete, stored.name)
    return Response(status_code=200)


@router.head("/api/blobs/{digest}")
async def has_blob(digest: str, request: Request) -> Response:
    state = get_state(request)
    checked = validate_digest(digest)
    exists = await anyio.to_thread.run_sync(state.store.has_blob, checked)
    return Response(status_code=200 if exists else 404)


class _BlockingBody:
    """The request body as a blocking iterator of bytes, for the worker thread that hashes and writes it."""

    def __init__(self, stream: AsyncIterator[bytes]) -> None:
        self._stream = stream

    async def _next(self) -> bytes | None:
        try:
            return await anext(self._stream)
        except StopAsyncIteration:
            return None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        piece = anyio.from_thread.run(self._next)
        if piece is None:
            raise StopIteration
        return piece


@router.post("/api/blobs/{digest}")
async def upload_blob(digest: str, request: Request) -> Response:
    """Stream the body into the blob store, checking the digest as it goes (mismatch: 400, nothing kept)."""
    state = get_state(request)
    checked = validate_digest(digest)
    body = _BlockingBody(request.stream())
    await anyio.to_thread.run_sync(partial(state.store.write_blob, body, expected_digest=checked))
    return Response(status_code=201)


@router.post("/api/create")
async def create(request: Request) -> Response:
    """Create a model from an uploaded GGUF blob or an existing model; statuses are sent once it is done
    (everything is local, so there is nothing slow to report progress on)."""
    state = get_state(request)
    wire = await parse_body(request, OllamaCreate)
    plan: CreatePlan = await plan_create(state, wire)
    if plan.template:
        # Compiled now, so a broken template is a 400 here rather than at every request that uses it.
        await state.render(partial(check_template, plan.template))
    statuses = list(plan.statuses)
    stored = await anyio.to_thread.run_sync(
        partial(
            state.store.create,
            plan.name,
            model_digest=plan.model_digest,
            template=plan.template,
            system=plan.system,
            parameters=plan.parameters,
            license=plan.license,
            adapters=plan.adapters,
        )
    )
    log.info("created %s from %s%s", stored.name, plan.model_digest,
             "".join(f" + adapter {digest}" for digest in plan.adapters))
    statuses += ["writing manifest", "success"]
    if wire.stream is False:
        return JSONResponse({"status": "success"})
    return streaming_response(_lines([ollama.status_line(s) for s in statuses]), NDJSON)


async def _lines(objects: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    for obj in objects:
        yield ndjson(obj)


@router.post("/api/push")
async def push(request: Request) -> Response:
    raise BadRequest("pushing models to a registry is not supported")


@router.post("/api/pull")
async def pull(request: Request) -> Response:
    """The starter model, or a GGUF model from Hugging Face: offload/api/pull.py."""
    return await pull_response(get_state(request), await parse_body(request, OllamaPull))
