"""Request bodies of both dialects as pydantic models: the only place offload uses pydantic for HTTP input.

Unknown fields are accepted and ignored (clients add fields faster than servers learn them). Types are the
wire's and strict, as Go's and OpenAI's decoders are: `"stream": "yes"`, `"max_tokens": true` or `"n": "2"` are
400s, not guesses. Meaning (option ranges, durations, which combinations are supported) is checked by the
converters. Lists a client controls the length of and the server loops over carry a bound here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from offload.api.options import INT32_MAX

Duration = StrictInt | StrictFloat | StrictStr | None
# Every message goes through the chat template; real conversations are far shorter.
MAX_MESSAGES = 10_000


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, populate_by_name=True, strict=True)


# ---- Ollama ----


class OllamaGenerate(_Wire):
    model: str = ""
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[StrictInt] | None = None
    stream: bool | None = None
    raw: bool | None = None
    format: Any = None
    images: list[str] | None = None
    options: dict[str, Any] | None = None
    keep_alive: Duration = None


class OllamaMessage(_Wire):
    role: str
    content: str | None = None
    images: list[str] | None = None


class OllamaChat(_Wire):
    model: str = ""
    messages: list[OllamaMessage] | None = Field(None, max_length=MAX_MESSAGES)
    stream: bool | None = None
    format: Any = None
    options: dict[str, Any] | None = None
    keep_alive: Duration = None


class OllamaEmbed(_Wire):
    model: str = ""
    input: str | list[str] | None = None
    truncate: bool | None = None
    dimensions: int | None = None
    options: dict[str, Any] | None = None
    keep_alive: Duration = None


class OllamaEmbeddings(_Wire):
    model: str = ""
    prompt: str | None = None
    options: dict[str, Any] | None = None
    keep_alive: Duration = None


class ModelRef(_Wire):
    """Bodies that name one model: Ollama's current clients send `model`, older ones `name`."""

    model: str | None = None
    name: str | None = None

    @property
    def target(self) -> str:
        return self.model or self.name or ""


class OllamaShow(ModelRef):
    verbose: bool | None = None


class OllamaCopy(_Wire):
    source: str
    destination: str


class OllamaPull(ModelRef):
    stream: bool | None = None
    insecure: bool | None = None


class OllamaCreate(ModelRef):
    from_: str | None = Field(None, alias="from")
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] | None = None
    license: str | list[str] | None = None
    messages: list[dict[str, Any]] | None = None
    quantize: str | None = None
    modelfile: str | None = None
    stream: bool | None = None


# ---- OpenAI ----


class OpenAIMessage(_Wire):
    role: str
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(_Wire):
    include_usage: bool | None = None


class OpenAISampling(_Wire):
    model: str = ""
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    n: int | None = None
    user: str | None = None


class OpenAIChat(OpenAISampling):
    messages: list[OpenAIMessage] = Field(max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


class OpenAICompletion(OpenAISampling):
    prompt: str | list[Any] | None = None
    max_tokens: int | None = Field(None, ge=0, le=INT32_MAX)
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = None


class OpenAIEmbeddings(_Wire):
    model: str = ""
    input: str | list[Any]
    encoding_format: str | None = None
    dimensions: int | None = None
    user: str | None = None
