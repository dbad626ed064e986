"""Pure converters between OpenAI's wire format and offload's internal types. No I/O, no HTTP."""

from __future__ import annotations

import base64
import secrets
import struct
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from offload.api.ollama import normalized
from offload.api.options import INT32_MAX, ResolvedOptions
from offload.api.schema import schema_text
from offload.api.wire import OpenAIChat, OpenAICompletion, OpenAIMessage, OpenAISampling
from offload.errors import BadRequest, UnsupportedByModel
from offload.generation import JSON_OBJECT_SCHEMA, Chunk
from offload.models.store import StoredModel
from offload.models.templates import ChatMessage

SYSTEM_FINGERPRINT = "fp_offload"
# OpenAI documents these defaults for its API; every other option keeps Ollama's default.
DEFAULTS: dict[str, Any] = {"temperature": 1.0, "top_p": 1.0}
COMPLETION_MAX_TOKENS = 16  # OpenAI's documented default for /v1/completions


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_urlsafe(18).replace('-', 'x').replace('_', 'y')}"


def finish_reason(chunk: Chunk) -> str:
    return "length" if chunk.done_reason == "length" else "stop"


def usage(chunk: Chunk) -> dict[str, Any]:
    """OpenAI's usage object; `cached_tokens`: prompt tokens reused from an earlier request's KV cache."""
    return {
        "prompt_tokens": chunk.prompt_eval_count,
        "completion_tokens": chunk.eval_count,
        "total_tokens": chunk.prompt_eval_count + chunk.eval_count,
        "prompt_tokens_details": {"cached_tokens": chunk.prompt_cached_count},
    }


def _check_common(wire: OpenAISampling) -> None:
    if wire.n is not None and wire.n != 1:
        raise BadRequest('invalid value for "n": only 1 choice per request is supported', param="n")


def options(wire: OpenAISampling, max_tokens: int | None) -> dict[str, Any]:
    """OpenAI sampling parameters in Ollama's option vocabulary (validated later with resolve_options)."""
    _check_common(wire)
    return {
        key: value
        for key, value in {
            "temperature": wire.temperature,
            "top_p": wire.top_p,
            "num_predict": max_tokens,
            "stop": wire.stop,
            "seed": wire.seed,
            "frequency_penalty": wire.frequency_penalty,
            "presence_penalty": wire.presence_penalty,
        }.items()
        if value is not None
    }


MAX_LOGIT_BIAS = 1024  # entries; OpenAI's own limit is 300
_MAX_BIAS = 100.0


def logit_bias(wire: OpenAISampling) -> tuple[tuple[int, float], ...]:
    """OpenAI's logit_bias ({"token id": bias in [-100, 100]}) as (token, bias) pairs; BadRequest naming the entry
    that is not a token id or is out of range. Ids past the model's vocabulary are refused by the runner."""
    if not wire.logit_bias:
        return ()
    if len(wire.logit_bias) > MAX_LOGIT_BIAS:
        raise BadRequest(f"logit_bias has {len(wire.logit_bias)} entries; at most {MAX_LOGIT_BIAS}", param="logit_bias")
    pairs = []
    for key, bias in wire.logit_bias.items():
        if not key.isascii() or not key.isdigit() or int(key) > INT32_MAX:
            raise BadRequest(f"logit_bias key {key!r} is not a token id", param="logit_bias")
        if not -_MAX_BIAS <= bias <= _MAX_BIAS:
            raise BadRequest(f"logit_bias for token {key} is {bias}; it must be in [-100, 100]", param="logit_bias")
        pairs.append((int(key), float(bias)))
    return tuple(sorted(pairs))


def with_logit_bias(options: ResolvedOptions, bias: tuple[tuple[int, float], ...]) -> ResolvedOptions:
    return replace(options, sampling=replace(options.sampling, logit_bias=bias)) if bias else options


def chat_options(wire: OpenAIChat) -> dict[str, Any]:
    if wire.logprobs:
        raise BadRequest(
            'invalid value for "logprobs": log probabilities are not supported yet', param="logprobs"
        )
    limit = wire.max_completion_tokens if wire.max_completion_tokens is not None else wire.max_tokens
    return options(wire, limit)


