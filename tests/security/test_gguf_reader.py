"""The GGUF reader against hostile files (the CVE-2024-21825 family of GGUF parser overflows, and
CVE-2026-7482 "Bleeding Llama": tensor offset + size past the end of the file).

Every case asserts the exact error (InvalidGGUF naming what is wrong, raised by a deliberate check: no
foreign exception translated by read_gguf's safety net), that no more bytes were read than the file holds,
and that memory stayed within a small multiple of the file's size. This suite is never deleted or loosened.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from offload.errors import InvalidGGUF
from offload.models.gguf import GGUFLimits, read_gguf
from tests.fixtures.gguf_raw import F64, I8, STR, U8, U16, build, gstr, kv_array, tensor
from tests.security.cases import CASES, N_TOKENS, Case, seed_model, truncations
from tests.security.measure import Measured, read_measured

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
SEED = seed_model()
TRUNCATIONS = truncations()
# The end of the last tensor's data; the writer pads after it.
DATA_END = TRUNCATIONS[-1][1] + 1


def write(tmp_path: Path, content: bytes, name: str = "case.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def assert_refused(measured: Measured, match: str, file_size: int) -> None:
    error = measured.refusal
    assert re.search(match, error.message), error.message
    # The safety net in read_gguf translates foreign exceptions with `from exc`: reaching it is a bug.
    assert error.__cause__ is None, f"{type(error.__cause__).__name__} leaked through: {error.message}"
    assert measured.peak <= 64 * KIB + 4 * file_size, f"allocated {measured.peak} bytes"
    if measured.bytes_read is not None:
        assert measured.bytes_read <= file_size + 64, f"read {measured.bytes_read} of {file_size} bytes"
    assert measured.seconds < 1.0


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_file_is_refused(case: Case, tmp_path: Path) -> None:
    content = case.make()
    assert_refused(read_measured(write(tmp_path, content)), case.match, len(content))


def test_the_cases_are_distinct_and_the_seed_is_valid(tmp_path: Path) -> None:
    assert len({c.id for c in CASES}) == len(CASES)
    assert len({c.make() for c in CASES}) == len(CASES)
    g = read_gguf(write(tmp_path, SEED))
    assert [t.type_name for t in g.tensors] == ["F16", "F32", "Q8_0"]
    assert g.token(N_TOKENS - 1) == f"\u2581t{N_TOKENS - 1}"
    assert g.data_offset + g.tensors[-1].offset + g.tensors[-1].n_bytes == DATA_END


@pytest.mark.parametrize(("label", "cut"), TRUNCATIONS, ids=[label for label, _ in TRUNCATIONS])
def test_truncated_at_a_section_boundary(label: str, cut: int, tmp_path: Path) -> None:
    assert_refused(read_measured(write(tmp_path, SEED[:cut])), r"past end of file", cut)


def test_truncated_anywhere(tmp_path: Path) -> None:
    for cut in range(DATA_END):
        path = write(tmp_path, SEED[:cut])
        with pytest.raises(InvalidGGUF, match="past end of file") as caught:
            read_gguf(path)
        assert caught.value.__cause__ is None
    # The padding after the last tensor is not needed (llama.cpp does not need it either).
    assert read_gguf(write(tmp_path, SEED[:DATA_END])).tensors


# --- large files: what is read does not grow with the file ----------------------------------------


def sparse(tmp_path: Path, head: bytes, size: int) -> Path:
    """`head`, then zeros up to `size` bytes, without writing them (a sparse file)."""
    path = write(tmp_path, head, "large.gguf")
    with path.open("r+b") as file:
        file.truncate(size)
    return path


def test_a_large_model_is_read_by_its_header(tmp_path: Path) -> None:
    n = 1 << 31  # 8 GiB of F32 weights
    head = build([], [tensor("w", (n,))])
    measured = read_measured(sparse(tmp_path, head, len(head) + 4 * n))
    assert measured.error is None and measured.result is not None
    assert measured.result.tensors[0].n_bytes == 4 * n
    assert measured.bytes_read is None or measured.bytes_read <= MIB + len(head)
    assert measured.peak <= 4 * MIB


def test_bleeding_llama_on_a_large_file(tmp_path: Path) -> None:
    # 8 GiB of data on disk, a tensor table that claims 16 GiB: refused without reading the data.
    n = 1 << 31
    head = build([], [tensor("a", (n,)), tensor("b", (n,), 0, 4 * n)])
    path = sparse(tmp_path, head, len(head) + 4 * n)
    measured = read_measured(path)
    assert re.search(rf"tensor 'b': data at offset {4 * n} runs past end of file", measured.refusal.message)
    assert measured.bytes_read is None or measured.bytes_read <= MIB + len(head)
    assert measured.peak <= 4 * MIB


def test_metadata_reading_stops_at_the_limit(tmp_path: Path) -> None:
    # The bytes of a 16 MiB array are in the file, but the metadata may not be larger than 1 MiB.
    head = build([kv_array("x.big", U8, 16 * MIB)])
    path = sparse(tmp_path, head, len(head) + 16 * MIB + GIB)
    measured = read_measured(path, GGUFLimits(max_metadata_bytes=MIB))
    assert re.search(r"x.big: metadata is larger than the limit", measured.refusal.message)
    assert measured.bytes_read is None or measured.bytes_read <= 2 * MIB
    assert measured.peak <= 4 * MIB


# --- memory: charged before it is allocated ---------------------------------------------------------

HUNGRY = {
    # 1 MiB on disk each; as Python objects they take 6 to 36 times that.
    "int8-negative": kv_array("x.a", I8, MIB, b"\x80" * MIB),
    "uint16-large": kv_array("x.a", U16, MIB // 2, b"\xff\xff" * (MIB // 2)),
    "float64": kv_array("x.a", F64, MIB // 8, struct.pack("<d", 0.5) * (MIB // 8)),
    "empty-strings": kv_array("x.a", STR, MIB // 8, gstr("") * (MIB // 8)),
    "two-byte-strings": kv_array("x.a", STR, MIB // 10, gstr("ab") * (MIB // 10)),
    "emoji-strings": kv_array("x.a", STR, MIB // 16, gstr("a\U0001f999bc") * (MIB // 16)),
}


@pytest.mark.parametrize("record", HUNGRY.values(), ids=list(HUNGRY))
def test_memory_is_charged_before_it_is_allocated(record: bytes, tmp_path: Path) -> None:
    path = write(tmp_path, build([record]))
    accepted = read_measured(path)
    assert accepted.error is None
    # The estimate is an upper bound: a budget of what the values really took is too small for them...
    starved = read_measured(path, GGUFLimits(max_metadata_memory=accepted.retained))
    assert re.search(r"'x.a': the values need more than \d+ bytes of memory", starved.refusal.message)
    # ...and the refusal comes before they exist.
    assert starved.peak <= 4 * path.stat().st_size + 64 * KIB


def test_default_memory_budget_refuses_sixteen_million_negative_bytes(tmp_path: Path) -> None:
    # 16 MiB on disk, within the array and metadata byte limits; 576 MiB as Python ints.
    content = build([kv_array("x.a", I8, 16 * MIB, b"\xff" * (16 * MIB))])
    measured = read_measured(write(tmp_path, content))
    assert re.search(r"'x.a': the values need more than 536870912 bytes", measured.refusal.message)
    assert measured.peak <= 3 * len(content)
