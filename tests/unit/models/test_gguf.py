from __future__ import annotations

import contextlib
import math
import os
import random
import struct
import time
from pathlib import Path

import gguf as gguf_pkg
import pytest

from offload.errors import InvalidGGUF
from offload.models.gguf import (
    FILE_TYPES,
    GGML_TYPES,
    GGUFLimits,
    describe,
    format_parameter_size,
    read_gguf,
)
from tests.fixtures.gguf_files import write_tiny_gguf

# --- a raw GGUF builder, for files the gguf package would refuse to write -------------------------

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)


def gstr(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + struct.pack("<I", vtype) + payload


def kv_str(key: str, value: str) -> bytes:
    return kv(key, STR, gstr(value))


def kv_u32(key: str, value: int) -> bytes:
    return kv(key, U32, struct.pack("<I", value))


def tensor(name: str, dims: tuple[int, ...], ggml_type: int = 0, offset: int = 0) -> bytes:
    return gstr(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ggml_type, offset)


def build(
    kvs: list[bytes] | None = None,
    tensors: list[bytes] | None = None,
    data: bytes = b"",
    *,
    version: int = 3,
    alignment: int = 32,
    n_kv: int | None = None,
    n_tensors: int | None = None,
) -> bytes:
    kvs = [kv_str("general.architecture", "llama"), *(kvs or [])]
    tensors = tensors or []
    head = b"GGUF" + struct.pack(
        "<IQQ", version, len(tensors) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv
    )
    body = head + b"".join(kvs) + b"".join(tensors)
    body += b"\0" * (-len(body) % alignment)
    return body + data


def write(tmp_path: Path, content: bytes, name: str = "m.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def rejected(tmp_path: Path, content: bytes, match: str, limits: GGUFLimits | None = None) -> None:
    path = write(tmp_path, content)
    start = time.monotonic()
    with pytest.raises(InvalidGGUF, match=match):
        read_gguf(path, limits=limits or GGUFLimits())
    assert time.monotonic() - start < 2.0


# --- valid files ---------------------------------------------------------------------------------


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_tiny_gguf(tmp_path / "tiny.gguf", chat_template="{{ messages }}")


def test_reads_tiny_file(tiny: Path) -> None:
    g = read_gguf(tiny)
    assert g.version == 3
    assert g.architecture == "llama"
    assert g.file_type == "F32"
    assert g.context_length == 256
    assert g.block_count == 1
    assert g.chat_template == "{{ messages }}"
    assert g.license is None
    assert (g.bos_token, g.eos_token) == ("<s>", "</s>")
    assert g.token(0) == "<unk>"
    assert g.token(32) is None
    assert g.token(-1) is None
    assert g.file_size == tiny.stat().st_size
    assert g.data_offset % g.alignment == 0
    assert g.parameter_count == sum(math.prod(t.shape) for t in g.tensors)
    with pytest.raises(TypeError):
        g.metadata["general.architecture"] = "x"  # type: ignore[index]


def test_tensor_table_matches_the_gguf_package(tiny: Path) -> None:
    ours = read_gguf(tiny)
    theirs = gguf_pkg.GGUFReader(tiny)
    assert ours.data_offset == theirs.data_offset
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for mine, ref in zip(ours.tensors, theirs.tensors, strict=True):
        assert mine.shape == tuple(int(d) for d in ref.shape)
        assert mine.offset == int(ref.data_offset) - theirs.data_offset
        assert mine.n_bytes == int(ref.n_bytes)
        assert mine.type_name == "F32"


def test_version_2_is_accepted(tmp_path: Path) -> None:
    g = read_gguf(write(tmp_path, build([kv_u32("llama.context_length", 8)], version=2)))
    assert g.version == 2
    assert g.context_length == 8
    assert g.tensors == ()


def test_quantized_tensor_sizes(tmp_path: Path) -> None:
    # Q4_K: 256 elements per 144-byte block; a 512x2 tensor is 4 blocks.
    content = build([], [tensor("w", (512, 2), 12, 0)], b"\0" * 576)
    (t,) = read_gguf(write(tmp_path, content)).tensors
    assert (t.n_bytes, t.type_name, t.n_elements) == (576, "Q4_K", 1024)


def test_ggml_type_table_matches_the_gguf_package() -> None:
    for value, kind in GGML_TYPES.items():
        reference = gguf_pkg.GGMLQuantizationType(value)
        assert reference.name == kind.name
        assert gguf_pkg.GGML_QUANT_SIZES[reference] == (kind.block_size, kind.type_size)


def test_file_type_table_matches_the_gguf_package() -> None:
    for ftype in gguf_pkg.LlamaFileType:
        if ftype.name != "GUESSED":
            assert FILE_TYPES[ftype.value] == ftype.name.removeprefix("MOSTLY_").removeprefix("ALL_")


@pytest.mark.parametrize(
    ("ftype", "name"),
    [(0, "F32"), (1, "F16"), (2, "Q4_0"), (7, "Q8_0"), (15, "Q4_K_M"), (14, "Q4_K_S"), (18, "Q6_K"),
     (32, "BF16"), (1024 | 15, "Q4_K_M")],
)
def test_file_type_names(tmp_path: Path, ftype: int, name: str) -> None:
    assert read_gguf(write(tmp_path, build([kv_u32("general.file_type", ftype)]))).file_type == name


def test_file_type_falls_back_to_the_dominant_tensor_type(tmp_path: Path) -> None:
    tensors = [tensor("a", (32,), 8, 0), tensor("b", (4,), 0, 64)]
    content = build([kv_u32("general.file_type", 999)], tensors, b"\0" * 80)
    assert read_gguf(write(tmp_path, content)).file_type == "Q8_0"
    assert read_gguf(write(tmp_path, build([]))).file_type == "unknown"


def test_describe(tmp_path: Path) -> None:
    extra = {"x.short": [1, 2], "x.nan": math.nan}
    path = write_tiny_gguf(tmp_path / "t.gguf", n_tokens=100, extra_metadata=extra)
    info = describe(read_gguf(path))
    assert info["tokenizer.ggml.tokens"] == []
    assert info["x.short"] == [1, 2]
    assert info["x.nan"] is None
    assert info["general.architecture"] == "llama"
    assert info["general.parameter_count"] == read_gguf(path).parameter_count


@pytest.mark.parametrize(
    ("n", "text"),
    [(268_098_176, "268.10M"), (8_030_261_248, "8.0B"), (1_000_000, "1M"), (7_000_000_000, "7B"),
     (999, "999"), (22_500, "22K"), (1_500_000_000_000, "1.5T"), (137_000_000, "137M")],
)
def test_format_parameter_size(n: int, text: str) -> None:
    assert format_parameter_size(n) == text


# --- hostile files -------------------------------------------------------------------------------

TB = 1 << 40


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "past end of file"),
        (b"GGML" + b"\0" * 20, "not a GGUF file"),
        (b"GGUF" + struct.pack(">IQQ", 3, 0, 0), "big-endian"),
        (build(version=1), "version 1"),
        (build(version=4), "version 4"),
        (build(n_tensors=1 << 40), "tensors exceed"),
        (build(n_kv=1 << 40), "metadata entries exceed"),
        (build(n_kv=5, alignment=1), "past end of file"),
        (build([struct.pack("<Q", TB) + b"key"]), "exceeds the limit"),
        (build([kv("k", STR, struct.pack("<Q", TB))]), "exceeds the limit"),
        (build([kv("k", STR, struct.pack("<Q", 1 << 20))]), "past end of file"),
        (build([kv("k", ARR, struct.pack("<IQ", U8, 1 << 60))]), "elements exceeds"),
        (build([kv("k", ARR, struct.pack("<IQ", U64, 1 << 22))]), "past end of file"),
        (build([kv("k", ARR, struct.pack("<IQ", STR, 1 << 22))]), "past end of file"),
        (build([kv("k", ARR, struct.pack("<IQIQIQ", ARR, 1, ARR, 1, U8, 0))]), "nested deeper"),
        (build([kv("k", 13, b"")]), "unknown value type"),
        (build([kv("k", ARR, struct.pack("<IQ", 99, 1))]), "unknown array element type"),
        (build([kv_u32("k", 1), kv_u32("k", 2)]), "appears twice"),
        (build([kv(b"\xff\xfe", U32, b"\0" * 4)]), "UnicodeDecodeError"),
        (build([kv_str("general.alignment", "32")]), "general.alignment.*uint32"),
        (build([kv("general.alignment", U64, struct.pack("<Q", 32))]), "general.alignment.*uint32"),
        (build([kv_u32("general.alignment", 0)]), "not a power of two"),
        (build([kv_u32("general.alignment", 48)]), "not a power of two"),
        (build([kv_u32("general.alignment", 1 << 30)]), "not a power of two"),
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + kv_u32("general.architecture", 7), "architecture.*string"),
        (build([kv_str("llama.context_length", "4096")]), "context_length.*integer"),
        (build([kv("llama.block_count", F32, struct.pack("<f", 2.0))]), "block_count.*integer"),
        (build([kv("general.file_type", BOOL, b"\1")]), "file_type.*integer"),
        (build([kv_u32("tokenizer.chat_template", 1)]), "chat_template.*string"),
        (build([kv("tokenizer.ggml.tokens", ARR, struct.pack("<IQI", U32, 1, 5))]), "array of strings"),
        (build([kv_str("tokenizer.ggml.tokens", "abc")]), "array of strings"),
        (build([kv_str("tokenizer.ggml.bos_token_id", "1")]), "bos_token_id.*integer"),
        (build([], [tensor("t", (1, 1, 1, 1, 1))], b"\0" * 32), "5 dimensions"),
        (build([], [gstr("t") + struct.pack("<IIQ", 0, 0, 0)]), "0 dimensions"),
        (build([], [tensor("t", (4, 0))], b"\0" * 32), "must be positive"),
        (build([], [tensor("t", (1 << 62, 4))], b"\0" * 32), "overflows int64"),
        (build([], [tensor("t", (4,), 4)], b"\0" * 32), "unknown ggml type 4"),
        (build([], [tensor("t", (4,), 1000)], b"\0" * 32), "unknown ggml type"),
        (build([], [tensor("t", (33,), 2)], b"\0" * 64), "not a multiple"),
        (build([], [tensor("t", (4,), 0, 1)], b"\0" * 64), "not aligned"),
        (build([], [tensor("t", (4,), 0, 64)], b"\0" * 128), "expected 0"),
        (build([], [tensor("t", (1000,), 0, 0)], b"\0" * 64), "past end of file"),
        (build([], [tensor("t", (1 << 40,), 0, 0)], b"\0" * 64), "past end of file"),
        (build([], [tensor("t", (4,)), tensor("t", (4,), 0, 32)], b"\0" * 64), "appears twice"),
        (build([], [struct.pack("<Q", TB)]), "exceeds the limit"),
        (build([], [gstr("t") + struct.pack("<I", 1 << 31)]), "dimensions"),
    ],
)
def test_hostile_files_are_rejected(tmp_path: Path, content: bytes, match: str) -> None:
    rejected(tmp_path, content, match)