def response_schema(response_format: dict[str, Any] | None) -> str | None:
    """OpenAI's `response_format` as the JSON schema text the output must satisfy (None: free text)."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return JSON_OBJECT_SCHEMA
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise BadRequest(
                'invalid value for "response_format.json_schema.schema": expected a JSON schema object',
                param="response_format.json_schema.schema",
            )
        return schema_text(schema, "response_format.json_schema.schema")
    raise BadRequest(
        'invalid value for "response_format.type": expected "text", "json_object" or "json_schema"',
        param="response_format.type",
    )


def completion_options(wire: OpenAICompletion) -> dict[str, Any]:
    if wire.best_of is not None and wire.best_of != 1:
        raise BadRequest('invalid value for "best_of": only 1 is supported', param="best_of")
    if wire.logprobs is not None:
        raise BadRequest(
            'invalid value for "logprobs": log probabilities are not supported yet', param="logprobs"
        )
    return options(wire, COMPLETION_MAX_TOKENS if wire.max_tokens is None else wire.max_tokens)


def _content_text(content: str | list[dict[str, Any]] | None, param: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts: list[str] = []
    for index, part in enumerate(content):
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in {"image_url", "input_audio", "file"}:
            raise UnsupportedByModel(
                f'invalid value for "{param}.{index}.type": {kind!r} content is not supported '
                "(offload serves text-only models for now)",
                param=f"{param}.{index}.type",
            )
        else:
            raise BadRequest(
                f'invalid value for "{param}.{index}": expected {{"type": "text", "text": "..."}}',
                param=f"{param}.{index}",
            )
    return "\n".join(texts)


def chat_messages(messages: Sequence[OpenAIMessage], default_system: str | None) -> list[ChatMessage]:
    """Messages for the chat template. "developer" is OpenAI's new name for "system"; the model's SYSTEM is
    put first unless the request has a system message."""
    if not messages:
        raise BadRequest('invalid value for "messages": at least one message is required', param="messages")
    converted = []
    for index, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        converted.append(
            ChatMessage(role=role, content=_content_text(message.content, f"messages.{index}.content"))
        )
    if default_system and not any(m.role == "system" for m in converted):
        converted.insert(0, ChatMessage(role="system", content=default_system))
    return converted


def completion_prompt(prompt: str | list[Any] | None) -> str:
    """/v1/completions takes one string (or a list holding one); token-id prompts are not supported."""
    if prompt is None:
        return ""
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    if len(prompt) > 1 and all(isinstance(p, str) for p in prompt):
        raise BadRequest(
            'invalid value for "prompt": only one prompt per request is supported', param="prompt"
        )
    raise BadRequest(
        'invalid value for "prompt": expected a string (token ids are not supported)', param="prompt"
    )


def embedding_inputs(value: str | list[Any]) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if all(isinstance(item, str) for item in value):
        return tuple(value)
    raise BadRequest(
        'invalid value for "input": expected a string or a list of strings (token ids are not supported)',
        param="input",
    )


def _base(kind: str, completion_id: str, created: int, model: str) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": kind,
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def chat_completion(completion_id: str, created: int, model: str, text: str, final: Chunk) -> dict[str, Any]:
    body = _base("chat.completion", completion_id, created, model)
    body["choices"] = [
        {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish_reason(final),
        }
    ]
    body["usage"] = usage(final)
    return body


def chat_chunk(
    completion_id: str,
    created: int,
    model: str,
    delta: dict[str, Any],
    finish: str | None = None,
    *,
    with_usage: bool = False,
) -> dict[str, Any]:
    body = _base("chat.completion.chunk", completion_id, created, model)
    body["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    if with_usage:
        body["usage"] = None  # OpenAI sends null on every chunk but the last when include_usage is set
    return body


def usage_chunk(kind: str, completion_id: str, created: int, model: str, final: Chunk) -> dict[str, Any]:
    body = _base(kind, completion_id, created, model)
    body["choices"] = []
    body["usage"] = usage(final)
    return body


def text_completion(completion_id: str, created: int, model: str, text: str, final: Chunk) -> dict[str, Any]:
    body = _base("text_completion", completion_id, created, model)
    body["choices"] = [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason(final)}]
    body["usage"] = usage(final)
    return body


def completion_chunk(
    completion_id: str,
    created: int,
    model: str,
    text: str,
    finish: str | None = None,
    *,
    with_usage: bool = False,
) -> dict[str, Any]:
    body = _base("text_completion", completion_id, created, model)
    body["choices"] = [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]
    if with_usage:
        body["usage"] = None
    return body


def encode_embedding(vector: Sequence[float], encoding_format: str | None) -> list[float] | str:
    """float: a JSON list; base64: little-endian float32 bytes (the openai client asks for it by default)."""
    if encoding_format in {None, "float"}:
        return list(vector)
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    raise BadRequest(
        'invalid value for "encoding_format": expected "float" or "base64"', param="encoding_format"
    )


def embeddings_response(
    model: str, vectors: Sequence[Sequence[float]], prompt_tokens: int, encoding_format: str | None
) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "index": index,
                "embedding": encode_embedding(normalized(v), encoding_format),
            }
            for index, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def model_object(model: StoredModel) -> dict[str, Any]:
    namespace = model.name.namespace
    return {
        "id": str(model.name),
        "object": "model",
        "created": int(model.modified_at.timestamp()),
        "owned_by": namespace or "library",
    }


def model_list(models: Sequence[StoredModel]) -> dict[str, Any]:
    return {"object": "list", "data": [model_object(m) for m in models]}
