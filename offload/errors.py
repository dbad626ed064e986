"""Every error offload raises on purpose, and what HTTP status and API error code it maps to.

    OffloadError                      500 internal_error
    ├── BadRequest                    400 invalid_request_error
    │   ├── InvalidName               400 invalid_model_name
    │   ├── InvalidDigest             400 invalid_digest
    │   ├── InvalidModelfile          400 invalid_modelfile
    │   ├── InvalidGGUF               400 invalid_gguf
    │   ├── InvalidAdapter            400 invalid_adapter
    │   ├── TemplateError             400 template_error
    │   ├── ContextLengthExceeded     400 context_length_exceeded
    │   ├── PlanRefused               400 plan_refused
    │   ├── UnsupportedByModel        400 unsupported_by_model
    │   └── NoGGUF                    400 no_gguf
    ├── Unauthorized                  401 invalid_api_key
    ├── Forbidden                     403 forbidden
    │   ├── HostNotAllowed            403 host_not_allowed
    │   ├── OriginNotAllowed          403 origin_not_allowed
    │   └── HubAuthRequired           403 hub_auth_required
    ├── NotFound                      404 not_found
    │   ├── ModelNotFound             404 model_not_found
    │   ├── BlobNotFound              404 blob_not_found
    │   └── HubNotFound               404 hub_not_found
    ├── Conflict                      409 conflict
    ├── PayloadTooLarge               413 request_too_large
    ├── ServerBusy                    503 server_busy
    ├── StoreError                    500 store_error
    │   ├── StorageFull               507 insufficient_storage
    │   └── CorruptBlob               500 corrupt_blob
    ├── StarterUnavailable            500 starter_unavailable
    ├── FoundModelBroken              500 found_model_broken
    ├── HubError                      502 hub_error
    │   ├── HubUnreachable            502 hub_unreachable
    │   └── ChecksumMismatch          502 checksum_mismatch
    └── RunnerError                   500 runner_error
        ├── RunnerStartFailed         500 runner_start_failed
        │   ├── BackendUnusable       500 backend_unusable
        │   └── OutOfMemory           500 out_of_memory
        └── RunnerCrashed             500 runner_crashed

Foreign exceptions are translated where they enter offload (`raise X(...) from exc`); the API layer maps
these classes once to each dialect's error shape. Code never matches on error text.
"""

from __future__ import annotations


class OffloadError(Exception):
    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def headers(self) -> dict[str, str]:
        """HTTP headers the error's response carries beside its body."""
        return {}


class BadRequest(OffloadError):
    status = 400
    code = "invalid_request_error"


class InvalidName(BadRequest):
    code = "invalid_model_name"


class InvalidDigest(BadRequest):
    code = "invalid_digest"


class InvalidModelfile(BadRequest):
    code = "invalid_modelfile"


class InvalidGGUF(BadRequest):
    code = "invalid_gguf"


class InvalidAdapter(BadRequest):
    """A LoRA adapter that llama.cpp would refuse for its base model: not a LoRA GGUF, another architecture, or
    tensors the base lacks or whose shapes differ. Checked when the model is created, not when a runner loads it."""

    code = "invalid_adapter"


class TemplateError(BadRequest):
    code = "template_error"


class ContextLengthExceeded(BadRequest):
    code = "context_length_exceeded"


class PlanRefused(BadRequest):
    """A forced num_gpu / num_ctx (or the model itself) does not fit the devices; the message has the numbers."""

    code = "plan_refused"


class UnsupportedByModel(BadRequest):
    code = "unsupported_by_model"


class NoGGUF(BadRequest):
    """A model hub repository holds nothing llama.cpp can load; the message says where to look instead."""

    code = "no_gguf"


class Unauthorized(OffloadError):
    """An API key is configured and the request did not carry it as `Authorization: Bearer <key>`."""

    status = 401
    code = "invalid_api_key"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(OffloadError):
    status = 403
    code = "forbidden"


class HostNotAllowed(Forbidden):
    """A loopback-bound server got a Host header naming another machine (DNS rebinding)."""

    code = "host_not_allowed"


