"""How many bytes a model needs, from its GGUF tensor table and attention shape (pure; no I/O).

Three kinds of memory, each sized the way llama.cpp sizes it:

- weights: every tensor's `n_bytes` (its real quantization type), grouped as llama.cpp places them: the input
  layer (`token_embd.weight`, always kept on the host), one group per repeating block (`blk.N.*`, MoE expert
  tensors `ffn_*_exps` included: they are just more of their block's bytes) and the output layer
  (`output_norm`, `output.weight`, or a copy of `token_embd` when the output is tied to it, plus any other
  non-block tensor such as rope factors);
- the KV cache (`kv_cache_per_layer`), per layer on the device of that layer;
- compute buffers (`compute_buffer_bytes`), an estimate with named coefficients, to be calibrated against the
  buffer sizes the runner reports (offload/runner/placement.py).

Not covered (the estimate is then a floor, not a fit): MLA caches (deepseek2 `kv_lora_rank`), recurrent state
(mamba/rwkv "RS" buffers), multimodal projectors (a separate file).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from offload.errors import InvalidGGUF
from offload.models.gguf import GGUFFile

MIB = 1 << 20

# Bytes per cached element for llama.cpp's KV cache types (block bytes / block elements).
KV_BYTES_PER_ELEMENT: Mapping[str, float] = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q5_1": 24 / 32,
    "q5_0": 22 / 32,
    "q4_1": 20 / 32,
    "q4_0": 18 / 32,
    "iq4_nl": 18 / 32,
}

# llama.cpp pads KV cache sizes to this many cells (its n_pad); contexts are planned in these steps too.
KV_CELL_PAD = 256

# Layers that use sliding-window attention, for architectures whose GGUF does not say which (llama.cpp's
# `set_swa_pattern(n)`: layer il is SWA unless (il + 1) % n == 0). gemma3: 5 local, 1 global.
SWA_PATTERNS: Mapping[str, int] = {"gemma2": 2, "gemma3": 6, "cohere2": 4}

# ---- compute buffer coefficients (calibrated against llama.cpp's reported buffers) ----
# The graph allocator reuses memory, so a compute buffer is the largest set of tensors alive at one time,
# not a sum. Measured on an H200, n_ubatch 512, flash attention on (tests/fixtures/load_logs/cuda_h200_*):
#   llama 1B (n_embd 2048, n_ff 8192, vocab 32000): CUDA0 66.50 MiB at n_ctx 2048 and 4096 (the output peak,
#     512 x (32000 + 2048) x 4), 68.01 MiB at 8192 (the layer peak: 512 x (3 x 8192 + 3 x 2048) x 4 + the mask);
#   llama 8B (n_embd 4096, n_ff 14336): CUDA0 110.01 MiB at 2048, 116.01 at 8192 (the layer peak);
#   CUDA_Host: 10.01 / 12.01 / 16.01 MiB for 1B at 2048 / 4096 / 8192, 18.01 / 24.01 for 8B at 2048 / 8192.
F32 = 4
F16 = 2
# Attention scores without flash attention: KQ (f32) and its softmax are both alive: 2 copies of
# n_ubatch x n_ctx x n_head. Not yet checked against a measurement (the runner lets llama.cpp pick flash
# attention, which it does on CUDA and the CPU).
ATTN_SCORE_COPIES = 2
# A repeating layer's peak: 3 hidden states and 3 FFN activations (gate, up, their product) per token,
# plus the attention mask (f16, n_ubatch x n_ctx of the sequence).
LAYER_EMBD_COPIES = 3
FFN_ACTIVATION_COPIES = 3
# The host compute buffer a GPU load keeps: 2 hidden states per token of the micro-batch (the input
# embeddings and their copy) plus the attention mask.
HOST_COMPUTE_EMBD_COPIES = 2

_BLOCK = re.compile(r"blk\.(\d+)\.")


@dataclass(frozen=True, slots=True)
class ModelShape:
    """The attention and vocabulary shape the KV cache and compute buffers depend on."""

    architecture: str
    n_layer: int
    n_embd: int
    n_vocab: int
    n_ff: int
    n_head: tuple[int, ...]  # per layer (GGUF may store an array)
    n_head_kv: tuple[int, ...]  # per layer; 0 for a layer without attention
    key_length: int  # per head
    value_length: int  # per head
    sliding_window: int | None  # tokens; None: no sliding-window layers
    swa_layers: tuple[bool, ...]  # per layer: True where the layer uses the sliding window


@dataclass(frozen=True, slots=True)
class ModelMemory:
    """Weight bytes grouped as llama.cpp places them, and the shape for KV and compute sizes."""

    shape: ModelShape
    block_bytes: tuple[int, ...]  # per repeating layer blk.N (index N)
    token_embd_bytes: int  # the input layer: llama.cpp keeps it on the host
    output_bytes: int  # the output layer when it sits on a GPU: output.weight (or token_embd's copy) + norm
    output_tied: bool  # no output.weight: the output shares token_embd (on the host that costs no extra bytes)
    other_bytes: int  # non-block tensors beside those (rope factors...), counted with the output layer

    @property
    def layers_total(self) -> int:
        """Layers as llama.cpp's n_gpu_layers counts them: the blocks plus the output layer."""
        return self.shape.n_layer + 1

    @property
    def weight_bytes(self) -> int:
        """All weights as loaded on one device (a tied output counted once)."""
        tied_copy = self.token_embd_bytes if self.output_tied else 0
        return self.token_embd_bytes + sum(self.block_bytes) + self.output_bytes - tied_copy + self.other_bytes


