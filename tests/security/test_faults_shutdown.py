"""SIGTERM to the real server with two streams open: no new connection is accepted, the short stream finishes,
the long one ends with a "shutting down" error once the grace period is over, the runner is stopped, the server
exits, and no runner outlives it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import time
from typing import Any

import httpx
import pytest

from tests.blackbox.server import ServerProcess, process_state, starter_home

pytestmark = pytest.mark.blackbox
MODEL = "gemma3:270m"
GRACE_S = 5  # OFFLOAD_SHUTDOWN_GRACE: the short stream's 4 tokens need a fraction of it
TIMEOUT = 120.0


def refuses_connections(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return False
    return True


# The long stream must still be running when the grace ends: greedy counting, which the starter model continues for
# hundreds of tokens without an end token (a sampled story ended on its own before the signal once in a full run).
LONG = {"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "raw": True,
        "options": {"num_predict": 100_000, "temperature": 0}}
SHORT = {"model": MODEL, "prompt": "Tell me a story.", "options": {"num_predict": 4}}


async def stream(client: httpx.AsyncClient, body: dict[str, Any], started: asyncio.Event) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    async with client.stream("POST", "/api/generate", json=body) as reply:
        assert reply.status_code == 200
        async for line in reply.aiter_lines():
            if line:
                lines.append(json.loads(line))
                started.set()
    return lines


async def terminate_during_streams(server: ServerProcess) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    assert server.proc is not None
    async with httpx.AsyncClient(base_url=server.base_url, timeout=TIMEOUT) as client:
        long_started, short_started = asyncio.Event(), asyncio.Event()
        long = asyncio.create_task(stream(client, LONG, long_started))  # capped by the context: a minute or more
        await asyncio.wait_for(long_started.wait(), TIMEOUT)
        short = asyncio.create_task(stream(client, SHORT, short_started))
        await asyncio.wait_for(short_started.wait(), TIMEOUT)
        server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + TIMEOUT
        while not refuses_connections(server.port):
            assert time.monotonic() < deadline, "still accepting connections"
            await asyncio.sleep(0.05)
        return await asyncio.wait_for(asyncio.gather(long, short), TIMEOUT)


def test_sigterm_finishes_or_ends_streams_stops_runners_and_leaves_no_orphan(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    home = starter_home(tmp_path_factory.mktemp("offload-shutdown-home"))
    server = ServerProcess(home, extra_env={"OFFLOAD_SHUTDOWN_GRACE": str(GRACE_S), "OFFLOAD_NUM_PARALLEL": "2"})
    server.start()
    try:
        assert server.proc is not None
        warm = httpx.post(server.base_url + "/api/generate", json={"model": MODEL, "prompt": ""}, timeout=TIMEOUT)
        assert warm.status_code == 200
        (runner,) = server.runner_pids()
        long, short = asyncio.run(terminate_during_streams(server))
        assert short[-1].get("done") is True, short[-1]
        assert list(long[-1]) == ["error"] and "shutting down" in str(long[-1]["error"]), long[-1]
        assert server.proc.wait(timeout=TIMEOUT) in {0, -signal.SIGTERM}  # uvicorn exits by the signal it got
        assert process_state(runner) is None, "the runner outlived the server"
        log = server.log()
        assert "offload stopped" in log and "Traceback" not in log, log
    finally:
        server.stop()
