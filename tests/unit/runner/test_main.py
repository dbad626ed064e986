"""The runner's side of a failed load (offload/runner/__main__.py): what it sends, how it exits, what it says."""

from __future__ import annotations

import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from offload.errors import BackendUnusable, OffloadError, OutOfMemory, RunnerStartFailed
from offload.generation import to_wire
from offload.runner import __main__ as runner_main
from offload.runner.protocol import LoadOptions, Message, SyncChannel

LOGS = Path(__file__).resolve().parents[2] / "fixtures" / "load_logs"


def serve_failing_load(monkeypatch: pytest.MonkeyPatch, error: OffloadError) -> tuple[int, Message]:
    """serve() on one end of a socketpair whose load raises `error`: its exit code and the reply the server got."""

    def failing_load(options: LoadOptions, emit: Any) -> Any:
        raise error

    monkeypatch.setattr(runner_main, "_load", failing_load)
    server_end, runner_end = socket.socketpair()
    server = SyncChannel(server_end)
    try:
        server.send({"op": "load", "options": to_wire(LoadOptions(model_path="m.gguf", n_ctx=512))})
        code = runner_main.serve(SyncChannel(runner_end))
        reply = server.receive()
    finally:
        server.close()
        runner_end.close()
    assert reply is not None
    return code, reply


def test_out_of_memory_is_sent_with_device_and_size_and_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    error = OutOfMemory("no room on CUDA0", device="CUDA0", requested=4617387008)
    code, reply = serve_failing_load(monkeypatch, error)
    # 1, not 78: the backend works, so the server retries it with a smaller plan instead of trying the next one.
    assert code == runner_main.EXIT_LOAD_FAILED == 1
    assert reply == {
        "op": "error", "code": "out_of_memory", "message": "no room on CUDA0", "device": "CUDA0",
        "requested": 4617387008,
    }


def test_out_of_memory_without_numbers_sends_nulls(monkeypatch: pytest.MonkeyPatch) -> None:
    code, reply = serve_failing_load(monkeypatch, OutOfMemory("no room"))
    assert code == 1
    assert (reply["device"], reply["requested"]) == (None, None)


@pytest.mark.parametrize(
    ("error", "exit_code"),
    [(BackendUnusable("no CUDA device"), 78), (RunnerStartFailed("could not load m.gguf"), 1)],
    ids=["backend-unusable", "start-failed"],
)
def test_other_failures_are_unchanged(monkeypatch: pytest.MonkeyPatch, error: OffloadError, exit_code: int) -> None:
    code, reply = serve_failing_load(monkeypatch, error)
    assert code == exit_code
    assert reply == {"op": "error", "code": error.code, "message": error.message}


FAILED = RunnerStartFailed("llama.cpp could not load /models/x.gguf")


@pytest.mark.parametrize(
    ("log", "doing", "message", "device", "requested"),
    [
        (
            (LOGS / "cuda_oom_synthetic.txt").read_text(),
            "loading x.gguf",
            "llama.cpp could not allocate 4.3 GiB on CUDA1 (out of memory) while loading x.gguf",
            "CUDA1",
            4617387008,
        ),
        (
            (LOGS / "cpu_oom_kv_cache.txt").read_text(),
            "creating a context of 524288 tokens for x.gguf",
            "llama.cpp could not allocate 1.5 GiB on CPU (out of memory) while creating a context of 524288 tokens "
            "for x.gguf",
            "CPU",
            1610612736,
        ),
        (
            "ggml_gallocr_reserve_n: failed to allocate CUDA0 buffer of size 12582912\n"
            "graph_reserve: failed to allocate compute buffers\n",
            "loading x.gguf",
            "llama.cpp could not allocate 12.0 MiB on CUDA0 (out of memory) while loading x.gguf",
            "CUDA0",
            12 << 20,
        ),
        (
            "llama_kv_cache: failed to allocate buffer for kv cache\n",
            "loading x.gguf",
            "llama.cpp could not allocate a buffer (out of memory) while loading x.gguf",
            None,
            None,
        ),
    ],
    ids=["cuda-weights", "cpu-kv-cache", "small-size-in-mib", "no-numbers"],
)
def test_a_failed_allocation_becomes_out_of_memory(
    log: str, doing: str, message: str, device: str | None, requested: int | None
) -> None:
    error = runner_main._explained(FAILED, log, doing)
    assert type(error) is OutOfMemory
    assert (error.message, error.device, error.requested) == (message, device, requested)


