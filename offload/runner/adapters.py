"""LoRA adapters in the runner (IN THE RUNNER ONLY): loaded onto the model once it has loaded, then set on every
context made from it, so generation and embeddings both see base + adapters.

llama.cpp's adapter API: `llama_adapter_lora_init(model, path)` reads the adapter's tensors into buffers beside the
layers they adapt (NULL when it refuses the file: its reason goes to the load log), the model frees it with itself;
`llama_set_adapters_lora(ctx, adapters, n, scales)` makes a context add scale * (alpha / rank) * B·A to each adapted
weight's product. The server checked each adapter against the model when it was stored (models/adapters.py), so a
refusal here means the file changed or memory ran out: the load fails, never a silent base-only model.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from offload.errors import RunnerStartFailed
from offload.runner.llamacpp import C, Model


class LoraSet:
    """Adapters loaded onto one model, with the scale of each, ready to set on its contexts."""

    def __init__(self, model: Model, adapters: Sequence[tuple[str, float]]) -> None:
        """Load each (path, scale) in order; RunnerStartFailed naming the file llama.cpp refused."""
        handles = []
        for path, _ in adapters:
            handle = C.llama_adapter_lora_init(model.handle, path.encode())
            if not handle:
                raise RunnerStartFailed(
                    f"llama.cpp could not load the LoRA adapter {Path(path).name} onto the model (the runner's log "
                    "says why)"
                )
            handles.append(handle)
        self.count = len(handles)
        self.names = tuple(Path(path).name for path, _ in adapters)
        self._handles: Any = (C.llama_adapter_lora_p_ctypes * self.count)(*handles)
        self._scales: Any = (ctypes.c_float * self.count)(*(float(scale) for _, scale in adapters))

    def apply(self, context: Any) -> None:
        """Set the adapters on a new llama.cpp context (its handle); RunnerStartFailed if llama.cpp refuses."""
        if int(C.llama_set_adapters_lora(context, self._handles, self.count, self._scales)) != 0:
            raise RunnerStartFailed(f"llama.cpp could not apply the LoRA adapters {', '.join(self.names)}")


def load_adapters(model: Model, adapters: Sequence[tuple[str, float]]) -> LoraSet | None:
    """The adapters of a load request (LoadOptions.lora_adapters) loaded onto `model`; None when there are none."""
    return LoraSet(model, adapters) if adapters else None
