"""RunnerProcess.start() against runners that fail to load: how each reply and exit becomes an exception.

A scripted runner stands in for `python -m offload.runner` (sys.executable is pointed at a wrapper that runs it),
and speaks the real protocol over the real socketpair; the last test runs the real runner, with real llama.cpp,
in an address space too small for the context it is asked for.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from offload.errors import BackendUnusable, OffloadError, OutOfMemory, RunnerError, RunnerStartFailed
from offload.runner.process import RunnerProcess, State, load_error
from offload.runner.protocol import LoadOptions, Message, encode

START_TIMEOUT = 60.0  # generous: only a hang gets near it

# Receives the load message, sends the reply in FAKE_RUNNER_REPLY (if any), then exits as FAKE_RUNNER_EXIT says.
FAKE_RUNNER = """\
import json, os, signal, socket, sys
from offload.runner.protocol import SyncChannel

channel = SyncChannel(socket.socket(fileno=int(sys.argv[sys.argv.index("--fd") + 1])))
assert channel.receive()["op"] == "load"
if os.environ.get("FAKE_RUNNER_REPLY"):
    channel.send(json.loads(os.environ["FAKE_RUNNER_REPLY"]))
if os.environ["FAKE_RUNNER_EXIT"] == "SIGKILL":
    os.kill(os.getpid(), signal.SIGKILL)
os._exit(int(os.environ["FAKE_RUNNER_EXIT"]))
"""

# The real runner (`offload.runner.__main__.main`), in an address space that holds llama.cpp, the model and
# OOM_MARGIN bytes more: a context whose KV cache is larger than that cannot be allocated.
LIMITED_RUNNER = """\
import os, re, resource, sys
from offload.runner import llamacpp

llamacpp.C.llama_backend_init()
with open("/proc/self/status") as status:
    in_use = int(re.search(r"VmSize:\\s+(\\d+) kB", status.read()).group(1)) * 1024
limit = in_use + int(os.environ["OOM_MODEL_BYTES"]) + int(os.environ["OOM_MARGIN"])
resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
from offload.runner.__main__ import main
os._exit(main(sys.argv[sys.argv.index("--fd"):]))
"""


def use_runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, script: str) -> None:
    """Make RunnerProcess start `script` (with the runner's arguments) instead of `python -m offload.runner`."""
    (tmp_path / "runner.py").write_text(script)
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{tmp_path / "runner.py"}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(wrapper))


def start_failure(options: LoadOptions) -> tuple[OffloadError, RunnerProcess]:
    runner = RunnerProcess(options, name="m")

    async def main() -> OffloadError:
        try:
            await runner.start(START_TIMEOUT)
        except OffloadError as exc:
            return exc
        await runner.close()
        raise AssertionError("the runner loaded")

    return asyncio.run(main()), runner


def fake_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, reply: Message | None, exit_how: str) -> OffloadError:
    use_runner(monkeypatch, tmp_path, FAKE_RUNNER)
    monkeypatch.setenv("FAKE_RUNNER_REPLY", json.dumps(reply) if reply is not None else "")
    monkeypatch.setenv("FAKE_RUNNER_EXIT", exit_how)
    error, runner = start_failure(LoadOptions(model_path="m.gguf", n_ctx=512))
    assert runner.state is State.STOPPED
    assert runner.has_exited()
    return error


OOM_REPLY: Message = {
    "op": "error",
    "code": "out_of_memory",
    "message": "llama.cpp could not allocate 4.3 GiB on CUDA0 (out of memory) while loading m.gguf",
    "device": "CUDA0",
    "requested": 4617387008,
}


