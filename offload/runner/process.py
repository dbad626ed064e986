"""The server's handle on one runner subprocess.

State machine: stopped -> starting -> ready -> stopping -> stopped. `start()` spawns `python -m offload.runner`,
sends `load`, and waits for `loaded` while also watching for the process to exit, so a runner that dies while
loading fails the start at once instead of after a timeout. Once ready, one reader task routes messages to the
requests waiting on them; when the socket closes (the runner exited, crashed or was killed) every open request
gets RunnerCrashed and `has_exited()` turns true, so the scheduler starts a fresh runner for the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import os
import signal
import socket
import sys
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from offload.errors import (
    BackendUnusable,
    OffloadError,
    OutOfMemory,
    RunnerCrashed,
    RunnerError,
    RunnerStartFailed,
    from_code,
)
from offload.generation import Chunk, EmbedRequest, EmbedResult, GenerateRequest, from_wire, to_wire
from offload.runner.protocol import LoadedInfo, LoadOptions, Message, encode, read_message

log = logging.getLogger("offload.runner")
_STDERR_TAIL = 40
EXIT_BACKEND_UNUSABLE = 78  # the runner's exit code when its llama.cpp build cannot run the chosen backend
_SIGNALS = {int(s) for s in signal.Signals}
_STOP_GRACE = 5.0
_REPLY_AFTER_EXIT = 5.0  # s; only a child of the runner still holding its socket could make the read wait at all


def load_error(message: Message) -> OffloadError:
    """The exception for the runner's {"op":"error"} reply to `load`. An out_of_memory reply becomes OutOfMemory with
    its "device" and "requested"; a field that is missing or of the wrong type is None."""
    code, text = str(message.get("code")), str(message.get("message"))
    if code != OutOfMemory.code:
        return from_code(code, text)
    device, requested = message.get("device"), message.get("requested")
    return OutOfMemory(
        text,
        device=device if isinstance(device, str) else None,
        requested=requested if isinstance(requested, int) and not isinstance(requested, bool) else None,
    )


class State(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"


class RunnerProcess:
    def __init__(self, options: LoadOptions, *, name: str = "", library_path: Path | None = None) -> None:
        self.options = options
        self.name = name or options.model_path
        self.library_path = library_path  # a backend variant's directory, put first on the runner's PYTHONPATH
        self.state = State.STOPPED
        self.info: LoadedInfo | None = None
        self.pid: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._pending: dict[str, asyncio.Queue[Message]] = {}
        self._ids = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []
        self._stderr: deque[str] = deque(maxlen=_STDERR_TAIL)
        self._exited = asyncio.Event()

    # ---- lifecycle -----------------------------------------------------------------------------------------
    async def start(self, timeout: float) -> LoadedInfo:
        if self.state is not State.STOPPED:
            raise RunnerStartFailed(f"runner for {self.name} is {self.state.value}")
        self.state = State.STARTING
        parent, child = socket.socketpair()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "offload.runner", "--fd", str(child.fileno()),
                pass_fds=(child.fileno(),),
                env=self._environment(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            self.state = State.STOPPED
            parent.close()
            raise RunnerStartFailed(f"could not start a runner: {exc}") from exc
        finally:
            child.close()
        self.pid = self._proc.pid
        self._reader, self._writer = await asyncio.open_unix_connection(sock=parent)
        self._tasks.append(asyncio.create_task(self._drain_stderr(), name=f"runner-stderr-{self.pid}"))
        self._tasks.append(asyncio.create_task(self._watch_exit(), name=f"runner-exit-{self.pid}"))
        try:
            self._send({"op": "load", "options": to_wire(self.options)})
            info = await asyncio.wait_for(self._await_loaded(), timeout)
        except TimeoutError as exc:
            await self.close()
            raise RunnerStartFailed(f"runner for {self.name} did not load within {timeout:.0f} s") from exc
        except OffloadError:
            await self.close()
            raise
        self.info = info
        self.state = State.READY
        self._tasks.append(asyncio.create_task(self._route(), name=f"runner-route-{self.pid}"))
        return info

    def _environment(self) -> dict[str, str]:
        """The runner inherits the server's environment; a variant's llama_cpp package shadows the venv's, and
        CUDA numbers devices in PCI order as NVML (and so offload's device ids) does, unless the user chose."""
        env = dict(os.environ)
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        if self.library_path is not None:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.library_path), env.get("PYTHONPATH", "")) if p)
        return env

    async def _await_loaded(self) -> LoadedInfo:
        assert self._reader is not None
        read = asyncio.ensure_future(read_message(self._reader))
        exited = asyncio.ensure_future(self._exited.wait())
        await asyncio.wait({read, exited}, return_when=asyncio.FIRST_COMPLETED)
        exited.cancel()
        # A runner writes its reply before it exits, and the socket's last open end is its own: once it is gone,
        # the read ends at once, with that reply (an out_of_memory error, say) or at the end of the stream.
        try:
            message = await asyncio.wait_for(read, _REPLY_AFTER_EXIT)
        except TimeoutError:
            message = None
        if message is None:
            await self._exited.wait()
            code = self._proc.returncode if self._proc is not None else None
            if code is not None and (code < 0 or code == EXIT_BACKEND_UNUSABLE):
                # Killed by a signal before it could report: loading the backend's libraries or initialising the
                # device crashed it (a truncated library gives SIGBUS, a bad driver SIGSEGV). That is the backend's
                # failure, so the next backend is tried, loudly, as for exit code 78.
                raise BackendUnusable(self._death_note("crashed while loading its backend"))
            raise RunnerStartFailed(self._death_note("exited while loading"))
        if message["op"] == "error":
            raise load_error(message)
        if message["op"] != "loaded":
            raise RunnerStartFailed(f"runner sent {message['op']!r} instead of loaded")
        return from_wire(LoadedInfo, message["info"])

    def has_exited(self) -> bool:
        return self._exited.is_set()

    async def close(self) -> None:
        """Ask the runner to stop, then make sure it did. Idempotent."""
        if self.state is State.STOPPED and self._proc is None:
            return
        self.state = State.STOPPING
        if self._proc is not None and not self.has_exited():
            with contextlib.suppress(OSError, RuntimeError):
                self._send({"op": "shutdown"})
            try:
                await asyncio.wait_for(self._exited.wait(), _STOP_GRACE)
            except TimeoutError:
                log.warning("runner %s (pid %s) ignored shutdown; killing it", self.name, self.pid)
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
                await self._exited.wait()
        if self._writer is not None:
            self._writer.close()
        for task in self._tasks:
            task.cancel()
        self._fail_pending(RunnerCrashed(f"runner for {self.name} was stopped"))
        self.state = State.STOPPED
        self._proc = None

    # ---- requests ------------------------------------------------------------------------------------------
    async def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        """Stream chunks; closing this generator early cancels the request in the runner."""
        request_id, replies = self._open()
        finished = False
        try:
            self._send({"op": "generate", "id": request_id, "request": to_wire(request)})
            while True:
                message = await replies.get()
                chunk = self._expect(message, "chunk")["chunk"]
                if chunk.get("done"):
                    finished = True
                    yield from_wire(Chunk, chunk)
                    return
                yield Chunk(text=str(chunk.get("text", "")))
        finally:
            self._pending.pop(request_id, None)
            if not finished and not self.has_exited():
                with contextlib.suppress(OSError, RuntimeError):
                    self._send({"op": "cancel", "id": request_id})

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        message = await self._call({"op": "embed", "request": to_wire(request)}, "embeddings")
        return from_wire(EmbedResult, message["result"])

    async def tokenize(self, text: str) -> list[int]:
        message = await self._call({"op": "tokenize", "text": text}, "tokens")
        return [int(t) for t in message["tokens"]]

    async def ping(self, timeout: float) -> float:
        """Seconds the runner's loop has been inside its current step (0 between steps), as the runner reports it.
        RunnerCrashed when it is not running; RunnerError when it does not answer within `timeout` (stopped,
        or too starved to answer)."""
        try:
            message = await asyncio.wait_for(self._call({"op": "ping"}, "pong"), timeout)
        except TimeoutError:
            raise RunnerError(f"runner for {self.name} did not answer within {timeout:.0f} s") from None
        busy = message.get("busy")
        return float(busy) if isinstance(busy, int | float) and not isinstance(busy, bool) else 0.0

    async def _call(self, message: Message, reply_op: str) -> Message:
        request_id, replies = self._open()
        try:
            self._send({**message, "id": request_id})
            return self._expect(await replies.get(), reply_op)
        finally:
            self._pending.pop(request_id, None)

    def _open(self) -> tuple[str, asyncio.Queue[Message]]:
        if self.state is not State.READY or self.has_exited():
            raise RunnerCrashed(self._death_note("is not running"))
        request_id = str(next(self._ids))
        replies: asyncio.Queue[Message] = asyncio.Queue()
        self._pending[request_id] = replies
        return request_id, replies

    def _expect(self, message: Message, op: str) -> Message:
        if message["op"] == op:
            return message
        if message["op"] == "crashed":
            raise RunnerCrashed(self._death_note("died"))
        if message["op"] == "error":
            raise from_code(str(message.get("code")), str(message.get("message")))
        raise RunnerCrashed(f"runner sent {message['op']!r} where {op!r} was expected")

    def _send(self, message: Message) -> None:
        if self._writer is None or self._writer.is_closing():
            raise RunnerCrashed(self._death_note("is not running"))
        self._writer.write(encode(message))

    # ---- background tasks ----------------------------------------------------------------------------------
    async def _route(self) -> None:
        assert self._reader is not None
        try:
            while (message := await read_message(self._reader)) is not None:
                replies = self._pending.get(str(message.get("id", "")))
                if replies is not None:
                    replies.put_nowait(message)
        except OffloadError as exc:
            log.error("runner %s sent a bad frame: %s", self.name, exc)
        except Exception as exc:  # any protocol failure ends this runner the same way
            log.error("runner %s: %s", self.name, exc)
        # The socket closed: the process is gone or going. Wake everyone waiting on it.
        await self._exited.wait()
        for replies in self._pending.values():
            replies.put_nowait({"op": "crashed"})

    async def _drain_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        while line := await self._proc.stderr.readline():
            text = line.decode(errors="replace").rstrip()
            self._stderr.append(text)
            log.debug("runner %s: %s", self.pid, text)

    async def _watch_exit(self) -> None:
        assert self._proc is not None
        code = await self._proc.wait()
        if self.state is not State.STOPPING:
            log.error("runner for %s (pid %s) exited with %s", self.name, self.pid, code)
        self._exited.set()
        for replies in self._pending.values():
            replies.put_nowait({"op": "crashed"})

    def _fail_pending(self, error: OffloadError) -> None:
        for replies in self._pending.values():
            replies.put_nowait({"op": "error", "code": error.code, "message": error.message})

    def _death_note(self, what: str) -> str:
        """The client's error message. The runner's last words go to the log only: they hold paths and tracebacks."""
        code = self._proc.returncode if self._proc is not None else None
        if code is None:
            detail = ""
        elif code < 0:
            name = signal.Signals(-code).name if -code in _SIGNALS else str(-code)
            detail = f" (killed by signal {name})"
        else:
            detail = f" (exit code {code})"
        if self._stderr:
            log.error("runner for %s %s%s; its last output:\n%s", self.name, what, detail, "\n".join(self._stderr))
        return f"runner for {self.name} {what}{detail}"

    def describe(self) -> dict[str, Any]:
        return {"pid": self.pid, "state": self.state.value}
