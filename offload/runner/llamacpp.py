"""A thin wrapper over llama.cpp's C API (through llama-cpp-python's ctypes bindings). IN THE RUNNER ONLY.

Why not llama-cpp-python's `Llama` class: it copies the full logits row into numpy for every token (262,144 floats
for gemma3) and samples one sequence at a time; the decode loop here needs the raw batch API and llama.cpp's native
sampler chain, with nothing per token that C does not do.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import importlib.util
import math
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from offload.errors import BadRequest, ContextLengthExceeded, RunnerError, RunnerStartFailed
from offload.generation import SamplingOptions

if TYPE_CHECKING:
    from offload.runner.adapters import LoraSet


def _bindings() -> Any:
    """llama-cpp-python's ctypes bindings (`llama_cpp.llama_cpp`) WITHOUT running its package `__init__`.

    That `__init__` imports numpy and the high-level API and installs a Python log callback; with it, a CPU-only
    build segfaulted inside llama_model_load_from_file on the GPU machine, while the bare bindings loaded the same
    model (docs/GPU.md). The runner needs none of it. The bindings are untyped ctypes; this module is their only
    user, so they are `Any` here and typed at this module's API.
    """
    if "llama_cpp" not in sys.modules:
        spec = importlib.util.find_spec("llama_cpp")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("llama_cpp (llama-cpp-python) is not installed")
        package = types.ModuleType("llama_cpp")
        package.__path__ = list(spec.submodule_search_locations)
        package.__file__ = spec.origin
        sys.modules["llama_cpp"] = package
    return importlib.import_module("llama_cpp.llama_cpp")


C: Any = _bindings()

_MAX_THREADS = 512  # GGML_MAX_N_THREADS in ggml.h, the size of the cpumask below


class _ThreadpoolParams(ctypes.Structure):
    """ggml.h's struct ggml_threadpool_params (llama-cpp-python does not bind the threadpool API)."""

    _fields_ = [
        ("cpumask", ctypes.c_bool * _MAX_THREADS),
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),
        ("poll", ctypes.c_uint32),
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    ]


def _ggml_library(name: str) -> ctypes.CDLL:
    """A ggml library from the directory libllama was loaded from (already in memory; this just finds it)."""
    return ctypes.CDLL(str(Path(C._lib._name).parent / name))


@dataclass(frozen=True, slots=True)
class GgmlDevice:
    name: str  # "CPU", "CUDA0", "Vulkan0", ...
    description: str
    kind: str  # "cpu", "gpu", "igpu", "accel"
    free: int
    total: int

    @property
    def is_gpu(self) -> bool:
        return self.kind in {"gpu", "igpu"}


_DEVICE_KINDS = ("cpu", "gpu", "igpu", "accel", "meta")


def ggml_devices() -> list[GgmlDevice]:
    """The devices this llama.cpp build itself can use, as its backend registry lists them."""
    base = _ggml_library("libggml.so")  # the backend registry lives in libggml, not libggml-base
    base.ggml_backend_dev_count.restype = ctypes.c_size_t
    base.ggml_backend_dev_get.restype = ctypes.c_void_p
    base.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    for name in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
        getattr(base, name).restype = ctypes.c_char_p
        getattr(base, name).argtypes = [ctypes.c_void_p]
    base.ggml_backend_dev_type.restype = ctypes.c_int
    base.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    base.ggml_backend_dev_memory.argtypes = [
        ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)
    ]
    devices = []
    for index in range(int(base.ggml_backend_dev_count())):
        handle = base.ggml_backend_dev_get(index)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        base.ggml_backend_dev_memory(handle, ctypes.byref(free), ctypes.byref(total))
        kind = int(base.ggml_backend_dev_type(handle))
        devices.append(
            GgmlDevice(
                name=(base.ggml_backend_dev_name(handle) or b"").decode(errors="replace"),
                description=(base.ggml_backend_dev_description(handle) or b"").decode(errors="replace"),
                kind=_DEVICE_KINDS[kind] if 0 <= kind < len(_DEVICE_KINDS) else "unknown",
                free=int(free.value),
                total=int(total.value),
            )
        )
    return devices


