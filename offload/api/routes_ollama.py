"""Ollama's generation endpoints: /api/generate, /api/chat, /api/embed, /api/embeddings."""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from offload.api import ollama
from offload.api.deps import AppState, get_state, parse_body
from offload.api.options import parse_keep_alive, resolve_options
from offload.api.streaming import (
    CLIENT_GONE,
    Generation,
    collect,
    encode_stream,
    ndjson,
    placement_headers,
    streaming_response,
)
from offload.api.wire import OllamaChat, OllamaEmbed, OllamaEmbeddings, OllamaGenerate
from offload.errors import BadRequest, OffloadError
from offload.generation import Chunk, EmbedRequest, GenerateRequest
from offload.models.store import StoredModel
from offload.models.templates import render_chat, render_prompt, select_template

log = logging.getLogger(__name__)
router = APIRouter()

NDJSON = "application/x-ndjson"


@router.post("/api/generate")
async def generate(request: Request) -> Response:
    started = time.monotonic()
    state = get_state(request)
    wire = await parse_body(request, OllamaGenerate)
    schema = ollama.output_schema(wire.format)
    ollama.check_no_images(wire.images, "images")
    keep_alive = parse_keep_alive(wire.keep_alive)
    stored = await state.resolve(wire.model)
    prompt = wire.prompt or ""
    if not prompt:
        return await _load_only(state, stored, wire.model, keep_alive, started, chat=False)
    if wire.raw:
        rendered = prompt
    else:
        info = await state.gguf(stored)
        template = select_template(info, wire.template or stored.template)
        rendered = await state.render(
            partial(
                render_prompt,
                template,
                prompt,
                wire.system or stored.system,
                bos_token=info.bos_token,
                eos_token=info.eos_token,
            )
        )
    opts = resolve_options(stored.parameters, wire.options)
    internal = ollama.generate_request(
        str(stored.name),
        rendered,
        opts,
        keep_alive=keep_alive,
        context=wire.context or (),
        return_context=not wire.raw,
        json_schema=schema,
    )
    return await _respond(
        state, request, stored, internal, wire.model, started, stream=wire.stream is not False, chat=False
    )


@router.post("/api/chat")
async def chat(request: Request) -> Response:
    started = time.monotonic()
    state = get_state(request)
    wire = await parse_body(request, OllamaChat)
    schema = ollama.output_schema(wire.format)
    keep_alive = parse_keep_alive(wire.keep_alive)
    stored = await state.resolve(wire.model)
    if not wire.messages:
        return await _load_only(state, stored, wire.model, keep_alive, started, chat=True)
    messages = ollama.chat_messages(wire.messages, stored.system)
    info = await state.gguf(stored)
    template = select_template(info, stored.template)
    rendered = await state.render(
        partial(render_chat, template, messages, bos_token=info.bos_token, eos_token=info.eos_token)
    )
    opts = resolve_options(stored.parameters, wire.options)
    internal = ollama.generate_request(str(stored.name), rendered, opts, keep_alive=keep_alive, json_schema=schema)
    return await _respond(
        state, request, stored, internal, wire.model, started, stream=wire.stream is not False, chat=True
    )


async def _load_only(
    state: AppState, stored: StoredModel, model: str, keep_alive: float | None, started: float, *, chat: bool
) -> Response:
    """Ollama's "empty prompt": load the model (or unload it when keep_alive is 0) and answer at once."""
    if keep_alive == 0:
        await state.scheduler.unload(str(stored.name))
        return JSONResponse(ollama.load_line(model, ollama.rfc3339_nano(), ollama.UNLOAD, chat=chat))
    load_duration = await state.scheduler.load(stored, keep_alive)
    total = int((time.monotonic() - started) * 1e9)
    return JSONResponse(
        ollama.load_line(
            model,
            ollama.rfc3339_nano(),
            ollama.LOAD,
            chat=chat,
            load_duration=load_duration,
            total_duration=total,
        )
    )


async def _respond(
    state: AppState,
    request: Request,
    stored: StoredModel,
    internal: GenerateRequest,
    model: str,
    started: float,
    *,
    stream: bool,
    chat: bool,
) -> Response:
    line = ollama.chat_line if chat else ollama.generate_line
    generation = await Generation.start(
        state.scheduler.generate(stored, internal),
        model=str(stored.name),
        metrics=state.metrics,
        started=started,
        request=request,
    )
    generation.headers = placement_headers(state.scheduler.running(), str(stored.name))
    if not stream:
        outcome = await collect(generation, request)
        if outcome is None:
            return Response(status_code=CLIENT_GONE)
        text, final = outcome
        return JSONResponse(
            line(model, ollama.rfc3339_nano(), final, text=text, total_duration=generation.elapsed_ns()),
            headers=generation.headers,
        )

    def encode(chunk: Chunk) -> list[bytes]:
        total = generation.elapsed_ns() if chunk.done else 0
        return [ndjson(line(model, ollama.rfc3339_nano(), chunk, total_duration=total))]

    def encode_error(error: OffloadError) -> bytes:
        return ndjson({"error": error.message})

    return streaming_response(encode_stream(generation, encode, encode_error), NDJSON, generation.headers)


@router.post("/api/embed")
async def embed(request: Request) -> Response:
    started = time.monotonic()
    state = get_state(request)
    wire = await parse_body(request, OllamaEmbed)
    if wire.dimensions is not None:
        raise BadRequest(
            'invalid value for "dimensions": truncating embeddings is not supported yet', param="dimensions"
        )
    keep_alive = parse_keep_alive(wire.keep_alive)
    stored = await state.resolve(wire.model)
    opts = resolve_options(stored.parameters, wire.options)
    inputs = ollama.embed_inputs(wire.input)
    if not inputs:
        load_duration = await state.scheduler.load(stored, keep_alive)
        return JSONResponse(
            {
                "model": wire.model,
                "embeddings": [],
                "total_duration": int((time.monotonic() - started) * 1e9),
                "load_duration": load_duration,
                "prompt_eval_count": 0,
            }
        )
    result = await state.scheduler.embed(
        stored,
        EmbedRequest(
            model=str(stored.name),
            inputs=inputs,
            truncate=wire.truncate is not False,
            num_ctx=opts.num_ctx,
            num_gpu=opts.num_gpu,
            keep_alive=keep_alive,
        ),
    )
    state.metrics.observe_embedding(str(stored.name), result.prompt_eval_count)
    body = ollama.embed_response(wire.model, result, int((time.monotonic() - started) * 1e9))
    return JSONResponse(body)


@router.post("/api/embeddings")
async def embeddings(request: Request) -> Response:
    """The legacy endpoint: one prompt, one vector, as the model produced it (not normalized)."""
    state = get_state(request)
    wire = await parse_body(request, OllamaEmbeddings)
    keep_alive = parse_keep_alive(wire.keep_alive)
    stored = await state.resolve(wire.model)
    opts = resolve_options(stored.parameters, wire.options)
    if not wire.prompt:
        await state.scheduler.load(stored, keep_alive)
        return JSONResponse({"embedding": []})
    result = await state.scheduler.embed(
        stored,
        EmbedRequest(
            model=str(stored.name),
            inputs=(wire.prompt,),
            num_ctx=opts.num_ctx,
            num_gpu=opts.num_gpu,
            keep_alive=keep_alive,
        ),
    )
    state.metrics.observe_embedding(str(stored.name), result.prompt_eval_count)
    vector: list[Any] = list(result.embeddings[0]) if result.embeddings else []
    return JSONResponse({"embedding": vector})
