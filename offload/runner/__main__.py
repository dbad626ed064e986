"""`python -m offload.runner --fd N`: host one model through llama.cpp, talking over the inherited socket N.

Threads: a reader thread turns frames into a queue; the main thread owns llama.cpp and runs the engine loop,
taking control messages between steps. Exit codes: 0 after shutdown or when the server went away,
70 on an internal error, 78 when the model could not be loaded (the backend is unusable).
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable

# Nothing imported here loads numpy before offload.runner.llamacpp loads libllama: on the GPU machine the reverse
# order crashed inside llama_model_load_from_file (../shared/gpu/README.md).
from offload.errors import OffloadError
from offload.generation import EmbedRequest, GenerateRequest, from_wire, to_wire
from offload.hardware.cpu import physical_cores
from offload.runner import llamacpp
from offload.runner.engine import Engine
from offload.runner.protocol import LoadedInfo, LoadOptions, Message, SyncChannel

EXIT_INTERNAL = 70
EXIT_UNUSABLE = 78
log = logging.getLogger("offload.runner")


def _reader(channel: SyncChannel, inbox: queue.Queue[Message | None]) -> None:
    try:
        while (message := channel.receive()) is not None:
            inbox.put(message)
    except (OSError, ValueError) as exc:
        log.error("runner: reading from the server failed: %s", exc)
    inbox.put(None)  # the server went away


def _load(options: LoadOptions, emit: Callable[[Message], None]) -> tuple[Engine, LoadedInfo]:
    started = time.perf_counter_ns()
    threads = options.n_threads or physical_cores()
    model = llamacpp.Model(options.model_path, options.n_gpu_layers)
    n_ctx = min(options.n_ctx, model.facts.n_ctx_train) if model.facts.n_ctx_train > 0 else options.n_ctx
    context = llamacpp.Context(
        model, n_ctx=n_ctx, n_batch=options.n_batch, n_threads=threads, n_seq_max=options.n_seq_max
    )
    facts = model.facts
    on_gpu = min(options.n_gpu_layers, facts.n_layer + 1) if facts.supports_gpu_offload else 0
    info = LoadedInfo(
        n_ctx=context.n_ctx,
        n_ctx_train=facts.n_ctx_train,
        n_layer=facts.n_layer,
        n_embd=facts.n_embd,
        n_vocab=facts.n_vocab,
        model_size=facts.size,
        load_duration=time.perf_counter_ns() - started,
        supports_gpu_offload=facts.supports_gpu_offload,
        layers_on_gpu=on_gpu,
        backend="cpu" if on_gpu == 0 else "gpu",
        devices=("cpu",),
    )
    return Engine(model, context, emit, n_threads=threads), info


def serve(channel: SyncChannel) -> int:
    first = channel.receive()
    if first is None:
        return 0
    if first.get("op") != "load":
        channel.send({"op": "error", "code": "runner_error", "message": "expected a load message first"})
        return EXIT_INTERNAL
    try:
        engine, info = _load(from_wire(LoadOptions, first["options"]), channel.send)
    except OffloadError as exc:
        channel.send({"op": "error", "code": exc.code, "message": exc.message})
        return EXIT_UNUSABLE
    channel.send({"op": "loaded", "info": to_wire(info)})

    inbox: queue.Queue[Message | None] = queue.Queue()
    threading.Thread(target=_reader, args=(channel, inbox), name="runner-reader", daemon=True).start()
    try:
        while True:
            # Block only when there is nothing to decode; otherwise take what arrived and step.
            try:
                message = inbox.get(block=not engine.has_work())
            except queue.Empty:
                engine.step()
                continue
            if message is None or message["op"] == "shutdown":
                return 0
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offload.runner", description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="inherited socket to talk to the server over")
    args = parser.parse_args(argv)
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
