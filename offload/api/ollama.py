"""Pure converters between Ollama's wire format and offload's internal types. No I/O, no HTTP.

Routes (routes_ollama.py, routes_models.py) do the fetching; these functions only reshape data, so they are
tested as tables without a server.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from offload.api.options import ResolvedOptions
from offload.api.schema import schema_text
from offload.api.wire import OllamaMessage
from offload.errors import BadRequest, UnsupportedByModel
from offload.generation import JSON_OBJECT_SCHEMA, Chunk, EmbedResult, GenerateRequest
from offload.models.gguf import GGUFFile, format_parameter_size
from offload.models.store import StoredModel
from offload.models.templates import ChatMessage

LOAD = "load"
UNLOAD = "unload"


def rfc3339_nano(ns: int | None = None) -> str:
    """Now (or `ns`) as RFC 3339 UTC with nanoseconds, like Ollama's created_at: ...T12:00:00.123456789Z."""
    ns = time.time_ns() if ns is None else ns
    seconds, fraction = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


def format_time(moment: datetime) -> str:
    """A timezone-aware datetime as RFC 3339 in UTC (naive datetimes are taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def output_schema(value: Any) -> str | None:
    """Ollama's `format` as the JSON schema text the output must satisfy: None for free text ("" or absent),
    JSON_OBJECT_SCHEMA for "json", the schema itself for an object; anything else is a 400."""
    if value is None or value == "":
        return None
    if value == "json":
        return JSON_OBJECT_SCHEMA
    if isinstance(value, dict):
        return schema_text(value, "format")
    raise BadRequest('invalid value for "format": expected "json" or a JSON schema object', param="format")


def check_no_images(images: Sequence[str] | None, param: str) -> None:
    if images:
        raise UnsupportedByModel(
            f'invalid value for "{param}": images are not supported (offload serves text-only models so far)',
            param=param,
        )


def generate_request(
    model: str,
    prompt: str,
    options: ResolvedOptions,
    *,
    keep_alive: float | None,
    context: Sequence[int] = (),
    return_context: bool = False,
    json_schema: str | None = None,
) -> GenerateRequest:
    return GenerateRequest(
        model=model,
        prompt=prompt,
        sampling=options.sampling,
        num_predict=options.num_predict,
        stop=options.stop,
        context=tuple(context),
        return_context=return_context,
        num_ctx=options.num_ctx,
        num_gpu=options.num_gpu,
        keep_alive=keep_alive,
        json_schema=json_schema,
    )


def chat_messages(messages: Sequence[OllamaMessage], default_system: str | None) -> list[ChatMessage]:
    """Wire messages for the template; the model's SYSTEM goes first unless the request brings its own."""
    converted = [ChatMessage(role=m.role, content=m.content or "") for m in messages]
    for index, message in enumerate(messages):
        check_no_images(message.images, f"messages.{index}.images")
    if default_system and not any(m.role == "system" for m in converted):
        converted.insert(0, ChatMessage(role="system", content=default_system))
    return converted


def _final_fields(chunk: Chunk, total_duration: int) -> dict[str, Any]:
    return {
        "done_reason": chunk.done_reason or "stop",
        "total_duration": total_duration,
        "load_duration": chunk.load_duration,
        "prompt_eval_count": chunk.prompt_eval_count,
        "prompt_eval_duration": chunk.prompt_eval_duration,
        "eval_count": chunk.eval_count,
        "eval_duration": chunk.eval_duration,
    }


def generate_line(
    model: str, created_at: str, chunk: Chunk, *, text: str | None = None, total_duration: int = 0
) -> dict[str, Any]:
    """One /api/generate object: a streamed piece, or (done) the final one with counts and context.
    `text` overrides the chunk's text (the whole response when not streaming)."""
    line: dict[str, Any] = {
        "model": model,
        "created_at": created_at,
        "response": chunk.text if text is None else text,
        "done": chunk.done,
    }
    if chunk.done:
        line.update(_final_fields(chunk, total_duration))
        if chunk.context is not None:
            line["context"] = list(chunk.context)
    return line


def chat_line(
    model: str, created_at: str, chunk: Chunk, *, text: str | None = None, total_duration: int = 0
) -> dict[str, Any]:
    """One /api/chat object; like `generate_line` with the text in an assistant message."""
    line: dict[str, Any] = {
        "model": model,
        "created_at": created_at,
        "message": {"role": "assistant", "content": chunk.text if text is None else text},
        "done": chunk.done,
    }
    if chunk.done:
        line.update(_final_fields(chunk, total_duration))
    return line


def load_line(
    model: str, created_at: str, reason: str, *, chat: bool, load_duration: int = 0, total_duration: int = 0
) -> dict[str, Any]:
    """The answer to a request without prompt/messages: the model was loaded or unloaded (`reason`)."""
    line: dict[str, Any] = {"model": model, "created_at": created_at}
    if chat:
        line["message"] = {"role": "assistant", "content": ""}
    else:
        line["response"] = ""
    line.update({"done": True, "done_reason": reason})
    if reason == LOAD:
        line.update({"total_duration": total_duration, "load_duration": load_duration})
    return line


