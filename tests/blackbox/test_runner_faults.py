"""A runner that dies mid-stream becomes an error for its client, not a hung client or a dead server."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.blackbox.server import ServerProcess

pytestmark = pytest.mark.blackbox
MODEL = "gemma3:270m"


def runner_pids(server_pid: int) -> list[int]:
    """Processes whose parent is the server and whose command line is `python -m offload.runner`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == server_pid and b"offload.runner" in cmdline:
            pids.append(int(entry.name))
    return pids


def test_runner_killed_mid_stream(server: ServerProcess) -> None:
    assert server.proc is not None
    body = {"model": MODEL, "prompt": "Tell me a long story.", "options": {"num_predict": 400, "seed": 3}}
    lines: list[dict[str, object]] = []
    with httpx.stream("POST", server.base_url + "/api/generate", json=body, timeout=30) as reply:
        assert reply.status_code == 200
        killed_at = 0.0
        for raw in reply.iter_lines():
            if not raw:
                continue
            lines.append(json.loads(raw))
            if len(lines) == 3:
                pids = runner_pids(server.proc.pid)
                assert len(pids) == 1, pids
                os.kill(pids[0], signal.SIGKILL)
                killed_at = time.monotonic()
        ended_after = time.monotonic() - killed_at
    assert killed_at, "the stream ended before the runner could be killed"
    assert ended_after < 2.0
    assert "error" in lines[-1], lines[-1]
    assert "runner" in str(lines[-1]["error"])
    assert not any(line.get("done") for line in lines)
    # The server survived, and the next request starts a new runner.
    again = httpx.post(
        server.base_url + "/api/generate",
        json={"model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 4}},
        timeout=60,
    )
    assert again.status_code == 200, again.text
    assert again.json()["eval_count"] == 4
    assert len(runner_pids(server.proc.pid)) == 1


def test_runner_killed_while_idle_is_replaced(server: ServerProcess) -> None:
    assert server.proc is not None
    httpx.post(server.base_url + "/api/generate", json={"model": MODEL, "prompt": ""}, timeout=60)
    (pid,) = runner_pids(server.proc.pid)
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.3)
    reply = httpx.post(
        server.base_url + "/v1/completions",
        json={"model": MODEL, "prompt": "Hello", "max_tokens": 3, "temperature": 0},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] == 3
