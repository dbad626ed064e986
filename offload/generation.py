"""The one internal request/response vocabulary both API dialects convert to and from.

`api/ollama.py` and `api/openai.py` turn wire requests into these; the scheduler and runner only know these.
They are plain frozen dataclasses so they cross the runner socket as JSON without a schema library.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, TypeVar

DoneReason = Literal["stop", "length", "cancel"]


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    """llama.cpp sampler settings; defaults are Ollama's."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None  # None: a fresh random seed per request
    mirostat: int = 0  # 0 off, 1 Mirostat, 2 Mirostat 2.0: replaces top-k/top-p/min-p/typical when on
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit); OpenAI's logit_bias


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """One completion: `prompt` is already rendered through the chat template (special tokens as text)."""

    model: str
    prompt: str
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    num_predict: int | None = None  # None: until end of generation or the context is full
    stop: tuple[str, ...] = ()
    context: tuple[int, ...] = ()  # tokens placed before the prompt (Ollama's /api/generate `context`)
    return_context: bool = False  # the final chunk carries prompt + output tokens
    num_ctx: int | None = None
    num_gpu: int | None = None  # layers to offload: -1 all, 0 none, None the server's gpu_layers setting
    keep_alive: float | None = None  # seconds; negative keeps loaded forever, None uses the default
    # Structured output: a JSON schema (as JSON text) the output must satisfy, enforced by llama.cpp's grammar
    # sampler; None: free text. Ollama's format "json" and OpenAI's json_object are JSON_OBJECT_SCHEMA.
    json_schema: str | None = None


JSON_OBJECT_SCHEMA = '{"type": "object"}'
MAX_SCHEMA_BYTES = 64 * 1024  # a bigger schema is refused (400) before it reaches a runner


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of streamed output. The last one has `done=True` and the counts; durations are nanoseconds."""

    text: str = ""
    done: bool = False
    done_reason: DoneReason | None = None
    prompt_eval_count: int = 0  # the whole prompt, cached part included (as Ollama reports it)
    prompt_cached_count: int = 0  # of those, tokens taken from the KV cache of an earlier request (prefix reuse)
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    context: tuple[int, ...] | None = None
    load_duration: int = 0  # filled in by the scheduler when this request had to load the model


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    model: str
    inputs: tuple[str, ...]
    truncate: bool = True  # cut inputs longer than the context instead of failing
    num_ctx: int | None = None
    num_gpu: int | None = None
    keep_alive: float | None = None


@dataclass(frozen=True, slots=True)
class EmbedResult:
    embeddings: tuple[tuple[float, ...], ...]
    prompt_eval_count: int
    load_duration: int = 0


T = TypeVar("T")


def to_wire(value: Any) -> dict[str, Any]:
    """A dataclass as a JSON-ready dict (tuples become lists)."""
    return asdict(value)


def from_wire(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a dataclass sent with `to_wire`; unknown keys are dropped, lists become tuples."""
    names = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            continue
        if key == "sampling" and isinstance(value, dict):
            value = from_wire(SamplingOptions, value)
        elif isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[key] = value
    return cls(**kwargs)
