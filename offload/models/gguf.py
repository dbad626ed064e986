"""A bounded reader for GGUF metadata and tensor tables (GGUF v2 and v3, little endian).

Written by hand on the struct module because the `gguf` package memory-maps the file and trusts its
counts. Here every count and length is checked against `GGUFLimits` and against the bytes left in the
file *before* anything is allocated, so a hostile file fails fast with `InvalidGGUF` instead of eating
memory. `read_gguf` raises nothing but `InvalidGGUF`. Tensor data is never read.

A model split by llama.cpp's gguf-split (`<prefix>-00001-of-00003.gguf`, ...) is read whole when its first part is
named that way and the other parts sit beside it under their own names, which is where llama.cpp looks for them
too: the metadata of the first part, the tensor tables of all. Anything else is read as the one file it is.

Beyond the layout, it refuses what llama.cpp refuses or would misread (nested arrays, tensor names of 64
bytes or more, tokenizer arrays of the wrong type or length), so a file that passes here does not first
fail, or read out of bounds, inside a runner. tests/security/ holds the hostile cases and a fuzz target.
"""

from __future__ import annotations

import io
import math
import os
import re
import stat
import struct
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO

from offload.errors import InvalidGGUF

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class GGUFLimits:
    """Caps on what one file may declare. The defaults accept real models (262144-token vocabularies with
    scores and half a million merges, multi-thousand-tensor MoE models) and reject absurd declarations cheaply.

    Bytes read are bounded by max_metadata_bytes plus the tensor table plus one 1 MiB read window, whatever
    the file's size. Memory by max_metadata_memory: an upper estimate of the Python objects the values become
    (one byte on disk can become a 36-byte int), charged before they are allocated.
    """

    max_tensors: int = 1 << 16
    max_kv: int = 1 << 16
    max_string_bytes: int = 1 << 24  # one string: chat templates are KiBs, this is 16 MiB
    max_array_length: int = 1 << 24
    max_array_depth: int = 1  # llama.cpp refuses arrays of arrays
    # All key/value bytes together, and their estimated memory. The largest seen, gemma-4's 262144 tokens with
    # scores, types and 514906 merges, is 15 MiB on disk, 79 MiB as Python objects, estimated at 116 MiB.
    max_metadata_bytes: int = 1 << 26
    max_metadata_memory: int = 1 << 29
    max_tensor_name_bytes: int = 63  # llama.cpp's GGML_MAX_NAME is 64 with the terminating NUL
    max_alignment: int = 1 << 20


@dataclass(frozen=True, slots=True)
class GGMLType:
    name: str
    block_size: int  # elements per block
    type_size: int  # bytes per block


# The ggml_type enum: value -> (name, elements per block, bytes per block). Retired values are absent.
GGML_TYPES: Mapping[int, GGMLType] = MappingProxyType(
    {
        value: GGMLType(name, block, size)
        for value, name, block, size in (
            (0, "F32", 1, 4), (1, "F16", 1, 2), (2, "Q4_0", 32, 18), (3, "Q4_1", 32, 20),
            (6, "Q5_0", 32, 22), (7, "Q5_1", 32, 24), (8, "Q8_0", 32, 34), (9, "Q8_1", 32, 40),
            (10, "Q2_K", 256, 84), (11, "Q3_K", 256, 110), (12, "Q4_K", 256, 144), (13, "Q5_K", 256, 176),
            (14, "Q6_K", 256, 210), (15, "Q8_K", 256, 292), (16, "IQ2_XXS", 256, 66), (17, "IQ2_XS", 256, 74),
            (18, "IQ3_XXS", 256, 98), (19, "IQ1_S", 256, 50), (20, "IQ4_NL", 32, 18), (21, "IQ3_S", 256, 110),
            (22, "IQ2_S", 256, 82), (23, "IQ4_XS", 256, 136), (24, "I8", 1, 1), (25, "I16", 1, 2),
            (26, "I32", 1, 4), (27, "I64", 1, 8), (28, "F64", 1, 8), (29, "IQ1_M", 256, 56),
            (30, "BF16", 1, 2), (34, "TQ1_0", 256, 54), (35, "TQ2_0", 256, 66), (39, "MXFP4", 32, 17),
            (40, "NVFP4", 64, 36), (41, "Q1_0", 128, 18),
        )
    }
)

