"""The malformed GGUF files of the security suite, each with the error the reader must give for it.

A case is built by the `gguf` package's writer where the writer will produce the file (wrong-typed metadata,
nested arrays, tokenizer arrays of the wrong length, five dimensions) and packed by hand with struct where it
refuses (duplicate keys, unknown types, absurd counts and lengths, offsets past the end of the file).
`match` is a regular expression the InvalidGGUF message must contain: it names what is wrong.

`seed_model()` is a small valid model written by the writer; `truncations()` cuts it at every section
boundary that the `gguf` package's own reader reports (header fields, each part of every key/value and
tensor info record, the padding, each tensor's data).
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from tests.fixtures.gguf_raw import (
    ARR,
    BOOL,
    F32,
    I32,
    STR,
    TB,
    U8,
    U32,
    U64,
    build,
    gstr,
    kv,
    kv_array,
    kv_str,
    kv_u32,
    tensor,
)

U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1
TOKENS = "tokenizer.ggml.tokens"
N_TOKENS = 8


@dataclass(frozen=True, slots=True)
class Case:
    id: str
    make: Callable[[], bytes]
    match: str


def written(fill: Callable[[gguf.GGUFWriter], None], arch: str = "llama") -> bytes:
    """The bytes of a file that the `gguf` package's writer writes after `fill(writer)`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "written.gguf"
        writer = gguf.GGUFWriter(path, arch)
        fill(writer)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.read_bytes()


def _vocabulary(
    writer: gguf.GGUFWriter, n_scores: int = N_TOKENS, n_types: int = N_TOKENS, vocab_size: int | None = None
) -> None:
    if vocab_size is not None:
        writer.add_vocab_size(vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "<s>", "</s>", *(f"\u2581t{i}" for i in range(3, N_TOKENS))])
    writer.add_token_scores([-float(i) for i in range(n_scores)])
    writer.add_token_types([1] * n_types)


