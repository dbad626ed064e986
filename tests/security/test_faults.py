"""Faults end to end, on the real `offload serve` with the real starter model: clients that leave during the prompt
or mid-stream, a burst of streams against a small queue, a runner that stops answering. Runner deaths mid-stream
are in tests/blackbox/test_runner_faults.py; model files changed under a running server, a full disk, racing pulls
and shutdown in the test_faults_* modules beside this one.

One server for the module: a queue of 4 (OFFLOAD_MAX_QUEUE), prompts evaluated 32 tokens per llama_decode so that a
prompt takes many steps, and debug logs, which carry the runner's own account of each burst of work ("busy ...: N
tokens evaluated, M sampled"): that, not a clock, shows whether a cancelled request stopped using the runner.
No timing is asserted; every wait is bounded so that a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.blackbox.server import ServerProcess, process_state, running_server, starter_home

pytestmark = pytest.mark.blackbox
MODEL = "gemma3:270m"
QUEUE = 4
BATCH = 32
WAIT_S = 60.0  # the most any condition below is waited for


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"OFFLOAD_MAX_QUEUE": str(QUEUE), "OFFLOAD_NUM_BATCH": str(BATCH), "OFFLOAD_LOG_LEVEL": "debug"}
    with running_server(starter_home(tmp_path_factory.mktemp("offload-faults-home")), env) as process:
        yield process


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"not {what} within {WAIT_S} s"
        time.sleep(0.05)


def generate(server: ServerProcess, prompt: str = "hi", num_predict: int = 2) -> httpx.Response:
    return httpx.post(
        server.base_url + "/api/generate",
        json={"model": MODEL, "prompt": prompt, "stream": False, "options": {"num_predict": num_predict}},
        timeout=WAIT_S,
    )


def loaded_runner(server: ServerProcess) -> int:
    assert generate(server).status_code == 200
    pids = server.runner_pids()
    assert len(pids) == 1, pids
    return pids[0]


def test_health_fails_while_the_runner_is_stopped(server: ServerProcess) -> None:
    pid = loaded_runner(server)
    assert httpx.get(server.base_url + "/health", timeout=WAIT_S).json() == {"status": "ok"}
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: process_state(pid) == "T", "stopped")
        sick = httpx.get(server.base_url + "/health", timeout=WAIT_S)
        assert sick.status_code == 503
        assert sick.json()["status"] == "unhealthy"
        assert "did not answer" in sick.json()["models"][MODEL]
    finally:
        os.kill(pid, signal.SIGCONT)
    assert httpx.get(server.base_url + "/health", timeout=WAIT_S).json() == {"status": "ok"}
    assert generate(server).status_code == 200
    assert server.runner_pids() == [pid]  # the same runner: a stop is not a death


def test_health_fails_while_a_dead_runner_is_not_replaced(server: ServerProcess) -> None:
    pid = loaded_runner(server)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: process_state(pid) in {None, "Z"}, "gone")
    sick = httpx.get(server.base_url + "/health", timeout=WAIT_S)
    assert sick.status_code == 503
    assert "killed by signal SIGKILL" in sick.json()["models"][MODEL]
    assert generate(server).status_code == 200  # the next request loads it again
    assert httpx.get(server.base_url + "/health", timeout=WAIT_S).json() == {"status": "ok"}