# The llama_ftype enum (general.file_type) as Ollama shows it in details.quantization_level.
FILE_TYPES: Mapping[int, str] = MappingProxyType(
    {
        0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 4: "Q4_1_F16", 7: "Q8_0", 8: "Q5_0",
        9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
        16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
        23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M",
        30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4",
        40: "Q1_0",
    }
)
_FTYPE_GUESSED = 1024  # llama.cpp ORs this in when the file type was inferred, not declared

# GGUF metadata value types: code -> (name, struct format or None for string/array).
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL = range(8)
_STRING, _ARRAY, _UINT64, _INT64, _FLOAT64 = range(8, 13)
_SCALAR_FORMATS: Mapping[int, str] = MappingProxyType(
    {
        _UINT8: "<B", _INT8: "<b", _UINT16: "<H", _INT16: "<h", _UINT32: "<I", _INT32: "<i",
        _FLOAT32: "<f", _BOOL: "<?", _UINT64: "<Q", _INT64: "<q", _FLOAT64: "<d",
    }
)
_U64 = struct.Struct("<Q")
_INTEGER_TYPES = frozenset({_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _UINT64, _INT64})
_TOKENS = "tokenizer.ggml.tokens"
_MAX_VOCAB = 1 << 24
# Memory estimates, in bytes (64-bit CPython): a tuple or dict slot (8) plus the largest object of its kind.
_NUMBER_COST = 8 + 36  # an int below 2**64 takes at most 36 bytes, a float 24
_STRING_COST = 8 + 80  # the header of a non-ASCII str
_CHAR_COST = 4  # per UTF-8 byte: one byte can become one 4-byte character (a str holding an emoji)


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: shape[0] is the fastest-varying (row) dimension
    ggml_type: int
    offset: int  # from the data_offset of its file (for a split model, of the part that holds it)
    n_bytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.ggml_type].name