def test_any_other_failure_is_left_as_it_was() -> None:
    assert runner_main._explained(FAILED, (LOGS / "cpu_gemma3_270m.txt").read_text(), "loading x.gguf") is FAILED


@pytest.mark.parametrize(
    ("n_ctx", "n_seq_max", "n_ctx_train", "expected"),
    [
        (4096, 1, 32768, 4096),
        (16384, 4, 32768, 16384),  # 4 x 4096
        (262144, 4, 32768, 131072),  # each sequence capped at the trained context, not the total
        (8192, 1, 2048, 2048),
        (8192, 2, 0, 8192),  # the model does not say: nothing to cap at
        (0, 1, 32768, 0),  # llama.cpp's default
    ],
)
def test_total_context(n_ctx: int, n_seq_max: int, n_ctx_train: int, expected: int) -> None:
    assert runner_main._total_context(n_ctx, n_seq_max, n_ctx_train) == expected


def test_load_reports_the_context_of_one_sequence(starter_model: Path) -> None:
    # The server asks for num_ctx x n_seq_max; a request gets num_ctx, and that is what the runner reports.
    options = LoadOptions(model_path=str(starter_model), n_ctx=2048, n_seq_max=2, n_threads=2, tensor_split=(1.0,))
    engine, info = runner_main._load(options, lambda message: None)
    try:
        assert (info.n_ctx, info.n_seq_max) == (1024, 2)
        assert (engine.context.n_ctx, engine.context.n_ctx_seq) == (2048, 1024)
        # The split reached llama.cpp's parameters: one entry per device llama.cpp supports, the rest zero.
        split = engine.model._tensor_split
        assert split is not None and list(split)[:2] == [1.0, 0.0]
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("split", "reason"),
    [((0.5,) * 1000, r"tensor_split has 1000 entries"), ((-0.5, 1.5), "finite and not negative"),
     ((float("nan"),), "finite and not negative")],
    ids=["too-many", "negative", "nan"],
)
def test_load_rejects_a_bad_tensor_split(starter_model: Path, split: tuple[float, ...], reason: str) -> None:
    # Refused before llama.cpp reads it, as a failed load (exit 1), not an internal error.
    options = LoadOptions(model_path=str(starter_model), n_ctx=512, n_threads=2, tensor_split=split)
    with pytest.raises(RunnerStartFailed, match=reason) as caught:
        runner_main._load(options, lambda message: None)
    assert type(caught.value) is RunnerStartFailed


def test_pings_are_answered_by_the_reader_with_the_time_in_the_current_step() -> None:
    server_end, runner_end = socket.socketpair()
    server, runner = SyncChannel(server_end), SyncChannel(runner_end)
    inbox: queue.Queue[Message | None] = queue.Queue()
    busy = runner_main._Busy()
    reader = threading.Thread(target=runner_main._reader, args=(runner, inbox, busy), daemon=True)
    reader.start()
    try:
        server.send({"op": "ping", "id": "1"})
        assert server.receive() == {"op": "pong", "id": "1", "busy": 0.0}
        with busy.step():  # what the main loop does around engine.step() and each request
            time.sleep(0.05)
            server.send({"op": "ping", "id": "2"})
            pong = server.receive()
        assert pong is not None and pong["busy"] >= 0.05
        server.send({"op": "cancel", "id": "3"})
        assert inbox.get(timeout=5) == {"op": "cancel", "id": "3"}  # everything else goes to the main loop
    finally:
        server.close()
        reader.join(timeout=5)
        runner.close()
    assert inbox.get(timeout=5) is None  # the server went away
