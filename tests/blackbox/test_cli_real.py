"""`offload run` and friends against the real server: what a user types after `make serve`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.blackbox.server import ServerProcess

pytestmark = pytest.mark.blackbox


def offload(server: ServerProcess, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "offload", *args],
        env=server.env, capture_output=True, text=True, timeout=120, input=stdin,
    )


def test_run_one_shot(server: ServerProcess) -> None:
    result = offload(server, "run", "gemma3:270m", "Why is the sky blue?", "--num-predict", "24")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip()) > 10


def test_run_reads_a_piped_prompt(server: ServerProcess) -> None:
    result = offload(server, "run", "gemma3:270m", "--num-predict", "8", stdin="Say hi.")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_list_show_ps(server: ServerProcess) -> None:
    listing = offload(server, "list")
    assert listing.returncode == 0, listing.stderr
    assert "gemma3:270m" in listing.stdout
    shown = offload(server, "show", "gemma3:270m")
    assert shown.returncode == 0, shown.stderr
    assert "gemma3" in shown.stdout and "Q4_K_M" in shown.stdout
    ps = offload(server, "ps")
    assert ps.returncode == 0, ps.stderr


def test_unknown_model_fails_with_the_servers_message(server: ServerProcess) -> None:
    result = offload(server, "run", "missing:1b", "hi")
    assert result.returncode == 1
    assert 'model "missing:1b" not found' in result.stderr
