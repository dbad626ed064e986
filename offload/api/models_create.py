"""/api/create: turning either request form into one plan for `Store.create`.

Ollama's current form names the GGUF blob (`files`) or a base model (`from`) plus template/system/parameters;
the legacy form sends a Modelfile (`modelfile`). Both end in a CreatePlan. Paths are never read on the
server's behalf: a FROM (or ADAPTER) that is a path is refused with one fixed message (no oracle of what exists
there); the client uploads the file as a blob first. File names in `files` and `adapters` are labels only, never
paths. LoRA adapters come from `adapters` ({file name: digest}), Modelfile ADAPTER lines naming a digest, and the
base model when FROM names one (its adapters come first); the store checks each against the GGUF.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import anyio.to_thread

from offload.api.deps import AppState
from offload.api.options import resolve_options
from offload.api.wire import OllamaCreate
from offload.errors import BadRequest, BlobNotFound
from offload.models.modelfile import coerce_parameter, parse_modelfile
from offload.models.names import parse_name, validate_digest
from offload.models.store import StoredModel

_DIGEST_PREFIXES = ("sha256:", "sha256-", "@sha256:", "@sha256-")
# Each adapter is a GGUF read at create time and a llama.cpp load at every model load; real models use one.
MAX_ADAPTERS = 16


@dataclass(frozen=True, slots=True)
class CreatePlan:
    name: str
    model_digest: str
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    license: str | None = None
    statuses: tuple[str, ...] = ()
    adapters: tuple[str, ...] = ()  # digests of LoRA adapter blobs, applied in this order


def looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~", ".\\")) or text.lower().endswith(".gguf") or "\\" in text


def validated_parameters(parameters: Mapping[str, Any], prefix: str = "parameters.") -> dict[str, Any]:
    """Each PARAMETER type-checked (`stop` becomes a list) and range-checked as request options are, so a model
    is never stored with a value every request would then refuse. Unknown keys are a 400 here, unlike request
    options: a model should not be created with a setting that silently does nothing."""
    checked: dict[str, Any] = {}
    for key, value in parameters.items():
        try:
            checked[key] = coerce_parameter(key, value)
        except BadRequest as exc:
            raise BadRequest(exc.message, param=prefix + key) from exc
    resolve_options({}, checked, prefix=prefix)
    return checked


def _license_text(value: str | list[str] | None) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    return "\n\n".join(value) or None


async def plan_create(state: AppState, wire: OllamaCreate) -> CreatePlan:
    """Validate a create request and find the GGUF it builds on. Raises BadRequest, InvalidName,
    InvalidDigest, InvalidModelfile, BlobNotFound, ModelNotFound."""
    if not wire.target:
        raise BadRequest("model is required", param="model")
    name = str(parse_name(wire.target))
    if wire.quantize:
        raise BadRequest('invalid value for "quantize": quantizing is not supported', param="quantize")
    _check_count(len(wire.adapters or {}), "adapters")
    adapters = await _adapter_digests(state, wire.adapters or {})
    if wire.messages:
        raise BadRequest(
            'invalid value for "messages": stored messages are not supported yet', param="messages"
        )
    license_text = _license_text(wire.license)
    parameters = validated_parameters(wire.parameters or {})

    if wire.files:
        ggufs = [(file, digest) for file, digest in wire.files.items() if file.lower().endswith(".gguf")]
        if len(ggufs) != 1 or len(wire.files) != 1:
            raise BadRequest(
                'invalid value for "files": exactly one .gguf file is supported (no safetensors, '
                "no split GGUFs)",
                param="files",
            )
        digest = validate_digest(ggufs[0][1])
        await _require_blob(state, digest)
        plan = CreatePlan(
            name,
            digest,
            wire.template,
            wire.system,
            parameters,
            license_text,
            (f"using existing layer {digest}",),
        )
        return _with_adapters(plan, adapters)

    if wire.from_:
        plan = await _from_source(
            state, name, wire.from_, wire.template, wire.system, parameters, license_text, ()
        )
        return _with_adapters(plan, adapters)

    if wire.modelfile:
        modelfile = parse_modelfile(wire.modelfile)
        if modelfile.messages:
            raise BadRequest("MESSAGE is not supported yet", param="modelfile")
        merged = {**validated_parameters(modelfile.parameters, "modelfile.PARAMETER "), **parameters}
        _check_count(len(modelfile.adapters), "modelfile")
        named = [await _modelfile_adapter(state, text) for text in modelfile.adapters]
        plan = await _from_source(
            state,
            name,
            modelfile.from_,
            wire.template or modelfile.template,
            wire.system or modelfile.system,
            merged,
            license_text or modelfile.license,
            ("parsing modelfile",),
        )
        return _with_adapters(plan, (*named, *adapters))
    raise BadRequest('one of "files", "from" or "modelfile" is required', param="from")


async def _require_blob(state: AppState, digest: str, param: str | None = None) -> None:
    if not await anyio.to_thread.run_sync(state.store.has_blob, digest):
        raise BlobNotFound(f"blob {digest} not found: upload it with POST /api/blobs/{digest} first", param=param)


async def _adapter_digests(state: AppState, adapters: Mapping[str, str]) -> tuple[str, ...]:
    """The digests of `adapters` ({file name: digest}, as Ollama's CLI sends them), each blob uploaded already.
    Only GGUF adapters: Ollama would convert a safetensors one, offload does not. A name is only a label (the store
    reads every blob as a GGUF), so only what is plainly another format is refused by its name."""
    digests = []
    for file, digest in adapters.items():
        if file.lower().endswith((".safetensors", ".json", ".bin")):
            raise BadRequest(
                f'invalid value for "adapters": {file!r} is not a GGUF file (safetensors adapters are not '
                "supported: convert one with llama.cpp's convert_lora_to_gguf.py)",
                param="adapters",
            )
        checked = validate_digest(digest)
        await _require_blob(state, checked, "adapters")
        digests.append(checked)
    return tuple(digests)


async def _modelfile_adapter(state: AppState, text: str) -> str:
    """An ADAPTER line of a Modelfile sent to the server: it must name an uploaded blob, never a path."""
    if not text.lower().startswith(_DIGEST_PREFIXES):
        # The same fixed answer as for a FROM path: the server never looks at what a client names.
        raise BadRequest(
            "ADAPTER names a file path: the server never reads paths; upload the file with /api/blobs first and "
            "use ADAPTER @sha256:<digest>, or send it in \"adapters\" (offload create does this for you)",
            param="modelfile",
        )
    digest = validate_digest(text.lstrip("@"))
    await _require_blob(state, digest, "modelfile")
    return digest


def _check_count(count: int, param: str) -> None:
    if count > MAX_ADAPTERS:
        raise BadRequest(f"a model may have at most {MAX_ADAPTERS} LoRA adapters, got {count}", param=param)


def _with_adapters(plan: CreatePlan, adapters: tuple[str, ...]) -> CreatePlan:
    """`plan` with `adapters` after the ones it has (a base model's), each reported as Ollama reports a layer."""
    if not adapters:
        return plan
    _check_count(len(plan.adapters) + len(adapters), "adapters")
    statuses = (*plan.statuses, *(f"using existing layer {digest}" for digest in adapters))
    return replace(plan, adapters=(*plan.adapters, *adapters), statuses=statuses)


async def _from_source(
    state: AppState,
    name: str,
    source: str,
    template: str | None,
    system: str | None,
    parameters: dict[str, Any],
    license_text: str | None,
    statuses: tuple[str, ...],
) -> CreatePlan:
    """FROM a blob digest (new layers only) or an existing model (its layers are the defaults)."""
    if source.lower().startswith(_DIGEST_PREFIXES):
        digest = validate_digest(source.lstrip("@"))
        await _require_blob(state, digest)
        return CreatePlan(
            name,
            digest,
            template,
            system,
            parameters,
            license_text,
            (*statuses, f"using existing layer {digest}"),
        )
    if looks_like_path(source):
        # The same answer for every path, whatever is there: it is never looked at, and the reply must not
        # tell a client whether a file exists, is a FIFO or a device, or is readable.
        raise BadRequest(
            "FROM names a file path: the server never reads paths; upload the file with /api/blobs first and "
            "use FROM @sha256:<digest> (the ollama CLI does this for you)",
            param="from",
        )
    base: StoredModel = await state.resolve(source)
    return CreatePlan(
        name,
        base.model_digest,
        template if template is not None else base.template,
        system if system is not None else base.system,
        {**base.parameters, **parameters},
        license_text if license_text is not None else base.license,
        (*statuses, f"using existing layer {base.model_digest}"),
        tuple(adapter.digest for adapter in base.adapters),
    )