class Threadpool:
    """A persistent pool of decode threads. Without one, ggml creates and joins a fresh pool for every graph it
    computes, once per generated token: measured 10% of single-stream decode speed on 2 cores (docs/BENCHMARKS.md).
    llama-bench and llama-server attach one too."""

    def __init__(self, n_threads: int) -> None:
        base, cpu = _ggml_library("libggml-base.so"), _ggml_library("libggml-cpu.so")
        base.ggml_threadpool_params_default.restype = _ThreadpoolParams
        base.ggml_threadpool_params_default.argtypes = [ctypes.c_int]
        cpu.ggml_threadpool_new.restype = ctypes.c_void_p
        cpu.ggml_threadpool_new.argtypes = [ctypes.POINTER(_ThreadpoolParams)]
        cpu.ggml_threadpool_free.argtypes = [ctypes.c_void_p]
        params = base.ggml_threadpool_params_default(n_threads)
        handle = cpu.ggml_threadpool_new(ctypes.byref(params))
        if not handle:
            raise RunnerStartFailed(f"ggml could not start a pool of {n_threads} threads")
        self.handle: int | None = handle
        self._free = cpu.ggml_threadpool_free

    def close(self) -> None:
        if self.handle:
            self._free(self.handle)
            self.handle = None


@dataclass(frozen=True, slots=True)
class ModelFacts:
    n_ctx_train: int
    n_layer: int
    n_embd: int
    n_vocab: int
    size: int
    supports_gpu_offload: bool


class Model:
    """A loaded GGUF: weights and vocabulary, shared by the contexts made from it."""

    def __init__(
        self, path: str, n_gpu_layers: int, *, tensor_split: Sequence[float] = (), repack: bool = True
    ) -> None:
        """Load `path` with `n_gpu_layers` layers offloaded. `tensor_split` is the fraction of the offloaded model for
        each GPU, in llama.cpp's device order (empty: llama.cpp splits by free memory); ValueError when it has more
        entries than this build supports (llama_max_devices()) or an entry is negative or not finite.

        `repack` lets llama.cpp repack CPU weights for its batched kernels (its "extra buffer types": CPU_REPACK,
        AMX), which sum a row differently when it is in a group of 4 than alone: batch-invariant mode turns it off
        (engine.py, docs/BENCHMARKS.md)."""
        C.llama_backend_init()
        params = C.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.use_extra_bufts = repack
        # llama.cpp keeps only the pointer: the array must outlive the load, so the model holds it.
        self._tensor_split: ctypes.Array[ctypes.c_float] | None = None
        if tensor_split:
            self._tensor_split = _device_fractions(tensor_split)
            params.tensor_split = ctypes.cast(self._tensor_split, ctypes.POINTER(ctypes.c_float))
        handle = C.llama_model_load_from_file(path.encode(), params)
        if not handle:
            raise RunnerStartFailed(f"llama.cpp could not load {path}")
        self.handle = handle
        self.vocab = C.llama_model_get_vocab(handle)
        self.facts = ModelFacts(
            n_ctx_train=int(C.llama_model_n_ctx_train(handle)),
            n_layer=int(C.llama_model_n_layer(handle)),
            n_embd=int(C.llama_model_n_embd(handle)),
            n_vocab=int(C.llama_vocab_n_tokens(self.vocab)),
            size=int(C.llama_model_size(handle)),
            supports_gpu_offload=bool(C.llama_supports_gpu_offload()),
        )
        self.bos = int(C.llama_vocab_bos(self.vocab))
        self._piece = ctypes.create_string_buffer(256)
        self.adapters: LoraSet | None = None  # LoRA adapters every context made from this model applies

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        """Special tokens written in `text` (from the chat template) are parsed as such; at most one BOS."""
        data = text.encode()
        capacity = len(data) + 8
        buffer = (C.llama_token * capacity)()
        n = int(C.llama_tokenize(self.vocab, data, len(data), buffer, capacity, add_special, True))
        if n < 0:
            capacity = -n
            buffer = (C.llama_token * capacity)()
            n = int(C.llama_tokenize(self.vocab, data, len(data), buffer, capacity, add_special, True))
        tokens = list(buffer[:n])
        # A template that writes the BOS token itself, tokenized with add_special, would start with two.
        if len(tokens) >= 2 and tokens[0] == tokens[1] == self.bos:
            del tokens[0]
        return tokens

    def piece(self, token: int) -> bytes:
        """The bytes of one token; control tokens render as nothing."""
        n = int(C.llama_token_to_piece(self.vocab, token, self._piece, len(self._piece), 0, False))
        if n < 0:
            self._piece = ctypes.create_string_buffer(-n)
            n = int(C.llama_token_to_piece(self.vocab, token, self._piece, len(self._piece), 0, False))
        return self._piece.raw[:n]

    def is_end(self, token: int) -> bool:
        return bool(C.llama_vocab_is_eog(self.vocab, token))

    def control_token(self, text: str) -> int | None:
        """The id of the control token spelled `text` (e.g. "<end_of_turn>"), or None if `text` is anything else."""
        tokens = self.tokenize(text, add_special=False)
        if len(tokens) == 1 and C.llama_vocab_is_control(self.vocab, tokens[0]):
            return tokens[0]
        return None

    def close(self) -> None:
        if self.handle:
            C.llama_model_free(self.handle)
            self.handle = None


