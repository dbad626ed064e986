"""LoRA adapters in the runner (IN THE RUNNER ONLY): loaded onto the model once it has loaded, then set on every
context made from it, so generation and embeddings both see base + adapters.

llama.cpp's adapter API: `llama_adapter_lora_init(model, path)` reads the adapter's tensors into buffers beside the
layers they adapt (NULL when it refuses the file: its reason goes to the load log), the model frees it with itself;
`llama_set_adapters_lora(ctx, adapters, n, scales)` makes a context add scale * (alpha / rank) * B·A to each adapted
weight's product. The server checked each adapter against the model when it was stored (models/adapters.py), so a
refusal here means the file changed or memory ran out: the load fails, never a silent base-only model, and the
error carries llama.cpp's own reason (read from what it logs while loading the adapter).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from offload.errors import RunnerStartFailed
from offload.runner.llamacpp import C, Model


class LoraSet:
    """Adapters loaded onto one model, with the scale of each, ready to set on its contexts."""

    def __init__(self, model: Model, adapters: Sequence[tuple[str, float]]) -> None:
        """Load each (path, scale) in order; RunnerStartFailed naming the file llama.cpp refused."""
        handles = []
        for path, _ in adapters:
            handles.append(_init(model, path))
        self.count = len(handles)
        self.names = tuple(Path(path).name for path, _ in adapters)
        self._handles: Any = (C.llama_adapter_lora_p_ctypes * self.count)(*handles)
        self._scales: Any = (ctypes.c_float * self.count)(*(float(scale) for _, scale in adapters))

    def apply(self, context: Any) -> None:
        """Set the adapters on a new llama.cpp context (its handle); RunnerStartFailed if llama.cpp refuses."""
        if int(C.llama_set_adapters_lora(context, self._handles, self.count, self._scales)) != 0:
            raise RunnerStartFailed(f"llama.cpp could not apply the LoRA adapters {', '.join(self.names)}")


def _init(model: Model, path: str) -> Any:
    """llama_adapter_lora_init, with llama.cpp's log of it passed on to stderr as usual and, when it refuses the
    file, its reason in the RunnerStartFailed."""
    with tempfile.TemporaryFile() as log:
        with _stderr_to(log):
            handle = C.llama_adapter_lora_init(model.handle, path.encode())
        log.seek(0)
        said = log.read()
    os.write(2, said)  # on to the runner's real stderr, which the load report is read from
    if not handle:
        raise RunnerStartFailed(f"llama.cpp could not load the LoRA adapter {Path(path).name}: {_reason(said)}")
    return handle


@contextlib.contextmanager
def _stderr_to(file: BinaryIO) -> Iterator[None]:
    """File descriptor 2 (where llama.cpp logs, unbuffered) goes to `file` meanwhile. A file, not a pipe: nothing
    has to drain it while llama.cpp writes."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _reason(log: bytes) -> str:
    """llama.cpp's last error about the adapter ("failed to apply lora adapter: <why>", "failed to open ...")."""
    for line in reversed(log.decode(errors="replace").splitlines()):
        _, found, why = line.partition("failed to apply lora adapter: ")
        if found:
            return why.strip()
        if "llama_adapter_lora_init" in line and "failed to open" in line:
            return "cannot open it: " + line.rsplit(": ", 1)[-1].strip()  # without the path llama.cpp names
    return "llama.cpp gave no reason"


def load_adapters(model: Model, adapters: Sequence[tuple[str, float]]) -> LoraSet | None:
    """The adapters of a load request (LoadOptions.lora_adapters) loaded onto `model`; None when there are none."""
    return LoraSet(model, adapters) if adapters else None
