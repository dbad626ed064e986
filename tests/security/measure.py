"""What one `read_gguf` call cost: bytes read, memory allocated, time; for the bounds the security suite asserts.

Bytes read come from the kernel's count of bytes passed to read() by this process (/proc/self/io "rchar"),
so they include every buffer and window the reader fills, not just what it parses; `bytes_read` is None where
that file does not exist. Memory is tracemalloc's peak during the call above what was allocated before it.
"""

from __future__ import annotations

import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

from offload.errors import InvalidGGUF
from offload.models.gguf import GGUFFile, GGUFLimits, read_gguf

_PROC_IO = Path("/proc/self/io")


@dataclass(frozen=True, slots=True)
class Measured:
    result: GGUFFile | None
    error: InvalidGGUF | None
    peak: int  # bytes allocated at most during the call
    retained: int  # bytes still allocated after it (the result)
    bytes_read: int | None
    seconds: float

    @property
    def refusal(self) -> InvalidGGUF:
        """The error; fails the test if the file was accepted."""
        if self.error is None:
            raise AssertionError(f"the reader accepted the file: {self.result}")
        return self.error


def _rchar() -> int | None:
    try:
        text = _PROC_IO.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return None


def read_measured(path: Path, limits: GGUFLimits | None = None) -> Measured:
    """Call read_gguf(path) once and measure it. Any exception but InvalidGGUF propagates."""
    started_tracing = not tracemalloc.is_tracing()
    if started_tracing:
        tracemalloc.start()
    result: GGUFFile | None = None
    error: InvalidGGUF | None = None
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        read_before = _rchar()
        start = time.monotonic()
        try:
            result = read_gguf(path, limits=limits or GGUFLimits())
        except InvalidGGUF as exc:
            error = exc
        seconds = time.monotonic() - start
        read_after = _rchar()
        current, peak = tracemalloc.get_traced_memory()
        # Reading /proc/self/io is itself a read(): take one more to learn its size and leave it out.
        read_again = _rchar()
    finally:
        if started_tracing:
            tracemalloc.stop()
    bytes_read = None
    if read_before is not None and read_after is not None and read_again is not None:
        bytes_read = (read_after - read_before) - (read_again - read_after)
    return Measured(result, error, peak - before, current - before, bytes_read, seconds)
