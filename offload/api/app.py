"""The FastAPI application: routers of both dialects, error mapping, request logging and metrics."""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import socket
import time

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from offload.api import errors, routes_models, routes_ollama, routes_openai
from offload.api.deps import AppState, SchedulerLike, get_state
from offload.api.metrics import CONTENT_TYPE, Metrics
from offload.api.security import ApiKeyMiddleware, HostOriginMiddleware, is_loopback
from offload.api.streaming import CLIENT_GONE
from offload.config import Settings
from offload.models.discover import Discovery
from offload.models.store import Store

log = logging.getLogger("offload.api")
access_log = logging.getLogger("offload.api.access")

FALLBACK_VERSION = "0.1.0"


def version() -> str:
    """offload.__version__ (set by the package), else the installed distribution's, else FALLBACK_VERSION."""
    found = getattr(importlib.import_module("offload"), "__version__", None)
    if isinstance(found, str) and found:
        return found
    try:
        return importlib.metadata.version("offload")
    except importlib.metadata.PackageNotFoundError:
        return FALLBACK_VERSION


class AccessMiddleware:
    """Logs one line per request, counts it for /metrics, and turns an unexpected exception into a 500 in the
    route's dialect (traceback to the log only). Pure ASGI, so streamed bodies pass through untouched."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500
        response_started = False
        self.metrics.in_progress.inc()

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_started = True
            await send(message)

        path: str = scope.get("path", "")
        try:
            await self.app(scope, receive, send_wrapper)
        except ClientDisconnect:
            # Gone while its body was read or before its first chunk (streaming.Generation.start): nobody to answer.
            status = CLIENT_GONE
        except Exception:
            log.exception("%s %s: unexpected error", scope.get("method"), path)
            if response_started:
                raise
            status = 500
            response = errors.error_response(path, errors.internal_error())
            await response(scope, receive, send)
        finally:
            self.metrics.in_progress.dec()
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = str(scope.get("method", ""))
            elapsed = time.monotonic() - started
            self.metrics.observe_request(route, method, status, elapsed)
            access_log.info("%s %s %d %.1fms", method, path, status, elapsed * 1000)


def create_app(
    settings: Settings, store: Store, scheduler: SchedulerLike, discovery: Discovery | None = None
) -> FastAPI:
    """The ASGI app serving Ollama's API (/api/*), OpenAI's (/v1/*), /, /health, /metrics.

    Requests pass, outermost first: the access log and metrics, the Host and Origin checks with CORS, the API
    key (api/security.py), then the routes. The caller owns `scheduler` and closes it; the app never starts or
    stops it.
    """
    app = FastAPI(title="offload", version=version(), docs_url=None, redoc_url=None, openapi_url=None)
    metrics = Metrics(scheduler.running)
    app.state.offload = AppState(
        settings=settings, store=store, scheduler=scheduler, metrics=metrics, discovery=discovery
    )
    errors.install(app)
    key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    bind_host = settings.bind[0]
    # add_middleware puts each one outside those added before it.
    app.add_middleware(ApiKeyMiddleware, key=key)
    app.add_middleware(
        HostOriginMiddleware,
        check_host=is_loopback(bind_host),
        hosts=(*settings.allowed_hosts, socket.gethostname().lower()),
        origins=settings.origins,
    )
    app.add_middleware(AccessMiddleware, metrics=metrics)
    if key is None and not is_loopback(bind_host):
        log.warning(
            "listening on %s without an API key: anyone who can reach this address can use the server "
            "(set OFFLOAD_API_KEY)",
            bind_host,
        )

    @app.get("/")
    @app.head("/")
    async def root() -> Response:
        return PlainTextResponse("offload is running")

    @app.get("/health")
    async def health() -> Response:
        """200 {"status": "ok"} when every loaded runner answers (nothing loaded is healthy: the next request
        loads); 503 when one is dead, stopped or stuck. The names and reasons go to the log, and to the client
        only when no API key is set (this route needs none, and /api/ps, which names models, does)."""
        problems = await scheduler.health()
        if not problems:
            return JSONResponse({"status": "ok"})
        for name, problem in problems.items():
            log.warning("health: %s cannot generate: %s", name, problem)
        body: dict[str, object] = {"status": "unhealthy", "error": f"{len(problems)} loaded model(s) cannot generate"}
        if key is None:
            body["models"] = dict(problems)
        return JSONResponse(body, status_code=503)

    @app.get("/api/version")
    @app.head("/api/version")
    async def api_version() -> Response:
        return JSONResponse({"version": version()})

    @app.get("/metrics")
    async def metrics_endpoint(request: Request) -> Response:
        return Response(get_state(request).metrics.render(), media_type=CONTENT_TYPE)

    app.include_router(routes_ollama.router)
    app.include_router(routes_models.router)
    app.include_router(routes_openai.router)
    return app
