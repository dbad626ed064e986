"""`python -m offload.runner --fd N`: host one model through llama.cpp, talking over the inherited socket N.

Threads: a reader thread turns frames into a queue; the main thread owns llama.cpp and runs the engine loop,
taking control messages between steps. Exit codes: 0 after shutdown or when the server went away,
1 when the model could not be loaded (out of memory included: a smaller plan may fit), 70 on an internal error,
78 when this llama.cpp build cannot run the backend the server chose (no library, no driver, no device): the server
then tries the next backend.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

# Nothing imported at the top loads llama.cpp: _load imports offload.runner.llamacpp, which loads libllama through
# llama-cpp-python's bare ctypes bindings (no numpy, no Python log callback: docs/GPU.md says why).
from offload.errors import BackendUnusable, OffloadError, OutOfMemory, RunnerStartFailed
from offload.generation import EmbedRequest, GenerateRequest, from_wire, to_wire
from offload.hardware.cpu import physical_cores
from offload.planner.pipeline import pipeline_lanes
from offload.runner.gpumem import process_gpu_memory
from offload.runner.placement import allocation_failed, parse_load_log, parse_oom
from offload.runner.protocol import LoadedInfo, LoadOptions, Message, SyncChannel

if TYPE_CHECKING:
    from offload.runner.engine import Engine

EXIT_LOAD_FAILED = 1
EXIT_INTERNAL = 70
EXIT_UNUSABLE = 78
log = logging.getLogger("offload.runner")


class _Busy:
    """When the main thread entered the step (or request) it is in, for the reader thread's answers to pings."""

    def __init__(self) -> None:
        self._since: float | None = None

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        self._since = time.monotonic()
        try:
            yield
        finally:
            self._since = None

    def seconds(self) -> float:
        since = self._since
        return 0.0 if since is None else time.monotonic() - since


def _reader(channel: SyncChannel, inbox: queue.Queue[Message | None], busy: _Busy) -> None:
    """Frames to the inbox, except pings: answered here, so that a long llama_decode does not look like a hang, while
    a stopped process (or one whose step never ends: `busy` grows) does."""
    try:
        while (message := channel.receive()) is not None:
            if message.get("op") == "ping":
                channel.send({"op": "pong", "id": message.get("id"), "busy": round(busy.seconds(), 3)})
            else:
                inbox.put(message)
    except (OSError, ValueError) as exc:
        log.error("runner: reading from the server failed: %s", exc)
    inbox.put(None)  # the server went away


@contextlib.contextmanager
def _captured_stderr() -> Iterator[io.StringIO]:
    """Tee what is written to file descriptor 2 meanwhile (llama.cpp logs there from C) into a buffer.

    A thread passes every byte on to the real stderr as it comes, so if loading crashes the process the server
    still has the runner's last words; the buffer is llama.cpp's load report, which placement.py reads.
    """
    copy = io.StringIO()
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        while chunk := os.read(read_end, 65536):
            os.write(saved, chunk)
            copy.write(chunk.decode(errors="replace"))

    thread = threading.Thread(target=pump, name="runner-stderr-tee", daemon=True)
    thread.start()
    try:
        yield copy
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the pump sees EOF and stops
        thread.join(timeout=5)
        os.close(read_end)
        os.close(saved)


