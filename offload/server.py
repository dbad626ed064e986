"""`offload serve`: wire the store, the scheduler and the HTTP app together and run uvicorn."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import uvicorn

from offload.api.app import create_app
from offload.config import Settings
from offload.models.store import Store
from offload.scheduler import Scheduler

log = logging.getLogger("offload")


def serve(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings.models_dir)
    scheduler = Scheduler(settings, verify=store.verify)
    scheduler.prepare()  # logs the backend plan: what will run where, before the first request
    app = create_app(settings, store, scheduler)
    host, port = settings.bind
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning" if settings.log_level != "debug" else "debug",
        access_log=settings.log_level == "debug",
        timeout_graceful_shutdown=10,
    )
    log.info("offload listening on %s:%d (home %s)", host, port, settings.home)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve(uvicorn.Server(config), scheduler))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (it is a dependency on Linux and macOS): less work per streamed token."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _serve(server: uvicorn.Server, scheduler: Scheduler) -> None:
    # The runners live on this event loop, so they are stopped on it too, after uvicorn drained the requests.
    try:
        await server.serve()
    finally:
        await scheduler.close()