class OriginNotAllowed(Forbidden):
    """A browser page from an origin neither local nor in OFFLOAD_ORIGINS."""

    code = "origin_not_allowed"


class HubAuthRequired(Forbidden):
    """The model hub refused us a repository (gated or private): the message says to set HF_TOKEN."""

    code = "hub_auth_required"


class NotFound(OffloadError):
    status = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f'model "{name}" not found, try pulling it first', param="model")
        self.name = name


class BlobNotFound(NotFound):
    code = "blob_not_found"


class HubNotFound(NotFound):
    """The model hub has no such repository, revision, file or quantization."""

    code = "hub_not_found"


class Conflict(OffloadError):
    status = 409
    code = "conflict"


class PayloadTooLarge(OffloadError):
    status = 413
    code = "request_too_large"


class ServerBusy(OffloadError):
    """Too many requests wait for one model (OFFLOAD_MAX_QUEUE): answered 503 with `Retry-After: retry_after`."""

    status = 503
    code = "server_busy"
    retry_after: int = 1  # seconds; also what an instance rebuilt by `from_code` says

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class StoreError(OffloadError):
    """The model store failed. Its message may name the server's files, so clients get a generic one instead,
    unless `message_is_public` (a subclass whose messages are written to name no path)."""

    code = "store_error"
    message_is_public = False


class StorageFull(StoreError):
    """No space (or no quota, or a file size limit) for what the store was writing: partial files are removed."""

    status = 507
    code = "insufficient_storage"
    message_is_public = True


class CorruptBlob(StoreError):
    """A model's file is missing, or no longer matches the sha256 it is stored under (changed on disk): it has to be
    pulled or imported again."""

    code = "corrupt_blob"
    message_is_public = True


class StarterUnavailable(OffloadError):
    code = "starter_unavailable"


class FoundModelBroken(OffloadError):
    """A model found outside the store (an Ollama store, the Hugging Face cache, a model path) whose file is
    missing or not a valid GGUF; the message says why and names no folder. offload never changes such files."""

    code = "found_model_broken"


class HubError(OffloadError):
    """The model hub failed or answered something offload cannot use (a 5xx, a response without its metadata)."""

    status = 502
    code = "hub_error"


class HubUnreachable(HubError):
    code = "hub_unreachable"


class ChecksumMismatch(HubError):
    """A downloaded file did not hash to the sha256 the hub lists for it; the file was deleted."""

    code = "checksum_mismatch"


class RunnerError(OffloadError):
    code = "runner_error"


class RunnerStartFailed(RunnerError):
    code = "runner_start_failed"


class BackendUnusable(RunnerStartFailed):
    """The runner's llama.cpp build cannot run the chosen backend (it exited 78): the next backend is tried."""

    code = "backend_unusable"


class OutOfMemory(RunnerStartFailed):
    """llama.cpp could not allocate a buffer (weights, KV cache or compute) while loading: the backend works, the
    plan was too big for the memory free on `device`, so a smaller plan on the same backend may fit.

    `device` is llama.cpp's device name ("CUDA0", "CPU") and `requested` the bytes of the allocation that failed;
    either is None where llama.cpp's log did not say (and after `from_code`, which carries only the message).
    """

    code = "out_of_memory"
    device: str | None = None
    requested: int | None = None

    def __init__(self, message: str, *, device: str | None = None, requested: int | None = None) -> None:
        super().__init__(message)
        self.device = device
        self.requested = requested


class RunnerCrashed(RunnerError):
    code = "runner_crashed"


# The runner reports failures over the socket by code; this turns a code back into the class.
_BY_CODE: dict[str, type[OffloadError]] = {}


def _index(cls: type[OffloadError]) -> None:
    _BY_CODE.setdefault(cls.code, cls)
    for sub in cls.__subclasses__():
        _index(sub)


_index(OffloadError)


def from_code(code: str, message: str) -> OffloadError:
    """Rebuild an error sent as (code, message) by another process (the runner)."""
    cls = _BY_CODE.get(code, OffloadError)
    error = cls.__new__(cls)
    OffloadError.__init__(error, message)
    return error