def test_out_of_memory_reply_keeps_device_and_size(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The runner replies and exits 1 at once: the reply must still win over the exit.
    error = fake_start(monkeypatch, tmp_path, OOM_REPLY, "1")
    assert type(error) is OutOfMemory
    assert error.message == OOM_REPLY["message"]
    assert (error.device, error.requested) == ("CUDA0", 4617387008)


def test_a_reply_seen_after_the_exit_is_not_lost() -> None:
    # The runner writes its reply before it exits, but the server may hear of the exit first: the reply still counts.
    async def main() -> None:
        runner = RunnerProcess(LoadOptions(model_path="m.gguf", n_ctx=512), name="m")
        reader = asyncio.StreamReader()
        runner._reader = reader
        runner._exited.set()

        def arrive() -> None:
            reader.feed_data(encode(OOM_REPLY))
            reader.feed_eof()

        asyncio.get_running_loop().call_later(0.05, arrive)
        await runner._await_loaded()

    with pytest.raises(OutOfMemory):
        asyncio.run(main())


@pytest.mark.parametrize(
    ("reply", "exit_how", "expected"),
    [
        ({"op": "error", "code": "backend_unusable", "message": "no CUDA device"}, "78", BackendUnusable),
        ({"op": "error", "code": "runner_start_failed", "message": "could not load"}, "1", RunnerStartFailed),
        (None, "78", BackendUnusable),  # exit 78 without a word
        (None, "SIGKILL", BackendUnusable),  # killed while loading its backend
        (None, "1", RunnerStartFailed),  # an ordinary load failure, not a reason to try another backend
    ],
    ids=["backend-unusable-reply", "start-failed-reply", "exit-78", "signal", "exit-1"],
)
def test_other_load_failures_are_unchanged(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, reply: Message | None, exit_how: str, expected: type[Exception]
) -> None:
    assert type(fake_start(monkeypatch, tmp_path, reply, exit_how)) is expected


@pytest.mark.parametrize(
    ("extra", "device", "requested"),
    [
        ({"device": "CPU", "requested": 1610612736}, "CPU", 1610612736),
        ({}, None, None),  # a runner that could not tell
        ({"device": None, "requested": None}, None, None),
        ({"device": 0, "requested": "4 GiB"}, None, None),  # the wrong types are dropped, not trusted
        ({"device": "CUDA1", "requested": True}, "CUDA1", None),  # a JSON boolean is not a size
    ],
)
def test_load_error_out_of_memory_fields(extra: dict[str, Any], device: str | None, requested: int | None) -> None:
    error = load_error({"op": "error", "code": "out_of_memory", "message": "no room", **extra})
    assert type(error) is OutOfMemory
    assert (error.message, error.device, error.requested) == ("no room", device, requested)


@pytest.mark.parametrize(
    ("code", "expected"),
    [("backend_unusable", BackendUnusable), ("runner_start_failed", RunnerStartFailed), ("runner_error", RunnerError),
     ("from_a_newer_runner", OffloadError)],
)
def test_load_error_other_codes(code: str, expected: type[OffloadError]) -> None:
    error = load_error({"op": "error", "code": code, "message": "m", "device": "CUDA0"})
    assert type(error) is expected
    assert error.message == "m"


def test_real_runner_out_of_memory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, starter_model: Path) -> None:
    # 16 sequences of 32768 tokens want a KV cache of over a GiB; the runner may allocate 512 MiB beyond the model.
    margin = 512 << 20
    use_runner(monkeypatch, tmp_path, LIMITED_RUNNER)
    monkeypatch.setenv("OOM_MODEL_BYTES", str(starter_model.stat().st_size))
    monkeypatch.setenv("OOM_MARGIN", str(margin))
    options = LoadOptions(model_path=str(starter_model), n_ctx=32768 * 16, n_seq_max=16, n_threads=2)
    error, _ = start_failure(options)
    assert type(error) is OutOfMemory, error.message
    assert error.device == "CPU"
    assert error.requested is not None and error.requested > margin
    assert error.message.startswith("llama.cpp could not allocate ")
    assert f"on CPU (out of memory) while creating a context of {32768 * 16} tokens for " in error.message