@dataclass(frozen=True, slots=True)
class GGUFFile:
    """What `read_gguf` found: validated metadata (read-only) and the tensor table."""

    path: Path
    version: int
    metadata: Mapping[str, Any]
    tensors: tuple[TensorInfo, ...]
    alignment: int
    data_offset: int  # of the first part, for a split model
    file_size: int  # of all parts together, for a split model

    @property
    def architecture(self) -> str:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else "unknown"

    @property
    def parameter_count(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def file_type(self) -> str:
        """Quantization name like "Q4_K_M": from general.file_type, else the type holding most weights."""
        declared = self.metadata.get("general.file_type")
        if isinstance(declared, int) and declared & ~_FTYPE_GUESSED in FILE_TYPES:
            return FILE_TYPES[declared & ~_FTYPE_GUESSED]
        if not self.tensors:
            return "unknown"
        counts: Counter[int] = Counter()
        for tensor in self.tensors:
            counts[tensor.ggml_type] += tensor.n_elements
        return GGML_TYPES[counts.most_common(1)[0][0]].name

    def _arch_int(self, suffix: str) -> int | None:
        value = self.metadata.get(f"{self.architecture}.{suffix}")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def context_length(self) -> int | None:
        return self._arch_int("context_length")

    @property
    def block_count(self) -> int | None:
        return self._arch_int("block_count")

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None

    @property
    def license(self) -> str | None:
        value = self.metadata.get("general.license")
        return value if isinstance(value, str) else None

    def token(self, token_id: int) -> str | None:
        """The vocabulary entry `token_id`, or None when there is no vocabulary or the id is out of range."""
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        if not isinstance(tokens, tuple | list) or isinstance(token_id, bool):
            return None
        if not 0 <= token_id < len(tokens):
            return None
        value = tokens[token_id]
        return value if isinstance(value, str) else None

    def _special(self, key: str) -> str | None:
        token_id = self.metadata.get(key)
        return self.token(token_id) if isinstance(token_id, int) else None

    @property
    def bos_token(self) -> str | None:
        return self._special("tokenizer.ggml.bos_token_id")

    @property
    def eos_token(self) -> str | None:
        return self._special("tokenizer.ggml.eos_token_id")


class _Reader:
    """Sequential little-endian reads from a file, each checked against the bytes left in it.

    Reads go through a window buffer because a vocabulary is hundreds of thousands of tiny strings.
    """

    _WINDOW = 1 << 20

    def __init__(self, file: BinaryIO, size: int) -> None:
        self._file = file
        self.size = size
        self.limit = size  # reads may not go past this offset (lowered while reading metadata)
        self._buf = b""
        self._i = 0  # read position inside _buf
        self._buf_start = 0  # file offset of _buf[0]

    @property
    def pos(self) -> int:
        return self._buf_start + self._i

    def take(self, n: int, what: str) -> bytes:
        if n > self.limit - self.pos:
            if self.limit < self.size:
                raise InvalidGGUF(f"{what}: metadata is larger than the limit ({self.limit} bytes into file)")
            raise InvalidGGUF(f"{what}: {n} bytes at offset {self.pos} run past end of file ({self.size})")
        end = self._i + n
        if end > len(self._buf):
            # Refill: keep the unread tail, read at least what is needed, at most what the file holds.
            tail = self._buf[self._i :]
            want = max(n - len(tail), min(self._WINDOW, self.limit - self.pos - len(tail)))
            more = self._file.read(want)
            if len(more) != want:
                raise InvalidGGUF(f"{what}: file shrank while being read")
            self._buf_start = self.pos
            self._buf, self._i, end = tail + more, 0, n
        data = self._buf[self._i : end]
        self._i = end
        return data

    def unpack(self, fmt: str, what: str) -> Any:
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size, what))[0]

    def length(self, limit: int, what: str) -> int:
        """The u64 length of a string, at most `limit`."""
        n: int = self.unpack("<Q", what)
        if n > limit:
            raise InvalidGGUF(f"{what}: string of {n} bytes exceeds the limit of {limit}")
        return n

    def text(self, n: int, what: str) -> str:
        start = self.pos
        try:
            return self.take(n, what).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidGGUF(f"{what}: the string at offset {start} is not valid UTF-8 (byte {exc.start})") from None

    def string(self, limit: int, what: str) -> str:
        return self.text(self.length(limit, what), what)

    def strings(self, count: int, limit: int, what: str) -> tuple[str, ...]:
        """`count` strings; a fast path for vocabularies that parses straight out of the window buffer."""
        out: list[str] = []
        append = out.append
        u64 = _U64.unpack_from
        for _ in range(count):
            buf, i = self._buf, self._i
            if i + 8 <= len(buf):
                n = u64(buf, i)[0]
                end = i + 8 + n
                if n <= limit and end <= len(buf):
                    try:
                        append(buf[i + 8 : end].decode("utf-8"))
                    except UnicodeDecodeError:
                        pass  # the slow path below reports it, with the offset
                    else:
                        self._i = end
                        continue
            append(self.string(limit, what))  # slow path: refill, limits and error messages
        return tuple(out)


