"""`offload serve`: wire the store, the scheduler and the HTTP app together and run uvicorn."""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import Callable
from pathlib import Path

import uvicorn

from offload.api.app import create_app
from offload.config import Settings, process_environ
from offload.models import catalog
from offload.models.store import Store
from offload.scheduler import Scheduler

log = logging.getLogger("offload")
_BACKSTOP_S = 5  # after the grace period and the runners' stop, uvicorn cancels whatever still runs


def serve(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings.models_dir)
    discovery = catalog.discovery_for(settings, process_environ(), Path.home())
    scheduler = Scheduler(settings, verify=functools.partial(catalog.verify, store, discovery))
    scheduler.prepare()  # logs the backend plan: what will run where, before the first request
    app = create_app(settings, store, scheduler, discovery)
    host, port = settings.bind
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning" if settings.log_level != "debug" else "debug",
        access_log=settings.log_level == "debug",
        # A backstop only: _Server ends the streams after the grace period itself, with an error they can show.
        timeout_graceful_shutdown=int(settings.shutdown_grace) + _BACKSTOP_S,
    )
    log.info("offload listening on %s:%d (home %s)", host, port, settings.home)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve(_Server(config, scheduler, settings.shutdown_grace), scheduler))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (it is a dependency on Linux and macOS): less work per streamed token."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


class _Server(uvicorn.Server):
    """uvicorn's server, whose graceful shutdown also stops the runners.

    On SIGTERM or SIGINT uvicorn stops accepting connections and waits for the requests in flight. After `grace`
    seconds the scheduler is closed: open streams end with a "shutting down" error, waiting requests get 503, and
    every runner is stopped (asked, then killed after its own grace). This happens here, inside uvicorn's shutdown,
    because once `serve()` returns uvicorn raises the signal again with its default action, which ends the process
    before any code after it runs.
    """

    def __init__(self, config: uvicorn.Config, scheduler: Scheduler, grace: float) -> None:
        super().__init__(config)
        self._scheduler = scheduler
        self._grace = grace

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        async def end_the_rest() -> None:
            await asyncio.sleep(self._grace)
            log.warning("shutting down: ending what is still running after %.0f s", self._grace)
            await self._scheduler.close()

        ender = asyncio.create_task(end_the_rest())
        try:
            await super().shutdown(sockets)
        finally:
            ender.cancel()
            await self._scheduler.close()
            log.info("offload stopped")


async def _serve(server: uvicorn.Server, scheduler: Scheduler) -> None:
    # The runners live on this event loop, so they are stopped on it too, after uvicorn drained the requests.
    try:
        await server.serve()
    finally:
        await scheduler.close()