def _int(gguf: GGUFFile, key: str, default: int | None = None) -> int:
    value = gguf.metadata.get(f"{gguf.architecture}.{key}", default)
    if isinstance(value, bool) or not isinstance(value, int):
        if value is None:
            raise InvalidGGUF(f"{gguf.path.name}: metadata {gguf.architecture}.{key} is missing")
        raise InvalidGGUF(f"{gguf.path.name}: metadata {gguf.architecture}.{key} must be an integer")
    return value


def _per_layer(gguf: GGUFFile, key: str, n_layer: int, default: int | None) -> tuple[int, ...]:
    """A per-layer hyperparameter that GGUF stores as one integer or as an array with one entry per layer."""
    value = gguf.metadata.get(f"{gguf.architecture}.{key}", default)
    if value is None:
        raise InvalidGGUF(f"{gguf.path.name}: metadata {gguf.architecture}.{key} is missing")
    if isinstance(value, tuple | list):
        if len(value) != n_layer or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise InvalidGGUF(f"{gguf.path.name}: {gguf.architecture}.{key} must hold {n_layer} integers")
        return tuple(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidGGUF(f"{gguf.path.name}: {gguf.architecture}.{key} must be an integer")
    return (value,) * n_layer


def _swa_layers(gguf: GGUFFile, n_layer: int, window: int | None) -> tuple[bool, ...]:
    if not window:
        return (False,) * n_layer
    declared = gguf.metadata.get(f"{gguf.architecture}.attention.sliding_window_pattern")
    if isinstance(declared, tuple | list) and len(declared) == n_layer:
        return tuple(bool(v) for v in declared)  # newer GGUFs: one bool per layer, True = sliding window
    period = declared if isinstance(declared, int) and declared > 0 else SWA_PATTERNS.get(gguf.architecture)
    if period is None:
        return (True,) * n_layer  # a window and no pattern: llama.cpp applies it to every layer
    return tuple((il + 1) % period != 0 for il in range(n_layer))


def model_shape(gguf: GGUFFile) -> ModelShape:
    """The shape from `<arch>.*` metadata. Defaults as llama.cpp's: key/value length = n_embd / n_head,
    head_count_kv = head_count. Raises InvalidGGUF when block_count, embedding_length or head_count is missing."""
    n_layer = _int(gguf, "block_count")
    n_embd = _int(gguf, "embedding_length")
    n_head = _per_layer(gguf, "attention.head_count", n_layer, None)
    most_heads = max(n_head, default=0)
    n_head_kv = _per_layer(gguf, "attention.head_count_kv", n_layer, most_heads)
    head_dim = n_embd // most_heads if most_heads else 0
    window = gguf.metadata.get(f"{gguf.architecture}.attention.sliding_window")
    window = window if isinstance(window, int) and not isinstance(window, bool) and window > 0 else None
    embd = next((t for t in gguf.tensors if t.name == "token_embd.weight"), None)
    tokens = gguf.metadata.get("tokenizer.ggml.tokens")
    n_vocab = embd.shape[1] if embd is not None and len(embd.shape) > 1 else len(tokens or ())
    n_ff_value = gguf.metadata.get(f"{gguf.architecture}.feed_forward_length", 0)
    n_ff = max(n_ff_value) if isinstance(n_ff_value, tuple | list) else int(n_ff_value or 0)
    return ModelShape(
        architecture=gguf.architecture,
        n_layer=n_layer,
        n_embd=n_embd,
        n_vocab=n_vocab,
        n_ff=n_ff,
        n_head=n_head,
        n_head_kv=n_head_kv,
        key_length=_int(gguf, "attention.key_length", head_dim),
        value_length=_int(gguf, "attention.value_length", head_dim),
        sliding_window=window,
        swa_layers=_swa_layers(gguf, n_layer, window),
    )


def model_memory(gguf: GGUFFile) -> ModelMemory:
    """Weight bytes per group from the tensor table (see the module docstring), plus `model_shape(gguf)`.

    A `blk.N.*` tensor with N >= block_count is refused (InvalidGGUF): llama.cpp would not load it either.
    """
    shape = model_shape(gguf)
    blocks = [0] * shape.n_layer
    token_embd = output = other = 0
    tied = True
    for tensor in gguf.tensors:
        if match := _BLOCK.match(tensor.name):
            index = int(match.group(1))
            if index >= shape.n_layer:
                raise InvalidGGUF(f"{gguf.path.name}: tensor {tensor.name} is past block_count {shape.n_layer}")
            blocks[index] += tensor.n_bytes
        elif tensor.name == "token_embd.weight":
            token_embd = tensor.n_bytes
        elif tensor.name == "output.weight":
            output += tensor.n_bytes
            tied = False
        elif tensor.name.startswith("output_norm."):
            output += tensor.n_bytes
        else:
            other += tensor.n_bytes
    if tied:
        output += token_embd  # llama.cpp duplicates token_embd into the output layer's buffer
    return ModelMemory(
        shape=shape,
        block_bytes=tuple(blocks),
        token_embd_bytes=token_embd,
        output_bytes=output,
        output_tied=tied,
        other_bytes=other,
    )


def pad(n: int, step: int = KV_CELL_PAD) -> int:
    return -(-n // step) * step


def kv_cells(
    shape: ModelShape,
    *,
    n_ctx: int,
    parallel: int = 1,
    n_ubatch: int = 512,
    swa_full: bool = True,
    kv_unified: bool = False,
) -> tuple[int, ...]:
    """KV cache cells per layer (all streams together), as llama.cpp allocates them.

    - n_ctx is the total context, shared by `parallel` sequences: llama.cpp gives each sequence n_ctx / parallel
      cells (one stream each, kv_unified false, the llama.cpp default and the runner's) or one shared stream of
      n_ctx cells (kv_unified true). Either way a full-attention layer holds n_ctx cells, padded to 256.
    - A sliding-window layer holds, per stream, min(cells per stream, pad256(window x (parallel if unified else 1)
      + n_ubatch)) cells — unless `swa_full`, llama.cpp's default (llama_context_default_params, and the runner's
      log says "using full-size SWA cache"), which sizes SWA layers like the others. Uncertain: whether llama.cpp
      pads before or after the min; this takes the min of the padded window and the stream size.
    """
    streams = 1 if kv_unified else max(1, parallel)
    per_stream = pad(max(1, n_ctx // streams))
    full = per_stream * streams
    window = shape.sliding_window or 0
    swa_per_stream = min(per_stream, pad(window * (parallel if kv_unified else 1) + n_ubatch))
    swa = full if swa_full else swa_per_stream * streams
    return tuple(swa if is_swa else full for is_swa in shape.swa_layers)


def kv_cache_per_layer(
    shape: ModelShape,
    *,
    n_ctx: int,
    parallel: int = 1,
    kv_type: str = "f16",
    n_ubatch: int = 512,
    swa_full: bool = True,
    kv_unified: bool = False,
) -> tuple[int, ...]:
    """KV bytes per layer: cells x (n_embd_k_gqa + n_embd_v_gqa) x bytes per element of `kv_type`, where
    n_embd_k_gqa = head_count_kv(layer) x key_length (and likewise for V). K and V share one type (as Ollama's
    OLLAMA_KV_CACHE_TYPE); llama.cpp needs flash attention for a quantized V cache. Raises ValueError for an
    unknown `kv_type`."""
    if kv_type not in KV_BYTES_PER_ELEMENT:
        raise ValueError(f"unknown KV cache type {kv_type!r}: one of {', '.join(KV_BYTES_PER_ELEMENT)}")
    per_element = KV_BYTES_PER_ELEMENT[kv_type]
    cells = kv_cells(shape, n_ctx=n_ctx, parallel=parallel, n_ubatch=n_ubatch, swa_full=swa_full, kv_unified=kv_unified)
    return tuple(
        round(n_cells * kv_heads * (shape.key_length + shape.value_length) * per_element)
        for n_cells, kv_heads in zip(cells, shape.n_head_kv, strict=True)
    )


def kv_cache_bytes(shape: ModelShape, **kwargs: Any) -> int:
    """The whole KV cache: the sum of `kv_cache_per_layer(shape, **kwargs)`."""
    return sum(kv_cache_per_layer(shape, **kwargs))


def compute_buffer_bytes(
    shape: ModelShape,
    *,
    n_ctx: int,
    n_ubatch: int = 512,
    flash_attn: bool = True,
    has_layers: bool = True,
    has_output: bool = False,
) -> int:
    """Estimated compute buffer of one device for a micro-batch of `n_ubatch` tokens (f32 activations).

    `n_ctx` is the context of one sequence (the attention mask and scores span one sequence's cells). The buffer
    is the largest set of tensors alive at once (ggml's allocator reuses memory), so the estimate is the larger of:
      output peak (device holding the output layer): n_ubatch x (n_vocab + n_embd) x 4
      layer peak (device holding repeating layers):
        n_ubatch x (LAYER_EMBD_COPIES x n_embd + FFN_ACTIVATION_COPIES x n_ff) x 4 + mask n_ubatch x n_ctx x 2
        + without flash attention the scores, n_ubatch x n_ctx x max(n_head) x 4 x ATTN_SCORE_COPIES.
    With flash attention this matches llama.cpp's CUDA buffers for llama 1B and 8B at 2048-8192 (to 0.01 MiB);
    the no-flash-attention term is not yet checked against a measurement.
    """
    peak = 0
    if has_output:
        peak = n_ubatch * (shape.n_vocab + shape.n_embd) * F32
    if has_layers:
        layer = n_ubatch * (LAYER_EMBD_COPIES * shape.n_embd + FFN_ACTIVATION_COPIES * shape.n_ff) * F32
        layer += n_ubatch * pad(n_ctx) * F16  # the KQ mask
        if not flash_attn:
            layer += n_ubatch * n_ctx * max(shape.n_head, default=0) * F32 * ATTN_SCORE_COPIES
        peak = max(peak, layer)
    return peak


def host_buffer_bytes(
    shape: ModelShape, *, n_ctx: int = 4096, n_ubatch: int = 512, parallel: int = 1, offloaded: bool
) -> int:
    """Host memory a load needs beside weights and KV: the logits output buffer (n_vocab x 4 per sequence;
    1.00 MiB measured for gemma3's 262144 tokens) and, when layers run on a GPU, the host compute buffer
    (n_ubatch x (n_embd x 4 x HOST_COMPUTE_EMBD_COPIES + n_ctx x 2); 10.01 / 12.01 / 16.01 MiB measured for
    llama 1B at n_ctx 2048 / 4096 / 8192). `n_ctx` is one sequence's context."""
    output = shape.n_vocab * F32 * max(1, parallel)
    host_compute = 0
    if offloaded:
        host_compute = n_ubatch * (shape.n_embd * F32 * HOST_COMPUTE_EMBD_COPIES + pad(n_ctx) * F16)
    return output + host_compute


def layer_devices(
    n_layers_total: int, n_gpu_layers: int, split: Sequence[float], gpu_names: Sequence[str], cpu_name: str
) -> tuple[str, ...]:
    """Which device each layer (blocks, then the output layer) lands on, by llama.cpp's rule: the last
    `n_gpu_layers` layers are offloaded; offloaded layer k (0-based among them) goes to the first GPU whose
    cumulative split fraction exceeds k / n_gpu_layers."""
    start = n_layers_total - n_gpu_layers
    total = sum(split)
    cumulative: list[float] = []
    running = 0.0
    for fraction in split:
        running += fraction / total if total else 0.0
        cumulative.append(running)
    out: list[str] = []
    for il in range(n_layers_total):
        if il < start or not gpu_names:
            out.append(cpu_name)
            continue
        position = (il - start) / n_gpu_layers
        gpu = next((i for i, edge in enumerate(cumulative) if position < edge), len(gpu_names) - 1)
        out.append(gpu_names[gpu])
    return tuple(out)
