"""Faults end to end, on the real `offload serve` with the real starter model: clients that leave during the prompt
or mid-stream, a burst of streams against a small queue, a runner that stops answering. Runner deaths mid-stream
are in tests/blackbox/test_runner_faults.py; model files changed under a running server, a full disk, racing pulls
and shutdown in the test_faults_* modules beside this one.

One server for the module: one slot (OFFLOAD_NUM_PARALLEL) and a queue of 4 (OFFLOAD_MAX_QUEUE), prompts evaluated
32 tokens per llama_decode so that a prompt takes many steps, and debug logs, which carry the runner's own account
of each burst of work ("busy ...: N tokens evaluated, M sampled"): that, not a clock, shows whether a cancelled
request stopped using the runner. No timing is asserted; every wait is bounded so that a hang fails the test
instead of stalling the suite.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import signal
import socket
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
    env = {
        "OFFLOAD_MAX_QUEUE": str(QUEUE),
        "OFFLOAD_NUM_PARALLEL": "1",  # one slot, so a burst meets the queue limit the numbers below assume
        "OFFLOAD_NUM_BATCH": str(BATCH),
        "OFFLOAD_LOG_LEVEL": "debug",
    }
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


# ---- clients that leave -----------------------------------------------------------------------------------------

LONG_PROMPT_TOKENS = 3000  # " hello" is one token: a prompt of ~94 llama_decode calls of BATCH tokens
NUM_PREDICT = 1000  # what an abandoned request would generate if nothing stopped it


def metric(server: ServerProcess, name: str) -> float:
    text = httpx.get(server.base_url + "/metrics", timeout=WAIT_S).text
    found = re.search(rf"^{re.escape(name)} ([\d.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def busy_lines(server: ServerProcess) -> list[tuple[int, int]]:
    """(tokens evaluated, tokens sampled) of each burst of work the runner logged so far."""
    pattern = r"busy [\d.]+ s: \d+ steps, (\d+) tokens evaluated, (\d+) sampled"
    return [(int(e), int(s)) for e, s in re.findall(pattern, server.log_path.read_text(errors="replace"))]


def work_after(server: ServerProcess, before: int) -> tuple[int, int]:
    """Tokens evaluated and sampled by the runner since `before` bursts, once it is idle: a small request is served
    after the client left, and every request has ended."""
    assert generate(server).status_code == 200
    wait_for(lambda: metric(server, "offload_http_requests_in_progress") <= 1, "idle")  # the scrape itself
    wait_for(lambda: len(busy_lines(server)) > before, "logged")
    lines = busy_lines(server)[before:]
    return sum(e for e, _ in lines), sum(s for _, s in lines)


def raw_post(server: ServerProcess, path: str, body: dict[str, object]) -> socket.socket:
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    sock.sendall(f"{head}Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


LONG_PROMPT = "hello " * LONG_PROMPT_TOKENS
Case = tuple[str, dict[str, object]]
PROMPT_CASES: dict[str, Case] = {
    "ollama-stream": (
        "/api/generate",
        {"model": MODEL, "prompt": LONG_PROMPT, "options": {"num_predict": NUM_PREDICT}},
    ),
    "openai-whole": ("/v1/completions", {"model": MODEL, "prompt": LONG_PROMPT, "max_tokens": NUM_PREDICT}),
}


@pytest.mark.parametrize("case", PROMPT_CASES)
def test_a_client_gone_during_the_prompt_stops_its_evaluation(server: ServerProcess, case: str) -> None:
    path, body = PROMPT_CASES[case]
    loaded_runner(server)
    before = len(busy_lines(server))
    sock = raw_post(server, path, body)
    try:
        waiting = f'offload_requests_waiting{{model="{MODEL}"}}'
        wait_for(lambda: metric(server, waiting) == 1, "waiting for its first token")
    finally:
        sock.close()
    wait_for(lambda: metric(server, waiting) == 0, "cancelled")
    evaluated, sampled = work_after(server, before)
    # The prompt alone is LONG_PROMPT_TOKENS; the small request after it adds a handful of tokens.
    assert evaluated < LONG_PROMPT_TOKENS, (evaluated, sampled)
    assert sampled <= 2, (evaluated, sampled)  # the small request's two tokens: none for the abandoned one


STORY = [{"role": "user", "content": "Tell me a story."}]


STREAM_CASES: dict[str, Case] = {
    "ollama": ("/api/chat", {"model": MODEL, "messages": STORY, "options": {"num_predict": NUM_PREDICT}}),
    "openai": ("/v1/chat/completions", {"model": MODEL, "messages": STORY, "max_tokens": NUM_PREDICT, "stream": True}),
}


@pytest.mark.parametrize("case", STREAM_CASES)
def test_a_client_gone_mid_stream_stops_its_generation(server: ServerProcess, case: str) -> None:
    path, body = STREAM_CASES[case]
    loaded_runner(server)
    before = len(busy_lines(server))
    with httpx.stream("POST", server.base_url + path, json=body, timeout=WAIT_S) as reply:
        assert reply.status_code == 200
        lines = reply.iter_lines()
        for _ in range(4):
            next(lines)
    _, sampled = work_after(server, before)
    assert sampled < NUM_PREDICT / 2, sampled
    assert server.proc is not None and server.proc.poll() is None


# ---- a burst against a small queue ------------------------------------------------------------------------------

BURST = 100


async def one_stream(client: httpx.AsyncClient, index: int) -> str:
    """How one streamed request ended: "served" (its last line is done), "busy" (503 with Retry-After), or what
    else happened."""
    body = {"model": MODEL, "prompt": f"Count to {index}.", "options": {"num_predict": 8}}
    async with client.stream("POST", "/api/generate", json=body) as reply:
        if reply.status_code == 503:
            await reply.aread()
            return "busy" if reply.headers.get("retry-after") and "error" in reply.json() else "bad 503"
        if reply.status_code != 200:
            return f"status {reply.status_code}"
        lines = [json.loads(line) async for line in reply.aiter_lines() if line]
    return "served" if lines and lines[-1].get("done") is True else f"ended with {lines[-1:]}"


async def burst(server: ServerProcess, count: int) -> list[str]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_S, limits=limits) as client:
        return await asyncio.wait_for(asyncio.gather(*(one_stream(client, i) for i in range(count))), WAIT_S * 2)


def test_every_stream_of_a_burst_ends_served_or_503(server: ServerProcess) -> None:
    loaded_runner(server)
    outcomes = asyncio.run(burst(server, BURST))
    counts = collections.Counter(outcomes)
    assert set(counts) <= {"served", "busy"}, counts
    assert counts["served"] >= 1 and counts["busy"] >= 1, counts  # 100 streams against 1 slot and a queue of 4
    wait_for(lambda: metric(server, "offload_http_requests_in_progress") <= 1, "idle")
    assert httpx.get(server.base_url + "/health", timeout=WAIT_S).json() == {"status": "ok"}
    assert generate(server).status_code == 200
