"""The two servers the benchmarks compare, started on free loopback ports and stopped afterwards: llama.cpp's
llama-server and offload (the real `offload serve` on a temporary OFFLOAD_HOME holding one model)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from offload.models.store import Store  # noqa: E402
from tests.blackbox.server import ServerProcess, free_port  # noqa: E402


def wait_ready(ready: Callable[[], bool], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not start")


@contextlib.contextmanager
def llama_server(
    exe: Path | str, model: Path, threads: int, *, slots: int = 1, ctx: int = 4096, gpu: bool = False
) -> Iterator[str]:
    """llama-server with `slots` parallel sequences sharing `ctx` tokens; yields its base URL."""
    port = free_port()
    command = [str(exe), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
               "-c", str(ctx), "-np", str(slots), "--no-webui", "-ngl", "99" if gpu else "0"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(lambda: httpx.get(base + "/health", timeout=1).status_code == 200)
        yield base
    finally:
        proc.terminate()
        proc.wait()


@contextlib.contextmanager
def offload_server(
    model: Path, name: str, env: dict[str, str], log_to: Path | None = None
) -> Iterator[ServerProcess]:
    """offload serving `model` as `name` with these OFFLOAD_* settings. On failure the log's tail goes to stderr;
    `log_to` gets the whole log at the end."""
    with tempfile.TemporaryDirectory(prefix="offload-bench-") as tmp:
        home = Path(tmp)
        Store(home / "models").import_gguf(name, model)
        server = ServerProcess(home, extra_env=env)
        server.start()
        try:
            yield server
        except BaseException:
            print("offload server log (tail):\n" + server.log()[-6000:], file=sys.stderr)
            raise
        finally:
            server.stop()
            if log_to is not None and server.log_path.exists():  # server.log() is only the tail
                log_to.parent.mkdir(parents=True, exist_ok=True)
                log_to.write_bytes(server.log_path.read_bytes())
