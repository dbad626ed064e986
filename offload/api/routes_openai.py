"""OpenAI's endpoints: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from offload.api import ollama, openai
from offload.api.deps import AppState, get_state, parse_body
from offload.api.errors import openai_body
from offload.api.options import resolve_options
from offload.api.streaming import (
    CLIENT_GONE,
    Generation,
    collect,
    encode_stream,
    placement_headers,
    sse,
    streaming_response,
)
from offload.api.wire import OpenAIChat, OpenAICompletion, OpenAIEmbeddings
from offload.errors import BadRequest, OffloadError
from offload.generation import Chunk, EmbedRequest, GenerateRequest
from offload.models.catalog import as_stored, lookup, served_found
from offload.models.store import StoredModel
from offload.models.templates import render_chat, select_template

router = APIRouter()

SSE = "text/event-stream"
DONE = sse("[DONE]")


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    started = time.monotonic()
    state = get_state(request)
    wire = await parse_body(request, OpenAIChat)
    requested = openai.chat_options(wire)
    bias = openai.logit_bias(wire)
    schema = openai.response_schema(wire.response_format)
    stored = await state.resolve(wire.model)
    messages = openai.chat_messages(wire.messages, stored.system)
    opts = resolve_options(stored.parameters, requested, dialect_defaults=openai.DEFAULTS, prefix="")
    opts = openai.with_logit_bias(opts, bias)
    info = await state.gguf(stored)
    template = select_template(info, stored.template)
    prompt = await state.render(
        partial(render_chat, template, messages, bos_token=info.bos_token, eos_token=info.eos_token)
    )
    internal = ollama.generate_request(str(stored.name), prompt, opts, keep_alive=None, json_schema=schema)
    generation = await _start(state, request, stored, internal, started)
    completion_id, created = openai.new_id("chatcmpl"), int(time.time())
    if not wire.stream:
        outcome = await collect(generation, request)
        if outcome is None:
            return Response(status_code=CLIENT_GONE)
        text, final = outcome
        return JSONResponse(
            openai.chat_completion(completion_id, created, wire.model, text, final), headers=generation.headers
        )

    include_usage = bool(wire.stream_options and wire.stream_options.include_usage)

    def event(text: str, finish: str | None) -> dict[str, Any]:
        delta = {"content": text} if text else {}
        return openai.chat_chunk(completion_id, created, wire.model, delta, finish, with_usage=include_usage)

    encode = _sse_encoder(event, "chat.completion.chunk" if include_usage else None, completion_id, created, wire.model)
    head = [
        sse(
            openai.chat_chunk(
                completion_id,
                created,
                wire.model,
                {"role": "assistant", "content": ""},
                with_usage=include_usage,
            )
        )
    ]
    return streaming_response(encode_stream(generation, encode, _encode_error, head=head), SSE, generation.headers)


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    """Raw completion: the prompt goes to the model as it is, no chat template."""
    started = time.monotonic()
    state = get_state(request)
    wire = await parse_body(request, OpenAICompletion)
    requested = openai.completion_options(wire)
    bias = openai.logit_bias(wire)
    prompt = openai.completion_prompt(wire.prompt)
    stored = await state.resolve(wire.model)
    opts = resolve_options(stored.parameters, requested, dialect_defaults=openai.DEFAULTS, prefix="")
    opts = openai.with_logit_bias(opts, bias)
    internal = ollama.generate_request(str(stored.name), prompt, opts, keep_alive=None)
    generation = await _start(state, request, stored, internal, started)
    completion_id, created = openai.new_id("cmpl"), int(time.time())
    echoed = prompt if wire.echo else ""
    if not wire.stream:
        outcome = await collect(generation, request)
        if outcome is None:
            return Response(status_code=CLIENT_GONE)
        text, final = outcome
        return JSONResponse(
            openai.text_completion(completion_id, created, wire.model, echoed + text, final),
            headers=generation.headers,
        )

    include_usage = bool(wire.stream_options and wire.stream_options.include_usage)

    def event(text: str, finish: str | None) -> dict[str, Any]:
        return openai.completion_chunk(completion_id, created, wire.model, text, finish, with_usage=include_usage)

    encode = _sse_encoder(event, "text_completion" if include_usage else None, completion_id, created, wire.model)
    head = (
        [sse(openai.completion_chunk(completion_id, created, wire.model, echoed, with_usage=include_usage))]
        if echoed
        else []
    )
    return streaming_response(encode_stream(generation, encode, _encode_error, head=head), SSE, generation.headers)


def _sse_encoder(
    event: Callable[[str, str | None], dict[str, Any]],
    usage_kind: str | None,
    completion_id: str,
    created: int,
    model: str,
) -> Callable[[Chunk], list[bytes]]:
    """SSE lines for one chunk of either OpenAI stream: the text as an event; at the end the finish event, the
    usage event when asked for (`usage_kind` names its object), and [DONE]."""

    def encode(chunk: Chunk) -> list[bytes]:
        out = [sse(event(chunk.text, None))] if chunk.text else []
        if chunk.done:
            out.append(sse(event("", openai.finish_reason(chunk))))
            if usage_kind is not None:
                out.append(sse(openai.usage_chunk(usage_kind, completion_id, created, model, chunk)))
            out.append(DONE)
        return out

    return encode


async def _start(
    state: AppState, request: Request, stored: StoredModel, internal: GenerateRequest, started: float
) -> Generation:
    generation = await Generation.start(
        state.scheduler.generate(stored, internal),
        model=str(stored.name),
        metrics=state.metrics,
        started=started,
        request=request,
    )
    generation.headers = placement_headers(state.scheduler.running(), str(stored.name))
    return generation


def _encode_error(error: OffloadError) -> bytes:
    return sse(openai_body(error))


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    state = get_state(request)
    wire = await parse_body(request, OpenAIEmbeddings)
    inputs = openai.embedding_inputs(wire.input)
    openai.encode_embedding([], wire.encoding_format)  # reject an unknown format before any work
    if wire.dimensions is not None:
        raise BadRequest(
            'invalid value for "dimensions": truncating embeddings is not supported yet', param="dimensions"
        )
    stored = await state.resolve(wire.model)
    opts = resolve_options(stored.parameters, {}, prefix="")
    result = await state.scheduler.embed(
        stored, EmbedRequest(model=str(stored.name), inputs=inputs, num_ctx=opts.num_ctx, num_gpu=opts.num_gpu)
    )
    state.metrics.observe_embedding(str(stored.name), result.prompt_eval_count)
    return JSONResponse(
        openai.embeddings_response(
            wire.model, result.embeddings, result.prompt_eval_count, wire.encoding_format
        )
    )


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    state = get_state(request)
    models = await anyio.to_thread.run_sync(state.store.list)
    scan = await state.scan()
    if scan is not None:  # then the usable models found on disk, as /api/tags lists them
        models += [as_stored(found) for found in served_found(models, scan.models)]
    return JSONResponse(openai.model_list(models))


@router.get("/v1/models/{model:path}")
async def get_model(model: str, request: Request) -> Response:
    state = get_state(request)
    stored = await anyio.to_thread.run_sync(lookup, state.store, state.discovery, model)
    body: dict[str, Any] = openai.model_object(stored)
    return JSONResponse(body)