def _load(options: LoadOptions, emit: Callable[[Message], None]) -> tuple[Engine, LoadedInfo]:
    """Load the model with the llama.cpp build on PYTHONPATH. BackendUnusable when that build cannot do the backend
    the server chose; OutOfMemory when llama.cpp could not allocate a buffer; the placement comes from llama.cpp's
    own load report. options.n_ctx is the context of all options.n_seq_max sequences together."""
    started = time.perf_counter_ns()
    try:
        # Imported here, not at the top: a build whose libraries cannot load (no driver, wrong CUDA) must turn into
        # a reason on the socket and exit code 78, not an ImportError before the server hears anything.
        from offload.runner import llamacpp
        from offload.runner.adapters import load_adapters
        from offload.runner.engine import Engine
    except (OSError, ImportError, RuntimeError) as exc:
        raise BackendUnusable(f"llama.cpp did not load: {exc}") from exc
    threads = options.n_threads or physical_cores()
    n_seq_max = max(1, options.n_seq_max)
    invariant = options.batch_invariant
    if invariant:
        # ggml-cpu's tiled K-quant matmul takes over from 8 rows on, so a row's sum depends on how many rows are
        # beside it; off, every row goes through the same dot product. Read once, at the first matmul.
        os.environ["GGML_CPU_TILED_MM"] = "0"
    failure: RunnerStartFailed | None = None
    with _captured_stderr() as load_log:
        llamacpp.C.llama_backend_init()
        devices = llamacpp.ggml_devices()
        gpus = [d for d in devices if d.is_gpu]
        if options.backend != "cpu" and not gpus:
            raise BackendUnusable(
                f"this llama.cpp build sees no {options.backend} device (it lists: "
                f"{', '.join(d.name for d in devices) or 'nothing'})"
            )
        # A failure is kept, not raised, until the log is complete: why it failed is in the log.
        name = Path(options.model_path).name
        doing = f"loading {name}"
        try:
            model = llamacpp.Model(
                options.model_path,
                options.n_gpu_layers if gpus else 0,
                tensor_split=options.tensor_split,
                repack=not invariant,
            )
            doing = f"loading the LoRA adapters of {name}"
            model.adapters = load_adapters(model, options.lora_adapters)
            n_ctx = _total_context(options.n_ctx, n_seq_max, model.facts.n_ctx_train)
            # Every layer, the output layer too (n_layer + 1), on a GPU: the GPU evaluates while the host samples.
            full_offload = bool(gpus) and options.n_gpu_layers >= model.facts.n_layer + 1 and options.n_ctx > 0
            lanes = pipeline_lanes(n_seq_max, full_offload=full_offload, enabled=options.pipeline)
            contexts = []
            for slots in lanes:
                lane_ctx = n_ctx * slots // n_seq_max
                doing = f"creating a context of {lane_ctx} tokens for {name}"
                contexts.append(
                    llamacpp.Context(
                        model,
                        n_ctx=lane_ctx,
                        n_batch=options.n_batch,
                        n_threads=threads,
                        n_seq_max=slots,
                        flash_attn=not invariant,
                    )
                )
        except ValueError as exc:
            failure = RunnerStartFailed(f"bad load options while {doing}: {exc}")
        except RunnerStartFailed as exc:
            failure = exc
    if failure is not None:
        raise _explained(failure, load_log.getvalue(), doing) from failure
    report = parse_load_log(load_log.getvalue())
    facts = model.facts
    backend = options.backend if report.layers_on_gpu else "cpu"
    context, *pipeline = contexts
    info = LoadedInfo(
        n_ctx=context.n_ctx_seq,
        n_ctx_train=facts.n_ctx_train,
        n_layer=facts.n_layer,
        n_embd=facts.n_embd,
        n_vocab=facts.n_vocab,
        model_size=facts.size,
        load_duration=time.perf_counter_ns() - started,
        supports_gpu_offload=facts.supports_gpu_offload,
        layers_on_gpu=report.layers_on_gpu,
        backend=backend,
        devices=tuple(d.name for d in devices),
        placement=report.to_json(),
        gpu_memory=process_gpu_memory(os.getpid()) if gpus else None,
        n_seq_max=n_seq_max,
    )
    engine = Engine(
        model,
        context,
        emit,
        n_threads=threads,
        invariant=invariant,
        sampling_threads=threads,
        pipeline=pipeline[0] if pipeline else None,
    )
    if pipeline:
        log.info("runner: %d slots in two pipelined contexts of %s", n_seq_max, " + ".join(map(str, lanes)))
    return engine, info


