"""Request options (Ollama `options`, OpenAI sampling params, Modelfile PARAMETERs) to the internal request.

Layering, lowest first: `SamplingOptions` defaults (Ollama's), dialect defaults (OpenAI documents temperature
and top_p 1.0), the model's Modelfile parameters, the request. Every value is type-checked by
`models.modelfile.coerce_parameter` (shared with Modelfile parsing) and range-checked here; a bad value is a
BadRequest whose `param` names the field.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from offload import durations
from offload.errors import BadRequest
from offload.generation import SamplingOptions
from offload.models.modelfile import PARAMETER_TYPES, coerce_parameter

log = logging.getLogger(__name__)

_SAMPLING_KEYS = frozenset(
    {
        "temperature",
        "top_k",
        "top_p",
        "min_p",
        "typical_p",
        "repeat_penalty",
        "repeat_last_n",
        "presence_penalty",
        "frequency_penalty",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
    }
)
_UNIT_FRACTIONS = (0, 1)
# llama.cpp takes these as int32; beyond it a value could only wrap around in C.
INT32_MAX = 2**31 - 1
# Sampler floats go to llama.cpp as float32. No sampler needs more than these; past them a value is a mistake.
MAX_TEMPERATURE = 100.0
MAX_PENALTY = 100.0
MAX_CONTEXT = 1 << 20  # as the num_ctx setting
# Inclusive bounds per option; None means unbounded on that side. Integer options not listed are int32.
_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "temperature": (0, MAX_TEMPERATURE),
    "top_k": (0, INT32_MAX),
    "top_p": _UNIT_FRACTIONS,
    "min_p": _UNIT_FRACTIONS,
    "typical_p": _UNIT_FRACTIONS,
    "repeat_penalty": (0, MAX_PENALTY),
    "presence_penalty": (-MAX_PENALTY, MAX_PENALTY),
    "frequency_penalty": (-MAX_PENALTY, MAX_PENALTY),
    "repeat_last_n": (-1, INT32_MAX),  # -1: the whole context (Ollama)
    "num_ctx": (1, MAX_CONTEXT),
    "num_gpu": (-1, INT32_MAX),  # -1: every layer that fits (Ollama); 0: CPU only
    "num_predict": (-2, INT32_MAX),  # -1: no limit, -2: until the context is full (both: no limit here)
    "seed": (-(2**63), 2**64 - 1),
    "mirostat": (0, 2),
    "mirostat_eta": (0, MAX_PENALTY),
    "mirostat_tau": (0, MAX_PENALTY),
}
_INT32 = (-(2**31), INT32_MAX)
# A stop list is matched against every token the model produces; a few short strings is what anyone needs.
MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 1024
_SEED_RANDOM = -1


@dataclass(frozen=True, slots=True)
class ResolvedOptions:
    """What the options of one request come to, ready for GenerateRequest/EmbedRequest."""

    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    num_predict: int | None = None
    stop: tuple[str, ...] = ()
    num_ctx: int | None = None
    num_gpu: int | None = None


def resolve_options(
    model_parameters: Mapping[str, Any],
    request_options: Mapping[str, Any] | None,
    *,
    dialect_defaults: Mapping[str, Any] | None = None,
    prefix: str = "options.",
) -> ResolvedOptions:
    """Merge and validate options. `prefix` is put before a bad key in the error's `param`.

    Unknown keys are ignored with a debug log, as Ollama does: clients send engine knobs offload does not
    have (low_vram, f16_kv, ...). Known keys that only matter to other engines are validated, then unused.
    Modelfile parameters are trusted to have been validated when the model was created, but go through the
    same checks (a hand-edited params layer must not crash a runner).
    """
    merged: dict[str, tuple[Any, str]] = {}
    for source, where in (
        (dialect_defaults or {}, ""),
        (model_parameters, "parameters."),
        (request_options or {}, prefix),
    ):
        for key, value in source.items():
            if value is None:
                continue
            merged[key] = (value, where)

    sampling = SamplingOptions()
    num_predict: int | None = None
    stop: tuple[str, ...] = ()
    num_ctx: int | None = None
    num_gpu: int | None = None
    updates: dict[str, Any] = {}
    for key, (raw, where) in merged.items():
        param = where + key
        if key == "stop":
            stop = _stop_sequences(raw, param)
            continue
        if key not in PARAMETER_TYPES:
            log.debug("ignoring unknown option %r", key)
            continue
        value = _checked(key, raw, param)
        if key in _SAMPLING_KEYS:
            updates[key] = value
        elif key == "seed":
            updates["seed"] = None if value <= _SEED_RANDOM else value
        elif key == "num_predict":
            num_predict = None if value < 0 else value
        elif key == "num_ctx":
            num_ctx = value
        elif key == "num_gpu":
            num_gpu = value
    if updates:
        sampling = replace(sampling, **updates)
    return ResolvedOptions(sampling=sampling, num_predict=num_predict, stop=stop, num_ctx=num_ctx, num_gpu=num_gpu)


def _checked(key: str, raw: Any, param: str) -> Any:
    try:
        value = coerce_parameter(key, raw)
    except BadRequest as exc:
        # The message names the field as the client sent it (options.x, parameters.x), not the bare key.
        raise BadRequest(f'invalid value for "{param}": {exc.message}', param=param) from exc
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRequest(f'invalid value for "{param}": must be a finite number', param=param)
    low, high = _BOUNDS.get(key, _INT32 if isinstance(value, int) else (None, None))
    if isinstance(value, int | float) and not isinstance(value, bool):
        if low is not None and value < low:
            raise BadRequest(f'invalid value for "{param}": must be at least {low}', param=param)
        if high is not None and value > high:
            raise BadRequest(f'invalid value for "{param}": must be at most {high}', param=param)
    return value


def _stop_sequences(raw: Any, param: str) -> tuple[str, ...]:
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple) or not all(isinstance(item, str) for item in items):
        raise BadRequest(f'invalid value for "{param}": expected a string or a list of strings', param=param)
    # An empty stop string would end every generation at once; clients send [""] meaning "none".
    kept = tuple(item for item in items if item)
    if len(kept) > MAX_STOP_SEQUENCES:
        raise BadRequest(
            f'invalid value for "{param}": at most {MAX_STOP_SEQUENCES} stop sequences, got {len(kept)}', param=param
        )
    if any(len(item) > MAX_STOP_CHARS for item in kept):
        raise BadRequest(
            f'invalid value for "{param}": a stop sequence may have at most {MAX_STOP_CHARS} characters', param=param
        )
    return kept


def parse_keep_alive(value: Any, *, param: str = "keep_alive") -> float | None:
    """Ollama's keep_alive in seconds: None is the server default, negative values become durations.FOREVER,
    0 unloads after this request. Parsed by the same code as OFFLOAD_KEEP_ALIVE so both agree. Raises
    BadRequest naming `param`; NaN (the string "nan" parses as a float) is refused here as well."""
    seconds = durations.parse_keep_alive(value, param=param)
    if seconds is not None and math.isnan(seconds):
        raise BadRequest(f'invalid value for "{param}": not a number', param=param)
    return seconds
