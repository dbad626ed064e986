"""The runner socket protocol over a real socketpair: SyncChannel (the runner's threads) <-> asyncio (the server)."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

import pytest

from offload.generation import (
    Chunk,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    SamplingOptions,
    from_wire,
    to_wire,
)
from offload.runner import protocol
from offload.runner.protocol import (
    MAX_FRAME,
    LoadedInfo,
    LoadOptions,
    Message,
    ProtocolError,
    SyncChannel,
    encode,
    read_message,
)

JOIN_TIMEOUT = 10.0  # generous: only a hang (the old deadlock) gets near it


def messages(n: int) -> list[Message]:
    return [
        {"op": "chunk", "id": str(i), "chunk": {"text": "x" * (i * 37 % 5000) + "漢😀"}, "n": i} for i in range(n)
    ]


def read_all(sock: socket.socket) -> list[Message | None]:
    """Every message the asyncio side reads from `sock` until end of stream (None included)."""

    async def main() -> list[Message | None]:
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        got: list[Message | None] = []
        while True:
            message = await read_message(reader)
            got.append(message)
            if message is None:
                break
        writer.close()
        return got

    return asyncio.run(main())


def read_one_raw(data: bytes) -> Message | None:
    """What read_message makes of `data` followed by end of stream."""
    ours, theirs = socket.socketpair()
    theirs.sendall(data)
    theirs.close()

    async def main() -> Message | None:
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        try:
            return await read_message(reader)
        finally:
            writer.close()

    return asyncio.run(main())


def receive_one_raw(data: bytes) -> Message | None:
    """What SyncChannel.receive makes of `data` followed by end of stream."""
    ours, theirs = socket.socketpair()
    theirs.sendall(data)
    theirs.close()
    channel = SyncChannel(ours)
    try:
        return channel.receive()
    finally:
        channel.close()


def test_sync_sender_to_async_reader_many_frames() -> None:
    server_end, runner_end = socket.socketpair()
    sent = messages(300)
    channel = SyncChannel(runner_end)

    def runner() -> None:
        for message in sent:
            channel.send(message)
        channel.close()

    thread = threading.Thread(target=runner)
    thread.start()
    got = read_all(server_end)
    thread.join(JOIN_TIMEOUT)
    assert not thread.is_alive()
    assert got == [*sent, None]


def test_concurrent_sync_senders_do_not_interleave_frames() -> None:
    server_end, runner_end = socket.socketpair()
    channel = SyncChannel(runner_end)
    per_thread = 200

    def sender(tag: int) -> None:
        for i in range(per_thread):
            channel.send({"op": "chunk", "id": f"{tag}-{i}", "pad": "p" * (i * 53 % 3000)})

    threads = [threading.Thread(target=sender, args=(tag,)) for tag in range(4)]
    for thread in threads:
        thread.start()

    def closer() -> None:
        for thread in threads:
            thread.join(JOIN_TIMEOUT)
        channel.close()

    closing = threading.Thread(target=closer)
    closing.start()
    got = read_all(server_end)
    closing.join(JOIN_TIMEOUT)
    assert got[-1] is None
    ids = [m["id"] for m in got if m is not None]
    assert len(ids) == 4 * per_thread
    for tag in range(4):
        assert [i for i in ids if i.startswith(f"{tag}-")] == [f"{tag}-{i}" for i in range(per_thread)]


def test_async_writer_to_sync_receiver_many_frames() -> None:
    server_end, runner_end = socket.socketpair()
    sent = messages(300)
    channel = SyncChannel(runner_end)
    got: list[Message | None] = []

    def runner() -> None:
        while True:
            message = channel.receive()
            got.append(message)
            if message is None:
                break

    thread = threading.Thread(target=runner)
    thread.start()

    async def server() -> None:
        _, writer = await asyncio.open_unix_connection(sock=server_end)
        for message in sent:
            writer.write(encode(message))
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    asyncio.run(server())
    thread.join(JOIN_TIMEOUT)
    assert not thread.is_alive()
    channel.close()
    assert got == [*sent, None]


HEADER = struct.Struct(">I")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"", None, id="eof-at-once"),
        pytest.param(b"\x00\x00", None, id="eof-in-header"),
        pytest.param(HEADER.pack(10) + b'{"op"', None, id="eof-in-body"),
        pytest.param(encode({"op": "shutdown"}), {"op": "shutdown"}, id="one-frame"),
    ],
)
@pytest.mark.parametrize("reader", [read_one_raw, receive_one_raw], ids=["async", "sync"])
def test_end_of_stream(
    reader: Callable[[bytes], Message | None], data: bytes, expected: Message | None
) -> None:
    assert reader(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(HEADER.pack(MAX_FRAME + 1), id="oversize-header"),
        pytest.param(HEADER.pack(0xFFFFFFFF) + b"xx", id="max-header"),
        pytest.param(HEADER.pack(8) + b"not json", id="not-json"),
        pytest.param(HEADER.pack(2) + b"\xff\xfe", id="not-utf8"),
        pytest.param(HEADER.pack(2) + b"[]", id="not-an-object"),
        pytest.param(HEADER.pack(8) + b'{"x": 1}', id="no-op"),
        pytest.param(HEADER.pack(8) + b'{"op": 1}', id="op-not-a-string"),
    ],
)
@pytest.mark.parametrize("reader", [read_one_raw, receive_one_raw], ids=["async", "sync"])
def test_bad_frames(reader: Callable[[bytes], Message | None], data: bytes) -> None:
    with pytest.raises(ProtocolError):
        reader(data)


def test_encode_refuses_oversize(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "MAX_FRAME", 32)
    assert len(encode({"op": "x"})) < 32
    with pytest.raises(ProtocolError):
        encode({"op": "x", "pad": "y" * 64})


def test_encode_frame_layout() -> None:
    frame = encode({"op": "tokens", "text": "é"})
    (length,) = HEADER.unpack(frame[:4])
    assert length == len(frame) - 4
    assert json.loads(frame[4:].decode()) == {"op": "tokens", "text": "é"}


def test_close_wakes_a_thread_blocked_in_receive() -> None:
    # The runner's reader thread sits in receive() while the main thread shuts down; close() used to deadlock.
    server_end, runner_end = socket.socketpair()
    channel = SyncChannel(runner_end)
    outcome: list[object] = []
    started = threading.Event()

    def reader() -> None:
        started.set()
        try:
            outcome.append(channel.receive())
        except (OSError, ValueError) as exc:
            outcome.append(exc)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    started.wait(JOIN_TIMEOUT)
    closer = threading.Thread(target=channel.close, daemon=True)
    closer.start()
    closer.join(JOIN_TIMEOUT)
    thread.join(JOIN_TIMEOUT)
    server_end.close()
    assert not closer.is_alive(), "close() hung"
    assert not thread.is_alive(), "receive() was not woken by close()"
    assert len(outcome) == 1
    assert outcome[0] is None or isinstance(outcome[0], OSError | ValueError)


def test_send_after_peer_closed_raises_oserror() -> None:
    server_end, runner_end = socket.socketpair()
    server_end.close()
    channel = SyncChannel(runner_end)
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        channel.send({"op": "chunk", "pad": "z" * 1_000_000})
    channel.close()


WIRE_CASES: list[Any] = [
    GenerateRequest(model="m", prompt="hi"),
    GenerateRequest(
        model="gemma3:270m",
        prompt="<start_of_turn>user\n漢字😀<end_of_turn>",
        sampling=SamplingOptions(temperature=0.0, top_k=1, seed=42, repeat_last_n=-1),
        num_predict=5,
        stop=("\n\n", "</s>"),
        context=(2, 105, 7),
        return_context=True,
        num_ctx=2048,
        keep_alive=1.5,
    ),
    Chunk(text="partial"),
    Chunk(
        text="",
        done=True,
        done_reason="length",
        prompt_eval_count=3,
        prompt_eval_duration=10,
        eval_count=5,
        eval_duration=20,
        context=(1, 2, 3),
        load_duration=7,
    ),
    EmbedRequest(model="m", inputs=("a", "b"), truncate=False, num_ctx=512),
    EmbedResult(embeddings=((0.5, -1.0), (0.25, 2.0)), prompt_eval_count=4),
    LoadOptions(model_path="/tmp/x.gguf", n_ctx=4096, n_batch=256, n_threads=4, n_gpu_layers=0),  # noqa: S108
    LoadOptions(
        model_path="/tmp/x.gguf",  # noqa: S108
        n_ctx=16384,
        n_gpu_layers=99,
        n_seq_max=4,
        backend="cuda",
        tensor_split=(0.75, 0.25),
    ),
    LoadedInfo(
        n_ctx=4096,
        n_ctx_train=32768,
        n_layer=18,
        n_embd=640,
        n_vocab=262144,
        model_size=1000,
        load_duration=5,
        supports_gpu_offload=False,
        layers_on_gpu=0,
        backend="cpu",
        devices=("cpu",),
        n_seq_max=4,
    ),
]


@pytest.mark.parametrize("value", WIRE_CASES, ids=lambda v: type(v).__name__)
def test_wire_round_trip_through_json(value: Any) -> None:
    data = json.loads(json.dumps(to_wire(value)))
    assert from_wire(type(value), data) == value


def test_wire_round_trip_through_the_socket() -> None:
    server_end, runner_end = socket.socketpair()
    channel = SyncChannel(runner_end)
    request = WIRE_CASES[1]
    channel.send({"op": "generate", "id": "1", "request": to_wire(request)})
    channel.close()
    got = read_all(server_end)
    assert got[0] is not None
    assert from_wire(GenerateRequest, got[0]["request"]) == request


def test_from_wire_drops_unknown_keys() -> None:
    data = {**to_wire(Chunk(text="x", done=True)), "from_a_newer_runner": 1}
    assert from_wire(Chunk, data) == Chunk(text="x", done=True)


def test_tensor_split_comes_back_a_tuple_of_floats() -> None:
    # JSON has lists, not tuples: from_wire must rebuild the tuple, or the frozen options would not compare or hash.
    options = LoadOptions(model_path="m.gguf", n_ctx=8192, tensor_split=(0.6, 0.4))
    data = json.loads(json.dumps(to_wire(options)))
    assert data["tensor_split"] == [0.6, 0.4]
    back = from_wire(LoadOptions, data)
    assert back.tensor_split == (0.6, 0.4)
    assert type(back.tensor_split) is tuple
    assert hash(back) == hash(options)
    assert from_wire(LoadOptions, {"model_path": "m.gguf", "n_ctx": 1}).tensor_split == ()