def _device_fractions(values: Sequence[float]) -> ctypes.Array[ctypes.c_float]:
    """A float array of llama_max_devices() entries (what llama_model_params.tensor_split points to), zero-filled
    after `values`."""
    n_max = int(C.llama_max_devices())
    if len(values) > n_max:
        raise ValueError(f"tensor_split has {len(values)} entries; this llama.cpp build supports {n_max} devices")
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f"tensor_split entries must be finite and not negative: {list(values)}")
    return (ctypes.c_float * n_max)(*values)


def _attach_threadpool(context: Any, threadpool: int | None, threadpool_batch: int | None) -> None:
    function = C._lib.llama_attach_threadpool
    function.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    function.restype = None
    function(context, threadpool, threadpool_batch)


@dataclass(frozen=True, slots=True)
class BatchPart:
    """Tokens of one sequence at positions start_pos.. in a multi-sequence batch; `output`: the last one gives
    logits (a decode step, or the final chunk of a prompt)."""

    tokens: list[int]
    start_pos: int
    seq_id: int
    output: bool


class Context:
    """One llama.cpp context (KV cache + compute buffers) and a reusable batch."""

    def __init__(
        self,
        model: Model,
        *,
        n_ctx: int,
        n_batch: int,
        n_threads: int,
        n_seq_max: int = 1,
        embeddings: bool = False,
        pooling: int = -1,
        flash_attn: bool = True,
        kv_unified: bool = False,
    ) -> None:
        """`flash_attn` False turns flash attention off; True leaves llama.cpp's choice (on where the backend has
        it). `kv_unified`: one KV cache shared by all sequences instead of n_ctx / n_seq_max cells each."""
        params = C.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = n_seq_max
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.embeddings = embeddings
        params.pooling_type = pooling
        params.no_perf = True
        if not flash_attn:
            params.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.kv_unified = kv_unified
        handle = C.llama_init_from_model(model.handle, params)
        if not handle:
            raise RunnerStartFailed(f"llama.cpp could not create a context of {n_ctx} tokens")
        if model.adapters is not None:
            model.adapters.apply(handle)
        self.handle = handle
        self.threadpool = Threadpool(n_threads)
        _attach_threadpool(handle, self.threadpool.handle, self.threadpool.handle)
        self.model = model
        self.n_ctx = int(C.llama_n_ctx(handle))  # all sequences together
        # What one sequence may hold: llama.cpp gives each of the n_seq_max sequences n_ctx / n_seq_max cells
        # (the KV cache is not unified across sequences), so this, not n_ctx, bounds one request.
        self.n_ctx_seq = int(C.llama_n_ctx_seq(handle))
        self.n_batch = n_batch
        self.n_seq_max = n_seq_max
        self.memory = C.llama_get_memory(handle)
        self._batch = C.llama_batch_init(n_batch, 0, n_seq_max)

    @property
    def pooling(self) -> int:
        return int(C.llama_pooling_type(self.handle))

    def decode(self, tokens: list[int], start_pos: int, seq_id: int = 0, *, all_outputs: bool = False) -> None:
        """Evaluate `tokens` at positions start_pos.. in one sequence; the last token (or all) produce output."""
        self.decode_parts([BatchPart(tokens, start_pos, seq_id, output=True)], all_outputs=all_outputs)

    def decode_parts(self, parts: list[BatchPart], *, all_outputs: bool = False) -> list[int | None]:
        """Evaluate several sequences' tokens in one llama_decode; per part, the batch row of its output (for
        sampling) or None. The parts together must fit n_batch. `all_outputs`: every token produces output (for
        pooled embeddings)."""
        total = sum(len(part.tokens) for part in parts)
        if total > self.n_batch or total == 0:
            raise RunnerError(f"batch of {total} tokens does not fit n_batch {self.n_batch}")
        batch = self._batch
        rows: list[int | None] = []
        i = 0
        for part in parts:
            seq_id, pos = part.seq_id, part.start_pos
            for token in part.tokens:
                batch.token[i] = token
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq_id
                batch.logits[i] = all_outputs
                pos += 1
                i += 1
            if part.output:
                batch.logits[i - 1] = True
                rows.append(i - 1)
            else:
                rows.append(None)
        batch.n_tokens = i
        status = int(C.llama_decode(self.handle, batch))
        if status == 1:
            raise ContextLengthExceeded("no room left in the KV cache for this batch")
        if status != 0:
            raise RunnerError(f"llama_decode failed with status {status}")
        return rows

    def forget(self, seq_id: int, from_pos: int) -> bool:
        """Drop the cache of `seq_id` from `from_pos` on; False if llama.cpp cannot cut it there (SWA, recurrent)."""
        return bool(C.llama_memory_seq_rm(self.memory, seq_id, from_pos, -1))

    def move(self, source: int, target: int) -> bool:
        """Move sequence `source`'s whole cache to sequence `target` (which loses what it held); llama.cpp copies
        the stream's buffers at the next llama_decode. False, with nothing changed, where the copy does not take
        (then `source` is kept as it was)."""
        end = int(C.llama_memory_seq_pos_max(self.memory, source))
        C.llama_memory_seq_rm(self.memory, target, -1, -1)
        C.llama_memory_seq_cp(self.memory, source, target, -1, -1)
        if int(C.llama_memory_seq_pos_max(self.memory, target)) != end:
            C.llama_memory_seq_rm(self.memory, target, -1, -1)
            return False
        C.llama_memory_seq_rm(self.memory, source, -1, -1)
        return True

    def clear(self) -> None:
        C.llama_memory_clear(self.memory, True)

    def sequence_embedding(self, seq_id: int, n_embd: int) -> list[float]:
        pointer = C.llama_get_embeddings_seq(self.handle, seq_id)
        if not pointer:
            raise RunnerError("this model gives no pooled embeddings")
        return [float(pointer[i]) for i in range(n_embd)]

    def close(self) -> None:
        if self.handle:
            C.llama_batch_free(self._batch)
            C.llama_free(self.handle)
            self.handle = None
            self.threadpool.close()