class _Parser:
    def __init__(self, reader: _Reader, limits: GGUFLimits) -> None:
        self.r = reader
        self.limits = limits
        self.types: dict[str, tuple[int, int | None]] = {}  # key -> (value type, array element type)
        self.memory = 0  # estimated bytes of the values read so far

    def charge(self, amount: int, key: str) -> None:
        """Count `amount` bytes against max_metadata_memory, before allocating them."""
        self.memory += amount
        if self.memory > self.limits.max_metadata_memory:
            raise InvalidGGUF(
                f"metadata {key!r}: the values need more than {self.limits.max_metadata_memory} bytes of memory"
            )

    def string(self, limit: int, key: str, what: str) -> str:
        n = self.r.length(limit, what)
        self.charge(_STRING_COST + _CHAR_COST * n, key)
        return self.r.text(n, what)

    def value(self, vtype: int, key: str, depth: int) -> Any:
        fmt = _SCALAR_FORMATS.get(vtype)
        if fmt is not None:
            self.charge(_NUMBER_COST, key)
            return self.r.unpack(fmt, key)
        if vtype == _STRING:
            return self.string(self.limits.max_string_bytes, key, key)
        if vtype == _ARRAY:
            return self.array(key, depth + 1)[1]
        raise InvalidGGUF(f"metadata {key!r}: unknown value type {vtype}")

    def array(self, key: str, depth: int) -> tuple[int, tuple[Any, ...]]:
        """Returns (element type, elements)."""
        if depth > self.limits.max_array_depth:
            raise InvalidGGUF(
                f"metadata {key!r}: arrays nested {depth} deep, more than {self.limits.max_array_depth} "
                "(llama.cpp reads no arrays of arrays)"
            )
        etype = self.r.unpack("<I", key)
        count = self.r.unpack("<Q", key)
        if count > self.limits.max_array_length:
            raise InvalidGGUF(
                f"metadata {key!r}: array of {count} elements exceeds {self.limits.max_array_length}"
            )
        fmt = _SCALAR_FORMATS.get(etype)
        if fmt is not None:
            # One bounded read for the whole array; take() rejects a count the file cannot hold.
            data = self.r.take(count * struct.calcsize(fmt), key)
            self.charge(count * _NUMBER_COST, key)
            return etype, struct.unpack(f"<{count}{fmt[1]}", data)
        if etype not in (_STRING, _ARRAY):
            raise InvalidGGUF(f"metadata {key!r}: unknown array element type {etype}")
        # Each string needs its 8-byte length, each inner array 12 bytes of header: check before looping.
        smallest = 8 if etype == _STRING else 12
        room = self.r.limit - self.r.pos
        if count * smallest > room:
            raise InvalidGGUF(f"metadata {key!r}: {count} array elements run past end of file")
        if etype == _ARRAY:
            self.charge(count * 8, key)  # the slots; each inner array charges for itself
            return etype, tuple(self.value(etype, key, depth) for _ in range(count))
        # The characters are charged for all the bytes the strings could take, then refunded what they did not.
        reserved = _CHAR_COST * (room - 8 * count)
        self.charge(count * _STRING_COST + reserved, key)
        start = self.r.pos
        strings = self.r.strings(count, self.limits.max_string_bytes, key)
        self.memory -= reserved - _CHAR_COST * (self.r.pos - start - 8 * count)
        return etype, strings

    def metadata(self, n_kv: int) -> dict[str, Any]:
        self.r.limit = min(self.r.size, self.r.pos + self.limits.max_metadata_bytes)
        out: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self.string(1 << 16, "metadata key", "metadata key")
            if not key:
                raise InvalidGGUF(f"metadata key #{len(out)} is empty")
            if key in out:
                raise InvalidGGUF(f"metadata key {key!r} appears twice")
            vtype = self.r.unpack("<I", key)
            etype = None
            if vtype == _ARRAY:
                etype, out[key] = self.array(key, 1)
            else:
                out[key] = self.value(vtype, key, 0)
            self.types[key] = (vtype, etype)
        self.r.limit = self.r.size
        return out

    def tensor(self, index: int) -> tuple[str, tuple[int, ...], int, int]:
        what = f"tensor #{index}"
        name = self.r.string(self.limits.max_tensor_name_bytes, f"{what} name")
        n_dims = self.r.unpack("<I", what)
        if not 1 <= n_dims <= MAX_DIMS:
            raise InvalidGGUF(f"tensor {name!r}: {n_dims} dimensions, expected 1 to {MAX_DIMS}")
        shape = struct.unpack(f"<{n_dims}Q", self.r.take(8 * n_dims, what))
        ggml_type = self.r.unpack("<I", what)
        offset = self.r.unpack("<Q", what)
        return name, shape, ggml_type, offset


