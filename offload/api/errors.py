"""The one mapping from offload's errors to HTTP: status from the error class, body in the route's dialect.

Ollama's shape is `{"error": "message"}`; OpenAI's is `{"error": {"message", "type", "param", "code"}}`.
Routes under /v1/ speak OpenAI, everything else Ollama. Unexpected exceptions become a 500 with a generic
message; the traceback goes to the log only (it can hold paths and prompt text).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from offload.errors import BadRequest, OffloadError, StoreError

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal server error (details are in the server log)"
STORE_MESSAGE = "the model store failed (details are in the server log)"


def is_openai_path(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def openai_error_type(status: int) -> str:
    # The type names OpenAI's clients know; they key retries on status, not on these.
    if status < 500:
        return "invalid_request_error"
    return "server_error"


def ollama_body(error: OffloadError) -> dict[str, Any]:
    return {"error": error.message}


def openai_body(error: OffloadError) -> dict[str, Any]:
    return {
        "error": {
            "message": error.message,
            "type": openai_error_type(error.status),
            "param": error.param,
            "code": error.code,
        }
    }


def public(error: OffloadError) -> OffloadError:
    """The error as a client may see it. A store failure's message names the server's files (a blob path
    that resolves outside the store, a disk error on a manifest): the client gets the kind, the log the rest."""
    if isinstance(error, StoreError) and not error.message_is_public:
        log.error("model store: %s", error.message)
        return StoreError(STORE_MESSAGE)
    return error


def error_body(path: str, error: OffloadError) -> dict[str, Any]:
    shown = public(error)
    return openai_body(shown) if is_openai_path(path) else ollama_body(shown)


def error_response(path: str, error: OffloadError) -> JSONResponse:
    return JSONResponse(error_body(path, error), status_code=error.status, headers=error.headers() or None)


def internal_error() -> OffloadError:
    return OffloadError(INTERNAL_MESSAGE)


class _HTTPError(OffloadError):
    """Starlette's own HTTP errors (unknown route, wrong method) carried into the dialect shapes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")


async def _on_offload_error(request: Request, exc: Exception) -> JSONResponse:
    error = exc if isinstance(exc, OffloadError) else internal_error()
    if error.status >= 500:
        log.error("%s %s failed: %s (%s)", request.method, request.url.path, error.message, error.code)
    return error_response(request.url.path, error)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    first = errors[0] if errors else {}
    loc = ".".join(str(part) for part in first.get("loc", ()) if part not in {"body", "path", "query"})
    message = f'invalid value for "{loc}": {first.get("msg", "invalid")}' if loc else "invalid request"
    return error_response(request.url.path, BadRequest(message, param=loc or None))


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
    detail = exc.detail if isinstance(exc, StarletteHTTPException) else None
    message = str(detail) if detail else "error"
    if status == 404:
        message = f"{request.method} {request.url.path}: no such endpoint"
    elif status == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    response = error_response(request.url.path, _HTTPError(status, message))
    if isinstance(exc, StarletteHTTPException) and exc.headers:
        response.headers.update(exc.headers)
    return response


def install(app: FastAPI) -> None:
    app.add_exception_handler(OffloadError, _on_offload_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