@functools.lru_cache(maxsize=64)
def schema_grammar(schema: str) -> str:
    """GBNF for JSON that satisfies `schema` (JSON text), by llama-cpp-python's schema converter (pure Python, a
    port of llama.cpp's json-schema-to-grammar; loaded without the package __init__, as the bindings are).
    BadRequest naming what is wrong when the schema is not JSON or uses what the converter cannot express.
    Remembered per schema text: the engine converts when it admits a request, on the decode thread, and a client
    usually sends the same schema with every request."""
    converter = importlib.import_module("llama_cpp.llama_grammar")
    try:
        return str(converter.json_schema_to_gbnf(schema))
    except Exception as exc:  # the converter asserts on schemas it cannot express: any failure is the schema's
        raise BadRequest(f"invalid JSON schema for structured output: {exc!r}", param="format") from exc


_MIROSTAT_M = 100  # candidates Mirostat 1 estimates s_hat from (the paper's and llama.cpp's value)


def _logit_bias_sampler(bias: Sequence[tuple[int, float]], n_vocab: int, chain: Any) -> Any:
    """llama.cpp's logit-bias sampler; BadRequest (and `chain` freed) for a token id outside the vocabulary."""
    for token, _ in bias:
        if not 0 <= token < n_vocab:
            C.llama_sampler_free(chain)
            raise BadRequest(
                f"logit_bias names token {token}; this model's tokens are 0-{n_vocab - 1}", param="logit_bias"
            )
    entries = (C.llama_logit_bias * len(bias))(*(C.llama_logit_bias(token, value) for token, value in bias))
    return C.llama_sampler_init_logit_bias(n_vocab, len(bias), entries)