def _check_types(metadata: Mapping[str, Any], types: Mapping[str, tuple[int, int | None]]) -> None:
    """Well-known keys must have the types llama.cpp expects; anything else would confuse callers."""

    def require(key: str, allowed: frozenset[int], expected: str) -> None:
        if key in types and types[key][0] not in allowed:
            raise InvalidGGUF(f"metadata {key!r} must be {expected}")

    strings = frozenset({_STRING})
    require("general.architecture", strings, "a string")
    require("general.name", strings, "a string")
    require("general.license", strings, "a string")
    require("tokenizer.chat_template", strings, "a string")
    require("general.alignment", frozenset({_UINT32}), "a uint32")
    for key in ("general.file_type", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        require(key, _INTEGER_TYPES, "an integer")
    arch = metadata.get("general.architecture")
    if isinstance(arch, str):
        for suffix in ("context_length", "block_count", "embedding_length", "vocab_size"):
            require(f"{arch}.{suffix}", _INTEGER_TYPES, "an integer")
    _check_vocabulary(metadata, types)


def _check_vocabulary(metadata: Mapping[str, Any], types: Mapping[str, tuple[int, int | None]]) -> None:
    """llama.cpp indexes scores and token types by token id and casts their data to float/int32 arrays: a
    shorter or differently typed array is an out-of-bounds read there. A longer one means the arrays do not
    belong together (converters write them in one loop), so any length but the token count is refused."""

    def require_array(key: str, allowed: frozenset[int], expected: str) -> None:
        if key in types and (types[key][0] != _ARRAY or types[key][1] not in allowed):
            raise InvalidGGUF(f"metadata {key!r} must be an array of {expected}")

    require_array(_TOKENS, frozenset({_STRING}), "strings")
    require_array("tokenizer.ggml.merges", frozenset({_STRING}), "strings")
    require_array("tokenizer.ggml.scores", frozenset({_FLOAT32, _INT32}), "float32 (or int32)")
    require_array("tokenizer.ggml.token_type", frozenset({_INT32}), "int32")
    tokens = metadata.get(_TOKENS)
    n_tokens = len(tokens) if isinstance(tokens, tuple) else None
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        if key not in metadata:
            continue
        if n_tokens is None:
            raise InvalidGGUF(f"metadata {key!r} is present without {_TOKENS!r}")
        if len(metadata[key]) != n_tokens:
            raise InvalidGGUF(f"metadata {key!r} has {len(metadata[key])} entries for {n_tokens} tokens")
    arch = metadata.get("general.architecture")
    vocab_size = metadata.get(f"{arch}.vocab_size") if isinstance(arch, str) else None
    if vocab_size is None:
        return
    if n_tokens is not None and vocab_size != n_tokens:
        raise InvalidGGUF(f"metadata '{arch}.vocab_size' is {vocab_size} but {_TOKENS!r} has {n_tokens} tokens")
    if not 0 < vocab_size <= _MAX_VOCAB:
        # Without a token list llama.cpp allocates vocab_size dummy tokens.
        raise InvalidGGUF(f"metadata '{arch}.vocab_size' is {vocab_size}, expected 1 to {_MAX_VOCAB}")


def _tensor_info(
    name: str, shape: tuple[int, ...], ggml_type: int, offset: int, alignment: int
) -> TensorInfo:
    kind = GGML_TYPES.get(ggml_type)
    if kind is None:
        raise InvalidGGUF(f"tensor {name!r}: unknown ggml type {ggml_type}")
    n_elements = 1
    for dim in shape:
        if dim > INT64_MAX:  # llama.cpp reads dimensions as int64
            raise InvalidGGUF(f"tensor {name!r}: dimension {dim - (1 << 64)} in shape {shape} is negative")
        if dim <= 0:
            raise InvalidGGUF(f"tensor {name!r}: dimension {dim} in shape {shape} must be positive")
        n_elements *= dim
        if n_elements > INT64_MAX:
            raise InvalidGGUF(f"tensor {name!r}: shape {shape} overflows int64")
    if shape[0] % kind.block_size:
        raise InvalidGGUF(
            f"tensor {name!r}: row of {shape[0]} elements is not a multiple of the {kind.name} block size"
        )
    if offset % alignment:
        raise InvalidGGUF(f"tensor {name!r}: offset {offset} is not aligned to {alignment}")
    n_bytes = n_elements // kind.block_size * kind.type_size
    return TensorInfo(name=name, shape=shape, ggml_type=ggml_type, offset=offset, n_bytes=n_bytes)


def _parse(reader: _Reader, path: Path, limits: GGUFLimits) -> GGUFFile:
    magic = reader.take(4, "magic")
    if magic != MAGIC:
        raise InvalidGGUF(f"{path.name}: not a GGUF file (magic {magic!r})")
    version = reader.unpack("<I", "version")
    if version not in SUPPORTED_VERSIONS:
        if version & 0xFFFF == 0 and version >> 16:
            raise InvalidGGUF(f"{path.name}: big-endian GGUF files are not supported")
        raise InvalidGGUF(f"{path.name}: GGUF version {version} is not supported (only 2 and 3)")
    n_tensors = reader.unpack("<Q", "tensor count")
    n_kv = reader.unpack("<Q", "metadata count")
    if n_tensors > limits.max_tensors:
        raise InvalidGGUF(f"{path.name}: {n_tensors} tensors exceed the limit of {limits.max_tensors}")
    if n_kv > limits.max_kv:
        raise InvalidGGUF(f"{path.name}: {n_kv} metadata entries exceed the limit of {limits.max_kv}")

    parser = _Parser(reader, limits)
    metadata = parser.metadata(n_kv)
    _check_types(metadata, parser.types)
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not 0 < alignment <= limits.max_alignment or alignment & (alignment - 1):
        raise InvalidGGUF(
            f"{path.name}: general.alignment {alignment} is not a power of two up to {limits.max_alignment}"
        )

    raw = [parser.tensor(i) for i in range(n_tensors)]
    data_offset = -(-reader.pos // alignment) * alignment
    data_size = reader.size - data_offset
    tensors: list[TensorInfo] = []
    seen: set[str] = set()
    expected_offset = 0
    for name, shape, ggml_type, offset in raw:
        if name in seen:
            raise InvalidGGUF(f"{path.name}: tensor {name!r} appears twice")
        seen.add(name)
        info = _tensor_info(name, shape, ggml_type, offset, alignment)
        # llama.cpp requires tensors packed in table order, each padded to the alignment.
        if offset != expected_offset:
            raise InvalidGGUF(f"tensor {name!r}: offset {offset}, expected {expected_offset} (gap/overlap)")
        if offset + info.n_bytes > data_size:
            raise InvalidGGUF(f"tensor {name!r}: data at offset {offset} runs past end of file")
        expected_offset = -(-(offset + info.n_bytes) // alignment) * alignment
        tensors.append(info)
    return GGUFFile(
        path=path,
        version=version,
        metadata=MappingProxyType(metadata),
        tensors=tuple(tensors),
        alignment=alignment,
        data_offset=data_offset,
        file_size=reader.size,
    )


# llama.cpp's gguf-split naming: <prefix>-00001-of-00003.gguf, each part a GGUF of its own. Others match names
# case-insensitively (a file found or listed); llama.cpp itself finds the parts by exactly `split_part_name`.
SPLIT_PART = re.compile(r"(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf", re.IGNORECASE)


def split_part_name(prefix: str, index: int, count: int) -> str:
    """gguf-split's name of part `index` (1-based) of `count`."""
    return f"{prefix}-{index:05d}-of-{count:05d}.gguf"


def read_gguf(path: Path, *, limits: GGUFLimits = GGUFLimits()) -> GGUFFile:
    """Read and validate the header, metadata and tensor table of `path` (of every part of a split model whose
    first part `path` is; see the module docstring).

    Raises only `InvalidGGUF` (also for I/O errors and non-regular files), with a message saying what is
    wrong and where. Metadata arrays come back as tuples; the mapping is read-only.
    """
    path = Path(path)
    first = _read_file(path, limits)
    count = first.metadata.get("split.count")
    named = SPLIT_PART.fullmatch(path.name)
    if not isinstance(count, int) or count < 2 or named is None:
        return first
    prefix = named["prefix"]
    if path.name != split_part_name(prefix, 1, count):
        return first
    siblings = [path.with_name(split_part_name(prefix, i, count)) for i in range(2, count + 1)]
    return merge_split(first, [_read_file(sibling, limits) for sibling in siblings], limits)


def merge_split(first: GGUFFile, rest: list[GGUFFile], limits: GGUFLimits = GGUFLimits()) -> GGUFFile:
    """One model from the parts of a split GGUF, in order: the first part's metadata, every part's tensors.
    Raises InvalidGGUF unless each part says it is that part of that many (`split.no`, `split.count`), the parts
    hold `split.tensors.count` tensors together (when the first says), and no tensor appears twice."""
    parts = [first, *rest]
    for index, part in enumerate(parts):
        if part.metadata.get("split.no") != index or part.metadata.get("split.count") != len(parts):
            raise InvalidGGUF(f"{part.path.name}: not part {index + 1} of a {len(parts)}-part split model")
    tensors = tuple(tensor for part in parts for tensor in part.tensors)
    declared = first.metadata.get("split.tensors.count")
    if declared is not None and declared != len(tensors):
        raise InvalidGGUF(f"{first.path.name}: the parts hold {len(tensors)} tensors, the first says {declared}")
    if len(tensors) > limits.max_tensors:
        raise InvalidGGUF(f"{first.path.name}: {len(tensors)} tensors exceed the limit of {limits.max_tensors}")
    names = Counter(tensor.name for tensor in tensors)
    twice = [name for name, n in names.items() if n > 1]
    if twice:
        raise InvalidGGUF(f"{first.path.name}: tensor {twice[0]!r} appears in two parts")
    return GGUFFile(
        path=first.path,
        version=first.version,
        metadata=first.metadata,
        tensors=tensors,
        alignment=first.alignment,
        data_offset=first.data_offset,
        file_size=sum(part.file_size for part in parts),
    )


def _read_file(path: Path, limits: GGUFLimits) -> GGUFFile:
    try:
        # O_NONBLOCK so that a FIFO cannot hang the open; it is rejected right after.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise InvalidGGUF(f"cannot open {path}: {exc.strerror or exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidGGUF(f"{path} is not a regular file")
        with io.FileIO(fd, "rb", closefd=False) as file:
            return _parse(_Reader(file, st.st_size), path, limits)
    except InvalidGGUF:
        raise
    except (OSError, UnicodeDecodeError, struct.error, ValueError, OverflowError, MemoryError) as exc:
        raise InvalidGGUF(f"{path.name}: unreadable GGUF ({type(exc).__name__}: {exc})") from exc
    finally:
        os.close(fd)


def describe(g: GGUFFile) -> dict[str, Any]:
    """Ollama's /api/show "model_info": metadata with arrays over 64 entries shown as [], plus
    general.parameter_count. Values are JSON-ready (lists, and None for non-finite floats)."""
    info = {key: _jsonable(value) for key, value in g.metadata.items()}
    info["general.parameter_count"] = g.parameter_count
    return info


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [] if len(value) > 64 else [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def format_parameter_size(n: int) -> str:
    """Ollama's human parameter size: 268098176 -> "268.10M", 8030261248 -> "8.0B", 1000000 -> "1M"."""
    for scale, unit, decimals in ((10**12, "T", 1), (10**9, "B", 1), (10**6, "M", 2), (10**3, "K", 0)):
        if n >= scale:
            if n % scale == 0:
                return f"{n // scale}{unit}"
            return f"{n / scale:.{decimals}f}{unit}"
    return str(n)