def test_every_truncation_is_rejected(tiny: Path, tmp_path: Path) -> None:
    content = tiny.read_bytes()
    start = time.monotonic()
    for cut in range(0, len(content), 7):
        path = write(tmp_path, content[:cut], "cut.gguf")
        with pytest.raises(InvalidGGUF):
            read_gguf(path)
    assert time.monotonic() - start < 30


def test_random_corruption_never_raises_anything_else(tiny: Path, tmp_path: Path) -> None:
    content = tiny.read_bytes()
    header_end = read_gguf(tiny).data_offset
    rng = random.Random(1234)
    for _ in range(400):
        mutated = bytearray(content)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(header_end)] = rng.randrange(256)
        path = write(tmp_path, bytes(mutated), "fuzz.gguf")
        with contextlib.suppress(InvalidGGUF):
            read_gguf(path)


def test_limits_are_configurable(tiny: Path) -> None:
    with pytest.raises(InvalidGGUF, match="metadata is larger"):
        read_gguf(tiny, limits=GGUFLimits(max_metadata_bytes=200))
    with pytest.raises(InvalidGGUF, match="exceeds the limit"):
        read_gguf(tiny, limits=GGUFLimits(max_string_bytes=5))
    with pytest.raises(InvalidGGUF, match="tensors exceed"):
        read_gguf(tiny, limits=GGUFLimits(max_tensors=3))
    with pytest.raises(InvalidGGUF, match="elements exceeds"):
        read_gguf(tiny, limits=GGUFLimits(max_array_length=8))


def test_not_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidGGUF, match="cannot open"):
        read_gguf(tmp_path / "missing.gguf")
    with pytest.raises(InvalidGGUF, match="not a regular file"):
        read_gguf(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InvalidGGUF, match="not a regular file"):
        read_gguf(fifo)