def _seed(writer: gguf.GGUFWriter) -> None:
    writer.add_name("seed")
    writer.add_file_type(1)
    writer.add_context_length(64)
    writer.add_embedding_length(32)
    writer.add_block_count(1)
    writer.add_head_count(2)
    _vocabulary(writer)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    writer.add_tensor("token_embd.weight", np.full((N_TOKENS, 32), 0.5, dtype=np.float16))
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(32, dtype=np.float32))
    q8 = np.zeros((N_TOKENS, 34), dtype=np.uint8)  # 8 rows of one Q8_0 block (32 elements, 34 bytes)
    writer.add_tensor("output.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)


def seed_model() -> bytes:
    """A valid three-tensor model (F16, F32, Q8_0) with an 8-token vocabulary and a chat template."""
    return written(_seed)


def truncations() -> list[tuple[str, int]]:
    """(label, length) for every section boundary of `seed_model()` before the end of its tensor data."""
    content = seed_model()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seed.gguf"
        path.write_bytes(content)
        reader = gguf.GGUFReader(path)
        cuts: dict[int, str] = {}
        fields = [(name, field) for name, field in reader.fields.items()]
        fields += [(f"tensor_info[{t.name}]", t.field) for t in reader.tensors]
        for name, field in fields:
            offset = field.offset
            for index, part in enumerate(field.parts):
                cuts.setdefault(offset, f"{name}.part{index}")
                offset += int(part.nbytes)
            cuts.setdefault(offset, f"after {name}")
        for t in reader.tensors:
            cuts.setdefault(int(t.data_offset), f"data[{t.name}]")
            cuts.setdefault(int(t.data_offset) + int(t.n_bytes) // 2, f"middle of data[{t.name}]")
        last = reader.tensors[-1]
        data_end = int(last.data_offset) + int(last.n_bytes)
        cuts.setdefault(int(reader.data_offset), "data section")
        cuts.setdefault(data_end - 1, "last byte of tensor data")
    cuts.setdefault(0, "empty")
    cuts.setdefault(2, "inside the magic")
    return sorted(((label, cut) for cut, label in cuts.items() if cut < data_end), key=lambda c: c[1])


def _raw(content: bytes) -> Callable[[], bytes]:
    return lambda: content


def _arch_u32() -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + kv_u32("general.architecture", 7)


def _tensor_then(name: str, dims: tuple[int, ...], ggml_type: int = 0, data: int = 32) -> Callable[[], bytes]:
    return _raw(build([], [tensor(name, dims, ggml_type)], b"\0" * data))


def _writer_kv(fill: Callable[[gguf.GGUFWriter], None]) -> Callable[[], bytes]:
    return lambda: written(fill)


CASES: tuple[Case, ...] = (
    # --- header ----------------------------------------------------------------------------------
    Case("empty-file", _raw(b""), r"magic: 4 bytes at offset 0 run past end of file"),
    Case("bad-magic", _raw(b"GGML" + b"\0" * 20), r"not a GGUF file \(magic b'GGML'\)"),
    Case("big-endian", _raw(b"GGUF" + struct.pack(">IQQ", 3, 0, 0)), r"big-endian GGUF files are not supported"),
    Case("version-1", _raw(build(version=1)), r"GGUF version 1 is not supported"),
    Case("version-4", _raw(build(version=4)), r"GGUF version 4 is not supported"),
    Case("tensor-count-absurd", _raw(build(n_tensors=U64_MAX)), rf"{U64_MAX} tensors exceed the limit of 65536"),
    Case("tensor-count-1tb", _raw(build(n_tensors=TB)), rf"{TB} tensors exceed the limit"),
    Case("kv-count-absurd", _raw(build(n_kv=U64_MAX)), rf"{U64_MAX} metadata entries exceed the limit"),
    Case("kv-count-past-eof", _raw(build(n_kv=5, alignment=1)), r"metadata key: 8 bytes at offset \d+ run past end"),
    Case(
        "tensor-count-past-eof",
        _raw(build(n_tensors=1000, alignment=1)),
        r"tensor #0 name: 8 bytes at offset \d+ run past end of file",
    ),
    # --- strings ---------------------------------------------------------------------------------
    Case(
        "key-length-1tb",
        _raw(build([struct.pack("<Q", TB) + b"key"])),
        rf"metadata key: string of {TB} bytes exceeds the limit",
    ),
    Case(
        "string-length-1tb",
        _raw(build([kv("general.name", STR, struct.pack("<Q", TB))])),
        rf"general.name: string of {TB} bytes exceeds the limit of 16777216",
    ),
    Case(
        "string-length-u64-max",
        _raw(build([kv("general.name", STR, struct.pack("<Q", U64_MAX))])),
        rf"general.name: string of {U64_MAX} bytes exceeds the limit",
    ),
    Case(
        "string-past-eof",
        _raw(build([kv("general.name", STR, struct.pack("<Q", 1 << 20))])),
        r"general.name: 1048576 bytes at offset \d+ run past end of file",
    ),
    Case(
        "tensor-name-1tb",
        _raw(build([], [struct.pack("<Q", TB)])),
        rf"tensor #0 name: string of {TB} bytes exceeds the limit",
    ),
    Case(
        "tensor-name-64-bytes",
        _tensor_then("x" * 64, (8,)),
        r"tensor #0 name: string of 64 bytes exceeds the limit of 63",
    ),
    Case(
        "key-not-utf8",
        _raw(build([kv(b"\xff\xfe", U32, b"\0" * 4)])),
        r"metadata key: the string at offset \d+ is not valid UTF-8",
    ),
    Case(
        "value-not-utf8",
        _raw(build([kv_str("general.name", b"ok\xc3\x28")])),
        r"general.name: the string at offset \d+ is not valid UTF-8",
    ),
    Case(
        "token-not-utf8",
        _raw(build([kv_array(TOKENS, STR, 2, gstr("a") + gstr(b"\xed\xa0\x80"))])),
        r"tokenizer.ggml.tokens: the string at offset \d+ is not valid UTF-8",
    ),
    Case(
        "tensor-name-not-utf8",
        _raw(build([], [tensor(b"\x80t", (8,))], b"\0" * 32)),
        r"tensor #0 name: the string at offset \d+ is not valid UTF-8",
    ),
    Case("key-empty", _raw(build([kv_u32("", 1)])), r"metadata key #1 is empty"),
    # --- arrays ----------------------------------------------------------------------------------
    Case(
        "array-count-absurd",
        _raw(build([kv_array("x.k", U8, 1 << 60)])),
        rf"'x.k': array of {1 << 60} elements exceeds 16777216",
    ),
    Case(
        "array-u64-past-eof",
        _raw(build([kv_array("x.k", U64, 1 << 22)])),
        r"x.k: 33554432 bytes at offset \d+ run past end of file",
    ),
    Case(
        "array-strings-past-eof",
        _raw(build([kv_array("x.k", STR, 1 << 22)])),
        r"'x.k': 4194304 array elements run past end of file",
    ),
    Case(
        "array-of-1tb-string",
        _raw(build([kv_array("x.k", STR, 1, struct.pack("<Q", TB))])),
        rf"x.k: string of {TB} bytes exceeds the limit",
    ),
    Case(
        "nested-array",
        _writer_kv(lambda w: w.add_array("x.nested", [[1, 2], [3]])),
        r"'x.nested': arrays nested 2 deep, more than 1",
    ),
    Case(
        "nested-array-deep",
        _raw(build([kv_array("x.k", ARR, 1, struct.pack("<IQIQ", ARR, 1, U8, 0))])),
        r"'x.k': arrays nested 2 deep",
    ),
    Case("unknown-value-type", _raw(build([kv("x.k", 13, b"")])), r"'x.k': unknown value type 13"),
    Case("unknown-value-type-max", _raw(build([kv("x.k", U32_MAX, b"")])), rf"'x.k': unknown value type {U32_MAX}"),
    Case(
        "unknown-array-element-type",
        _raw(build([kv_array("x.k", 99, 1)])),
        r"'x.k': unknown array element type 99",
    ),
    # --- duplicates ------------------------------------------------------------------------------
    Case("duplicate-key", _raw(build([kv_u32("x.k", 1), kv_u32("x.k", 2)])), r"metadata key 'x.k' appears twice"),
    Case(
        "duplicate-architecture",
        _raw(build([kv_str("general.architecture", "gemma")])),
        r"metadata key 'general.architecture' appears twice",
    ),
    Case(
        "duplicate-tensor-name",
        _raw(build([], [tensor("t", (8,)), tensor("t", (8,), 0, 32)], b"\0" * 64)),
        r"tensor 't' appears twice",
    ),
    # --- wrong-typed metadata --------------------------------------------------------------------
    Case(
        "context-length-string",
        _writer_kv(lambda w: w.add_string("llama.context_length", "4096")),
        r"'llama.context_length' must be an integer",
    ),
    Case(
        "block-count-array",
        _writer_kv(lambda w: w.add_array("llama.block_count", [1, 2])),
        r"'llama.block_count' must be an integer",
    ),
    Case(
        "block-count-float",
        _raw(build([kv("llama.block_count", F32, struct.pack("<f", 2.0))])),
        r"'llama.block_count' must be an integer",
    ),
    Case(
        "embedding-length-bool",
        _raw(build([kv("llama.embedding_length", BOOL, b"\1")])),
        r"'llama.embedding_length' must be an integer",
    ),
    Case(
        "vocab-size-string",
        _writer_kv(lambda w: w.add_string("llama.vocab_size", "8")),
        r"'llama.vocab_size' must be an integer",
    ),
    Case("architecture-not-string", _arch_u32, r"'general.architecture' must be a string"),
    Case("alignment-string", _raw(build([kv_str("general.alignment", "32")])), r"'general.alignment' must be a uint32"),
    Case(
        "alignment-u64",
        _raw(build([kv("general.alignment", U64, struct.pack("<Q", 32))])),
        r"'general.alignment' must be a uint32",
    ),
    Case("file-type-bool", _raw(build([kv("general.file_type", BOOL, b"\1")])), r"'general.file_type' must be an int"),
    Case(
        "chat-template-u32",
        _raw(build([kv_u32("tokenizer.chat_template", 1)])),
        r"'tokenizer.chat_template' must be a string",
    ),
    Case(
        "bos-token-id-string",
        _raw(build([kv_str("tokenizer.ggml.bos_token_id", "1")])),
        r"'tokenizer.ggml.bos_token_id' must be an integer",
    ),
    Case(
        "tokens-u32-array",
        _raw(build([kv_array(TOKENS, U32, 1, struct.pack("<I", 5))])),
        r"'tokenizer.ggml.tokens' must be an array of strings",
    ),
    Case("tokens-string", _raw(build([kv_str(TOKENS, "abc")])), r"'tokenizer.ggml.tokens' must be an array of strings"),
    Case(
        "scores-u8-array",
        _raw(build([kv_array(TOKENS, STR, 1, gstr("a")), kv_array("tokenizer.ggml.scores", U8, 1, b"\0")])),
        r"'tokenizer.ggml.scores' must be an array of float32",
    ),
    Case(
        "token-type-u8-array",
        _raw(build([kv_array(TOKENS, STR, 1, gstr("a")), kv_array("tokenizer.ggml.token_type", U8, 1, b"\1")])),
        r"'tokenizer.ggml.token_type' must be an array of int32",
    ),
    Case(
        "merges-u32-array",
        _raw(build([kv_array("tokenizer.ggml.merges", U32, 1, b"\0" * 4)])),
        r"'tokenizer.ggml.merges' must be an array of strings",
    ),
    # --- token arrays against the vocabulary -----------------------------------------------------
    Case(
        "scores-shorter-than-tokens",
        _writer_kv(lambda w: _vocabulary(w, n_scores=N_TOKENS - 1)),
        rf"'tokenizer.ggml.scores' has {N_TOKENS - 1} entries for {N_TOKENS} tokens",
    ),
    Case(
        "token-types-longer-than-tokens",
        _writer_kv(lambda w: _vocabulary(w, n_types=N_TOKENS + 1)),
        rf"'tokenizer.ggml.token_type' has {N_TOKENS + 1} entries for {N_TOKENS} tokens",
    ),
    Case(
        "scores-without-tokens",
        _raw(build([kv_array("tokenizer.ggml.scores", F32, 1, b"\0" * 4)])),
        r"'tokenizer.ggml.scores' is present without 'tokenizer.ggml.tokens'",
    ),
    Case(
        "token-types-int32-without-tokens",
        _raw(build([kv_array("tokenizer.ggml.token_type", I32, 1, b"\1\0\0\0")])),
        r"'tokenizer.ggml.token_type' is present without",
    ),
    Case(
        "vocab-size-differs-from-tokens",
        _writer_kv(lambda w: _vocabulary(w, vocab_size=N_TOKENS + 1)),
        rf"'llama.vocab_size' is {N_TOKENS + 1} but 'tokenizer.ggml.tokens' has {N_TOKENS} tokens",
    ),
    Case(
        "vocab-size-absurd",
        _writer_kv(lambda w: w.add_vocab_size(U32_MAX)),
        rf"'llama.vocab_size' is {U32_MAX}, expected 1 to 16777216",
    ),
    # --- alignment -------------------------------------------------------------------------------
    Case("alignment-0", _raw(build([kv_u32("general.alignment", 0)])), r"general.alignment 0 is not a power of two"),
    Case("alignment-48", _raw(build([kv_u32("general.alignment", 48)])), r"general.alignment 48 is not a power of two"),
    Case(
        "alignment-huge",
        _raw(build([kv_u32("general.alignment", 1 << 30)])),
        r"general.alignment 1073741824 is not a power of two up to 1048576",
    ),
    Case(
        "alignment-u32-max",
        _raw(build([kv_u32("general.alignment", U32_MAX)])),
        rf"general.alignment {U32_MAX} is not a power of two",
    ),
    # --- tensor table ----------------------------------------------------------------------------
    Case(
        "n-dims-5",
        _writer_kv(lambda w: w.add_tensor("t", np.ones((1, 1, 1, 1, 2), dtype=np.float32))),
        r"tensor 't': 5 dimensions, expected 1 to 4",
    ),
    Case("n-dims-0", _raw(build([], [gstr("t") + struct.pack("<IIQ", 0, 0, 0)])), r"tensor 't': 0 dimensions"),
    Case(
        "n-dims-u32-max",
        _raw(build([], [gstr("t") + struct.pack("<I", U32_MAX)])),
        rf"tensor 't': {U32_MAX} dimensions",
    ),
    Case("dim-zero", _tensor_then("t", (4, 0)), r"tensor 't': dimension 0 in shape \(4, 0\) must be positive"),
    Case("dim-negative", _tensor_then("t", (4, U64_MAX)), r"tensor 't': dimension -1 in shape .* is negative"),
    Case(
        "dim-int64-min",
        _tensor_then("t", (1 << 63,)),
        rf"tensor 't': dimension {-(1 << 63)} in shape .* is negative",
    ),
    Case("dims-overflow-int64", _tensor_then("t", (1 << 32, 1 << 32)), r"tensor 't': shape .* overflows int64"),
    Case("dims-overflow-int64-4d", _tensor_then("t", (1 << 16,) * 4), r"tensor 't': shape .* overflows int64"),
    Case("ggml-type-retired", _tensor_then("t", (8,), 4), r"tensor 't': unknown ggml type 4"),
    Case("ggml-type-absurd", _tensor_then("t", (8,), U32_MAX), rf"tensor 't': unknown ggml type {U32_MAX}"),
    Case(
        "row-not-block-multiple",
        _tensor_then("t", (33,), 2, 64),
        r"tensor 't': row of 33 elements is not a multiple of the Q4_0 block size",
    ),
    Case(
        "offset-unaligned",
        _raw(build([], [tensor("t", (8,), 0, 1)], b"\0" * 64)),
        r"tensor 't': offset 1 is not aligned to 32",
    ),
    Case(
        "offset-gap",
        _raw(build([], [tensor("t", (8,), 0, 64)], b"\0" * 128)),
        r"tensor 't': offset 64, expected 0",
    ),
    Case(
        "offset-overlap",
        _raw(build([], [tensor("t", (8,)), tensor("u", (8,))], b"\0" * 64)),
        r"tensor 'u': offset 0, expected 32",
    ),
    Case(
        "offset-past-eof",
        _raw(build([], [tensor("t", (8,), 0, 1 << 62)], b"\0" * 64)),
        rf"tensor 't': offset {1 << 62}, expected 0",
    ),
    # Bleeding Llama (CVE-2026-7482): offset + size past the end of the file.
    Case(
        "data-past-eof",
        _raw(build([], [tensor("t", (1000,))], b"\0" * 64)),
        r"tensor 't': data at offset 0 runs past end of file",
    ),
    Case(
        "data-past-eof-second-tensor",
        _raw(build([], [tensor("t", (8,)), tensor("u", (1 << 40,), 0, 32)], b"\0" * 64)),
        r"tensor 'u': data at offset 32 runs past end of file",
    ),
    Case(
        "data-past-eof-quantized",
        _raw(build([], [tensor("t", (256, 1 << 30), 12)], b"\0" * 144)),
        r"tensor 't': data at offset 0 runs past end of file",
    ),
    Case(
        "writer-file-cut-in-data",
        lambda: seed_model()[:-40],
        r"tensor 'output.weight': data at offset \d+ runs past end of file",
    ),
)