class Sampler:
    """llama.cpp's native sampler chain for one request's settings.

    Penalties look up every candidate they are given, so over a full 262k vocabulary they cost more per token than
    everything else in sampling (measured 1.6 ms of 2.1 ms on the starter model). When the penalties can only lower
    logits (repeat_penalty >= 1, presence/frequency >= 0) and top-k is on, the chain first keeps the top
    k + repeat_last_n candidates: at most repeat_last_n tokens get penalized, so the top k after penalties always lie
    in that set and the result is the same as penalizing the whole vocabulary. Greedy decoding is the case k = 1.
    """

    def __init__(
        self, options: SamplingOptions, n_vocab: int, seed: int, *, grammar: str | None = None, vocab: Any = None
    ) -> None:
        """`grammar` (GBNF, root rule "root") constrains every token, first in the chain so pruning and sampling
        only ever see tokens it allows; it needs the model's `vocab`. BadRequest when llama.cpp rejects it."""
        chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        add = C.llama_sampler_chain_add
        if grammar is not None:
            constraint = C.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
            if not constraint:
                C.llama_sampler_free(chain)
                raise BadRequest("llama.cpp could not parse the grammar made from the JSON schema", param="format")
            add(chain, constraint)
        if options.logit_bias:
            add(chain, _logit_bias_sampler(options.logit_bias, n_vocab, chain))
        greedy = options.temperature <= 0
        mirostat = 0 if greedy else options.mirostat
        top_k = 1 if greedy else options.top_k
        last_n = options.repeat_last_n if options.repeat_last_n >= 0 else n_vocab
        penalized = last_n > 0 and (
            options.repeat_penalty != 1.0 or options.presence_penalty != 0 or options.frequency_penalty != 0
        )
        if penalized:
            lowers_only = (
                options.repeat_penalty >= 1.0 and options.presence_penalty >= 0 and options.frequency_penalty >= 0
            )
            # Not with Mirostat: it reads the whole distribution, which pruning would renormalize.
            if lowers_only and top_k > 0 and not mirostat and top_k + last_n < n_vocab:
                add(chain, C.llama_sampler_init_top_k(top_k + last_n))
            add(
                chain,
                C.llama_sampler_init_penalties(
                    n_vocab, last_n, options.repeat_penalty, options.frequency_penalty, options.presence_penalty
                ),
            )
        if greedy:
            add(chain, C.llama_sampler_init_greedy())
        elif mirostat:  # as llama.cpp's own samplers: temperature, then Mirostat picks the token
            add(chain, C.llama_sampler_init_temp(options.temperature))
            tau, eta = options.mirostat_tau, options.mirostat_eta
            if mirostat == 1:
                add(chain, C.llama_sampler_init_mirostat(n_vocab, seed & 0xFFFFFFFF, tau, eta, _MIROSTAT_M))
            else:
                add(chain, C.llama_sampler_init_mirostat_v2(seed & 0xFFFFFFFF, tau, eta))
        else:
            if top_k > 0:
                add(chain, C.llama_sampler_init_top_k(top_k))
            if options.typical_p < 1.0:
                add(chain, C.llama_sampler_init_typical(options.typical_p, 1))
            if options.top_p < 1.0:
                add(chain, C.llama_sampler_init_top_p(options.top_p, 1))
            if options.min_p > 0.0:
                add(chain, C.llama_sampler_init_min_p(options.min_p, 1))
            add(chain, C.llama_sampler_init_temp(options.temperature))
            add(chain, C.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        self.handle = chain

    def sample(self, context: Context, index: int = -1) -> int:
        """Pick the next token from the logits of output `index` and record it in the chain's history."""
        return int(C.llama_sampler_sample(self.handle, context.handle, index))

    def close(self) -> None:
        if self.handle:
            C.llama_sampler_free(self.handle)
            self.handle = None