def normalized(vector: Sequence[float]) -> list[float]:
    """L2-normalized copy (what /api/embed and OpenAI return); an all-zero vector stays as it is."""
    norm = math.sqrt(math.fsum(x * x for x in vector))
    if norm == 0.0:
        return list(vector)
    return [x / norm for x in vector]


def embed_response(model: str, result: EmbedResult, total_duration: int) -> dict[str, Any]:
    return {
        "model": model,
        "embeddings": [normalized(vector) for vector in result.embeddings],
        "total_duration": total_duration,
        "load_duration": result.load_duration,
        "prompt_eval_count": result.prompt_eval_count,
    }


def embed_inputs(value: str | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    return tuple(value)


class ModelFacts(Protocol):
    """What "details" shows of a GGUF: a GGUFFile has it, and so does a found model's summary."""

    @property
    def architecture(self) -> str: ...
    @property
    def parameter_count(self) -> int: ...
    @property
    def file_type(self) -> str: ...


def model_details(info: ModelFacts | None) -> dict[str, Any]:
    """Ollama's "details" object; an unreadable GGUF gives empty strings rather than failing a listing."""
    if info is None:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": "",
            "families": None,
            "parameter_size": "",
            "quantization_level": "",
        }
    family = info.architecture
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": format_parameter_size(info.parameter_count),
        "quantization_level": info.file_type,
    }


def bare_digest(digest: str) -> str:
    """ "sha256:<hex>" -> "<hex>", as /api/tags shows digests."""
    return digest.split(":", 1)[1] if ":" in digest else digest


def tag_entry(model: StoredModel, details: Mapping[str, Any]) -> dict[str, Any]:
    name = str(model.name)
    return {
        "name": name,
        "model": name,
        "modified_at": format_time(model.modified_at),
        "size": model.size,
        "digest": bare_digest(model.digest),
        "details": dict(details),
    }


def ps_entry(
    name: str,
    *,
    digest: str,
    size: int,
    size_vram: int,
    expires_at: datetime,
    context_length: int,
    placement: Mapping[str, Any],
    details: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "size": size,
        "digest": bare_digest(digest),
        "details": dict(details),
        "expires_at": format_time(expires_at),
        "size_vram": size_vram,
        "context_length": context_length,
        "offload": dict(placement),
    }


def _parameter_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parameter_lines(parameters: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, value text) pairs, one per value: a list (stop) gives one pair per item, in order."""
    pairs: list[tuple[str, str]] = []
    for key in sorted(parameters):
        value = parameters[key]
        for item in value if isinstance(value, list | tuple) else [value]:
            pairs.append((key, _parameter_value(item)))
    return pairs


def parameters_text(parameters: Mapping[str, Any]) -> str:
    return "\n".join(f"{key:<30} {value}" for key, value in parameter_lines(parameters))


def modelfile_text(model: StoredModel, template: str) -> str:
    """A Modelfile that recreates `model` (FROM and ADAPTER name the blobs on this machine, as Ollama's do)."""
    lines = [
        '# Modelfile generated by "offload show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {model.name}",
        "",
        f"FROM {model.model_path}",
        *(f"ADAPTER {adapter.path}" for adapter in model.adapters),
        f'TEMPLATE """{template}"""',
    ]
    if model.system:
        lines.append(f'SYSTEM """{model.system}"""')
    lines.extend(f"PARAMETER {key} {value}" for key, value in parameter_lines(model.parameters))
    if model.license:
        lines.append(f'LICENSE """{model.license}"""')
    return "\n".join(lines) + "\n"


def _json_safe(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def show_response(
    model: StoredModel, info: GGUFFile, model_info: Mapping[str, Any], template: str, *, verbose: bool
) -> dict[str, Any]:
    """/api/show. `model_info` is gguf.describe(info) (long arrays emptied) unless `verbose`. Beside Ollama's fields,
    a model with LoRA adapters has `adapters` (digest and size of each, in the order they apply); Ollama shows them
    only as the modelfile's ADAPTER lines."""
    if verbose:
        full = {key: _json_safe(value) for key, value in info.metadata.items()}
        full["general.parameter_count"] = info.parameter_count
        model_info = full
    response: dict[str, Any] = {
        "license": model.license or info.license or "",
        "modelfile": modelfile_text(model, template),
        "parameters": parameters_text(model.parameters),
        "template": template,
        "system": model.system or "",
        "details": model_details(info),
        "model_info": dict(model_info),
        "capabilities": ["completion"],
        "modified_at": format_time(model.modified_at),
    }
    if model.adapters:
        response["adapters"] = [{"digest": adapter.digest, "size": adapter.size} for adapter in model.adapters]
    return response


def status_line(status: str, **extra: Any) -> dict[str, Any]:
    return {"status": status, **extra}
