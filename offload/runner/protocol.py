"""Messages between the API server and a runner subprocess.

Transport: one end of a `socketpair()` handed to the child by file descriptor (no path, no port). Each frame is a
4-byte big-endian length followed by that many bytes of UTF-8 JSON: an object with an `op` field.

Server -> runner                                  Runner -> server
  {"op":"load", "options": LoadOptions}             {"op":"loaded", "info": LoadedInfo} | {"op":"error", ...}
  {"op":"generate", "id", "request": GenerateRequest} {"op":"chunk", "id", "chunk": Chunk}  (last has done=true)
  {"op":"embed", "id", "request": EmbedRequest}     {"op":"embeddings", "id", "result": EmbedResult}
  {"op":"tokenize", "id", "text"}                   {"op":"tokens", "id", "tokens": [...]}
  {"op":"cancel", "id"}                             (the request ends with a chunk done_reason="cancel")
  {"op":"ping", "id"}                               {"op":"pong", "id", "busy": seconds in the current step}
  {"op":"shutdown"}                                 (the runner exits 0)
Any request may instead end with {"op":"error", "id", "code", "message"}; `code` is an errors.py code.
The error reply to `load` with code "out_of_memory" also carries "device" (llama.cpp's name, "CUDA0") and
"requested" (bytes), each null where llama.cpp's log did not say; the runner then exits 1, as for any load failure.
A ping is answered by the runner's reader thread, not its decode loop, so it answers during a long step too: a
runner that does not answer is stopped or starved, one whose `busy` keeps growing is stuck inside llama.cpp.
A runner that dies simply closes the socket: the server turns that into RunnerCrashed for every open request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any

MAX_FRAME = 256 * 1024 * 1024  # embeddings of many long inputs are the largest messages
_HEADER = struct.Struct(">I")

Message = dict[str, Any]


class ProtocolError(Exception):
    """The peer sent something that is not a frame of this protocol."""


@dataclass(frozen=True, slots=True)
class LoadOptions:
    model_path: str
    n_ctx: int
    n_batch: int = 512
    n_threads: int = 0  # 0: the runner decides
    n_gpu_layers: int = 0
    # Sequences decoded in parallel. n_ctx is all of them together: each gets n_ctx / n_seq_max.
    n_seq_max: int = 1
    backend: str = "cpu"  # what the server chose; the runner exits 78 if its llama.cpp build cannot do it
    # Fraction of the offloaded model per GPU, in llama.cpp's device order; empty: llama.cpp's own split.
    tensor_split: tuple[float, ...] = ()
    # Same output for a request whatever else is batched with it (config batch_invariant): see engine.py.
    batch_invariant: bool = False
    # LoRA adapters (GGUF path, scale), applied in this order to every context after the model loads; one that
    # llama.cpp cannot load fails the load (runner/adapters.py).
    lora_adapters: tuple[tuple[str, float], ...] = ()
    # Two contexts over the weights, the GPU evaluating one while the host samples the other (engine.py), where
    # planner.pipeline_lanes allows it (every layer on a GPU, an even number of enough slots).
    pipeline: bool = False


@dataclass(frozen=True, slots=True)
class LoadedInfo:
    n_ctx: int  # per sequence: the context one request can use
    n_ctx_train: int
    n_layer: int
    n_embd: int
    n_vocab: int
    model_size: int  # bytes of weights, as llama.cpp counts them
    load_duration: int  # ns
    supports_gpu_offload: bool
    layers_on_gpu: int
    backend: str
    devices: tuple[str, ...] = ()
    placement: dict[str, Any] | None = None  # placement.LoadReport.to_json(): layers and buffers per device
    gpu_memory: int | None = None  # this process's GPU memory from NVML, bytes, where NVML is available
    n_seq_max: int = 1  # sequences the context holds (parallel requests), each with n_ctx


def encode(message: Message) -> bytes:
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(len(body)) + body


def _decode(body: bytes) -> Message:
    try:
        message = json.loads(body)
    except ValueError as exc:
        raise ProtocolError("frame is not JSON") from exc
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise ProtocolError("frame is not an object with an op")
    return message


async def read_message(reader: asyncio.StreamReader) -> Message | None:
    """The next message, or None at end of stream (the peer closed or died)."""
    try:
        header = await reader.readexactly(_HEADER.size)
        (length,) = _HEADER.unpack(header)
        if length > MAX_FRAME:
            raise ProtocolError(f"frame of {length} bytes exceeds {MAX_FRAME}")
        body = await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return _decode(body)


class SyncChannel:
    """The runner's side: blocking reads from one thread, writes from any thread."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._file = sock.makefile("rb")
        self._write_lock = threading.Lock()

    def send(self, message: Message) -> None:
        data = encode(message)
        with self._write_lock:
            self._sock.sendall(data)

    def receive(self) -> Message | None:
        header = self._file.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return None
        (length,) = _HEADER.unpack(header)
        if length > MAX_FRAME:
            raise ProtocolError(f"frame of {length} bytes exceeds {MAX_FRAME}")
        body = self._file.read(length)
        if len(body) < length:
            return None
        return _decode(body)

    def close(self) -> None:
        # shutdown() first: it wakes a thread blocked in receive(); closing the buffered file under that thread
        # would wait on its lock forever.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