def _total_context(n_ctx: int, n_seq_max: int, n_ctx_train: int) -> int:
    """The n_ctx to create the context with: each sequence's share capped at what the model was trained on
    (0 stays 0: llama.cpp's default, the trained context)."""
    if n_ctx <= 0:
        return n_ctx
    per_sequence = max(1, n_ctx // n_seq_max)
    if n_ctx_train > 0:
        per_sequence = min(per_sequence, n_ctx_train)
    return per_sequence * n_seq_max


def _explained(failure: RunnerStartFailed, load_log: str, doing: str) -> RunnerStartFailed:
    """OutOfMemory when the load log shows a failed allocation, else the failure as it was. `doing` is what failed
    ("loading x.gguf")."""
    found = parse_oom(load_log)
    if found is not None:
        device, requested = found
        return OutOfMemory(
            f"llama.cpp could not allocate {_size(requested)} on {device} (out of memory) while {doing}",
            device=device,
            requested=requested,
        )
    if allocation_failed(load_log):
        return OutOfMemory(f"llama.cpp could not allocate a buffer (out of memory) while {doing}")
    return failure


def _size(n_bytes: int) -> str:
    if n_bytes >= 1 << 30:
        return f"{n_bytes / (1 << 30):.1f} GiB"
    return f"{n_bytes / (1 << 20):.1f} MiB"


def serve(channel: SyncChannel) -> int:
    first = channel.receive()
    if first is None:
        return 0
    if first.get("op") != "load":
        channel.send({"op": "error", "code": "runner_error", "message": "expected a load message first"})
        return EXIT_INTERNAL
    try:
        engine, info = _load(from_wire(LoadOptions, first["options"]), channel.send)
    except BackendUnusable as exc:
        log.error("backend unusable: %s", exc.message)
        channel.send({"op": "error", "code": exc.code, "message": exc.message})
        return EXIT_UNUSABLE
    except OutOfMemory as exc:
        # Exit 1, not 78: the backend works and a smaller plan on it may fit.
        log.error("out of memory: %s", exc.message)
        channel.send(
            {"op": "error", "code": exc.code, "message": exc.message, "device": exc.device, "requested": exc.requested}
        )
        return EXIT_LOAD_FAILED
    except OffloadError as exc:
        channel.send({"op": "error", "code": exc.code, "message": exc.message})
        return EXIT_LOAD_FAILED
    channel.send({"op": "loaded", "info": to_wire(info)})

    inbox: queue.Queue[Message | None] = queue.Queue()
    busy = _Busy()
    threading.Thread(target=_reader, args=(channel, inbox, busy), name="runner-reader", daemon=True).start()
    try:
        while True:
            # Block only when there is nothing to decode; otherwise take what arrived and step.
            try:
                message = inbox.get(block=not engine.has_work())
            except queue.Empty:
                with busy.step():
                    engine.step()
                continue
            if message is None or message["op"] == "shutdown":
                return 0
            with busy.step():
                _handle(engine, channel, message)
    finally:
        engine.close()


def _handle(engine: Engine, channel: SyncChannel, message: Message) -> None:
    op, request_id = message["op"], str(message.get("id", ""))
    try:
        if op == "generate":
            engine.submit(request_id, from_wire(GenerateRequest, message["request"]))
        elif op == "cancel":
            engine.cancel(request_id)
        elif op == "embed":
            result = engine.embed(from_wire(EmbedRequest, message["request"]))
            channel.send({"op": "embeddings", "id": request_id, "result": to_wire(result)})
        elif op == "tokenize":
            channel.send({"op": "tokens", "id": request_id, "tokens": engine.tokenize(str(message["text"]))})
        else:
            channel.send({"op": "error", "id": request_id, "code": "runner_error", "message": f"unknown op {op}"})
    except OffloadError as exc:
        channel.send({"op": "error", "id": request_id, "code": exc.code, "message": exc.message})
    except (KeyError, TypeError, ValueError) as exc:
        channel.send({"op": "error", "id": request_id, "code": "runner_error", "message": f"bad {op}: {exc}"})


_PR_SET_PDEATHSIG = 1


def _die_with_the_server() -> None:
    """Linux: be killed when the server process dies, however it dies. A runner also exits when its socket closes,
    but not while it is stopped (SIGSTOP) or stuck inside llama.cpp: no orphan may outlive the server."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the server died before the request took effect
        os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offload.runner", description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="inherited socket to talk to the server over")
    args = parser.parse_args(argv)
    _die_with_the_server()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="runner %(levelname)s %(message)s")
    sock = socket.socket(fileno=args.fd)
    channel = SyncChannel(sock)
    try:
        return serve(channel)
    except Exception:
        log.exception("runner failed")
        return EXIT_INTERNAL
    finally:
        channel.close()


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: llama.cpp's static destructors have crashed at exit on some builds.
    os._exit(code)
