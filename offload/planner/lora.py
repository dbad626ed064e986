"""LoRA adapters in the memory plan (pure): their tensors are weights of the layers they adapt.

llama.cpp allocates each adapter tensor in the buffer type of the base tensor it adapts (src/llama-adapter.cpp;
the CPU's repacking types fall back to the plain CPU buffer), so a `blk.N.*` pair lives where block N lives. The
rest (the output, token_embd) is counted with the output layer's other tensors: at most a small overestimate
on the GPU. The bytes are those of the tensor table, which is what llama.cpp copies into its buffers.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from offload.models.gguf import GGUFFile
from offload.planner.memory import ModelMemory

_BLOCK = re.compile(r"blk\.(\d+)\.")


def with_adapters(memory: ModelMemory, adapters: Sequence[GGUFFile]) -> ModelMemory:
    """`memory` with each adapter's tensors added to the group of the base tensor it adapts. A block index past the
    model's counts with the others (the store refuses such adapters; this only keeps the sum whole)."""
    if not adapters:
        return memory
    blocks = list(memory.block_bytes)
    other = memory.other_bytes
    for adapter in adapters:
        for tensor in adapter.tensors:
            match = _BLOCK.match(tensor.name)
            index = int(match.group(1)) if match else -1
            if 0 <= index < len(blocks):
                blocks[index] += tensor.n_bytes
            else:
                other += tensor.n_bytes
    return dataclasses.replace(memory, block_bytes=tuple(blocks), other_bytes=other)
