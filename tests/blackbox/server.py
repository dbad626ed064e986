"""Start the real `offload serve` on a free loopback port with a temporary OFFLOAD_HOME, and stop it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children(parent_pid: int, marker: bytes) -> list[int]:
    """Processes whose parent is `parent_pid` and whose command line holds `marker`."""
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
        if parent == parent_pid and marker in cmdline:
            pids.append(int(entry.name))
    return pids


def process_state(pid: int) -> str | None:
    """The state letter of `pid` (R, S, T, Z...), None once it is gone."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


class ServerProcess:
    def __init__(
        self,
        home: Path,
        *,
        extra_env: dict[str, str] | None = None,
        wrapper: list[str] | None = None,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        """`wrapper` is a command the server is started through (it ends by exec'ing its arguments: unshare, sh -c
        '... exec "$@"'); `preexec` runs in the child before it starts (resource limits)."""
        self.wrapper = wrapper or []
        self.preexec = preexec
        self.home = home
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "server.log"
        env = {**os.environ, "OFFLOAD_HOME": str(home), "OFFLOAD_HOST": f"127.0.0.1:{self.port}"}
        # This machine's own Ollama store, Hugging Face cache or model folders must not change what tests see.
        env.update({"OFFLOAD_DISCOVER": "none", "OFFLOAD_MODELS_PATH": ""})
        env.update(extra_env or {})
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*self.wrapper, sys.executable, "-m", "offload", "serve"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=self.preexec,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + "/", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"server did not answer within {timeout} s:\n{self.log()}")

    def runner_pids(self) -> list[int]:
        """The server's runner subprocesses (children running `python -m offload.runner`)."""
        assert self.proc is not None
        return children(self.proc.pid, b"offload.runner")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def starter_home(home: Path) -> Path:
    """`home` with the starter model already in its store (importing on first request works too; doing it first keeps
    the tests' timings flat). Fails when the starter package is not installed."""
    from offload.models.starter import ensure_starter, starter_available
    from offload.models.store import Store

    if not starter_available():
        raise RuntimeError("the starter model package is not installed: `make test` installs offload[starter]")
    ensure_starter(Store(home / "models"))
    return home


@contextlib.contextmanager
def running_server(
    home: Path,
    extra_env: dict[str, str] | None = None,
    *,
    wrapper: list[str] | None = None,
    preexec: Callable[[], None] | None = None,
) -> Iterator[ServerProcess]:
    server = ServerProcess(home, extra_env=extra_env, wrapper=wrapper, preexec=preexec)
    server.start()
    try:
        yield server
    finally:
        server.stop()
