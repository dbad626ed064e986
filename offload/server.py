"""`offload serve`: wire the store, the scheduler and the HTTP app together and run uvicorn."""

from __future__ import annotations

import logging

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
    scheduler = Scheduler(settings)
    app = create_app(settings, store, scheduler)
    host, port = settings.bind
    log.info("offload listening on %s:%d (home %s)", host, port, settings.home)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning" if settings.log_level != "debug" else "debug",
        access_log=settings.log_level == "debug",
        timeout_graceful_shutdown=10,
    )
