"""A fuzz target for the GGUF reader: for any bytes, read_gguf returns metadata or raises InvalidGGUF from one of
its own checks (no foreign exception, not even one translated by its safety net), in bounded time and memory;
and what it returns is safe to use (tensors inside the file, metadata that serializes for /api/show).

Inputs are the corpus seeds (tests/security/corpus, written by tools/gguf_corpus.py) put through one to four
mutations hypothesis chooses (byte writes, interesting 32/64-bit integers written over a field, truncation,
insertion, deletion, splicing in part of another seed), plus random bytes with and without a GGUF header.

The normal suite runs a fixed number of examples, derandomized so CI is reproducible, with a deadline per
example. A long exploring run: OFFLOAD_FUZZ_EXAMPLES=200000 .venv/bin/pytest tests/security/test_gguf_fuzz.py
(random, not derandomized).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from offload.models.gguf import describe
from tests.security.measure import read_measured

CORPUS = Path(__file__).parent / "corpus"
SEEDS = tuple(path.read_bytes() for path in sorted(CORPUS.glob("*.gguf")))
LONG_RUN = os.environ.get("OFFLOAD_FUZZ_EXAMPLES")
EXAMPLES = int(LONG_RUN or 1000)
KIB = 1 << 10

INTERESTING_32 = (0, 1, 2, 4, 5, 7, 8, 9, 12, 13, 31, 32, 33, 48, 63, 64, 255, 256, 1 << 31, (1 << 32) - 1)
INTERESTING_64 = (
    0, 1, 3, 8, 64, 1 << 20, 1 << 24, (1 << 24) + 1, 1 << 31, 1 << 32, 1 << 40, 1 << 62, (1 << 63) - 1, 1 << 63,
    (1 << 64) - 1,
)

@dataclass(frozen=True, slots=True)
class Mutation:
    kind: str
    at: int  # a position, taken modulo the length
    n: int = 0
    m: int = 0
    blob: bytes = b""


_at = st.integers(min_value=0, max_value=1 << 16)
_mutation = st.one_of(
    st.builds(Mutation, st.just("byte"), _at, st.integers(0, 255)),
    st.builds(Mutation, st.just("u32"), _at, st.sampled_from(INTERESTING_32)),
    st.builds(Mutation, st.just("u64"), _at, st.sampled_from(INTERESTING_64)),
    st.builds(Mutation, st.just("truncate"), _at),
    st.builds(Mutation, st.just("insert"), _at, blob=st.binary(min_size=1, max_size=16)),
    st.builds(Mutation, st.just("delete"), _at, st.integers(1, 64)),
    st.builds(Mutation, st.just("splice"), _at, st.integers(0, len(SEEDS) - 1), _at),
)


def mutate(seed: bytes, mutations: list[Mutation]) -> bytes:
    data = bytearray(seed)
    for mutation in mutations:
        at = mutation.at % (len(data) + 1)
        if mutation.kind == "byte" and at < len(data):
            data[at] = mutation.n
        elif mutation.kind in ("u32", "u64"):
            packed = struct.pack("<I" if mutation.kind == "u32" else "<Q", mutation.n)
            data[at : at + len(packed)] = packed
        elif mutation.kind == "truncate":
            del data[at:]
        elif mutation.kind == "insert":
            data[at:at] = mutation.blob
        elif mutation.kind == "delete":
            del data[at : at + mutation.n]
        elif mutation.kind == "splice":  # the rest of the input from seed n, from its position m
            other = SEEDS[mutation.n]
            data[at:] = other[mutation.m % (len(other) + 1) :]
    return bytes(data)


_header = st.builds(
    lambda version, n_tensors, n_kv: b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv),
    st.sampled_from((2, 3)),
    st.integers(0, 4),
    st.integers(0, 4),
)
inputs = st.one_of(
    st.builds(mutate, st.sampled_from(SEEDS), st.lists(_mutation, min_size=1, max_size=4)),
    st.builds(lambda head, tail: head + tail, _header, st.binary(max_size=512)),
    st.binary(max_size=64),
)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "input.gguf"


def test_corpus_files_give_their_expected_outcome() -> None:
    files = sorted(CORPUS.glob("*.gguf"))
    assert len([f for f in files if f.name.startswith("valid-")]) >= 3
    assert len([f for f in files if f.name.startswith("bad-")]) >= 20
    for path in files:
        measured = read_measured(path)
        if path.name.startswith("valid-"):
            assert measured.error is None, f"{path.name}: {measured.error}"
        else:
            assert path.name.startswith("bad-"), path.name
            assert measured.refusal.__cause__ is None, f"{path.name}: {measured.refusal.message}"


@settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=5),  # the bounded time: runs take ~1 ms; a loaded CI machine is not a bug
    derandomize=LONG_RUN is None,
    database=None,
    # No explain phase: its line tracer allocates while tracemalloc counts, which would read as the reader's.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=inputs)
def test_reader_returns_metadata_or_its_own_error(scratch: Path, data: bytes) -> None:
    scratch.write_bytes(data)
    measured = read_measured(scratch)
    if measured.error is not None:
        assert measured.error.__cause__ is None, f"{measured.error.message} ({measured.error.__cause__!r})"
    else:
        assert measured.result is not None
        g = measured.result
        for t in g.tensors:
            assert g.data_offset + t.offset + t.n_bytes <= len(data)
        assert g.alignment > 0 and g.alignment & (g.alignment - 1) == 0
        json.dumps(describe(g), allow_nan=False)
        assert isinstance(g.file_type, str) and g.parameter_count >= 0
        assert g.bos_token is None or isinstance(g.bos_token, str)
    assert measured.peak <= 64 * KIB + 4 * len(data), f"allocated {measured.peak} bytes for {len(data)}"
